//! Guest RAM: anonymous mappings (vm-memory) laid out around the 32-bit MMIO hole, and the
//! e820 map that describes them to the guest.

use crate::error::{Result, VmmError};
use crate::layout::*;
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest memory of a VM.
pub type GuestMem = GuestMemoryMmap<()>;

/// Smallest guest accepted: room for the boot structures, a kernel and a stack.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest guest accepted (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;

/// The RAM ranges for `mib` MiB: below the MMIO hole, and the rest above 4 GiB.
pub fn ram_ranges(mib: u64) -> Result<Vec<(GuestAddress, usize)>> {
    ram_ranges_below(mib, MMIO_HOLE_START)
}

/// The RAM ranges for `mib` MiB with at most `low_limit` bytes below 4 GiB.
pub fn ram_ranges_below(mib: u64, low_limit: u64) -> Result<Vec<(GuestAddress, usize)>> {
    if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
        return Err(VmmError::Input(format!(
            "--memory {mib}M is out of range ({MIN_MEMORY_MIB}M to {MAX_MEMORY_MIB}M)"
        )));
    }
    let bytes = mib << 20;
    let low = bytes.min(low_limit);
    let mut r = vec![(GuestAddress(0), low as usize)];
    if bytes > low {
        r.push((GuestAddress(HIGH_RAM_START), (bytes - low) as usize));
    }
    Ok(r)
}

/// Maps guest RAM.
pub fn create(mib: u64) -> Result<GuestMem> {
    create_below(mib, MMIO_HOLE_START)
}

/// Maps guest RAM with at most `low_limit` bytes below 4 GiB (firmware boot's q35 layout).
pub fn create_below(mib: u64, low_limit: u64) -> Result<GuestMem> {
    GuestMemoryMmap::from_ranges(&ram_ranges_below(mib, low_limit)?)
        .map_err(|e| VmmError::Memory(format!("cannot map {mib} MiB of guest RAM: {e}")))
}

/// e820 entry types.
pub const E820_RAM: u32 = 1;
/// Reserved memory.
pub const E820_RESERVED: u32 = 2;

/// The e820 map: (start, size, type).
pub fn e820_map(mib: u64) -> Vec<(u64, u64, u32)> {
    let bytes = mib << 20;
    let low_end = bytes.min(MMIO_HOLE_START);
    let mut m = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
        (HIMEM_START, low_end - HIMEM_START, E820_RAM),
    ];
    m.push((PCI_ECAM_BASE, PCI_ECAM_SIZE, E820_RESERVED));
    if bytes > low_end {
        m.push((HIGH_RAM_START, bytes - low_end, E820_RAM));
    }
    m
}

/// Resident memory: (peak RSS of the process from `/proc/self/status`, resident guest RAM
/// pages counted with `mincore`), in KiB. The difference is what the VMM itself costs.
/// (`/proc/self/smaps` cannot tell: the kernel merges the guest's anonymous mappings with
/// neighbouring ones into one VMA.)
pub fn resident_kib(mem: &GuestMem) -> Option<(u64, u64)> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let page = 4096usize;
    let mut pages = 0u64;
    for r in mem.iter() {
        let addr = r.get_host_address(MemoryRegionAddress(0)).ok()?;
        let len = usize::try_from(r.len()).ok()?;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: `addr..addr+len` is a live mapping owned by `mem` (borrowed for this call);
        // mincore only reads its page state into `vec`, which has one byte per page.
        let rc = unsafe { libc::mincore(addr.cast(), len, vec.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        pages += vec.iter().filter(|b| *b & 1 != 0).count() as u64;
    }
    Some((hwm, pages * (page as u64 / 1024)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_is_one_range() {
        let r = ram_ranges(512).unwrap();
        assert_eq!(r, vec![(GuestAddress(0), 512 << 20)]);
        let e = e820_map(512);
        assert_eq!(e[2], (HIMEM_START, (512 << 20) - HIMEM_START, E820_RAM));
        assert_eq!(e[3], (PCI_ECAM_BASE, PCI_ECAM_SIZE, E820_RESERVED));
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let r = ram_ranges(4096).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].1 as u64, MMIO_HOLE_START);
        assert_eq!(r[1], (GuestAddress(HIGH_RAM_START), (1 << 30) as usize));
        let total: u64 = e820_map(4096)
            .iter()
            .filter(|e| e.2 == E820_RAM)
            .map(|e| e.1)
            .sum();
        assert_eq!(total, (4096 << 20) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn guest_pages_touched_show_up_as_guest_rss() {
        use vm_memory::{Bytes, GuestAddress};
        let mem = create(64).unwrap();
        let (_, before) = resident_kib(&mem).unwrap();
        for i in 0..256u64 {
            mem.write_obj(1u8, GuestAddress(i * 4096)).unwrap();
        }
        let (hwm, after) = resident_kib(&mem).unwrap();
        assert!(
            after >= before + 1024,
            "touched 1 MiB: {before} -> {after} KiB"
        );
        assert!(hwm >= after);
    }

    #[test]
    fn out_of_range_sizes_are_input_errors() {
        assert!(matches!(ram_ranges(1), Err(VmmError::Input(_))));
        assert!(matches!(
            ram_ranges(MAX_MEMORY_MIB + 1),
            Err(VmmError::Input(_))
        ));
    }
}
