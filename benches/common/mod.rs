//! Shared pieces of the benchmark harnesses: the probe guest image, the /dev/kvm check, medians.

use std::path::{Path, PathBuf};
use std::process::Command;

/// QEMU's `-cpu` for the comparison runs on the host `/dev/kvm`: the PVM host refuses
/// IA32_ARCH_CAPABILITIES (MSR 0x10a), which `-cpu host` alone makes QEMU set and abort on.
pub const QEMU_CPU: &str = "host,-arch-capabilities";

/// Builds the probe guest (once per harness run) and returns its PVH ELF.
pub fn probe_image() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = root.join("target/probe-guest/out");
    let status = Command::new("sh")
        .arg(root.join("tests/probe-guest/build.sh"))
        .arg(&out)
        .env("CARGO_TARGET_DIR", root.join("target/probe-guest"))
        .status()
        .expect("build the probe guest");
    assert!(status.success());
    out.join("probe-pvh.elf")
}

/// Whether a usable /dev/kvm exists; prints the SKIPPED line for `bench` when not.
pub fn kvm_or_skip(bench: &str) -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        println!("SKIPPED: {bench} needs /dev/kvm");
    }
    ok
}

/// Median of `v` (upper median for even lengths); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// An integer from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
