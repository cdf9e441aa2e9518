//! Tier B: cvmm's firmware platform with the probe guest as the firmware (`probe-fw.bin`
//! starts at the reset vector, like OVMF, which the PVM host cannot run). The probe reads
//! fw_cfg through its I/O and DMA interfaces, runs the ACPI table-loader script, programs the
//! ICH9 LPC's PMBASE, times the PM timer, writes the debug console and programs the CFI flash;
//! the tests compare what it reports with what cvmm was given.

mod common;

use common::*;
use std::path::PathBuf;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(90);
/// Where the variable store lands below the 256 KiB probe image.
const VARS_BASE: u64 = 0xfffb_0000;
const VARS_LEN: usize = 64 * 1024;

fn fnv1a(data: &[u8]) -> String {
    let h = data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{h:08x}")
}

/// The text after `cvmm-probe: PREFIX` on the first line that has it.
fn marker<'a>(out: &'a str, prefix: &str) -> Option<&'a str> {
    out.lines()
        .filter_map(|l| l.strip_prefix("cvmm-probe: "))
        .find_map(|l| l.strip_prefix(prefix))
}

fn kv<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

struct Scratch(Vec<PathBuf>);

impl Scratch {
    fn file(&mut self, name: &str, data: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("cvmm-fwprobe-{}-{name}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        self.0.push(p.clone());
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn firmware_rom_gets_fw_cfg_acpi_lpc_pm_timer_and_debugcon() {
    if !kvm_available("firmware_probe") {
        return;
    }
    let mut tmp = Scratch(Vec::new());
    let fw = probe("fw");
    let kernel = probe("bzimage");
    let initrd = tmp.file("initrd", b"cvmm initrd bytes\n");
    let log = tmp.file("fwlog", b"");
    let timeline = tmp.file("timeline.json", b"");
    let append = "probe.exit=poweroff fw.test=1";
    let r = run_cvmm(
        &[
            "run",
            "--firmware",
            s(&fw),
            "--kernel",
            s(&kernel),
            "--initrd",
            s(&initrd),
            "--append",
            append,
            "--smp",
            "2",
            "--memory",
            "128M",
            "--net",
            "none",
            "--firmware-log",
            s(&log),
            "--timeline",
            s(&timeline),
        ],
        LIMIT,
    );
    let out = &r.stdout;
    assert_eq!(r.code, Some(0), "{out}\n{}", r.stderr);
    assert_eq!(marker(out, "start proto="), Some("fw"), "{out}");
    let id = marker(out, "fwcfg sig=QEMU id=").expect(out);
    assert_eq!(id, "3", "fw_cfg offers DMA");
    assert!(
        marker(out, "fwcfg files=").unwrap().contains("via=dma"),
        "{out}"
    );
    for f in [
        "etc/e820",
        "etc/acpi/tables",
        "etc/acpi/rsdp",
        "etc/table-loader",
    ] {
        assert!(
            marker(out, &format!("fwcfg file {f} size=")).is_some(),
            "no {f} in the directory: {out}"
        );
    }
    assert_eq!(marker(out, "cmdline="), Some(append));
    assert_eq!(marker(out, "mem_mib="), Some("128"));

    // The kernel and initrd items, read through both interfaces, are the files' bytes.
    let bz = std::fs::read(&kernel).unwrap();
    let setup = (match bz[0x1f1] {
        0 => 4,
        n => usize::from(n),
    } + 1)
        * 512;
    let k = marker(out, "fwcfg kernel ").expect(out);
    assert_eq!(kv(k, "size"), Some((bz.len() - setup).to_string().as_str()));
    assert_eq!(kv(k, "fnv-io"), Some(fnv1a(&bz[setup..]).as_str()), "{k}");
    assert_eq!(kv(k, "fnv-dma"), kv(k, "fnv-io"));
    let st = marker(out, "fwcfg setup ").expect(out);
    assert_eq!(kv(st, "size"), Some(setup.to_string().as_str()));
    assert_eq!(kv(st, "fnv-dma"), kv(st, "fnv-io"));
    let i = marker(out, "fwcfg initrd ").expect(out);
    assert_eq!(
        kv(i, "fnv-io"),
        Some(fnv1a(b"cvmm initrd bytes\n").as_str())
    );
    assert_eq!(kv(i, "fnv-dma"), kv(i, "fnv-io"));

    // Chipset: LPC decodes the PM block where the probe put it; the PM timer runs at its rate.
    assert_eq!(marker(out, "lpc pmbase="), Some("0x600"), "{out}");
    // The exact rate is checked in the device's unit test; the guest measures it against its
    // TSC, whose frequency it calibrates with the PIT, which drifts on a loaded host.
    let khz: u32 = marker(out, "pmtimer khz=").unwrap().parse().unwrap();
    assert!((2500..=5000).contains(&khz), "PM timer at {khz} kHz");
    // The table-loader ran with every command known, and the MADT it reached lists 2 CPUs.
    let loader = marker(out, "fwcfg loader commands=").expect(out);
    assert!(loader.ends_with("skipped=0"), "{loader}");
    assert_eq!(marker(out, "cpus="), Some("2 source=madt"));
    assert_eq!(marker(out, "debugcon "), Some("present"));
    let fwlog = std::fs::read_to_string(&log).unwrap();
    assert!(fwlog.contains("cvmm-probe: debugcon"), "{fwlog:?}");
    // Powered off through the q35 FADT's PM1a_CNT.
    assert_eq!(marker(out, "exit="), Some("poweroff"));

    let tl = std::fs::read_to_string(&timeline).unwrap();
    let mut last = 0;
    for phase in [
        "first_kvm_run",
        "fw_cfg_first_access",
        "fw_cfg_e820",
        "fw_cfg_kernel",
        "fw_cfg_acpi",
        "guest_stop",
    ] {
        let at = tl
            .find(&format!("\"{phase}\""))
            .unwrap_or_else(|| panic!("no {phase} in {tl}"));
        assert!(at > last, "{phase} out of order in {tl}");
        last = at;
    }
}

#[test]
fn firmware_flash_units_program_the_vars_file_and_refuse_code_writes() {
    if !kvm_available("firmware_probe") {
        return;
    }
    let mut tmp = Scratch(Vec::new());
    let code_bytes = std::fs::read(probe("fw")).unwrap();
    let code = tmp.file("code.bin", &code_bytes);
    let vars = tmp.file("vars.bin", &vec![0xffu8; VARS_LEN]);
    let append = format!("probe.exit=poweroff probe.flash={VARS_BASE:#x} probe.flashro=0xffffe000");
    let kernel = probe("bzimage");
    let r = run_cvmm(
        &[
            "run",
            "--firmware-code",
            s(&code),
            "--firmware-vars",
            s(&vars),
            "--kernel",
            s(&kernel),
            "--append",
            &append,
            "--memory",
            "128M",
            "--net",
            "none",
        ],
        LIMIT,
    );
    let out = &r.stdout;
    assert_eq!(r.code, Some(0), "{out}\n{}", r.stderr);
    assert_eq!(
        marker(out, "flash "),
        Some("cfi=QRY programmed=16 status=0x80 readback=ok"),
        "{out}"
    );
    assert_eq!(marker(out, "flash-ro "), Some("status=0x90 unchanged=yes"));
    let after = std::fs::read(&vars).unwrap();
    assert_eq!(
        &after[..16],
        b"cvmm-probe-flash",
        "the write reached the file"
    );
    assert!(after[16..].iter().all(|&b| b == 0xff));
    assert_eq!(
        std::fs::read(&code).unwrap(),
        code_bytes,
        "code file untouched"
    );
}

#[test]
fn firmware_reset_and_bad_firmware_inputs() {
    if !kvm_available("firmware_probe") {
        return;
    }
    let mut tmp = Scratch(Vec::new());
    let fw = probe("fw");
    let kernel = probe("bzimage");
    // No --kernel: the firmware finds empty kernel items (and powers off by default).
    let r = run_cvmm(
        &[
            "run",
            "--firmware",
            s(&fw),
            "--memory",
            "128M",
            "--net",
            "none",
        ],
        LIMIT,
    );
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(marker(&r.stdout, "fwcfg kernel "), Some("size=0"));
    // A guest reset (i8042 / 0xCF9) ends the VM with status 3.
    let r = run_cvmm(
        &[
            "run",
            "--firmware",
            s(&fw),
            "--kernel",
            s(&kernel),
            "--append",
            "probe.exit=reboot",
            "--memory",
            "128M",
            "--net",
            "none",
        ],
        LIMIT,
    );
    assert_eq!(r.code, Some(3), "{}\n{}", r.stdout, r.stderr);

    let not_fw = tmp.file("notfw", &[0u8; 8192]);
    let odd = tmp.file("odd", &[0xffu8; 5000]);
    let pvh = probe("pvh");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--firmware", s(&not_fw)], "not a UEFI firmware image"),
        (
            vec!["--firmware", "/nonexistent/OVMF.fd"],
            "/nonexistent/OVMF.fd",
        ),
        (
            vec!["--firmware-code", s(&fw), "--firmware-vars", s(&odd)],
            "--firmware-vars",
        ),
        (vec!["--firmware", s(&fw), "--kernel", s(&pvh)], "bzImage"),
        (vec!["--firmware-code", s(&fw)], "--firmware-vars"),
        (
            vec!["--firmware", s(&fw), "--append", "quiet"],
            "--append needs --kernel",
        ),
        (
            vec!["--kernel", s(&pvh), "--fw-cfg", "opt/x=1"],
            "--fw-cfg is for the firmware",
        ),
        (
            vec!["--firmware", s(&fw), "--fw-cfg", "etc/x=1"],
            "must start with opt/",
        ),
    ];
    for (args, want) in cases {
        let mut a = vec!["run", "--net", "none"];
        a.extend(args.iter());
        let r = run_cvmm(&a, LIMIT);
        assert_eq!(r.code, Some(2), "{a:?}: {}\n{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains(want),
            "{a:?}: wanted '{want}' in {}",
            r.stderr
        );
    }
}
