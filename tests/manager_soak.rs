//! Soak of `cvmm manager` with the probe guest: 200 CreateVm/RemoveVm cycles (or
//! `CVMM_SOAK_CYCLES`; the full soak is 1000) must leave the
//! manager with no more open fds or threads than before, no child processes, every forwarded
//! port bindable and no VM files in the state directory. A second run measures CreateVm latency
//! (call to response), CreateVm to the VM process running (its control socket reports the
//! first KVM_RUN) and CreateVm to the forwarded port answering `ECHO x`, for 1 and 10
//! concurrent calls, and, in the same run, QEMU's own start on the same probe guest (microvm to
//! the ready line; q35 with a slirp host forward to the port answering). The numbers are
//! printed (`--nocapture`), not asserted.

mod common;

use api::pb::manager_service_client::ManagerServiceClient;
use api::pb::{CreateReq, RemoveReq};
use common::*;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Cycles of the leak soak unless `CVMM_SOAK_CYCLES` says otherwise.
const DEFAULT_CYCLES: usize = 200;
const RANGE: u16 = 12;

struct Manager {
    child: Child,
    grpc: u16,
    fwd: u16,
    state: PathBuf,
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_recorded_vms(&self.state);
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

/// Kills VM processes a failed run left behind (their pids are in the state directory).
fn kill_recorded_vms(state: &Path) {
    for d in std::fs::read_dir(state).into_iter().flatten().flatten() {
        let rec = std::fs::read(d.path().join("vm.json")).unwrap_or_default();
        if let Some(pid) = serde_json::from_slice::<serde_json::Value>(&rec)
            .ok()
            .and_then(|v| v["pid"].as_i64())
        {
            // SAFETY: signalling a VM process this test started through the manager.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

fn start_manager(cmdline: &str) -> Manager {
    let state =
        std::env::temp_dir().join(format!("cvmm-soak-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&state).unwrap();
    let initrd = state.join("initrd.img");
    std::fs::write(&initrd, vec![0u8; 4096]).unwrap();
    let (grpc, http, fwd) = (free_port(), free_port(), free_range(RANGE));
    let child = Command::new(cvmm())
        .arg("manager")
        .env("MANAGER_GRPC_HOST", "127.0.0.1")
        .env("MANAGER_GRPC_PORT", grpc.to_string())
        .env("MANAGER_HTTP_HOST", "127.0.0.1")
        .env("MANAGER_HTTP_PORT", http.to_string())
        .env("MANAGER_STATE_DIR", &state)
        .env("MANAGER_VMM_EXE", cvmm())
        .env("MANAGER_VMM_TEE", "none")
        .env("MANAGER_VMM_HOST_FWD_ADDR", "127.0.0.1")
        .env(
            "MANAGER_QEMU_HOST_FWD_RANGE",
            format!("{fwd}-{}", fwd + RANGE - 1),
        )
        .env("MANAGER_QEMU_DISK_IMG_KERNEL_FILE", probe("pvh"))
        .env("MANAGER_QEMU_DISK_IMG_ROOTFS_FILE", &initrd)
        .env("MANAGER_QEMU_KERNEL_CMDLINE", cmdline)
        .env("MANAGER_QEMU_MEMORY_SIZE", "128M")
        .env("MANAGER_QEMU_SMP_COUNT", "1")
        .env("MANAGER_MAX_VMS", "0")
        .env("CVMM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let m = Manager {
        child,
        grpc,
        fwd,
        state,
    };
    assert!(
        wait_for(Duration::from_secs(30), || std::net::TcpStream::connect((
            "127.0.0.1",
            m.grpc
        ))
        .is_ok()),
        "manager did not listen"
    );
    m
}

fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

fn count_dir(path: impl AsRef<Path>) -> usize {
    std::fs::read_dir(path).map_or(0, |d| d.count())
}

/// Pids whose parent is `pid` (zombies included: an unreaped VM counts).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised command: state, ppid, ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Usage {
    fds: usize,
    threads: usize,
    children: usize,
    state_entries: usize,
}

fn usage(m: &Manager) -> Usage {
    let pid = m.child.id();
    Usage {
        fds: count_dir(format!("/proc/{pid}/fd")),
        threads: count_dir(format!("/proc/{pid}/task")),
        children: children(pid).len(),
        state_entries: count_dir(&m.state),
    }
}

fn unbindable_ports(m: &Manager) -> Vec<u16> {
    (m.fwd..m.fwd + RANGE)
        .filter(|p| TcpListener::bind(("127.0.0.1", *p)).is_err())
        .collect()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn client(m: &Manager) -> ManagerServiceClient<Channel> {
    ManagerServiceClient::connect(format!("http://127.0.0.1:{}", m.grpc))
        .await
        .unwrap()
}

fn req() -> CreateReq {
    CreateReq {
        ttl: "10m".into(),
        ..Default::default()
    }
}

async fn cycle(c: &mut ManagerServiceClient<Channel>) {
    let id = c.create_vm(req()).await.unwrap().into_inner().cvm_id;
    c.remove_vm(RemoveReq { cvm_id: id }).await.unwrap();
}

#[test]
fn create_remove_cycles_leak_nothing() {
    if !kvm_available("manager soak") {
        return;
    }
    let cycles = match std::env::var("CVMM_SOAK_CYCLES") {
        Ok(v) => v
            .parse::<usize>()
            .unwrap_or_else(|e| panic!("CVMM_SOAK_CYCLES={v:?}: {e}")),
        Err(_) => DEFAULT_CYCLES,
    };
    let m = start_manager("probe.exit=halt");
    let rt = rt();
    let mut c = rt.block_on(client(&m));
    // Warm-up: lazily created runtime threads, connections and the like exist from here on.
    for _ in 0..3 {
        rt.block_on(cycle(&mut c));
    }
    assert!(wait_for(Duration::from_secs(10), || usage(&m).children == 0));
    let before = usage(&m);
    let start = Instant::now();
    for _ in 0..cycles {
        rt.block_on(cycle(&mut c));
    }
    let took = start.elapsed();
    println!(
        "soak: {cycles} CreateVm/RemoveVm cycles in {:.1} s ({:.1} ms per cycle)",
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / cycles as f64
    );
    // Idle blocking-pool threads retire after tokio's 10 s keep-alive; allow that to pass.
    let settled = wait_for(Duration::from_secs(15), || {
        let u = usage(&m);
        u.fds <= before.fds && u.threads <= before.threads && u.children == 0
    });
    let after = usage(&m);
    println!(
        "soak: before {before:?}, after {after:?}, held forwarded ports after: {:?}",
        unbindable_ports(&m)
    );
    assert!(
        settled,
        "resources grew: before {before:?}, after {after:?}"
    );
    assert_eq!(
        after.children,
        0,
        "VM processes left: {:?}",
        children(m.child.id())
    );
    assert_eq!(
        after.state_entries, before.state_entries,
        "files left in the state directory"
    );
    assert_eq!(
        unbindable_ports(&m),
        Vec::<u16>::new(),
        "forwarded ports still held"
    );
}

/// Connects to the forwarded port until `ECHO x` comes back as `x`; false after `limit`.
async fn echo_answers(port: u16, limit: Duration) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            if s.write_all(b"ECHO x\n").await.is_ok() {
                let mut buf = Vec::new();
                let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf));
                if matches!(read.await, Ok(Ok(_))) && buf == b"x\n" {
                    return true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Polls the VM's control socket (every millisecond) until it reports its first KVM_RUN.
fn wait_vm_running(sock: &Path, limit: Duration) -> bool {
    wait_for_every(Duration::from_millis(1), limit, || {
        vmm::control::status(sock).is_ok_and(|st| {
            st.phases
                .iter()
                .any(|p| p.phase.starts_with("first_kvm_run"))
        })
    })
}

fn wait_for_every(step: Duration, limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(step);
    }
    cond()
}

/// One VM's timings from the CreateVm call: response, VM process running, the guest ready
/// (its `cvmm-probe: ready` console line, as QEMU's is timed) and its network up (`net
/// ready`), both watched while the port is polled, port answering.
struct VmTimes {
    created: Duration,
    running: Duration,
    guest_ready: Duration,
    net_ready: Duration,
    answered: Duration,
}

/// Times one VM (see [`VmTimes`]), which is then removed.
async fn timed_vm(mut c: ManagerServiceClient<Channel>, state: PathBuf) -> VmTimes {
    let t0 = Instant::now();
    let res = c.create_vm(req()).await.unwrap().into_inner();
    let created = t0.elapsed();
    let sock = state.join(&res.cvm_id).join("control.sock");
    let ok = tokio::task::spawn_blocking(move || wait_vm_running(&sock, Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(ok, "VM {} never reported its first KVM_RUN", res.cvm_id);
    let running = t0.elapsed();
    let console = state.join(&res.cvm_id).join("console.log");
    let console_times = tokio::task::spawn_blocking(move || {
        let mut ready = None;
        let up = wait_for_every(Duration::from_millis(2), Duration::from_secs(60), || {
            let text = std::fs::read_to_string(&console).unwrap_or_default();
            if ready.is_none() && text.contains("cvmm-probe: ready") {
                ready = Some(t0.elapsed());
            }
            text.contains("net ready")
        });
        Some((ready?, up.then(|| t0.elapsed())?))
    });
    let port: u16 = res.forwarded_port.parse().unwrap();
    assert!(
        echo_answers(port, Duration::from_secs(60)).await,
        "VM {} never answered ECHO on port {port}",
        res.cvm_id
    );
    let answered = t0.elapsed();
    let (guest_ready, net_ready) = console_times
        .await
        .unwrap()
        .expect("the guest became ready and its network came up");
    c.remove_vm(RemoveReq { cvm_id: res.cvm_id }).await.unwrap();
    VmTimes {
        created,
        running,
        guest_ready,
        net_ready,
        answered,
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// Prints p50/p99/max of `v`; returns the p50 in milliseconds.
fn report(what: &str, mut v: Vec<Duration>) -> f64 {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "latency: {what}: n={} p50={:.1} ms p99={:.1} ms max={:.1} ms",
        v.len(),
        ms(percentile(&v, 50)),
        ms(percentile(&v, 99)),
        ms(v[v.len() - 1])
    );
    ms(percentile(&v, 50))
}

/// QEMU on the probe guest: start to the `cvmm-probe: ready` line (microvm, as
/// `benches/boot_latency.rs` runs it).
fn qemu_ready_once() -> Option<Duration> {
    use std::io::{BufRead, BufReader};
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-enable-kvm", "-machine", "microvm"])
        .args(["-cpu", "host,-arch-capabilities", "-m", "128M", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-nographic"])
        .args(["-serial", "stdio", "-kernel"])
        .arg(probe("pvh"))
        .args(["-append", "probe.exit=poweroff"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let out = child.stdout.take()?;
    let ready = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("cvmm-probe: ready"))
        .map(|_| start.elapsed());
    let _ = child.kill();
    let _ = child.wait();
    ready
}

/// QEMU on the probe guest with a slirp host forward (q35, virtio-net-pci, as
/// `benches/net_throughput.rs` runs it): start to the forwarded port answering `ECHO x`.
async fn qemu_port_answering_once() -> Option<Duration> {
    let port = free_port();
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-enable-kvm", "-machine", "q35"])
        .args(["-cpu", "host,-arch-capabilities", "-m", "128M", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-nographic"])
        .args(["-serial", "null", "-kernel"])
        .arg(probe("pvh"))
        .args(["-append", "probe.net=dhcp probe.exit=halt"])
        .arg("-netdev")
        .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:7002"))
        .args([
            "-device",
            "virtio-net-pci,netdev=n0,disable-legacy=on,romfile=",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let answered = echo_answers(port, Duration::from_secs(60))
        .await
        .then(|| start.elapsed());
    let _ = child.kill();
    let _ = child.wait();
    answered
}

#[test]
fn create_latency_and_time_to_answering_port() {
    if !kvm_available("manager soak") {
        return;
    }
    let m = start_manager("probe.net=dhcp probe.exit=halt");
    let rt = rt();
    let c = rt.block_on(client(&m));
    // Warm-up: first exec of the VM program, page cache, the client connection.
    rt.block_on(timed_vm(c.clone(), m.state.clone()));
    let (mut answered_p50, mut ready_p50) = (Vec::new(), Vec::new());
    for (concurrency, rounds) in [(1usize, 20usize), (10, 3)] {
        let (mut created, mut running, mut guest_ready, mut net_ready, mut answered) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let results = rt.block_on(async {
                let tasks: Vec<_> = (0..concurrency)
                    .map(|_| tokio::spawn(timed_vm(c.clone(), m.state.clone())))
                    .collect();
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await.unwrap());
                }
                out
            });
            for t in results {
                created.push(t.created);
                running.push(t.running);
                guest_ready.push(t.guest_ready);
                net_ready.push(t.net_ready);
                answered.push(t.answered);
            }
        }
        report(
            &format!("CreateVm call->response, {concurrency} concurrent"),
            created,
        );
        report(
            &format!("CreateVm->VM process running (first KVM_RUN), {concurrency} concurrent"),
            running,
        );
        ready_p50.push(report(
            &format!("CreateVm->guest ready (console), {concurrency} concurrent"),
            guest_ready,
        ));
        report(
            &format!("CreateVm->guest net ready (console), {concurrency} concurrent"),
            net_ready,
        );
        answered_p50.push(report(
            &format!("CreateVm->ECHO answered, {concurrency} concurrent"),
            answered,
        ));
    }
    assert!(wait_for(Duration::from_secs(10), || usage(&m).children == 0));
    let have_qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_qemu {
        println!("SKIPPED: qemu-system-x86_64 not found; no QEMU comparison");
        return;
    }
    let runs = 20;
    let _ = qemu_ready_once(); // warm-up
    let ready: Vec<Duration> = (0..runs).filter_map(|_| qemu_ready_once()).collect();
    assert_eq!(ready.len(), runs, "QEMU runs failed");
    let qemu_ready = report("QEMU microvm start->guest ready, 1 at a time", ready);
    let _ = rt.block_on(qemu_port_answering_once()); // warm-up
    let port: Vec<Duration> = (0..runs)
        .filter_map(|_| rt.block_on(qemu_port_answering_once()))
        .collect();
    assert_eq!(port.len(), runs, "QEMU runs failed");
    let qemu_port = report("QEMU q35+slirp start->ECHO answered, 1 at a time", port);
    println!(
        "ratio (1 concurrent, p50): CreateVm->guest ready / QEMU microvm start->guest ready = {:.2}; CreateVm->ECHO answered / QEMU microvm start->guest ready = {:.2}; CreateVm->ECHO answered / QEMU q35+slirp start->ECHO answered = {:.2}",
        ready_p50[0] / qemu_ready,
        answered_p50[0] / qemu_ready,
        answered_p50[0] / qemu_port
    );
}
