//! `cvmm bench` on the probe guest (tier B): 3 runs give a complete, well-formed JSON report
//! with the phases in boot order, a PNG, and (when QEMU is installed) a ratio against QEMU
//! microvm; a `--vs` command that fails is reported and fails the bench; the network phases
//! (first guest frame, first forwarded connection) show up in boot order; bad arguments are
//! refused.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("cvmm-bench-test-{}-{name}", std::process::id()))
}

fn summary_ok(v: &serde_json::Value, what: &str) {
    let f = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{what}: no {k} in {v}"))
    };
    let (min, med, p90, max) = (f("min"), f("median"), f("p90"), f("max"));
    assert!(min <= med && med <= p90 && p90 <= max, "{what}: {v}");
    assert_eq!(v["n"], 3, "{what}: {v}");
}

#[test]
fn three_runs_give_a_complete_report_and_a_png() {
    if !kvm_available("tier B bench") {
        return;
    }
    let k = probe("pvh");
    let (json, png) = (tmp("report.json"), tmp("plot.png"));
    let mut args = vec![
        "bench".to_string(),
        "--runs".into(),
        "3".into(),
        "--warmup".into(),
        "1".into(),
        "--ready-marker".into(),
        "cvmm-probe: ready".into(),
        "--json".into(),
        json.display().to_string(),
        "--plot".into(),
        png.display().to_string(),
    ];
    let have_qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    if have_qemu {
        args.push("--vs".into());
        args.push(format!(
            "qemu-system-x86_64 -enable-kvm -machine microvm -cpu host,-arch-capabilities -m 128M -nodefaults \
             -no-user-config -nographic -serial stdio -kernel {} -append probe.exit=poweroff",
            k.display()
        ));
    }
    args.extend(["--", "--kernel"].map(String::from));
    args.push(k.display().to_string());
    args.extend(["--memory", "128M", "--append", "probe.exit=poweroff"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = run_cvmm(&argv, LIMIT);
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("| phase (ms since process start) |"),
        "{}",
        r.stdout
    );

    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(doc["runs"], 3);
    assert_eq!(doc["failures"].as_array().unwrap().len(), 0);
    for key in [
        "vmm_share_ms",
        "cvmm_exit_ms",
        "cvmm_ready_ms",
        "cvmm_rss_kib",
    ] {
        summary_ok(&doc[key], key);
    }
    for metric in ["vmm_hwm_kib", "vmm_overhead_kib"] {
        summary_ok(&doc["cvmm_metrics"][metric], metric);
    }
    let phases = doc["phases"].as_array().unwrap();
    let median = |name: &str| {
        phases
            .iter()
            .find(|p| p["phase"] == name)
            .unwrap_or_else(|| panic!("no phase {name}"))["ms"]["median"]
            .as_f64()
            .unwrap()
    };
    let order = [
        "process_start",
        "args_parsed",
        "kvm_vm_created",
        "memory_mapped",
        "images_loaded",
        "vcpus_created",
        "first_kvm_run[vcpu0]",
        "port80:0x60",
        "guest_stop",
    ];
    for w in order.windows(2) {
        assert!(median(w[0]) <= median(w[1]), "{} after {}", w[0], w[1]);
    }
    for p in phases {
        summary_ok(&p["ms"], p["phase"].as_str().unwrap());
    }
    // Debug-port codes keep their names and say their stage (the probe writes 0x60 when it
    // reaches its user-space-equivalent ready point).
    let port80 = phases.iter().find(|p| p["phase"] == "port80:0x60").unwrap();
    assert_eq!(port80["stage"], "user_space", "{port80}");
    for p in phases.iter().filter(|p| p.get("stage").is_some()) {
        assert!(
            p["phase"].as_str().unwrap().starts_with("port80:0x"),
            "only debug-port codes have a stage: {p}"
        );
    }
    assert!(
        r.stdout.contains("| port80:0x60 (user_space) |"),
        "{}",
        r.stdout
    );
    if have_qemu {
        let o = &doc["other"];
        summary_ok(&o["ready_ms"], "other ready");
        assert!(o["ready_ratio"].as_f64().unwrap() > 0.0, "{o}");
        assert!(o["exit_ratio"].as_f64().unwrap() > 0.0, "{o}");
    } else {
        println!("SKIPPED: the --vs part needs qemu-system-x86_64");
    }
    let png_bytes = std::fs::read(&png).unwrap();
    assert_eq!(&png_bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png_bytes.len() > 2000, "a PNG of {} bytes", png_bytes.len());
    let _ = std::fs::remove_file(json);
    let _ = std::fs::remove_file(png);
}

/// The median of `name` in a report's phases, if recorded.
fn phase_median(doc: &serde_json::Value, name: &str) -> Option<f64> {
    doc["phases"]
        .as_array()?
        .iter()
        .find(|p| p["phase"] == name)?["ms"]["median"]
        .as_f64()
}

#[test]
fn network_phases_appear_in_the_report() {
    if !kvm_available("tier B bench") {
        return;
    }
    let k = probe("pvh");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let json = tmp("net.json");
    // The guest serves one request on port 7002; a client keeps trying until it is answered.
    let client = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < LIMIT {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                let mut out = String::new();
                if s.write_all(b"ECHO bench\n").is_ok()
                    && s.read_to_string(&mut out).is_ok()
                    && !out.is_empty()
                {
                    return out;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        String::new()
    });
    let forward = format!("tcp:127.0.0.1:{port}-:7002");
    let r = run_cvmm(
        &[
            "bench",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--json",
            json.to_str().unwrap(),
            "--",
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "128M",
            "--append",
            "probe.net=dhcp probe.serve=1 probe.exit=poweroff",
            "--forward",
            &forward,
        ],
        LIMIT,
    );
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(client.join().unwrap(), "bench\n");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let at = |name: &str| phase_median(&doc, name).unwrap_or_else(|| panic!("no {name}: {doc}"));
    let (run, frame, accept, stop) = (
        at("first_kvm_run[vcpu0]"),
        at("net_first_guest_frame"),
        at("fwd_first_accept"),
        at("guest_stop"),
    );
    // The guest must run to send a frame; the host may connect before the guest runs.
    assert!(run <= frame && frame <= stop, "{doc}");
    assert!(accept <= stop, "{doc}");
    let _ = std::fs::remove_file(json);
}

#[test]
fn a_failing_vs_command_is_reported_and_fails_the_bench() {
    if !kvm_available("tier B bench") {
        return;
    }
    let k = probe("pvh");
    let json = tmp("fail.json");
    let r = run_cvmm(
        &[
            "bench",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--vs",
            "false",
            "--json",
            json.to_str().unwrap(),
            "--",
            "--kernel",
            k.to_str().unwrap(),
            "--append",
            "probe.exit=poweroff",
        ],
        LIMIT,
    );
    assert_eq!(r.code, Some(1), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("FAILED --vs run 1"), "{}", r.stderr);
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(doc["failures"].as_array().unwrap().len(), 1, "{doc}");
    let why = doc["failures"][0].as_str().unwrap();
    assert!(
        why.contains("--vs run 1") && why.contains("exit status 1"),
        "{why}"
    );
    assert!(r.stdout.contains("FAILED runs: 1"), "{}", r.stdout);
    assert!(
        doc["other"]["exit_ms"].is_null(),
        "no made-up numbers: {doc}"
    );
    let _ = std::fs::remove_file(json);
}

#[test]
fn bad_bench_arguments_are_refused() {
    let r = run_cvmm(&["bench", "--runs", "0", "--", "--kernel", "/k"], LIMIT);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("--runs 0"), "{}", r.stderr);
    let r = run_cvmm(&["bench", "--runs", "2"], LIMIT);
    assert_eq!(r.code, Some(2), "missing run args: {}", r.stderr);
    let r = run_cvmm(
        &["bench", "--", "--kernel", "/k", "--timeline", "/tmp/x.json"],
        LIMIT,
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("--timeline"), "{}", r.stderr);
}
