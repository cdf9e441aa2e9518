//! End-to-end tests of the manager over a real gRPC client on 127.0.0.1, with a fake VM
//! program: CreateVm/RemoveVm, request validation, the VM cap, port exhaustion, TTL, VM exit,
//! SIGKILL escalation, CVMInfo, AttestationPolicy (lookups, the CoRIM, a bad signing key).

mod common;

use api::pb::{AttestationPolicyReq, CreateReq, CvmInfoReq, RemoveReq};
use common::*;
use std::net::TcpStream;
use tonic::Code;

fn create_req() -> CreateReq {
    CreateReq {
        agent_cvm_server_url: "10.0.2.2:7001".into(),
        agent_log_level: "info".into(),
        agent_cvm_client_cert: b"CERT".to_vec(),
        aa_kbs_params: "cc_kbc::http://kbs".into(),
        ..Default::default()
    }
}

fn remove(id: &str) -> RemoveReq {
    RemoveReq { cvm_id: id.into() }
}

fn vm_dirs(h: &Harness) -> usize {
    std::fs::read_dir(&h.state).map_or(0, |d| d.count())
}

#[tokio::test]
async fn create_hands_the_port_to_the_vm_and_remove_releases_everything() {
    let h = Harness::start(SLEEPER, &[]).await;
    let mut c = h.client().await;
    let res = c.create_vm(create_req()).await.unwrap().into_inner();
    let id = uuid::Uuid::parse_str(&res.cvm_id).expect("cvm_id is a uuid");
    assert_eq!(id.get_version_num(), 4);
    assert_eq!(
        res.cvm_id,
        id.hyphenated().to_string(),
        "canonical lower-case form"
    );
    let port: u16 = res.forwarded_port.parse().unwrap();

    let dir = h.vm_dir(&res.cvm_id);
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("spec.json")).unwrap()).unwrap();
    assert_eq!(spec["forwards"][0]["host_port"], port);
    assert_eq!(spec["forwards"][0]["listen_fd"], 3);
    assert_eq!(spec["forwards"][0]["guest_port"], 7002);
    assert_eq!(
        spec["cmdline"],
        "quiet console=null agent.aa_kbc_params=cc_kbc::http://kbs"
    );
    assert_eq!(spec["vcpus"], 4);
    assert_eq!(spec["memory_mib"], 2048);
    let spec: vmm::spec::VmSpec = serde_json::from_value(spec).unwrap();
    let env = spec.shares.iter().find(|s| s.tag == "env_share").unwrap();
    let vmm::spec::ShareSource::Memory(files) = &env.source else {
        panic!("env share is not in memory")
    };
    let text = String::from_utf8(files[0].1.clone()).unwrap();
    assert!(
        text.contains(&format!("AGENT_CVM_ID={}\n", res.cvm_id)),
        "{text}"
    );
    assert!(
        text.contains("AGENT_CVM_GRPC_CLIENT_CERT=/etc/certs/cert.pem\n"),
        "{text}"
    );

    wait_until("the fake VM to record its fd 3", || {
        dir.join("fd3").exists()
    })
    .await;
    let fd3 = std::fs::read_to_string(dir.join("fd3")).unwrap();
    assert!(fd3.starts_with("socket:"), "fd 3 of the VM is {fd3:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("args")).unwrap().trim(),
        format!(
            "vm --spec {} --control {}",
            dir.join("spec.json").display(),
            dir.join("control.sock").display()
        )
    );
    TcpStream::connect(("127.0.0.1", port)).expect("the VM process holds the listening socket");
    assert_eq!(h.metric("manager_vms_running").await.as_deref(), Some("1"));

    c.remove_vm(remove(&res.cvm_id)).await.unwrap();
    assert!(!dir.exists(), "VM files are removed");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the port is released"
    );
    assert_eq!(h.metric("manager_vms_running").await.as_deref(), Some("0"));
    assert_eq!(
        h.metric("manager_api_request_count{method=\"Run\"}")
            .await
            .as_deref(),
        Some("1")
    );

    let err = c.remove_vm(remove(&res.cvm_id)).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unknown, "entity not found")
    );
}

