//! Tier A: the ACPI tables a VM would get (`cvmm run --dump-acpi DIR`), for direct boot and
//! for firmware boot: one file per table, lengths and checksums right, and `iasl -d` (Debian's
//! acpica-tools) disassembles each without errors. With CVMM_REQUIRE_ORACLES=1 (CI) a missing
//! iasl is a failure, not a skip.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn require_oracles() -> bool {
    std::env::var("CVMM_REQUIRE_ORACLES").is_ok_and(|v| v == "1")
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("cvmm-acpi-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Self(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dump(dir: &Path, boot: &[&str], smp: &str) -> Vec<(String, Vec<u8>)> {
    let mut args = vec!["run"];
    args.extend_from_slice(boot);
    args.extend_from_slice(&["--smp", smp, "--dump-acpi", dir.to_str().unwrap()]);
    let r = run_cvmm(&args, Duration::from_secs(30));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let mut tables: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let sig = p.file_stem().unwrap().to_string_lossy().into_owned();
            (sig, std::fs::read(&p).unwrap())
        })
        .collect();
    tables.sort();
    tables
}

fn check_tables(tables: &[(String, Vec<u8>)]) {
    for (sig, t) in tables {
        assert_eq!(&t[..4], sig.as_bytes(), "file name is the signature");
        let len = u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize;
        assert_eq!(len, t.len(), "{sig}: length field");
        if sig != "FACS" {
            let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
            assert_eq!(sum, 0, "{sig}: checksum");
        }
    }
}

/// `iasl -d` on every table; returns the disassembly by signature.
fn disassemble(dir: &Path) -> Option<Vec<(String, String)>> {
    if Command::new("iasl").arg("-v").output().is_err() {
        assert!(!require_oracles(), "iasl (acpica-tools) is not installed");
        println!("SKIPPED: iasl (acpica-tools) is not installed");
        return None;
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "dat") {
            continue;
        }
        let r = Command::new("iasl")
            .arg("-d")
            .arg(&p)
            .current_dir(dir)
            .output()
            .unwrap();
        let text =
            String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr);
        assert!(r.status.success(), "iasl -d {}: {text}", p.display());
        for bad in ["Error ", "Warning ", "Invalid", "Unknown"] {
            assert!(!text.contains(bad), "iasl -d {}: {text}", p.display());
        }
        let dsl = std::fs::read_to_string(p.with_extension("dsl")).unwrap();
        out.push((p.file_stem().unwrap().to_string_lossy().into_owned(), dsl));
    }
    Some(out)
}

fn dsl<'a>(d: &'a [(String, String)], sig: &str) -> &'a str {
    &d.iter().find(|(s, _)| s == sig).unwrap().1
}

#[test]
fn direct_boot_tables_are_hardware_reduced_and_disassemble_cleanly() {
    let dir = Dir::new("direct");
    let tables = dump(&dir.0, &["--kernel", "/dev/null"], "4");
    let sigs: Vec<_> = tables.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(sigs, ["APIC", "DSDT", "FACP", "MCFG"]);
    check_tables(&tables);
    let Some(d) = disassemble(&dir.0) else { return };
    assert!(dsl(&d, "FACP").contains("Hardware Reduced (V5) : 1"));
    assert_eq!(dsl(&d, "APIC").matches("Processor Local APIC").count(), 4);
    let dsdt = dsl(&d, "DSDT");
    for want in ["PNP0A08", "_S5_", "PNP0501", "PNP0B00", "QEMU0001"] {
        assert!(dsdt.contains(want), "DSDT lacks {want}");
    }
    // The power button: no fixed features on this platform, so a PNP0C0C device notified by
    // the Generic Event Device's _EVT, which reads the GED's event register (port 0x604) on
    // its interrupt (GSI 5, edge, active high).
    assert!(dsl(&d, "FACP").contains("Power Button (V1) : 1"));
    for want in [
        "ACPI0013",
        "PNP0C0C",
        "Device (PWRB)",
        "Device (GED)",
        "Method (_EVT, 1, Serialized)",
        "OperationRegion (GDST, SystemIO, 0x0604, One)",
        "GDAT,   8",
        "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
        "0x00000005,",
        "Notify (\\_SB.PWRB, 0x80)",
    ] {
        assert!(dsdt.contains(want), "DSDT lacks '{want}':\n{dsdt}");
    }
}

#[test]
fn firmware_boot_tables_describe_the_q35_pm_block_and_windows() {
    let dir = Dir::new("fw");
    let fw = probe("fw");
    let tables = dump(&dir.0, &["--firmware", fw.to_str().unwrap()], "2");
    let sigs: Vec<_> = tables.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(sigs, ["APIC", "DSDT", "FACP", "FACS", "MCFG"]);
    check_tables(&tables);
    let Some(d) = disassemble(&dir.0) else { return };
    let fadt = dsl(&d, "FACP");
    assert!(fadt.contains("Hardware Reduced (V5) : 0"));
    for want in [
        "PM1A Event Block Address : 00000600",
        "PM1A Control Block Address : 00000604",
        "PM Timer Block Address : 00000608",
        "Address : 0000000000000CF9",
    ] {
        assert!(fadt.contains(want), "FADT lacks '{want}'");
    }
    assert_eq!(dsl(&d, "APIC").matches("Processor Local APIC").count(), 2);
    assert!(dsl(&d, "MCFG").contains("Base Address : 00000000B0000000"));
    let dsdt = dsl(&d, "DSDT");
    for want in ["0xC0000000", "0xFBFFFFFF", "QWordMemory", "0xB0000000"] {
        assert!(dsdt.contains(want), "DSDT lacks {want}");
    }
    // The fixed-feature power button of the ICH9 PM block, its events on SCI 9; no GED.
    for want in ["Power Button (V1) : 0", "SCI Interrupt : 0009"] {
        assert!(fadt.contains(want), "FADT lacks '{want}'");
    }
    for absent in ["ACPI0013", "_EVT"] {
        assert!(!dsdt.contains(absent), "q35 DSDT has {absent}");
    }
}
