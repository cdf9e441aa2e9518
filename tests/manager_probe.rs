//! Tier B: `cvmm manager` running real VM processes (`cvmm vm`) with the probe guest. A gRPC
//! client creates a VM, the probe boots in its own process, RemoveVm stops it and nothing is
//! left behind; a VM killed from outside or powered off by its guest is noticed and cleaned up
//! within a second; the VM cap holds and ten concurrent creates get ten answering ports; a
//! manager killed with SIGKILL and restarted re-adopts its VMs (and their TTLs) and nothing
//! else.

mod common;

use api::pb::manager_service_client::ManagerServiceClient;
use api::pb::{CreateReq, RemoveReq};
use common::*;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Manager {
    child: Child,
    grpc: u16,
    http: u16,
    state: PathBuf,
}

impl Manager {
    async fn client(&self) -> ManagerServiceClient<tonic::transport::Channel> {
        ManagerServiceClient::connect(format!("http://127.0.0.1:{}", self.grpc))
            .await
            .unwrap()
    }

    /// Waits (bounded) until VM `id`'s console shows the probe's ready line.
    fn wait_ready(&self, id: &str) -> bool {
        let console = self.state.join(id).join("console.log");
        wait_for(Duration::from_secs(30), || {
            std::fs::read_to_string(&console).is_ok_and(|c| c.contains("cvmm-probe: ready"))
        })
    }
}

/// CreateVm with only a TTL set; returns the new VM's id.
async fn create_with_ttl(
    c: &mut ManagerServiceClient<tonic::transport::Channel>,
    ttl: &str,
) -> String {
    create_vm_with_ttl(c, ttl).await.cvm_id
}

/// CreateVm with only a TTL set; returns the response.
async fn create_vm_with_ttl(
    c: &mut ManagerServiceClient<tonic::transport::Channel>,
    ttl: &str,
) -> api::pb::CreateRes {
    c.create_vm(CreateReq {
        ttl: ttl.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = std::fs::remove_file(log_of(&self.state));
    }
}

/// How many ports each manager forwards from (`MANAGER_QEMU_HOST_FWD_RANGE`).
const FWD_PORTS: u16 = 21;

fn start_manager(extra: &[(&str, String)]) -> Manager {
    let state =
        std::env::temp_dir().join(format!("cvmm-mgr-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&state).unwrap();
    start_manager_in(
        state,
        free_port(),
        free_port(),
        free_range(FWD_PORTS),
        extra,
    )
}

fn start_manager_in(
    state: PathBuf,
    grpc: u16,
    http: u16,
    fwd: u16,
    extra: &[(&str, String)],
) -> Manager {
    // The probe ignores its initrd; the manager always passes one, as the Go manager does.
    let initrd = state.join("initrd.img");
    std::fs::write(&initrd, vec![0u8; 4096]).unwrap();
    let mut cmd = Command::new(cvmm());
    cmd.arg("manager")
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
            format!("{fwd}-{}", fwd + FWD_PORTS - 1),
        )
        .env("MANAGER_QEMU_DISK_IMG_KERNEL_FILE", probe("pvh"))
        .env("MANAGER_QEMU_DISK_IMG_ROOTFS_FILE", &initrd)
        .env("MANAGER_QEMU_MEMORY_SIZE", "128M")
        .env("MANAGER_QEMU_SMP_COUNT", "1")
        .env("CVMM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log_of(&state)).unwrap());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let mut m = Manager {
        child,
        grpc,
        http,
        state,
    };
    let listening = wait_for(Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", m.grpc)).is_ok()
    });
    if !listening {
        let status = m.child.try_wait().unwrap();
        let log = std::fs::read_to_string(log_of(&m.state)).unwrap_or_default();
        panic!("the manager is not listening on gRPC port {grpc} after 30 s (exit: {status:?}); its log:\n{log}");
    }
    m
}

/// Where a manager's stderr goes: beside its state directory, so it outlives a restart.
fn log_of(state: &Path) -> PathBuf {
    state.with_extension("log")
}

fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn vm_pid(state: &Path, id: &str) -> i32 {
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join(id).join("vm.json")).unwrap())
            .unwrap();
    rec["pid"].as_i64().unwrap() as i32
}

