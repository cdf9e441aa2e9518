//! Port I/O and the polled COM1 console (16550, 115200 8N1) that carries the probe's markers.

use core::arch::asm;

const COM1: u16 = 0x3f8;
/// POST diagnostic port: progress codes are written here.
pub const POST_PORT: u16 = 0x80;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, val: u8) {
    // SAFETY: port I/O touches no memory; the probe owns the whole machine.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") val, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a 16-bit word to an I/O port.
pub fn outw(port: u16, val: u16) {
    // SAFETY: as `outb`.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") val, options(nomem, nostack, preserves_flags))
    }
}

/// Writes a 32-bit word to an I/O port.
pub fn outl(port: u16, val: u32) {
    // SAFETY: as `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") val, options(nomem, nostack, preserves_flags))
    }
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let val: u8;
    // SAFETY: as `outb`.
    unsafe {
        asm!("in al, dx", out("al") val, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    val
}

/// Reads a 32-bit word from an I/O port.
pub fn inl(port: u16) -> u32 {
    let val: u32;
    // SAFETY: as `outb`.
    unsafe {
        asm!("in eax, dx", out("eax") val, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    val
}

/// Writes a progress code to port 0x80.
pub fn post(code: u8) {
    outb(POST_PORT, code);
}

/// Programs COM1: interrupts off, 115200 baud, 8N1, FIFOs on, DTR|RTS.
pub fn init() {
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x80);
    outb(COM1, 0x01);
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03);
    outb(COM1 + 2, 0xc7);
    outb(COM1 + 4, 0x03);
}

fn putc(c: u8) {
    // Wait (bounded) for the transmit holding register to empty.
    for _ in 0..100_000 {
        if inb(COM1 + 5) & 0x20 != 0 {
            break;
        }
    }
    outb(COM1, c);
}

/// Writes bytes to COM1.
pub fn puts(s: &[u8]) {
    for &c in s {
        putc(c);
    }
}

/// Writes `n` in decimal.
pub fn put_dec(mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    while let Some(slot) = i.checked_sub(1).and_then(|j| buf.get_mut(j)) {
        *slot = b'0' + (n % 10) as u8;
        i -= 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    puts(buf.get(i..).unwrap_or(&[]));
}
