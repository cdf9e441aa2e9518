//! `cvmm run --tee` on a host without SEV-SNP or TDX (spec tee-launch.md §1 requirement 5):
//! snp/tdx fail before anything is created, naming the missing prerequisite, with exit status
//! 2; auto and none boot plain. Also `cvmm measure --output-format`.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn host_has_tee() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .is_ok_and(|c| c.contains("sev_snp") || c.contains("tdx_host_platform"))
}

#[test]
fn snp_and_tdx_fail_early_naming_the_missing_prerequisite() {
    if host_has_tee() {
        println!("SKIPPED: tee flags: this host advertises SNP or TDX");
        return;
    }
    for (mode, platform, flag) in [
        ("snp", "SEV-SNP", "sev_snp"),
        ("tdx", "TDX", "tdx_host_platform"),
    ] {
        // The kernel path does not exist: the TEE check must come before anything is opened.
        let r = run_cvmm(
            &["run", "--kernel", "/nonexistent/kernel", "--tee", mode],
            LIMIT,
        );
        assert_eq!(r.code, Some(2), "{mode}: {}", r.stderr);
        let want = format!(
            "--tee {mode}: host does not support {platform}: /proc/cpuinfo has no {flag} flag"
        );
        assert!(r.stderr.contains(&want), "{mode}: {}", r.stderr);
        assert!(!r.stderr.contains("/nonexistent/kernel"), "{}", r.stderr);
    }
}

#[test]
fn tdx_with_tdvf_and_kernel_fails_before_anything_is_created() {
    if host_has_tee() {
        println!("SKIPPED: tee flags: this host advertises SNP or TDX");
        return;
    }
    let ovmf = "/usr/share/ovmf/OVMF.fd";
    if !std::path::Path::new(ovmf).exists() {
        println!("SKIPPED: tdx launch inputs: no {ovmf}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("cvmm-tdx-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = dir.join("bzImage");
    std::fs::write(&kernel, b"not read before the TDX check").unwrap();
    let timeline = dir.join("timeline.json");
    let r = run_cvmm(
        &[
            "run",
            "--tee",
            "tdx",
            "--firmware",
            ovmf,
            "--kernel",
            kernel.to_str().unwrap(),
            "--timeline",
            timeline.to_str().unwrap(),
        ],
        LIMIT,
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "--tee tdx: host does not support TDX: /proc/cpuinfo has no tdx_host_platform flag"
        ),
        "{}",
        r.stderr
    );
    // Refused before the VM, the launch or the firmware platform exist: no KVM call failed,
    // no launch phase ran, and no timeline was written.
    assert!(!r.stderr.contains("KVM call"), "{}", r.stderr);
    assert!(!r.stderr.contains("VMM failure"), "{}", r.stderr);
    assert!(!r.stderr.contains("TDX launch"), "{}", r.stderr);
    let written = std::fs::read_to_string(&timeline).unwrap_or_default();
    assert!(!written.contains("tee_launch"), "{written}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_tee_value_is_named() {
    let r = run_cvmm(&["run", "--kernel", "/k", "--tee", "sev"], LIMIT);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("--tee 'sev'"), "{}", r.stderr);
}

#[test]
fn bad_td_report_value_is_bad_input_naming_the_flag() {
    let r = run_cvmm(
        &[
            "run",
            "--kernel",
            "/k",
            "--tee",
            "tdx",
            "--tdx-mrowner",
            "0102",
        ],
        LIMIT,
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("--tdx-mrowner '0102'"), "{}", r.stderr);
}

#[test]
fn auto_and_none_boot_plain_here() {
    if host_has_tee() {
        println!("SKIPPED: tee flags: this host advertises SNP or TDX");
        return;
    }
    if !kvm_available("tier B tee flags") {
        return;
    }
    let k = probe("pvh");
    for mode in ["auto", "none"] {
        let r = run_cvmm(
            &[
                "run",
                "--kernel",
                k.to_str().unwrap(),
                "--memory",
                "128M",
                "--tee",
                mode,
            ],
            LIMIT,
        );
        assert_eq!(r.code, Some(0), "{mode}: {}\n{}", r.stdout, r.stderr);
        assert!(
            r.stdout.contains("cvmm-probe: ready"),
            "{mode}: {}",
            r.stdout
        );
    }
}

fn measure(args: &[&str]) -> String {
    let out = Command::new(cvmm())
        .arg("measure")
        .args(args)
        .output()
        .expect("run cvmm measure");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// base64 of the hex digest's bytes, by coreutils `base64` (an independent encoder).
fn coreutils_base64(hex: &str) -> String {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let mut child = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("coreutils base64");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn measure_prints_hex_by_default_and_base64_on_request() {
    let ovmf = "/usr/share/ovmf/OVMF.fd";
    if !std::path::Path::new(ovmf).exists() {
        assert!(
            std::env::var("CVMM_REQUIRE_ORACLES").map_or(true, |v| v != "1"),
            "oracle required: no {ovmf} (apt-get install ovmf)"
        );
        println!("SKIPPED: measure output format: no {ovmf}");
        return;
    }
    for mode in ["snp", "tdx"] {
        let hex = measure(&["--mode", mode, "--ovmf", ovmf]);
        assert_eq!(hex.len(), 96, "{hex}");
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        let explicit = measure(&["--mode", mode, "--ovmf", ovmf, "--output-format", "hex"]);
        assert_eq!(explicit, hex);
        let b64 = measure(&["--mode", mode, "--ovmf", ovmf, "--output-format", "base64"]);
        assert_eq!(b64.len(), 64, "{b64}");
        assert_eq!(b64, coreutils_base64(&hex), "{mode}");
    }
    let out = Command::new(cvmm())
        .args(["measure", "--ovmf", ovmf, "--output-format", "binary"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--output-format 'binary'"), "{err}");
}
