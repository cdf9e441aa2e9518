//! IGVM file → SEV-SNP launch plan (spec §7). Directives are applied in file order for the SNP
//! platform's compatibility mask; the `--check-kvm` rules of §7.2 are enforced on the input; the
//! VMSA (`SNP_VP_CONTEXT`) becomes vCPU 0's register state, because KVM builds and measures the
//! VMSA itself at `LAUNCH_FINISH`. Two directives over one guest page are refused
//! ([`PageClaims`], shared with the TDX plan and the native loader). The digest of the plan
//! equals `igvmmeasure measure` (and the `igvm` crate's `generate_snp_measurement`) for files
//! that pass the rules, except for parameter areas larger than 4 KiB, where cvmm measures the
//! whole area as its launch issues it (§12.12).

use std::collections::{BTreeMap, HashMap};

use igvm::{IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader};
use igvm_defs::{IgvmPageDataType, IgvmPlatformType};
use zerocopy::IntoBytes;

use crate::igvm_params::usage_bytes;
pub use crate::igvm_params::IgvmParams;
use crate::measure::{MeasureInputs, PageType, VMSA_GPA};
use crate::plan::{IdBlock, LaunchPlan, PageBuf, PlanRange, VcpuPlan, SEV_FEATURE_SNP_ACTIVE};
use crate::vmsa::regs_from_vmsa;
use crate::TeeError;

const PAGE_4K: u64 = 4096;
const PAGE_2M: u64 = 2 << 20;

/// The size of the page a PAGE_DATA directive loads (4 KiB, or 2 MiB with the 2 MiB flag), or
/// why the directive does not fit it (unaligned GPA, more data than the page): one rule for
/// the SEV-SNP plan and the native loader.
pub fn page_data_size(gpa: u64, is_2mb: bool, data_len: usize) -> Result<u64, String> {
    let len = if is_2mb { PAGE_2M } else { PAGE_4K };
    if !gpa.is_multiple_of(len) || data_len as u64 > len {
        return Err(format!(
            "gpa {gpa:#x} with {data_len} data bytes does not fit a {len:#x}-byte page"
        ));
    }
    Ok(len)
}

/// One directive's claim on guest pages: `len` bytes from `gpa`, for the error that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageClaim {
    /// Index of the directive in the file.
    pub index: usize,
    /// Directive type as the errors spell it (`PAGE_DATA`, `PARAMETER_INSERT`, ...).
    pub kind: &'static str,
    pub gpa: u64,
    pub len: u64,
}

impl std::fmt::Display for PageClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "directive {} ({} at gpa {:#x}, {:#x} bytes)",
            self.index, self.kind, self.gpa, self.len
        )
    }
}

/// The guest pages an IGVM file's directives have claimed so far. A second directive over a
/// page already claimed (a 2 MiB page over a 4 KiB one, a parameter area over page data, the
/// VMSA over data) is an error: loading it would silently overwrite the first, and launching it
/// would issue a second `LAUNCH_UPDATE` / `INIT_MEM_REGION` of a page the firmware has already
/// accepted. One check for the SEV-SNP plan, the TDX plan and the native loader.
#[derive(Debug, Default)]
pub struct PageClaims {
    /// Claims by start GPA; they never overlap, so only the one starting last below a new
    /// claim's end can overlap it.
    by_start: BTreeMap<u64, PageClaim>,
}

impl PageClaims {
    /// Records `claim`, or says which earlier claim it overlaps (or that it wraps past the top
    /// of the address space). The message names both directives with their types and GPAs.
    pub fn claim(&mut self, claim: PageClaim) -> Result<(), String> {
        let end = claim
            .gpa
            .checked_add(claim.len)
            .ok_or_else(|| format!("{claim} runs past the end of the address space"))?;
        if claim.len == 0 {
            return Ok(());
        }
        if let Some((_, earlier)) = self.by_start.range(..end).next_back() {
            if earlier.gpa + earlier.len > claim.gpa {
                return Err(format!("{claim} overlaps {earlier}"));
            }
        }
        self.by_start.insert(claim.gpa, claim);
        Ok(())
    }
}

/// Builds the SNP launch plan from IGVM bytes. `inputs.guest_features` is the set of
/// `sev_features` cvmm can pass through INIT2; the file's VMSA may use only those.
pub fn plan_from_igvm(
    name: &str,
    data: &[u8],
    inputs: &MeasureInputs,
) -> Result<LaunchPlan, TeeError> {
    plan_from_igvm_with(name, data, inputs, &IgvmParams::default())
}

