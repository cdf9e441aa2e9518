//! What a VMM writes into IGVM parameter areas, shared by the SEV-SNP plan ([`crate::igvm`]) and
//! the native IGVM boot of the VMM: the memory map (`IGVM_VHS_MEMORY_MAP_ENTRY` list, sorted,
//! page granular, zero-terminated), the NUL-terminated command line, the vCPU count and the
//! environment info. Inserted areas are UNMEASURED pages, so none of this changes a digest.

use igvm::IgvmDirectiveHeader;
use igvm_defs::IGVM_VHS_PARAMETER;

const PAGE_4K: u64 = 4096;
/// IGVM memory map entry types.
pub const IGVM_MEMORY: u16 = 0;
pub const IGVM_PLATFORM_RESERVED: u16 = 1;
pub const IGVM_PERSISTENT: u16 = 2;
/// Size of `IGVM_VHS_MEMORY_MAP_ENTRY`.
pub const MEMMAP_ENTRY: usize = 24;
/// `IgvmEnvironmentInfo` with bit 0 `memory_is_shared` set, as QEMU writes it (spec §7.1).
pub const ENVIRONMENT_INFO: u32 = 1;

/// What a guest physical range is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    Ram,
    Reserved,
    /// Non-volatile (E820 NVS): IGVM PERSISTENT.
    Persistent,
}

/// One range of the guest's physical memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRange {
    pub gpa: u64,
    pub size: u64,
    pub kind: MemoryKind,
}

/// VMM-supplied values of the parameter areas (the vCPU count comes from the launch inputs).
#[derive(Debug, Clone, Default)]
pub struct IgvmParams {
    pub cmdline: String,
    pub memory: Vec<MemoryRange>,
}

/// The memory map as IGVM entries, sorted by address: RAM rounded inwards to whole pages,
/// other kinds outwards; empty ranges dropped; then the all-zero terminator entry.
pub fn memory_map(ranges: &[MemoryRange]) -> Vec<u8> {
    let mut sorted = ranges.to_vec();
    sorted.sort_by_key(|r| r.gpa);
    let mut out = Vec::with_capacity((sorted.len() + 1) * MEMMAP_ENTRY);
    for r in sorted {
        let end = r.gpa.saturating_add(r.size);
        let (first, last, t) = match r.kind {
            MemoryKind::Ram => (r.gpa.div_ceil(PAGE_4K), end / PAGE_4K, IGVM_MEMORY),
            MemoryKind::Reserved => (
                r.gpa / PAGE_4K,
                end.div_ceil(PAGE_4K),
                IGVM_PLATFORM_RESERVED,
            ),
            MemoryKind::Persistent => (r.gpa / PAGE_4K, end.div_ceil(PAGE_4K), IGVM_PERSISTENT),
        };
        if last <= first {
            continue;
        }
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(&(last - first).to_le_bytes());
        out.extend_from_slice(&t.to_le_bytes());
        out.extend_from_slice(&[0u8; 6]); // flags (u16) and reserved (u32)
    }
    out.extend_from_slice(&[0u8; MEMMAP_ENTRY]);
    out
}

/// The command line as the guest reads it: the bytes and a terminating NUL.
pub fn command_line(cmdline: &str) -> Vec<u8> {
    let mut s = cmdline.as_bytes().to_vec();
    s.push(0);
    s
}

/// For a parameter-usage directive cvmm fills (VP_COUNT, COMMAND_LINE, MEMORY_MAP,
/// ENVIRONMENT_INFO): its name, where it goes and the bytes; `None` for any other directive.
pub fn usage_bytes<'d>(
    d: &'d IgvmDirectiveHeader,
    vcpus: u32,
    params: &IgvmParams,
) -> Option<(&'static str, &'d IGVM_VHS_PARAMETER, Vec<u8>)> {
    Some(match d {
        IgvmDirectiveHeader::VpCount(p) => ("VP_COUNT", p, vcpus.to_le_bytes().to_vec()),
        IgvmDirectiveHeader::CommandLine(p) => ("COMMAND_LINE", p, command_line(&params.cmdline)),
        IgvmDirectiveHeader::MemoryMap(p) => ("MEMORY_MAP", p, memory_map(&params.memory)),
        IgvmDirectiveHeader::EnvironmentInfo(p) => (
            "ENVIRONMENT_INFO",
            p,
            ENVIRONMENT_INFO.to_le_bytes().to_vec(),
        ),
        _ => return None,
    })
}
