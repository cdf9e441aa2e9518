//! Tier B: `cvmm manager` running real VM processes (`cvmm vm`) with the probe guest. A gRPC
//! client creates a VM, the probe boots in its own process, RemoveVm stops it and nothing is
//! left behind; a VM killed from outside is noticed and cleaned up.

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
    c.create_vm(CreateReq {
        ttl: ttl.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .cvm_id
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn start_manager(extra: &[(&str, String)]) -> Manager {
    let state =
        std::env::temp_dir().join(format!("cvmm-mgr-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&state).unwrap();
    start_manager_in(state, free_port(), free_port(), free_port(), extra)
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
        .env("MANAGER_QEMU_HOST_FWD_RANGE", format!("{fwd}-{}", fwd + 20))
        .env("MANAGER_QEMU_DISK_IMG_KERNEL_FILE", probe("pvh"))
        .env("MANAGER_QEMU_DISK_IMG_ROOTFS_FILE", &initrd)
        .env("MANAGER_QEMU_MEMORY_SIZE", "128M")
        .env("MANAGER_QEMU_SMP_COUNT", "1")
        .env("CVMM_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let m = Manager {
        child,
        grpc,
        http,
        state,
    };
    wait_for(Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", m.grpc)).is_ok()
    });
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

#[test]
fn a_vm_whose_guest_powers_off_is_reaped() {
    if !kvm_available("tier B manager") {
        return;
    }
    let m = start_manager(&[("MANAGER_QEMU_KERNEL_CMDLINE", "probe.exit=poweroff".into())]);
    rt().block_on(async {
        let mut c = m.client().await;
        let id = create_with_ttl(&mut c, "10m").await;
        assert!(
            wait_for(Duration::from_secs(30), || !m.state.join(&id).exists()),
            "powered-off VM not reaped"
        );
        let exits = metric(m.http, "manager_vm_exits_total").unwrap_or(0.0);
        assert!(exits >= 1.0, "exit counted: {exits}");
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
        ("MANAGER_MAX_VMS", "3".into()),
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
            assert!(!e.message().is_empty());
        }
        assert_eq!(
            std::fs::read_dir(&m.state)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().is_dir())
                .count(),
            0
        );
        // Three concurrent creates all succeed with distinct ports; the fourth hits the cap.
        let mut tasks = Vec::new();
        for _ in 0..3 {
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
        assert_eq!(ports.len(), 3, "distinct ports");
        let e = c
            .clone()
            .create_vm(CreateReq {
                ttl: "5m".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            e.message().contains("maximum number of VMs exceeded"),
            "{}",
            e.message()
        );
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
    let fwd = free_port();
    let r = rt().block_on(async {
        let mut c = ManagerServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
            .await
            .unwrap();
        c.create_vm(CreateReq {
            ttl: "5m".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
    });
    let pid = vm_pid(&state, &r.cvm_id);
    // kill -9 the manager: the VM keeps running.
    m.child.kill().unwrap();
    m.child.wait().unwrap();
    std::mem::forget(m); // keep the state directory for the next manager
    assert!(pid_alive(pid));
    let port: u16 = r.forwarded_port.parse().unwrap();
    assert!(
        get_over_port(port, "ECHO still here\n", Duration::from_secs(60))
            .is_some_and(|s| s == "still here\n")
    );
    let m2 = start_manager_in(state.clone(), grpc, http, fwd, &extra);
    rt().block_on(async {
        let mut c = m2.client().await;
        c.remove_vm(RemoveReq {
            cvm_id: r.cvm_id.clone(),
        })
        .await
        .unwrap();
    });
    assert!(
        wait_for(Duration::from_secs(10), || !pid_alive(pid)),
        "re-adopted VM not stopped"
    );
    assert!(!state.join(&r.cvm_id).exists());
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
