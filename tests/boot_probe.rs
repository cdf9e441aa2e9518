//! Tier B: the probe guest on the host's /dev/kvm. Boots through both protocols with 1 and 4
//! vCPUs, checks what the guest saw, the timeline, and that every way a guest can end gives
//! its own exit status.

mod common;

use common::*;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn boot(kind: &str, smp: &str, append: &str, extra: &[&str]) -> Run {
    let k = probe(kind);
    let mut args = vec!["run", "--kernel", k.to_str().unwrap(), "--smp", smp];
    args.extend_from_slice(&["--append", append]);
    if !extra.contains(&"--memory") {
        args.extend_from_slice(&["--memory", "128M"]);
    }
    args.extend_from_slice(extra);
    run_cvmm(&args, LIMIT)
}

fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .filter_map(|l| l.strip_prefix("cvmm-probe: "))
        .flat_map(|l| l.split_whitespace())
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn pvh_and_bzimage_boot_with_one_and_four_vcpus() {
    if !kvm_available("tier B boot") {
        return;
    }
    for kind in ["pvh", "bzimage"] {
        for smp in ["1", "4"] {
            let r = boot(kind, smp, "probe.exit=poweroff", &[]);
            assert_eq!(
                r.code,
                Some(0),
                "{kind} smp {smp}: {}\n{}",
                r.stdout,
                r.stderr
            );
            let proto = if kind == "pvh" { "pvh" } else { "linux" };
            assert_eq!(field(&r.stdout, "proto"), Some(proto), "{}", r.stdout);
            assert_eq!(field(&r.stdout, "cpus"), Some(smp), "{}", r.stdout);
            assert_eq!(field(&r.stdout, "source"), Some("madt"));
            assert!(r.stdout.contains("cvmm-probe: ready"));
            assert!(r.stdout.contains("cmdline=probe.exit=poweroff"));
            assert!(r.stderr.contains("cvmm: guest powered off"), "{}", r.stderr);
        }
    }
}

#[test]
fn guest_sees_the_memory_size_asked_for() {
    if !kvm_available("tier B boot") {
        return;
    }
    let r = boot("pvh", "1", "", &["--memory", "256M"]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let mib: u64 = field(&r.stdout, "mem_mib").unwrap().parse().unwrap();
    // Everything but the legacy hole below 1 MiB is usable RAM.
    assert!((254..=256).contains(&mib), "guest saw {mib} MiB");
}

#[test]
fn timeline_has_every_phase_in_order() {
    if !kvm_available("tier B boot") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("cvmm-tl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("timeline.json");
    let r = boot("pvh", "2", "", &["--timeline", path.to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(doc["exit"], "poweroff");
    let ev = doc["events"].as_array().unwrap();
    let phases: Vec<&str> = ev.iter().map(|e| e["phase"].as_str().unwrap()).collect();
    let order = [
        "process_start",
        "args_parsed",
        "kvm_vm_created",
        "memory_mapped",
        "images_loaded",
        "vcpus_created",
        "first_kvm_run",
        "debug_port",
        "guest_stop",
    ];
    let mut at = 0;
    for want in order {
        let pos = phases[at..]
            .iter()
            .position(|p| *p == want)
            .unwrap_or_else(|| panic!("phase {want} missing or out of order in {phases:?}"));
        at += pos;
    }
    let us: Vec<u64> = ev.iter().map(|e| e["us"].as_u64().unwrap()).collect();
    let codes: Vec<u64> = ev.iter().filter_map(|e| e["code"].as_u64()).collect();
    assert_eq!(codes, vec![0x40, 0x41, 0x60], "probe's port 0x80 codes");
    // Per-phase times are monotonic except first_kvm_run of the second vCPU, which races.
    let main_phases: Vec<u64> = ev
        .iter()
        .zip(&us)
        .filter(|(e, _)| e["vcpu"].is_null())
        .map(|(_, u)| *u)
        .collect();
    assert!(main_phases.windows(2).all(|w| w[0] <= w[1]), "{us:?}");
    // vCPU 0 always runs; an AP records its first KVM_RUN if its thread got to run before the
    // guest powered off (a busy host can delay it past the probe's whole run).
    let runs: Vec<u64> = ev
        .iter()
        .filter(|e| e["phase"] == "first_kvm_run")
        .map(|e| e["vcpu"].as_u64().unwrap())
        .collect();
    assert!(runs.contains(&0), "{runs:?}");
    assert!(runs.len() <= 2 && runs.iter().all(|&v| v < 2), "{runs:?}");
}

#[test]
fn each_guest_ending_has_its_own_exit_status() {
    if !kvm_available("tier B boot") {
        return;
    }
    for (how, code, msg) in [
        ("poweroff", 0, "powered off"),
        ("reboot", 3, "reset"),
        ("triplefault", 4, "triple-faulted"),
        ("panic", 5, "panicked"),
    ] {
        let r = boot(
            "bzimage",
            "1",
            &format!("probe.exit={how}"),
            &["--serial", "none"],
        );
        assert_eq!(r.code, Some(code), "{how}: {}", r.stderr);
        let last = r.stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("cvmm: ") && last.contains(msg),
            "{how}: {last}"
        );
    }
}

#[test]
fn sigterm_stops_a_running_guest() {
    if !kvm_available("tier B boot") {
        return;
    }
    let k = probe("pvh");
    let child = std::process::Command::new(cvmm())
        .args([
            "run",
            "--kernel",
            k.to_str().unwrap(),
            "--append",
            "probe.exit=halt",
        ])
        .args(["--serial", "none", "--memory", "64M"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let r = wait_limit(child, LIMIT);
    assert_eq!(r.code, Some(128 + libc::SIGTERM), "{}", r.stderr);
    assert!(r.stderr.contains("stopped by signal 15"), "{}", r.stderr);
}

#[test]
fn serial_to_file_and_none() {
    if !kvm_available("tier B boot") {
        return;
    }
    let path = std::env::temp_dir().join(format!("cvmm-serial-{}.log", std::process::id()));
    let r = boot(
        "pvh",
        "1",
        "",
        &["--serial", &format!("file:{}", path.display())],
    );
    assert_eq!(r.code, Some(0));
    assert!(!r.stdout.contains("cvmm-probe"));
    let log = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(log.contains("cvmm-probe: ready"), "{log}");
    let r = boot("pvh", "1", "", &["--serial", "none"]);
    assert_eq!(r.code, Some(0));
    assert!(r.stdout.is_empty());
}

#[test]
fn cpu_models_and_feature_edits_boot() {
    if !kvm_available("tier B boot") {
        return;
    }
    for cpu in ["host", "EPYC", "EPYC-v4,-avx2,+sse4.2", "host,-x2apic"] {
        let r = boot("pvh", "2", "", &["--cpu", cpu]);
        assert_eq!(r.code, Some(0), "--cpu {cpu}: {}", r.stderr);
        assert_eq!(field(&r.stdout, "cpus"), Some("2"));
    }
}
