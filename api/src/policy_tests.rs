//! Tests of the policy generator: signing-key loading (PKCS#8 and SEC1 PEM, and start-up
//! errors naming `MANAGER_CORIM_SIGNING_KEY`), the platform choice per launch mode, and the
//! SNP reference value against the `sev` crate's launch digest of the same OVMF image.

use super::*;
use crate::corim::{self, Platform};
use p256::ecdsa::signature::Verifier;
use p256::pkcs8::DecodePublicKey;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cvmm-policy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn config(vars: &[(&str, String)]) -> ManagerConfig {
    ManagerConfig::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.clone()))).unwrap()
}

#[test]
fn a_missing_or_bad_key_is_a_start_up_error_naming_the_variable() {
    let dir = scratch("badkey");
    let missing = dir.join("nope.pem");
    let cfg = config(&[(SIGNING_KEY_VAR, missing.display().to_string())]);
    let e = PolicyMaker::new(&cfg, TeeMode::None).err().expect("error");
    assert_eq!(e.var, SIGNING_KEY_VAR);
    assert_eq!(e.value, missing.display().to_string());
    assert!(e.to_string().contains("cannot read the key file"), "{e}");

    let garbage = dir.join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = load_signing_key(&garbage).unwrap_err();
    assert_eq!(
        (e.var.as_str(), e.value.clone()),
        (SIGNING_KEY_VAR, garbage.display().to_string())
    );
    assert!(e.to_string().contains("MANAGER_CORIM_SIGNING_KEY"), "{e}");

    let bad_sec1 = dir.join("sec1.pem");
    std::fs::write(
        &bad_sec1,
        "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
    )
    .unwrap();
    assert_eq!(
        load_signing_key(&bad_sec1).unwrap_err().var,
        SIGNING_KEY_VAR
    );

    // A P-384 key is well-formed PEM but not usable for ES256.
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let p384_path = dir.join("p384.pem");
    std::fs::write(&p384_path, p384.serialize_pem()).unwrap();
    assert_eq!(
        load_signing_key(&p384_path).unwrap_err().var,
        SIGNING_KEY_VAR
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pkcs8_and_sec1_keys_sign_policies_that_verify_with_the_public_key() {
    let dir = scratch("goodkey");
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let public = p256::PublicKey::from_public_key_pem(&pair.public_key_pem()).unwrap();
    let vk = p256::ecdsa::VerifyingKey::from(public);
    let pkcs8 = dir.join("pkcs8.pem");
    std::fs::write(&pkcs8, pair.serialize_pem()).unwrap();
    let sk = load_signing_key(&pkcs8).unwrap();
    let sec1 = dir.join("sec1.pem");
    let sec1_text = p256::SecretKey::from(&sk)
        .to_sec1_pem(Default::default())
        .unwrap();
    std::fs::write(&sec1, sec1_text.as_bytes()).unwrap();

    for path in [&pkcs8, &sec1] {
        let cfg = config(&[(SIGNING_KEY_VAR, path.display().to_string())]);
        let maker = PolicyMaker::new(&cfg, TeeMode::None).unwrap();
        assert!(maker.signs());
        let signed: ciborium::Value =
            ciborium::from_reader(&maker.generate().unwrap()[..]).unwrap();
        let ciborium::Value::Tag(corim::TAG_COSE_SIGN1, msg) = signed else {
            panic!("not a COSE_Sign1: {signed:?}")
        };
        let parts = msg.as_array().unwrap();
        let (protected, payload) = (parts[0].as_bytes().unwrap(), parts[2].as_bytes().unwrap());
        let sig = p256::ecdsa::Signature::from_slice(parts[3].as_bytes().unwrap()).unwrap();
        vk.verify(&corim::sig_structure(protected, payload), &sig)
            .expect("verifies with the key's public half");
        assert_eq!(
            &payload[..3],
            &[0xd9, 0x01, 0xf5],
            "payload is a tag-501 CoRIM"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn hosts_without_snp_get_the_tdx_defaults_unsigned() {
    let cfg = config(&[]);
    for tee in [TeeMode::None, TeeMode::Tdx] {
        let maker = PolicyMaker::new(&cfg, tee).unwrap();
        assert!(!maker.signs());
        let rv = maker.reference_values().unwrap();
        assert_eq!(rv, ReferenceValues::tdx_defaults());
        assert_eq!(rv.platform, Platform::Tdx);
        let bytes = maker.generate().unwrap();
        assert_eq!(&bytes[..3], &[0xd9, 0x01, 0xf5]);
    }
}

const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

fn sev_oracle(vcpus: u32, cpu: sev::measurement::vcpu_types::CpuType) -> Vec<u8> {
    use sev::measurement::snp::{snp_calc_launch_digest, SnpMeasurementArgs};
    let args = SnpMeasurementArgs {
        vcpus,
        vcpu_type: cpu,
        ovmf_file: OVMF.into(),
        guest_features: Default::default(),
        kernel_file: None,
        initrd_file: None,
        append: None,
        ovmf_hash_str: None,
        vmm_type: None,
    };
    snp_calc_launch_digest(args).unwrap().try_into().unwrap()
}

#[test]
fn snp_reference_value_is_the_launch_digest_of_the_configured_guest() {
    use sev::measurement::vcpu_types::CpuType;
    if !std::path::Path::new(OVMF).exists() {
        println!("SKIPPED snp_reference_value: {OVMF} is not installed (apt-get install ovmf)");
        return;
    }
    let dir = scratch("snp");
    for (smp, cpu, oracle_cpu) in [
        ("1", "EPYC", CpuType::Epyc),
        ("4", "EPYC", CpuType::Epyc),
        ("2", "EPYC-Milan", CpuType::EpycMilan),
    ] {
        let cfg = config(&[
            (
                "MANAGER_QEMU_IGVM_FILE",
                dir.join("absent.igvm").display().to_string(),
            ),
            ("MANAGER_QEMU_OVMF_FILE", OVMF.into()),
            ("MANAGER_QEMU_SMP_COUNT", smp.into()),
            ("MANAGER_QEMU_CPU", cpu.into()),
        ]);
        let rv = PolicyMaker::new(&cfg, TeeMode::Snp)
            .unwrap()
            .reference_values()
            .unwrap();
        assert_eq!(rv.platform, Platform::Snp);
        assert_eq!(rv.product.as_deref(), Some(cpu));
        let vcpus: u32 = smp.parse().unwrap();
        assert_eq!(
            rv.digests,
            vec![sev_oracle(vcpus, oracle_cpu)],
            "{smp} x {cpu}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn snp_measurement_errors_name_the_file() {
    let dir = scratch("snperr");
    let igvm = dir.join("bad.igvm");
    std::fs::write(&igvm, b"not an igvm file").unwrap();
    let src = SnpSource {
        igvm: igvm.clone(),
        ovmf: dir.join("absent.fd"),
        vcpus: 1,
        cpu: "EPYC".into(),
    };
    // An existing IGVM file is preferred over the OVMF image, and its parse error is reported.
    let e = snp_measurement(&src).unwrap_err().to_string();
    assert!(e.starts_with("failed to create IGVM measurement: "), "{e}");
    assert!(e.contains("bad.igvm"), "{e}");

    let none = SnpSource {
        igvm: dir.join("absent.igvm"),
        ..src.clone()
    };
    let e = snp_measurement(&none).unwrap_err().to_string();
    assert!(e.contains("absent.fd"), "{e}");

    let bad_cpu = SnpSource {
        cpu: "Skylake".into(),
        ..src
    };
    let e = snp_measurement(&bad_cpu).unwrap_err().to_string();
    assert!(e.contains("Skylake"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn snp_policy_carries_the_host_data_only_when_enabled() {
    if !std::path::Path::new(OVMF).exists() {
        println!("SKIPPED snp_policy_carries_the_host_data: {OVMF} is not installed");
        return;
    }
    let dir = scratch("hostdata");
    let vars = |enable: &str| {
        config(&[
            (
                "MANAGER_QEMU_IGVM_FILE",
                dir.join("absent.igvm").display().to_string(),
            ),
            ("MANAGER_QEMU_OVMF_FILE", OVMF.into()),
            ("MANAGER_QEMU_SMP_COUNT", "1".into()),
            ("MANAGER_QEMU_ENABLE_HOST_DATA", enable.into()),
        ])
    };
    let rv_of = |enable: &str, tee| {
        PolicyMaker::new(&vars(enable), tee)
            .unwrap()
            .reference_values()
            .unwrap()
    };
    let on = rv_of("true", TeeMode::Snp);
    assert_eq!(on.host_data, Some(crate::config::SNP_HOST_DATA));
    let off = rv_of("false", TeeMode::Snp);
    assert_eq!(off.host_data, None);
    assert_eq!(
        on.digests, off.digests,
        "host data is not part of the digest"
    );
    // The encoded policy holds it as a second measurement after the digest.
    let maker = PolicyMaker::new(&vars("true"), TeeMode::Snp).unwrap();
    let bytes = maker.generate().unwrap();
    let needle = crate::config::SNP_HOST_DATA;
    assert!(
        bytes.windows(32).any(|w| w == needle),
        "host data bytes are in the CoRIM"
    );
    // Hosts without SNP keep the TDX defaults, host data or not.
    assert_eq!(rv_of("true", TeeMode::Tdx), ReferenceValues::tdx_defaults());
    let _ = std::fs::remove_dir_all(&dir);
}
