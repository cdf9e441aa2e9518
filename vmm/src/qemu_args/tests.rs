//! Tests of the QEMU argument parser: the manager's exact plain/SNP/TDX command lines, ignored
//! and unsupported options, QEMU's value syntax, references between options and bad values.

use super::opts::{decode_base64, parse_size, Opts};
use super::*;
use crate::spec::ForwardSpec;

const U2: &str = "5f0c3a1e-9d2b-4c7a-8e61-2b9f4d7c0a13";

fn parse(args: &[&str]) -> Result<QemuInvocation, QemuArgsError> {
    parse_qemu_args(args.iter().map(|s| s.to_string()))
}

fn err(args: &[&str]) -> QemuArgsError {
    match parse(args) {
        Ok(inv) => panic!("{args:?} parsed: {inv:?}"),
        Err(e) => e,
    }
}

/// `args` plus a kernel, so the line has something to boot.
fn with_kernel(args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.extend(["-kernel".to_string(), "/img/bzImage".to_string()]);
    v
}

fn parse_k(args: &[&str]) -> Result<QemuInvocation, QemuArgsError> {
    parse_qemu_args(with_kernel(args))
}

/// Items 1-5 of the manager's argument list (spec §5.2), defaults of §5.3.
fn common_head(cpu: &str) -> Vec<String> {
    [
        "-enable-kvm",
        "-machine",
        "q35",
        "-cpu",
        cpu,
        "-smp",
        "4,maxcpus=64",
        "-m",
        "2048M,slots=5,maxmem=30G",
    ]
    .map(String::from)
    .to_vec()
}

/// Items 8-9: user network with the agent port forward.
fn net_args() -> Vec<String> {
    vec![
        "-netdev".into(),
        format!("user,id=vmnic-{U2},hostfwd=tcp::6100-:7002"),
        "-device".into(),
        format!(
            "virtio-net-pci,disable-legacy=on,iommu_platform=true,netdev=vmnic-{U2},addr=0x2,romfile="
        ),
    ]
}

/// Items 14-18: direct boot, console, monitor and the two 9p shares.
fn tail_args() -> Vec<String> {
    [
        "-kernel",
        "img/bzImage",
        "-append",
        "quiet console=null",
        "-initrd",
        "img/rootfs.cpio.gz",
        "-nographic",
        "-monitor",
        "pty",
        "-fsdev",
        "local,id=cert_fs,path=/tmp/cocos/certs-0001,security_model=mapped",
        "-device",
        "virtio-9p-pci,fsdev=cert_fs,mount_tag=certs_share",
        "-fsdev",
        "local,id=env_fs,path=/tmp/cocos/env-0001,security_model=mapped",
        "-device",
        "virtio-9p-pci,fsdev=env_fs,mount_tag=env_share",
    ]
    .map(String::from)
    .to_vec()
}

/// The VmSpec parts every manager line shares.
fn manager_spec(cpu: &str) -> VmSpec {
    VmSpec {
        kernel: Some("img/bzImage".into()),
        initrd: Some("img/rootfs.cpio.gz".into()),
        cmdline: "quiet console=null".into(),
        vcpus: 4,
        memory_mib: 2048,
        cpu: cpu.into(),
        serial: SerialSpec::Stdio,
        forwards: vec![ForwardSpec {
            host_addr: None,
            host_port: 6100,
            listen_fd: None,
            guest_port: 7002,
        }],
        shares: vec![
            ShareSpec {
                tag: "certs_share".into(),
                source: ShareSource::Directory("/tmp/cocos/certs-0001".into()),
            },
            ShareSpec {
                tag: "env_share".into(),
                source: ShareSource::Directory("/tmp/cocos/env-0001".into()),
            },
        ],
        net: true,
        ..Default::default()
    }
}

/// What every manager line reports as ignored, in order of appearance (before the shares).
fn head_ignored() -> Vec<String> {
    [
        "-smp maxcpus=64",
        "-m slots=5",
        "-m maxmem=30G",
        "-device virtio-net-pci,disable-legacy=on",
        "-device virtio-net-pci,iommu_platform=true",
        "-device virtio-net-pci,addr=0x2",
        "-device virtio-net-pci,romfile=",
    ]
    .map(String::from)
    .to_vec()
}

fn tail_ignored() -> Vec<String> {
    ["-monitor pty", "-fsdev local,security_model=mapped"]
        .map(String::from)
        .to_vec()
}

#[test]
fn plain_manager_line_maps_to_spec() {
    let mut args = common_head("EPYC");
    args.extend([
        "-drive".into(),
        "if=pflash,format=raw,unit=0,file=/usr/share/OVMF/OVMF_CODE.fd,readonly=on".into(),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file=/tmp/OVMF_VARS-{U2}.fd"),
    ]);
    args.extend(net_args());
    args.extend(tail_args());
    let inv = parse_qemu_args(args).unwrap();
    let expected = VmSpec {
        firmware: Some("/usr/share/OVMF/OVMF_CODE.fd".into()),
        firmware_vars: Some(format!("/tmp/OVMF_VARS-{U2}.fd").into()),
        ..manager_spec("EPYC")
    };
    assert_eq!(inv.spec, expected);
    assert_eq!(
        inv.firmware_vars,
        Some(FirmwareVars {
            path: format!("/tmp/OVMF_VARS-{U2}.fd").into(),
            readonly: false
        })
    );
    assert_eq!(inv.tee, None);
    assert!(!inv.no_reboot);
    assert_eq!(inv.name, None);
    let mut ignored = head_ignored();
    ignored.extend(tail_ignored());
    assert_eq!(inv.ignored, ignored);
}

