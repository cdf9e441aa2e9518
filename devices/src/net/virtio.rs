//! virtio-net: the guest's one NIC (type 1, an RX and a TX queue, MAC and link status in
//! config space), whose other end is the user-mode network [`UserNet`]. A worker thread moves
//! frames between the queues and the NAT and drives the NAT's host sockets.

use super::UserNet;
use crate::virtio::{ActivateContext, ActivateError, GuestMem, VirtioDevice, VirtioInterrupt};
use crate::worker::{Wake, Worker};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use virtio_queue::{Queue, QueueT, Reader, Writer};

/// Virtio device type of a network card.
pub const TYPE_NET: u32 = 1;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_STATUS: u64 = 1 << 16;
const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// `struct virtio_net_hdr_v1` (VERSION_1 always carries num_buffers).
const NET_HDR_LEN: usize = 12;
const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
/// Largest frame the guest may send: header + 64 KiB.
const MAX_TX: usize = NET_HDR_LEN + 65_550;
/// The MAC slirp gives its guest.
pub const DEFAULT_GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Counters of the device, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NicStats {
    /// Frames taken from the guest's TX queue.
    pub tx_frames: u64,
    /// Frames put in the guest's RX queue.
    pub rx_frames: u64,
    /// Frames dropped: too large for the guest's buffers, or malformed chains.
    pub dropped: u64,
}

/// The virtio-net device.
pub struct VirtioNet {
    config: [u8; 8],
    net: Arc<Mutex<UserNet>>,
    stats: Arc<Mutex<NicStats>>,
    worker: Option<Worker>,
    queue_sizes: [u16; 2],
}

impl VirtioNet {
    /// A NIC with `mac` backed by `net`.
    pub fn new(mac: [u8; 6], net: UserNet) -> Self {
        let mut config = [0u8; 8];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        Self {
            config,
            net: Arc::new(Mutex::new(net)),
            stats: Arc::default(),
            worker: None,
            queue_sizes: [QUEUE_SIZE, QUEUE_SIZE],
        }
    }

    /// The device's counters.
    pub fn stats(&self) -> NicStats {
        *crate::bus::lock(&self.stats)
    }
}

/// Takes every frame the guest queued for transmission and hands it to `net`.
pub fn drain_tx(mem: &GuestMem, q: &mut Queue, net: &mut UserNet, st: &mut NicStats) -> bool {
    let mut any = false;
    let mut buf = Vec::new();
    while let Some(chain) = q.pop_descriptor_chain(mem.as_ref()) {
        let head = chain.head_index();
        any = true;
        let ok = Reader::new(mem.as_ref(), chain).ok().and_then(|mut r| {
            let n = r.available_bytes();
            if !(NET_HDR_LEN..=MAX_TX).contains(&n) {
                return None;
            }
            buf.resize(n, 0);
            r.read_exact(&mut buf).ok()
        });
        match ok {
            Some(()) => {
                net.guest_transmit(&buf[NET_HDR_LEN..]);
                st.tx_frames += 1;
            }
            None => st.dropped += 1,
        }
        if let Err(e) = q.add_used(mem.as_ref(), head, 0) {
            tracing::warn!("virtio-net: cannot complete TX descriptor {head}: {e}");
        }
    }
    any
}

/// Moves frames from `net` (and `pending`) into the guest's RX buffers while both last.
pub fn fill_rx(
    mem: &GuestMem,
    q: &mut Queue,
    net: &mut UserNet,
    pending: &mut Option<Vec<u8>>,
    st: &mut NicStats,
) -> bool {
    let mut any = false;
    while let Some(frame) = pending.take().or_else(|| net.guest_receive()) {
        let Some(chain) = q.pop_descriptor_chain(mem.as_ref()) else {
            *pending = Some(frame); // no buffer yet: keep it for the next RX notification
            break;
        };
        let head = chain.head_index();
        let written = Writer::new(mem.as_ref(), chain).ok().and_then(|mut w| {
            if w.available_bytes() < NET_HDR_LEN + frame.len() {
                return None;
            }
            let mut hdr = [0u8; NET_HDR_LEN];
            hdr[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
            w.write_all(&hdr).ok()?;
            w.write_all(&frame).ok()?;
            Some((NET_HDR_LEN + frame.len()) as u32)
        });
        match written {
            Some(_) => st.rx_frames += 1,
            None => st.dropped += 1,
        }
        if let Err(e) = q.add_used(mem.as_ref(), head, written.unwrap_or(0)) {
            tracing::warn!("virtio-net: cannot complete RX descriptor {head}: {e}");
        }
        any = true;
    }
    any
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS
    }

    fn ack_features(&mut self, _features: u64) {}

    fn config_size(&self) -> u32 {
        self.config.len() as u32
    }

    fn read_config(&self, offset: u32, data: &mut [u8]) {
        let start = (offset as usize).min(self.config.len());
        let end = (start + data.len()).min(self.config.len());
        data.fill(0);
        data[..end - start].copy_from_slice(&self.config[start..end]);
    }

    fn write_config(&mut self, _offset: u32, _data: &[u8]) {}

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        self.reset();
        let mut queues = ctx.queues;
        if queues.len() < 2 || queues[RX].index != 0 || queues[TX].index != 1 {
            return Err(ActivateError::Device(
                "virtio-net needs its RX and TX queues".into(),
            ));
        }
        let mut tx = queues.remove(TX);
        let mut rx = queues.remove(RX);
        let (mem, net, stats) = (ctx.mem, self.net.clone(), self.stats.clone());
        let irq: Arc<dyn VirtioInterrupt> = ctx.interrupt;
        let worker = Worker::spawn("virtio-net", move |poll| {
            let net_fd = crate::bus::lock(&net).as_raw_fd();
            for (fd, token) in [
                (rx.notify.as_raw_fd(), 0),
                (tx.notify.as_raw_fd(), 1),
                (net_fd, 2),
            ] {
                if let Err(e) = poll.watch(fd, token) {
                    tracing::error!("virtio-net: cannot watch fd {fd}: {e}");
                    return;
                }
            }
            let mut pending = None;
            let mut timeout = 0;
            loop {
                for wake in poll.wait(timeout) {
                    match wake {
                        Wake::Stop => return,
                        Wake::Ready(0) => drop(rx.notify.read()),
                        Wake::Ready(1) => drop(tx.notify.read()),
                        Wake::Ready(_) => {}
                    }
                }
                let mut n = crate::bus::lock(&net);
                let mut st = crate::bus::lock(&stats);
                if drain_tx(&mem, &mut tx.queue, &mut n, &mut st)
                    && tx.queue.needs_notification(mem.as_ref()).unwrap_or(true)
                {
                    irq.signal_queue(tx.index);
                }
                let now = Instant::now();
                n.poll(now);
                if fill_rx(&mem, &mut rx.queue, &mut n, &mut pending, &mut st)
                    && rx.queue.needs_notification(mem.as_ref()).unwrap_or(true)
                {
                    irq.signal_queue(rx.index);
                }
                timeout = match n.poll_delay(Instant::now()) {
                    Some(d) => d.as_millis().min(1000) as i32,
                    None => 1000,
                };
            }
        })
        .map_err(|e| ActivateError::Device(format!("virtio-net worker: {e}")))?;
        self.worker = Some(worker);
        tracing::info!("virtio-net activated");
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
    }
}
