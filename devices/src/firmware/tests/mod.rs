//! Tests that play the firmware: they reach fw_cfg only through its ports and DMA, run the
//! table-loader script like OVMF's AcpiPlatformDxe, and drive the flash like OVMF's QemuFlash.

mod acpi_tests;
mod fw_cfg_tests;
mod linux_tests;
mod pflash_tests;

use super::fw_cfg::{dma_ctl, keys, FwCfg, FW_CFG_PORT_BASE, FW_CFG_PORT_LEN};
use crate::bus::PioBus;
use std::sync::{Arc, Mutex};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM of the tests: 1 MiB at 0.
pub const RAM: u64 = 0x10_0000;

pub fn guest_mem() -> Arc<GuestMemoryMmap<()>> {
    Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap())
}

/// The firmware's view of fw_cfg: port I/O through a bus, DMA through guest memory.
pub struct Firmware {
    pub bus: PioBus,
    pub mem: Arc<GuestMemoryMmap<()>>,
}

impl Firmware {
    pub fn new(dev: FwCfg, mem: Arc<GuestMemoryMmap<()>>) -> Self {
        let mut bus = PioBus::default();
        bus.insert(
            u64::from(FW_CFG_PORT_BASE),
            u64::from(FW_CFG_PORT_LEN),
            Arc::new(Mutex::new(dev)),
        )
        .unwrap();
        Self { bus, mem }
    }

    /// A device with DMA over fresh guest memory.
    pub fn with_dma(dev: FwCfg) -> Self {
        let mem = guest_mem();
        Self::new(dev.with_dma(mem.clone()), mem)
    }

    pub fn select(&self, key: u16) {
        assert!(self.bus.pio_write(0x510, &key.to_le_bytes()));
    }

    /// `n` single-byte reads of the data port.
    pub fn read(&self, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                let mut b = [0u8];
                self.bus.pio_read(0x511, &mut b);
                b[0]
            })
            .collect()
    }

    pub fn read_item(&self, key: u16, n: usize) -> Vec<u8> {
        self.select(key);
        self.read(n)
    }

    /// Walks the directory: (name, key, size) per file.
    pub fn directory(&self) -> Vec<(String, u16, u32)> {
        self.select(keys::FILE_DIR);
        let count = u32::from_be_bytes(self.read(4).try_into().unwrap());
        (0..count)
            .map(|_| {
                let e = self.read(64);
                let size = u32::from_be_bytes(e[0..4].try_into().unwrap());
                let key = u16::from_be_bytes(e[4..6].try_into().unwrap());
                let end = e[8..].iter().position(|&b| b == 0).unwrap();
                (
                    String::from_utf8(e[8..8 + end].to_vec()).unwrap(),
                    key,
                    size,
                )
            })
            .collect()
    }

    /// QemuFwCfgFindFile: key and size of a named file.
    pub fn find_file(&self, name: &str) -> Option<(u16, u32)> {
        self.directory()
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, k, s)| (k, s))
    }

    /// Places an FWCfgDmaAccess at `access`, starts it as OVMF does (two 32-bit big-endian
    /// halves, high first) and returns the control word written back.
    pub fn dma(&self, access: u64, control: u32, length: u32, address: u64) -> u32 {
        let mut raw = [0u8; 16];
        raw[0..4].copy_from_slice(&control.to_be_bytes());
        raw[4..8].copy_from_slice(&length.to_be_bytes());
        raw[8..16].copy_from_slice(&address.to_be_bytes());
        let _ = self.mem.write_slice(&raw, GuestAddress(access));
        self.kick(access);
        let mut c = [0u8; 4];
        let _ = self.mem.read_slice(&mut c, GuestAddress(access));
        u32::from_be_bytes(c)
    }

    /// Writes a DMA access address to the register, high half then low half.
    pub fn kick(&self, access: u64) {
        self.bus
            .pio_write(0x514, &((access >> 32) as u32).to_be_bytes());
        self.bus.pio_write(0x518, &(access as u32).to_be_bytes());
    }

    /// Reads a whole file by DMA (select + read) into guest memory at `at`.
    pub fn dma_read_file(&self, name: &str, at: u64) -> Vec<u8> {
        let (key, size) = self.find_file(name).expect("file present");
        let ctl = (u32::from(key) << 16) | dma_ctl::SELECT | dma_ctl::READ;
        assert_eq!(self.dma(0x1000, ctl, size, at), 0);
        let mut out = vec![0u8; size as usize];
        self.mem.read_slice(&mut out, GuestAddress(at)).unwrap();
        out
    }
}
