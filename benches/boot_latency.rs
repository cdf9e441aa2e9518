//! Boot-latency comparison: the probe guest booted alternately by cvmm and by
//! `qemu-system-x86_64 -enable-kvm -machine microvm`, same image, same vCPUs and memory.
//! Reports, per VMM, the median time from spawn to the guest's ready line ("cvmm-probe: ready",
//! printed right after the ready code 0x60 on port 0x80) and to process exit after the guest's
//! power-off, the ratio cvmm/QEMU, and peak RSS. For cvmm the RSS is also split into the VMM's
//! own part and the guest pages it touched (from cvmm's timeline metrics).
//!
//! `cargo bench --bench boot_latency`; env `CVMM_BENCH_RUNS` (default 20), `CVMM_BENCH_SMP`.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Sample {
    ready: Duration,
    exit: Duration,
    maxrss_kib: u64,
    vmm_overhead_kib: Option<u64>,
}

fn run_once(mut cmd: Command, timeline: Option<&Path>) -> Option<Sample> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let pid = child.id() as i32;
    let out = child.stdout.take()?;
    let mut ready = None;
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        if ready.is_none() && line.contains("cvmm-probe: ready") {
            ready = Some(start.elapsed());
        }
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with valid pointers to locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let exit = start.elapsed();
    std::mem::forget(child); // already reaped by wait4
    if r != pid || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        eprintln!("run failed: wait4={r} status={status:#x}");
        return None;
    }
    let vmm_overhead_kib = timeline.and_then(|p| {
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
        doc["metrics"]["vmm_overhead_kib"].as_u64()
    });
    Some(Sample {
        ready: ready?,
        exit,
        maxrss_kib: ru.ru_maxrss as u64,
        vmm_overhead_kib,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !common::kvm_or_skip("boot_latency") {
        return;
    }
    let qemu = "qemu-system-x86_64";
    let have_qemu = Command::new(qemu)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    let runs: usize = common::env_usize("CVMM_BENCH_RUNS", 20);
    let smp = std::env::var("CVMM_BENCH_SMP").unwrap_or_else(|_| "1".into());
    let image = common::probe_image();
    let cvmm = PathBuf::from(env!("CARGO_BIN_EXE_cvmm"));
    let tl = std::env::temp_dir().join(format!("cvmm-bench-{}.json", std::process::id()));

    let mut c_samples = Vec::new();
    let mut q_samples = Vec::new();
    for i in 0..runs + 1 {
        let mut c = Command::new(&cvmm);
        c.args([
            "run",
            "--kernel",
            image.to_str().unwrap(),
            "--memory",
            "128M",
        ])
        .args(["--smp", &smp, "--append", "probe.exit=poweroff"])
        .args(["--timeline", tl.to_str().unwrap()])
        .env("CVMM_LOG", "error");
        let cs = run_once(c, Some(&tl));
        let qs = if have_qemu {
            let mut q = Command::new(qemu);
            q.args([
                "-enable-kvm",
                "-machine",
                "microvm",
                "-cpu",
                common::QEMU_CPU,
                "-m",
                "128M",
            ])
            .args(["-smp", &smp, "-nodefaults", "-no-user-config", "-nographic"])
            .args(["-serial", "stdio", "-kernel", image.to_str().unwrap()])
            .args(["-append", "probe.exit=poweroff"]);
            run_once(q, None)
        } else {
            None
        };
        if i == 0 {
            continue; // warm-up: page cache, first exec
        }
        c_samples.extend(cs);
        q_samples.extend(qs);
    }
    let _ = std::fs::remove_file(&tl);

    let summary = |s: &[Sample]| {
        (
            common::median(s.iter().map(|x| ms(x.ready)).collect()),
            common::median(s.iter().map(|x| ms(x.exit)).collect()),
            common::median(s.iter().map(|x| x.maxrss_kib as f64).collect()),
        )
    };
    let (c_ready, c_exit, c_rss) = summary(&c_samples);
    let c_over = common::median(
        c_samples
            .iter()
            .filter_map(|x| x.vmm_overhead_kib)
            .map(|v| v as f64)
            .collect(),
    );
    println!("boot_latency: probe guest, smp {smp}, 128M, {runs} alternating runs (+1 warm-up)");
    println!("| VMM | runs | ready ms (median) | exit ms (median) | peak RSS KiB |");
    println!("|---|---|---|---|---|");
    println!(
        "| cvmm | {} | {c_ready:.1} | {c_exit:.1} | {c_rss:.0} (VMM own {c_over:.0}) |",
        c_samples.len()
    );
    let mut doc = serde_json::json!({
        "runs": runs, "smp": smp,
        "cvmm": {"ready_ms": c_ready, "exit_ms": c_exit, "maxrss_kib": c_rss, "vmm_overhead_kib": c_over},
    });
    if !q_samples.is_empty() {
        let (q_ready, q_exit, q_rss) = summary(&q_samples);
        println!(
            "| qemu microvm | {} | {q_ready:.1} | {q_exit:.1} | {q_rss:.0} |",
            q_samples.len()
        );
        println!(
            "ratio cvmm/qemu: ready {:.2}, exit {:.2}, peak RSS {:.2}",
            c_ready / q_ready,
            c_exit / q_exit,
            c_rss / q_rss
        );
        doc["qemu"] =
            serde_json::json!({"ready_ms": q_ready, "exit_ms": q_exit, "maxrss_kib": q_rss});
        doc["ratio"] = serde_json::json!({"ready": c_ready / q_ready, "exit": c_exit / q_exit});
    } else {
        println!("SKIPPED: qemu-system-x86_64 not found; no comparison");
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/boot_latency.json");
    let _ = std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap());
    println!("written {}", out.display());
}
