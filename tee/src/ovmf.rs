//! OVMF firmware parsing for SEV-SNP launches (spec tee-launch.md §8.2, §9): the GUIDed footer
//! table at the end of the image, the "ASEV" SEV metadata sections, the SEV-ES reset block (AP
//! reset EIP) and the SEV hashes table that carries the kernel/initrd/cmdline hashes.
//!
//! Parsing never panics: every offset read from the image is bounds-checked and a bad value is
//! reported with the image name, the field and the value seen.

use sha2::{Digest, Sha256};

use crate::TeeError;

/// Size of one guest page.
pub const PAGE_SIZE: usize = 4096;

/// A GUID in its on-disk (mixed-endian, "bytes_le") byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// Builds the GUID `d1-d2-d3-d4[0..2]-d4[2..8]` in on-disk order.
    pub const fn new(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Self {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid([
            a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4],
            d4[5], d4[6], d4[7],
        ])
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = &self.0;
        let d1 = u32::from_le_bytes([g[0], g[1], g[2], g[3]]);
        let d2 = u16::from_le_bytes([g[4], g[5]]);
        let d3 = u16::from_le_bytes([g[6], g[7]]);
        write!(f, "{d1:08x}-{d2:04x}-{d3:04x}-{:02x}{:02x}-", g[8], g[9])?;
        g[10..].iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// `96b582de-1fb2-45f7-baea-a366c55a082d`: the footer entry that closes the GUIDed table.
pub const FOOTER_TABLE_GUID: Guid = Guid::new(
    0x96b582de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);
/// `dc886566-984a-4798-a75e-5585a7bf67cc`: offset from the end of the image to "ASEV".
pub const SEV_METADATA_GUID: Guid = Guid::new(
    0xdc886566,
    0x984a,
    0x4798,
    [0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc],
);
/// `00f771de-1a7e-4fcb-890e-68c77e2fb44e`: SEV-ES reset block (u32 AP reset EIP).
pub const SEV_ES_RESET_BLOCK_GUID: Guid = Guid::new(
    0x00f771de,
    0x1a7e,
    0x4fcb,
    [0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e],
);
/// `7255371f-3a3b-4b04-927b-1da6efa8d454`: SEV hashes table location (u32 gpa, u32 size).
pub const SEV_HASH_TABLE_GUID: Guid = Guid::new(
    0x7255371f,
    0x3a3b,
    0x4b04,
    [0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54],
);
/// `e47a6535-984a-4798-865e-4685a7bf8ec2`: TDX (TDVF) metadata offset.
pub const TDX_METADATA_GUID: Guid = Guid::new(
    0xe47a6535,
    0x984a,
    0x4798,
    [0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2],
);

/// Bytes between the end of the footer entry and the end of the image.
const FOOTER_GAP: usize = 32;
/// `u16 size` + GUID of a footer-table entry.
const ENTRY_HEADER: usize = 18;

/// Kind of an SEV metadata section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SevSectionKind {
    /// 1: memory OVMF expects pre-validated (launched as ZERO pages by QEMU-type VMMs).
    SnpSecMem,
    /// 2: the SNP secrets page.
    SnpSecrets,
    /// 3: the CPUID page.
    Cpuid,
    /// 4: the SVSM calling-area page.
    SvsmCaa,
    /// 0x10: the page holding the SEV hashes table (AmdSev builds only).
    SnpKernelHashes,
}

impl SevSectionKind {
    fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            1 => Self::SnpSecMem,
            2 => Self::SnpSecrets,
            3 => Self::Cpuid,
            4 => Self::SvsmCaa,
            0x10 => Self::SnpKernelHashes,
            _ => return None,
        })
    }
}

/// One SEV metadata section: a guest-physical range and what the VMM must launch there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevSection {
    pub gpa: u32,
    pub size: u32,
    pub kind: SevSectionKind,
}

