//! Host side of the nested rig's network benchmark (`tests/rig/cases/net-bench.sh`), a static
//! std-only binary for the busybox L1. The L2 guest (`l2-cases/netbench.sh`) sinks one
//! connection on its port 7002, then sends `--bytes` to 10.0.2.2:`--listen` (the L1 host's
//! loopback through the VMM's NAT), then answers `--echoes` short connections on 7002.
//! This side times each step and prints one `RIG-RESULT netbench ...` line.
//!
//! usage: net_bench_client --name VMM --fwd PORT --listen PORT --bytes N --echoes K

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Longest any single step may take (the rig is slow: everything runs under TCG).
const STEP_LIMIT: Duration = Duration::from_secs(300);

struct Args {
    name: String,
    fwd: u16,
    listen: u16,
    bytes: usize,
    echoes: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        name: String::new(),
        fwd: 0,
        listen: 0,
        bytes: 0,
        echoes: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let num = || {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: bad number '{v}'"))
        };
        match flag.as_str() {
            "--name" => a.name = v.clone(),
            "--fwd" => a.fwd = num()? as u16,
            "--listen" => a.listen = num()? as u16,
            "--bytes" => a.bytes = num()?,
            "--echoes" => a.echoes = num()?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.fwd == 0 || a.listen == 0 || a.bytes == 0 || a.name.is_empty() {
        return Err("usage: --name VMM --fwd PORT --listen PORT --bytes N --echoes K".into());
    }
    Ok(a)
}

/// Host→guest: send `bytes` through the forward, half-close, wait for the guest to close.
fn sink(port: u16, bytes: usize) -> std::io::Result<Duration> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(STEP_LIMIT))?;
    let t = Instant::now();
    let chunk = vec![0u8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n])?;
        left -= n;
    }
    s.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)?;
    Ok(t.elapsed())
}

/// Guest→host: accept the guest's connection and read `bytes` from it.
fn source(listener: &TcpListener, bytes: usize) -> std::io::Result<Duration> {
    let (mut s, _) = listener.accept()?;
    s.set_read_timeout(Some(STEP_LIMIT))?;
    let t = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < bytes {
        match s.read(&mut buf)? {
            0 => break,
            n => got += n,
        }
    }
    if got < bytes {
        return Err(std::io::Error::other(format!(
            "guest sent {got} of {bytes} bytes"
        )));
    }
    Ok(t.elapsed())
}

/// One short connection: connect, read the guest's line until it closes.
fn echo(port: u16) -> std::io::Result<Duration> {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = Vec::new();
    s.read_to_end(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::other("empty answer"));
    }
    Ok(t.elapsed())
}

/// Retries `f` (the guest may not listen yet) until it succeeds or `STEP_LIMIT` passes.
fn retry<T>(what: &str, mut f: impl FnMut() -> std::io::Result<T>) -> Result<T, String> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() > STEP_LIMIT => return Err(format!("{what}: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn run(a: &Args) -> Result<String, String> {
    let listener = TcpListener::bind(("127.0.0.1", a.listen))
        .map_err(|e| format!("bind 127.0.0.1:{}: {e}", a.listen))?;
    let mbs = |d: Duration| a.bytes as f64 / d.as_secs_f64() / 1e6;
    // The case starts this only after the guest said its sink listens: no retry, so a connection
    // the guest never accepted cannot pass for a fast transfer (the guest also reports its count).
    let h2g = sink(a.fwd, a.bytes).map_err(|e| format!("host->guest: {e}"))?;
    let g2h = source(&listener, a.bytes).map_err(|e| format!("guest->host: {e}"))?;
    let mut echoes: Vec<f64> = Vec::new();
    for _ in 0..a.echoes {
        let d = retry("echo", || echo(a.fwd))?;
        echoes.push(d.as_secs_f64() * 1000.0);
    }
    echoes.sort_by(|x, y| x.total_cmp(y));
    let median = echoes.get(echoes.len() / 2).copied().unwrap_or(f64::NAN);
    Ok(format!(
        "netbench vmm={} bytes={} h2g_mbs={:.3} g2h_mbs={:.3} connect_ms_median={:.1}",
        a.name,
        a.bytes,
        mbs(h2g),
        mbs(g2h),
        median
    ))
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("net_bench_client: {e}");
            std::process::exit(2);
        }
    };
    match run(&args) {
        Ok(line) => println!("RIG-RESULT {line}"),
        Err(e) => {
            println!("RIG-FAIL netbench-{}: {e}", args.name);
            std::process::exit(1);
        }
    }
}
