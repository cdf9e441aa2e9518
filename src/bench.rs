//! `cvmm bench`: boots the same VM N times (after K warm-ups) and reports the boot timeline phase
//! by phase (min/median/p90/max), peak RSS and, with `--vs`, the same guest under another VMM run
//! alternately, as a table, JSON, Markdown and a stacked-bar PNG. A failing run of either side is
//! reported and makes the command fail; nothing is averaged away.

mod markdown;
mod plot;
mod run;
mod stats;
#[cfg(test)]
mod tests;

use anyhow::{bail, Context};
use clap::Args;
use run::{OneRun, Outcome};
use serde::Serialize;
use stats::Summary;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// `cvmm bench` flags.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Measured runs of each side.
    #[arg(long, default_value = "10")]
    runs: usize,
    /// Unmeasured runs before (page cache, first exec).
    #[arg(long, default_value = "1")]
    warmup: usize,
    /// Another VMM's command line (run with `sh -c`), alternated with cvmm.
    #[arg(long)]
    vs: Option<String>,
    /// A line fragment on the guest console that marks "ready" (e.g. `cvmm-probe: ready`).
    #[arg(long)]
    ready_marker: Option<String>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a Markdown table here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Draw the phase breakdown as a PNG here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Longest a single run may take (a hang guard), in seconds.
    #[arg(long, default_value = "120")]
    timeout: u64,
    /// `cvmm run` arguments (after `--`).
    #[arg(last = true, required = true)]
    run_args: Vec<String>,
}

/// Everything `cvmm bench` measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Measured runs per side.
    pub runs: usize,
    /// Warm-up runs per side.
    pub warmup: usize,
    /// The `cvmm run` arguments.
    pub cvmm_args: Vec<String>,
    /// Timeline phases in boot order, microseconds since process start.
    pub phases: Vec<PhaseStats>,
    /// cvmm's own share of the boot: process start to the first KVM_RUN, ms.
    pub vmm_share_ms: Option<Summary>,
    /// cvmm wall time to exit, ms.
    pub cvmm_exit_ms: Option<Summary>,
    /// cvmm time to the ready marker, ms.
    pub cvmm_ready_ms: Option<Summary>,
    /// cvmm peak RSS, KiB (wait4 ru_maxrss, measured as for the other side).
    pub cvmm_rss_kib: Option<Summary>,
    /// cvmm's timeline metrics over the runs (`vmm_hwm_kib`, `guest_rss_kib`,
    /// `vmm_overhead_kib` = peak RSS minus resident guest pages, TEE page counts, ...).
    pub cvmm_metrics: BTreeMap<String, Summary>,
    /// The other VMM, when `--vs` was given.
    pub other: Option<OtherReport>,
    /// Failed runs, each with what went wrong.
    pub failures: Vec<String>,
}

/// One timeline phase over the runs.
#[derive(Debug, Serialize)]
pub struct PhaseStats {
    /// Phase name (`kvm_vm_created`, `port80:0x40`, `first_kvm_run[vcpu0]`, ...).
    pub phase: String,
    /// For a debug-port code: its boot stage (`firmware`, `boot_loader`, `kernel`,
    /// `user_space`); absent for other phases and codes from 0x80 up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Milliseconds since process start.
    pub ms: Summary,
}

impl PhaseStats {
    /// How tables and the plot name the phase: `port80:0x40 (kernel)` for a debug-port code
    /// with a stage, the phase name otherwise.
    pub fn label(&self) -> String {
        match &self.stage {
            Some(stage) => format!("{} ({stage})", self.phase),
            None => self.phase.clone(),
        }
    }
}

/// The `--vs` side.
#[derive(Debug, Serialize)]
pub struct OtherReport {
    /// Its command.
    pub command: String,
    /// Wall time to exit, ms.
    pub exit_ms: Option<Summary>,
    /// Time to the ready marker, ms.
    pub ready_ms: Option<Summary>,
    /// Peak RSS, KiB.
    pub rss_kib: Option<Summary>,
    /// cvmm / other, medians of the exit times.
    pub exit_ratio: Option<f64>,
    /// cvmm / other, medians of the ready times.
    pub ready_ratio: Option<f64>,
}

/// Refuses arguments that cannot give a benchmark.
fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs 0: at least one measured run is needed");
    }
    if args.timeout == 0 {
        bail!("--timeout 0: a run needs some time");
    }
    if let Some(a) = args
        .run_args
        .iter()
        .find(|a| *a == "--timeline" || a.starts_with("--timeline="))
    {
        bail!("the `cvmm run` arguments set '{a}': cvmm bench sets its own --timeline");
    }
    if args.vs.as_deref().is_some_and(|c| c.trim().is_empty()) {
        bail!("--vs '': give the other VMM's command line");
    }
    if args.ready_marker.as_deref() == Some("") {
        bail!("--ready-marker '': an empty marker matches any line");
    }
    Ok(())
}

