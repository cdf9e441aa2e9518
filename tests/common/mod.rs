//! Shared helpers of the integration tests: the cvmm binary, the probe guest (built once per
//! test run by its own script), and a runner with a safety timeout.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The cvmm binary under test.
pub fn cvmm() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cvmm"))
}

/// Whether a usable /dev/kvm exists; prints one SKIPPED line per test binary when not.
pub fn kvm_available(tier: &str) -> bool {
    static ONCE: OnceLock<bool> = OnceLock::new();
    let ok = *ONCE.get_or_init(|| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
    });
    if !ok {
        static SAID: OnceLock<()> = OnceLock::new();
        SAID.get_or_init(|| println!("SKIPPED: {tier}: /dev/kvm is not available on this host"));
    }
    ok
}

/// Directory holding `probe-pvh.elf` and `probe.bzImage`, built on first use.
pub fn probe_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("probe-guest");
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let status = Command::new("sh")
            .arg(root.join("tests/probe-guest/build.sh"))
            .arg(&out)
            .env(
                "CARGO_TARGET_DIR",
                PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("probe-target"),
            )
            .status()
            .expect("run tests/probe-guest/build.sh");
        assert!(status.success(), "building the probe guest failed");
        out
    })
}

/// The probe guest image of the given kind ("pvh", "fw" (the probe as a 256 KiB firmware
/// image) or "bzimage").
pub fn probe(kind: &str) -> PathBuf {
    match kind {
        "pvh" => probe_dir().join("probe-pvh.elf"),
        "fw" => probe_dir().join("probe-fw.bin"),
        _ => probe_dir().join("probe.bzImage"),
    }
}

/// A finished cvmm run.
pub struct Run {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs cvmm with `args`, killing it after `limit` (a hang guard, not a speed check).
pub fn run_cvmm(args: &[&str], limit: Duration) -> Run {
    let child = Command::new(cvmm())
        .args(args)
        .env("CVMM_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cvmm");
    wait_limit(child, limit)
}

/// Waits for `child`, killing it after `limit`.
pub fn wait_limit(mut child: std::process::Child, limit: Duration) -> Run {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out: Output = child.wait_with_output().expect("collect output");
    use std::os::unix::process::ExitStatusExt;
    Run {
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A start port whose range of `len` ports is all bindable now.
pub fn free_range(len: u16) -> u16 {
    for _ in 0..200 {
        let start = free_port();
        if start.checked_add(len).is_none() {
            continue;
        }
        let held: Vec<_> = (start..start + len)
            .map_while(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == usize::from(len) {
            return start;
        }
    }
    panic!("no free port range");
}
