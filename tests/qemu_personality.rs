//! The QEMU command-line personality: the Go manager's plain argument set (manager-api.md §5.2,
//! without pflash, with the probe guest as -kernel) boots through a `qemu-system-x86_64`
//! symlink and answers through its hostfwd port with the env share read over 9p; unsupported
//! options fail at once with QEMU-style wording; the SNP and TDX sets meet the TEE check's
//! refusal on a host without SNP/TDX before any file they name is opened.

mod common;

use common::*;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn symlinked_qemu() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cvmm-qemu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("qemu-system-x86_64");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(cvmm(), &link).unwrap();
    link
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
        let out = Command::new(symlinked_qemu())
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
    let child = Command::new(symlinked_qemu())
        .args(&args)
        .env("CVMM_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
