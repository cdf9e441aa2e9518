//! Bad input to `cvmm run`: each case exits with status 2 and a one-line error naming the
//! input and its value, and leaves nothing behind.

mod common;

use common::*;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

fn expect_input_error(args: &[&str], needles: &[&str]) {
    let r = run_cvmm(args, LIMIT);
    assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
    for n in needles {
        assert!(r.stderr.contains(n), "{args:?}: '{n}' not in: {}", r.stderr);
    }
    assert!(
        r.stdout.is_empty(),
        "no guest output expected: {}",
        r.stdout
    );
}

fn tmpfile(name: &str, len: u64, content: &[u8]) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("cvmm-bad-{}-{name}", std::process::id()));
    let f = std::fs::File::create(&p).unwrap();
    use std::io::Write;
    (&f).write_all(content).unwrap();
    if len > content.len() as u64 {
        f.set_len(len).unwrap();
    }
    p
}

#[test]
fn flag_values_are_checked_before_anything_starts() {
    expect_input_error(
        &["run", "--kernel", "/k", "--memory", "12Q"],
        &["--memory '12Q'", "'Q'"],
    );
    expect_input_error(&["run", "--kernel", "/k", "--smp", "0"], &["--smp 0"]);
    expect_input_error(&["run", "--kernel", "/k", "--smp", "x"], &["--smp 'x'"]);
    expect_input_error(
        &["run", "--kernel", "/k", "--cpu", "Skylake"],
        &["unknown --cpu model 'Skylake'"],
    );
    expect_input_error(
        &["run", "--kernel", "/k", "--cpu", "host,+warpdrive"],
        &["unknown CPU feature 'warpdrive'"],
    );
    expect_input_error(
        &["run", "--kernel", "/k", "--serial", "tcp:1"],
        &["--serial 'tcp:1'"],
    );
    expect_input_error(&["run"], &["--kernel"]);
}

#[test]
fn bad_kernels_initrds_and_limits() {
    if !kvm_available("tier B bad input") {
        return;
    }
    expect_input_error(
        &["run", "--kernel", "/nonexistent/vmlinuz"],
        &["kernel '/nonexistent/vmlinuz'", "No such file"],
    );
    let junk = tmpfile("junk", 0, b"#!/bin/sh\necho not a kernel\n");
    expect_input_error(
        &["run", "--kernel", junk.to_str().unwrap()],
        &[junk.to_str().unwrap(), "neither a bzImage nor an ELF"],
    );
    let elf = tmpfile("noelfnote", 0, b"\x7fELF\x02\x01\x01\0garbage");
    expect_input_error(
        &["run", "--kernel", elf.to_str().unwrap()],
        &[elf.to_str().unwrap(), "could not be loaded"],
    );
    let k = probe("bzimage");
    let ks = k.to_str().unwrap();
    let big = tmpfile("initrd", 200 << 20, b"");
    expect_input_error(
        &[
            "run",
            "--kernel",
            ks,
            "--memory",
            "64M",
            "--initrd",
            big.to_str().unwrap(),
        ],
        &[big.to_str().unwrap(), "does not fit in guest memory"],
    );
    expect_input_error(
        &["run", "--kernel", ks, "--initrd", "/nonexistent/initrd"],
        &["initrd '/nonexistent/initrd'"],
    );
    let long = "a".repeat(5000);
    expect_input_error(
        &["run", "--kernel", ks, "--append", &long],
        &["--append is 5000 bytes"],
    );
    expect_input_error(
        &["run", "--kernel", ks, "--smp", "100000"],
        &["--smp 100000", "at most"],
    );
    for p in [junk, elf, big] {
        std::fs::remove_file(p).unwrap();
    }
}

#[test]
fn unusable_dev_kvm_is_reported() {
    // Hide /dev/kvm behind /dev/null in a private mount namespace (needs root and unshare).
    let can = std::process::Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !can {
        println!("SKIPPED: /dev/kvm test needs unshare -m (root)");
        return;
    }
    let script = format!(
        "mount --bind /dev/null /dev/kvm 2>/dev/null || mount -t tmpfs none /dev; exec {} run --kernel /nonexistent",
        cvmm().display()
    );
    let child = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let r = wait_limit(child, LIMIT);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("/dev/kvm"), "{}", r.stderr);
}
