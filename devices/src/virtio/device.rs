//! The contract between a virtio device model and its transport.

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as devices see it.
pub type GuestMem = Arc<GuestMemoryMmap<()>>;

/// Raises the device's interrupts (implemented by the transport; fakes in device tests).
pub trait VirtioInterrupt: Send + Sync {
    /// The device put buffers in the used ring of queue `queue`.
    fn signal_queue(&self, queue: u16);
    /// The device configuration changed.
    fn signal_config(&self);
}

/// One queue the driver enabled.
pub struct ActiveQueue {
    /// Queue index as the driver knows it.
    pub index: u16,
    /// Validated queue: size, ring addresses, ready, event-idx per the negotiated features.
    pub queue: Queue,
    /// Signalled when the driver notifies this queue (ioeventfd or a trapped doorbell write).
    pub notify: EventFd,
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct ActivateContext {
    pub mem: GuestMem,
    /// The features the driver accepted (including VERSION_1/ACCESS_PLATFORM).
    pub features: u64,
    /// The enabled queues, by increasing index.
    pub queues: Vec<ActiveQueue>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver's queue setup is unusable.
    #[error("queue {index}: {reason}")]
    BadQueue { index: u16, reason: &'static str },
    /// An eventfd could not be duplicated.
    #[error("duplicating the notify eventfd of queue {index}: {source}")]
    EventFd { index: u16, source: std::io::Error },
    /// The device model refused (missing queue, backend failure, ...).
    #[error("device: {0}")]
    Device(String),
}

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// Virtio device type (see `TYPE_*`).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Device-specific features offered (the transport adds VERSION_1 and ACCESS_PLATFORM).
    fn features(&self) -> u64;
    /// The driver accepted `features` (a validated subset of what was offered).
    fn ack_features(&mut self, features: u64);
    /// Size of the device configuration space in bytes (0: none, at most 4096).
    fn config_size(&self) -> u32 {
        0
    }
    /// Reads device configuration; the transport only passes in-range accesses.
    fn read_config(&self, offset: u32, data: &mut [u8]);
    /// Writes device configuration; the transport only passes in-range accesses.
    fn write_config(&mut self, offset: u32, data: &[u8]);
    /// Starts the device: the driver set DRIVER_OK and every enabled queue is valid.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// The driver reset the device: stop using the queues and drop them.
    fn reset(&mut self);
}

/// Copies the part of a read-only device configuration `config` at `offset` into `data`;
/// bytes past its end read as zero. For devices whose config space is a fixed byte image.
pub fn read_config_bytes(config: &[u8], offset: u32, data: &mut [u8]) {
    let start = (offset as usize).min(config.len());
    let end = start.saturating_add(data.len()).min(config.len());
    data.fill(0);
    data[..end - start].copy_from_slice(&config[start..end]);
}

/// Whether `chain` ends where a well-behaved driver ends it: on a descriptor without the NEXT
/// flag. The queue's iterator stops early, still on a NEXT descriptor, at a loop (after
/// queue-size descriptors), a `next` index past the table, a descriptor table outside guest
/// memory, a bad indirect table or a chain longer than 4 GiB; a chain whose head cannot be read
/// yields nothing. Devices drop such chains rather than use the part that could be read.
pub fn chain_is_complete<M>(chain: &virtio_queue::DescriptorChain<M>) -> bool
where
    M: std::ops::Deref + Clone,
    M::Target: vm_memory::GuestMemory,
{
    chain.clone().last().is_some_and(|d| !d.has_next())
}
