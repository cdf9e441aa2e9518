//! A type 0 configuration space with per-byte writable masks: identity registers, BARs with
//! the sizing protocol, command/status and a capability list.
//!
//! BAR sizing needs no special case: the address bits of a BAR are writable only above its
//! size, so after the guest writes all ones the register reads back `!(size - 1) | flags`.

use super::{overlaps, PciBarInfo, PciBarKind, PciError, CONFIG_SPACE_SIZE, NUM_BARS};

const STATUS_REG: usize = 0x06;
const STATUS_CAP_LIST: u8 = 1 << 4;
const CAP_PTR_REG: usize = 0x34;
const FIRST_CAP: u16 = 0x40;
const LEGACY_END: u16 = 0x100;
/// Writable command bits: I/O, memory, bus master, parity, SERR, INTx disable.
const COMMAND_WMASK: u16 = 0x0547;

/// Identity of a function.
#[derive(Clone, Copy, Debug)]
pub struct PciHeader {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision: u8,
    /// Class, subclass and programming interface: `0xCCSSPP`.
    pub class_code: u32,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
}

#[derive(Clone, Copy, Debug)]
struct BarSpec {
    size: u64,
    kind: PciBarKind,
    prefetchable: bool,
}

/// Configuration space of one function.
pub struct PciConfiguration {
    regs: Vec<u8>,
    wmask: Vec<u8>,
    bars: [Option<BarSpec>; NUM_BARS],
    /// Upper halves of 64-bit BARs.
    bar_hi: [bool; NUM_BARS],
    last_cap: Option<u16>,
    next_cap: u16,
}

impl PciConfiguration {
    /// A header with `h`'s identity, no BARs, no capabilities and interrupt pin 0 (no INTx).
    pub fn new(h: &PciHeader) -> Self {
        let mut c = Self {
            regs: vec![0; CONFIG_SPACE_SIZE],
            wmask: vec![0; CONFIG_SPACE_SIZE],
            bars: [None; NUM_BARS],
            bar_hi: [false; NUM_BARS],
            last_cap: None,
            next_cap: FIRST_CAP,
        };
        c.set_raw(0x00, &h.vendor_id.to_le_bytes());
        c.set_raw(0x02, &h.device_id.to_le_bytes());
        c.set_raw(0x08, &[h.revision]);
        c.set_raw(0x09, &h.class_code.to_le_bytes()[..3]);
        c.set_raw(0x2c, &h.subsystem_vendor_id.to_le_bytes());
        c.set_raw(0x2e, &h.subsystem_id.to_le_bytes());
        c.wmask[0x04..0x06].copy_from_slice(&COMMAND_WMASK.to_le_bytes());
        c.wmask[0x0c] = 0xff; // cache line size
        c.wmask[0x3c] = 0xff; // interrupt line (scratch for the OS)
        c
    }

    /// Declares BAR `index`; its address starts at 0 until the allocator or guest sets it.
    pub fn add_bar(
        &mut self,
        index: u8,
        size: u64,
        kind: PciBarKind,
        prefetchable: bool,
    ) -> Result<(), PciError> {
        let i = usize::from(index);
        let regs = if kind == PciBarKind::Memory64 { 2 } else { 1 };
        if i + regs > NUM_BARS || (i..i + regs).any(|j| self.bars[j].is_some() || self.bar_hi[j]) {
            return Err(PciError::BarInUse { index });
        }
        let (min, max, flags) = match kind {
            PciBarKind::Io => (4, 1 << 16, 0x1u32),
            PciBarKind::Memory32 => (16, 1 << 31, u32::from(prefetchable) << 3),
            PciBarKind::Memory64 => (16, 1 << 63, 0x4 | u32::from(prefetchable) << 3),
        };
        if !size.is_power_of_two() || size < min || size > max {
            return Err(PciError::BarSize { index, size });
        }
        let low_flags_mask: u32 = if kind == PciBarKind::Io { 0x3 } else { 0xf };
        let reg = 0x10 + 4 * i;
        self.set_raw(reg as u16, &flags.to_le_bytes());
        let wm = (!(size - 1) as u32) & !low_flags_mask;
        self.wmask[reg..reg + 4].copy_from_slice(&wm.to_le_bytes());
        if kind == PciBarKind::Memory64 {
            let hi = !((size - 1) >> 32) as u32;
            self.wmask[reg + 4..reg + 8].copy_from_slice(&hi.to_le_bytes());
            self.bar_hi[i + 1] = true;
        }
        self.bars[i] = Some(BarSpec {
            size,
            kind,
            prefetchable,
        });
        Ok(())
    }

