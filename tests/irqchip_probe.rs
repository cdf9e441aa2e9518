//! Tier B: the split irqchip on the host's /dev/kvm. The probe guest boots with `--irqchip
//! split` (1 and 2 vCPUs), finds cvmm's IOAPIC through the MADT (no PC-AT 8259s claimed),
//! reads its registers, checks which RTE bits are writable, and takes COM1's interrupt through
//! pin 4 edge- and level-triggered; the level EOI comes back to cvmm as KVM_EXIT_IOAPIC_EOI
//! (counted in the timeline). The same probe under `--irqchip kernel` (KVM's IOAPIC) takes the
//! same interrupts, so the two paths are compared on one guest.

mod common;

use common::*;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// `key=value` of the probe's `cvmm-probe: ioapic ...` lines.
fn ioapic_field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .filter_map(|l| l.strip_prefix("cvmm-probe: ioapic "))
        .flat_map(|l| l.split_whitespace())
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn probe_field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .filter_map(|l| l.strip_prefix("cvmm-probe: "))
        .flat_map(|l| l.split_whitespace())
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Boots the probe with `--irqchip chip`; `None` (after one SKIPPED line) when this KVM has no
/// split irqchip.
fn boot(chip: &str, smp: &str, timeline: Option<&std::path::Path>) -> Option<Run> {
    let k = probe("pvh");
    let mut args = vec![
        "run",
        "--kernel",
        k.to_str().unwrap(),
        "--memory",
        "128M",
        "--smp",
        smp,
        "--irqchip",
        chip,
        "--append",
        "probe.ioapic=1 probe.exit=poweroff",
    ];
    if let Some(t) = timeline {
        args.extend_from_slice(&["--timeline", t.to_str().unwrap()]);
    }
    let r = run_cvmm(&args, LIMIT);
    if r.stderr.contains("lacks KVM_CAP_SPLIT_IRQCHIP") {
        println!("SKIPPED: split irqchip: this KVM lacks KVM_CAP_SPLIT_IRQCHIP");
        return None;
    }
    Some(r)
}

#[test]
fn probe_boots_with_the_split_irqchip_and_takes_interrupts_through_cvmms_ioapic() {
    if !kvm_available("tier B split irqchip") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("cvmm-split-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for smp in ["1", "2"] {
        let tl = dir.join(format!("timeline-{smp}.json"));
        let Some(r) = boot("split", smp, Some(&tl)) else {
            return;
        };
        let ctx = format!("smp {smp}: {}\n{}", r.stdout, r.stderr);
        assert_eq!(r.code, Some(0), "{ctx}");
        assert_eq!(probe_field(&r.stdout, "cpus"), Some(smp), "{ctx}");
        assert_eq!(ioapic_field(&r.stdout, "addr"), Some("0xfec00000"), "{ctx}");
        assert_eq!(
            ioapic_field(&r.stdout, "pcat"),
            Some("0"),
            "no 8259s: {ctx}"
        );
        assert_eq!(ioapic_field(&r.stdout, "ver"), Some("0x00170011"), "{ctx}");
        assert_eq!(ioapic_field(&r.stdout, "arb"), Some("0x00000000"), "{ctx}");
        // cvmm's writable bits: vector, delivery and destination mode, polarity, trigger,
        // mask, extended destination (49..55) and destination; RO and reserved bits read 0.
        assert_eq!(
            ioapic_field(&r.stdout, "rte-rw"),
            Some("0xfffe00000001afff"),
            "{ctx}"
        );
        assert_eq!(ioapic_field(&r.stdout, "edge"), Some("1"), "{ctx}");
        assert_eq!(ioapic_field(&r.stdout, "level"), Some("1"), "{ctx}");
        assert!(r.stderr.contains("cvmm: guest powered off"), "{ctx}");
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&tl).unwrap()).unwrap();
        let eois = doc["metrics"]["ioapic_eois"].as_u64();
        assert!(
            eois.is_some_and(|n| n >= 1),
            "the level-triggered EOI reached cvmm: {doc}"
        );
        assert_eq!(
            doc["metrics"]["ioapic_routes"].as_u64(),
            Some(0),
            "the probe masked every pin again: {doc}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_same_probe_takes_the_same_interrupts_through_kvms_ioapic() {
    if !kvm_available("tier B split irqchip") {
        return;
    }
    let r = boot("kernel", "1", None).expect("the in-kernel irqchip is always there");
    let ctx = format!("{}\n{}", r.stdout, r.stderr);
    assert_eq!(r.code, Some(0), "{ctx}");
    assert_eq!(ioapic_field(&r.stdout, "ver"), Some("0x00170011"), "{ctx}");
    assert_eq!(ioapic_field(&r.stdout, "edge"), Some("1"), "{ctx}");
    assert_eq!(ioapic_field(&r.stdout, "level"), Some("1"), "{ctx}");
    // KVM's own IOAPIC lets the reserved bits be written: the entry is not cvmm's model.
    assert_ne!(
        ioapic_field(&r.stdout, "rte-rw"),
        Some("0xfffe00000001afff"),
        "{ctx}"
    );
}

#[test]
fn bad_irqchip_value_is_named() {
    let r = run_cvmm(&["run", "--kernel", "/k", "--irqchip", "userspace"], LIMIT);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("--irqchip 'userspace'"), "{}", r.stderr);
}
