//! Port I/O and MMIO dispatch as a vCPU exit loop sees it: the input is a sequence of guest
//! accesses (records, see `cvmm_fuzz::records`) against a `cvmm_fuzz::machine::Machine`: the
//! legacy ports, fw_cfg (selector, data, DMA address register with `FWCfgDmaAccess` structures
//! in guest memory), the PCI configuration ports 0xCF8/0xCFC, ECAM and a virtio-pci BAR 0.
//!
//! Record flags bits 0-2 pick the operation, bits 3-4 the width (1, 2, 4, 8 bytes):
//! - 0/1: port write/read; body `[device u8][offset u8][value...]`: the port is the base of
//!   `PORTS[device % 8]` plus `offset % (length + 1)` (one past the end is in range on purpose);
//! - 2: port write to a raw port, body `[port u16 LE][value...]`;
//! - 3/4: MMIO write/read; body `[region u8][offset u32 LE][value...]`: region bit 0 clear is
//!   ECAM (offset mod 1 MiB), set is the BAR window (offset mod 64 KiB);
//! - 5: guest memory write, body `[address u32 LE][bytes...]` (address mod 1 MiB);
//! - 6: a 64-bit big-endian DMA address write to fw_cfg port 0x514, body `[address u32 LE]`
//!   (mod 1 MiB): the DMA transfer of the `FWCfgDmaAccess` there runs at once;
//! - 7: nothing.
//!
//! Nothing may panic, hang (the fuzzer's timeout) or touch memory it does not own (ASan).
#![no_main]

use cvmm_fuzz::machine::{Machine, ECAM_BASE, MEM, PCI_MMIO_BASE, PORTS};
use cvmm_fuzz::{access_value as value, le32_at as u32_at};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

fuzz_target!(|data: &[u8]| {
    let m = Machine::new();
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
                let addr = if b(0) & 1 == 0 {
                    ECAM_BASE + off % 0x10_0000
                } else {
                    PCI_MMIO_BASE + off % 0x1_0000
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
            _ => {}
        }
    }
});
