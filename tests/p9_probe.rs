//! Tier B: virtio-9p end to end. The probe guest enumerates PCI, drives the virtio-9p device
//! with its own 9P2000.L client and prints what it read; the test compares with the host file.
//! Also the confinement of a share as the guest sees it.

mod common;

use common::*;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn fnv1a(data: &[u8]) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

fn share_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("cvmm-9p-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cat(args: &[&str], what: &str) -> Run {
    let k = probe("pvh");
    let append = format!("probe.cat={what}");
    let mut a = vec!["run", "--kernel", k.to_str().unwrap(), "--memory", "128M"];
    a.extend_from_slice(&["--append", &append]);
    a.extend_from_slice(args);
    run_cvmm(&a, LIMIT)
}

fn marker<'a>(out: &'a str, prefix: &str) -> Option<&'a str> {
    out.lines().find_map(|l| l.strip_prefix(prefix))
}

#[test]
fn guest_reads_a_file_from_a_directory_share() {
    if !kvm_available("tier B 9p") {
        return;
    }
    let dir = share_dir("dir");
    let content: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.join("environment"), &content).unwrap();
    let share = format!("env_share={}", dir.display());
    let r = cat(&["--share", &share], "env_share/environment");
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stdout.contains("cvmm-probe: 9p tag=env_share"),
        "{}",
        r.stdout
    );
    let line = marker(&r.stdout, "cvmm-probe: cat env_share/environment ")
        .unwrap_or_else(|| panic!("{}", r.stdout));
    assert_eq!(
        line,
        format!("len={} fnv={}", content.len(), fnv1a(&content))
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn two_shares_are_told_apart_by_tag() {
    if !kvm_available("tier B 9p") {
        return;
    }
    let (a, b) = (share_dir("a"), share_dir("b"));
    std::fs::write(a.join("environment"), b"AGENT_LOG_LEVEL=info\n").unwrap();
    std::fs::write(b.join("cert.pem"), b"-----BEGIN CERTIFICATE-----\n").unwrap();
    let (sa, sb) = (
        format!("env_share={}", a.display()),
        format!("certs_share={}", b.display()),
    );
    let r = cat(&["--share", &sa, "--share", &sb], "certs_share/cert.pem");
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("9p tag=env_share") && r.stdout.contains("9p tag=certs_share"));
    assert_eq!(
        marker(&r.stdout, "cvmm-probe: cat certs_share/cert.pem "),
        Some(format!("len=28 fnv={}", fnv1a(b"-----BEGIN CERTIFICATE-----\n")).as_str())
    );
    for d in [a, b] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn nothing_outside_the_share_is_reachable_from_the_guest() {
    if !kvm_available("tier B 9p") {
        return;
    }
    let dir = share_dir("confine");
    let outside = share_dir("outside");
    std::fs::write(outside.join("secret"), b"TOP SECRET").unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), dir.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../cvmm-outside-rel", dir.join("rel-link")).unwrap();
    let share = format!("env_share={}", dir.display());
    let name = outside.file_name().unwrap().to_str().unwrap().to_string();
    for what in [
        "env_share/abs-link".to_string(),
        "env_share/rel-link".to_string(),
        format!("env_share/../{name}/secret"),
        "env_share/../../../../etc/hostname".to_string(),
    ] {
        let r = cat(&["--share", &share], &what);
        assert_eq!(r.code, Some(0), "{what}: {}", r.stderr);
        assert!(!r.stdout.contains("TOP SECRET"), "{what}: {}", r.stdout);
        assert!(
            r.stdout.contains("cat-error"),
            "{what} must fail: {}",
            r.stdout
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(outside).unwrap();
}

#[test]
fn memory_share_from_a_vm_spec() {
    if !kvm_available("tier B 9p") {
        return;
    }
    let k = probe("pvh");
    let spec = serde_json::json!({
        "kernel": k,
        "vcpus": 1,
        "memory_mib": 128,
        "cmdline": "probe.cat=env_share/environment",
        "net": false,
        "shares": [{"tag": "env_share", "source": {"memory": [["environment", b"X=42\n".to_vec()]]}}],
    });
    let path = std::env::temp_dir().join(format!("cvmm-9p-spec-{}.json", std::process::id()));
    std::fs::write(&path, spec.to_string()).unwrap();
    let r = run_cvmm(&["vm", "--spec", path.to_str().unwrap()], LIMIT);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert_eq!(
        marker(&r.stdout, "cvmm-probe: cat env_share/environment "),
        Some(format!("len=5 fnv={}", fnv1a(b"X=42\n")).as_str())
    );
}
