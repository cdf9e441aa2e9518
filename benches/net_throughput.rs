//! Guest-network comparison: the probe guest's TCP server reached through a host port forward,
//! under cvmm (`--forward`, its own NAT) and under `qemu-system-x86_64 -enable-kvm -machine q35`
//! with `-netdev user,hostfwd=...` (slirp) and the same modern virtio-net-pci device, alternately.
//! Per VMM and round it measures: connection latency (connect + one `ECHO` round trip, median of
//! several), host→guest throughput (`SINK`: bytes sent until the guest's byte count comes back)
//! and guest→host throughput (`SOURCE n`: request until EOF after `n` bytes).
//!
//! `cargo bench --bench net_throughput`; env `CVMM_BENCH_RUNS` (rounds, default 3),
//! `CVMM_BENCH_MIB` (bytes per transfer in MiB, default 2), `CVMM_BENCH_ECHOES` (default 5).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a guest may take to say `net ready` (a hang guard).
const READY_LIMIT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Round {
    latency_ms: Vec<f64>,
    h2g_mbs: Vec<f64>,
    g2h_mbs: Vec<f64>,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local address").port()
}

fn cvmm_cmd(image: &Path, append: &str, port: u16) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cvmm"));
    c.args([
        "run",
        "--kernel",
        image.to_str().unwrap(),
        "--memory",
        "128M",
    ])
    .args(["--append", append])
    .args(["--forward", &format!("tcp:127.0.0.1:{port}-:7002")])
    .env("CVMM_LOG", "error");
    c
}

fn qemu_cmd(image: &Path, append: &str, port: u16) -> Command {
    let mut q = Command::new("qemu-system-x86_64");
    q.args([
        "-enable-kvm",
        "-machine",
        "q35",
        "-cpu",
        common::QEMU_CPU,
        "-m",
        "128M",
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-serial",
        "stdio",
    ])
    .args(["-kernel", image.to_str().unwrap(), "-append", append])
    .args([
        "-netdev",
        &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:7002"),
    ])
    .args([
        "-device",
        "virtio-net-pci,netdev=n0,disable-legacy=on,romfile=",
    ]);
    q
}

/// Starts the VMM and waits for the guest's `net ready` line.
fn start(mut cmd: Command) -> Option<Child> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let out = child.stdout.take()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut said = false;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if !said && line.contains("cvmm-probe: net ready") {
                said = tx.send(()).is_ok();
            }
        }
    });
    if rx.recv_timeout(READY_LIMIT).is_err() {
        eprintln!("guest never said `net ready`");
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    Some(child)
}

fn connect(port: u16) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    Ok(s)
}

fn echo_ms(port: u16) -> std::io::Result<f64> {
    let t = Instant::now();
    let mut s = connect(port)?;
    s.write_all(b"ECHO latency\n")?;
    let mut got = String::new();
    s.read_to_string(&mut got)?;
    if got != "latency\n" {
        return Err(std::io::Error::other(format!("echo answered {got:?}")));
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

fn sink_mbs(port: u16, bytes: usize) -> std::io::Result<f64> {
    let mut s = connect(port)?;
    let chunk = vec![b'y'; 64 * 1024];
    let t = Instant::now();
    s.write_all(b"SINK\n")?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n])?;
        left -= n;
    }
    s.shutdown(Shutdown::Write)?;
    let mut got = String::new();
    s.read_to_string(&mut got)?;
    let secs = t.elapsed().as_secs_f64();
    if got.trim() != bytes.to_string() {
        return Err(std::io::Error::other(format!("guest counted {got:?}")));
    }
    Ok(bytes as f64 / secs / 1e6)
}

fn source_mbs(port: u16, bytes: usize) -> std::io::Result<f64> {
    let mut s = connect(port)?;
    let t = Instant::now();
    s.write_all(format!("SOURCE {bytes}\n").as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match s.read(&mut buf)? {
            0 => break,
            n => total += n,
        }
    }
    let secs = t.elapsed().as_secs_f64();
    if total != bytes {
        return Err(std::io::Error::other(format!(
            "received {total} of {bytes}"
        )));
    }
    Ok(bytes as f64 / secs / 1e6)
}

