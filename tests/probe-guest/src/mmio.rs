//! Volatile MMIO access, and mappings for MMIO above the 4 GiB identity map: a BAR placed high
//! gets its 1 GiB slot of the PDPT filled with an uncached page directory of 2 MiB pages.

use crate::phys::MAPPED_END;

/// A mapped MMIO region (physical = virtual).
#[derive(Clone, Copy, Debug)]
pub struct Mmio {
    base: u64,
    len: u64,
}

impl Mmio {
    /// Maps `len` bytes at physical `base`, if below 512 GiB (the one PML4 slot the probe uses).
    pub fn map(base: u64, len: u64) -> Option<Self> {
        let end = base.checked_add(len)?;
        if base == 0 || end > 1 << 39 {
            return None;
        }
        if end > MAPPED_END {
            let mut slot = base >> 30;
            while slot <= (end - 1) >> 30 {
                map_gib(slot)?;
                slot += 1;
            }
        }
        Some(Mmio { base, len })
    }

    /// The sub-region `[off, off + len)`, if inside.
    pub fn sub(self, off: u64, len: u64) -> Option<Self> {
        (off.checked_add(len)? <= self.len).then_some(Mmio {
            base: self.base + off,
            len,
        })
    }

    /// Length in bytes.
    pub fn len(self) -> u64 {
        self.len
    }

    fn ptr(self, off: u64, width: u64) -> Option<*mut u8> {
        (off.checked_add(width)? <= self.len).then_some((self.base + off) as *mut u8)
    }

    /// Reads a u8 (0xff if out of range).
    pub fn r8(self, off: u64) -> u8 {
        // SAFETY: `ptr` checked the access lies in the mapped region.
        self.ptr(off, 1)
            .map_or(0xff, |p| unsafe { p.read_volatile() })
    }

    /// Reads a u16 (all ones if out of range).
    pub fn r16(self, off: u64) -> u16 {
        // SAFETY: as `r8`; virtio and PCI registers are naturally aligned.
        self.ptr(off, 2)
            .map_or(!0, |p| unsafe { p.cast::<u16>().read_volatile() })
    }

    /// Reads a u32 (all ones if out of range).
    pub fn r32(self, off: u64) -> u32 {
        // SAFETY: as `r16`.
        self.ptr(off, 4)
            .map_or(!0, |p| unsafe { p.cast::<u32>().read_volatile() })
    }

    /// Writes a u8 (ignored if out of range).
    pub fn w8(self, off: u64, v: u8) {
        if let Some(p) = self.ptr(off, 1) {
            // SAFETY: as `r8`.
            unsafe { p.write_volatile(v) }
        }
    }

    /// Writes a u16 (ignored if out of range).
    pub fn w16(self, off: u64, v: u16) {
        if let Some(p) = self.ptr(off, 2) {
            // SAFETY: as `r16`.
            unsafe { p.cast::<u16>().write_volatile(v) }
        }
    }

    /// Writes a u32 (ignored if out of range).
    pub fn w32(self, off: u64, v: u32) {
        if let Some(p) = self.ptr(off, 4) {
            // SAFETY: as `r16`.
            unsafe { p.cast::<u32>().write_volatile(v) }
        }
    }

    /// Writes a u64 as two u32 halves, low first (virtio common config style).
    pub fn w64(self, off: u64, v: u64) {
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }
}

/// Marks the 2 MiB pages of the link-time identity map that cover `[base, base + len)` (below
/// 4 GiB) uncached (PCD | PWT), e.g. for flash the probe programs.
#[cfg(not(test))]
pub fn uncache_low(base: u64, len: u64) {
    extern "C" {
        static mut probe_pd: [u64; 2048];
    }
    let end = base.saturating_add(len).min(MAPPED_END);
    // SAFETY: probe_pd is the live page directory of 0..4 GiB of entry.rs; the probe is
    // single-threaded and only adds cache-control bits to entries that map the same frames.
    let pd = unsafe { &mut *core::ptr::addr_of_mut!(probe_pd) };
    let mut i = base >> 21;
    while i < 2048 && (i << 21) < end {
        pd[i as usize] |= 0x18;
        i += 1;
    }
    // SAFETY: as in `map_gib`: reloading CR3 flushes the TLB.
    unsafe {
        core::arch::asm!("mov {t}, cr3", "mov cr3, {t}", t = out(reg) _, options(nostack));
    }
}

#[cfg(test)]
pub fn uncache_low(_base: u64, _len: u64) {}

/// Fills PDPT slot `slot` (1 GiB at `slot << 30`) with 2 MiB uncached pages, once.
#[cfg(not(test))]
fn map_gib(slot: u64) -> Option<()> {
    extern "C" {
        static mut probe_pdpt: [u64; 512];
    }
    let idx = usize::try_from(slot).ok().filter(|&i| i < 512)?;
    // SAFETY: probe_pdpt is the live, identity-mapped PDPT of entry.rs; the probe is
    // single-threaded and only fills empty slots above 4 GiB, which nothing else uses.
    let pdpt = unsafe { &mut *core::ptr::addr_of_mut!(probe_pdpt) };
    if pdpt[idx] & 1 != 0 {
        return Some(());
    }
    let pd = crate::arena::alloc(4096, 4096)?;
    for (i, e) in pd.chunks_exact_mut(8).enumerate() {
        // present | writable | PWT | PCD | page size
        let entry = ((slot << 30) + ((i as u64) << 21)) | 0x9b;
        e.copy_from_slice(&entry.to_le_bytes());
    }
    pdpt[idx] = pd.as_ptr() as u64 | 3;
    // SAFETY: reloading CR3 with its current value flushes the TLB; the tables stay valid.
    unsafe {
        core::arch::asm!("mov {t}, cr3", "mov cr3, {t}", t = out(reg) _, options(nostack));
    }
    Some(())
}

#[cfg(test)]
fn map_gib(_slot: u64) -> Option<()> {
    None
}
