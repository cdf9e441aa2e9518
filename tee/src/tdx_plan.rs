//! The TDX launch plan: the ordered list of `KVM_TDX_INIT_MEM_REGION` ranges (GPA, page-aligned
//! source bytes, measure flag) built once from a TDVF image or a TDX-platform IGVM file. `cvmm
//! measure --mode tdx` hashes it ([`TdxPlan::mrtd`]); [`crate::tdx::TdxLauncher`] issues it.

use std::collections::HashMap;

use igvm::{IgvmDirectiveHeader, IgvmPlatformHeader};
use igvm_defs::IgvmPlatformType;

use crate::igvm::{PageClaim, PageClaims};
use crate::mrtd::Mrtd;
use crate::plan::PageBuf;
use crate::tdvf::{Tdvf, TdvfSectionKind};
use crate::TeeError;

const PAGE: u64 = 4096;
const PAGE_2M: u64 = 2 << 20;
/// Largest IGVM parameter area cvmm accepts.
const MAX_PARAMETER_AREA: u64 = 16 << 20;

/// Where a region's contents come from (for logs and errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionOrigin {
    /// A TDVF section of this kind.
    Tdvf(TdvfSectionKind),
    /// IGVM page data.
    IgvmPage,
    /// An IGVM parameter area (filled by the VMM, not measured).
    IgvmParameter,
}

/// One `KVM_TDX_INIT_MEM_REGION` range.
#[derive(Debug, Clone)]
pub struct TdxRegion {
    pub gpa: u64,
    /// Source contents, a whole number of pages.
    pub data: PageBuf,
    /// `KVM_TDX_MEASURE_MEMORY_REGION`: extend MRTD with the contents.
    pub measure: bool,
    pub origin: RegionOrigin,
}

impl TdxRegion {
    pub fn pages(&self) -> u64 {
        (self.data.len() as u64) / PAGE
    }

    pub fn end(&self) -> u64 {
        self.gpa + self.data.len() as u64
    }
}

/// A region while the IGVM plan is built (plain bytes, cheap to extend).
struct RawRegion {
    gpa: u64,
    data: Vec<u8>,
    measure: bool,
    origin: RegionOrigin,
}

/// Appends a range, merging it into the previous one when contiguous with the same flag and
/// origin (the MRTD does not depend on how pages are grouped into calls).
fn push(raw: &mut Vec<RawRegion>, gpa: u64, data: Vec<u8>, measure: bool, origin: RegionOrigin) {
    if let Some(last) = raw.last_mut() {
        let end = last.gpa + last.data.len() as u64;
        if end == gpa && last.measure == measure && last.origin == origin {
            last.data.extend_from_slice(&data);
            return;
        }
    }
    raw.push(RawRegion {
        gpa,
        data,
        measure,
        origin,
    });
}

/// Everything the TDX launch issues that the MRTD depends on, plus the TD HOB location.
#[derive(Debug, Clone, Default)]
pub struct TdxPlan {
    /// Ranges in issue order (TDVF metadata order / IGVM file order).
    pub regions: Vec<TdxRegion>,
    /// Index in `regions` of the TD_HOB section; its GPA is every vCPU's initial RCX.
    pub hob: Option<usize>,
    /// PAGE_AUG sections `(gpa, size)`: private memory the guest accepts itself.
    pub augmented: Vec<(u64, u64)>,
}

impl TdxPlan {
    /// The plan of a TDVF image: every non-PAGE_AUG section in metadata order.
    pub fn from_tdvf(name: &str, image: &[u8]) -> Result<Self, TeeError> {
        let tdvf = Tdvf::parse(name, image)?;
        let mut plan = TdxPlan::default();
        for (i, s) in tdvf.sections().iter().enumerate() {
            if s.page_aug() {
                plan.augmented.push((s.gpa, s.mem_size));
                continue;
            }
            if matches!(
                s.kind,
                TdvfSectionKind::Payload | TdvfSectionKind::PayloadParam
            ) {
                return Err(TeeError::ovmf(
                    name,
                    format!(
                        "TDVF section {i} ({:?}) needs a payload, which cvmm does not load",
                        s.kind
                    ),
                ));
            }
            if s.kind == TdvfSectionKind::TdHob {
                plan.hob = Some(plan.regions.len());
            }
            plan.regions.push(TdxRegion {
                gpa: s.gpa,
                data: tdvf.section_data(s),
                measure: s.mr_extend(),
                origin: RegionOrigin::Tdvf(s.kind),
            });
        }
        Ok(plan)
    }

