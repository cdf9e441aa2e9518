//! Tests of the SNP digest against the spec's vectors (§9.3) and the oracles O1–O3 (§10):
//! the `sev` crate in-process and `sev-snp-measure` from PyPI.

use super::*;
use crate::plan::BSP_RESET_EIP;
use crate::testutil::{debian_ovmf, sev_snp_measure, SynthOvmf, DEBIAN_OVMF, DEBIAN_OVMF_SHA256};
use crate::vmsa::{predict_vmsa, VcpuRegs};
use sha2::Sha256;

const TYPES: [&str; 3] = ["EPYC-v4", "EPYC-Milan", "EPYC-Genoa"];

fn ovmf_inputs(name: &str, data: Vec<u8>, vcpus: u32, vcpu_type: &str) -> MeasureInputs {
    MeasureInputs {
        firmware: Firmware::Ovmf {
            name: name.into(),
            data,
        },
        kernel: None,
        initrd: None,
        cmdline: None,
        vcpus,
        vcpu_signature: vcpu_signature(vcpu_type).unwrap(),
        guest_features: 1,
        ovmf_hash: None,
    }
}

fn sev_crate_digest(
    ovmf: &std::path::Path,
    vcpus: u32,
    cpu: sev::measurement::vcpu_types::CpuType,
    kernel: Option<(&std::path::Path, &std::path::Path, &str)>,
) -> String {
    use sev::measurement::snp::{snp_calc_launch_digest, SnpMeasurementArgs};
    let args = SnpMeasurementArgs {
        vcpus,
        vcpu_type: cpu,
        ovmf_file: ovmf.to_path_buf(),
        guest_features: Default::default(),
        kernel_file: kernel.map(|k| k.0.to_path_buf()),
        initrd_file: kernel.map(|k| k.1.to_path_buf()),
        append: kernel.map(|k| k.2),
        ovmf_hash_str: None,
        vmm_type: None,
    };
    let ld: Vec<u8> = snp_calc_launch_digest(args).unwrap().try_into().unwrap();
    hex(&ld)
}

#[test]
fn page_info_layout() {
    let ld = [0xaa; 48];
    let contents = [0xbb; 48];
    let info = page_info(&ld, &contents, PageType::Cpuid, 0x1122_3344_5566_7788);
    assert_eq!(&info[..48], &ld);
    assert_eq!(&info[48..96], &contents);
    assert_eq!(&info[96..98], &[0x70, 0]);
    assert_eq!(info[98], 6);
    assert_eq!(&info[99..104], &[0; 5]);
    assert_eq!(&info[104..], &0x1122_3344_5566_7788u64.to_le_bytes());
}

#[test]
fn unmeasured_types_ignore_contents_and_normal_pads() {
    let mut a = LaunchDigest::default();
    let mut b = LaunchDigest::default();
    a.update_page(PageType::Secrets, 0x1000, &[1; 4096]);
    b.update_page(PageType::Secrets, 0x1000, &[]);
    assert_eq!(a, b);
    let mut c = LaunchDigest::default();
    let mut d = LaunchDigest::default();
    c.update_page(PageType::Normal, 0x1000, &[7; 10]);
    let mut padded = [0u8; 4096];
    padded[..10].fill(7);
    d.update_page(PageType::Normal, 0x1000, &padded);
    assert_eq!(c, d);
    let mut e = LaunchDigest::default();
    e.update_page(PageType::Zero, 0x1000, &[]);
    assert_ne!(e, b, "page type enters PAGE_INFO");
}

#[test]
fn vcpu_signatures() {
    assert_eq!(vcpu_signature("EPYC-v4").unwrap(), 0x800f12);
    assert_eq!(vcpu_signature("EPYC-Milan").unwrap(), 0xa00f11);
    assert_eq!(vcpu_signature("EPYC-Milan-v2").unwrap(), 0xa00f11);
    assert_eq!(vcpu_signature("EPYC-Genoa").unwrap(), 0xa10f10);
    assert_eq!(vcpu_signature("EPYC-Turin").unwrap(), 0xb00f00);
    assert_eq!(vcpu_signature("EPYC-Rome").unwrap(), 0x830f10);
    let e = vcpu_signature("Skylake").unwrap_err().to_string();
    assert!(e.contains("Skylake"), "{e}");
}

