//! The QEMU fw_cfg device as x86 firmware (OVMF, SeaBIOS) finds it: a 16-bit selector at port
//! 0x510, an 8-bit data port at 0x511 and the DMA address register at 0x514..0x51c (big-endian,
//! a write of the low half starts the transfer). Items are byte blobs under 16-bit keys; named
//! files get keys from 0x20 up in name order and are listed in the directory at key 0x19.
//! The guest can only read: DMA writes are refused with the error bit.

use crate::bus::PioDevice;
use std::collections::HashMap;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// First port of the device (selector); register it for [`FW_CFG_PORT_LEN`] ports.
pub const FW_CFG_PORT_BASE: u16 = 0x510;
/// Ports 0x510..0x51c: selector/data, two unused ports, the 8-byte DMA address register.
pub const FW_CFG_PORT_LEN: u16 = 0x0c;

/// Well-known item keys (QEMU `include/standard-headers/linux/qemu_fw_cfg.h`).
pub mod keys {
    pub const SIGNATURE: u16 = 0x00;
    pub const ID: u16 = 0x01;
    pub const UUID: u16 = 0x02;
    pub const RAM_SIZE: u16 = 0x03;
    pub const NOGRAPHIC: u16 = 0x04;
    pub const NB_CPUS: u16 = 0x05;
    pub const MACHINE_ID: u16 = 0x06;
    pub const KERNEL_ADDR: u16 = 0x07;
    pub const KERNEL_SIZE: u16 = 0x08;
    pub const KERNEL_CMDLINE: u16 = 0x09;
    pub const INITRD_ADDR: u16 = 0x0a;
    pub const INITRD_SIZE: u16 = 0x0b;
    pub const BOOT_DEVICE: u16 = 0x0c;
    pub const NUMA: u16 = 0x0d;
    pub const BOOT_MENU: u16 = 0x0e;
    pub const MAX_CPUS: u16 = 0x0f;
    pub const KERNEL_ENTRY: u16 = 0x10;
    pub const KERNEL_DATA: u16 = 0x11;
    pub const INITRD_DATA: u16 = 0x12;
    pub const CMDLINE_ADDR: u16 = 0x13;
    pub const CMDLINE_SIZE: u16 = 0x14;
    pub const CMDLINE_DATA: u16 = 0x15;
    pub const SETUP_ADDR: u16 = 0x16;
    pub const SETUP_SIZE: u16 = 0x17;
    pub const SETUP_DATA: u16 = 0x18;
    pub const FILE_DIR: u16 = 0x19;
    /// Key of the first named file.
    pub const FILE_FIRST: u16 = 0x20;
    /// Bit of architecture-specific keys (x86: 0x8000 ACPI tables .. 0x8004 HPET).
    pub const ARCH_LOCAL: u16 = 0x8000;
    /// Bit 14: the legacy "write" channel; ignored when looking an item up.
    pub const WRITE_CHANNEL: u16 = 0x4000;
}

/// Bits of `FWCfgDmaAccess.control`.
pub mod dma_ctl {
    pub const ERROR: u32 = 1 << 0;
    pub const READ: u32 = 1 << 1;
    pub const SKIP: u32 = 1 << 2;
    pub const SELECT: u32 = 1 << 3;
    pub const WRITE: u32 = 1 << 4;
}

/// What reading the DMA address register returns: "QEMU CFG", big-endian.
pub const DMA_SIGNATURE: [u8; 8] = *b"QEMU CFG";
/// Bytes of a file name in the directory, the terminating NUL included.
pub const FILE_NAME_SIZE: usize = 56;
/// Highest number of named files (keys 0x20..0x3fff).
pub const MAX_FILES: usize = 0x4000 - keys::FILE_FIRST as usize;
/// Bytes of one `FWCfgDmaAccess` structure.
pub const DMA_ACCESS_LEN: u64 = 16;

const ZERO_CHUNK: usize = 64 * 1024;
static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];