#[tokio::test]
async fn invalid_requests_start_nothing() {
    let h = Harness::start(SLEEPER, &[]).await;
    let mut c = h.client().await;
    let mut bad_ttl = create_req();
    bad_ttl.ttl = "abc".into();
    let err = c.create_vm(bad_ttl).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "time: invalid duration \"abc\"")
    );
    let mut injected = create_req();
    injected.aws_region = "eu\nAGENT_CVM_ID=evil".into();
    let err = c.create_vm(injected).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("aws_region"), "{}", err.message());
    assert_eq!(vm_dirs(&h), 0, "no VM files were written");
    assert_eq!(h.metric("manager_vms_running").await.as_deref(), Some("0"));
}

#[tokio::test]
async fn the_vm_cap_is_enforced_and_freed_by_removal() {
    let h = Harness::start(SLEEPER, &[("MANAGER_MAX_VMS", "1".into())]).await;
    let mut c = h.client().await;
    let first = c.create_vm(create_req()).await.unwrap().into_inner();
    let err = c.create_vm(create_req()).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unknown, "maximum number of VMs exceeded")
    );
    c.remove_vm(remove(&first.cvm_id)).await.unwrap();
    let second = c.create_vm(create_req()).await.unwrap().into_inner();
    c.remove_vm(remove(&second.cvm_id)).await.unwrap();
}

#[tokio::test]
async fn an_exhausted_port_range_fails_with_the_go_message() {
    let port = lone_port();
    let range = format!("{port}-{port}");
    let h = Harness::start(
        SLEEPER,
        &[
            ("MANAGER_QEMU_HOST_FWD_RANGE", range.clone()),
            ("MANAGER_MAX_VMS", "0".into()),
        ],
    )
    .await;
    let mut c = h.client().await;
    let first = c.create_vm(create_req()).await.unwrap().into_inner();
    assert_eq!(first.forwarded_port, port.to_string());
    let err = c.create_vm(create_req()).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            Code::Unknown,
            format!(
                "failed to allocate free port on host : failed to find free port in range {range}"
            )
            .as_str()
        )
    );
    assert_eq!(vm_dirs(&h), 1, "the failed call left no files");
    c.remove_vm(remove(&first.cvm_id)).await.unwrap();
}

#[tokio::test]
async fn the_ttl_removes_the_vm() {
    let h = Harness::start(SLEEPER, &[]).await;
    let mut c = h.client().await;
    let mut req = create_req();
    req.ttl = "200ms".into();
    let res = c.create_vm(req).await.unwrap().into_inner();
    let dir = h.vm_dir(&res.cvm_id);
    wait_until("the TTL to remove the VM", || !dir.exists()).await;
    let mut gone = false;
    for _ in 0..200 {
        if let Err(e) = c.remove_vm(remove(&res.cvm_id)).await {
            assert_eq!(e.message(), "entity not found");
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(gone, "the VM entry was removed by its TTL");
}

#[tokio::test]
async fn a_vm_that_exits_is_reaped_and_its_slot_freed() {
    let h = Harness::start(FAILS, &[("MANAGER_MAX_VMS", "1".into())]).await;
    let mut c = h.client().await;
    let res = c.create_vm(create_req()).await.unwrap().into_inner();
    let dir = h.vm_dir(&res.cvm_id);
    wait_until("the exit to be noticed", || !dir.exists()).await;
    assert_eq!(
        h.metric("manager_vm_exits_total").await.as_deref(),
        Some("1")
    );
    assert_eq!(h.metric("manager_vms_running").await.as_deref(), Some("0"));
    c.remove_vm(remove(&res.cvm_id))
        .await
        .expect("RemoveVm of an exited VM succeeds");
    let err = c.remove_vm(remove(&res.cvm_id)).await.unwrap_err();
    assert_eq!(err.message(), "entity not found");
    let next = c
        .create_vm(create_req())
        .await
        .expect("the cap slot was freed");
    let dir = h.vm_dir(&next.into_inner().cvm_id);
    wait_until("the second exit", || !dir.exists()).await;
}

#[tokio::test]
async fn a_vm_ignoring_sigterm_is_killed_after_the_stop_timeout() {
    let h = Harness::start(STUBBORN, &[("MANAGER_VMM_STOP_TIMEOUT", "300ms".into())]).await;
    let mut c = h.client().await;
    let res = c.create_vm(create_req()).await.unwrap().into_inner();
    let dir = h.vm_dir(&res.cvm_id);
    wait_until("the fake VM to start", || dir.join("fd3").exists()).await;
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("vm.json")).unwrap()).unwrap();
    let pid = rec["pid"].as_i64().unwrap();
    c.remove_vm(remove(&res.cvm_id)).await.unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the process is killed and reaped"
    );
}

