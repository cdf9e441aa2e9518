//! PCI bus 0: a q35-like host bridge at slot 0, devices at slots 1..=31 (function 0 only),
//! configuration access through ports 0xCF8/0xCFC ([`PciConfigIo`]) or ECAM
//! ([`PciConfigMmio`]), and BAR MMIO through [`PciBarWindow`].
//!
//! The bus keeps a map of the memory BARs currently decoded (memory space enabled, address
//! set), rebuilt after every configuration write that touches a command register or a BAR, so
//! a BAR the guest moves is reached at its new address. [`PciBus::add_device`] gives each
//! memory BAR an initial, naturally aligned address from the windows, as firmware would.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{
    overlaps, PciBarKind, PciConfiguration, PciDevice, PciError, PciHeader, BAR0_REG,
    COMMAND_MEMORY, COMMAND_REG, VENDOR_INTEL,
};
use crate::bus::{lock, MmioDevice, PioDevice};

/// Device id of QEMU q35's MCH host bridge, which the host bridge imitates.
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x29c0;
const SLOTS: usize = 32;

/// A guest-physical address range BARs are allocated from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciWindow {
    pub base: u64,
    pub size: u64,
}

#[derive(Clone, Copy, Debug)]
struct Allocator {
    next: u64,
    end: u64,
}

impl Allocator {
    fn new(w: PciWindow) -> Self {
        Self {
            next: w.base,
            end: w.base.saturating_add(w.size),
        }
    }

    /// A naturally aligned block of `size` (a power of two) bytes.
    fn alloc(&mut self, size: u64) -> Option<u64> {
        let addr = self.next.checked_add(size - 1)? & !(size - 1);
        let end = addr.checked_add(size)?;
        (end <= self.end).then(|| {
            self.next = end;
            addr
        })
    }
}

/// The host bridge at 00:00.0.
struct HostBridge(PciConfiguration);

impl PciDevice for HostBridge {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        self.0.read(offset, data)
    }
    fn write_config(&mut self, offset: u16, data: &[u8]) {
        self.0.write(offset, data)
    }
    fn bars(&self) -> Vec<super::PciBarInfo> {
        Vec::new()
    }
    fn read_bar(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff)
    }
    fn write_bar(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}

type DeviceRef = Arc<Mutex<dyn PciDevice>>;

struct MappedBar {
    len: u64,
    bar: u8,
    device: DeviceRef,
}

/// Bus 0 with its devices and BAR windows.
pub struct PciBus {
    slots: Vec<Option<DeviceRef>>,
    mmio32: Allocator,
    mmio64: Option<Allocator>,
    map: BTreeMap<u64, MappedBar>,
}

impl PciBus {
    /// A bus with only the host bridge. 32-bit memory BARs come from `mmio32`; 64-bit ones
    /// from `mmio64` when given, else from `mmio32` too.
    pub fn new(mmio32: PciWindow, mmio64: Option<PciWindow>) -> Self {
        let bridge = PciConfiguration::new(&PciHeader {
            vendor_id: VENDOR_INTEL,
            device_id: HOST_BRIDGE_DEVICE_ID,
            revision: 0,
            class_code: 0x06_00_00,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
        });
        Self::with_host_bridge(mmio32, mmio64, Arc::new(Mutex::new(HostBridge(bridge))))
    }

    /// A bus whose 00:00.0 is `bridge` (e.g. a chipset model with its own registers).
    pub fn with_host_bridge(
        mmio32: PciWindow,
        mmio64: Option<PciWindow>,
        bridge: DeviceRef,
    ) -> Self {
        let mut slots: Vec<Option<DeviceRef>> = (0..SLOTS).map(|_| None).collect();
        slots[0] = Some(bridge);
        Self {
            slots,
            mmio32: Allocator::new(mmio32),
            mmio64: mmio64.map(Allocator::new),
            map: BTreeMap::new(),
        }
    }

    /// Plugs `device` into the lowest free slot (1..=31), assigns its memory BARs addresses
    /// (largest first; memory decoding stays off until the guest enables it) and returns the
    /// slot. I/O BARs are left at 0: there is no I/O window.
    pub fn add_device(&mut self, device: DeviceRef) -> Result<u8, PciError> {
        let slot = (1..SLOTS)
            .find(|&s| self.slots[s].is_none())
            .ok_or(PciError::NoFreeSlot)?;
        self.add_device_at(slot as u8, device)
    }

