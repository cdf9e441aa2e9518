//! The SEV-SNP launch plan (spec §1 "one launch plan"): the ordered `SNP_LAUNCH_UPDATE` ranges
//! with their page type and contents, the vCPUs' register state and predicted VMSAs, policy, ID
//! block and host data. It is built once from the inputs; `cvmm measure` hashes it
//! ([`LaunchPlan::digest`]) and the launcher ([`crate::snp::SnpLauncher`]) issues it.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::measure::{Firmware, LaunchDigest, MeasureInputs, PageType, VMSA_GPA};
use crate::ovmf::{Ovmf, SevHashes, SevSectionKind, PAGE_SIZE};
use crate::uapi::KvmCpuidEntry2;
use crate::vmsa::{predict_vmsa, VcpuRegs};
use crate::TeeError;

/// The default guest policy: SMT allowed, reserved bit 17 set.
pub const DEFAULT_POLICY: u64 = 0x30000;
/// Real-mode reset vector of the BSP.
pub const BSP_RESET_EIP: u32 = 0xffff_fff0;
/// VMSA `sev_features` bit SNP_ACTIVE (added by KVM; never passed in INIT2).
pub const SEV_FEATURE_SNP_ACTIVE: u64 = 1;
/// Upper bound on vCPUs cvmm launches.
pub const MAX_VCPUS: u32 = 512;

/// One page-aligned 4 KiB page, so a `Vec<Page>` is a valid `uaddr` source for LAUNCH_UPDATE.
#[repr(C, align(4096))]
#[derive(Clone, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct Page(pub [u8; PAGE_SIZE]);

/// Page-aligned contents of a range.
#[derive(Clone, Default)]
pub struct PageBuf(Vec<Page>);

impl PageBuf {
    /// `pages` zeroed pages.
    pub fn zeroed(pages: usize) -> Self {
        PageBuf(vec![Page([0; PAGE_SIZE]); pages])
    }

    /// A copy of `data`, zero-padded to whole pages.
    pub fn from_bytes(data: &[u8]) -> Self {
        let mut buf = Self::zeroed(data.len().div_ceil(PAGE_SIZE));
        buf.as_mut_bytes()[..data.len()].copy_from_slice(data);
        buf
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_slice().as_bytes()
    }

    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        self.0.as_mut_slice().as_mut_bytes()
    }

    pub fn len(&self) -> usize {
        self.0.len() * PAGE_SIZE
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for PageBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageBuf({} pages)", self.0.len())
    }
}

/// One contiguous `SNP_LAUNCH_UPDATE` range of one type.
#[derive(Debug, Clone)]
pub struct PlanRange {
    pub gpa: u64,
    pub len: u64,
    pub page_type: PageType,
    /// Source contents (`len` bytes), or empty for ZERO pages (KVM ignores `uaddr` for them).
    pub data: PageBuf,
}

/// One vCPU: the state the launcher sets and the VMSA KVM is expected to measure for it.
#[derive(Debug, Clone)]
pub struct VcpuPlan {
    pub regs: VcpuRegs,
    pub vmsa: Box<[u8; PAGE_SIZE]>,
}

/// SNP ID block (96 bytes) and ID authentication structure (4096 bytes) for LAUNCH_FINISH.
#[derive(Debug, Clone)]
pub struct IdBlock {
    pub block: [u8; 96],
    pub auth: Box<[u8; PAGE_SIZE]>,
    /// Whether the author key in `auth` is valid (`auth_key_en`).
    pub author_key_enabled: bool,
}

/// Everything the SNP launch does, in order.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    /// LAUNCH_UPDATE ranges in issue order.
    pub ranges: Vec<PlanRange>,
    /// Ranges that must be private without a launch update (IGVM REQUIRED_MEMORY).
    pub private_ranges: Vec<(u64, u64)>,
    /// vCPUs, BSP first; each adds one VMSA page at LAUNCH_FINISH.
    pub vcpus: Vec<VcpuPlan>,
    pub policy: u64,
    /// VMSA `sev_features`, SNP_ACTIVE included; INIT2 gets it without SNP_ACTIVE.
    pub sev_features: u64,
    pub id_block: Option<IdBlock>,
    pub host_data: [u8; 32],
    /// Number of leading ranges an OVMF-hash seed stands for.
    pub firmware_ranges: usize,
}

