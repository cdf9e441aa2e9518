//! What devices need from the hypervisor for interrupts and doorbells, as traits so device
//! models stay KVM-free: MSI routes (a GSI with an irqfd, routed to an MSI address/data pair)
//! and ioeventfds (a guest write to an address signals an eventfd without a VM exit to
//! userspace). The VMM implements them with KVM; tests use recording fakes.

use vmm_sys_util::eventfd::EventFd;

/// A level-triggered interrupt line a device drives (the ACPI SCI): called with `true` when
/// the device asserts it and `false` when it releases it, only on changes.
pub type IrqLine = Box<dyn FnMut(bool) + Send>;

/// Errors from the hypervisor side of interrupts.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// No GSI left.
    #[error("no free GSI for an MSI vector")]
    NoGsi,
    /// The hypervisor refused the request.
    #[error("{what}: {source}")]
    Hypervisor {
        what: &'static str,
        source: std::io::Error,
    },
}

/// One MSI vector as the device sees it: raise it by writing the eventfd.
pub struct MsiVector {
    /// The GSI KVM knows the vector by.
    pub gsi: u32,
    /// Writing 1 here injects the interrupt (a KVM irqfd).
    pub irqfd: EventFd,
}

/// Allocates and routes MSI vectors.
pub trait MsiRouter: Send + Sync {
    /// Allocates a vector (GSI + irqfd registered with the hypervisor), not yet routed.
    fn allocate(&self) -> Result<MsiVector, InterruptError>;
    /// Routes `gsi` to the MSI message (`addr`, `data`); `masked` vectors are left unrouted.
    fn route(&self, gsi: u32, addr: u64, data: u32, masked: bool) -> Result<(), InterruptError>;
}

/// Registers ioeventfds.
pub trait IoEventRegistrar: Send + Sync {
    /// A guest MMIO write of any value to `addr` will signal `evt`.
    fn register(&self, evt: &EventFd, addr: u64) -> Result<(), InterruptError>;
    /// Undoes [`IoEventRegistrar::register`].
    fn unregister(&self, evt: &EventFd, addr: u64) -> Result<(), InterruptError>;
}