/// One boot of one VMM: the echoes, then one transfer each way; `None` when anything failed.
fn round(make: &dyn Fn(&str, u16) -> Command, echoes: usize, bytes: usize) -> Option<Round> {
    let port = free_port();
    let append = format!(
        "probe.net=dhcp probe.listen=7002 probe.serve={}",
        echoes + 2
    );
    let mut child = start(make(&append, port))?;
    let result = (|| -> std::io::Result<Round> {
        let mut r = Round::default();
        for _ in 0..echoes {
            r.latency_ms.push(echo_ms(port)?);
        }
        r.h2g_mbs.push(sink_mbs(port, bytes)?);
        r.g2h_mbs.push(source_mbs(port, bytes)?);
        Ok(r)
    })();
    let _ = child.kill();
    let _ = child.wait();
    result.map_err(|e| eprintln!("round failed: {e}")).ok()
}

fn merge(into: &mut Round, r: Round) {
    into.latency_ms.extend(r.latency_ms);
    into.h2g_mbs.extend(r.h2g_mbs);
    into.g2h_mbs.extend(r.g2h_mbs);
}

fn summary(r: &Round) -> (f64, f64, f64) {
    (
        common::median(r.latency_ms.clone()),
        common::median(r.h2g_mbs.clone()),
        common::median(r.g2h_mbs.clone()),
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !common::kvm_or_skip("net_throughput") {
        return;
    }
    let have_qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    let runs = common::env_usize("CVMM_BENCH_RUNS", 3);
    let mib = common::env_usize("CVMM_BENCH_MIB", 2);
    let echoes = common::env_usize("CVMM_BENCH_ECHOES", 5);
    let bytes = mib << 20;
    let image: PathBuf = common::probe_image();
    let cvmm = |a: &str, p: u16| cvmm_cmd(&image, a, p);
    let qemu = |a: &str, p: u16| qemu_cmd(&image, a, p);

    let (mut c, mut q) = (Round::default(), Round::default());
    let mut failed = 0;
    for _ in 0..runs {
        match round(&cvmm, echoes, bytes) {
            Some(r) => merge(&mut c, r),
            None => failed += 1,
        }
        if have_qemu {
            match round(&qemu, echoes, bytes) {
                Some(r) => merge(&mut q, r),
                None => failed += 1,
            }
        }
    }
    println!("net_throughput: probe guest, {runs} alternating rounds, {mib} MiB per transfer");
    println!("| VMM | connect+echo ms | host→guest MB/s | guest→host MB/s |");
    println!("|---|---|---|---|");
    let (cl, ch, cg) = summary(&c);
    println!("| cvmm NAT | {cl:.2} | {ch:.3} | {cg:.3} |");
    let mut doc = serde_json::json!({
        "runs": runs, "mib": mib, "failed_rounds": failed,
        "cvmm": {"latency_ms": cl, "h2g_mbs": ch, "g2h_mbs": cg},
    });
    if have_qemu && !q.h2g_mbs.is_empty() {
        let (ql, qh, qg) = summary(&q);
        println!("| qemu q35 slirp | {ql:.2} | {qh:.3} | {qg:.3} |");
        println!(
            "ratio cvmm/qemu: latency {:.2}, host→guest {:.2}x, guest→host {:.2}x",
            cl / ql,
            ch / qh,
            cg / qg
        );
        doc["qemu"] = serde_json::json!({"latency_ms": ql, "h2g_mbs": qh, "g2h_mbs": qg});
        doc["ratio"] = serde_json::json!({"latency": cl / ql, "h2g": ch / qh, "g2h": cg / qg});
    } else if !have_qemu {
        println!("SKIPPED: qemu-system-x86_64 not found; no comparison");
    }
    if failed > 0 {
        println!("FAILED rounds: {failed}");
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/net_throughput.json");
    let _ = std::fs::write(&out, serde_json::to_string_pretty(&doc).unwrap_or_default());
    println!("written {}", out.display());
    if failed > 0 {
        std::process::exit(1);
    }
}