/// A parsed OVMF image: its footer-table entries and SEV metadata.
#[derive(Debug, Clone)]
pub struct Ovmf<'a> {
    name: String,
    data: &'a [u8],
    entries: Vec<(Guid, &'a [u8])>,
    sev_sections: Vec<SevSection>,
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    let bytes = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    let bytes = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes(bytes.try_into().ok()?))
}

impl<'a> Ovmf<'a> {
    /// Parses `data`, an OVMF image named `name` (used in errors). An image without the footer
    /// GUID has an empty table; a footer that is present but inconsistent is an error.
    pub fn parse(name: &str, data: &'a [u8]) -> Result<Self, TeeError> {
        let err = |reason: String| TeeError::ovmf(name, reason);
        if data.is_empty() || !data.len().is_multiple_of(PAGE_SIZE) {
            return Err(err(format!(
                "length {:#x} is not a non-zero multiple of 4 KiB",
                data.len()
            )));
        }
        if data.len() as u64 > 1 << 32 {
            return Err(err(format!(
                "length {:#x} does not fit below 4 GiB",
                data.len()
            )));
        }
        let mut ovmf = Ovmf {
            name: name.to_string(),
            data,
            entries: Vec::new(),
            sev_sections: Vec::new(),
        };
        ovmf.entries = parse_footer_table(data).map_err(err)?;
        ovmf.sev_sections = ovmf.parse_sev_metadata()?;
        tracing::debug!(
            image = name,
            entries = ovmf.entries.len(),
            sev_sections = ovmf.sev_sections.len(),
            "parsed OVMF footer table"
        );
        Ok(ovmf)
    }

    /// The image name given to [`Ovmf::parse`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The whole image.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Guest-physical load address: the image ends at 4 GiB.
    pub fn gpa(&self) -> u64 {
        (1u64 << 32) - self.data.len() as u64
    }

    /// Data of the footer-table entry with this GUID, if present.
    pub fn entry(&self, guid: &Guid) -> Option<&'a [u8]> {
        self.entries.iter().find(|(g, _)| g == guid).map(|e| e.1)
    }

    /// SEV metadata sections, in metadata order.
    pub fn sev_sections(&self) -> &[SevSection] {
        &self.sev_sections
    }

    /// Whether the SEV metadata has a section of this kind.
    pub fn has_section(&self, kind: SevSectionKind) -> bool {
        self.sev_sections.iter().any(|s| s.kind == kind)
    }

    /// The AP reset EIP from the SEV-ES reset block.
    pub fn sev_es_reset_eip(&self) -> Result<u32, TeeError> {
        let entry = self.entry(&SEV_ES_RESET_BLOCK_GUID).ok_or_else(|| {
            TeeError::ovmf(
                &self.name,
                format!("no SEV-ES reset block (footer entry {SEV_ES_RESET_BLOCK_GUID})"),
            )
        })?;
        read_u32(entry, 0).ok_or_else(|| {
            TeeError::ovmf(
                &self.name,
                format!("SEV-ES reset block is {} bytes, need 4", entry.len()),
            )
        })
    }

    /// `(gpa, size)` of the SEV hashes table, or `None` when absent or 0/0.
    pub fn sev_hashes_table(&self) -> Result<Option<(u32, u32)>, TeeError> {
        let Some(entry) = self.entry(&SEV_HASH_TABLE_GUID) else {
            return Ok(None);
        };
        match (read_u32(entry, 0), read_u32(entry, 4)) {
            (Some(0), _) => Ok(None),
            (Some(gpa), Some(size)) => Ok(Some((gpa, size))),
            _ => Err(TeeError::ovmf(
                &self.name,
                format!("SEV hashes-table entry is {} bytes, need 8", entry.len()),
            )),
        }
    }

    fn parse_sev_metadata(&self) -> Result<Vec<SevSection>, TeeError> {
        let err = |reason: String| TeeError::ovmf(&self.name, reason);
        let Some(entry) = self.entry(&SEV_METADATA_GUID) else {
            return Ok(Vec::new());
        };
        let from_end = read_u32(entry, 0)
            .ok_or_else(|| err(format!("SEV metadata entry is {} bytes", entry.len())))?;
        let start = self
            .data
            .len()
            .checked_sub(from_end as usize)
            .ok_or_else(|| {
                err(format!(
                    "SEV metadata offset {from_end:#x} is outside the image"
                ))
            })?;
        let header = self
            .data
            .get(start..start + 16)
            .ok_or_else(|| err(format!("SEV metadata header at {start:#x} is truncated")))?;
        if &header[..4] != b"ASEV" {
            return Err(err(format!(
                "SEV metadata signature {:02x?} is not \"ASEV\"",
                &header[..4]
            )));
        }
        let (len, version, count) = (
            read_u32(header, 4).unwrap_or(0) as usize,
            read_u32(header, 8).unwrap_or(0),
            read_u32(header, 12).unwrap_or(0) as usize,
        );
        if version != 1 {
            return Err(err(format!("SEV metadata version {version} is not 1")));
        }
        let needed = count.checked_mul(12).and_then(|n| n.checked_add(16));
        if needed.is_none_or(|n| n > len) || start + len > self.data.len() {
            return Err(err(format!(
                "SEV metadata length {len:#x} at {start:#x} does not hold {count} sections"
            )));
        }
        (0..count)
            .map(|i| {
                let at = start + 16 + i * 12;
                let (gpa, size, raw) = (
                    read_u32(self.data, at).unwrap_or(0),
                    read_u32(self.data, at + 4).unwrap_or(0),
                    read_u32(self.data, at + 8).unwrap_or(0),
                );
                let kind = SevSectionKind::from_raw(raw).ok_or_else(|| {
                    err(format!(
                        "SEV metadata section {i} has unknown type {raw:#x}"
                    ))
                })?;
                if gpa % PAGE_SIZE as u32 != 0
                    || size % PAGE_SIZE as u32 != 0
                    || gpa as u64 + size as u64 > 1 << 32
                {
                    return Err(err(format!(
                        "SEV metadata section {i} ({kind:?}) gpa {gpa:#x} size {size:#x} \
                         is not a 4 KiB-aligned range below 4 GiB"
                    )));
                }
                Ok(SevSection { gpa, size, kind })
            })
            .collect()
    }
}

