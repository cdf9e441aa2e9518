//! The common configuration structure of BAR 0 and the device status state machine.
//!
//! Writes are decoded per field at the field's natural width (64-bit queue addresses also as
//! two 32-bit halves); anything else is ignored. Queue registers only change before DRIVER_OK
//! and while the queue is not enabled; DRIVER_OK validates every enabled queue and otherwise
//! sets DEVICE_NEEDS_RESET instead of starting the device.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

use super::device::{ActivateContext, ActivateError, ActiveQueue};
use super::transport::{QueueConfig, VirtioPciDevice, COMMON_CFG_SIZE};
use super::*;
use crate::bus::lock;

impl VirtioPciDevice {
    fn selected(&self) -> Option<&QueueConfig> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// Queue registers may change: before DRIVER_OK and while the selected queue is disabled.
    fn selected_mut(&mut self) -> Option<&mut QueueConfig> {
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues
            .get_mut(usize::from(self.queue_select))
            .filter(|q| !q.enabled)
    }

    pub(super) fn read_common(&self, offset: u64, data: &mut [u8]) {
        let mut img = [0u8; COMMON_CFG_SIZE as usize];
        let half = |v: u64, sel: u32| if sel < 2 { (v >> (32 * sel)) as u32 } else { 0 };
        let irq = lock(&self.irq);
        let mut put = |off: usize, b: &[u8]| img[off..off + b.len()].copy_from_slice(b);
        put(0x00, &self.device_feature_select.to_le_bytes());
        put(
            0x04,
            &half(self.device_features, self.device_feature_select).to_le_bytes(),
        );
        put(0x08, &self.driver_feature_select.to_le_bytes());
        put(
            0x0c,
            &half(self.driver_features, self.driver_feature_select).to_le_bytes(),
        );
        put(0x10, &irq.config_vector.to_le_bytes());
        put(0x12, &(self.queues.len() as u16).to_le_bytes());
        put(0x14, &[self.status, irq.config_generation]);
        put(0x16, &self.queue_select.to_le_bytes());
        if let Some(q) = self.selected() {
            let qi = usize::from(self.queue_select);
            put(0x18, &q.size.to_le_bytes());
            put(0x1a, &irq.queue_vectors[qi].to_le_bytes());
            put(0x1c, &u16::from(q.enabled).to_le_bytes());
            put(0x1e, &self.queue_select.to_le_bytes());
            put(0x20, &q.desc.to_le_bytes());
            put(0x28, &q.driver.to_le_bytes());
            put(0x30, &q.device.to_le_bytes());
        }
        let o = offset as usize;
        if let Some(src) = img.get(o..o + data.len()) {
            data.copy_from_slice(src);
        }
    }

