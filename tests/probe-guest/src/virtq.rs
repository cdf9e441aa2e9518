//! A split virtqueue in arena memory, driven by polling (no interrupts): descriptors are set by
//! index, heads published in the available ring, completions read from the used ring.

use core::sync::atomic::{compiler_fence, Ordering};

use crate::mmio::Mmio;

/// Descriptor flag: buffer continues in `next`.
pub const F_NEXT: u16 = 1;
/// Descriptor flag: device writes this buffer.
pub const F_WRITE: u16 = 2;

/// Largest queue the probe sets up.
pub const MAX_SIZE: u16 = 64;

/// Ring layout inside one 4 KiB-aligned block: descriptors, available ring, used ring.
pub fn layout(size: u16) -> (usize, usize, usize) {
    let n = usize::from(size);
    let avail = 16 * n;
    let used = (avail + 6 + 2 * n + 3) & !3;
    (avail, used, used + 6 + 8 * n)
}

/// One split virtqueue.
pub struct Queue {
    mem: &'static mut [u8],
    size: u16,
    avail_off: usize,
    used_off: usize,
    avail_idx: u16,
    last_used: u16,
    notify: Mmio,
    index: u16,
}

impl Queue {
    /// Allocates a zeroed queue of `size` (power of two ≤ MAX_SIZE) entries.
    pub fn new(size: u16, index: u16, notify: Mmio) -> Option<Self> {
        if !size.is_power_of_two() || size > MAX_SIZE {
            return None;
        }
        let (avail_off, used_off, total) = layout(size);
        let mem = crate::arena::alloc(total, 4096)?;
        // The device must not interrupt us: we poll.
        mem.get_mut(avail_off..avail_off + 2)?
            .copy_from_slice(&1u16.to_le_bytes());
        Some(Queue {
            mem,
            size,
            avail_off,
            used_off,
            avail_idx: 0,
            last_used: 0,
            notify,
            index,
        })
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Guest-physical addresses of the descriptor table, available ring and used ring.
    pub fn addrs(&self) -> (u64, u64, u64) {
        let base = self.mem.as_ptr() as u64;
        (
            base,
            base + self.avail_off as u64,
            base + self.used_off as u64,
        )
    }

    fn put(&mut self, off: usize, bytes: &[u8]) {
        if let Some(d) = self.mem.get_mut(off..off + bytes.len()) {
            d.copy_from_slice(bytes);
        }
    }

    fn read_u16(&self, off: usize) -> u16 {
        let p = self.mem.as_ptr().wrapping_add(off).cast::<u16>();
        if off + 2 > self.mem.len() {
            return 0;
        }
        // SAFETY: in bounds (checked) and 2-aligned (ring offsets are even); volatile because
        // the device writes this memory.
        unsafe { p.read_volatile() }
    }

    fn read_u32(&self, off: usize) -> u32 {
        let p = self.mem.as_ptr().wrapping_add(off).cast::<u32>();
        if off + 4 > self.mem.len() {
            return 0;
        }
        // SAFETY: in bounds and 4-aligned (used ring elements); volatile as above.
        unsafe { p.read_volatile() }
    }

    /// Sets descriptor `i`.
    pub fn set_desc(&mut self, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let off = usize::from(i % self.size) * 16;
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.put(off, &d);
    }

    /// Publishes the chain starting at descriptor `head` (does not notify).
    pub fn push(&mut self, head: u16) {
        let slot = self.avail_off + 4 + usize::from(self.avail_idx % self.size) * 2;
        self.put(slot, &head.to_le_bytes());
        compiler_fence(Ordering::SeqCst); // x86 keeps stores in order; stop the compiler
        self.avail_idx = self.avail_idx.wrapping_add(1);
        let idx = self.avail_idx;
        self.put(self.avail_off + 2, &idx.to_le_bytes());
        compiler_fence(Ordering::SeqCst);
    }

    /// Tells the device about new buffers.
    pub fn notify(&self) {
        self.notify.w16(0, self.index);
    }

    /// The next completed chain: (head descriptor, bytes written), if any. A head the device
    /// reports out of range is returned as-is; callers check it against what they submitted.
    pub fn pop(&mut self) -> Option<(u32, u32)> {
        let used_idx = self.read_u16(self.used_off + 2);
        if used_idx == self.last_used {
            return None;
        }
        compiler_fence(Ordering::SeqCst);
        let e = self.used_off + 4 + usize::from(self.last_used % self.size) * 8;
        let id = self.read_u32(e);
        let len = self.read_u32(e + 4);
        self.last_used = self.last_used.wrapping_add(1);
        Some((id, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_spec_alignment() {
        let (a, u, end) = layout(16);
        assert_eq!(a, 256);
        assert_eq!(u % 4, 0);
        assert!(u >= a + 6 + 32);
        assert_eq!(end, u + 6 + 128);
        assert!(layout(MAX_SIZE).2 <= 4096);
    }
}
