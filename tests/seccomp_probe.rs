//! Tier B: the per-thread seccomp filters on a real boot. The probe guest drives virtio-net
//! (DHCP) and virtio-9p (reads a file), so every thread kind runs: main loop, vCPU, spawner,
//! network and 9p workers. With filters on (the default, kill) the boot completes; with the
//! self-test hook each kind's thread makes a forbidden syscall after installing its filter and
//! the whole process dies of SIGSYS; in log mode the same call is let through.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// A directory of its own per boot: tests boot in parallel, and one truncating and rewriting
/// a shared `f.txt` while another guest reads it can make that read fail.
fn share() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("cvmm-seccomp-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f.txt"), b"filtered\n").unwrap();
    dir
}

/// Boots the probe with net and 9p under `--seccomp mode`, with the self-test hook for `kind`.
fn boot(mode: &str, selftest: Option<&str>) -> Run {
    let dir = share();
    let k = probe("pvh");
    let mut cmd = Command::new(cvmm());
    cmd.args(["run", "--kernel", k.to_str().unwrap(), "--memory", "128M"])
        .args(["--smp", "2", "--seccomp", mode])
        .args([
            "--append",
            "probe.net=dhcp probe.serve=0 probe.cat=env_share/f.txt probe.exit=poweroff",
        ])
        .args(["--share", &format!("env_share={}", dir.display())])
        .env("CVMM_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(kind) = selftest {
        cmd.env("CVMM_SECCOMP_SELFTEST", kind);
    }
    let r = wait_limit(cmd.spawn().unwrap(), LIMIT);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

#[test]
fn a_full_boot_with_net_and_9p_passes_the_filters() {
    if !kvm_available("tier B seccomp") {
        return;
    }
    let r = boot("kill", None);
    assert_eq!(r.code, Some(0), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("dhcp ip=10.0.2.15"), "{}", r.stdout);
    assert!(r.stdout.contains("filtered"), "9p read: {}", r.stdout);
}

#[test]
fn a_forbidden_syscall_in_any_thread_kind_kills_the_vmm() {
    if !kvm_available("tier B seccomp") {
        return;
    }
    for kind in ["main", "vcpu", "spawner", "net", "9p"] {
        let r = boot("kill", Some(kind));
        assert_eq!(
            r.signal,
            Some(libc::SIGSYS),
            "{kind}: code {:?}\n{}",
            r.code,
            r.stderr
        );
        assert!(
            r.stderr
                .contains(&format!("made forbidden syscall {}", libc::SYS_getppid)),
            "{kind}: the reporter names the syscall: {}",
            r.stderr
        );
    }
}

#[test]
fn log_and_off_modes_let_the_call_through() {
    if !kvm_available("tier B seccomp") {
        return;
    }
    for mode in ["log", "off"] {
        let r = boot(mode, Some("net"));
        assert_eq!(r.code, Some(0), "{mode}: {}", r.stderr);
    }
    let r = run_cvmm(&["run", "--kernel", "/k", "--seccomp", "strict"], LIMIT);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("--seccomp 'strict'"), "{}", r.stderr);
}