impl LaunchPlan {
    /// Builds the plan for OVMF or IGVM inputs.
    pub fn from_inputs(inputs: &MeasureInputs) -> Result<Self, TeeError> {
        Self::from_inputs_with(inputs, &crate::igvm::IgvmParams::default())
    }

    /// [`Self::from_inputs`] with the values the VMM puts into IGVM parameter areas (command
    /// line, memory map); they are launched unmeasured, so the digest does not depend on them.
    pub fn from_inputs_with(
        inputs: &MeasureInputs,
        igvm_params: &crate::igvm::IgvmParams,
    ) -> Result<Self, TeeError> {
        if inputs.vcpus == 0 || inputs.vcpus > MAX_VCPUS {
            return Err(TeeError::input(
                "vcpus",
                format!("{} is outside 1..={MAX_VCPUS}", inputs.vcpus),
            ));
        }
        if inputs.guest_features & SEV_FEATURE_SNP_ACTIVE == 0 {
            return Err(TeeError::input(
                "guest features",
                format!(
                    "{:#x} lacks SNP_ACTIVE (bit 0), which KVM always sets",
                    inputs.guest_features
                ),
            ));
        }
        match &inputs.firmware {
            Firmware::Ovmf { name, data } => Self::from_ovmf(name, data, inputs),
            Firmware::Igvm { name, data } => {
                if inputs.kernel.is_some() || inputs.initrd.is_some() || inputs.cmdline.is_some() {
                    return Err(TeeError::input(
                        "kernel",
                        format!("kernel/initrd/cmdline hashes do not apply to IGVM input {name}"),
                    ));
                }
                crate::igvm::plan_from_igvm_with(name, data, inputs, igvm_params)
            }
        }
    }

    fn from_ovmf(name: &str, data: &[u8], inputs: &MeasureInputs) -> Result<Self, TeeError> {
        let ovmf = Ovmf::parse(name, data)?;
        let hashes = match &inputs.kernel {
            Some(k) => Some(SevHashes::new(
                k,
                inputs.initrd.as_deref(),
                inputs.cmdline.as_deref(),
            )),
            None if inputs.initrd.is_some() || inputs.cmdline.is_some() => {
                return Err(TeeError::input(
                    "kernel",
                    "an initrd or cmdline was given without a kernel",
                ))
            }
            None => None,
        };
        if hashes.is_some() && !ovmf.has_section(SevSectionKind::SnpKernelHashes) {
            return Err(TeeError::ovmf(
                name,
                "a kernel was given but the SEV metadata has no SNP_KERNEL_HASHES section \
                 (measured direct boot needs an AmdSevX64 OVMF build)",
            ));
        }
        let mut ranges = vec![PlanRange {
            gpa: ovmf.gpa(),
            len: data.len() as u64,
            page_type: PageType::Normal,
            data: PageBuf::from_bytes(data),
        }];
        for s in ovmf.sev_sections() {
            let (gpa, len) = (s.gpa as u64, s.size as u64);
            let one_page = || {
                if len != PAGE_SIZE as u64 {
                    return Err(TeeError::ovmf(
                        name,
                        format!(
                            "{:?} section at {gpa:#x} has size {len:#x}, not 0x1000",
                            s.kind
                        ),
                    ));
                }
                Ok(())
            };
            let (page_type, buf) = match s.kind {
                SevSectionKind::SnpSecMem | SevSectionKind::SvsmCaa => {
                    (PageType::Zero, PageBuf::default())
                }
                SevSectionKind::SnpSecrets => {
                    one_page()?;
                    (PageType::Secrets, PageBuf::zeroed(1))
                }
                SevSectionKind::Cpuid => {
                    one_page()?;
                    (PageType::Cpuid, PageBuf::zeroed(1))
                }
                SevSectionKind::SnpKernelHashes => match &hashes {
                    None => (PageType::Zero, PageBuf::default()),
                    Some(h) => {
                        one_page()?;
                        let (table_gpa, _) = ovmf.sev_hashes_table()?.ok_or_else(|| {
                            TeeError::ovmf(
                                name,
                                "SNP_KERNEL_HASHES section but no hashes-table gpa",
                            )
                        })?;
                        let page = h.page(table_gpa as usize & (PAGE_SIZE - 1))?;
                        (PageType::Normal, PageBuf::from_bytes(&page))
                    }
                },
            };
            ranges.push(PlanRange {
                gpa,
                len,
                page_type,
                data: buf,
            });
        }
        let ap_eip = ovmf.sev_es_reset_eip()?;
        let vcpus = (0..inputs.vcpus)
            .map(|i| {
                let eip = if i == 0 { BSP_RESET_EIP } else { ap_eip };
                let regs = VcpuRegs::reset(eip, inputs.vcpu_signature);
                let vmsa = predict_vmsa(&regs, inputs.guest_features);
                VcpuPlan { regs, vmsa }
            })
            .collect();
        Ok(LaunchPlan {
            ranges,
            private_ranges: Vec::new(),
            vcpus,
            policy: DEFAULT_POLICY,
            sev_features: inputs.guest_features,
            id_block: None,
            host_data: [0; 32],
            firmware_ranges: 1,
        })
    }

