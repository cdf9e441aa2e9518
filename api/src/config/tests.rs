//! Tests of `ManagerConfig::from_vars`: defaults, kept values, and start-up errors.

use super::*;

fn cfg(vars: &[(&str, &str)]) -> Result<ManagerConfig, ConfigError> {
    ManagerConfig::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

#[test]
fn defaults_match_the_go_manager() {
    let c = cfg(&[]).unwrap();
    assert_eq!((c.grpc_host.as_str(), c.grpc_port), ("0.0.0.0", 7001));
    assert_eq!(c.http_port, 7003);
    assert_eq!(c.max_vms, 10);
    assert_eq!(c.vm.cpu, "EPYC");
    assert_eq!(c.vm.smp_count, 4);
    assert_eq!(c.vm.memory_mib, 2048);
    assert_eq!(c.vm.host_fwd_range, (6100, 6200));
    assert_eq!(c.vm.guest_fwd_port, 7002);
    assert_eq!(c.vm.kernel_cmdline, "quiet console=null");
    assert_eq!(c.vm.sev_snp_cbit_pos, 51);
    assert_eq!(c.grpc_tls, None);
    assert_eq!(c.tee, TeeChoice::Auto);
    assert_eq!(c.stop_timeout, Duration::from_secs(30));
    assert_eq!(c.plain_boot, PlainBoot::Direct);
    assert_eq!(c.seccomp, seccomp::Mode::Kill);
    assert!(c.ignored_vars.is_empty());
}

#[test]
fn uefi_plain_boot_keeps_the_ovmf_code_and_vars_files() {
    let c = cfg(&[
        ("MANAGER_VMM_PLAIN_BOOT", "uefi"),
        ("MANAGER_QEMU_OVMF_CODE_FILE", "/fw/CODE.fd"),
        ("MANAGER_QEMU_OVMF_VARS_FILE", "/fw/VARS.fd"),
    ])
    .unwrap();
    assert_eq!(c.plain_boot, PlainBoot::Uefi);
    assert_eq!(c.vm.ovmf_code_file, PathBuf::from("/fw/CODE.fd"));
    assert_eq!(c.vm.ovmf_vars_file, PathBuf::from("/fw/VARS.fd"));
    assert!(
        c.ignored_vars.is_empty(),
        "the OVMF file names are used, not ignored: {:?}",
        c.ignored_vars
    );
}

#[test]
fn kept_variables_are_read() {
    let c = cfg(&[
        ("MANAGER_GRPC_HOST", "127.0.0.1"),
        ("MANAGER_GRPC_PORT", "6101"),
        ("MANAGER_HTTP_PORT", "6102"),
        ("MANAGER_MAX_VMS", "0"),
        ("MANAGER_QEMU_MEMORY_SIZE", "25G"),
        ("MANAGER_QEMU_SMP_COUNT", "2"),
        ("MANAGER_QEMU_CPU", "EPYC-v4"),
        ("MANAGER_QEMU_OVMF_VERSION", "edk2-stable202408"),
        ("MANAGER_QEMU_HOST_FWD_RANGE", "7000-7010"),
        ("MANAGER_QEMU_SEV_SNP_CBITPOS", "47"),
        ("MANAGER_EOS_VERSION", "v1"),
        ("MANAGER_VMM_TEE", "none"),
        ("MANAGER_VMM_STOP_TIMEOUT", "2s"),
        ("MANAGER_STATE_DIR", "/tmp/x"),
    ])
    .unwrap();
    assert_eq!(
        (c.grpc_host.as_str(), c.grpc_port, c.http_port),
        ("127.0.0.1", 6101, 6102)
    );
    assert_eq!(c.max_vms, 0);
    assert_eq!(c.vm.memory_mib, 25 * 1024);
    assert_eq!(c.vm.smp_count, 2);
    assert_eq!(c.vm.cpu, "EPYC-v4");
    assert_eq!(c.vm.ovmf_version, "edk2-stable202408");
    assert_eq!(c.vm.host_fwd_range, (7000, 7010));
    assert_eq!(
        c.vm.sev_snp_cbit_pos, 47,
        "the documented CBITPOS spelling is accepted"
    );
    assert_eq!(c.eos_version, "v1");
    assert_eq!(c.tee, TeeChoice::None);
    assert_eq!(c.stop_timeout, Duration::from_secs(2));
    assert_eq!(c.state_dir, PathBuf::from("/tmp/x"));
}

#[test]
fn negative_max_vms_means_unlimited() {
    assert_eq!(cfg(&[("MANAGER_MAX_VMS", "-1")]).unwrap().max_vms, 0);
}

#[test]
fn only_prefixed_qemu_names_count() {
    let c = cfg(&[("MEMORY_SIZE", "8G"), ("SMP_COUNT", "9")]).unwrap();
    assert_eq!((c.vm.memory_mib, c.vm.smp_count), (2048, 4));
}

#[test]
fn bad_values_name_the_variable() {
    for (var, value) in [
        ("MANAGER_QEMU_HOST_FWD_RANGE", "7000-6000"),
        ("MANAGER_QEMU_HOST_FWD_RANGE", "7000"),
        ("MANAGER_QEMU_HOST_FWD_RANGE", "0-10"),
        ("MANAGER_QEMU_MEMORY_SIZE", "lots"),
        ("MANAGER_QEMU_MEMORY_SIZE", "100K"),
        ("MANAGER_QEMU_SMP_COUNT", "0"),
        ("MANAGER_QEMU_SMP_COUNT", "four"),
        ("MANAGER_GRPC_PORT", "70000"),
        ("MANAGER_HTTP_PORT", "http"),
        ("MANAGER_MAX_VMS", "ten"),
        ("MANAGER_VMM_TEE", "sev"),
        ("MANAGER_VMM_PLAIN_BOOT", "bios"),
        ("MANAGER_VMM_SECCOMP", "strict"),
        ("MANAGER_VMM_STOP_TIMEOUT", "30"),
        ("MANAGER_QEMU_ENABLE_HOST_DATA", "yes"),
        ("MANAGER_VMM_HOST_FWD_ADDR", "localhost:1"),
        ("COCOS_JAEGER_TRACE_RATIO", "2"),
    ] {
        let err = cfg(&[(var, value)]).expect_err(value);
        let msg = err.to_string();
        assert_eq!(err.var, var, "{msg}");
        assert!(msg.contains(var), "{msg}");
    }
}

#[test]
fn range_errors_say_which_kind() {
    let e = cfg(&[("MANAGER_QEMU_HOST_FWD_RANGE", "7000-6000")]).unwrap_err();
    assert!(e.reason.contains("invalid range"), "{e}");
    let e = cfg(&[("MANAGER_QEMU_HOST_FWD_RANGE", "abc")]).unwrap_err();
    assert!(e.reason.contains("invalid input format"), "{e}");
}

#[test]
fn memory_sizes_follow_qemu_syntax() {
    assert_eq!(parse_memory_mib("2048M"), Some(2048));
    assert_eq!(parse_memory_mib("2048"), Some(2048));
    assert_eq!(parse_memory_mib("1.5G"), Some(1536));
    assert_eq!(parse_memory_mib("1T"), Some(1 << 20));
    assert_eq!(parse_memory_mib("2048k"), Some(2));
    assert_eq!(parse_memory_mib("0"), None);
    assert_eq!(parse_memory_mib("M"), None);
    assert_eq!(parse_memory_mib("-1G"), None);
    assert_eq!(parse_memory_mib("99999999999T"), None);
}

#[test]
fn tls_needs_cert_and_key_together() {
    let c = cfg(&[
        ("MANAGER_GRPC_SERVER_CERT", "/c"),
        ("MANAGER_GRPC_SERVER_KEY", "/k"),
    ])
    .unwrap();
    assert_eq!(c.grpc_tls.unwrap().client_ca, Vec::<PathBuf>::new());
    let c = cfg(&[
        ("MANAGER_GRPC_SERVER_CERT", "/c"),
        ("MANAGER_GRPC_SERVER_KEY", "/k"),
        ("MANAGER_GRPC_CLIENT_CA_CERTS", "/ca"),
    ])
    .unwrap();
    assert_eq!(c.grpc_tls.unwrap().client_ca, vec![PathBuf::from("/ca")]);
    assert_eq!(
        cfg(&[("MANAGER_GRPC_SERVER_CERT", "/c")]).unwrap_err().var,
        "MANAGER_GRPC_SERVER_KEY"
    );
    assert_eq!(
        cfg(&[("MANAGER_GRPC_SERVER_KEY", "/k")]).unwrap_err().var,
        "MANAGER_GRPC_SERVER_CERT"
    );
    assert!(cfg(&[("MANAGER_GRPC_CLIENT_CA_CERTS", "/ca")]).is_err());
}

/// `ENABLE_HOST_DATA` turns on the Go manager's fixed host data, SHA3-256("TODO") (base64
/// `tDLZRaBAhyc/SMyeaTKZo/1iuGddXiA77uGgPH3q+Mg=` on its QEMU line); `HOST_DATA` is
/// overwritten per VM upstream, so a value given for it is reported as ignored, not used.
#[test]
fn enable_host_data_selects_the_go_managers_host_data() {
    assert_eq!(cfg(&[]).unwrap().vm.snp_host_data(), None);
    for off in ["false", "0", "F"] {
        let c = cfg(&[("MANAGER_QEMU_ENABLE_HOST_DATA", off)]).unwrap();
        assert_eq!(c.vm.snp_host_data(), None, "{off}");
    }
    let mut want = "b432d945a04087273f48cc9e693299a3fd62b8675d5e203beee1a03c7deaf8c8".to_string();
    // An independent SHA3-256 when Python is at hand.
    if let Ok(out) = std::process::Command::new("python3")
        .args([
            "-c",
            "import hashlib; print(hashlib.sha3_256(b'TODO').hexdigest(), end='')",
        ])
        .output()
    {
        if out.status.success() {
            want = String::from_utf8(out.stdout).unwrap();
        }
    }
    let c = cfg(&[
        ("MANAGER_QEMU_ENABLE_HOST_DATA", "true"),
        ("MANAGER_QEMU_HOST_DATA", "AAAA"),
    ])
    .unwrap();
    let data = c.vm.snp_host_data().expect("host data when enabled");
    assert_eq!(crate::corim::unhex(&want).unwrap(), data.to_vec());
    assert_eq!(c.ignored_vars, ["MANAGER_QEMU_HOST_DATA"]);
}

#[test]
fn qemu_only_variables_are_reported_as_ignored() {
    let c = cfg(&[
        ("MANAGER_QEMU_BIN_PATH", "qemu-system-x86_64"),
        ("MANAGER_QEMU_SMP_MAXCPUS", "64"),
        ("MANAGER_QEMU_USE_SUDO", ""),
        ("MANAGER_GRPC_TIMEOUT", "60s"),
        ("MANAGER_QEMU_CPU", "EPYC"),
        ("MANAGER_QEMU_SMP_CUONT", "8"),
    ])
    .unwrap();
    assert_eq!(
        c.ignored_vars,
        [
            "MANAGER_GRPC_TIMEOUT",
            "MANAGER_QEMU_BIN_PATH",
            "MANAGER_QEMU_SMP_CUONT",
            "MANAGER_QEMU_SMP_MAXCPUS"
        ]
    );
}

#[test]
fn unsupported_features_stop_start_up() {
    assert_eq!(
        cfg(&[("MANAGER_QEMU_ENABLE_DISK", "true")])
            .unwrap_err()
            .var,
        "MANAGER_QEMU_ENABLE_DISK"
    );
    assert!(cfg(&[("MANAGER_QEMU_ENABLE_DISK", "false")]).is_ok());
    assert_eq!(
        cfg(&[("MANAGER_QEMU_GPU_BDF", "0000:01:00.0")])
            .unwrap_err()
            .var,
        "MANAGER_QEMU_GPU_BDF"
    );
}

#[test]
fn overlapping_ports_are_found() {
    let c = cfg(&[("MANAGER_GRPC_PORT", "6101"), ("MANAGER_HTTP_PORT", "6102")]).unwrap();
    assert_eq!(c.range_overlaps(), [6101, 6102]);
    assert!(cfg(&[]).unwrap().range_overlaps().is_empty());
}

/// `KEY=VALUE` lines of an environment file as systemd reads them (comments and blank lines
/// skipped, one pair of surrounding double quotes removed).
fn env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=VALUE line");
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

const ENV_EXAMPLE: &str = include_str!("../../../deploy/manager.env.example");

#[test]
fn the_shipped_env_example_parses_and_states_the_defaults() {
    let vars = env_file(ENV_EXAMPLE);
    let mut from_file = ManagerConfig::from_vars(vars.clone()).expect("example parses");
    let mut defaults = cfg(&[]).unwrap();
    // The only default that is not a fixed value.
    from_file.instance_id.clear();
    defaults.instance_id.clear();
    assert_eq!(
        from_file, defaults,
        "every value in the example is the default"
    );
    assert!(from_file.ignored_vars.is_empty());
}

#[test]
fn the_shipped_env_example_lists_every_variable_read() {
    let mut listed: Vec<String> = env_file(ENV_EXAMPLE).into_iter().map(|(k, _)| k).collect();
    listed.sort();
    let before = listed.len();
    listed.dedup();
    assert_eq!(before, listed.len(), "a variable is listed twice");
    assert_eq!(listed, ManagerConfig::variables_read());
}

#[test]
fn variables_read_covers_servers_vm_settings_and_the_signing_key() {
    let read = ManagerConfig::variables_read();
    for v in [
        "MANAGER_GRPC_PORT",
        "MANAGER_QEMU_HOST_FWD_RANGE",
        "MANAGER_QEMU_SEV_SNP_CBITPOS",
        "MANAGER_CORIM_SIGNING_KEY",
        "COCOS_JAEGER_TRACE_RATIO",
    ] {
        assert!(read.iter().any(|r| r == v), "{v} missing from {read:?}");
    }
    assert!(
        !read.iter().any(|r| r == "MANAGER_QEMU_BIN_PATH"),
        "ignored names are not read"
    );
}
