//! `cvmm measure` against an independent tool: `sev-snp-measure` (PyPI) on Debian's OVMF, and
//! on tee's synthetic AmdSev-style firmware (with SNP_KERNEL_HASHES) for a measured direct
//! boot. With CVMM_REQUIRE_ORACLES=1 (CI) a missing tool or image is a failure, not a skip.

mod common;

use std::process::Command;

fn require() -> bool {
    std::env::var("CVMM_REQUIRE_ORACLES").is_ok_and(|v| v == "1")
}

fn skip(why: &str) {
    assert!(!require(), "oracle required but unavailable: {why}");
    println!("SKIPPED: measure oracle: {why}");
}

#[test]
fn snp_digest_matches_sev_snp_measure_for_ovmf() {
    let ovmf = "/usr/share/ovmf/OVMF.fd";
    if !std::path::Path::new(ovmf).exists() {
        return skip("no /usr/share/ovmf/OVMF.fd (apt-get install ovmf)");
    }
    for (vcpus, ty) in [("1", "EPYC-v4"), ("4", "EPYC-v4"), ("2", "EPYC-Milan")] {
        let ours = Command::new(common::cvmm())
            .args(["measure", "--mode", "snp", "--ovmf", ovmf, "--vcpus", vcpus])
            .args(["--vcpu-type", ty])
            .output()
            .unwrap();
        assert!(
            ours.status.success(),
            "{}",
            String::from_utf8_lossy(&ours.stderr)
        );
        let ours = String::from_utf8(ours.stdout).unwrap().trim().to_string();
        assert_eq!(ours.len(), 96, "{ours}");
        let theirs = match Command::new("sev-snp-measure")
            .args([
                "--mode",
                "snp",
                "--ovmf",
                ovmf,
                "--vcpus",
                vcpus,
                "--vcpu-type",
                ty,
            ])
            .output()
        {
            Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap(),
            _ => return skip("sev-snp-measure not installed (pip install sev-snp-measure)"),
        };
        assert_eq!(ours, theirs.trim().to_lowercase(), "{vcpus} x {ty}");
    }
}

