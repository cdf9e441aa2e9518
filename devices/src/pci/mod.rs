//! A PCI bus 0 for the guest: configuration space helpers, a q35-like host bridge, the two
//! configuration access mechanisms (ports 0xCF8/0xCFC and an ECAM window) and a BAR window
//! that routes MMIO to whichever device BAR currently covers an address.
//!
//! Devices implement [`PciDevice`]; most build their configuration space with
//! [`PciConfiguration`]. A device sees every configuration write of its own, so it notices
//! when the guest moves a BAR or toggles memory decoding (see `VirtioPciDevice`).

mod bus;
mod config;
#[cfg(test)]
mod tests;

pub use bus::{
    PciBarWindow, PciBus, PciConfigIo, PciConfigMmio, PciWindow, HOST_BRIDGE_DEVICE_ID,
    RESET_CONTROL_RST_CPU,
};
pub use config::{PciConfiguration, PciHeader};

/// Size of a function's (extended) configuration space.
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Number of base address registers in a type 0 header.
pub const NUM_BARS: usize = 6;
/// Offset of the command register.
pub const COMMAND_REG: u16 = 0x04;
/// Command register: memory space decoding enabled.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: bus master enabled.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Offset of BAR 0.
pub const BAR0_REG: u16 = 0x10;
/// Intel's PCI vendor id.
pub const VENDOR_INTEL: u16 = 0x8086;

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PciBarKind {
    /// An I/O port range.
    Io,
    /// A memory range below 4 GiB (one register).
    Memory32,
    /// A memory range anywhere (two registers: this one and the next).
    Memory64,
}

/// One BAR as currently programmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciBarInfo {
    /// BAR index (0..=5); a 64-bit BAR uses `index` and `index + 1`.
    pub index: u8,
    /// Current base address (what the guest or the allocator wrote).
    pub addr: u64,
    /// Size in bytes, a power of two.
    pub size: u64,
    /// I/O, 32-bit or 64-bit memory.
    pub kind: PciBarKind,
    /// Prefetchable memory.
    pub prefetchable: bool,
}

/// A PCI function on bus 0.
///
/// Offsets come straight from the guest: implementations ignore accesses that are out of
/// range or of an unsupported size (reads then return all ones) and never panic.
pub trait PciDevice: Send {
    /// Reads `data.len()` (1, 2 or 4) bytes of configuration space at `offset` (0..4096).
    fn read_config(&mut self, offset: u16, data: &mut [u8]);
    /// Writes configuration space; the device applies its writable masks and side effects
    /// (BAR moves, memory decoding, capability control bits).
    fn write_config(&mut self, offset: u16, data: &[u8]);
    /// The device's BARs with their current addresses.
    fn bars(&self) -> Vec<PciBarInfo>;
    /// Reads `data` at `offset` inside memory BAR `bar`.
    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` inside memory BAR `bar`.
    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]);
}

/// Errors building configuration spaces and populating the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// A BAR index is out of range or already used.
    #[error("BAR {index} is out of range or already in use")]
    BarInUse { index: u8 },
    /// A BAR size is not a power of two or too small for its kind.
    #[error("BAR {index}: invalid size {size:#x}")]
    BarSize { index: u8, size: u64 },
    /// The capability does not fit in the 256-byte legacy configuration space.
    #[error("capability of {len} bytes does not fit (next free offset {offset:#x})")]
    CapabilitySpace { offset: u16, len: usize },
    /// A capability body is shorter than its two header bytes or has a mismatched mask.
    #[error("capability body of {len} bytes is malformed")]
    CapabilityBody { len: usize },
    /// All 31 device slots are taken.
    #[error("no free slot on PCI bus 0")]
    NoFreeSlot,
    /// The slot is the host bridge's, out of range, or taken.
    #[error("PCI slot {slot} is not free")]
    SlotInUse { slot: u8 },
    /// No room left in a BAR window.
    #[error("no room for BAR {index} ({size:#x} bytes) in the PCI MMIO window")]
    WindowFull { index: u8, size: u64 },
}

/// True when `[a, a + alen)` and `[b, b + blen)` overlap.
pub(crate) fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a < b.saturating_add(blen) && b < a.saturating_add(alen)
}