    /// The plan of a TDX-platform IGVM file: every non-shared page, in file order (measured
    /// unless flagged `unmeasured`), and every parameter-area insert as unmeasured pages.
    pub fn from_igvm(name: &str, data: &[u8]) -> Result<Self, TeeError> {
        let err = |reason: String| TeeError::igvm(name, reason);
        let file = crate::igvm::parse_file(name, data, igvm::IsolationType::Tdx)?;
        let mask = file
            .platforms()
            .iter()
            .find_map(|p| match p {
                IgvmPlatformHeader::SupportedPlatform(sp)
                    if sp.platform_type == IgvmPlatformType::TDX =>
                {
                    Some(sp.compatibility_mask)
                }
                _ => None,
            })
            .ok_or_else(|| err("no TDX platform header".into()))?;
        let mut raw: Vec<RawRegion> = Vec::new();
        let mut areas: HashMap<u32, u64> = HashMap::new();
        let mut claims = PageClaims::default();
        let mut claim = |index: usize, kind: &'static str, gpa: u64, len: u64| {
            claims
                .claim(PageClaim {
                    index,
                    kind,
                    gpa,
                    len,
                })
                .map_err(|why| TeeError::igvm(name, why))
        };
        for (index, d) in file.directives().iter().enumerate() {
            if d.compatibility_mask().is_some_and(|m| m & mask == 0) {
                continue;
            }
            let derr = |what: &str, reason: String| {
                TeeError::igvm(name, format!("directive {index} ({what}): {reason}"))
            };
            match d {
                IgvmDirectiveHeader::PageData {
                    gpa, flags, data, ..
                } => {
                    let len = if flags.is_2mb_page() { PAGE_2M } else { PAGE };
                    if gpa % len != 0 || data.len() as u64 > len || gpa.checked_add(len).is_none() {
                        return Err(derr(
                            "PAGE_DATA",
                            format!(
                                "gpa {gpa:#x} with {} data bytes is not a {len:#x}-byte page",
                                data.len()
                            ),
                        ));
                    }
                    claim(index, "PAGE_DATA", *gpa, len)?;
                    if !flags.shared() {
                        let mut page = data.clone();
                        page.resize(len as usize, 0);
                        push(
                            &mut raw,
                            *gpa,
                            page,
                            !flags.unmeasured(),
                            RegionOrigin::IgvmPage,
                        );
                    }
                }
                IgvmDirectiveHeader::ParameterArea {
                    number_of_bytes,
                    parameter_area_index,
                    ..
                } => {
                    let n = *number_of_bytes;
                    if n == 0 || n % PAGE != 0 || n > MAX_PARAMETER_AREA {
                        return Err(derr(
                            "PARAMETER_AREA",
                            format!("size {n:#x} is not a multiple of 4 KiB up to {MAX_PARAMETER_AREA:#x}"),
                        ));
                    }
                    areas.insert(*parameter_area_index, n);
                }
                IgvmDirectiveHeader::ParameterInsert(p) => {
                    let size = *areas.get(&p.parameter_area_index).ok_or_else(|| {
                        derr(
                            "PARAMETER_INSERT",
                            format!("unknown parameter area {}", p.parameter_area_index),
                        )
                    })?;
                    if p.gpa % PAGE != 0 || p.gpa.checked_add(size).is_none() {
                        return Err(derr(
                            "PARAMETER_INSERT",
                            format!("gpa {:#x} is not page-aligned", p.gpa),
                        ));
                    }
                    claim(index, "PARAMETER_INSERT", p.gpa, size)?;
                    let zeros = vec![0; size as usize];
                    push(&mut raw, p.gpa, zeros, false, RegionOrigin::IgvmParameter);
                }
                other => tracing::debug!(
                    file = name,
                    index,
                    directive = ?std::mem::discriminant(other),
                    "IGVM directive has no TDX launch action"
                ),
            }
        }
        if raw.is_empty() {
            return Err(err("no page data for the TDX platform".into()));
        }
        let regions = raw
            .into_iter()
            .map(|r| TdxRegion {
                gpa: r.gpa,
                data: PageBuf::from_bytes(&r.data),
                measure: r.measure,
                origin: r.origin,
            })
            .collect();
        Ok(TdxPlan {
            regions,
            ..Default::default()
        })
    }

    /// GPA of the TD HOB (the initial RCX of every vCPU), 0 when the plan has none.
    pub fn hob_gpa(&self) -> u64 {
        self.hob.map_or(0, |i| self.regions[i].gpa)
    }

    /// `(gpa, size)` of every range `INIT_MEM_REGION` adds: accepted memory for the TD HOB.
    pub fn added_ranges(&self) -> Vec<(u64, u64)> {
        self.regions
            .iter()
            .map(|r| (r.gpa, r.data.len() as u64))
            .collect()
    }

    /// The MRTD the TDX module computes for this plan.
    pub fn mrtd(&self) -> [u8; 48] {
        let mut m = Mrtd::new();
        for r in &self.regions {
            m.add_range(r.gpa, r.pages(), r.data.as_bytes(), r.measure);
        }
        m.value()
    }
}
