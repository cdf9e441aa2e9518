//! The modern virtio-pci transport: one [`VirtioDevice`] behind a PCI function with vendor
//! 0x1af4, device id 0x1040 + type, revision 1, and a single 64-bit memory BAR 0:
//!
//! | BAR 0 offset | size                 | contents                                   |
//! |--------------|----------------------|--------------------------------------------|
//! | 0x0000       | 0x38                 | common configuration (virtio 1.x layout)   |
//! | 0x1000       | 1                    | ISR status (read clears)                   |
//! | 0x2000       | device config size   | device configuration (≤ 4 KiB)             |
//! | 0x3000       | 4 × queues           | doorbells: queue q at 0x3000 + 4q          |
//! | 0x4000       | 16 × (queues + 1)    | MSI-X table                                |
//! | 0x5000       | 8 × ⌈vectors / 64⌉   | MSI-X pending bits                         |
//!
//! BAR 0 is 32 KiB. Capabilities: MSI-X, common, notify (multiplier 4), ISR, device (only
//! when the device has configuration) and the PCI-configuration-access capability.
//! The doorbell EventFds are registered with the [`IoEventRegistrar`] whenever BAR 0 is
//! decoded (memory space on, address non-zero) and re-registered when the guest moves it.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{GuestMem, VirtioDevice, VirtioInterrupt};
use super::msix::MsixTable;
use super::{NO_VECTOR, TYPE_NET};
use crate::bus::lock;
use crate::interrupt::{InterruptError, IoEventRegistrar, MsiRouter};
use crate::pci::{PciBarInfo, PciBarKind, PciConfiguration, PciDevice, PciError, PciHeader};

/// Size of BAR 0.
pub const BAR0_SIZE: u64 = 0x8000;
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
/// Length of the common configuration structure.
pub const COMMON_CFG_SIZE: u64 = 0x38;
pub const ISR_OFFSET: u64 = 0x1000;
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' doorbells.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
/// Most queues a device may have (vectors = queues + 1 must fit in the 4 KiB table area).
pub const MAX_QUEUES: usize = 255;
/// Largest device configuration.
pub const MAX_DEVICE_CFG: u32 = 0x1000;
/// Virtio's PCI vendor id.
pub const VIRTIO_PCI_VENDOR: u16 = 0x1af4;
/// Device id of a modern device of type 0; add the type.
pub const VIRTIO_PCI_DEVICE_BASE: u16 = 0x1040;

const CAP_VENDOR: u8 = 0x09;
const CAP_MSIX: u8 = 0x11;