/// [`plan_from_igvm`] with the VMM's parameter values: the VP_COUNT, COMMAND_LINE,
/// MEMORY_MAP and ENVIRONMENT_INFO directives fill their areas, which PARAMETER_INSERT then
/// launches as UNMEASURED pages (so `params` never changes the digest).
pub fn plan_from_igvm_with(
    name: &str,
    data: &[u8],
    inputs: &MeasureInputs,
    params: &IgvmParams,
) -> Result<LaunchPlan, TeeError> {
    let err = |reason: String| TeeError::igvm(name, reason);
    let file = parse_file(name, data, igvm::IsolationType::Snp)?;
    let mask =
        snp_compatibility_mask(&file).ok_or_else(|| err("no SEV-SNP platform header".into()))?;
    let policy = file
        .initializations()
        .iter()
        .find_map(|h| match h {
            IgvmInitializationHeader::GuestPolicy {
                policy,
                compatibility_mask,
            } if compatibility_mask & mask != 0 => Some(*policy),
            _ => None,
        })
        .ok_or_else(|| err("no GUEST_POLICY initialization header for SEV-SNP".into()))?;

    let mut b = Builder {
        name,
        inputs,
        params,
        ranges: Vec::new(),
        areas: HashMap::new(),
        plan_vcpu: None,
        private_ranges: Vec::new(),
        id_block: None,
        id_block_ld: None,
        claims: PageClaims::default(),
    };
    for (index, d) in file.directives().iter().enumerate() {
        let applies = d.compatibility_mask().is_none_or(|m| m & mask != 0);
        if applies {
            b.directive(index, d)?;
        }
    }
    let Builder {
        ranges,
        plan_vcpu,
        private_ranges,
        mut id_block,
        id_block_ld,
        ..
    } = b;
    if let Some(ib) = id_block.as_mut() {
        set_id_block_policy(&mut ib.block, policy);
    }
    let (vcpu, sev_features) =
        plan_vcpu.ok_or_else(|| err("no SNP_VP_CONTEXT (VMSA) for vp 0".into()))?;
    let plan = LaunchPlan {
        ranges,
        private_ranges,
        vcpus: vec![vcpu],
        policy,
        sev_features,
        id_block,
        host_data: [0; 32],
        firmware_ranges: 0,
    };
    if let Some(ld) = id_block_ld {
        if ld != plan.digest() {
            tracing::warn!(
                file = name,
                id_block_ld = %crate::measure::hex(&ld),
                computed = %crate::measure::hex(&plan.digest()),
                "IGVM SNP_ID_BLOCK launch digest differs from the computed digest"
            );
        }
    }
    Ok(plan)
}

fn snp_compatibility_mask(file: &IgvmFile) -> Option<u32> {
    file.platforms().iter().find_map(|p| match p {
        IgvmPlatformHeader::SupportedPlatform(sp)
            if sp.platform_type == IgvmPlatformType::SEV_SNP =>
        {
            Some(sp.compatibility_mask)
        }
        _ => None,
    })
}

struct Builder<'a> {
    name: &'a str,
    inputs: &'a MeasureInputs,
    params: &'a IgvmParams,
    ranges: Vec<PlanRange>,
    /// Parameter areas by index: contents (size = area size).
    areas: HashMap<u32, Vec<u8>>,
    plan_vcpu: Option<(VcpuPlan, u64)>,
    private_ranges: Vec<(u64, u64)>,
    id_block: Option<IdBlock>,
    id_block_ld: Option<[u8; 48]>,
    /// Guest pages claimed by page data, parameter inserts and the VMSA.
    claims: PageClaims,
}

