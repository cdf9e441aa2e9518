//! What the loader tells the probe: PVH `hvm_start_info` or Linux `boot_params` (zero page).
//! Extracts the command line, the usable RAM total and the ACPI RSDP hint.

use crate::phys::{self, u32_at, u64_at, u8_at};

/// Boot protocol code passed from the entry assembly for PVH; 2 means Linux boot protocol.
pub const PROTO_PVH: u32 = 1;
/// Boot protocol code of the FW entry (reset vector of `probe-fw.bin`); see `fw.rs`.
pub const PROTO_FW: u32 = 3;

const PVH_MAGIC: u32 = 0x336e_c578;
const CMDLINE_MAX: usize = 4096;
const E820_RAM: u32 = 1;

/// Boot information common to all protocols.
pub struct BootInfo {
    /// `"pvh"`, `"linux"` or `"fw"`.
    pub proto: &'static [u8],
    /// Kernel command line (empty if none).
    pub cmdline: &'static [u8],
    /// Sum of usable RAM in the memory map, in bytes (0 if no map).
    pub ram_bytes: u64,
    /// RSDP address given by the loader (0 if none).
    pub rsdp: u64,
}

/// Reads the boot information for `proto` from the structure at `info`.
pub fn read(proto: u32, info: u64) -> BootInfo {
    if proto == PROTO_PVH {
        from_pvh(info)
    } else {
        from_linux(info)
    }
}

fn from_pvh(addr: u64) -> BootInfo {
    let mut bi = BootInfo {
        proto: b"pvh",
        cmdline: &[],
        ram_bytes: 0,
        rsdp: 0,
    };
    let Some(si) = phys::bytes(addr, 56) else {
        return bi;
    };
    if u32_at(si, 0) != Some(PVH_MAGIC) {
        return bi;
    }
    let cmdline = u64_at(si, 24).unwrap_or(0);
    if cmdline != 0 {
        bi.cmdline = phys::cstr(cmdline, CMDLINE_MAX);
    }
    bi.rsdp = u64_at(si, 32).unwrap_or(0);
    if u32_at(si, 4).unwrap_or(0) >= 1 {
        let map = u64_at(si, 40).unwrap_or(0);
        let n = u32_at(si, 48).unwrap_or(0).min(1024) as usize;
        if let Some(table) = phys::bytes(map, n * 24) {
            bi.ram_bytes = ram_total(table, 24);
        }
    }
    bi
}

fn from_linux(addr: u64) -> BootInfo {
    let mut bi = BootInfo {
        proto: b"linux",
        cmdline: &[],
        ram_bytes: 0,
        rsdp: 0,
    };
    let Some(bp) = phys::bytes(addr, 4096) else {
        return bi;
    };
    let cmdline = u64::from(u32_at(bp, 0x228).unwrap_or(0))
        | (u64::from(u32_at(bp, 0x0c8).unwrap_or(0)) << 32);
    if cmdline != 0 {
        bi.cmdline = phys::cstr(cmdline, CMDLINE_MAX);
    }
    bi.rsdp = u64_at(bp, 0x070).unwrap_or(0);
    let n = usize::from(u8_at(bp, 0x1e8).unwrap_or(0)).min(128);
    if let Some(table) = bp.get(0x2d0..0x2d0 + n * 20) {
        bi.ram_bytes = ram_total(table, 20);
    }
    bi
}

/// Sums the sizes of type-1 (RAM) entries of an e820-style table (addr u64, size u64, type u32
/// at offsets 0, 8, 16) whose entries are `stride` bytes apart.
pub fn ram_total(table: &[u8], stride: usize) -> u64 {
    table
        .chunks_exact(stride)
        .filter(|e| u32_at(e, 16) == Some(E820_RAM))
        .fold(0u64, |acc, e| acc.saturating_add(u64_at(e, 8).unwrap_or(0)))
}

/// The value of the last `key=value` word of the command line, if any.
pub fn option<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    cmdline
        .split(|c| c.is_ascii_whitespace())
        .filter_map(|w| w.strip_prefix(key)?.strip_prefix(b"="))
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(addr: u64, size: u64, ty: u32, stride: usize) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&addr.to_le_bytes());
        e.extend_from_slice(&size.to_le_bytes());
        e.extend_from_slice(&ty.to_le_bytes());
        e.resize(stride, 0);
        e
    }

    #[test]
    fn ram_total_counts_only_ram_entries() {
        for stride in [20, 24] {
            let mut t = entry(0, 0x9fc00, 1, stride);
            t.extend(entry(0x9fc00, 0x400, 2, stride));
            t.extend(entry(0x100000, 0x0ff00000, 1, stride));
            assert_eq!(ram_total(&t, stride), 0x9fc00 + 0x0ff00000);
        }
    }

    #[test]
    fn ram_total_ignores_truncated_entry() {
        let mut t = entry(0, 0x1000, 1, 20);
        t.extend_from_slice(&[1, 2, 3]);
        assert_eq!(ram_total(&t, 20), 0x1000);
    }

    #[test]
    fn option_finds_last_value() {
        let c = b"console=ttyS0 probe.exit=reboot  probe.exit=halt quiet";
        assert_eq!(option(c, b"probe.exit"), Some(&b"halt"[..]));
        assert_eq!(option(c, b"probe"), None);
        assert_eq!(option(b"", b"probe.exit"), None);
        assert_eq!(option(b"probe.exitx=1", b"probe.exit"), None);
    }
}