fn metric(http: u16, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", http)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn create_boots_a_vm_process_and_remove_stops_it() {
    if !kvm_available("tier B manager") {
        return;
    }
    let m = start_manager(&[("MANAGER_QEMU_KERNEL_CMDLINE", "probe.exit=halt".into())]);
    rt().block_on(async {
        let mut c = m.client().await;
        let res = c
            .create_vm(CreateReq {
                agent_log_level: "info".into(),
                ttl: "10m".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let id = res.cvm_id.clone();
        let port: u16 = res.forwarded_port.parse().unwrap();
        assert!(
            m.wait_ready(&id),
            "VM did not boot: {:?}",
            std::fs::read_to_string(m.state.join(&id).join("console.log"))
        );
        let pid = vm_pid(&m.state, &id);
        assert!(pid_alive(pid));
        // The forwarded port is held while the VM runs: nobody else can bind it.
        assert!(TcpListener::bind(("127.0.0.1", port)).is_err());
        assert_eq!(metric(m.http, "manager_vms_running"), Some(1.0));

        c.remove_vm(RemoveReq { cvm_id: id.clone() }).await.unwrap();
        assert!(
            wait_for(Duration::from_secs(10), || !pid_alive(pid)),
            "VM process left behind"
        );
        assert!(!m.state.join(&id).exists(), "VM state left behind");
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port not released"
        );
        assert_eq!(metric(m.http, "manager_vms_running"), Some(0.0));
    });
}

#[test]
fn a_vm_killed_from_outside_is_noticed_and_cleaned_up() {
    if !kvm_available("tier B manager") {
        return;
    }
    let m = start_manager(&[("MANAGER_QEMU_KERNEL_CMDLINE", "probe.exit=halt".into())]);
    rt().block_on(async {
        let mut c = m.client().await;
        let id = create_with_ttl(&mut c, "10m").await;
        assert!(m.wait_ready(&id), "VM did not boot");
        let pid = vm_pid(&m.state, &id);
        // SAFETY: killing the VM process we just looked up.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        assert!(
            wait_for(Duration::from_secs(10), || !m.state.join(&id).exists()),
            "manager did not clean up the killed VM"
        );
        assert_eq!(metric(m.http, "manager_vms_running"), Some(0.0));
    });
}

/// Waits until the process behind `pidfd` has exited (it need not be our child).
fn wait_exit(pidfd: &std::os::fd::OwnedFd, limit: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, limit.as_millis() as i32) == 1 }
}

