//! AttestationPolicy's generator: picks the reference values for the host's launch mode and
//! encodes them as a CoRIM ([`crate::corim`]), signed when `MANAGER_CORIM_SIGNING_KEY` is set.
//! On SNP the reference value is the real launch digest, computed in process by `tee` from the
//! configured IGVM file (or, when that file is absent, the OVMF image) with the configured vCPU
//! count and CPU model, plus the VMs' host data when `ENABLE_HOST_DATA` is set; TDX and plain
//! hosts get upstream's fixed TDX defaults (spec §4.4).

use crate::config::{ConfigError, ManagerConfig};
use crate::corim::{self, ReferenceValues};
use p256::ecdsa::SigningKey;
use p256::pkcs8::DecodePrivateKey;
use std::path::{Path, PathBuf};
use vmm::spec::TeeMode;

/// The variable naming the signing key.
pub const SIGNING_KEY_VAR: &str = "MANAGER_CORIM_SIGNING_KEY";

/// Why a policy could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The SNP launch digest could not be computed.
    #[error("failed to create IGVM measurement: {0}")]
    Measure(String),
}

/// What the SNP digest is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpSource {
    /// The IGVM file, used when it exists.
    pub igvm: PathBuf,
    /// The OVMF image, used otherwise.
    pub ovmf: PathBuf,
    /// vCPUs at launch.
    pub vcpus: u32,
    /// The QEMU CPU model (`EPYC`, `EPYC-Milan`, ...).
    pub cpu: String,
}

/// Builds AttestationPolicy answers.
pub struct PolicyMaker {
    tee: TeeMode,
    snp: SnpSource,
    /// The host data SNP VMs launch with (`None` unless `ENABLE_HOST_DATA`).
    snp_host_data: Option<[u8; 32]>,
    key: Option<SigningKey>,
}

fn key_error(path: &Path, reason: String) -> ConfigError {
    ConfigError {
        var: SIGNING_KEY_VAR.into(),
        value: path.display().to_string(),
        reason,
    }
}

/// Loads a P-256 private key from a PEM file (SEC1 `EC PRIVATE KEY` or PKCS#8 `PRIVATE KEY`).
pub fn load_signing_key(path: &Path) -> Result<SigningKey, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| key_error(path, format!("cannot read the key file: {e}")))?;
    if text.contains("-----BEGIN EC PRIVATE KEY-----") {
        p256::SecretKey::from_sec1_pem(&text)
            .map(SigningKey::from)
            .map_err(|e| key_error(path, format!("not a P-256 SEC1 EC private key: {e}")))
    } else {
        SigningKey::from_pkcs8_pem(&text).map_err(|e| {
            key_error(
                path,
                format!("not a PEM P-256 private key (EC PRIVATE KEY or PKCS#8): {e}"),
            )
        })
    }
}

impl PolicyMaker {
    /// Reads the signing key (a failure stops start-up, naming the variable).
    pub fn new(cfg: &ManagerConfig, tee: TeeMode) -> Result<Self, ConfigError> {
        let key = cfg
            .corim_signing_key
            .as_deref()
            .map(load_signing_key)
            .transpose()?;
        Ok(Self {
            tee,
            snp: SnpSource {
                igvm: cfg.vm.igvm_file.clone(),
                ovmf: cfg.vm.ovmf_file.clone(),
                vcpus: cfg.vm.smp_count,
                cpu: cfg.vm.cpu.clone(),
            },
            snp_host_data: cfg.vm.snp_host_data(),
            key,
        })
    }

    /// Whether answers are signed.
    pub fn signs(&self) -> bool {
        self.key.is_some()
    }

    /// The reference values for this host (blocking: on SNP it reads and hashes firmware).
    pub fn reference_values(&self) -> Result<ReferenceValues, PolicyError> {
        match self.tee {
            TeeMode::Snp => Ok(
                ReferenceValues::snp(snp_measurement(&self.snp)?, &self.snp.cpu)
                    .with_host_data(self.snp_host_data),
            ),
            TeeMode::Tdx | TeeMode::None | TeeMode::Auto => Ok(ReferenceValues::tdx_defaults()),
        }
    }

    /// The encoded CoRIM (COSE_Sign1 when a key is configured).
    pub fn generate(&self) -> Result<Vec<u8>, PolicyError> {
        let corim = corim::unsigned_corim(&self.reference_values()?);
        Ok(match &self.key {
            Some(k) => corim::sign(&corim, k),
            None => corim,
        })
    }
}

/// The SNP launch digest of the configured firmware, vCPU count and CPU model.
pub fn snp_measurement(src: &SnpSource) -> Result<[u8; 48], PolicyError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| PolicyError::Measure(format!("{}: {e}", p.display())))
    };
    let firmware = if src.igvm.exists() {
        tee::Firmware::Igvm {
            name: src.igvm.display().to_string(),
            data: read(&src.igvm)?,
        }
    } else {
        tracing::debug!(igvm = %src.igvm.display(), ovmf = %src.ovmf.display(), "no IGVM file, measuring OVMF");
        tee::Firmware::Ovmf {
            name: src.ovmf.display().to_string(),
            data: read(&src.ovmf)?,
        }
    };
    let measure_err = |e: tee::TeeError| PolicyError::Measure(e.to_string());
    let inputs = tee::MeasureInputs {
        firmware,
        kernel: None,
        initrd: None,
        cmdline: None,
        vcpus: src.vcpus,
        vcpu_signature: tee::measure::vcpu_signature(&src.cpu).map_err(measure_err)?,
        guest_features: 1,
        ovmf_hash: None,
    };
    tee::snp_digest(&inputs).map_err(measure_err)
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
