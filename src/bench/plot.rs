//! The phase breakdown as stacked bars (plotters, bitmap backend): cvmm's median timeline, phase
//! after phase up to its exit, beside the other VMM's ready and exit; a line marks each side's
//! ready marker. Text needs a TrueType font; Debian's DejaVu Sans is used when installed,
//! otherwise the bars are drawn unlabelled.

use super::Report;
use plotters::prelude::*;
use std::path::Path;

const W: u32 = 1000;
const H: u32 = 640;
const TOP: i32 = 60;
const BOTTOM: i32 = 580;
const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn load_font() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        FONT_PATHS.iter().any(|p| match std::fs::read(p) {
            // The font lives for the rest of the process (plotters keeps a 'static reference).
            Ok(bytes) => plotters::style::register_font(
                "sans-serif",
                FontStyle::Normal,
                Box::leak(bytes.into_boxed_slice()),
            )
            .is_ok(),
            Err(_) => false,
        })
    })
}

/// One bar: label, [(segment name, from ms, to ms)], and where its ready marker was seen.
struct Bar {
    label: String,
    segs: Vec<(String, f64, f64)>,
    ready: Option<f64>,
}

fn bars(r: &Report) -> Vec<Bar> {
    let mut segs = Vec::new();
    let mut prev = 0.0;
    for p in &r.phases {
        let at = p.ms.median.max(prev);
        segs.push((p.label(), prev, at));
        prev = at;
    }
    if let Some(exit) = r.cvmm_exit_ms {
        segs.push(("until exit".to_string(), prev, exit.median.max(prev)));
    }
    let mut out = vec![Bar {
        label: "cvmm".to_string(),
        segs,
        ready: r.cvmm_ready_ms.map(|s| s.median),
    }];
    if let Some(o) = &r.other {
        let mut segs = Vec::new();
        let ready = o.ready_ms.map(|s| s.median).unwrap_or(0.0);
        if ready > 0.0 {
            segs.push(("to ready".to_string(), 0.0, ready));
        }
        if let Some(e) = o.exit_ms {
            segs.push(("until exit".to_string(), ready, e.median.max(ready)));
        }
        // The bar is named by the program the command runs (`qemu-system-x86_64`, ...).
        let program = o
            .command
            .split_whitespace()
            .next()
            .and_then(|w| w.rsplit('/').next())
            .unwrap_or("other");
        let label = if segs.is_empty() {
            format!("{program} (failed)")
        } else {
            program.to_string()
        };
        out.push(Bar {
            label,
            segs,
            ready: o.ready_ms.map(|s| s.median),
        });
    }
    out
}

/// The legend's entries in drawing order: each segment name once.
fn legend(bars: &[Bar]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (name, _, _) in bars.iter().flat_map(|b| &b.segs) {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    names
}

/// The legend `r`'s plot gets (debug-port codes labelled with their stage).
#[cfg(test)]
pub fn legend_of(r: &Report) -> Vec<String> {
    legend(&bars(r))
}

/// Writes the PNG, labelled when a font could be loaded.
pub fn draw(r: &Report, path: &Path) -> anyhow::Result<()> {
    render(r, path, load_font())
}

/// Writes the PNG; without `text`, bars and legend swatches only.
pub fn render(r: &Report, path: &Path, text: bool) -> anyhow::Result<()> {
    let bars = bars(r);
    let top_ms = bars
        .iter()
        .flat_map(|b| b.segs.iter().map(|x| x.2).chain(b.ready))
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let y = |ms: f64| BOTTOM - ((ms / top_ms) * f64::from(BOTTOM - TOP)) as i32;
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("{e:?}");
    let legend = legend(&bars);
    for (i, bar) in bars.iter().enumerate() {
        let x0 = 120 + i as i32 * 260;
        for (name, from, to) in &bar.segs {
            let k = legend.iter().position(|n| n == name).unwrap_or(0);
            let color = Palette99::pick(k).filled();
            root.draw(&Rectangle::new([(x0, y(*to)), (x0 + 160, y(*from))], color))
                .map_err(err)?;
        }
        if let Some(ready) = bar.ready {
            // The ready marker: the same console line on both sides, so the comparable point.
            let at = y(ready);
            root.draw(&PathElement::new(
                vec![(x0 - 6, at), (x0 + 166, at)],
                BLACK.stroke_width(3),
            ))
            .map_err(err)?;
            if text {
                root.draw(&Text::new(
                    format!("ready {ready:.1}"),
                    (x0 + 170, at - 7),
                    ("sans-serif", 13),
                ))
                .map_err(err)?;
            }
        }
        if text {
            root.draw(&Text::new(
                bar.label.clone(),
                (x0, BOTTOM + 15),
                ("sans-serif", 18),
            ))
            .map_err(err)?;
        }
    }
    root.draw(&PathElement::new(
        vec![(100, TOP), (100, BOTTOM), (700, BOTTOM)],
        BLACK,
    ))
    .map_err(err)?;
    if text {
        let title = format!(
            "boot phases, medians of {} runs (ms from start; black line: ready marker)",
            r.runs
        );
        root.draw(&Text::new(title, (100, 20), ("sans-serif", 20)))
            .map_err(err)?;
        for t in 0..=4 {
            let ms = top_ms * f64::from(t) / 4.0;
            root.draw(&Text::new(
                format!("{ms:.1}"),
                (40, y(ms) - 6),
                ("sans-serif", 13),
            ))
            .map_err(err)?;
        }
    }
    for (k, name) in legend.iter().enumerate() {
        let ly = TOP + k as i32 * 18;
        root.draw(&Rectangle::new(
            [(720, ly), (732, ly + 12)],
            Palette99::pick(k).filled(),
        ))
        .map_err(err)?;
        if text {
            root.draw(&Text::new(name.clone(), (738, ly), ("sans-serif", 13)))
                .map_err(err)?;
        }
    }
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