    pub(super) fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut b = [0u8; 8];
        b[..data.len()].copy_from_slice(data);
        let v = u64::from_le_bytes(b);
        let nvec = lock(&self.irq).msix.len() as u64;
        let vector = |v: u64| if v < nvec { v as u16 } else { NO_VECTOR };
        let set_half = |old: u64, v: u64, hi: bool| {
            if hi {
                (old & 0xffff_ffff) | v << 32
            } else {
                (old & !0xffff_ffff) | v
            }
        };
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = v as u32,
            (0x08, 4) => self.driver_feature_select = v as u32,
            (0x0c, 4) => {
                let sel = self.driver_feature_select;
                if sel < 2 && self.status & STATUS_FEATURES_OK == 0 {
                    self.driver_features = set_half(self.driver_features, v, sel == 1);
                }
            }
            (0x10, 2) => lock(&self.irq).config_vector = vector(v),
            (0x14, 1) => self.set_status(v as u8),
            (0x16, 2) => self.queue_select = v as u16,
            (0x18, 2) => {
                if let Some(q) = self.selected_mut() {
                    q.size = v as u16;
                }
            }
            (0x1a, 2) => {
                let qi = usize::from(self.queue_select);
                if self.status & STATUS_DRIVER_OK == 0 {
                    if let Some(slot) = lock(&self.irq).queue_vectors.get_mut(qi) {
                        *slot = vector(v);
                    }
                }
            }
            (0x1c, 2) => {
                if let Some(q) = self.selected_mut() {
                    q.enabled = v == 1;
                }
            }
            (0x20..=0x37, 4 | 8) if offset & 3 == 0 && (data.len() == 4 || offset & 7 == 0) => {
                let Some(q) = self.selected_mut() else {
                    return;
                };
                let field = match offset & !7 {
                    0x20 => &mut q.desc,
                    0x28 => &mut q.driver,
                    _ => &mut q.device,
                };
                *field = if data.len() == 8 {
                    v
                } else {
                    set_half(*field, v, offset & 7 == 4)
                };
            }
            _ => tracing::debug!(
                offset,
                len = data.len(),
                "ignored virtio common config write"
            ),
        }
    }

    fn set_status(&mut self, v: u8) {
        if v == 0 {
            self.reset();
            return;
        }
        let v = v & !STATUS_NEEDS_RESET;
        if self.status & !STATUS_NEEDS_RESET & !v != 0 {
            tracing::debug!(
                old = self.status,
                new = v,
                "driver tried to clear status bits"
            );
            return;
        }
        let mut new = v | (self.status & STATUS_NEEDS_RESET);
        let rising = new & !self.status;
        if rising & STATUS_FEATURES_OK != 0 {
            let f = self.driver_features;
            if f & !self.device_features != 0 || f & F_VERSION_1 == 0 {
                tracing::debug!(features = f, "refused FEATURES_OK");
                new &= !STATUS_FEATURES_OK;
            } else {
                self.device.ack_features(f);
            }
        }
        if rising & STATUS_DRIVER_OK != 0 {
            let started = if new & (STATUS_FEATURES_OK | STATUS_NEEDS_RESET) != STATUS_FEATURES_OK {
                Err(ActivateError::Device(
                    "DRIVER_OK without FEATURES_OK".into(),
                ))
            } else {
                self.activate()
            };
            if let Err(e) = started {
                tracing::warn!(error = %e, "virtio device not activated; needs reset");
                self.status = new | STATUS_NEEDS_RESET;
                self.interrupt().signal_config();
                return;
            }
            self.activated = true;
        }
        self.status = new;
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        let mut queues = Vec::new();
        for (i, qc) in self.queues.iter().enumerate().filter(|(_, q)| q.enabled) {
            let index = i as u16;
            let bad = |reason| ActivateError::BadQueue { index, reason };
            let mut q = Queue::new(qc.max).map_err(|_| bad("invalid maximum size"))?;
            q.try_set_size(qc.size)
                .map_err(|_| bad("size not a power of two up to the maximum"))?;
            q.try_set_desc_table_address(GuestAddress(qc.desc))
                .map_err(|_| bad("descriptor table misaligned"))?;
            q.try_set_avail_ring_address(GuestAddress(qc.driver))
                .map_err(|_| bad("driver ring misaligned"))?;
            q.try_set_used_ring_address(GuestAddress(qc.device))
                .map_err(|_| bad("device ring misaligned"))?;
            q.set_event_idx(self.driver_features & F_RING_EVENT_IDX != 0);
            q.set_ready(true);
            if !q.is_valid(self.mem.as_ref()) {
                return Err(bad("rings outside guest memory"));
            }
            let notify = self.notify[i]
                .try_clone()
                .map_err(|source| ActivateError::EventFd { index, source })?;
            queues.push(ActiveQueue {
                index,
                queue: q,
                notify,
            });
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            features: self.driver_features,
            queues,
            interrupt: Arc::new(self.interrupt()),
        };
        self.device.activate(ctx)
    }

    /// Device reset (status 0): the device stops; features, queues and vectors are cleared.
    /// MSI-X table contents and PCI configuration are untouched.
    fn reset(&mut self) {
        if self.activated {
            self.device.reset();
            self.activated = false;
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        for q in &mut self.queues {
            *q = QueueConfig {
                size: q.max,
                enabled: false,
                desc: 0,
                driver: 0,
                device: 0,
                ..*q
            };
        }
        let mut irq = lock(&self.irq);
        irq.isr = 0;
        irq.config_vector = NO_VECTOR;
        irq.queue_vectors.fill(NO_VECTOR);
    }
}