    /// Plugs `device` into `slot` (1..=31, free), assigning its BARs as [`Self::add_device`].
    pub fn add_device_at(&mut self, slot: u8, device: DeviceRef) -> Result<u8, PciError> {
        let slot = usize::from(slot);
        if slot == 0 || slot >= SLOTS || self.slots[slot].is_some() {
            return Err(PciError::SlotInUse { slot: slot as u8 });
        }
        {
            let mut d = lock(&device);
            let mut bars: Vec<_> = d
                .bars()
                .into_iter()
                .filter(|b| b.kind != PciBarKind::Io && b.size.is_power_of_two())
                .collect();
            bars.sort_by_key(|b| std::cmp::Reverse(b.size));
            let (mut a32, mut a64) = (self.mmio32, self.mmio64);
            let mut plan = Vec::new();
            for b in bars {
                let addr = match (b.kind, a64.as_mut()) {
                    (PciBarKind::Memory64, Some(a)) => a.alloc(b.size),
                    _ => a32.alloc(b.size),
                };
                let addr = addr.ok_or(PciError::WindowFull {
                    index: b.index,
                    size: b.size,
                })?;
                plan.push((b, addr));
            }
            (self.mmio32, self.mmio64) = (a32, a64);
            for (b, addr) in plan {
                let reg = BAR0_REG + 4 * u16::from(b.index);
                d.write_config(reg, &(addr as u32).to_le_bytes());
                if b.kind == PciBarKind::Memory64 {
                    d.write_config(reg + 4, &((addr >> 32) as u32).to_le_bytes());
                }
                tracing::debug!(slot, bar = b.index, addr, size = b.size, "PCI BAR assigned");
            }
        }
        self.slots[slot] = Some(device);
        self.refresh_map();
        Ok(slot as u8)
    }

    /// The device at `slot`, if any (slot 0 is the host bridge).
    pub fn device(&self, slot: u8) -> Option<DeviceRef> {
        self.slots.get(usize::from(slot))?.clone()
    }

    fn function(&self, bus: u8, dev: u8, func: u8) -> Option<&DeviceRef> {
        if bus != 0 || func != 0 {
            return None;
        }
        self.slots.get(usize::from(dev))?.as_ref()
    }

    /// Configuration read of `bus:dev.func` at `reg`; absent functions read all ones.
    pub fn config_read(&self, bus: u8, dev: u8, func: u8, reg: u16, data: &mut [u8]) {
        match self.function(bus, dev, func) {
            Some(d) => lock(d).read_config(reg, data),
            None => data.fill(0xff),
        }
    }

    /// Configuration write of `bus:dev.func` at `reg`; writes to absent functions are dropped.
    pub fn config_write(&mut self, bus: u8, dev: u8, func: u8, reg: u16, data: &[u8]) {
        let Some(d) = self.function(bus, dev, func) else {
            return;
        };
        lock(d).write_config(reg, data);
        let (r, n) = (u64::from(reg), data.len() as u64);
        if overlaps(r, n, u64::from(COMMAND_REG), 2) || overlaps(r, n, u64::from(BAR0_REG), 24) {
            self.refresh_map();
        }
    }

    fn refresh_map(&mut self) {
        let mut map: BTreeMap<u64, MappedBar> = BTreeMap::new();
        for dev in self.slots.iter().flatten() {
            let mut d = lock(dev);
            let mut cmd = [0u8; 2];
            d.read_config(COMMAND_REG, &mut cmd);
            if u16::from_le_bytes(cmd) & COMMAND_MEMORY == 0 {
                continue;
            }
            for b in d.bars() {
                let Some(end) = b.addr.checked_add(b.size) else {
                    continue;
                };
                if b.kind == PciBarKind::Io || b.addr == 0 || b.size == 0 {
                    continue;
                }
                let clash = map
                    .range(..end)
                    .next_back()
                    .is_some_and(|(&s, m)| s + m.len > b.addr);
                if clash {
                    tracing::warn!(
                        addr = b.addr,
                        size = b.size,
                        "overlapping PCI BAR not decoded"
                    );
                    continue;
                }
                map.insert(
                    b.addr,
                    MappedBar {
                        len: b.size,
                        bar: b.index,
                        device: dev.clone(),
                    },
                );
            }
        }
        self.map = map;
    }

    /// The device BAR covering all of `[addr, addr + len)`: (device, bar index, offset).
    fn lookup(&self, addr: u64, len: usize) -> Option<(DeviceRef, u8, u64)> {
        let (&base, m) = self.map.range(..=addr).next_back()?;
        let off = addr - base;
        (off.checked_add(len as u64)? <= m.len).then(|| (m.device.clone(), m.bar, off))
    }
}

/// Configuration mechanism #1: address register at 0xCF8, data at 0xCFC..=0xCFF, and the
/// chipset's reset control register at 0xCF9 (byte access): writing RST_CPU (bit 2) resets
/// the machine, as on PIIX/ICH9 (Linux `reboot=pci`, OVMF's reset on q35, the q35 FADT).
/// Register it on the PIO bus at 0xCF8 with length 8.
pub struct PciConfigIo {
    bus: Arc<Mutex<PciBus>>,
    address: u32,
    reset_control: u8,
    reset: Option<crate::legacy::StopSignal>,
}