/// `cvmm vm --spec F --control SOCK` (how the manager runs a VM) with the probe.
fn vm_with_control(tag: &str, selftest: Option<&str>) -> (std::process::Child, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("cvmm-seccomp-ctl-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("spec.json");
    let k = probe("pvh");
    std::fs::write(
        &spec,
        format!(
            r#"{{"kernel":{:?},"vcpus":1,"memory_mib":128,"cmdline":"probe.exit=halt","net":false,"serial":"none"}}"#,
            k.to_str().unwrap()
        ),
    )
    .unwrap();
    let sock = dir.join("control.sock");
    let mut cmd = Command::new(cvmm());
    cmd.args(["vm", "--spec", spec.to_str().unwrap(), "--control"])
        .arg(&sock)
        .env("CVMM_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(kind) = selftest {
        cmd.env("CVMM_SECCOMP_SELFTEST", kind);
    }
    (cmd.spawn().unwrap(), sock)
}

#[test]
fn the_control_thread_is_filtered_and_serves_under_its_filter() {
    if !kvm_available("tier B seccomp") {
        return;
    }
    let (child, _) = vm_with_control("selftest", Some("control"));
    let r = wait_limit(child, LIMIT);
    assert_eq!(
        r.signal,
        Some(libc::SIGSYS),
        "code {:?}\n{}",
        r.code,
        r.stderr
    );
    assert!(
        r.stderr.contains("'control'"),
        "the reporter names the thread: {}",
        r.stderr
    );

    // Without the self-test the control thread answers status and stop in kill mode.
    let (child, sock) = vm_with_control("serve", None);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        match vmm::control::status(&sock) {
            Ok(s) if s.phases.iter().any(|p| p.phase == "debug_port:0x60") => break Some(s),
            _ if std::time::Instant::now() > deadline => break None,
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let status = status.expect("the VM answered with its ready phase on the control socket");
    assert_eq!(status.pid, child.id());
    vmm::control::stop(&sock).unwrap();
    let r = wait_limit(child, LIMIT);
    assert_eq!(r.code, Some(128 + libc::SIGTERM), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(sock.parent().unwrap());
}

/// `powerdown` on the control socket of a running VM (filters in kill mode): the press reaches
/// the VM's power button (the GED of direct boot; the timeline's `power_button` phase), the VM
/// keeps running (the probe handles no ACPI events), and `stop` still stops it as before.
#[test]
fn powerdown_presses_the_power_button_of_a_running_vm() {
    if !kvm_available("tier B powerdown") {
        return;
    }
    let (child, sock) = vm_with_control("powerdown", None);
    let wait_for = |phase: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match vmm::control::status(&sock) {
                Ok(s) if s.phases.iter().any(|p| p.phase == phase) => return Some(s),
                _ if std::time::Instant::now() > deadline => return None,
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    };
    wait_for("debug_port:0x60").expect("the probe reached ready");
    vmm::control::powerdown(&sock).unwrap();
    let status = wait_for("power_button").expect("the press reached the VM's button");
    assert_eq!(status.state, "running");
    assert_eq!(status.pid, child.id());
    vmm::control::stop(&sock).unwrap();
    let r = wait_limit(child, LIMIT);
    assert_eq!(r.code, Some(128 + libc::SIGTERM), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(sock.parent().unwrap());
}

fn manager_state_dir(mode: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("cvmm-seccomp-mgr-{}-{mode}", std::process::id()))
}

/// Starts `cvmm manager` on free loopback ports with `MANAGER_VMM_SECCOMP=mode` and the
/// self-test hook of the manager's threads (no KVM needed: no VM is created).
fn manager_selftest(mode: &str) -> std::process::Child {
    let state = manager_state_dir(mode);
    Command::new(cvmm())
        .arg("manager")
        .env("MANAGER_GRPC_HOST", "127.0.0.1")
        .env("MANAGER_GRPC_PORT", free_port().to_string())
        .env("MANAGER_HTTP_HOST", "127.0.0.1")
        .env("MANAGER_HTTP_PORT", free_port().to_string())
        .env("MANAGER_STATE_DIR", &state)
        .env("MANAGER_VMM_TEE", "none")
        .env("MANAGER_VMM_SECCOMP", mode)
        .env("CVMM_SECCOMP_SELFTEST", "manager")
        .env("CVMM_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_forbidden_syscall_in_the_manager_kills_it() {
    let r = wait_limit(manager_selftest("kill"), LIMIT);
    assert_eq!(
        r.signal,
        Some(libc::SIGSYS),
        "code {:?}\n{}",
        r.code,
        r.stderr
    );
    assert!(
        r.stderr
            .contains(&format!("made forbidden syscall {}", libc::SYS_getppid)),
        "the reporter names the syscall: {}",
        r.stderr
    );
    let _ = std::fs::remove_dir_all(manager_state_dir("kill"));
}

#[test]
fn the_manager_in_log_mode_survives_the_same_call() {
    let mut child = manager_selftest("log");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the manager is still serving"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(manager_state_dir("log"));
}

/// `cvmm run --control SOCK` with `cvmm ctl SOCK status|powerdown` (filters in kill mode):
/// status is one JSON line with the VM's pid and phases, powerdown presses the button
/// (`power_button` phase); `powerdown --wait 1` on a guest that ignores the button exits 1
/// and leaves it running, `--force` then stops it as SIGTERM does; afterwards ctl names the
/// socket it could not reach and exits 1.
#[test]
fn cvmm_ctl_drives_a_foreground_vm_through_its_control_socket() {
    if !kvm_available("tier B cvmm ctl") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("cvmm-ctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("vm.sock");
    let sock_arg = sock.to_str().unwrap();
    let child = Command::new(cvmm())
        .args(["run", "--kernel"])
        .arg(probe("pvh"))
        .args([
            "--append",
            "probe.exit=halt",
            "--memory",
            "128M",
            "--net",
            "none",
        ])
        .args(["--serial", "none", "--control", sock_arg])
        .env("CVMM_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status_with = |phase: &str| -> Option<serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let r = run_cvmm(&["ctl", sock_arg, "status"], LIMIT);
            if r.code == Some(0) {
                let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
                let phases = v["phases"].as_array().cloned().unwrap_or_default();
                if phases.iter().any(|p| p["phase"] == phase) {
                    return Some(v);
                }
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let v = status_with("debug_port:0x60").expect("ctl status shows the probe ready");
    assert_eq!(v["pid"], child.id());
    assert_eq!(v["state"], "running");
    let r = run_cvmm(&["ctl", sock_arg, "powerdown"], LIMIT);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    status_with("power_button").expect("the press reached the VM's button");
    // The probe has no button handler: a wait for its power-off ends in an error naming the
    // socket, and the VM (polled for its end all along) keeps running.
    let r = run_cvmm(&["ctl", sock_arg, "powerdown", "--wait", "1"], LIMIT);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains(sock_arg)
            && r.stderr
                .contains("still runs 1s after the power button press"),
        "{}",
        r.stderr
    );
    assert_eq!(status_with("power_button").unwrap()["state"], "running");
    let r = run_cvmm(&["ctl", sock_arg, "status", "--wait", "1"], LIMIT);
    assert_eq!(r.code, Some(2), "--wait without powerdown: {}", r.stderr);
    // With --force the VM is stopped after the wait, as SIGTERM does.
    let r = run_cvmm(
        &["ctl", sock_arg, "powerdown", "--wait", "1", "--force"],
        LIMIT,
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("the VM was stopped"), "{}", r.stderr);
    let vm = wait_limit(child, LIMIT);
    assert_eq!(vm.code, Some(128 + libc::SIGTERM), "{}", vm.stderr);
    let r = run_cvmm(&["ctl", sock_arg, "status"], LIMIT);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains(sock_arg),
        "names the socket: {}",
        r.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}