/// `--kernel/--initrd/--append` through the CLI: the digest with the SEV hashes table equals
/// sev-snp-measure's for the same synthetic firmware (the one tee's library-level test uses).
#[test]
fn snp_direct_boot_digest_matches_sev_snp_measure() {
    let test = "snp_direct_boot_digest_matches_sev_snp_measure";
    let dir = std::env::temp_dir().join(format!("cvmm-measure-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ovmf, kernel, initrd) = (
        dir.join("amdsev.fd"),
        dir.join("bzImage"),
        dir.join("initrd.img"),
    );
    std::fs::write(&ovmf, tee::testutil::SynthOvmf::amdsev().build()).unwrap();
    let kernel_bytes: Vec<u8> = (0..50_000u32).map(|i| ((i * 31) >> 3) as u8).collect();
    std::fs::write(&kernel, kernel_bytes).unwrap();
    std::fs::write(&initrd, b"initrd contents").unwrap();
    let cmdline = "console=ttyS0 root=/dev/vda quiet";
    let (o, k, i) = (
        ovmf.to_str().unwrap(),
        kernel.to_str().unwrap(),
        initrd.to_str().unwrap(),
    );
    let cvmm_measure = |args: &[&str]| -> String {
        let out = Command::new(common::cvmm())
            .arg("measure")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let mut digests = Vec::new();
    for (vcpus, ty) in [("1", "EPYC-v4"), ("3", "EPYC-Milan")] {
        let args = [
            "--mode",
            "snp",
            "--vcpus",
            vcpus,
            "--vcpu-type",
            ty,
            "--ovmf",
            o,
            "--kernel",
            k,
            "--initrd",
            i,
            "--append",
            cmdline,
        ];
        let ours = cvmm_measure(&args);
        assert_eq!(ours.len(), 96, "{ours}");
        let Some(theirs) = tee::testutil::sev_snp_measure(test, &dir, &args) else {
            let _ = std::fs::remove_dir_all(&dir);
            return;
        };
        assert_eq!(ours, theirs, "{vcpus} x {ty}");
        digests.push(ours);
    }
    // The kernel is part of the measurement: without it the digest differs.
    let firmware_only = cvmm_measure(&["--mode", "snp", "--vcpus", "1", "--ovmf", o]);
    assert_ne!(firmware_only, digests[0]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_measure_inputs_are_named() {
    let out = Command::new(common::cvmm())
        .args(["measure", "--ovmf", "/nonexistent/OVMF.fd"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/OVMF.fd"));
    let out = Command::new(common::cvmm())
        .args(["measure", "--ovmf", "/etc/hostname"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/etc/hostname"));
    let out = Command::new(common::cvmm())
        .args(["measure", "--igvm", "/etc/hostname"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn tdx_mrtd_of_debian_ovmf_matches_the_library_oracle_checked_value() {
    let ovmf = "/usr/share/ovmf/OVMF.fd";
    let Ok(data) = std::fs::read(ovmf) else {
        return skip("no /usr/share/ovmf/OVMF.fd (apt-get install ovmf)");
    };
    let out = Command::new(common::cvmm())
        .args(["measure", "--mode", "tdx", "--ovmf", ovmf])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // tee's own tests check tdx_mrtd against the igvm crate's independent measurement.
    let want = tee::measure::hex(
        &tee::tdx_mrtd(&tee::Firmware::Ovmf {
            name: ovmf.into(),
            data,
        })
        .unwrap(),
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), want);
    let bad = Command::new(common::cvmm())
        .args(["measure", "--mode", "tdx", "--ovmf", "/etc/hostname"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn explain_breaks_the_plan_down_and_still_ends_with_the_measurement() {
    let ovmf = "/usr/share/ovmf/OVMF.fd";
    if !std::path::Path::new(ovmf).exists() {
        return skip("no /usr/share/ovmf/OVMF.fd (apt-get install ovmf)");
    }
    for (mode, heading, unit) in [
        ("snp", "SNP launch plan", "LAUNCH_UPDATE ranges:"),
        ("tdx", "TDX launch plan", "KVM_TDX_INIT_MEM_REGION ranges:"),
    ] {
        let plain = Command::new(common::cvmm())
            .args(["measure", "--mode", mode, "--ovmf", ovmf])
            .output()
            .unwrap();
        let out = Command::new(common::cvmm())
            .args(["measure", "--mode", mode, "--ovmf", ovmf, "--explain"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], heading, "{text}");
        assert!(text.contains(unit), "{text}");
        assert!(text.contains("predicted launch phase: ~"), "{text}");
        assert!(
            text.contains("(assumed costs)"),
            "estimates are labelled: {text}"
        );
        // The prediction is the measured hashing plus the assumed device costs.
        let ms_after = |key: &str| -> f64 {
            let line = lines
                .iter()
                .find(|l| l.contains(key))
                .unwrap_or_else(|| panic!("no '{key}' line: {text}"));
            let v = line.rsplit_once(" ms").unwrap().0;
            let v = v.rsplit([' ', '~']).next().unwrap();
            v.parse().unwrap_or_else(|_| panic!("'{line}'"))
        };
        let (hash, device, total) = (
            ms_after("hashing:"),
            ms_after("(assumed costs)"),
            ms_after("predicted launch phase:"),
        );
        assert!(hash > 0.0 && device > 0.0, "{text}");
        assert!((total - (hash + device)).abs() < 0.2, "{text}");
        let bytes = text
            .split("bytes hashed: ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no bytes hashed: {text}"));
        assert!(bytes > 0 && bytes.is_multiple_of(4096), "{text}");
        // The measurement is unchanged and still the last line.
        assert_eq!(
            lines.last().copied(),
            String::from_utf8_lossy(&plain.stdout).lines().next(),
            "{mode}"
        );
    }
}

#[test]
fn a_reader_that_goes_away_is_not_a_panic() {
    let ovmf = "/usr/share/ovmf/OVMF.fd";
    if !std::path::Path::new(ovmf).exists() {
        return skip("no /usr/share/ovmf/OVMF.fd (apt-get install ovmf)");
    }
    let mut child = Command::new(common::cvmm())
        .args(["measure", "--mode", "snp", "--ovmf", ovmf, "--explain"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader closes before cvmm writes
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{:?}: {err}", out.status);
}