/// Walks the GUIDed footer table backwards from its closing entry.
fn parse_footer_table(data: &[u8]) -> Result<Vec<(Guid, &[u8])>, String> {
    let Some(footer_at) = data.len().checked_sub(FOOTER_GAP + ENTRY_HEADER) else {
        return Ok(Vec::new());
    };
    if data[footer_at + 2..footer_at + ENTRY_HEADER] != FOOTER_TABLE_GUID.0 {
        return Ok(Vec::new());
    }
    let total = read_u16(data, footer_at).unwrap_or(0) as usize;
    let table_len = total
        .checked_sub(ENTRY_HEADER)
        .ok_or_else(|| format!("footer table size {total:#x} is smaller than its own entry"))?;
    let table_start = footer_at
        .checked_sub(table_len)
        .ok_or_else(|| format!("footer table size {total:#x} exceeds the image"))?;
    let mut table = &data[table_start..footer_at];
    let mut entries = Vec::new();
    while table.len() >= ENTRY_HEADER {
        let hdr = table.len() - ENTRY_HEADER;
        let size = read_u16(table, hdr).unwrap_or(0) as usize;
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&table[hdr + 2..]);
        let guid = Guid(guid);
        if size < ENTRY_HEADER || size > table.len() {
            return Err(format!(
                "footer entry {guid} has size {size:#x} (need {ENTRY_HEADER:#x}..={:#x})",
                table.len()
            ));
        }
        let entry_start = table.len() - size;
        entries.push((guid, &table[entry_start..hdr]));
        table = &table[..entry_start];
    }
    Ok(entries)
}