#[test]
fn a_vm_whose_guest_powers_off_is_released_within_a_second() {
    if !kvm_available("tier B manager") {
        return;
    }
    // The guest answers one request on its forwarded port, then powers off.
    let m = start_manager(&[(
        "MANAGER_QEMU_KERNEL_CMDLINE",
        "probe.net=dhcp probe.serve=1 probe.exit=poweroff".into(),
    )]);
    rt().block_on(async {
        let mut c = m.client().await;
        let res = create_vm_with_ttl(&mut c, "10m").await;
        let (id, port) = (res.cvm_id, res.forwarded_port.parse::<u16>().unwrap());
        let pid = vm_pid(&m.state, &id);
        // A pidfd of our own turns readable the moment the VM process exits, whoever reaps it.
        let pidfd = api::process::pidfd_open(pid).expect("the VM process runs until it is asked");
        let answer = get_over_port(port, "ECHO bye\n", Duration::from_secs(60));
        // The guest powers off right after this answer: the power-off time is bounded by it.
        let answered = Instant::now();
        assert_eq!(answer.as_deref(), Some("bye\n"));
        assert!(
            wait_exit(&pidfd, Duration::from_secs(10)),
            "the VM process did not exit after its guest powered off"
        );
        let exited = Instant::now();
        let released = || {
            !Path::new(&format!("/proc/{pid}")).exists()
                && !m.state.join(&id).exists()
                && TcpListener::bind(("127.0.0.1", port)).is_ok()
                && metric(m.http, "manager_vms_running") == Some(0.0)
        };
        let mut polls = 0;
        while !released() && exited.elapsed() < Duration::from_secs(5) {
            polls += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        let (from_exit, from_answer) = (exited.elapsed(), answered.elapsed());
        println!(
            "guest power-off: released {:.1} ms after the VM process exited, {:.1} ms after the guest's last answer ({polls} polls)",
            from_exit.as_secs_f64() * 1000.0,
            from_answer.as_secs_f64() * 1000.0
        );
        assert!(released(), "not released: process, state, port or metric left");
        assert!(
            from_exit < Duration::from_secs(1),
            "released {from_exit:?} after the VM process exited"
        );
        assert!(
            from_answer < Duration::from_secs(1),
            "released {from_answer:?} after the guest's last answer"
        );
        let exits = metric(m.http, "manager_vm_exits_total").unwrap_or(0.0);
        assert!(exits >= 1.0, "exit counted: {exits}");
        // The entry of an exited VM stays until RemoveVm, which succeeds once.
        c.remove_vm(RemoveReq { cvm_id: id.clone() }).await.unwrap();
        let e = c.remove_vm(RemoveReq { cvm_id: id }).await.unwrap_err();
        assert_eq!(e.message(), "entity not found");
    });
}

fn get_over_port(port: u16, req: &str, limit: Duration) -> Option<String> {
    use std::io::{Read, Write};
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
            if s.write_all(req.as_bytes()).is_ok() {
                let mut out = String::new();
                if s.read_to_string(&mut out).is_ok() && !out.is_empty() {
                    return Some(out);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn the_forwarded_port_answers_with_the_guests_reading_of_its_id() {
    if !kvm_available("tier B manager") {
        return;
    }
    let m = start_manager(&[(
        "MANAGER_QEMU_KERNEL_CMDLINE",
        "probe.net=dhcp probe.exit=halt".into(),
    )]);
    rt().block_on(async {
        let mut c = m.client().await;
        let res = c
            .create_vm(CreateReq {
                agent_log_level: "debug".into(),
                agent_cvm_server_url: "10.0.2.2:7001".into(),
                ttl: "5m".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let port: u16 = res.forwarded_port.parse().unwrap();
        let env = tokio::task::spawn_blocking(move || {
            get_over_port(port, "GET env_share/environment\n", Duration::from_secs(60))
        })
        .await
        .unwrap()
        .expect("guest answered on the forwarded port");
        assert!(
            env.lines()
                .any(|l| l == format!("AGENT_CVM_ID={}", res.cvm_id)),
            "{env}"
        );
        assert!(env.contains("AGENT_LOG_LEVEL=debug"), "{env}");
        assert!(env.contains("AGENT_CVM_GRPC_URL=10.0.2.2:7001"), "{env}");
        c.remove_vm(RemoveReq { cvm_id: res.cvm_id }).await.unwrap();
    });
}

#[test]
fn max_vms_bad_fields_and_concurrent_creates() {
    if !kvm_available("tier B manager") {
        return;
    }
    let m = start_manager(&[
        ("MANAGER_QEMU_KERNEL_CMDLINE", "probe.exit=halt".into()),
        ("MANAGER_MAX_VMS", "2".into()),
    ]);
    rt().block_on(async {
        let c = m.client().await;
        // Bad input: nothing started.
        for bad in [
            CreateReq {
                ttl: "10 minutes".into(),
                ..Default::default()
            },
            CreateReq {
                agent_log_level: "info\r\nX=1".into(),
                ..Default::default()
            },
            CreateReq {
                agent_cvm_server_url: "a\nb".into(),
                ..Default::default()
            },
        ] {
            let e = c.clone().create_vm(bad).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            assert!(
                e.message().starts_with("time: ") || e.message().contains("field agent_"),
                "{e:?}"
            );
        }
        assert_eq!(metric(m.http, "manager_vms_running"), Some(0.0));
        assert_eq!(
            std::fs::read_dir(&m.state)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().is_dir())
                .count(),
            0
        );
        // Two concurrent creates both succeed with distinct ports; the third hits the cap.
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                c.create_vm(CreateReq {
                    ttl: "5m".into(),
                    ..Default::default()
                })
                .await
            }));
        }
        let mut ports = Vec::new();
        let mut ids = Vec::new();
        for t in tasks {
            let r = t.await.unwrap().unwrap().into_inner();
            ports.push(r.forwarded_port);
            ids.push(r.cvm_id);
        }
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 2, "distinct ports");
        let e = c
            .clone()
            .create_vm(CreateReq {
                ttl: "5m".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (tonic::Code::Unknown, "maximum number of VMs exceeded")
        );
        assert_eq!(metric(m.http, "manager_vms_running"), Some(2.0));
        let pids: Vec<i32> = ids.iter().map(|id| vm_pid(&m.state, id)).collect();
        for id in ids {
            c.clone().remove_vm(RemoveReq { cvm_id: id }).await.unwrap();
        }
        for pid in pids {
            assert!(wait_for(Duration::from_secs(10), || !pid_alive(pid)));
        }
    });
}

#[test]
fn ten_concurrent_creates_with_max_ten_all_answer_on_distinct_ports() {
    if !kvm_available("tier B manager") {
        return;
    }
    let m = start_manager(&[
        (
            "MANAGER_QEMU_KERNEL_CMDLINE",
            "probe.net=dhcp probe.exit=halt".into(),
        ),
        ("MANAGER_MAX_VMS", "10".into()),
    ]);
    rt().block_on(async {
        let c = m.client().await;
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let mut c = c.clone();
                tokio::spawn(async move {
                    c.create_vm(CreateReq {
                        ttl: "5m".into(),
                        ..Default::default()
                    })
                    .await
                })
            })
            .collect();
        let mut vms = Vec::new();
        for t in tasks {
            let r = t.await.unwrap().expect("CreateVm").into_inner();
            vms.push((r.cvm_id, r.forwarded_port.parse::<u16>().unwrap()));
        }
        let mut ports: Vec<u16> = vms.iter().map(|v| v.1).collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 10, "distinct ports: {vms:?}");
        assert_eq!(metric(m.http, "manager_vms_running"), Some(10.0));
        // Each port reaches its own VM: the guest reads back its env share, naming its id.
        let answers: Vec<_> = vms
            .iter()
            .map(|(id, port)| {
                let (id, port) = (id.clone(), *port);
                tokio::task::spawn_blocking(move || {
                    let got =
                        get_over_port(port, "GET env_share/environment\n", Duration::from_secs(60));
                    (id, port, got)
                })
            })
            .collect();
        for a in answers {
            let (id, port, got) = a.await.unwrap();
            let env = got.unwrap_or_else(|| panic!("VM {id} did not answer on {port}"));
            assert!(
                env.lines().any(|l| l == format!("AGENT_CVM_ID={id}")),
                "port {port} reached another VM than {id}: {env}"
            );
        }
        let pids: Vec<i32> = vms.iter().map(|(id, _)| vm_pid(&m.state, id)).collect();
        for (id, _) in &vms {
            c.clone()
                .remove_vm(RemoveReq { cvm_id: id.clone() })
                .await
                .unwrap();
        }
        for pid in pids {
            assert!(wait_for(Duration::from_secs(10), || !pid_alive(pid)));
        }
        for (id, port) in &vms {
            assert!(!m.state.join(id).exists(), "state of {id} left");
            assert!(
                TcpListener::bind(("127.0.0.1", *port)).is_ok(),
                "port {port} not released"
            );
        }
        assert_eq!(metric(m.http, "manager_vms_running"), Some(0.0));
    });
}