    /// Fills every page of every CPUID range from `entries` (the BSP's CPUID as the VMM gives
    /// it to `KVM_SET_CPUID2`, see [`crate::snp_cpuid`]): an IGVM template keeps its functions
    /// and gets their outputs, an empty page gets one function per entry. The PSP checks these
    /// pages at LAUNCH_UPDATE; their contents are not measured, so the digest does not change.
    /// Returns the number of pages filled; an error names the page's gpa.
    pub fn fill_cpuid_pages(&mut self, entries: &[KvmCpuidEntry2]) -> Result<usize, TeeError> {
        let mut filled = 0;
        for r in self.ranges.iter_mut() {
            if r.page_type != PageType::Cpuid {
                continue;
            }
            if r.data.len() as u64 != r.len {
                r.data = PageBuf::zeroed(r.len.div_ceil(PAGE_SIZE as u64) as usize);
            }
            for (i, chunk) in r
                .data
                .as_mut_bytes()
                .chunks_exact_mut(PAGE_SIZE)
                .enumerate()
            {
                let page =
                    crate::snp_cpuid::fill_template(chunk, entries).map_err(|e| match e {
                        TeeError::Input { reason, .. } => {
                            let gpa = r.gpa + (i * PAGE_SIZE) as u64;
                            TeeError::input(&format!("CPUID page at gpa {gpa:#x}"), reason)
                        }
                        other => other,
                    })?;
                chunk.copy_from_slice(&page[..]);
                filled += 1;
            }
        }
        Ok(filled)
    }

    /// `(gpa, len, type)` of every LAUNCH_UPDATE range, in order.
    pub fn update_list(&self) -> Vec<(u64, u64, PageType)> {
        self.ranges
            .iter()
            .map(|r| (r.gpa, r.len, r.page_type))
            .collect()
    }

    /// The launch digest: every range's pages, then one VMSA per vCPU.
    pub fn digest(&self) -> [u8; 48] {
        self.digest_from(LaunchDigest::default(), 0)
    }

    /// The digest seeded with an OVMF hash that stands for the firmware ranges.
    pub fn digest_after_firmware(&self, seed: [u8; 48]) -> [u8; 48] {
        self.digest_from(LaunchDigest::with_seed(seed), self.firmware_ranges)
    }

    fn digest_from(&self, mut ld: LaunchDigest, skip: usize) -> [u8; 48] {
        for r in self.ranges.iter().skip(skip) {
            ld.update_range(r.page_type, r.gpa, r.len, r.data.as_bytes());
        }
        for v in &self.vcpus {
            ld.update_page(PageType::Vmsa, VMSA_GPA, &v.vmsa[..]);
        }
        ld.value()
    }
}
