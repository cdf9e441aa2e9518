//! TDVF (OVMF built for Intel TDX) metadata (spec §6.1): the footer-table entry
//! `e47a6535-…` gives the offset from the end of the image to a "TDVF" descriptor followed by
//! 32-byte section records. Each section says where a part of the image (BFV, CFV) or a
//! VMM-provided range (TD_HOB, TEMP_MEM, …) goes, and whether the TDX module measures it.
//!
//! Parsing never panics: every field is checked and a bad one is reported with the image name,
//! the section index and the value seen.

use crate::ovmf::{Ovmf, PAGE_SIZE, TDX_METADATA_GUID};
use crate::plan::PageBuf;
use crate::TeeError;

/// Section attribute: the TDX module extends MRTD with the contents (`TDH.MR.EXTEND`).
pub const TDVF_ATTR_MR_EXTEND: u32 = 1 << 0;
/// Section attribute: no `TDH.MEM.PAGE.ADD`; the guest accepts the pages later.
pub const TDVF_ATTR_PAGE_AUG: u32 = 1 << 1;

/// Length of the "TDVF" descriptor header and of one section record.
const DESCRIPTOR_LEN: usize = 16;
const SECTION_LEN: usize = 32;
/// Largest section cvmm accepts: the launch allocates a buffer of this size per section.
pub const MAX_SECTION_SIZE: u64 = 256 << 20;

/// Type of a TDVF section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TdvfSectionKind {
    /// 0: boot firmware volume (code), from the image.
    Bfv,
    /// 1: configuration firmware volume (variables), from the image.
    Cfv,
    /// 2: the TD HOB the VMM writes; its GPA is the initial RCX.
    TdHob,
    /// 3: temporary memory the firmware uses before it accepts RAM.
    TempMem,
    /// 4: permanent memory.
    PermMem,
    /// 5: a payload (kernel) image.
    Payload,
    /// 6: the payload's parameters.
    PayloadParam,
}

impl TdvfSectionKind {
    fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Self::Bfv,
            1 => Self::Cfv,
            2 => Self::TdHob,
            3 => Self::TempMem,
            4 => Self::PermMem,
            5 => Self::Payload,
            6 => Self::PayloadParam,
            _ => return None,
        })
    }

    /// Whether the section's bytes come from the firmware image.
    pub fn from_image(self) -> bool {
        matches!(self, Self::Bfv | Self::Cfv)
    }
}

/// One TDVF section record, in metadata order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdvfSection {
    /// Offset of the section's data in the image (BFV/CFV).
    pub data_offset: u32,
    /// Bytes of data in the image; the rest of `mem_size` is zero.
    pub raw_size: u32,
    pub gpa: u64,
    pub mem_size: u64,
    pub kind: TdvfSectionKind,
    pub attributes: u32,
}

impl TdvfSection {
    /// Whether the contents are measured into MRTD.
    pub fn mr_extend(&self) -> bool {
        self.attributes & TDVF_ATTR_MR_EXTEND != 0
    }

    /// Whether the pages are added later by the guest (no `PAGE.ADD`, not in MRTD).
    pub fn page_aug(&self) -> bool {
        self.attributes & TDVF_ATTR_PAGE_AUG != 0
    }

    /// Number of 4 KiB pages.
    pub fn pages(&self) -> u64 {
        self.mem_size / PAGE_SIZE as u64
    }
}

/// The TDX metadata of a TDVF image.
#[derive(Debug, Clone)]
pub struct Tdvf<'a> {
    name: String,
    image: &'a [u8],
    sections: Vec<TdvfSection>,
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from(le_u32(b, at)) | u64::from(le_u32(b, at + 4)) << 32
}

impl<'a> Tdvf<'a> {
    /// Parses the TDX metadata of `image`, named `name` in errors.
    pub fn parse(name: &str, image: &'a [u8]) -> Result<Self, TeeError> {
        let err = |reason: String| TeeError::ovmf(name, reason);
        let ovmf = Ovmf::parse(name, image)?;
        let entry = ovmf.entry(&TDX_METADATA_GUID).ok_or_else(|| {
            err(format!(
                "no TDX metadata (footer entry {TDX_METADATA_GUID}); not a TDVF image"
            ))
        })?;
        if entry.len() < 4 {
            return Err(err(format!(
                "TDX metadata entry is {} bytes, need 4",
                entry.len()
            )));
        }
        let from_end = le_u32(entry, 0) as usize;
        let start = image
            .len()
            .checked_sub(from_end)
            .filter(|s| s + DESCRIPTOR_LEN <= image.len())
            .ok_or_else(|| {
                err(format!(
                    "TDX metadata offset {from_end:#x} from the end is outside the {:#x}-byte image",
                    image.len()
                ))
            })?;
        let desc = &image[start..start + DESCRIPTOR_LEN];
        if &desc[..4] != b"TDVF" {
            return Err(err(format!(
                "TDX metadata signature {:02x?} at {start:#x} is not \"TDVF\"",
                &desc[..4]
            )));
        }
        let (len, version, count) = (
            le_u32(desc, 4) as usize,
            le_u32(desc, 8),
            le_u32(desc, 12) as usize,
        );
        if version != 1 {
            return Err(err(format!("TDX metadata version {version} is not 1")));
        }
        let needed = count
            .checked_mul(SECTION_LEN)
            .and_then(|n| n.checked_add(DESCRIPTOR_LEN));
        if count == 0 || needed.is_none_or(|n| n > len) || len > image.len() - start {
            return Err(err(format!(
                "TDX metadata length {len:#x} at {start:#x} does not hold {count} sections"
            )));
        }
        let sections = (0..count)
            .map(|i| parse_section(name, image, start + DESCRIPTOR_LEN + i * SECTION_LEN, i))
            .collect::<Result<Vec<_>, _>>()?;
        check_layout(name, &sections)?;
        tracing::debug!(
            image = name,
            sections = sections.len(),
            "parsed TDVF metadata"
        );
        Ok(Tdvf {
            name: name.to_string(),
            image,
            sections,
        })
    }

