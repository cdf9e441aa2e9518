//! The report as Markdown tables: what `cvmm bench` prints and writes with `--markdown`.

use super::{Report, Summary};

fn cells(s: &Option<Summary>) -> String {
    match s {
        Some(s) => format!(
            "{:.2} | {:.2} | {:.2} | {:.2}",
            s.min, s.median, s.p90, s.max
        ),
        None => "– | – | – | –".into(),
    }
}

/// The report as Markdown tables (also what is printed).
pub fn render(r: &Report) -> String {
    let mut out = format!(
        "cvmm bench: {} runs (+{} warm-up), cvmm run {}\n\n| phase (ms since process start) | min | median | p90 | max |\n|---|---|---|---|---|\n",
        r.runs,
        r.warmup,
        r.cvmm_args.join(" ")
    );
    for p in &r.phases {
        out += &format!("| {} | {} |\n", p.label(), cells(&Some(p.ms)));
    }
    out += "\n| measure | min | median | p90 | max |\n|---|---|---|---|---|\n";
    out += &format!(
        "| cvmm: process start → first KVM_RUN (ms) | {} |\n",
        cells(&r.vmm_share_ms)
    );
    out += &format!("| cvmm: ready (ms) | {} |\n", cells(&r.cvmm_ready_ms));
    out += &format!("| cvmm: exit (ms) | {} |\n", cells(&r.cvmm_exit_ms));
    out += &format!("| cvmm: peak RSS (KiB) | {} |\n", cells(&r.cvmm_rss_kib));
    for (name, s) in &r.cvmm_metrics {
        out += &format!("| cvmm: {name} | {} |\n", cells(&Some(*s)));
    }
    if let Some(o) = &r.other {
        out += &format!("| other: ready (ms) | {} |\n", cells(&o.ready_ms));
        out += &format!("| other: exit (ms) | {} |\n", cells(&o.exit_ms));
        out += &format!("| other: peak RSS (KiB) | {} |\n", cells(&o.rss_kib));
        let f = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2}"));
        out += &format!(
            "\nratio cvmm / other (medians): ready {}, exit {}  (other: `{}`)\n",
            f(o.ready_ratio),
            f(o.exit_ratio),
            o.command
        );
    }
    if !r.failures.is_empty() {
        out += &format!("\nFAILED runs: {}\n", r.failures.len());
        for f in &r.failures {
            out += &format!("- {}\n", f.replace('\n', " "));
        }
    }
    out
}
