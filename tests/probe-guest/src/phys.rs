//! Guest-physical memory seen through the probe's identity map (0..4 GiB, 2 MiB pages), and
//! little-endian field readers for byte slices. Reads outside the map return `None`.

/// End of the identity-mapped range.
pub const MAPPED_END: u64 = 1 << 32;

/// The `len` bytes at physical address `addr`, if the range is mapped (address 0 never is).
#[cfg(not(test))]
pub fn bytes(addr: u64, len: usize) -> Option<&'static [u8]> {
    let end = addr.checked_add(len as u64)?;
    if addr == 0 || end > MAPPED_END {
        return None;
    }
    // SAFETY: the range lies in the identity map built at entry, which covers all of it; the
    // probe only reads guest memory through this slice and never writes it.
    Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
}

/// Host tests never touch raw physical addresses.
#[cfg(test)]
pub fn bytes(_addr: u64, _len: usize) -> Option<&'static [u8]> {
    None
}

/// The NUL-terminated string at `addr` (at most `max` bytes, without the NUL).
pub fn cstr(addr: u64, max: usize) -> &'static [u8] {
    let avail = MAPPED_END.saturating_sub(addr).min(max as u64) as usize;
    let Some(b) = bytes(addr, avail) else {
        return &[];
    };
    let len = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    b.get(..len).unwrap_or(&[])
}

fn field<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off.checked_add(N)?)?.try_into().ok()
}

/// Little-endian u8 at `off`.
pub fn u8_at(b: &[u8], off: usize) -> Option<u8> {
    b.get(off).copied()
}

/// Little-endian u16 at `off`.
pub fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    field(b, off).map(u16::from_le_bytes)
}

/// Little-endian u32 at `off`.
pub fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    field(b, off).map(u32::from_le_bytes)
}

/// Little-endian u64 at `off`.
pub fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    field(b, off).map(u64::from_le_bytes)
}

/// True if the bytes sum to 0 modulo 256 (ACPI / MP table checksum).
pub fn checksum_ok(b: &[u8]) -> bool {
    b.iter().fold(0u8, |acc, &x| acc.wrapping_add(x)) == 0
}