/// Errors building a virtio-pci device.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("device has {count} queues; 1..={MAX_QUEUES} are supported")]
    QueueCount { count: usize },
    #[error("queue {index}: maximum size {size} is not a power of two in 1..=32768")]
    QueueSize { index: usize, size: u16 },
    #[error("device configuration of {size} bytes exceeds {MAX_DEVICE_CFG}")]
    ConfigSize { size: u32 },
    #[error("device type {ty} has no PCI device id")]
    DeviceType { ty: u32 },
    #[error("MSI-X vectors: {0}")]
    Interrupt(#[from] InterruptError),
    #[error("creating a notify eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("configuration space: {0}")]
    Pci(#[from] PciError),
}

/// Interrupt state shared between the transport and the running device.
pub(super) struct InterruptState {
    pub msix: MsixTable,
    pub isr: u8,
    pub config_vector: u16,
    pub queue_vectors: Vec<u16>,
    pub config_generation: u8,
}

/// The transport's [`VirtioInterrupt`]: MSI-X through the vectors the driver assigned.
#[derive(Clone)]
pub struct PciInterrupt {
    state: Arc<Mutex<InterruptState>>,
}

impl VirtioInterrupt for PciInterrupt {
    fn signal_queue(&self, queue: u16) {
        let mut s = lock(&self.state);
        s.isr |= 1;
        let v = s
            .queue_vectors
            .get(usize::from(queue))
            .copied()
            .unwrap_or(NO_VECTOR);
        if v != NO_VECTOR {
            s.msix.trigger(v);
        }
    }

    fn signal_config(&self) {
        let mut s = lock(&self.state);
        s.isr |= 2;
        s.config_generation = s.config_generation.wrapping_add(1);
        let v = s.config_vector;
        if v != NO_VECTOR {
            s.msix.trigger(v);
        }
    }
}

/// Per-queue registers as the driver programmed them (validated at DRIVER_OK).
#[derive(Clone, Copy, Debug)]
pub(super) struct QueueConfig {
    pub max: u16,
    pub size: u16,
    pub enabled: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

impl QueueConfig {
    fn new(max: u16) -> Self {
        Self {
            max,
            size: max,
            enabled: false,
            desc: 0,
            driver: 0,
            device: 0,
        }
    }
}

/// A virtio device on the PCI bus.
pub struct VirtioPciDevice {
    pub(super) config: PciConfiguration,
    pub(super) device: Box<dyn VirtioDevice>,
    pub(super) mem: GuestMem,
    ioevents: Arc<dyn IoEventRegistrar>,
    pub(super) irq: Arc<Mutex<InterruptState>>,
    pub(super) notify: Vec<EventFd>,
    pub(super) queues: Vec<QueueConfig>,
    pub(super) device_features: u64,
    pub(super) driver_features: u64,
    pub(super) device_feature_select: u32,
    pub(super) driver_feature_select: u32,
    pub(super) queue_select: u16,
    pub(super) status: u8,
    pub(super) activated: bool,
    msix_cap: u16,
    pci_cfg_cap: u16,
    doorbells_at: Option<u64>,
}

/// A virtio PCI capability: header, BAR 0, offset, length, then `extra`.
fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let mut c = vec![CAP_VENDOR, 0, 16 + extra.len() as u8, cfg_type, 0, 0, 0, 0];
    c.extend_from_slice(&(offset as u32).to_le_bytes());
    c.extend_from_slice(&(length as u32).to_le_bytes());
    c.extend_from_slice(extra);
    c
}

impl VirtioPciDevice {
    /// Wraps `device`: allocates its MSI vectors (queues + 1) and notify eventfds.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMem,
        msi: Arc<dyn MsiRouter>,
        ioevents: Arc<dyn IoEventRegistrar>,
    ) -> Result<Self, VirtioPciError> {
        let maxes = device.queue_max_sizes().to_vec();
        if maxes.is_empty() || maxes.len() > MAX_QUEUES {
            return Err(VirtioPciError::QueueCount { count: maxes.len() });
        }
        if let Some((index, &size)) = maxes
            .iter()
            .enumerate()
            .find(|(_, &s)| !s.is_power_of_two() || s > 32768)
        {
            return Err(VirtioPciError::QueueSize { index, size });
        }
        let cfg_size = device.config_size();
        if cfg_size > MAX_DEVICE_CFG {
            return Err(VirtioPciError::ConfigSize { size: cfg_size });
        }
        let ty = device.device_type();
        let device_id = u16::try_from(ty)
            .ok()
            .and_then(|t| VIRTIO_PCI_DEVICE_BASE.checked_add(t))
            .ok_or(VirtioPciError::DeviceType { ty })?;
        let nq = maxes.len();
        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id: VIRTIO_PCI_VENDOR,
            device_id,
            revision: 1,
            class_code: if ty == TYPE_NET {
                0x02_00_00
            } else {
                0xff_00_00
            },
            subsystem_vendor_id: VIRTIO_PCI_VENDOR,
            subsystem_id: 0x1100,
        });
        config.add_bar(0, BAR0_SIZE, PciBarKind::Memory64, false)?;
        let vectors = nq as u16 + 1;
        let mut msix = vec![CAP_MSIX, 0];
        msix.extend_from_slice(&(vectors - 1).to_le_bytes());
        msix.extend_from_slice(&(MSIX_TABLE_OFFSET as u32).to_le_bytes());
        msix.extend_from_slice(&(MSIX_PBA_OFFSET as u32).to_le_bytes());
        let mut msix_mask = vec![0u8; msix.len()];
        msix_mask[3] = 0xc0; // enable, function mask
        let msix_cap = config.add_capability(&msix, &msix_mask)?;
        config.add_capability(&virtio_cap(1, COMMON_CFG_OFFSET, COMMON_CFG_SIZE, &[]), &[])?;
        let notify = virtio_cap(
            2,
            NOTIFY_OFFSET,
            4 * nq as u64,
            &NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
        );
        config.add_capability(&notify, &[])?;
        config.add_capability(&virtio_cap(3, ISR_OFFSET, 1, &[]), &[])?;
        if cfg_size > 0 {
            config.add_capability(&virtio_cap(4, DEVICE_CFG_OFFSET, cfg_size.into(), &[]), &[])?;
        }
        let mut pci_mask = vec![0u8; 20];
        pci_mask[4] = 0xff; // bar
        pci_mask[8..20].fill(0xff); // offset, length, data
        let pci_cfg_cap = config.add_capability(&virtio_cap(5, 0, 0, &[0; 4]), &pci_mask)?;

        let irq = InterruptState {
            msix: MsixTable::new(vectors, msi)?,
            isr: 0,
            config_vector: NO_VECTOR,
            queue_vectors: vec![NO_VECTOR; nq],
            config_generation: 0,
        };
        let notify = (0..nq)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(VirtioPciError::EventFd)?;
        let device_features = device.features() | super::F_VERSION_1 | super::F_ACCESS_PLATFORM;
        Ok(Self {
            config,
            device,
            mem,
            ioevents,
            irq: Arc::new(Mutex::new(irq)),
            notify,
            queues: maxes.into_iter().map(QueueConfig::new).collect(),
            device_features,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            queue_select: 0,
            status: 0,
            activated: false,
            msix_cap,
            pci_cfg_cap,
            doorbells_at: None,
        })
    }

    /// A handle raising this device's interrupts (what `activate` receives).
    pub fn interrupt(&self) -> PciInterrupt {
        PciInterrupt {
            state: self.irq.clone(),
        }
    }

    /// The device status byte.
    pub fn status(&self) -> u8 {
        self.status
    }

    /// Queue `q`'s notify eventfd.
    pub fn notify_eventfd(&self, q: usize) -> Option<&EventFd> {
        self.notify.get(q)
    }

    /// Guest-physical address of queue `q`'s doorbell while BAR 0 is decoded.
    pub fn doorbell_address(&self, q: usize) -> Option<u64> {
        (q < self.notify.len()).then_some(())?;
        Some(self.doorbells_at? + NOTIFY_OFFSET + u64::from(NOTIFY_OFF_MULTIPLIER) * q as u64)
    }

    /// Registers the doorbells where BAR 0 is decoded now, unregistering the old ones.
    fn sync_doorbells(&mut self) {
        let want = self
            .config
            .bar_address(0)
            .filter(|&a| a != 0 && self.config.memory_enabled());
        if want == self.doorbells_at {
            return;
        }
        self.set_doorbells(false);
        self.doorbells_at = want;
        self.set_doorbells(true);
    }

    fn set_doorbells(&self, on: bool) {
        for (q, evt) in self.notify.iter().enumerate() {
            let Some(addr) = self.doorbell_address(q) else {
                return;
            };
            let r = if on {
                self.ioevents.register(evt, addr)
            } else {
                self.ioevents.unregister(evt, addr)
            };
            if let Err(e) = r {
                tracing::warn!(queue = q, addr, register = on, error = %e, "virtio doorbell ioeventfd");
            }
        }
    }

    /// (bar, offset, length) selected in the PCI-configuration-access capability.
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let c = self.pci_cfg_cap;
        let bar = self.config.read_u16(c + 4) & 0xff;
        let off = u64::from(self.config.read_u32(c + 8));
        let len = self.config.read_u32(c + 12) as usize;
        (bar == 0 && matches!(len, 1 | 2 | 4)).then_some((off, len))
    }
}

