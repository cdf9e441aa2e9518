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

/// Ports handed out by this test process: below Linux's ephemeral range (32768 and up), so no
/// outgoing connection or `bind(0)` anywhere takes one of them between the hand-out and the
/// manager's bind, and never twice to two tests of this process (a manager's forward range and
/// another manager's gRPC port used to collide when both came from `bind(0)`).
const PORT_POOL: std::ops::Range<u16> = 12000..32000;

/// Reserves `len` consecutive loopback ports, all bindable now and never handed out before by
/// this process; returns the first.
fn reserve_ports(len: u16) -> u16 {
    use std::sync::Mutex;
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let span = PORT_POOL.end - PORT_POOL.start;
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    // Each process starts at its own place in the pool, so two test processes seldom meet.
    let mut at = next.unwrap_or(PORT_POOL.start + (std::process::id() % u32::from(span)) as u16);
    let mut scanned = 0u32;
    while scanned < u32::from(span) {
        if at.checked_add(len).is_none_or(|end| end > PORT_POOL.end) {
            scanned += u32::from(PORT_POOL.end - at);
            at = PORT_POOL.start;
            continue;
        }
        let held: Vec<_> = (at..at + len)
            .map_while(|p| std::net::TcpListener::bind(("127.0.0.1", p)).ok())
            .collect();
        if held.len() == usize::from(len) {
            *next = Some(at + len);
            return at;
        }
        let skip = held.len() as u16 + 1;
        scanned += u32::from(skip);
        at += skip;
    }
    panic!("no {len} free loopback ports left in {PORT_POOL:?}");
}

/// A loopback port that is free now and given to no other test of this process.
pub fn free_port() -> u16 {
    reserve_ports(1)
}

/// A start port whose range of `len` ports is free now and given to no other test of this
/// process.
pub fn free_range(len: u16) -> u16 {
    reserve_ports(len)
}
