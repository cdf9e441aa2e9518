//! The QEMU command-line personality: the Go manager's plain argument set (manager-api.md §5.2,
//! without pflash, with the probe guest as -kernel) boots through a `qemu-system-x86_64`
//! symlink and answers through its hostfwd port with the env share read over 9p; unsupported
//! options fail at once with QEMU-style wording; the SNP and TDX sets meet the TEE check's
//! refusal on a host without SNP/TDX before any file they name is opened. What the Go manager
//! relies on: with `-nographic` the console is on stdout, SIGTERM ends a running guest well
//! within its 30 s bound, and a guest reset ends the VM (cvmm never reboots; without
//! `-no-reboot` it says so once).

mod common;

use common::*;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A `qemu-system-x86_64` symlink to cvmm in a directory of its own (the tests run in
/// parallel), removed with the guard; hold it until the process is spawned.
struct QemuLink(std::path::PathBuf);

impl QemuLink {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for QemuLink {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn symlinked_qemu() -> QemuLink {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("cvmm-qemu-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("qemu-system-x86_64");
    std::os::unix::fs::symlink(cvmm(), &link).unwrap();
    QemuLink(link)
}

#[test]
fn unsupported_options_fail_before_anything_starts() {
    for (args, opt) in [
        (vec!["-vnc", ":1"], "-vnc"),
        (vec!["-m", "128M", "-device", "e1000"], "e1000"),
    ] {
        let out = Command::new(cvmm())
            .arg("qemu")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cvmm: unsupported QEMU option '") && err.contains(opt),
            "{err}"
        );
    }
}

#[test]
fn snp_and_tdx_argument_sets_are_refused_on_this_host() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if cpuinfo.contains("sev_snp") || cpuinfo.contains("tdx_host_platform") {
        println!("SKIPPED: qemu tee sets: this host advertises SNP or TDX");
        return;
    }
    let u2 = "0b0f0e6a-1111-4222-8333-944445555666";
    let common = [
        "-enable-kvm",
        "-cpu",
        "EPYC-v4",
        "-smp",
        "2,maxcpus=64",
        "-m",
        "2048M,slots=5,maxmem=30G",
        "-object",
        "memory-backend-memfd,id=ram1,size=2048M,share=true,prealloc=false",
        "-nographic",
        "-nodefaults",
    ];
    let snp_machine =
        format!("q35,confidential-guest-support=sev0-{u2},memory-backend=ram1,igvm-cfg=igvm0");
    let snp_object = format!("sev-snp-guest,id=sev0-{u2},cbitpos=51,reduced-phys-bits=1");
    let tdx_machine =
        format!("q35,confidential-guest-support=tdx0-{u2},memory-backend=ram1,hpet=off");
    let tdx_object = format!(
        r#"{{"qom-type":"tdx-guest","id":"tdx0-{u2}","quote-generation-socket":{{"type":"vsock","cid":"2","port":"4050"}}}}"#
    );
    let sets: [(Vec<&str>, &str, &str); 2] = [
        (
            vec![
                "-machine",
                &snp_machine,
                "-object",
                &snp_object,
                "-object",
                "igvm-cfg,id=igvm0,file=/nonexistent/coconut-qemu.igvm",
            ],
            "--tee snp: host does not support SEV-SNP: /proc/cpuinfo has no sev_snp flag",
            "/nonexistent/coconut-qemu.igvm",
        ),
        (
            vec![
                "-machine",
                &tdx_machine,
                "-object",
                &tdx_object,
                "-bios",
                "/nonexistent/OVMF.fd",
            ],
            "--tee tdx: host does not support TDX: /proc/cpuinfo has no tdx_host_platform flag",
            "/nonexistent/OVMF.fd",
        ),
    ];
    for (set, want, path) in sets {
        let out = Command::new(symlinked_qemu().path())
            .args(common)
            .args(&set)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{set:?}: {err}");
        assert!(err.contains(want), "{set:?}: {err}");
        assert!(!err.contains(path), "refused before opening {path}: {err}");
    }
}

#[test]
fn the_managers_plain_argument_set_boots_the_probe() {
    if !kvm_available("tier B qemu personality") {
        return;
    }
    let port = free_port();
    let env = std::env::temp_dir().join(format!("cvmm-qemu-env-{}", std::process::id()));
    let certs = std::env::temp_dir().join(format!("cvmm-qemu-certs-{}", std::process::id()));
    for d in [&env, &certs] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(env.join("environment"), b"AGENT_CVM_ID=qemu-line\n").unwrap();
    let initrd = env.join("rootfs.cpio.gz");
    std::fs::write(&initrd, vec![0u8; 4096]).unwrap();
    let k = probe("pvh");
    let u2 = "0b0f0e6a-1111-4222-8333-944445555666";
    let args: Vec<String> = [
        "-enable-kvm",
        "-machine",
        "q35",
        "-cpu",
        "EPYC",
        "-smp",
        "1,maxcpus=64",
        "-m",
        "256M,slots=5,maxmem=30G",
        "-netdev",
        &format!("user,id=vmnic-{u2},hostfwd=tcp::{port}-:7002"),
        "-device",
        &format!("virtio-net-pci,disable-legacy=on,iommu_platform=true,netdev=vmnic-{u2},addr=0x2,romfile="),
        "-kernel",
        k.to_str().unwrap(),
        "-append",
        "probe.net=dhcp probe.serve=1",
        "-initrd",
        initrd.to_str().unwrap(),
        "-nographic",
        "-monitor",
        "pty",
        "-fsdev",
        &format!("local,id=cert_fs,path={},security_model=mapped", certs.display()),
        "-device",
        "virtio-9p-pci,fsdev=cert_fs,mount_tag=certs_share",
        "-fsdev",
        &format!("local,id=env_fs,path={},security_model=mapped", env.display()),
        "-device",
        "virtio-9p-pci,fsdev=env_fs,mount_tag=env_share",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let child = spawn_qemu(&args, "warn");
    let start = Instant::now();
    let reply = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            s.write_all(b"GET env_share/environment\n").unwrap();
            let mut out = String::new();
            if s.read_to_string(&mut out).is_ok() && !out.is_empty() {
                break out;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no answer on the hostfwd port"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(reply, "AGENT_CVM_ID=qemu-line\n");
    let r = wait_limit(child, Duration::from_secs(60));
    assert_eq!(
        r.code,
        Some(0),
        "guest power-off ends the process: {}",
        r.stderr
    );
    for d in [env, certs] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

/// The manager's plain options around the probe as `-kernel` (no pflash, no devices).
fn plain_line(append: &str) -> Vec<String> {
    let k = probe("pvh");
    [
        "-enable-kvm",
        "-machine",
        "q35",
        "-cpu",
        "EPYC",
        "-smp",
        "1,maxcpus=64",
        "-m",
        "256M,slots=5,maxmem=30G",
        "-kernel",
        k.to_str().unwrap(),
        "-append",
        append,
        "-nographic",
        "-monitor",
        "pty",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn spawn_qemu(args: &[String], log: &str) -> std::process::Child {
    Command::new(symlinked_qemu().path())
        .args(args)
        .env("CVMM_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn nographic_puts_the_guest_console_on_stdout() {
    if !kvm_available("tier B qemu personality") {
        return;
    }
    let child = spawn_qemu(&plain_line("probe.exit=poweroff"), "info");
    let r = wait_limit(child, Duration::from_secs(60));
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    for line in [
        "cvmm-probe: start proto=pvh",
        "cvmm-probe: cmdline=probe.exit=poweroff",
        "cvmm-probe: ready",
        "cvmm-probe: exit=poweroff",
    ] {
        assert!(
            r.stdout.lines().any(|l| l.trim_end() == line),
            "'{line}' not on stdout: {}",
            r.stdout
        );
    }
    assert!(
        !r.stderr.contains("cvmm-probe"),
        "console lines on stderr: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("guest powered off"),
        "cvmm's own lines stay on stderr: {}",
        r.stderr
    );
}

/// The Go manager stops QEMU with SIGTERM and gives it 30 s before SIGKILL: a guest busy
/// serving its network must end within that bound, with cvmm's status for a signal (128+15).
#[test]
fn sigterm_ends_a_running_guest_within_the_managers_bound() {
    if !kvm_available("tier B qemu personality") {
        return;
    }
    let port = free_port();
    let mut args = plain_line("probe.net=dhcp");
    args.extend([
        "-netdev".to_string(),
        format!("user,id=vmnic-1,hostfwd=tcp::{port}-:7002"),
        "-device".to_string(),
        "virtio-net-pci,disable-legacy=on,iommu_platform=true,netdev=vmnic-1,addr=0x2,romfile="
            .to_string(),
    ]);
    let mut child = spawn_qemu(&args, "warn");
    // Read the console until the guest serves (it then polls its NIC in a loop, forever).
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("cvmm-probe: net ready") {
                let _ = tx.send(());
            }
            seen.push(line);
        }
        seen
    });
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        let r = wait_limit(child, Duration::from_secs(5));
        panic!(
            "the guest never served: {:?}\n{}",
            reader.join().unwrap(),
            r.stderr
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let sent = Instant::now();
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let r = wait_limit(child, Duration::from_secs(30));
    let took = sent.elapsed();
    assert_eq!(
        r.signal, None,
        "killed by the test's 30 s guard: {}",
        r.stderr
    );
    assert_eq!(r.code, Some(128 + libc::SIGTERM), "{}", r.stderr);
    assert!(r.stderr.contains("stopped by signal 15"), "{}", r.stderr);
    assert!(took < Duration::from_secs(30), "took {took:?}");
    println!("qemu personality: SIGTERM to exit {} ms", took.as_millis());
    let console = reader.join().unwrap();
    assert!(
        console.iter().any(|l| l.contains("cvmm-probe: ready")),
        "{console:?}"
    );
}

/// QEMU without `-no-reboot` restarts a guest that resets; cvmm cannot, so it ends the VM
/// with status 3 and says so once at start. With `-no-reboot` that is what was asked: no note.
#[test]
fn a_guest_reset_ends_the_vm_and_the_difference_is_logged_once() {
    if !kvm_available("tier B qemu personality") {
        return;
    }
    let note = "cvmm does not reboot guests: a guest reset ends the VM (exit status 3)";
    for no_reboot in [false, true] {
        let mut args = plain_line("probe.exit=reboot");
        if no_reboot {
            args.push("-no-reboot".into());
        }
        let r = wait_limit(spawn_qemu(&args, "info"), Duration::from_secs(60));
        assert_eq!(r.code, Some(3), "-no-reboot {no_reboot}: {}", r.stderr);
        assert!(
            r.stdout.contains("cvmm-probe: exit=reboot"),
            "-no-reboot {no_reboot}: {}",
            r.stdout
        );
        assert_eq!(
            r.stdout.matches("cvmm-probe: start").count(),
            1,
            "the guest ran once: {}",
            r.stdout
        );
        let last = r.stderr.lines().last().unwrap_or_default();
        assert!(last.contains("guest requested a reset"), "{last}");
        let notes = r.stderr.matches(note).count();
        assert_eq!(
            notes,
            usize::from(!no_reboot),
            "-no-reboot {no_reboot}: {}",
            r.stderr
        );
    }
}
