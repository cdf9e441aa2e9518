//! The phase breakdown as stacked bars (plotters, bitmap backend): cvmm's median timeline, phase
//! after phase up to its exit, beside the other VMM's ready and exit. Text needs a TrueType
//! font; Debian's DejaVu Sans is used when installed, otherwise the bars are drawn unlabelled.

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

/// One bar: (label, [(segment name, from ms, to ms)]).
type Bar = (String, Vec<(String, f64, f64)>);

fn bars(r: &Report) -> Vec<Bar> {
    let mut segs = Vec::new();
    let mut prev = 0.0;
    for p in &r.phases {
        let at = p.ms.median.max(prev);
        segs.push((p.phase.clone(), prev, at));
        prev = at;
    }
    if let Some(exit) = r.cvmm_exit_ms {
        segs.push(("until exit".to_string(), prev, exit.median.max(prev)));
    }
    let mut out = vec![("cvmm".to_string(), segs)];
    if let Some(o) = &r.other {
        let mut segs = Vec::new();
        let ready = o.ready_ms.map(|s| s.median).unwrap_or(0.0);
        if ready > 0.0 {
            segs.push(("to ready".to_string(), 0.0, ready));
        }
        if let Some(e) = o.exit_ms {
            segs.push(("until exit".to_string(), ready, e.median.max(ready)));
        }
        out.push(("other".to_string(), segs));
    }
    out
}

/// Writes the PNG.
pub fn draw(r: &Report, path: &Path) -> anyhow::Result<()> {
    let text = load_font();
    let bars = bars(r);
    let top_ms = bars
        .iter()
        .flat_map(|(_, s)| s.iter().map(|x| x.2))
        .fold(0.0f64, f64::max)
        .max(1e-3);
    let y = |ms: f64| BOTTOM - ((ms / top_ms) * f64::from(BOTTOM - TOP)) as i32;
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let err = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("{e:?}");
    let mut legend: Vec<String> = Vec::new();
    for (i, (label, segs)) in bars.iter().enumerate() {
        let x0 = 120 + i as i32 * 260;
        for (name, from, to) in segs {
            let k = match legend.iter().position(|n| n == name) {
                Some(k) => k,
                None => {
                    legend.push(name.clone());
                    legend.len() - 1
                }
            };
            let color = Palette99::pick(k).filled();
            root.draw(&Rectangle::new([(x0, y(*to)), (x0 + 160, y(*from))], color))
                .map_err(err)?;
        }
        if text {
            root.draw(&Text::new(
                label.clone(),
                (x0 + 50, BOTTOM + 15),
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
            "boot phases, median of {} runs (ms since process start)",
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
