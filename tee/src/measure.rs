//! SEV-SNP launch digest (spec §8.1): the PAGE_INFO chain the PSP computes during
//! `SNP_LAUNCH_UPDATE`, vCPU types and their CPUID signatures, and the `cvmm measure` entry point
//! [`snp_digest`]. Pure functions; nothing here touches KVM.

use sha2::{Digest, Sha384};

use crate::plan::LaunchPlan;
use crate::TeeError;

/// GPA at which KVM launches every vCPU's VMSA.
pub const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;
/// Length of PAGE_INFO.
const PAGE_INFO_LEN: u16 = 0x70;

/// SNP page types of the firmware ABI (spec §4.1; VMSA is not accepted from userspace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PageType {
    Normal = 1,
    Vmsa = 2,
    Zero = 3,
    Unmeasured = 4,
    Secrets = 5,
    Cpuid = 6,
}

impl PageType {
    /// Whether the page contents enter the digest (NORMAL and VMSA only).
    pub fn is_measured(self) -> bool {
        matches!(self, PageType::Normal | PageType::Vmsa)
    }
}

/// The running SNP launch digest (the guest context's LD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchDigest([u8; 48]);

impl Default for LaunchDigest {
    fn default() -> Self {
        LaunchDigest([0; 48])
    }
}

impl LaunchDigest {
    /// Starts from a seed (e.g. a precomputed OVMF hash) instead of zeros.
    pub fn with_seed(seed: [u8; 48]) -> Self {
        LaunchDigest(seed)
    }

    /// The current value.
    pub fn value(&self) -> [u8; 48] {
        self.0
    }

    /// Chains one 4 KiB page. `page` is hashed only for measured types; a shorter page is
    /// zero-padded to 4 KiB.
    pub fn update_page(&mut self, page_type: PageType, gpa: u64, page: &[u8]) {
        let contents = if page_type.is_measured() {
            let mut h = Sha384::new();
            h.update(page);
            if page.len() < 4096 {
                h.update(&[0u8; 4096][page.len()..]);
            }
            h.finalize().into()
        } else {
            [0u8; 48]
        };
        self.update_raw(page_type, gpa, &contents);
    }

    /// Chains one PAGE_INFO with the given contents digest.
    pub fn update_raw(&mut self, page_type: PageType, gpa: u64, contents: &[u8; 48]) {
        self.0 = Sha384::digest(page_info(&self.0, contents, page_type, gpa)).into();
    }

    /// Chains every 4 KiB page of a range; `data` is empty (zeros) or covers the range.
    pub fn update_range(&mut self, page_type: PageType, gpa: u64, len: u64, data: &[u8]) {
        for (i, page_gpa) in (gpa..gpa + len).step_by(4096).enumerate() {
            let page = data.get(i * 4096..(i + 1) * 4096).unwrap_or(&[]);
            self.update_page(page_type, page_gpa, page);
        }
    }
}

/// The 0x70-byte PAGE_INFO structure hashed for each page.
pub fn page_info(ld: &[u8; 48], contents: &[u8; 48], page_type: PageType, gpa: u64) -> [u8; 0x70] {
    let mut info = [0u8; 0x70];
    info[..48].copy_from_slice(ld);
    info[48..96].copy_from_slice(contents);
    info[96..98].copy_from_slice(&PAGE_INFO_LEN.to_le_bytes());
    info[98] = page_type as u8;
    // imi (99) and the VMPL permissions (100..104) stay 0.
    info[104..112].copy_from_slice(&gpa.to_le_bytes());
    info
}

/// CPUID Fn0000_0001_EAX signature from family, model and stepping.
pub fn cpu_signature(family: u32, model: u32, stepping: u32) -> u32 {
    let (fam_low, fam_high) = if family > 0xf {
        (0xf, (family - 0xf) & 0xff)
    } else {
        (family, 0)
    };
    (fam_high << 20)
        | ((model >> 4) & 0xf) << 16
        | fam_low << 8
        | (model & 0xf) << 4
        | (stepping & 0xf)
}

/// The CPUID signature of a QEMU vCPU model name (`EPYC-v4`, `EPYC-Milan`, `EPYC-Genoa`, ...).
pub fn vcpu_signature(name: &str) -> Result<u32, TeeError> {
    let base = match name.rsplit_once("-v") {
        Some((b, v)) if !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()) => b,
        _ => name,
    };
    let (family, model, stepping) = match base {
        "EPYC" | "EPYC-IBPB" => (23, 1, 2),
        "EPYC-Rome" => (23, 49, 0),
        "EPYC-Milan" => (25, 1, 1),
        "EPYC-Genoa" => (25, 17, 0),
        "EPYC-Turin" => (26, 0, 0),
        _ => {
            return Err(TeeError::input(
                "vcpu type",
                format!("unknown vCPU type {name:?} (known: EPYC[-vN], EPYC-Rome, EPYC-Milan, EPYC-Genoa, EPYC-Turin)"),
            ))
        }
    };
    Ok(cpu_signature(family, model, stepping))
}

/// The firmware image the launch starts from.
#[derive(Debug, Clone)]
pub enum Firmware {
    /// A unified OVMF image (e.g. `/usr/share/ovmf/OVMF.fd`), named for errors.
    Ovmf { name: String, data: Vec<u8> },
    /// An IGVM file, named for errors.
    Igvm { name: String, data: Vec<u8> },
}

/// Inputs of `cvmm measure` for SNP (spec §3).
#[derive(Debug, Clone)]
pub struct MeasureInputs {
    pub firmware: Firmware,
    /// bzImage bytes (OVMF direct boot with measured hashes).
    pub kernel: Option<Vec<u8>>,
    pub initrd: Option<Vec<u8>>,
    pub cmdline: Option<String>,
    /// Number of vCPUs that exist at LAUNCH_FINISH.
    pub vcpus: u32,
    /// CPUID signature placed in RDX (see [`vcpu_signature`]).
    pub vcpu_signature: u32,
    /// VMSA `sev_features` (INIT2 `vmsa_features | 1`); the usual value is 1.
    pub guest_features: u64,
    /// Precomputed OVMF hash to seed the digest with (`--snp-ovmf-hash`), OVMF only.
    pub ovmf_hash: Option<[u8; 48]>,
}

/// The SNP launch digest of the inputs: the value the attestation report's MEASUREMENT holds.
pub fn snp_digest(inputs: &MeasureInputs) -> Result<[u8; 48], TeeError> {
    let plan = LaunchPlan::from_inputs(inputs)?;
    match (&inputs.firmware, inputs.ovmf_hash) {
        (Firmware::Ovmf { .. }, Some(seed)) => Ok(plan.digest_after_firmware(seed)),
        (Firmware::Igvm { name, .. }, Some(_)) => Err(TeeError::input(
            "ovmf hash",
            format!("an OVMF-hash seed does not apply to IGVM input {name}"),
        )),
        _ => Ok(plan.digest()),
    }
}

/// The OVMF-hash seed (`--mode snp:ovmf-hash`): the digest after the firmware's NORMAL pages.
pub fn ovmf_hash(name: &str, data: &[u8]) -> Result<[u8; 48], TeeError> {
    let ovmf = crate::ovmf::Ovmf::parse(name, data)?;
    let mut ld = LaunchDigest::default();
    ld.update_range(PageType::Normal, ovmf.gpa(), data.len() as u64, data);
    Ok(ld.value())
}

/// Lower-case hex of a digest (compare case-insensitively with `igvmmeasure -b`).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[path = "measure_tests.rs"]
mod tests;