#[test]
fn snp_manager_line_maps_to_spec() {
    let host_data = "tDLZRaBAhyc/SMyeaTKZo/1iuGddXiA77uGgPH3q+Mg=";
    let mut args = common_head("EPYC");
    args.extend(net_args());
    args.extend([
        "-machine".into(),
        format!("confidential-guest-support=sev0-{U2},memory-backend=ram1,igvm-cfg=igvm0"),
        "-object".into(),
        "memory-backend-memfd,id=ram1,size=2048M,share=true,prealloc=false".into(),
        "-object".into(),
        format!("sev-snp-guest,id=sev0-{U2},cbitpos=51,reduced-phys-bits=1,host-data={host_data}"),
        "-object".into(),
        "igvm-cfg,id=igvm0,file=/root/coconut-qemu.igvm".into(),
    ]);
    args.extend(tail_args());
    let inv = parse_qemu_args(args).unwrap();
    let expected_data: Vec<u8> = (0..32)
        .map(|i| {
            let hex = "b432d945a04087273f48cc9e693299a3fd62b8675d5e203beee1a03c7deaf8c8";
            u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()
        })
        .collect();
    let expected = VmSpec {
        igvm: Some("/root/coconut-qemu.igvm".into()),
        tee: TeeMode::Snp,
        snp: crate::spec::SnpSettings {
            cbitpos: Some(51),
            reduced_phys_bits: Some(1),
            host_data: Some(expected_data.clone().try_into().unwrap()),
            policy: None,
            kernel_hashes: false,
        },
        ..manager_spec("EPYC")
    };
    assert_eq!(inv.spec, expected);
    assert_eq!(
        inv.tee,
        Some(TeeOptions::Snp(SnpOptions {
            id: format!("sev0-{U2}"),
            cbitpos: 51,
            reduced_phys_bits: 1,
            host_data: Some(expected_data.try_into().unwrap()),
            kernel_hashes: false,
            policy: None,
        }))
    );
    assert_eq!(inv.firmware_vars, None);
    let mut ignored = head_ignored();
    ignored.extend([
        "-object memory-backend-memfd,share=true".to_string(),
        "-object memory-backend-memfd,prealloc=false".to_string(),
    ]);
    ignored.extend(tail_ignored());
    assert_eq!(inv.ignored, ignored);
}

#[test]
fn tdx_manager_line_maps_to_spec() {
    let mut args = common_head("host");
    args.extend(net_args());
    args.extend([
        "-object".into(),
        format!(
            r#"{{"qom-type":"tdx-guest","id":"tdx0-{U2}","quote-generation-socket":{{"type":"vsock","cid":"2","port":"4050"}}}}"#
        ),
        "-machine".into(),
        format!("confidential-guest-support=tdx0-{U2},memory-backend=ram1,hpet=off"),
        "-object".into(),
        "memory-backend-memfd,id=ram1,size=2048M,share=true,prealloc=false".into(),
        "-bios".into(),
        "/usr/share/ovmf/OVMF.fd".into(),
        "-nodefaults".into(),
    ]);
    args.extend(tail_args());
    let inv = parse_qemu_args(args).unwrap();
    let expected = VmSpec {
        firmware: Some("/usr/share/ovmf/OVMF.fd".into()),
        tee: TeeMode::Tdx,
        // -nodefaults removes QEMU's serial port; -nographic has nothing to show.
        serial: SerialSpec::None,
        tdx: crate::spec::TdxSettings {
            quote_generation: Some("vsock:2:4050".into()),
            ..Default::default()
        },
        ..manager_spec("host")
    };
    assert_eq!(inv.spec, expected);
    assert_eq!(
        inv.tee,
        Some(TeeOptions::Tdx(TdxOptions {
            id: format!("tdx0-{U2}"),
            quote_generation_socket: Some(QuoteSocket::Vsock { cid: 2, port: 4050 }),
            mrconfigid: None,
            mrowner: None,
            mrownerconfig: None,
        }))
    );
    assert!(
        !inv.ignored.iter().any(|i| i.contains("hpet")),
        "{:?}",
        inv.ignored
    );
}

