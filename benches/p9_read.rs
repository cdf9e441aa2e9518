//! virtio-9p sequential read: the probe guest reads a 16 MiB file from a 9p share
//! (`probe.cat=env_share/big.bin`) under cvmm and under QEMU (`virtio-9p-pci`, microvm with
//! PCIe), alternating, same image. The time measured is between the guest's `ready` line and
//! its `cat ... len=` line, so VMM start-up is excluded; the guest hashes every byte it reads.
//!
//! `cargo bench --bench p9_read`; env `CVMM_BENCH_RUNS` (default 5), `CVMM_BENCH_MIB` (16).

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the command; returns the time from the `ready` line to the `cat` line and that line.
fn run(mut cmd: Command) -> Option<(Duration, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let out = child.stdout.take()?;
    let mut ready = None;
    let mut result = None;
    for line in BufReader::new(out).lines().map_while(Result::ok) {
        if line.contains("cvmm-probe: ready") {
            ready = Some(Instant::now());
        }
        if line.starts_with("cvmm-probe: cat ") || line.starts_with("cvmm-probe: cat-error") {
            result = Some((ready?.elapsed(), line));
        }
    }
    let _ = child.wait();
    result
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !common::kvm_or_skip("p9_read") {
        return;
    }
    let runs: usize = common::env_usize("CVMM_BENCH_RUNS", 5);
    let mib: usize = common::env_usize("CVMM_BENCH_MIB", 16);
    let image = common::probe_image();
    let dir = std::env::temp_dir().join(format!("cvmm-p9bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data: Vec<u8> = (0..mib << 20).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(dir.join("big.bin"), &data).unwrap();
    let cvmm = PathBuf::from(env!("CARGO_BIN_EXE_cvmm"));
    let append = "probe.cat=env_share/big.bin";
    let (mut c, mut q) = (Vec::new(), Vec::new());
    let mut last = (String::new(), String::new());
    for _ in 0..runs {
        let mut cmd = Command::new(&cvmm);
        cmd.args([
            "run",
            "--kernel",
            image.to_str().unwrap(),
            "--memory",
            "256M",
            "--net",
            "none",
        ])
        .args([
            "--share",
            &format!("env_share={}", dir.display()),
            "--append",
            append,
        ])
        .env("CVMM_LOG", "error");
        if let Some((d, l)) = run(cmd) {
            c.push(d.as_secs_f64());
            last.0 = l;
        }
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-enable-kvm",
            "-machine",
            "microvm,pcie=on,rtc=off",
            "-cpu",
            common::QEMU_CPU,
            "-m",
            "256M",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
        ])
        .args(["-kernel", image.to_str().unwrap()])
        .args(["-append", &format!("{append} probe.ecam=0xe0000000")])
        .args([
            "-fsdev",
            &format!(
                "local,id=f0,path={},security_model=none,readonly=on",
                dir.display()
            ),
        ])
        .args([
            "-device",
            "virtio-9p-pci,fsdev=f0,mount_tag=env_share,disable-legacy=on",
        ]);
        if let Some((d, l)) = run(cmd) {
            q.push(d.as_secs_f64());
            last.1 = l;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("p9_read: {mib} MiB sequential read by the probe guest, {runs} runs each");
    println!(
        "cvmm: median {:.2} s ({:.2} MiB/s)  [{}]",
        common::median(c.clone()),
        mib as f64 / common::median(c.clone()),
        last.0
    );
    if q.is_empty() {
        println!("SKIPPED: QEMU comparison (qemu-system-x86_64 missing or failed)");
    } else {
        println!(
            "qemu: median {:.2} s ({:.2} MiB/s)  [{}]",
            common::median(q.clone()),
            mib as f64 / common::median(q.clone()),
            last.1
        );
        println!(
            "ratio cvmm/qemu time: {:.2}",
            common::median(c) / common::median(q)
        );
    }
}