impl Builder<'_> {
    fn err(&self, index: usize, what: &str, reason: String) -> TeeError {
        TeeError::igvm(self.name, format!("directive {index} ({what}): {reason}"))
    }

    /// Claims the pages of one directive (see [`PageClaims`]).
    fn claim(
        &mut self,
        index: usize,
        kind: &'static str,
        gpa: u64,
        len: u64,
    ) -> Result<(), TeeError> {
        self.claims
            .claim(PageClaim {
                index,
                kind,
                gpa,
                len,
            })
            .map_err(|why| TeeError::igvm(self.name, why))
    }

    /// Appends a range, merging it into the previous one when contiguous and of the same type.
    fn push(&mut self, gpa: u64, len: u64, page_type: PageType, data: PageBuf) {
        if let Some(last) = self.ranges.last_mut() {
            let both_zero = page_type == PageType::Zero && last.data.is_empty();
            let both_data = !data.is_empty() && last.data.len() as u64 == last.len;
            if last.page_type == page_type && last.gpa + last.len == gpa && (both_zero || both_data)
            {
                let mut merged = last.data.as_bytes().to_vec();
                merged.extend_from_slice(data.as_bytes());
                last.data = PageBuf::from_bytes(&merged);
                last.len += len;
                return;
            }
        }
        self.ranges.push(PlanRange {
            gpa,
            len,
            page_type,
            data,
        });
    }

    fn check_before_vmsa(&self, index: usize, what: &str) -> Result<(), TeeError> {
        if self.plan_vcpu.is_some() {
            return Err(self.err(
                index,
                what,
                "comes after the VMSA; rule: the VMSA must be the last page directive".into(),
            ));
        }
        Ok(())
    }

    fn directive(&mut self, index: usize, d: &IgvmDirectiveHeader) -> Result<(), TeeError> {
        match d {
            IgvmDirectiveHeader::PageData {
                gpa,
                flags,
                data_type,
                data,
                ..
            } => {
                self.check_before_vmsa(index, "PAGE_DATA")?;
                let page_len = page_data_size(*gpa, flags.is_2mb_page(), data.len())
                    .map_err(|why| self.err(index, "PAGE_DATA", why))?;
                self.claim(index, "PAGE_DATA", *gpa, page_len)?;
                if flags.shared() {
                    return Ok(());
                }
                let page_type = match *data_type {
                    IgvmPageDataType::SECRETS => PageType::Secrets,
                    IgvmPageDataType::CPUID_DATA | IgvmPageDataType::CPUID_XF => PageType::Cpuid,
                    _ if flags.unmeasured() => PageType::Unmeasured,
                    _ => PageType::Normal,
                };
                let mut buf = PageBuf::zeroed((page_len / PAGE_4K) as usize);
                if page_type != PageType::Secrets {
                    buf.as_mut_bytes()[..data.len()].copy_from_slice(data);
                }
                self.push(*gpa, page_len, page_type, buf);
            }
            IgvmDirectiveHeader::ParameterArea {
                number_of_bytes,
                parameter_area_index,
                initial_data,
            } => {
                if *number_of_bytes == 0
                    || number_of_bytes % PAGE_4K != 0
                    || *number_of_bytes > 1 << 30
                    || initial_data.len() as u64 > *number_of_bytes
                {
                    return Err(self.err(
                        index,
                        "PARAMETER_AREA",
                        format!(
                            "area {parameter_area_index} has size {number_of_bytes:#x} and {} bytes \
                             of initial data",
                            initial_data.len()
                        ),
                    ));
                }
                let mut area = vec![0u8; *number_of_bytes as usize];
                area[..initial_data.len()].copy_from_slice(initial_data);
                self.areas.insert(*parameter_area_index, area);
            }
            IgvmDirectiveHeader::VpCount(_)
            | IgvmDirectiveHeader::CommandLine(_)
            | IgvmDirectiveHeader::MemoryMap(_)
            | IgvmDirectiveHeader::EnvironmentInfo(_) => {
                if let Some((what, p, bytes)) = usage_bytes(d, self.inputs.vcpus, self.params) {
                    self.write_param(index, what, p.parameter_area_index, p.byte_offset, &bytes)?;
                }
            }
            IgvmDirectiveHeader::Madt(_)
            | IgvmDirectiveHeader::Srat(_)
            | IgvmDirectiveHeader::Slit(_)
            | IgvmDirectiveHeader::Pptt(_)
            | IgvmDirectiveHeader::MmioRanges(_)
            | IgvmDirectiveHeader::DeviceTree(_) => {
                tracing::warn!(
                    file = self.name,
                    directive = index,
                    "IGVM parameter not supplied by cvmm for SEV-SNP (left as the area's \
                     initial data)"
                );
            }
            IgvmDirectiveHeader::ParameterInsert(ins) => {
                self.check_before_vmsa(index, "PARAMETER_INSERT")?;
                let area = self
                    .areas
                    .remove(&ins.parameter_area_index)
                    .ok_or_else(|| {
                        self.err(
                            index,
                            "PARAMETER_INSERT",
                            format!("unknown parameter area {}", ins.parameter_area_index),
                        )
                    })?;
                if ins.gpa % PAGE_4K != 0 {
                    return Err(self.err(
                        index,
                        "PARAMETER_INSERT",
                        format!("gpa {:#x} is not 4 KiB-aligned", ins.gpa),
                    ));
                }
                let len = area.len() as u64;
                self.claim(index, "PARAMETER_INSERT", ins.gpa, len)?;
                self.push(
                    ins.gpa,
                    len,
                    PageType::Unmeasured,
                    PageBuf::from_bytes(&area),
                );
            }
            IgvmDirectiveHeader::RequiredMemory {
                gpa,
                number_of_bytes,
                ..
            } => self.private_ranges.push((*gpa, *number_of_bytes as u64)),
            IgvmDirectiveHeader::SnpVpContext {
                gpa,
                vp_index,
                vmsa,
                ..
            } => self.vp_context(index, *gpa, *vp_index, vmsa.as_bytes())?,
            IgvmDirectiveHeader::SnpIdBlock { .. } => self.id_block(d),
            // Measurement-only and error-reporting directives need no launch action.
            _ => {}
        }
        Ok(())
    }

    fn write_param(
        &mut self,
        index: usize,
        what: &str,
        area: u32,
        offset: u32,
        bytes: &[u8],
    ) -> Result<(), TeeError> {
        let name = self.name;
        let buf = self.areas.get_mut(&area).ok_or_else(|| {
            TeeError::igvm(
                name,
                format!("directive {index} ({what}): unknown parameter area {area}"),
            )
        })?;
        let size = buf.len();
        let slot = (offset as usize)
            .checked_add(bytes.len())
            .and_then(|end| buf.get_mut(offset as usize..end))
            .ok_or_else(|| {
                TeeError::igvm(
                    name,
                    format!(
                        "directive {index} ({what}): {} bytes at offset {offset:#x} are outside \
                         area {area} of {size:#x} bytes",
                        bytes.len()
                    ),
                )
            })?;
        slot.copy_from_slice(bytes);
        Ok(())
    }

    /// Applies the §7.2 rules and turns the VMSA into vCPU 0's register state.
    fn vp_context(&mut self, index: usize, gpa: u64, vp: u16, vmsa: &[u8]) -> Result<(), TeeError> {
        let what = "SNP_VP_CONTEXT";
        if self.plan_vcpu.is_some() {
            return Err(self.err(index, what, "rule: only one VMSA (vp 0) is allowed".into()));
        }
        if vp != 0 {
            return Err(self.err(
                index,
                what,
                format!("rule: VMSA must be for vp 0, not vp {vp}"),
            ));
        }
        if gpa != VMSA_GPA {
            return Err(self.err(
                index,
                what,
                format!("rule: VMSA gpa must be {VMSA_GPA:#x}, not {gpa:#x}"),
            ));
        }
        let (regs, sev_features) = regs_from_vmsa(vmsa)?;
        if regs.cr0 != 0x30 && regs.cr0 != 0x31 {
            return Err(self.err(
                index,
                what,
                format!(
                    "rule: CR0 must be 0x30 or 0x31 (KVM overrides it), not {:#x}",
                    regs.cr0
                ),
            ));
        }
        let allowed = self.inputs.guest_features | SEV_FEATURE_SNP_ACTIVE;
        if sev_features & SEV_FEATURE_SNP_ACTIVE == 0 || sev_features & !allowed != 0 {
            return Err(self.err(
                index,
                what,
                format!(
                    "rule: sev_features {sev_features:#x} must be SNP_ACTIVE plus a subset of the \
                     INIT2 vmsa_features {allowed:#x}"
                ),
            ));
        }
        self.claim(index, what, gpa, PAGE_4K)?;
        let mut page = Box::new([0u8; 4096]);
        page[..vmsa.len().min(4096)].copy_from_slice(&vmsa[..vmsa.len().min(4096)]);
        self.plan_vcpu = Some((VcpuPlan { regs, vmsa: page }, sev_features));
        Ok(())
    }

    fn id_block(&mut self, d: &IgvmDirectiveHeader) {
        let IgvmDirectiveHeader::SnpIdBlock {
            author_key_enabled,
            ld,
            family_id,
            image_id,
            version,
            guest_svn,
            id_key_algorithm,
            author_key_algorithm,
            id_key_signature,
            id_public_key,
            author_key_signature,
            author_public_key,
            ..
        } = d
        else {
            return;
        };
        let _ = version; // The firmware ABI fixes the ID block version at 1.
        let mut block = [0u8; 96];
        block[..48].copy_from_slice(ld);
        block[48..64].copy_from_slice(family_id);
        block[64..80].copy_from_slice(image_id);
        block[80..84].copy_from_slice(&1u32.to_le_bytes());
        block[84..88].copy_from_slice(&guest_svn.to_le_bytes());
        // The policy (bytes 88..96) is set by `plan_from_igvm` from GUEST_POLICY.
        let mut auth = Box::new([0u8; 4096]);
        auth[0..4].copy_from_slice(&id_key_algorithm.to_le_bytes());
        auth[4..8].copy_from_slice(&author_key_algorithm.to_le_bytes());
        let sig = |auth: &mut [u8], at: usize, s: &igvm_defs::IGVM_VHS_SNP_ID_BLOCK_SIGNATURE| {
            auth[at..at + 72].copy_from_slice(&s.r_comp);
            auth[at + 72..at + 144].copy_from_slice(&s.s_comp);
        };
        let key = |auth: &mut [u8], at: usize, k: &igvm_defs::IGVM_VHS_SNP_ID_BLOCK_PUBLIC_KEY| {
            auth[at..at + 4].copy_from_slice(&k.curve.to_le_bytes());
            auth[at + 4..at + 76].copy_from_slice(&k.qx);
            auth[at + 76..at + 148].copy_from_slice(&k.qy);
        };
        sig(&mut auth[..], 0x40, id_key_signature);
        key(&mut auth[..], 0x240, id_public_key);
        if *author_key_enabled != 0 {
            sig(&mut auth[..], 0x680, author_key_signature);
            key(&mut auth[..], 0x880, author_public_key);
        }
        self.id_block_ld = Some(*ld);
        self.id_block = Some(IdBlock {
            block,
            auth,
            author_key_enabled: *author_key_enabled != 0,
        });
    }
}