#[test]
fn bad_inputs_are_rejected() {
    let img = SynthOvmf::amdsev().build();
    let mut i = ovmf_inputs("synth", img, 0, "EPYC-v4");
    let e = snp_digest(&i).unwrap_err().to_string();
    assert!(e.contains("vcpus") && e.contains('0'), "{e}");
    i.vcpus = 1;
    i.guest_features = 0x20;
    let e = snp_digest(&i).unwrap_err().to_string();
    assert!(e.contains("0x20") && e.contains("SNP_ACTIVE"), "{e}");
    i.guest_features = 1;
    i.cmdline = Some("x".into());
    let e = snp_digest(&i).unwrap_err().to_string();
    assert!(e.contains("without a kernel"), "{e}");
}

/// §9.3: the spec's fixed vectors for Debian's OVMF.fd, EPYC-v4, features 0x1.
#[test]
fn spec_vectors_section_9_3() {
    let Some(img) = debian_ovmf("spec_vectors_section_9_3") else {
        return;
    };
    let sha = hex(&Sha256::digest(&img));
    if sha != DEBIAN_OVMF_SHA256 {
        println!("SKIPPED spec_vectors_section_9_3: {DEBIAN_OVMF} has SHA-256 {sha}, the vectors are for {DEBIAN_OVMF_SHA256}");
        return;
    }
    let one = snp_digest(&ovmf_inputs(DEBIAN_OVMF, img.clone(), 1, "EPYC-v4")).unwrap();
    assert_eq!(hex(&one), "11570979c77a0adb515761a702527c8b9e11554e730552621d950988613a3a75c6ff1703f540bd22a9beede8fe7a97e3");
    let four = snp_digest(&ovmf_inputs(DEBIAN_OVMF, img.clone(), 4, "EPYC-v4")).unwrap();
    assert_eq!(hex(&four), "32ac9d7a17d28f7cd4404a4516d2f00519668c40ada2062351c36767e908eb3f090d66c33ab10f80150e00a4385b6d0f");
    let seed = ovmf_hash(DEBIAN_OVMF, &img).unwrap();
    assert_eq!(hex(&seed), "ba2c811512ef868474f239a21f7d7057d65a20de87a003c4f116e4fb1573183bfbcd75c3e99b2f558575a5d0094f73c6");
}

/// O1 with the `sev` crate: N in 1..=8 and three vCPU types, plus the seeded digest.
#[test]
fn o1_debian_ovmf_matches_sev_crate() {
    use sev::measurement::vcpu_types::CpuType;
    let Some(img) = debian_ovmf("o1_debian_ovmf_matches_sev_crate") else {
        return;
    };
    let cpus = [CpuType::EpycV4, CpuType::EpycMilan, CpuType::EpycGenoa];
    let seed = ovmf_hash(DEBIAN_OVMF, &img).unwrap();
    for (name, cpu) in TYPES.iter().zip(cpus) {
        for n in 1..=8 {
            let mut inputs = ovmf_inputs(DEBIAN_OVMF, img.clone(), n, name);
            let ours = hex(&snp_digest(&inputs).unwrap());
            let oracle = sev_crate_digest(DEBIAN_OVMF.as_ref(), n, cpu, None);
            assert_eq!(ours, oracle, "{name} x{n}");
            inputs.ovmf_hash = Some(seed);
            assert_eq!(
                hex(&snp_digest(&inputs).unwrap()),
                ours,
                "seeded {name} x{n}"
            );
        }
    }
}