impl PciDevice for VirtioPciDevice {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        let data_reg = self.pci_cfg_cap + 16;
        if PciConfiguration::touched(offset, data.len(), data_reg, 4) {
            if let Some((off, len)) = self.pci_cfg_window() {
                let mut buf = [0u8; 4];
                self.read_bar(0, off, &mut buf[..len]);
                self.config.set_raw(data_reg, &buf);
            }
        }
        self.config.read(offset, data);
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
        if PciConfiguration::touched(offset, data.len(), self.msix_cap + 2, 2) {
            let ctrl = self.config.read_u16(self.msix_cap + 2);
            lock(&self.irq)
                .msix
                .set_control(ctrl & 0x8000 != 0, ctrl & 0x4000 != 0);
        }
        let data_reg = self.pci_cfg_cap + 16;
        if PciConfiguration::touched(offset, data.len(), data_reg, 4) {
            if let Some((off, len)) = self.pci_cfg_window() {
                let v = self.config.read_u32(data_reg).to_le_bytes();
                self.write_bar(0, off, &v[..len]);
            }
        }
        self.sync_doorbells();
    }

    fn bars(&self) -> Vec<PciBarInfo> {
        self.config.bars()
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        let len = data.len() as u64;
        if bar != 0 || !(1..=8).contains(&len) || offset.saturating_add(len) > BAR0_SIZE {
            data.fill(0xff);
            return;
        }
        data.fill(0);
        match offset & !0xfff {
            COMMON_CFG_OFFSET => self.read_common(offset, data),
            ISR_OFFSET if offset == ISR_OFFSET => {
                data[0] = std::mem::take(&mut lock(&self.irq).isr)
            }
            DEVICE_CFG_OFFSET => {
                let rel = offset - DEVICE_CFG_OFFSET;
                if rel + len <= u64::from(self.device.config_size()) {
                    self.device.read_config(rel as u32, data);
                }
            }
            MSIX_TABLE_OFFSET => lock(&self.irq)
                .msix
                .read_table(offset - MSIX_TABLE_OFFSET, data),
            MSIX_PBA_OFFSET => lock(&self.irq)
                .msix
                .read_pba(offset - MSIX_PBA_OFFSET, data),
            _ => {}
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        if bar != 0 || !(1..=8).contains(&len) || offset.saturating_add(len) > BAR0_SIZE {
            return;
        }
        match offset & !0xfff {
            COMMON_CFG_OFFSET => self.write_common(offset, data),
            DEVICE_CFG_OFFSET => {
                let rel = offset - DEVICE_CFG_OFFSET;
                if rel + len <= u64::from(self.device.config_size()) {
                    self.device.write_config(rel as u32, data);
                }
            }
            NOTIFY_OFFSET => {
                let rel = offset - NOTIFY_OFFSET;
                let q = (rel / u64::from(NOTIFY_OFF_MULTIPLIER)) as usize;
                if rel & u64::from(NOTIFY_OFF_MULTIPLIER - 1) == 0 {
                    if let Some(evt) = self.notify.get(q) {
                        if let Err(e) = evt.write(1) {
                            tracing::warn!(queue = q, error = %e, "virtio notify eventfd write");
                        }
                    }
                }
            }
            MSIX_TABLE_OFFSET => lock(&self.irq)
                .msix
                .write_table(offset - MSIX_TABLE_OFFSET, data),
            _ => {}
        }
    }
}

impl Drop for VirtioPciDevice {
    fn drop(&mut self) {
        self.set_doorbells(false);
    }
}