/// Writes a VM directory whose record points at `pid` (with its real start time), as a record
/// left by an earlier manager whose VM's pid now belongs to another process would.
fn write_foreign_record(state: &Path, pid: i32) -> String {
    // Any uuid-shaped name: the manager only looks at those.
    let id = format!("{pid:08x}-0000-4000-8000-{:012x}", free_port());
    let dir = state.join(&id);
    std::fs::create_dir(&dir).unwrap();
    let rec = serde_json::json!({
        "id": id,
        "pid": pid,
        "start_time": api::process::start_time(pid).unwrap(),
        "port": 1,
        "ttl_deadline_ms": null,
    });
    std::fs::write(dir.join("vm.json"), rec.to_string()).unwrap();
    id
}

#[test]
fn a_restarted_manager_re_adopts_running_vms() {
    if !kvm_available("tier B manager") {
        return;
    }
    let extra = [(
        "MANAGER_QEMU_KERNEL_CMDLINE",
        "probe.net=dhcp probe.exit=halt".to_string(),
    )];
    let mut m = start_manager(&extra);
    let (grpc, http, state) = (m.grpc, m.http, m.state.clone());
    let fwd = free_range(FWD_PORTS);
    const SHORT_TTL: Duration = Duration::from_secs(12);
    let (long, short, short_deadline) = rt().block_on(async {
        let mut c = ManagerServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .unwrap();
        let long = create_vm_with_ttl(&mut c, "5m").await;
        let short = create_vm_with_ttl(&mut c, &format!("{}s", SHORT_TTL.as_secs())).await;
        (long, short, Instant::now() + SHORT_TTL)
    });
    let (long_pid, short_pid) = (vm_pid(&state, &long.cvm_id), vm_pid(&state, &short.cvm_id));
    let long_port: u16 = long.forwarded_port.parse().unwrap();
    let short_port: u16 = short.forwarded_port.parse().unwrap();
    // kill -9 the manager: the VMs keep running.
    m.child.kill().unwrap();
    m.child.wait().unwrap();
    std::mem::forget(m); // keep the state directory for the next manager
    assert!(pid_alive(long_pid) && pid_alive(short_pid));
    // A record whose pid belongs to a live process that is not a VM (pid reuse): the next
    // manager must neither adopt nor kill it.
    let mut foreign = Command::new("sleep").arg("60").spawn().unwrap();
    let foreign_id = write_foreign_record(&state, foreign.id() as i32);

    let m2 = start_manager_in(state.clone(), grpc, http, fwd, &extra);
    assert!(
        Instant::now() + Duration::from_secs(2) < short_deadline,
        "the restart took too long for the TTL check"
    );
    assert_eq!(metric(m2.http, "manager_vms_running"), Some(2.0));
    // After the new manager is up, both VMs still answer on their ports.
    for port in [long_port, short_port] {
        assert_eq!(
            get_over_port(port, "ECHO still here\n", Duration::from_secs(30)).as_deref(),
            Some("still here\n"),
            "VM on port {port} does not answer after the restart"
        );
    }
    assert_eq!(
        foreign.try_wait().unwrap(),
        None,
        "the foreign process was killed"
    );
    assert!(
        !state.join(&foreign_id).exists(),
        "the foreign record was not dropped"
    );
    rt().block_on(async {
        let mut c = m2.client().await;
        let e = c
            .remove_vm(RemoveReq {
                cvm_id: foreign_id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            e.message(),
            "entity not found",
            "the foreign record was adopted"
        );
        c.remove_vm(RemoveReq {
            cvm_id: long.cvm_id.clone(),
        })
        .await
        .unwrap();
    });
    assert!(
        wait_for(Duration::from_secs(10), || !pid_alive(long_pid)),
        "re-adopted VM not stopped"
    );
    assert!(!state.join(&long.cvm_id).exists());
    assert!(TcpListener::bind(("127.0.0.1", long_port)).is_ok());
    // The short TTL was re-armed: its VM goes when the TTL recorded at CreateVm ends.
    assert!(
        wait_for(Duration::from_secs(30), || !pid_alive(short_pid)
            && !state.join(&short.cvm_id).exists()),
        "the re-adopted VM's TTL did not remove it"
    );
    let gone = Instant::now();
    assert!(
        gone + Duration::from_millis(100) >= short_deadline,
        "removed {:?} before its TTL ended",
        short_deadline - gone
    );
    assert!(
        gone < short_deadline + Duration::from_secs(5),
        "removed {:?} after its TTL ended",
        gone - short_deadline
    );
    assert!(TcpListener::bind(("127.0.0.1", short_port)).is_ok());
    rt().block_on(async {
        let e = m2
            .client()
            .await
            .remove_vm(RemoveReq {
                cvm_id: short.cvm_id.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.message(), "entity not found");
    });
    assert_eq!(metric(m2.http, "manager_vms_running"), Some(0.0));
    foreign.kill().unwrap();
    foreign.wait().unwrap();
}

#[test]
fn the_control_socket_reports_the_vm_and_stops_it() {
    if !kvm_available("tier B manager") {
        return;
    }
    let m = start_manager(&[("MANAGER_QEMU_KERNEL_CMDLINE", "probe.exit=halt".into())]);
    rt().block_on(async {
        let mut c = m.client().await;
        let id = create_with_ttl(&mut c, "10m").await;
        assert!(m.wait_ready(&id), "VM did not boot");
        let pid = vm_pid(&m.state, &id);
        let sock = m.state.join(&id).join("control.sock");
        let st = vmm::control::status(&sock).expect("the VM answers on its control socket");
        assert_eq!(st.name, id);
        assert_eq!(st.pid as i32, pid);
        assert_eq!(st.state, "running");
        let phases: Vec<&str> = st.phases.iter().map(|p| p.phase.as_str()).collect();
        for want in ["kvm_vm_created", "first_kvm_run[vcpu0]", "debug_port:0x60"] {
            assert!(phases.contains(&want), "no {want} in {phases:?}");
        }
        assert!(st.phases.windows(2).all(|w| w[0].us <= w[1].us));
        // A stop on the socket ends the VM (its control thread runs under its seccomp filter);
        // the manager reaps it like a VM that exits on its own.
        vmm::control::stop(&sock).unwrap();
        assert!(
            wait_for(Duration::from_secs(10), || !pid_alive(pid)),
            "VM still running after a stop on its control socket"
        );
        assert!(
            wait_for(Duration::from_secs(10), || !m.state.join(&id).exists()),
            "state of the stopped VM left behind"
        );
    });
}

#[test]
fn boot_phases_are_reported_while_the_vm_runs() {
    if !kvm_available("tier B manager") {
        return;
    }
    let m = start_manager(&[("MANAGER_QEMU_KERNEL_CMDLINE", "probe.exit=halt".into())]);
    rt().block_on(async {
        let mut c = m.client().await;
        let id = create_with_ttl(&mut c, "").await;
        assert!(m.wait_ready(&id), "the probe booted");
        // The probe's ready code (0x60, user space) is on the debug port: the manager's boot
        // watcher sees the guest up through the control socket and fills the histograms
        // while the VM still runs, not only when it exits.
        let count = "manager_vm_boot_phase_seconds_count{phase=\"vcpus_created\"}";
        assert!(
            wait_for(Duration::from_secs(10), || metric(m.http, count)
                == Some(1.0)),
            "{count} = {:?}",
            metric(m.http, count)
        );
        assert!(pid_alive(vm_pid(&m.state, &id)), "the VM is still running");
        c.remove_vm(RemoveReq { cvm_id: id }).await.unwrap();
        // Reported once per VM: the exit does not count the phases again.
        assert_eq!(metric(m.http, count), Some(1.0));
    });
}