#[tokio::test]
async fn cvm_info_echoes_and_attestation_policy_needs_a_known_id() {
    let h = Harness::start(
        SLEEPER,
        &[
            ("MANAGER_QEMU_OVMF_VERSION", "edk2-stable202408".into()),
            ("MANAGER_EOS_VERSION", "eos1".into()),
        ],
    )
    .await;
    let mut c = h.client().await;
    let info = c
        .cvm_info(CvmInfoReq {
            id: "whatever".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.id, "whatever");
    assert_eq!(
        (
            info.ovmf_version.as_str(),
            info.cpu_num,
            info.cpu_type.as_str()
        ),
        ("edk2-stable202408", 4, "EPYC")
    );
    assert_eq!(
        (info.kernel_cmd.as_str(), info.eos_version.as_str()),
        ("", "eos1")
    );
    let err = c
        .attestation_policy(AttestationPolicyReq { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::Unknown, "computationId nope not found")
    );
}

#[tokio::test]
async fn attestation_policy_of_a_known_vm_is_a_corim() {
    let h = Harness::start(SLEEPER, &[]).await;
    let mut c = h.client().await;
    let id = c.create_vm(create_req()).await.unwrap().into_inner().cvm_id;
    let res = c
        .attestation_policy(AttestationPolicyReq { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.id, id);
    let corim: ciborium::Value = ciborium::from_reader(&res.info[..]).expect("CBOR");
    let ciborium::Value::Tag(501, map) = corim else {
        panic!("not a tag-501 CoRIM: {corim:?}")
    };
    let corim_id = map.as_map().unwrap()[0].1.as_text().unwrap().to_string();
    // MANAGER_VMM_TEE=none: a plain host gets the TDX defaults, as upstream.
    assert!(corim_id.starts_with("tdx-corim-"), "{corim_id}");
    c.remove_vm(remove(&id)).await.unwrap();
}

#[tokio::test]
async fn an_unreadable_signing_key_stops_start_up_naming_the_variable() {
    let mut h = Harness::start(
        SLEEPER,
        &[(
            "MANAGER_CORIM_SIGNING_KEY",
            "/nonexistent/corim-key.pem".into(),
        )],
    )
    .await;
    match h.shutdown().await {
        Err(api::ApiError::Config(e)) => {
            assert_eq!(e.var, "MANAGER_CORIM_SIGNING_KEY");
            assert_eq!(e.value, "/nonexistent/corim-key.pem");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

/// A manager booting plain VMs through UEFI, with firmware files of its own under `root`.
async fn uefi_harness(vars_template: &[u8]) -> Harness {
    let root = scratch();
    let (code, vars) = (root.join("OVMF_CODE.fd"), root.join("OVMF_VARS.fd"));
    std::fs::write(&code, b"code").unwrap();
    std::fs::write(&vars, vars_template).unwrap();
    let exe = fake_vm(&root, SLEEPER);
    let cfg = config(
        &root,
        &root.join("state"),
        &exe,
        &[
            ("MANAGER_VMM_PLAIN_BOOT", "uefi".into()),
            ("MANAGER_QEMU_OVMF_CODE_FILE", code.display().to_string()),
            ("MANAGER_QEMU_OVMF_VARS_FILE", vars.display().to_string()),
        ],
    );
    Harness::start_with(root, cfg).await
}

#[tokio::test]
async fn uefi_vms_each_get_their_own_vars_copy_removed_with_them() {
    let h = uefi_harness(b"template variables").await;
    let mut c = h.client().await;
    let a = c.create_vm(create_req()).await.unwrap().into_inner();
    let b = c.create_vm(create_req()).await.unwrap().into_inner();
    let (dir_a, dir_b) = (h.vm_dir(&a.cvm_id), h.vm_dir(&b.cvm_id));
    for dir in [&dir_a, &dir_b] {
        let spec: vmm::spec::VmSpec =
            serde_json::from_slice(&std::fs::read(dir.join("spec.json")).unwrap()).unwrap();
        assert_eq!(spec.firmware, Some(h.root.join("OVMF_CODE.fd")));
        assert_eq!(spec.firmware_vars, Some(dir.join("OVMF_VARS.fd")));
        assert_eq!(
            std::fs::read(dir.join("OVMF_VARS.fd")).unwrap(),
            b"template variables"
        );
    }
    // A write by one VM's firmware stays in its copy.
    std::fs::write(dir_a.join("OVMF_VARS.fd"), b"changed by VM a").unwrap();
    assert_eq!(
        std::fs::read(dir_b.join("OVMF_VARS.fd")).unwrap(),
        b"template variables"
    );
    assert_eq!(
        std::fs::read(h.root.join("OVMF_VARS.fd")).unwrap(),
        b"template variables",
        "the template is never written"
    );
    c.remove_vm(remove(&a.cvm_id)).await.unwrap();
    assert!(!dir_a.exists(), "the VARS copy goes with the VM");
    assert!(dir_b.join("OVMF_VARS.fd").exists());
    c.remove_vm(remove(&b.cvm_id)).await.unwrap();
    assert_eq!(vm_dirs(&h), 0);
}

#[tokio::test]
async fn direct_plain_boot_has_no_firmware() {
    let h = Harness::start(SLEEPER, &[]).await;
    let mut c = h.client().await;
    let res = c.create_vm(create_req()).await.unwrap().into_inner();
    let dir = h.vm_dir(&res.cvm_id);
    let spec: vmm::spec::VmSpec =
        serde_json::from_slice(&std::fs::read(dir.join("spec.json")).unwrap()).unwrap();
    assert_eq!((spec.firmware, spec.firmware_vars), (None, None));
    assert!(!dir.join("OVMF_VARS.fd").exists());
    c.remove_vm(remove(&res.cvm_id)).await.unwrap();
}

/// With `MANAGER_QEMU_ENABLE_HOST_DATA=true` an SNP VM's spec carries the Go manager's host
/// data, SHA3-256("TODO"), for SNP_LAUNCH_FINISH; without it, or on a TDX host, none.
#[tokio::test]
async fn snp_vms_get_the_host_data_only_when_enabled() {
    use vmm::spec::TeeMode;
    for (enable, tee, mode, want) in [
        (
            "true",
            "snp",
            TeeMode::Snp,
            Some(api::config::SNP_HOST_DATA),
        ),
        ("false", "snp", TeeMode::Snp, None),
        ("true", "tdx", TeeMode::Tdx, None),
    ] {
        // CreateVm checks that the launch firmware exists; the fake VM never reads it.
        let root = scratch();
        let firmware = root.join("firmware.bin");
        std::fs::write(&firmware, b"").unwrap();
        let firmware = firmware.display().to_string();
        let cfg = config(
            &root,
            &root.join("state"),
            &fake_vm(&root, SLEEPER),
            &[
                ("MANAGER_VMM_TEE", tee.into()),
                ("MANAGER_QEMU_ENABLE_HOST_DATA", enable.into()),
                ("MANAGER_QEMU_IGVM_FILE", firmware.clone()),
                ("MANAGER_QEMU_OVMF_FILE", firmware),
            ],
        );
        let h = Harness::start_with(root, cfg).await;
        let mut c = h.client().await;
        let res = c.create_vm(create_req()).await.unwrap().into_inner();
        let dir = h.vm_dir(&res.cvm_id);
        let spec: vmm::spec::VmSpec =
            serde_json::from_slice(&std::fs::read(dir.join("spec.json")).unwrap()).unwrap();
        assert_eq!(spec.tee, mode);
        assert_eq!(spec.snp.host_data, want, "enable={enable} tee={tee}");
        c.remove_vm(remove(&res.cvm_id)).await.unwrap();
    }
}

#[tokio::test]
async fn a_missing_vars_template_stops_start_up_naming_the_variable() {
    let root = scratch();
    let exe = fake_vm(&root, SLEEPER);
    std::fs::write(root.join("CODE.fd"), b"code").unwrap();
    let cfg = config(
        &root,
        &root.join("state"),
        &exe,
        &[
            ("MANAGER_VMM_PLAIN_BOOT", "uefi".into()),
            (
                "MANAGER_QEMU_OVMF_CODE_FILE",
                root.join("CODE.fd").display().to_string(),
            ),
            (
                "MANAGER_QEMU_OVMF_VARS_FILE",
                "/nonexistent/OVMF_VARS.fd".into(),
            ),
        ],
    );
    let mut h = Harness::start_with(root, cfg).await;
    match h.shutdown().await {
        Err(e @ api::ApiError::Firmware { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("MANAGER_QEMU_OVMF_VARS_FILE=/nonexistent/OVMF_VARS.fd: "),
                "{msg}"
            );
        }
        other => panic!("expected a firmware error, got {other:?}"),
    }
}

/// Waits until the manager answers RPCs (its start-up checks and state directory are done).
async fn serving(h: &Harness) {
    h.client()
        .await
        .cvm_info(CvmInfoReq::default())
        .await
        .expect("the manager serves");
}

/// Ports of the harness's range that can be bound now.
fn bindable_ports(h: &Harness) -> Vec<u16> {
    let (lo, hi) = h.range();
    (lo..=hi)
        .filter(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .collect()
}

/// Asserts a CreateVm error `(UNKNOWN, want)` and that nothing was started or left: no VM
/// directory, no running VM, no port of the range held that was free before the call.
async fn assert_create_fails_cleanly(h: &Harness, want: &str) {
    let mut c = h.client().await;
    let free = bindable_ports(h);
    assert!(!free.is_empty(), "no free port to start a VM on");
    let err = c.create_vm(create_req()).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::Unknown, want));
    assert_eq!(vm_dirs(h), 0, "no VM files are left after {want:?}");
    assert_eq!(h.metric("manager_vms_running").await.as_deref(), Some("0"));
    assert_eq!(
        bindable_ports(h),
        free,
        "a port is still held after {want:?}"
    );
}

#[tokio::test]
async fn a_missing_kernel_or_initrd_fails_create_vm_naming_the_file() {
    let h = Harness::start(SLEEPER, &[]).await;
    let (kernel, initrd) = (h.root.join("bzImage"), h.root.join("initrd.img"));
    std::fs::remove_file(&kernel).unwrap();
    assert_create_fails_cleanly(
        &h,
        &format!(
            "kernel image {} (MANAGER_QEMU_DISK_IMG_KERNEL_FILE) cannot be read: no such file or directory",
            kernel.display()
        ),
    )
    .await;
    std::fs::write(&kernel, b"").unwrap();
    std::fs::remove_file(&initrd).unwrap();
    std::fs::create_dir(&initrd).unwrap();
    assert_create_fails_cleanly(
        &h,
        &format!(
            "initramfs image {} (MANAGER_QEMU_DISK_IMG_ROOTFS_FILE) cannot be read: is a directory",
            initrd.display()
        ),
    )
    .await;
    std::fs::remove_dir(&initrd).unwrap();
    std::fs::write(&initrd, b"").unwrap();
    let mut c = h.client().await;
    let res = c.create_vm(create_req()).await.unwrap().into_inner();
    c.remove_vm(remove(&res.cvm_id)).await.unwrap();
}

#[tokio::test]
async fn an_unset_kernel_or_initrd_fails_with_the_go_message() {
    for (unset_kernel, want) in [
        (true, "kernel boot enabled but kernel image is not set"),
        (false, "kernel boot enabled but initramfs image is not set"),
    ] {
        let root = scratch();
        let exe = fake_vm(&root, SLEEPER);
        let mut cfg = config(&root, &root.join("state"), &exe, &[]);
        // The variables fall back to their defaults when empty; only a config built in
        // code can hold an empty path.
        if unset_kernel {
            cfg.vm.kernel = Default::default();
        } else {
            cfg.vm.initrd = Default::default();
        }
        let h = Harness::start_with(root, cfg).await;
        assert_create_fails_cleanly(&h, want).await;
    }
}

#[tokio::test]
async fn missing_uefi_firmware_at_create_vm_fails_naming_the_file() {
    let h = uefi_harness(b"template variables").await;
    let (code, vars) = (h.root.join("OVMF_CODE.fd"), h.root.join("OVMF_VARS.fd"));
    serving(&h).await;
    // Both were there at start-up; each goes away afterwards.
    std::fs::remove_file(&code).unwrap();
    assert_create_fails_cleanly(
        &h,
        &format!(
            "OVMF file {} (MANAGER_QEMU_OVMF_CODE_FILE) cannot be read: no such file or directory",
            code.display()
        ),
    )
    .await;
    std::fs::write(&code, b"code").unwrap();
    std::fs::remove_file(&vars).unwrap();
    assert_create_fails_cleanly(
        &h,
        &format!(
            "OVMF variables template {} (MANAGER_QEMU_OVMF_VARS_FILE) cannot be read: no such file or directory",
            vars.display()
        ),
    )
    .await;
}

#[tokio::test]
async fn a_vm_program_that_cannot_start_fails_with_gos_exec_text() {
    let missing = "/nonexistent-cvmm-dir/cvmm";
    let h = Harness::start(SLEEPER, &[("MANAGER_VMM_EXE", missing.into())]).await;
    assert_create_fails_cleanly(
        &h,
        &format!("fork/exec {missing}: no such file or directory"),
    )
    .await;
    let bare = "cvmm-no-such-program-on-path";
    let h = Harness::start(SLEEPER, &[("MANAGER_VMM_EXE", bare.into())]).await;
    assert_create_fails_cleanly(
        &h,
        &format!("exec: \"{bare}\": executable file not found in $PATH"),
    )
    .await;
}

#[tokio::test]
async fn a_file_write_failure_returns_the_os_error_text() {
    let h = Harness::start(SLEEPER, &[]).await;
    serving(&h).await;
    // The state directory is replaced by a plain file after start-up: the VM's directory
    // cannot be made under it.
    std::fs::remove_dir_all(&h.state).unwrap();
    std::fs::write(&h.state, b"not a directory").unwrap();
    let mut c = h.client().await;
    let err = c.create_vm(create_req()).await.unwrap_err();
    let msg = err.message();
    let prefix = format!("mkdir {}/", h.state.display());
    assert_eq!(err.code(), Code::Unknown);
    assert!(
        msg.starts_with(&prefix) && msg.ends_with(": not a directory"),
        "{msg}"
    );
    let id = &msg[prefix.len()..msg.len() - ": not a directory".len()];
    uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id:?} in {msg:?}: {e}"));
    assert_eq!(h.metric("manager_vms_running").await.as_deref(), Some("0"));
    std::fs::remove_file(&h.state).unwrap();
}