    /// Appends a capability (`body[0]` is its id, `body[1]` its next pointer, filled in here)
    /// with a writable mask of the same length (or empty: read-only). Returns its offset.
    pub fn add_capability(&mut self, body: &[u8], wmask: &[u8]) -> Result<u16, PciError> {
        if body.len() < 2 || (!wmask.is_empty() && wmask.len() != body.len()) {
            return Err(PciError::CapabilityBody { len: body.len() });
        }
        let off = self.next_cap;
        if usize::from(off) + body.len() > usize::from(LEGACY_END) {
            return Err(PciError::CapabilitySpace {
                offset: off,
                len: body.len(),
            });
        }
        let o = usize::from(off);
        self.regs[o..o + body.len()].copy_from_slice(body);
        self.regs[o + 1] = 0;
        if !wmask.is_empty() {
            self.wmask[o..o + body.len()].copy_from_slice(wmask);
        }
        self.wmask[o] = 0;
        self.wmask[o + 1] = 0;
        match self.last_cap {
            Some(prev) => self.regs[usize::from(prev) + 1] = off as u8,
            None => self.regs[CAP_PTR_REG] = off as u8,
        }
        self.regs[STATUS_REG] |= STATUS_CAP_LIST;
        self.last_cap = Some(off);
        self.next_cap = (off + body.len() as u16 + 3) & !3;
        Ok(off)
    }

    /// Guest read: 1, 2 or 4 bytes anywhere inside the 4 KiB; anything else reads all ones.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        match Self::range(offset, data.len()) {
            Some(r) => data.copy_from_slice(&self.regs[r]),
            None => data.fill(0xff),
        }
    }

    /// Guest write through the writable masks; bad sizes or ranges are dropped.
    pub fn write(&mut self, offset: u16, data: &[u8]) {
        let Some(r) = Self::range(offset, data.len()) else {
            tracing::debug!(offset, len = data.len(), "dropped bad PCI config write");
            return;
        };
        for (i, &d) in r.zip(data) {
            self.regs[i] = (self.regs[i] & !self.wmask[i]) | (d & self.wmask[i]);
        }
    }

    /// Makes `mask.len()` bytes at `offset` writable through `mask` (device-specific
    /// registers such as chipset configuration); ranges past the space are ignored.
    pub fn set_writable(&mut self, offset: u16, mask: &[u8]) {
        let o = usize::from(offset);
        if let Some(dst) = self.wmask.get_mut(o..o.saturating_add(mask.len())) {
            dst.copy_from_slice(mask);
        }
    }

    /// Device-side write that ignores the masks (read-only fields the device updates).
    pub fn set_raw(&mut self, offset: u16, data: &[u8]) {
        let o = usize::from(offset);
        if let Some(dst) = self.regs.get_mut(o..o.saturating_add(data.len())) {
            dst.copy_from_slice(data);
        }
    }

    /// Little-endian u16 at `offset` (0 past the end).
    pub fn read_u16(&self, offset: u16) -> u16 {
        let mut b = [0u8; 2];
        let o = usize::from(offset);
        if let Some(s) = self.regs.get(o..o + 2) {
            b.copy_from_slice(s);
        }
        u16::from_le_bytes(b)
    }

    /// Little-endian u32 at `offset` (0 past the end).
    pub fn read_u32(&self, offset: u16) -> u32 {
        u32::from(self.read_u16(offset)) | u32::from(self.read_u16(offset.saturating_add(2))) << 16
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(super::COMMAND_REG)
    }

    /// Whether memory BARs are decoded.
    pub fn memory_enabled(&self) -> bool {
        self.command() & super::COMMAND_MEMORY != 0
    }

    /// The declared BARs with their current addresses.
    pub fn bars(&self) -> Vec<PciBarInfo> {
        (0..NUM_BARS)
            .filter_map(|i| {
                let spec = self.bars[i]?;
                let reg = 0x10 + 4 * i as u16;
                let low = u64::from(self.read_u32(reg));
                let addr = match spec.kind {
                    PciBarKind::Io => low & !0x3,
                    PciBarKind::Memory32 => low & !0xf,
                    PciBarKind::Memory64 => (low & !0xf) | u64::from(self.read_u32(reg + 4)) << 32,
                };
                Some(PciBarInfo {
                    index: i as u8,
                    addr,
                    size: spec.size,
                    kind: spec.kind,
                    prefetchable: spec.prefetchable,
                })
            })
            .collect()
    }

    /// Current address of BAR `index`, if declared.
    pub fn bar_address(&self, index: u8) -> Option<u64> {
        self.bars()
            .into_iter()
            .find(|b| b.index == index)
            .map(|b| b.addr)
    }

    /// True when a write of `len` bytes at `offset` touched `[reg, reg + reg_len)`.
    pub fn touched(offset: u16, len: usize, reg: u16, reg_len: u16) -> bool {
        overlaps(
            u64::from(offset),
            len as u64,
            u64::from(reg),
            u64::from(reg_len),
        )
    }

    fn range(offset: u16, len: usize) -> Option<std::ops::Range<usize>> {
        let o = usize::from(offset);
        (matches!(len, 1 | 2 | 4) && o + len <= CONFIG_SPACE_SIZE).then_some(o..o + len)
    }
}