    /// The image name given to [`Tdvf::parse`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sections in metadata order.
    pub fn sections(&self) -> &[TdvfSection] {
        &self.sections
    }

    /// The TD_HOB section, if the firmware asks for one.
    pub fn td_hob(&self) -> Option<&TdvfSection> {
        self.sections
            .iter()
            .find(|s| s.kind == TdvfSectionKind::TdHob)
    }

    /// Initial contents of a section: the image bytes for BFV/CFV, zero-padded to `mem_size`;
    /// zeros for every VMM-provided section.
    pub fn section_data(&self, s: &TdvfSection) -> PageBuf {
        let mut data = PageBuf::zeroed(s.pages() as usize);
        if s.kind.from_image() {
            let (at, len) = (s.data_offset as usize, s.raw_size as usize);
            // Bounds were checked by parse.
            data.as_mut_bytes()[..len].copy_from_slice(&self.image[at..at + len]);
        }
        data
    }
}

fn parse_section(name: &str, image: &[u8], at: usize, i: usize) -> Result<TdvfSection, TeeError> {
    let err = |reason: String| TeeError::ovmf(name, format!("TDVF section {i}: {reason}"));
    let raw_kind = le_u32(image, at + 24);
    let kind = TdvfSectionKind::from_raw(raw_kind)
        .ok_or_else(|| err(format!("unknown type {raw_kind:#x}")))?;
    let s = TdvfSection {
        data_offset: le_u32(image, at),
        raw_size: le_u32(image, at + 4),
        gpa: le_u64(image, at + 8),
        mem_size: le_u64(image, at + 16),
        kind,
        attributes: le_u32(image, at + 28),
    };
    let page = PAGE_SIZE as u64;
    if s.attributes & !(TDVF_ATTR_MR_EXTEND | TDVF_ATTR_PAGE_AUG) != 0 {
        return Err(err(format!(
            "({kind:?}) unknown attributes {:#x}",
            s.attributes
        )));
    }
    if s.mem_size == 0
        || (s.gpa | s.mem_size) & (page - 1) != 0
        || s.gpa.checked_add(s.mem_size).is_none()
    {
        return Err(err(format!(
            "({kind:?}) gpa {:#x} size {:#x} is not a non-empty 4 KiB-aligned range",
            s.gpa, s.mem_size
        )));
    }
    if s.mem_size > MAX_SECTION_SIZE {
        return Err(err(format!(
            "({kind:?}) size {:#x} exceeds the {MAX_SECTION_SIZE:#x}-byte limit",
            s.mem_size
        )));
    }
    if u64::from(s.raw_size) > s.mem_size {
        return Err(err(format!(
            "({kind:?}) raw size {:#x} exceeds memory size {:#x}",
            s.raw_size, s.mem_size
        )));
    }
    let data_end = s.data_offset as usize + s.raw_size as usize;
    if kind.from_image() && (s.raw_size == 0 || data_end > image.len()) {
        return Err(err(format!(
            "({kind:?}) data {:#x}+{:#x} is empty or outside the {:#x}-byte image",
            s.data_offset,
            s.raw_size,
            image.len()
        )));
    }
    if matches!(kind, TdvfSectionKind::TdHob | TdvfSectionKind::TempMem) && s.raw_size != 0 {
        return Err(err(format!(
            "({kind:?}) has raw size {:#x}; VMM-provided sections carry no image data",
            s.raw_size
        )));
    }
    if kind == TdvfSectionKind::TdHob && (s.page_aug() || s.mr_extend()) {
        return Err(err(format!(
            "(TdHob) attributes {:#x}: the TD HOB must be added and not measured",
            s.attributes
        )));
    }
    Ok(s)
}

/// Rejects overlapping sections and more than one TD_HOB.
fn check_layout(name: &str, sections: &[TdvfSection]) -> Result<(), TeeError> {
    let hobs = sections
        .iter()
        .filter(|s| s.kind == TdvfSectionKind::TdHob)
        .count();
    if hobs > 1 {
        return Err(TeeError::ovmf(
            name,
            format!("TDVF metadata has {hobs} TD_HOB sections, at most 1 allowed"),
        ));
    }
    for (i, a) in sections.iter().enumerate() {
        for (j, b) in sections.iter().enumerate().skip(i + 1) {
            if a.gpa < b.gpa + b.mem_size && b.gpa < a.gpa + a.mem_size {
                return Err(TeeError::ovmf(
                    name,
                    format!(
                        "TDVF sections {i} ({:?} {:#x}+{:#x}) and {j} ({:?} {:#x}+{:#x}) overlap",
                        a.kind, a.gpa, a.mem_size, b.kind, b.gpa, b.mem_size
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "tdvf_tests.rs"]
mod tests;