/// `9438d606-4f22-4cc9-b479-a793d411fd21`: header of the SEV hashes table.
pub const HASH_TABLE_HEADER_GUID: Guid = Guid::new(
    0x9438d606,
    0x4f22,
    0x4cc9,
    [0xb4, 0x79, 0xa7, 0x93, 0xd4, 0x11, 0xfd, 0x21],
);
/// `97d02dd8-bd20-4c94-aa78-e7714d36ab2a`: command-line entry.
pub const HASH_CMDLINE_GUID: Guid = Guid::new(
    0x97d02dd8,
    0xbd20,
    0x4c94,
    [0xaa, 0x78, 0xe7, 0x71, 0x4d, 0x36, 0xab, 0x2a],
);
/// `44baf731-3a2f-4bd7-9af1-41e29169781d`: initrd entry.
pub const HASH_INITRD_GUID: Guid = Guid::new(
    0x44baf731,
    0x3a2f,
    0x4bd7,
    [0x9a, 0xf1, 0x41, 0xe2, 0x91, 0x69, 0x78, 0x1d],
);
/// `4de79437-abd2-427f-b835-d5b172d2045b`: kernel entry.
pub const HASH_KERNEL_GUID: Guid = Guid::new(
    0x4de79437,
    0xabd2,
    0x427f,
    [0xb8, 0x35, 0xd5, 0xb1, 0x72, 0xd2, 0x04, 0x5b],
);

/// Unpadded size of the hashes table: header (18) + 3 entries of 50 bytes.
pub const HASH_TABLE_LEN: usize = 18 + 3 * 50;
/// Size of the table padded to a multiple of 16.
pub const HASH_TABLE_PADDED_LEN: usize = HASH_TABLE_LEN.div_ceil(16) * 16;

/// SHA-256 hashes of the direct-boot inputs, as OVMF verifies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SevHashes {
    pub kernel: [u8; 32],
    pub initrd: [u8; 32],
    pub cmdline: [u8; 32],
}

impl SevHashes {
    /// Hashes the bzImage, the initrd (empty if none) and the command line (NUL-terminated;
    /// a lone NUL if none).
    pub fn new(kernel: &[u8], initrd: Option<&[u8]>, cmdline: Option<&str>) -> Self {
        let mut cmd = cmdline.unwrap_or("").as_bytes().to_vec();
        cmd.push(0);
        SevHashes {
            kernel: Sha256::digest(kernel).into(),
            initrd: Sha256::digest(initrd.unwrap_or(&[])).into(),
            cmdline: Sha256::digest(&cmd).into(),
        }
    }

    /// The table padded to 16 bytes: header GUID, u16 length, then cmdline, initrd, kernel.
    pub fn table(&self) -> [u8; HASH_TABLE_PADDED_LEN] {
        let mut t = [0u8; HASH_TABLE_PADDED_LEN];
        t[..16].copy_from_slice(&HASH_TABLE_HEADER_GUID.0);
        t[16..18].copy_from_slice(&(HASH_TABLE_LEN as u16).to_le_bytes());
        let entries = [
            (HASH_CMDLINE_GUID, &self.cmdline),
            (HASH_INITRD_GUID, &self.initrd),
            (HASH_KERNEL_GUID, &self.kernel),
        ];
        for (i, (guid, hash)) in entries.iter().enumerate() {
            let at = 18 + i * 50;
            t[at..at + 16].copy_from_slice(&guid.0);
            t[at + 16..at + 18].copy_from_slice(&50u16.to_le_bytes());
            t[at + 18..at + 50].copy_from_slice(*hash);
        }
        t
    }

    /// One 4 KiB page holding the padded table at `offset` (the table gpa's page offset).
    pub fn page(&self, offset: usize) -> Result<Vec<u8>, TeeError> {
        if offset + HASH_TABLE_PADDED_LEN > PAGE_SIZE {
            return Err(TeeError::input(
                "SEV hashes table",
                format!("offset {offset:#x} leaves no room for the table in a 4 KiB page"),
            ));
        }
        let mut page = vec![0u8; PAGE_SIZE];
        page[offset..offset + HASH_TABLE_PADDED_LEN].copy_from_slice(&self.table());
        Ok(page)
    }
}

#[cfg(test)]
#[path = "ovmf_tests.rs"]
mod tests;