/// O1 with `sev-snp-measure`: digests, the OVMF-hash seed, and a non-default feature set.
#[test]
fn o1_debian_ovmf_matches_sev_snp_measure() {
    let test = "o1_debian_ovmf_matches_sev_snp_measure";
    let Some(img) = debian_ovmf(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let Some(seed) = sev_snp_measure(
        test,
        dir.path(),
        &["--mode", "snp:ovmf-hash", "--ovmf", DEBIAN_OVMF],
    ) else {
        return;
    };
    assert_eq!(hex(&ovmf_hash(DEBIAN_OVMF, &img).unwrap()), seed);
    for name in TYPES {
        for n in 1..=8u32 {
            let ns = n.to_string();
            let args = [
                "--mode",
                "snp",
                "--vcpus",
                &ns,
                "--vcpu-type",
                name,
                "--ovmf",
                DEBIAN_OVMF,
            ];
            let oracle = sev_snp_measure(test, dir.path(), &args).unwrap();
            let ours = hex(&snp_digest(&ovmf_inputs(DEBIAN_OVMF, img.clone(), n, name)).unwrap());
            assert_eq!(ours, oracle, "{name} x{n}");
        }
    }
    let mut inputs = ovmf_inputs(DEBIAN_OVMF, img, 2, "EPYC-Milan");
    inputs.guest_features = 0x21;
    let args = [
        "--mode",
        "snp",
        "--vcpus",
        "2",
        "--vcpu-type",
        "EPYC-Milan",
        "--ovmf",
        DEBIAN_OVMF,
        "--guest-features",
        "0x21",
    ];
    let oracle = sev_snp_measure(test, dir.path(), &args).unwrap();
    assert_eq!(hex(&snp_digest(&inputs).unwrap()), oracle);
}

struct BootFiles {
    dir: tempfile::TempDir,
    ovmf: std::path::PathBuf,
    kernel: std::path::PathBuf,
    initrd: std::path::PathBuf,
}

fn boot_files() -> BootFiles {
    let dir = tempfile::tempdir().unwrap();
    let ovmf = dir.path().join("amdsev.fd");
    let kernel = dir.path().join("bzImage");
    let initrd = dir.path().join("initrd.img");
    std::fs::write(&ovmf, SynthOvmf::amdsev().build()).unwrap();
    std::fs::write(
        &kernel,
        (0..50_000u32)
            .map(|i| ((i * 31) >> 3) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    std::fs::write(&initrd, b"initrd contents").unwrap();
    BootFiles {
        dir,
        ovmf,
        kernel,
        initrd,
    }
}

const CMDLINE: &str = "console=ttyS0 root=/dev/vda";

fn direct_boot_inputs(f: &BootFiles, vcpus: u32) -> MeasureInputs {
    let mut i = ovmf_inputs(
        "amdsev.fd",
        std::fs::read(&f.ovmf).unwrap(),
        vcpus,
        "EPYC-v4",
    );
    i.kernel = Some(std::fs::read(&f.kernel).unwrap());
    i.initrd = Some(std::fs::read(&f.initrd).unwrap());
    i.cmdline = Some(CMDLINE.into());
    i
}

/// O2 against the `sev` crate with a synthetic AmdSev-style image.
#[test]
fn o2_direct_boot_matches_sev_crate() {
    use sev::measurement::vcpu_types::CpuType;
    let f = boot_files();
    for n in [1, 3] {
        let ours = hex(&snp_digest(&direct_boot_inputs(&f, n)).unwrap());
        let oracle = sev_crate_digest(
            &f.ovmf,
            n,
            CpuType::EpycV4,
            Some((&f.kernel, &f.initrd, CMDLINE)),
        );
        assert_eq!(ours, oracle, "x{n}");
    }
    // Without a kernel the hashes section is launched as ZERO pages: a different digest.
    let plain = snp_digest(&ovmf_inputs(
        "amdsev.fd",
        std::fs::read(&f.ovmf).unwrap(),
        1,
        "EPYC-v4",
    ));
    assert_eq!(
        hex(&plain.unwrap()),
        sev_crate_digest(&f.ovmf, 1, CpuType::EpycV4, None)
    );
}

/// O2 against `sev-snp-measure`, including the hashes page bytes.
#[test]
fn o2_direct_boot_matches_sev_snp_measure() {
    let test = "o2_direct_boot_matches_sev_snp_measure";
    let f = boot_files();
    let (o, k, i) = (
        f.ovmf.to_str().unwrap(),
        f.kernel.to_str().unwrap(),
        f.initrd.to_str().unwrap(),
    );
    for n in [1u32, 2, 5] {
        let ns = n.to_string();
        let args = [
            "--mode",
            "snp",
            "--vcpus",
            &ns,
            "--vcpu-type",
            "EPYC-v4",
            "--ovmf",
            o,
            "--kernel",
            k,
            "--initrd",
            i,
            "--append",
            CMDLINE,
        ];
        let Some(oracle) = sev_snp_measure(test, f.dir.path(), &args) else {
            return;
        };
        assert_eq!(
            hex(&snp_digest(&direct_boot_inputs(&f, n)).unwrap()),
            oracle,
            "x{n}"
        );
    }
    // The hashes page, byte for byte, from sev-snp-measure's own SevHashes.
    let script = format!(
        "import sys; from sevsnpmeasure.sev_hashes import SevHashes; \
         sys.stdout.write(SevHashes({k:?}, {i:?}, {CMDLINE:?}).construct_page(0x400).hex())"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hashes = crate::ovmf::SevHashes::new(
        &std::fs::read(&f.kernel).unwrap(),
        Some(&std::fs::read(&f.initrd).unwrap()),
        Some(CMDLINE),
    );
    assert_eq!(
        hex(&hashes.page(0x400).unwrap()),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn kernel_with_debian_ovmf_is_refused() {
    let Some(img) = debian_ovmf("kernel_with_debian_ovmf_is_refused") else {
        return;
    };
    let mut i = ovmf_inputs(DEBIAN_OVMF, img, 1, "EPYC-v4");
    i.kernel = Some(b"bzImage".to_vec());
    let e = snp_digest(&i).unwrap_err().to_string();
    assert!(
        e.contains(DEBIAN_OVMF) && e.contains("SNP_KERNEL_HASHES"),
        "{e}"
    );
}

/// O3: the VMSA predicted from the register values cvmm sets equals `--dump-vmsa`.
#[test]
fn o3_vmsa_bytes_match_dump_vmsa() {
    let test = "o3_vmsa_bytes_match_dump_vmsa";
    let dir = tempfile::tempdir().unwrap();
    let ovmf = dir.path().join("amdsev.fd");
    std::fs::write(&ovmf, SynthOvmf::amdsev().build()).unwrap();
    for (name, features) in [("EPYC-v4", "0x1"), ("EPYC-Genoa", "0x21")] {
        let args = [
            "--mode",
            "snp",
            "--vcpus",
            "2",
            "--vcpu-type",
            name,
            "--ovmf",
            ovmf.to_str().unwrap(),
            "--guest-features",
            features,
            "--dump-vmsa",
        ];
        if sev_snp_measure(test, dir.path(), &args).is_none() {
            return;
        }
        let sig = vcpu_signature(name).unwrap();
        let feat = u64::from_str_radix(&features[2..], 16).unwrap();
        let bsp = predict_vmsa(&VcpuRegs::reset(BSP_RESET_EIP, sig), feat);
        let ap = predict_vmsa(&VcpuRegs::reset(0x80b004, sig), feat);
        let dumped0 = std::fs::read(dir.path().join("vmsa0.bin")).unwrap();
        let dumped1 = std::fs::read(dir.path().join("vmsa1.bin")).unwrap();
        assert_eq!(&bsp[..], &dumped0[..], "BSP VMSA for {name}");
        assert_eq!(&ap[..], &dumped1[..], "AP VMSA for {name}");
    }
}

#[test]
fn vmsa_round_trips_through_registers() {
    let regs = VcpuRegs::reset(0x80b004, 0xa00f11);
    let page = predict_vmsa(&regs, 0x21);
    let (back, features) = crate::vmsa::regs_from_vmsa(&page[..]).unwrap();
    assert_eq!(features, 0x21);
    // KVM's adjustments (EFER.SVME, CR4.MCE, CR0 without CD/NW) are what come back.
    assert_eq!(back.efer, 0x1000);
    assert_eq!(back.cr4, 0x40);
    assert_eq!(back.cr0, 0x10);
    assert_eq!(back.cs, regs.cs);
    assert_eq!(back.gprs, regs.gprs);
    assert_eq!(&predict_vmsa(&back, features)[..], &page[..]);
}