/// Runs the benchmark; the exit status is non-zero when any run failed.
pub fn bench(args: BenchArgs) -> anyhow::Result<bool> {
    validate(&args)?;
    let exe = std::env::current_exe().context("finding the cvmm executable")?;
    let limit = Duration::from_secs(args.timeout);
    let marker = args.ready_marker.as_deref();
    let mut cvmm: Vec<OneRun> = Vec::new();
    let mut other: Vec<OneRun> = Vec::new();
    let mut failures = Vec::new();
    for i in 0..args.warmup + args.runs {
        let measured = i >= args.warmup;
        let label = if measured {
            format!("run {}", i - args.warmup + 1)
        } else {
            format!("warm-up {}", i + 1)
        };
        match run::cvmm(&exe, &args.run_args, marker, limit) {
            Ok(r) if measured => cvmm.push(r),
            Ok(_) => {}
            Err(e) => failures.push(format!("cvmm {label}: {e:#}")),
        }
        if let Some(cmd) = &args.vs {
            match run::other(cmd, marker, limit) {
                Ok(r) if measured => other.push(r),
                Ok(_) => {}
                Err(e) => failures.push(format!("--vs {label}: {e:#}")),
            }
        }
        tracing::info!(run = %label, "bench run done");
    }
    let report = build_report(&args, &cvmm, &other, failures);
    crate::cli::stdout_text(&markdown::render(&report));
    if let Some(p) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(p, text).with_context(|| format!("writing '{}'", p.display()))?;
    }
    if let Some(p) = &args.markdown {
        std::fs::write(p, markdown::render(&report))
            .with_context(|| format!("writing '{}'", p.display()))?;
    }
    if let Some(p) = &args.plot {
        plot::draw(&report, p).with_context(|| format!("drawing '{}'", p.display()))?;
    }
    for f in &report.failures {
        eprintln!("cvmm bench: FAILED {f}");
    }
    Ok(report.failures.is_empty())
}

fn build_report(
    args: &BenchArgs,
    cvmm: &[OneRun],
    other: &[OneRun],
    failures: Vec<String>,
) -> Report {
    // Phases in the order of the first run; every run's value where present.
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut metrics: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut stages: BTreeMap<String, String> = BTreeMap::new();
    for r in cvmm {
        if let Outcome::Timeline(doc) = &r.outcome {
            for (name, stage) in &doc.stages {
                stages.entry(name.clone()).or_insert_with(|| stage.clone());
            }
            for (name, v) in &doc.metrics {
                metrics.entry(name.clone()).or_default().push(*v as f64);
            }
            for (name, us) in &doc.events {
                if !order.contains(name) {
                    order.push(name.clone());
                }
                values
                    .entry(name.clone())
                    .or_default()
                    .push(*us as f64 / 1000.0);
            }
        }
    }
    let phases = order
        .iter()
        .filter_map(|p| {
            Some(PhaseStats {
                phase: p.clone(),
                stage: stages.get(p).cloned(),
                ms: Summary::of(values.get(p)?)?,
            })
        })
        .collect();
    let first_run: Vec<f64> = cvmm
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Timeline(doc) => doc
                .events
                .iter()
                .find(|(n, _)| n.starts_with("first_kvm_run"))
                .map(|(_, us)| *us as f64 / 1000.0),
            Outcome::Plain => None,
        })
        .collect();
    let exit = |rs: &[OneRun]| Summary::of(&rs.iter().map(|r| r.exit_ms).collect::<Vec<_>>());
    let ready =
        |rs: &[OneRun]| Summary::of(&rs.iter().filter_map(|r| r.ready_ms).collect::<Vec<_>>());
    let rss =
        |rs: &[OneRun]| Summary::of(&rs.iter().map(|r| r.maxrss_kib as f64).collect::<Vec<_>>());
    let ratio = |a: &Option<Summary>, b: &Option<Summary>| match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
        _ => None,
    };
    let (c_exit, c_ready) = (exit(cvmm), ready(cvmm));
    let other = args.vs.as_ref().map(|cmd| {
        let (o_exit, o_ready) = (exit(other), ready(other));
        OtherReport {
            command: cmd.clone(),
            exit_ratio: ratio(&c_exit, &o_exit),
            ready_ratio: ratio(&c_ready, &o_ready),
            exit_ms: o_exit,
            ready_ms: o_ready,
            rss_kib: rss(other),
        }
    });
    Report {
        runs: args.runs,
        warmup: args.warmup,
        cvmm_args: args.run_args.clone(),
        phases,
        vmm_share_ms: Summary::of(&first_run),
        cvmm_exit_ms: c_exit,
        cvmm_ready_ms: c_ready,
        cvmm_rss_kib: rss(cvmm),
        cvmm_metrics: metrics
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), Summary::of(v)?)))
            .collect(),
        other,
        failures,
    }
}