#[test]
fn kernel_irqchip_selects_the_interrupt_controllers() {
    for (machine, chip) in [
        ("q35,kernel-irqchip=split", crate::spec::IrqChip::Split),
        ("q35,kernel_irqchip=split", crate::spec::IrqChip::Split),
        ("q35,kernel-irqchip=on", crate::spec::IrqChip::Kernel),
        ("q35", crate::spec::IrqChip::Kernel),
    ] {
        let inv = parse_k(&["-machine", machine]).unwrap();
        assert_eq!(inv.spec.irqchip, chip, "{machine}");
        assert!(inv.ignored.is_empty(), "{machine}: {:?}", inv.ignored);
    }
    let e = parse_k(&["-machine", "q35,kernel-irqchip=maybe"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("kernel-irqchip") && e.contains("maybe"), "{e}");
}

#[test]
fn tdx_object_key_form_and_unix_socket() {
    let inv = parse_k(&[
        "-object",
        "tdx-guest,id=t,quote-generation-socket.type=unix,quote-generation-socket.path=/run/qgs.sock",
        "-machine",
        "q35,confidential-guest-support=t",
    ])
    .unwrap();
    assert_eq!(inv.spec.tee, TeeMode::Tdx);
    assert_eq!(
        inv.tee,
        Some(TeeOptions::Tdx(TdxOptions {
            id: "t".into(),
            quote_generation_socket: Some(QuoteSocket::Unix("/run/qgs.sock".into())),
            mrconfigid: None,
            mrowner: None,
            mrownerconfig: None,
        }))
    );
}

/// The TD report values of a `tdx-guest` in JSON form (base64 of 48 bytes, as QEMU takes
/// them) reach the spec's TDX settings; an absent one stays unset.
#[test]
fn tdx_object_report_values_reach_the_spec() {
    // base64 of 48 bytes of 0x11, of 0xa2 and of 0xff.
    let config = "ERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERERER";
    let owner = "oqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKi";
    let owner_config = "////////////////////////////////////////////////////////////////";
    let object = format!(
        r#"{{"qom-type":"tdx-guest","id":"t","mrconfigid":"{config}","mrowner":"{owner}","mrownerconfig":"{owner_config}","quote-generation-socket":{{"type":"vsock","cid":"2","port":"4050"}}}}"#
    );
    let inv = parse_k(&[
        "-object",
        &object,
        "-machine",
        "q35,confidential-guest-support=t",
    ])
    .unwrap();
    let value = |fill: u8| Some(crate::spec::TdReportValue([fill; 48]));
    assert_eq!(
        inv.spec.tdx,
        crate::spec::TdxSettings {
            quote_generation: Some("vsock:2:4050".into()),
            mrconfigid: value(0x11),
            mrowner: value(0xa2),
            mrownerconfig: value(0xff),
        }
    );
    let only_owner = format!(r#"{{"qom-type":"tdx-guest","id":"t","mrowner":"{owner}"}}"#);
    let inv = parse_k(&[
        "-object",
        &only_owner,
        "-machine",
        "q35,confidential-guest-support=t",
    ])
    .unwrap();
    assert_eq!(
        (
            inv.spec.tdx.mrconfigid,
            inv.spec.tdx.mrowner,
            inv.spec.tdx.mrownerconfig
        ),
        (None, value(0xa2), None)
    );
}

#[test]
fn each_ignored_option_is_reported_once() {
    let cases: &[(&[&str], &str)] = &[
        (&["-smp", "2,maxcpus=8"], "-smp maxcpus=8"),
        (&["-smp", "sockets=1,cores=2"], "-smp cores=2"),
        (&["-m", "1G,slots=5"], "-m slots=5"),
        (&["-m", "1G,maxmem=30G"], "-m maxmem=30G"),
        (&["-monitor", "pty"], "-monitor pty"),
        (&["-monitor", "none"], "-monitor none"),
        (&["-machine", "q35,hpet=on"], "-machine q35,hpet=on"),
        (&["-name", "vm1,debug-threads=on"], "-name debug-threads=on"),
        (
            &[
                "-fsdev",
                "local,id=f,path=/s,security_model=none,readonly=off",
            ],
            "-fsdev local,readonly=off",
        ),
        (
            &["-fsdev", "local,id=f,path=/s,security_model=none"],
            "-fsdev local,id=f (no device uses it)",
        ),
        (
            &["-netdev", "user,id=n0,hostfwd=tcp::1-:2"],
            "-netdev user,id=n0 (no device uses it)",
        ),
        (
            &["-object", "igvm-cfg,id=i,file=/x.igvm"],
            "-object igvm-cfg,id=i (nothing uses it)",
        ),
        (
            &["-drive", "if=pflash,unit=0,file=/code.fd"],
            "-drive if=pflash,unit=0,readonly=off (firmware code is read-only)",
        ),
    ];
    let net = ["-netdev", "user,id=n", "-device"];
    for (args, item) in cases {
        let inv = parse_k(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert_eq!(
            inv.ignored.iter().filter(|i| i == item).count(),
            1,
            "{args:?}: {:?}",
            inv.ignored
        );
    }
    for (key, value) in [
        ("disable-legacy", "on"),
        ("iommu_platform", "true"),
        ("addr", "0x2"),
        ("romfile", ""),
        ("bus", "pcie.0"),
    ] {
        let dev = format!("virtio-net-pci,netdev=n,{key}={value}");
        let mut args: Vec<&str> = net.to_vec();
        args.push(&dev);
        let inv = parse_k(&args).unwrap();
        assert_eq!(
            inv.ignored,
            vec![format!("-device virtio-net-pci,{key}={value}")]
        );
    }
    // Two 9p devices with the same ignored property: logged once.
    let inv = parse_k(&[
        "-fsdev",
        "local,id=a,path=/a,security_model=mapped",
        "-fsdev",
        "local,id=b,path=/b,security_model=mapped",
        "-device",
        "virtio-9p-pci,fsdev=a,mount_tag=ta,addr=0x5",
        "-device",
        "virtio-9p-pci,fsdev=b,mount_tag=tb,addr=0x5",
    ])
    .unwrap();
    assert_eq!(
        inv.ignored,
        vec![
            "-fsdev local,security_model=mapped".to_string(),
            "-device virtio-9p-pci,addr=0x5".to_string()
        ]
    );
}

#[test]
fn supported_lines_report_nothing_extra() {
    let inv = parse_k(&[
        "-enable-kvm",
        "-nographic",
        "-machine",
        "q35",
        "-smp",
        "2",
        "-m",
        "1G",
    ])
    .unwrap();
    assert!(inv.ignored.is_empty(), "{:?}", inv.ignored);
    assert_eq!((inv.spec.vcpus, inv.spec.memory_mib), (2, 1024));
    assert!(!inv.spec.net);
}

#[test]
fn unsupported_options_fail_with_the_exact_message() {
    let cases: &[(&[&str], &str)] = &[
        (&["-vnc", ":0"], "-vnc"),
        (&["--vnc", ":0"], "--vnc"),
        (&["-device", "e1000"], "-device e1000"),
        (
            &["-device", "driver=vhost-vsock-pci,guest-cid=3"],
            "-device vhost-vsock-pci",
        ),
        (&["-netdev", "tap,id=t"], "-netdev tap"),
        (&["-machine", "pc"], "-machine pc"),
        (&["-machine", "q35,accel=tcg"], "-machine q35,accel=tcg"),
        (
            &["-machine", "q35,kernel-irqchip=off"],
            "-machine q35,kernel-irqchip=off",
        ),
        (&["-accel", "tcg"], "-accel tcg"),
        (
            &["-drive", "file=/d.qcow2,if=none,id=disk0,format=qcow2"],
            "-drive if=none",
        ),
        (&["-drive", "file=/d.img"], "-drive if=ide"),
        (
            &["-drive", "if=pflash,format=qcow2,file=/c"],
            "-drive format=qcow2",
        ),
        (
            &["-drive", "if=pflash,file=/c,cache=none"],
            "-drive cache=none",
        ),
        (
            &["-object", "memory-backend-file,id=m,size=1G,mem-path=/x"],
            "-object memory-backend-file",
        ),
        (
            &["-object", "memory-backend-memfd,id=m,size=1G,hugetlb=on"],
            "-object memory-backend-memfd,hugetlb=on",
        ),
        (&["-object", "sev-guest,id=s"], "-object sev-guest"),
        (
            &[
                "-object",
                r#"{"qom-type":"tdx-guest","id":"t","sept-ve-disable":true}"#,
            ],
            "-object tdx-guest,sept-ve-disable=true",
        ),
        (&["-netdev", "user,id=n,smb=/srv"], "-netdev user,smb=/srv"),
        (&["-fsdev", "proxy,id=p"], "-fsdev proxy"),
        (
            &[
                "-fsdev",
                "local,id=f,path=/p,security_model=none,fmode=0644",
            ],
            "-fsdev local,fmode=0644",
        ),
        (
            &["-device", "virtio-net-pci,netdev=n,mac=52:54:00:12:34:56"],
            "-device virtio-net-pci,mac=52:54:00:12:34:56",
        ),
        (&["-serial", "pty"], "-serial pty"),
        (
            &["-serial", "stdio", "-serial", "none"],
            "-serial none (a second serial port)",
        ),
        (&["-display", "none"], "-display"),
        (
            &["-fw_cfg", "name=opt/ovmf/X-PciMmio64Mb,string=262144"],
            "-fw_cfg",
        ),
        (&["-daemonize"], "-daemonize"),
        (&["-m=2G"], "-m=2G"),
        (&["disk.img"], "disk.img"),
        (&["-"], "-"),
        (&["-smp", "2,books=1"], "-smp books=1"),
        (
            &[
                "-netdev",
                "user,id=a",
                "-netdev",
                "user,id=b",
                "-device",
                "virtio-net-pci,netdev=a",
                "-device",
                "virtio-net-pci,netdev=b",
            ],
            "-device virtio-net-pci,netdev=b (cvmm gives the guest one NIC)",
        ),
    ];
    for (args, opt) in cases {
        let e = match parse_k(args) {
            Ok(inv) => panic!("{args:?} parsed: {inv:?}"),
            Err(e) => e,
        };
        assert!(e.is_unsupported(), "{args:?}: {e:?}");
        assert_eq!(e.exit_status(), 1);
        assert_eq!(
            e.report_line(),
            format!("cvmm: unsupported QEMU option '{opt}'")
        );
    }
}

#[test]
fn unsupported_option_fails_before_later_errors() {
    // The bad -smp and the dangling fsdev come later; the unsupported option wins.
    let e = err(&["-vnc", ":0", "-smp", "four"]);
    assert_eq!(e, QemuArgsError::Unsupported("-vnc".into()));
    let e = err(&[
        "-device",
        "e1000",
        "-device",
        "virtio-9p-pci,fsdev=x,mount_tag=t",
    ]);
    assert_eq!(e, QemuArgsError::Unsupported("-device e1000".into()));
}

#[test]
fn commas_escape_and_implied_keys() {
    let mut o = Opts::parse(
        "-fsdev",
        "local,id=a,path=/tmp/a,,b,,,security_model=none",
        Some("fsdriver"),
    );
    assert_eq!(o.take("fsdriver").as_deref(), Some("local"));
    assert_eq!(o.take("path").as_deref(), Some("/tmp/a,b,"));
    assert_eq!(o.take("security_model").as_deref(), Some("none"));
    // A bare key after the first element means key=on; without an implied key, even the first.
    let mut o = Opts::parse("-x", "q35,flag,k=", Some("type"));
    assert_eq!(o.take("type").as_deref(), Some("q35"));
    assert_eq!(o.take("flag").as_deref(), Some("on"));
    assert_eq!(o.take("k").as_deref(), Some(""));
    let mut o = Opts::parse("-drive", "readonly", None);
    assert_eq!(o.take("readonly").as_deref(), Some("on"));
    // The last repeated key wins.
    let mut o = Opts::parse("-x", "a=1,a=2", None);
    assert_eq!(o.take("a").as_deref(), Some("2"));

    // Through the parser: escaped comma in a share path, implied and explicit keys agree.
    let inv = parse_k(&[
        "-fsdev",
        "local,id=f,path=/srv/a,,b,security_model=none",
        "-device",
        "virtio-9p-pci,fsdev=f,mount_tag=t",
    ])
    .unwrap();
    assert_eq!(
        inv.spec.shares[0].source,
        ShareSource::Directory("/srv/a,b".into())
    );
    let pairs: &[(&[&str], &[&str])] = &[
        (&["-machine", "q35"], &["-machine", "type=q35"]),
        (&["-smp", "3"], &["-smp", "cpus=3"]),
        (&["-m", "1G"], &["-m", "size=1G"]),
        (&["-name", "vm7"], &["-name", "guest=vm7"]),
        (
            &["-netdev", "user,id=n", "-device", "virtio-net-pci,netdev=n"],
            &[
                "-netdev",
                "type=user,id=n",
                "-device",
                "driver=virtio-net-pci,netdev=n",
            ],
        ),
        (
            &["-object", "igvm-cfg,id=i,file=/f", "-machine", "igvm-cfg=i"],
            &[
                "-object",
                "qom-type=igvm-cfg,id=i,file=/f",
                "-machine",
                "igvm-cfg=i",
            ],
        ),
        (
            &["-netdev", "user,id=n", "-device", "virtio-net-pci,netdev=n"],
            &[
                "-netdev",
                r#"{"type":"user","id":"n"}"#,
                "-device",
                r#"{"driver":"virtio-net-pci","netdev":"n"}"#,
            ],
        ),
        (&["-smp", "4"], &["--smp", "4"]),
        (&["-machine", "q35"], &["-M", "q35"]),
    ];
    for (a, b) in pairs {
        assert_eq!(parse_k(a).unwrap(), parse_k(b).unwrap(), "{a:?} vs {b:?}");
    }
    let inv = parse_k(&["-name", "vm7", "-smp", "3", "-m", "1G"]).unwrap();
    assert_eq!((inv.spec.vcpus, inv.spec.memory_mib), (3, 1024));
    assert_eq!(inv.name.as_deref(), Some("vm7"));
    assert_eq!(inv.spec.name, "vm7");
}

#[test]
fn dangling_references_name_the_id() {
    let e = err(&[
        "-kernel",
        "/k",
        "-device",
        "virtio-9p-pci,fsdev=X,mount_tag=t",
    ]);
    assert_eq!(
        e.to_string(),
        "-device virtio-9p-pci fsdev='X': no -fsdev has id 'X'"
    );
    let e = err(&["-kernel", "/k", "-device", "virtio-net-pci,netdev=nic9"]);
    assert!(
        matches!(&e, QemuArgsError::Unresolved { id, .. } if id == "nic9"),
        "{e}"
    );
    for (key, id) in [
        ("confidential-guest-support", "sev0"),
        ("memory-backend", "ram1"),
        ("igvm-cfg", "igvm0"),
    ] {
        let machine = format!("q35,{key}={id}");
        let e = err(&["-kernel", "/k", "-machine", &machine]);
        assert_eq!(
            e,
            QemuArgsError::Unresolved {
                option: "-machine".into(),
                key: key.into(),
                id: id.into(),
                expected: "-object",
            }
        );
        assert!(e.to_string().contains(&format!("'{id}'")), "{e}");
    }
    // Objects of the wrong type.
    let e = err(&[
        "-kernel",
        "/k",
        "-object",
        "memory-backend-memfd,id=ram1,size=1G",
        "-machine",
        "confidential-guest-support=ram1",
    ]);
    assert!(
        matches!(&e, QemuArgsError::WrongKind { id, found, .. } if id == "ram1" && found == "memory-backend-memfd"),
        "{e}"
    );
    let e = err(&[
        "-kernel",
        "/k",
        "-object",
        "sev-snp-guest,id=s,cbitpos=51,reduced-phys-bits=1",
        "-machine",
        "memory-backend=s",
    ]);
    assert!(matches!(e, QemuArgsError::WrongKind { .. }), "{e}");
    assert_eq!(e.exit_status(), 2);
    assert!(e.report_line().starts_with("cvmm: error: "));
}

#[test]
fn duplicates_and_conflicts_are_refused() {
    let cases: &[&[&str]] = &[
        &[
            "-kernel",
            "/k",
            "-object",
            "igvm-cfg,id=i,file=/a",
            "-object",
            "igvm-cfg,id=i,file=/b",
        ],
        &[
            "-kernel",
            "/k",
            "-netdev",
            "user,id=n",
            "-netdev",
            "user,id=n",
        ],
        &[
            "-kernel",
            "/k",
            "-fsdev",
            "local,id=f,path=/a,security_model=none",
            "-fsdev",
            "local,id=f,path=/b,security_model=none",
        ],
    ];
    for args in cases {
        assert!(
            matches!(err(args), QemuArgsError::DuplicateId { .. }),
            "{args:?}"
        );
    }
    let conflicts: &[(&[&str], &str)] = &[
        (
            &["-bios", "/a.fd", "-drive", "if=pflash,unit=0,file=/b.fd"],
            "-bios and a pflash",
        ),
        (
            &["-drive", "if=pflash,unit=1,file=/vars.fd"],
            "needs pflash unit 0",
        ),
        (
            &[
                "-kernel",
                "/k",
                "-drive",
                "if=pflash,unit=0,file=/a",
                "-drive",
                "if=pflash,unit=0,file=/b",
            ],
            "unit 0 given twice",
        ),
        (&["-initrd", "/i", "-bios", "/b"], "-initrd needs -kernel"),
        (
            &["-append", "quiet", "-bios", "/b"],
            "-append needs -kernel",
        ),
        (&["-smp", "2"], "nothing to boot"),
        (
            &[
                "-kernel",
                "/k",
                "-m",
                "1G",
                "-object",
                "memory-backend-memfd,id=r,size=2G",
                "-machine",
                "memory-backend=r",
            ],
            "must match",
        ),
        (
            &[
                "-kernel",
                "/k",
                "-fsdev",
                "local,id=f,path=/a,security_model=none",
                "-device",
                "virtio-9p-pci,fsdev=f,mount_tag=a",
                "-device",
                "virtio-9p-pci,fsdev=f,mount_tag=b",
            ],
            "used by two",
        ),
        (
            &[
                "-kernel",
                "/k",
                "-fsdev",
                "local,id=f,path=/a,security_model=none",
                "-fsdev",
                "local,id=g,path=/b,security_model=none",
                "-device",
                "virtio-9p-pci,fsdev=f,mount_tag=t",
                "-device",
                "virtio-9p-pci,fsdev=g,mount_tag=t",
            ],
            "mount_tag 't' is used twice",
        ),
    ];
    for (args, text) in conflicts {
        let e = err(args);
        assert!(matches!(e, QemuArgsError::Conflict(_)), "{args:?}: {e:?}");
        assert!(e.to_string().contains(text), "{args:?}: {e}");
    }
}

#[test]
fn bad_values_name_option_and_value() {
    let cases: &[(&[&str], &str, &str)] = &[
        (&["-smp", "four"], "-smp cpus", "four"),
        (&["-smp", "0"], "-smp cpus", "0"),
        (&["-smp", "-2"], "-smp cpus", "-2"),
        (&["-smp", "4,maxcpus=2"], "-smp maxcpus", "2"),
        (&["-smp", "2,cores=x"], "-smp cores", "x"),
        (&["-m", "12Q"], "-m size", "12Q"),
        (&["-m", "lots"], "-m size", "lots"),
        (&["-m", "100K"], "-m size", "100K"),
        (&["-m", "0"], "-m size", "0"),
        (&["-m", "1.5.1G"], "-m size", "1.5.1G"),
        (&["-m", "99999999999999999999G"], "-m size", "99999999999999999999G"),
        (&["-m", "2G,maxmem=1G"], "-m maxmem", "1G"),
        (&["-m", "2G,slots=x"], "-m slots", "x"),
        (&["-netdev", "user,id=n,hostfwd=udp::5353-:53"], "-netdev user hostfwd", "udp::5353-:53"),
        (&["-netdev", "user,id=n,hostfwd=tcp::70000-:22"], "-netdev user hostfwd", "tcp::70000-:22"),
        (&["-netdev", "user,id=n,hostfwd=tcp::22-10.0.2.99:22"], "-netdev user hostfwd", "tcp::22-10.0.2.99:22"),
        (&["-object", "sev-snp-guest,id=s,cbitpos=abc,reduced-phys-bits=1"], "-object sev-snp-guest cbitpos", "abc"),
        (&["-object", "sev-snp-guest,id=s,cbitpos=51,reduced-phys-bits=0"], "-object sev-snp-guest reduced-phys-bits", "0"),
        (&["-object", "sev-snp-guest,id=s,cbitpos=51,reduced-phys-bits=1,host-data=***"], "-object sev-snp-guest host-data", "***"),
        (&["-object", "sev-snp-guest,id=s,cbitpos=51,reduced-phys-bits=1,host-data=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg=="], "-object sev-snp-guest host-data", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg=="),
        (&["-object", "sev-snp-guest,id=s,cbitpos=51,reduced-phys-bits=1,kernel-hashes=maybe"], "-object sev-snp-guest kernel-hashes", "maybe"),
        (&["-object", "memory-backend-memfd,id=r,size=1X"], "-object memory-backend-memfd size", "1X"),
        (&["-object", "memory-backend-memfd,id=r,size=1G,share=sure"], "-object memory-backend-memfd share", "sure"),
        (&["-object", r#"{"qom-type":"tdx-guest","id":"t","quote-generation-socket":{"type":"vsock","cid":"two","port":"4050"}}"#], "-object tdx-guest quote-generation-socket.cid", "two"),
        (&["-object", r#"{"qom-type":"tdx-guest","id":"t","quote-generation-socket":{"type":"inet"}}"#], "-object tdx-guest quote-generation-socket.type", "inet"),
        (&["-object", r#"{"qom-type":"tdx-guest","id":"t","mrconfigid":"***"}"#], "-object tdx-guest mrconfigid", "***"),
        (&["-object", r#"{"qom-type":"tdx-guest","id":"t","mrowner":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg=="}"#], "-object tdx-guest mrowner", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg=="),
        (&["-object", "tdx-guest,id=t,mrownerconfig=AAAA"], "-object tdx-guest mrownerconfig", "AAAA"),
        (&["-object", "{not json"], "-object", "{not json"),
        (&["-drive", "if=pflash,unit=2,file=/f"], "-drive unit", "2"),
        (&["-drive", "if=pflash,unit=0,file=/f,readonly=perhaps"], "-drive readonly", "perhaps"),
        (&["-fsdev", "local,id=f,path=/p,security_model=open"], "-fsdev local security_model", "open"),
        (&["-device", "virtio-9p-pci,fsdev=f,mount_tag=a/b"], "-device virtio-9p-pci mount_tag", "a/b"),
        (&["-machine", "q35,hpet=maybe"], "-machine q35 hpet", "maybe"),
        (&["-cpu", ""], "-cpu", ""),
        (&["-bios", ""], "-bios", ""),
    ];
    for (args, option, value) in cases {
        let e = match parse_k(args) {
            Ok(inv) => panic!("{args:?} parsed: {inv:?}"),
            Err(e) => e,
        };
        match &e {
            QemuArgsError::BadValue {
                option: o,
                value: v,
                ..
            } => {
                assert_eq!((o.as_str(), v.as_str()), (*option, *value), "{args:?}: {e}");
            }
            other => panic!("{args:?}: expected BadValue, got {other:?}"),
        }
        assert!(e.to_string().contains(&format!("'{value}'")), "{e}");
        assert_eq!(e.exit_status(), 2);
    }
}

#[test]
fn missing_values_and_keys() {
    assert_eq!(
        err(&["-kernel", "/k", "-smp"]),
        QemuArgsError::MissingValue("-smp".into())
    );
    let cases: &[(&[&str], &str, &str)] = &[
        (&["-netdev", "user"], "-netdev user", "id"),
        (
            &["-device", "virtio-net-pci"],
            "-device virtio-net-pci",
            "netdev",
        ),
        (
            &["-device", "virtio-9p-pci,fsdev=f"],
            "-device virtio-9p-pci",
            "mount_tag",
        ),
        (
            &["-fsdev", "local,id=f,path=/p"],
            "-fsdev local",
            "security_model",
        ),
        (
            &["-object", "sev-snp-guest,id=s,cbitpos=51"],
            "-object sev-snp-guest",
            "reduced-phys-bits",
        ),
        (
            &["-object", "memory-backend-memfd,id=r"],
            "-object memory-backend-memfd",
            "size",
        ),
        (&["-object", "igvm-cfg,file=/x"], "-object igvm-cfg", "id"),
        (&["-drive", "if=pflash,unit=0"], "-drive", "file"),
    ];
    for (args, option, key) in cases {
        assert_eq!(
            parse_k(args).unwrap_err(),
            QemuArgsError::Missing {
                option: option.to_string(),
                key: key.to_string()
            },
            "{args:?}"
        );
    }
}

#[test]
fn smp_memory_and_serial_semantics() {
    // Without cpus=, the topology product (then maxcpus) gives the count, as in QEMU.
    assert_eq!(
        parse_k(&["-smp", "sockets=2,cores=3"]).unwrap().spec.vcpus,
        6
    );
    assert_eq!(parse_k(&["-smp", "maxcpus=5"]).unwrap().spec.vcpus, 5);
    // QEMU's defaults when -smp/-m are absent.
    let inv = parse_k(&[]).unwrap();
    assert_eq!(
        (inv.spec.vcpus, inv.spec.memory_mib),
        (1, DEFAULT_MEMORY_MIB)
    );
    // The memory backend gives the size when -m is absent.
    let inv = parse_k(&[
        "-object",
        "memory-backend-ram,id=r,size=3G",
        "-machine",
        "memory-backend=r",
    ])
    .unwrap();
    assert_eq!(inv.spec.memory_mib, 3072);
    // A backend size must be whole MiB for cvmm.
    let e = err(&[
        "-kernel",
        "/k",
        "-object",
        "memory-backend-ram,id=r,size=1000000",
        "-machine",
        "memory-backend=r",
    ]);
    assert!(e.to_string().contains("1000000 bytes"), "{e}");
    for (args, serial) in [
        (&[][..], SerialSpec::Stdio),
        (&["-nodefaults"][..], SerialSpec::None),
        (&["-nodefaults", "-serial", "stdio"][..], SerialSpec::Stdio),
        (&["-serial", "mon:stdio"][..], SerialSpec::Stdio),
        (&["-serial", "null"][..], SerialSpec::None),
        (
            &["-serial", "file:/tmp/con.log"][..],
            SerialSpec::File("/tmp/con.log".into()),
        ),
    ] {
        assert_eq!(parse_k(args).unwrap().spec.serial, serial, "{args:?}");
    }
    let inv = parse_k(&[
        "-no-reboot",
        "-name",
        "guest=cvm-1",
        "-cpu",
        "EPYC-v4,+avx2",
    ])
    .unwrap();
    assert!(inv.no_reboot);
    assert_eq!(inv.reset_note(), None, "-no-reboot asks for what cvmm does");
    assert_eq!(parse_k(&[]).unwrap().reset_note(), Some(RESET_ENDS_THE_VM));
    assert_eq!(inv.name.as_deref(), Some("cvm-1"));
    assert_eq!(inv.spec.cpu, "EPYC-v4,+avx2");
    // No -cpu: cvmm's own default model.
    assert_eq!(parse_k(&[]).unwrap().spec.cpu, VmSpec::default().cpu);
}

#[test]
fn tee_objects_without_machine_reference_leave_a_plain_vm() {
    let inv = parse_k(&[
        "-object",
        "sev-snp-guest,id=s,cbitpos=51,reduced-phys-bits=1",
    ])
    .unwrap();
    assert_eq!(inv.spec.tee, TeeMode::None);
    assert_eq!(inv.tee, None);
    assert_eq!(
        inv.ignored,
        vec!["-object sev-snp-guest,id=s (nothing uses it)".to_string()]
    );
    // Historical SNP line (no IGVM): -bios firmware, kernel-hashes, policy.
    let inv = parse_qemu_args(with_kernel(&[
        "-machine",
        "q35,confidential-guest-support=sev0,memory-backend=ram1",
        "-object",
        "memory-backend-memfd,id=ram1,size=2048M,share=true,prealloc=false",
        "-object",
        "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on,policy=0x30000",
        "-bios",
        "/usr/share/OVMF/OVMF.amdsev.fd",
    ]))
    .unwrap();
    assert_eq!(inv.spec.tee, TeeMode::Snp);
    assert_eq!(
        inv.spec.firmware,
        Some("/usr/share/OVMF/OVMF.amdsev.fd".into())
    );
    let Some(TeeOptions::Snp(snp)) = &inv.tee else {
        panic!("{:?}", inv.tee)
    };
    assert!(snp.kernel_hashes);
    assert_eq!(snp.policy, Some(0x30000));
    assert_eq!(snp.host_data, None);
}

#[test]
fn hostfwd_rules_become_forwards() {
    let inv = parse_k(&[
        "-netdev",
        "user,id=n,hostfwd=tcp:127.0.0.1:6101-:7002,hostfwd=::2222-10.0.2.15:22",
        "-device",
        "virtio-net-pci,netdev=n",
    ])
    .unwrap();
    let got: Vec<_> = inv
        .spec
        .forwards
        .iter()
        .map(|f| (f.host_addr, f.host_port, f.guest_port))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("127.0.0.1".parse().unwrap()), 6101, 7002),
            (None, 2222, 22)
        ]
    );
    assert!(inv.spec.net);
}

#[test]
fn sizes_follow_qemu_syntax() {
    const M: u64 = 1 << 20;
    assert_eq!(parse_size("2048M", M), Ok(2048 * M));
    assert_eq!(parse_size("2048", M), Ok(2048 * M));
    assert_eq!(parse_size("2048", 1), Ok(2048));
    assert_eq!(parse_size("2G", 1), Ok(2048 * M));
    assert_eq!(parse_size("2gb", 1), Ok(2048 * M));
    assert_eq!(parse_size("1.5G", 1), Ok(1536 * M));
    assert_eq!(parse_size("524288k", 1), Ok(512 * M));
    assert_eq!(parse_size("1T", 1), Ok(1 << 40));
    assert_eq!(parse_size("512B", M), Ok(512));
    for bad in [
        "",
        "G",
        ".5G",
        "5.G",
        "1.2.3",
        "1.0000001K",
        "12Q",
        "-1",
        "1e3",
        "99999999999T",
    ] {
        assert!(parse_size(bad, M).is_err(), "{bad}");
    }
}

#[test]
fn base64_decoding() {
    for (text, bytes) in [
        ("", &b""[..]),
        ("Zg==", b"f"),
        ("Zm8=", b"fo"),
        ("Zm9v", b"foo"),
        ("Zm9vYmFy", b"foobar"),
        ("+/+/", &[0xfb, 0xff, 0xbf][..]),
    ] {
        assert_eq!(decode_base64(text).as_deref(), Some(bytes), "{text}");
    }
    for bad in ["Zg", "Zg=a", "Z===", "Zg==Zm9v", "Zm9*"] {
        assert_eq!(decode_base64(bad), None, "{bad}");
    }
}

#[test]
fn truncated_and_mangled_manager_arguments_never_panic() {
    let mut line = common_head("EPYC");
    line.extend(net_args());
    line.extend([
        "-object".into(),
        r#"{"qom-type":"tdx-guest","id":"t","quote-generation-socket":{"type":"vsock","cid":"2","port":"4050"}}"#.into(),
        "-object".into(),
        "sev-snp-guest,id=s,cbitpos=51,reduced-phys-bits=1,host-data=tDLZRaBAhyc/SMyeaTKZo/1iuGddXiA77uGgPH3q+Mg=".into(),
    ]);
    line.extend(tail_args());
    let mut tried = 0;
    for i in 0..line.len() {
        let arg = &line[i];
        let cuts = arg.char_indices().map(|(n, _)| n);
        for cut in cuts {
            for mangled in [
                arg[..cut].to_string(),
                format!("{}{}", &arg[..cut], ",,=,{"),
            ] {
                let mut args = line.clone();
                args[i] = mangled;
                // Either outcome is fine; a panic fails the test.
                let _ = parse_qemu_args(args);
                tried += 1;
            }
        }
        // Dropping the argument (shifts values into option positions).
        let mut args = line.clone();
        args.remove(i);
        let _ = parse_qemu_args(args);
    }
    assert!(tried > 1000, "{tried}");
}

#[test]
fn read_only_variable_store_runs_the_code_alone() {
    let mut args = common_head("EPYC");
    args.extend([
        "-drive".into(),
        "if=pflash,format=raw,unit=0,file=/fw/CODE.fd,readonly=on".into(),
        "-drive".into(),
        "if=pflash,format=raw,unit=1,file=/fw/VARS.fd,readonly=on".into(),
    ]);
    args.extend(tail_args());
    let inv = parse_qemu_args(args).unwrap();
    assert_eq!(inv.spec.firmware, Some("/fw/CODE.fd".into()));
    assert_eq!(inv.spec.firmware_vars, None);
    assert!(
        inv.ignored
            .iter()
            .any(|i| i.starts_with("-drive if=pflash,unit=1,readonly=on")),
        "{:?}",
        inv.ignored
    );
}