/// Writes the guest policy into an ID block (bytes 88..96).
pub fn set_id_block_policy(block: &mut [u8; 96], policy: u64) {
    block[88..96].copy_from_slice(&policy.to_le_bytes());
}

#[cfg(test)]
#[path = "igvm_tests.rs"]
pub(crate) mod tests;

/// Parses an IGVM file for `isolation`. The igvm crate can panic on hostile input (a zero
/// relocation alignment divides by zero; bad offsets overflow), so a panic in the parser is
/// turned into an error naming the file instead of taking the VMM down.
pub fn parse_file(
    name: &str,
    data: &[u8],
    isolation: igvm::IsolationType,
) -> Result<IgvmFile, TeeError> {
    let parsed = std::panic::catch_unwind(|| IgvmFile::new_from_binary(data, Some(isolation)));
    match parsed {
        Ok(Ok(f)) => Ok(f),
        Ok(Err(e)) => Err(TeeError::igvm(
            name,
            format!("cannot parse ({} bytes): {e}", data.len()),
        )),
        Err(_) => Err(TeeError::igvm(
            name,
            format!(
                "malformed ({} bytes): the IGVM parser rejected inconsistent headers",
                data.len()
            ),
        )),
    }
}

#[cfg(test)]
mod fuzz_regressions {
    use super::*;

    /// Inputs the fuzzer found that made the igvm crate panic.
    const CRASHES: &[&[u8]] = &[
        include_bytes!(
            "../../fuzz/artifacts-found/igvm_parse/crash-2f3206015e829dc4b5e09170020dd527d98e5282"
        ),
        include_bytes!(
            "../../fuzz/artifacts-found/igvm_parse/crash-839b5ee11dfca9162a94a158a7dadb7a57d8ab87"
        ),
        include_bytes!(
            "../../fuzz/artifacts-found/igvm_parse/crash-fd89e68c397a96bca84cf219afb7a7456ed9bd66"
        ),
    ];

    #[test]
    fn crashing_inputs_become_errors_naming_the_file() {
        for (i, data) in CRASHES.iter().enumerate() {
            for iso in [igvm::IsolationType::Snp, igvm::IsolationType::Tdx] {
                let e = parse_file("fuzz.igvm", data, iso).expect_err("rejected");
                assert!(e.to_string().contains("fuzz.igvm"), "input {i}: {e}");
            }
        }
    }
}
