//! The firmware-boot platform as a vCPU exit loop sees it: the input is a sequence of guest
//! accesses (records, see `cvmm_fuzz::records`) against a `cvmm_fuzz::q35::Q35Machine`: the
//! q35 chipset registers through 0xCF8/0xCFC and ECAM (MCH PCIEXBAR/PAM, ICH9 LPC PMBASE and
//! ACPI enable), the reset register 0xCF9, the ACPI PM block, port 0x92, the debug console,
//! fw_cfg (selector, data, DMA with `FWCfgDmaAccess` structures in guest memory, the ACPI and
//! kernel items), the two CFI flash units (commands, programs, erases, status reads) and the
//! split irqchip's IOAPIC (registers, line changes, EOIs).
//!
//! Record flags bits 0-2 pick the operation, bits 3-4 the width (1, 2, 4, 8 bytes):
//! - 0/1: port write/read; body `[device u8][offset u8][value...]`: the port is the base of
//!   `PORTS[device % 6]` plus `offset % (length + 1)` (one past the end is in range on purpose);
//! - 2: port write to a raw port, body `[port u16 LE][value...]`;
//! - 3/4: MMIO write/read; body `[region u8][offset u32 LE][value...]`: region % 4 picks ECAM
//!   (offset mod 256 MiB), the variable flash or the code flash (offset mod 16 KiB + 8, so
//!   accesses straddle the end) or the IOAPIC window (offset mod 4 KiB + 8);
//! - 5: guest memory write, body `[address u32 LE][bytes...]` (address mod 1 MiB);
//! - 6: a 64-bit big-endian DMA address write to fw_cfg port 0x514, body `[address u32 LE]`;
//! - 7: IOAPIC, body `[pin u8][level u8][vector u8]`: line `pin` (any value, out-of-range
//!   ones included) set to `level & 1`, then an EOI of `vector`.
//!
//! Nothing may panic, hang or touch memory it does not own (ASan). A guest may end the VM
//! (reset, power-off): the stop signal is recorded and the accesses go on.
#![no_main]

use cvmm_fuzz::q35::{Q35Machine, CODE_BASE, FLASH_LEN, MEM, PORTS, VARS_BASE};
use cvmm_fuzz::{access_value as value, le32_at as u32_at};
use devices::chipset::Q35_ECAM_BASE;
use devices::ioapic::{IOAPIC_BASE, IOAPIC_MMIO_LEN};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

fuzz_target!(|data: &[u8]| {
    let m = Q35Machine::new();
    for (flags, body) in cvmm_fuzz::records(data).take(4096) {
        let width = 1usize << ((flags >> 3) & 3);
        let b = |i: usize| body.get(i).copied().unwrap_or(0);
        match flags & 7 {
            op @ (0 | 1) => {
                let (base, len) = PORTS[usize::from(b(0)) % PORTS.len()];
                let port = base + u16::from(b(1)) % (len + 1);
                let mut v = value(width, body.get(2..).unwrap_or(&[]));
                if op == 0 {
                    m.pio.pio_write(port, &v[..width]);
                } else {
                    v = [0x5a; 8];
                    m.pio.pio_read(port, &mut v[..width]);
                }
            }
            2 => {
                let port = u16::from_le_bytes([b(0), b(1)]);
                let v = value(width, body.get(2..).unwrap_or(&[]));
                m.pio.pio_write(port, &v[..width]);
            }
            op @ (3 | 4) => {
                let off = u64::from(u32_at(body, 1));
                let addr = match b(0) % 4 {
                    0 => Q35_ECAM_BASE + off % 0x1000_0000,
                    1 => VARS_BASE + off % (FLASH_LEN + 8),
                    2 => CODE_BASE + off % (FLASH_LEN - 8),
                    _ => IOAPIC_BASE + off % (IOAPIC_MMIO_LEN + 8),
                };
                let mut v = value(width, body.get(5..).unwrap_or(&[]));
                if op == 3 {
                    m.mmio.mmio_write(addr, &v[..width]);
                } else {
                    m.mmio.mmio_read(addr, &mut v[..width]);
                }
            }
            5 => {
                let at = u64::from(u32_at(body, 0)) % MEM;
                let bytes = body.get(4..).unwrap_or(&[]);
                let n = bytes.len().min((MEM - at) as usize);
                m.mem
                    .write_slice(&bytes[..n], GuestAddress(at))
                    .expect("inside guest memory");
            }
            6 => {
                let at = u64::from(u32_at(body, 0)) % MEM;
                m.pio.pio_write(0x514, &at.to_be_bytes());
            }
            _ => {
                let mut io = devices::bus::lock(&m.ioapic);
                io.set_irq(usize::from(b(0)), b(1) & 1 != 0);
                io.end_of_interrupt(b(2));
            }
        }
    }
    let _ = m.stop.reason();
});