/// Errors configuring the device (host side; the guest cannot cause these).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    /// The key is the signature, the ID, the directory, or in the range kept for named files.
    #[error("fw_cfg key {0:#06x} is reserved (signature, id, directory or file range)")]
    ReservedKey(u16),
    /// The file name is empty, longer than 55 bytes or contains a NUL.
    #[error("invalid fw_cfg file name {0:?} (1 to 55 bytes, no NUL)")]
    InvalidFileName(String),
    /// A file of that name exists already.
    #[error("duplicate fw_cfg file name {0:?}")]
    DuplicateFile(String),
    /// All file keys are in use.
    #[error("too many fw_cfg files (limit {MAX_FILES})")]
    TooManyFiles,
    /// The item does not fit the 32-bit size field of the directory.
    #[error("fw_cfg item {name} is {len} bytes, larger than 4 GiB - 1")]
    TooLarge { name: String, len: usize },
}

/// Guest memory as the DMA interface sees it; `false` means the range is not (all) memory.
pub trait DmaMemory: Send + Sync {
    /// Reads `buf.len()` bytes at guest-physical `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
    /// Writes `buf` at guest-physical `addr`.
    fn write(&self, addr: u64, buf: &[u8]) -> bool;
}

impl DmaMemory for GuestMemoryMmap<()> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        self.read_slice(buf, GuestAddress(addr)).is_ok()
    }
    fn write(&self, addr: u64, buf: &[u8]) -> bool {
        self.write_slice(buf, GuestAddress(addr)).is_ok()
    }
}

/// Told the name of each item the first time the guest selects it (files by name, numbered
/// items as `key-0xNNNN`, the kernel items by what they hold): firmware progress for the boot
/// timeline.
pub type SelectObserver = Box<dyn FnMut(&str) + Send>;

/// The fw_cfg device.
pub struct FwCfg {
    items: HashMap<u16, Vec<u8>>,
    /// Named files sorted by name; file `i` has key `FILE_FIRST + i`.
    files: Vec<(String, Vec<u8>)>,
    dir: Vec<u8>,
    selected: u16,
    offset: usize,
    dma_addr: u64,
    mem: Option<Arc<dyn DmaMemory>>,
    observer: Option<SelectObserver>,
    seen: std::collections::HashSet<u16>,
}

impl Default for FwCfg {
    fn default() -> Self {
        Self::new()
    }
}

impl FwCfg {
    /// A device with the signature, the ID (traditional interface only) and an empty directory.
    pub fn new() -> Self {
        let mut items = HashMap::new();
        items.insert(keys::SIGNATURE, b"QEMU".to_vec());
        items.insert(keys::ID, 1u32.to_le_bytes().to_vec());
        Self {
            items,
            files: Vec::new(),
            dir: 0u32.to_be_bytes().to_vec(),
            selected: keys::SIGNATURE,
            offset: 0,
            dma_addr: 0,
            mem: None,
            observer: None,
            seen: std::collections::HashSet::new(),
        }
    }

    /// Reports first selections to `observer`.
    pub fn set_select_observer(&mut self, observer: SelectObserver) {
        self.observer = Some(observer);
    }

    fn item_name(&self, key: u16) -> String {
        let key = key & !keys::WRITE_CHANNEL;
        if key & keys::ARCH_LOCAL == 0 && key >= keys::FILE_FIRST {
            if let Some((name, _)) = self.files.get(usize::from(key - keys::FILE_FIRST)) {
                return name.clone();
            }
        }
        match key {
            keys::SIGNATURE => "signature".into(),
            keys::FILE_DIR => "file-dir".into(),
            keys::NB_CPUS => "nb-cpus".into(),
            keys::KERNEL_DATA => "kernel".into(),
            keys::INITRD_DATA => "initrd".into(),
            keys::CMDLINE_DATA => "cmdline".into(),
            keys::SETUP_DATA => "setup".into(),
            k => format!("key-{k:#06x}"),
        }
    }

    /// Enables the DMA interface (ID bit 1) on top of `mem`.
    pub fn with_dma(mut self, mem: Arc<dyn DmaMemory>) -> Self {
        self.mem = Some(mem);
        self.items.insert(keys::ID, 3u32.to_le_bytes().to_vec());
        self
    }

