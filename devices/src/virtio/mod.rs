//! Virtio devices and their modern (virtio 1.x, non-transitional) PCI transport.
//!
//! A device model implements [`VirtioDevice`]; [`VirtioPciDevice`] wraps it into a
//! [`crate::pci::PciDevice`] with the virtio PCI capabilities, MSI-X and the device status state
//! machine, and on DRIVER_OK hands the device its queues through an [`ActivateContext`].
//! Layout of BAR 0: see [`transport`].

mod common;
mod device;
mod msix;
mod notify;
#[cfg(test)]
mod tests;
pub mod transport;

pub use device::{
    chain_is_complete, read_config_bytes, ActivateContext, ActivateError, ActiveQueue, GuestMem,
    VirtioDevice, VirtioInterrupt,
};
pub use msix::MsixTable;
pub use notify::drain_suppressed;
pub use transport::{PciInterrupt, VirtioPciDevice, VirtioPciError};

/// Device type ids (virtio 1.2 §5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_CONSOLE: u32 = 3;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_9P: u32 = 9;
pub const TYPE_VSOCK: u32 = 19;

/// Feature bits the transport cares about.
pub const F_RING_EVENT_IDX: u64 = 1 << 29;
pub const F_VERSION_1: u64 = 1 << 32;
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;

/// Device status bits.
pub const STATUS_ACKNOWLEDGE: u8 = 0x01;
pub const STATUS_DRIVER: u8 = 0x02;
pub const STATUS_DRIVER_OK: u8 = 0x04;
pub const STATUS_FEATURES_OK: u8 = 0x08;
pub const STATUS_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;

/// "No MSI-X vector" in msix_config / queue_msix_vector.
pub const NO_VECTOR: u16 = 0xffff;
