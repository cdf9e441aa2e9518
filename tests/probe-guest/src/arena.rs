//! A bump allocator over the `.noinit` arena (see link.ld): device rings, packet and 9p buffers
//! and socket buffers. The arena is not zeroed at entry (that costs time on PVM); each allocation
//! zeroes only what it hands out, so probes that drive no device pay nothing.

use core::sync::atomic::{AtomicUsize, Ordering};

/// Arena size in bytes.
pub const ARENA_SIZE: usize = 1024 * 1024;

#[cfg(not(test))]
#[link_section = ".noinit"]
static mut ARENA: [u8; ARENA_SIZE] = [0; ARENA_SIZE];

static USED: AtomicUsize = AtomicUsize::new(0);

/// Offset of the next allocation of `len` bytes aligned to `align` (a power of two), given
/// `used` bytes already taken, if it fits in `size`.
pub fn fit(used: usize, len: usize, align: usize, size: usize) -> Option<(usize, usize)> {
    let start = used.checked_add(align - 1)? & !(align - 1);
    let end = start.checked_add(len)?;
    (end <= size).then_some((start, end))
}

/// A zeroed, `align`-aligned slice of `len` bytes that lives for the rest of the run, or `None`
/// when the arena is exhausted. The probe is single-threaded.
#[cfg(not(test))]
pub fn alloc(len: usize, align: usize) -> Option<&'static mut [u8]> {
    let base = core::ptr::addr_of_mut!(ARENA).cast::<u8>();
    // Align absolute addresses: the arena itself is only 4 KiB-aligned by the linker script.
    let used = USED.load(Ordering::Relaxed);
    let skew = (base as usize) & (align - 1);
    let (start, end) = fit(used + skew, len, align, ARENA_SIZE + skew)?;
    USED.store(end - skew, Ordering::Relaxed);
    // SAFETY: [start - skew, end - skew) lies inside ARENA and was never handed out before
    // (USED only grows), so this is the only reference to those bytes; zeroing initializes them.
    unsafe {
        let p = base.add(start - skew);
        core::ptr::write_bytes(p, 0, len);
        Some(core::slice::from_raw_parts_mut(p, len))
    }
}

/// Host tests: leak a zeroed, suitably aligned heap buffer.
#[cfg(test)]
pub fn alloc(len: usize, align: usize) -> Option<&'static mut [u8]> {
    let v: &'static mut [u8] = Vec::leak(vec![0u8; len + align]);
    let skew = (v.as_ptr() as usize).wrapping_neg() & (align - 1);
    USED.fetch_add(len, Ordering::Relaxed);
    v.get_mut(skew..skew + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_aligns_and_bounds() {
        assert_eq!(fit(0, 10, 4096, 8192), Some((0, 10)));
        assert_eq!(fit(10, 16, 4096, 8192), Some((4096, 4112)));
        assert_eq!(fit(10, 4097, 4096, 8192), None);
        assert_eq!(fit(usize::MAX - 2, 1, 8, usize::MAX), None);
    }

    #[test]
    fn alloc_returns_aligned_zeroed_memory() {
        let b = alloc(100, 64).unwrap();
        assert_eq!(b.len(), 100);
        assert_eq!(b.as_ptr() as usize % 64, 0);
        assert!(b.iter().all(|&x| x == 0));
    }
}
