//! Guest-visible devices of cvmm.
//!
//! Everything here sees guest-controlled data and treats it as hostile: every access is
//! bounds-checked and no input panics. The crate knows nothing about KVM: devices are driven
//! through the [`bus::PioDevice`]/[`bus::MmioDevice`] traits and signal interrupts through
//! eventfds, so tests can play the guest without a hypervisor.

pub mod bus;
pub mod chipset;
pub mod firmware;
pub mod interrupt;
pub mod ioapic;
pub mod legacy;
pub mod log_limit;
pub mod net;
pub mod p9;
pub mod pci;
pub mod virtio;
pub mod worker;