    /// Sets (or replaces) a numbered item: a well-known key below 0x20 or an x86 key (0x8000+).
    pub fn set_item(&mut self, key: u16, data: Vec<u8>) -> Result<(), FwCfgError> {
        let reserved = matches!(key, keys::SIGNATURE | keys::ID | keys::FILE_DIR)
            || key & keys::WRITE_CHANNEL != 0
            || (key & keys::ARCH_LOCAL == 0 && key >= keys::FILE_FIRST);
        if reserved {
            return Err(FwCfgError::ReservedKey(key));
        }
        check_len(&format!("{key:#06x}"), data.len())?;
        self.items.insert(key, data);
        Ok(())
    }

    /// Sets a numbered item holding a little-endian u16 (QEMU `fw_cfg_add_i16`).
    pub fn set_u16(&mut self, key: u16, v: u16) -> Result<(), FwCfgError> {
        self.set_item(key, v.to_le_bytes().to_vec())
    }

    /// Sets a numbered item holding a little-endian u32.
    pub fn set_u32(&mut self, key: u16, v: u32) -> Result<(), FwCfgError> {
        self.set_item(key, v.to_le_bytes().to_vec())
    }

    /// Sets a numbered item holding a little-endian u64.
    pub fn set_u64(&mut self, key: u16, v: u64) -> Result<(), FwCfgError> {
        self.set_item(key, v.to_le_bytes().to_vec())
    }

    /// Adds a named file. Keys follow name order, as in QEMU since 2.x (`legacy_fw_cfg_order`
    /// off), so adding a file may move others; look keys up with [`FwCfg::file_key`].
    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<(), FwCfgError> {
        if name.is_empty() || name.len() >= FILE_NAME_SIZE || name.contains('\0') {
            return Err(FwCfgError::InvalidFileName(name.to_string()));
        }
        check_len(name, data.len())?;
        let at = match self.files.binary_search_by(|(n, _)| n.as_str().cmp(name)) {
            Ok(_) => return Err(FwCfgError::DuplicateFile(name.to_string())),
            Err(at) => at,
        };
        if self.files.len() >= MAX_FILES {
            return Err(FwCfgError::TooManyFiles);
        }
        self.files.insert(at, (name.to_string(), data));
        self.rebuild_dir();
        Ok(())
    }

    /// The key of a named file.
    pub fn file_key(&self, name: &str) -> Option<u16> {
        let i = self
            .files
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()?;
        Some(keys::FILE_FIRST + i as u16)
    }

    /// The content of the item under `key` (any key form the guest may select).
    pub fn item(&self, key: u16) -> Option<&[u8]> {
        let key = key & !keys::WRITE_CHANNEL;
        if key == keys::FILE_DIR {
            return Some(&self.dir);
        }
        if key & keys::ARCH_LOCAL == 0 && key >= keys::FILE_FIRST {
            let i = usize::from(key - keys::FILE_FIRST);
            return self.files.get(i).map(|(_, d)| d.as_slice());
        }
        self.items.get(&key).map(Vec::as_slice)
    }

    /// Back to the power-on state: signature selected, no DMA address latched.
    pub fn reset(&mut self) {
        self.selected = keys::SIGNATURE;
        self.offset = 0;
        self.dma_addr = 0;
    }