/// Offset of the reset control register (port 0xCF9) in the 0xCF8 range.
const RESET_CONTROL: u16 = 1;
/// Reset control: reset the CPU (with SYS_RST, bit 1, a "hard" reset; cvmm treats both alike).
pub const RESET_CONTROL_RST_CPU: u8 = 1 << 2;

impl PciConfigIo {
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        Self {
            bus,
            address: 0,
            reset_control: 0,
            reset: None,
        }
    }

    /// Makes 0xCF9 writes with RST_CPU reset the VM through `stop`.
    pub fn with_reset(mut self, stop: crate::legacy::StopSignal) -> Self {
        self.reset = Some(stop);
        self
    }

    /// (bus, device, function, register) of a data access at byte lane `lane`, if enabled.
    fn target(&self, lane: u16) -> Option<(u8, u8, u8, u16)> {
        let a = self.address;
        (a & 0x8000_0000 != 0).then(|| {
            let b = (a >> 16) as u8;
            let d = ((a >> 11) & 0x1f) as u8;
            let f = ((a >> 8) & 0x7) as u8;
            (b, d, f, (a & 0xfc) as u16 + lane)
        })
    }

    fn data_lane(offset: u16, len: usize) -> Option<u16> {
        (4..8)
            .contains(&offset)
            .then(|| offset - 4)
            .filter(|l| usize::from(*l) + len <= 4)
    }
}

impl PioDevice for PciConfigIo {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.address.to_le_bytes());
            return;
        }
        if offset == RESET_CONTROL && data.len() == 1 && self.reset.is_some() {
            data[0] = self.reset_control;
            return;
        }
        match Self::data_lane(offset, data.len()).and_then(|l| self.target(l)) {
            Some((b, d, f, reg)) => lock(&self.bus).config_read(b, d, f, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if offset == 0 {
            if let Ok(v) = <[u8; 4]>::try_from(data) {
                self.address = u32::from_le_bytes(v) & 0x80ff_fffc;
            }
            return;
        }
        if let (RESET_CONTROL, &[v], Some(stop)) = (offset, data, &self.reset) {
            self.reset_control = v & 0x0e;
            if v & RESET_CONTROL_RST_CPU != 0 {
                tracing::info!("guest requested reset through port 0xcf9");
                stop.stop(crate::legacy::GuestStop::Reset);
            }
            return;
        }
        if let Some((b, d, f, reg)) =
            Self::data_lane(offset, data.len()).and_then(|l| self.target(l))
        {
            lock(&self.bus).config_write(b, d, f, reg, data);
        }
    }
}

/// ECAM (MMCONFIG): offset = bus << 20 | device << 15 | function << 12 | register.
pub struct PciConfigMmio {
    bus: Arc<Mutex<PciBus>>,
}

impl PciConfigMmio {
    pub fn new(bus: Arc<Mutex<PciBus>>) -> Self {
        Self { bus }
    }

    fn decode(offset: u64) -> Option<(u8, u8, u8, u16)> {
        let b = u8::try_from(offset >> 20).ok()?;
        Some((
            b,
            ((offset >> 15) & 0x1f) as u8,
            ((offset >> 12) & 7) as u8,
            (offset & 0xfff) as u16,
        ))
    }
}

impl MmioDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match Self::decode(offset) {
            Some((b, d, f, reg)) => lock(&self.bus).config_read(b, d, f, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((b, d, f, reg)) = Self::decode(offset) {
            lock(&self.bus).config_write(b, d, f, reg, data);
        }
    }
}

/// An MMIO window (registered on the MMIO bus at `base`) that forwards each access to the
/// device BAR covering it; accesses that hit no BAR, or straddle a BAR's end, read all ones.
pub struct PciBarWindow {
    bus: Arc<Mutex<PciBus>>,
    base: u64,
}

impl PciBarWindow {
    /// A window whose first byte is guest-physical `base`.
    pub fn new(bus: Arc<Mutex<PciBus>>, base: u64) -> Self {
        Self { bus, base }
    }

    fn find(&self, offset: u64, len: usize) -> Option<(DeviceRef, u8, u64)> {
        let addr = self.base.checked_add(offset)?;
        lock(&self.bus).lookup(addr, len)
    }
}

impl MmioDevice for PciBarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.find(offset, data.len()) {
            Some((dev, bar, off)) => lock(&dev).read_bar(bar, off, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((dev, bar, off)) = self.find(offset, data.len()) {
            lock(&dev).write_bar(bar, off, data);
        }
    }
}
