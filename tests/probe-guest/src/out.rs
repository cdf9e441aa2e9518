//! Marker output helpers shared by the device code: line prefix, IPv4, hex, and PCI addresses.

use crate::pci::Bdf;
use crate::serial::{put_dec, puts};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Starts a marker line (`cvmm-probe: `).
pub fn line_start() {
    puts(b"cvmm-probe: ");
}

/// Writes `a.b.c.d`.
pub fn put_ip(ip: [u8; 4]) {
    for (i, o) in ip.iter().enumerate() {
        if i > 0 {
            puts(b".");
        }
        put_dec(u64::from(*o));
    }
}

/// Writes the low `digits` hex digits of `v`, zero-padded.
pub fn put_hex(v: u64, digits: u32) {
    for k in (0..digits.min(16)).rev() {
        puts(&[HEX[((v >> (k * 4)) & 15) as usize]]);
    }
}

/// Writes `bb:dd.f` (bus 0).
pub fn put_bdf(b: Bdf) {
    puts(b"00:");
    put_hex(u64::from(b.dev), 2);
    puts(b".");
    put_hex(u64::from(b.func), 1);
}