    fn rebuild_dir(&mut self) {
        let mut dir = Vec::with_capacity(4 + 64 * self.files.len());
        dir.extend_from_slice(&(self.files.len() as u32).to_be_bytes());
        for (i, (name, data)) in self.files.iter().enumerate() {
            dir.extend_from_slice(&(data.len() as u32).to_be_bytes());
            dir.extend_from_slice(&(keys::FILE_FIRST + i as u16).to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut n = [0u8; FILE_NAME_SIZE];
            n[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&n);
        }
        self.dir = dir;
    }

    fn select(&mut self, key: u16) {
        tracing::trace!(key, "fw_cfg select");
        self.selected = key;
        self.offset = 0;
        if self.observer.is_some() && self.seen.insert(key & !keys::WRITE_CHANNEL) {
            let name = self.item_name(key);
            if let Some(obs) = self.observer.as_mut() {
                obs(&name);
            }
        }
    }

    /// Reads the next byte of the selected item; past its end (or with no item) reads zero.
    fn read_byte(&mut self) -> u8 {
        let off = self.offset;
        match self.item(self.selected).and_then(|d| d.get(off).copied()) {
            Some(b) => {
                self.offset += 1;
                b
            }
            None => 0,
        }
    }

    /// Runs the DMA request whose `FWCfgDmaAccess` is at guest-physical `access`.
    fn dma_transfer(&mut self, access: u64) {
        let Some(mem) = self.mem.clone() else {
            tracing::debug!(access, "fw_cfg DMA without DMA support ignored");
            return;
        };
        let mut raw = [0u8; DMA_ACCESS_LEN as usize];
        if !mem.read(access, &mut raw) {
            tracing::debug!(access, "fw_cfg DMA access structure outside guest memory");
            mem.write(access, &dma_ctl::ERROR.to_be_bytes());
            return;
        }
        let control = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let length = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]);
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&raw[8..16]);
        let address = u64::from_be_bytes(addr);
        if control & dma_ctl::SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let status = if control & dma_ctl::READ != 0 {
            self.dma_read(mem.as_ref(), address, length)
        } else if control & dma_ctl::WRITE != 0 {
            tracing::debug!(key = self.selected, "fw_cfg DMA write refused");
            dma_ctl::ERROR
        } else if control & dma_ctl::SKIP != 0 {
            let len = self.item(self.selected).map_or(0, <[u8]>::len);
            self.offset = (self.offset + length as usize).min(len);
            0
        } else {
            0
        };
        mem.write(access, &status.to_be_bytes());
    }

    /// Copies `length` bytes of the selected item to `address`, zeros past its end.
    fn dma_read(&mut self, mem: &dyn DmaMemory, address: u64, length: u32) -> u32 {
        if address.checked_add(u64::from(length)).is_none() {
            return dma_ctl::ERROR;
        }
        let off = self.offset;
        let data = self.item(self.selected).unwrap_or(&[]);
        let avail = data.len().saturating_sub(off).min(length as usize);
        if avail > 0 {
            let ok = mem.write(address, &data[off..off + avail]);
            self.offset += avail;
            if !ok {
                tracing::debug!(
                    address,
                    avail,
                    "fw_cfg DMA read target outside guest memory"
                );
                return dma_ctl::ERROR;
            }
        }
        let mut at = address + avail as u64;
        let mut left = length as usize - avail;
        while left > 0 {
            let n = left.min(ZERO_CHUNK);
            if !mem.write(at, &ZEROS[..n]) {
                tracing::debug!(at, "fw_cfg DMA zero fill outside guest memory");
                return dma_ctl::ERROR;
            }
            at += n as u64;
            left -= n;
        }
        0
    }
}

fn check_len(name: &str, len: usize) -> Result<(), FwCfgError> {
    if u32::try_from(len).is_err() {
        return Err(FwCfgError::TooLarge {
            name: name.to_string(),
            len,
        });
    }
    Ok(())
}

impl PioDevice for FwCfg {
    /// Ports 0x510/0x511 read the data stream (a longer access reads that many bytes in
    /// order, as a `rep insb` would); 0x514..0x51c read the DMA signature; the rest reads zero.
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        match offset {
            0 | 1 => data.iter_mut().for_each(|b| *b = self.read_byte()),
            4..=11 => {
                for (i, b) in data.iter_mut().enumerate() {
                    let at = usize::from(offset - 4) + i;
                    *b = DMA_SIGNATURE.get(at).copied().unwrap_or(0);
                }
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        match (offset, data.len()) {
            (0, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (4, 4) => {
                let hi = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                self.dma_addr = u64::from(hi) << 32;
            }
            (8, 4) => {
                let lo = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let addr = self.dma_addr | u64::from(lo);
                self.dma_addr = 0;
                self.dma_transfer(addr);
            }
            (4, 8) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(data);
                self.dma_addr = 0;
                self.dma_transfer(u64::from_be_bytes(b));
            }
            // Data-port writes have been no-ops since QEMU 2.4.
            _ => tracing::trace!(offset, len = data.len(), "fw_cfg write ignored"),
        }
    }
}
