//! virtio-net: the guest's one NIC (type 1, an RX and a TX queue, MAC and link status in
//! config space, TX checksum and TSO offloads), whose other end is the user-mode network
//! [`UserNet`]. A worker thread moves frames between the queues and the NAT and drives the NAT's
//! host sockets.

use super::{offload, GuestOffloads, UserNet};
use crate::log_limit::LogLimiter;
use crate::virtio::{
    chain_is_complete, drain_suppressed, ActivateContext, ActivateError, GuestMem, VirtioDevice,
    VirtioInterrupt, F_RING_EVENT_IDX,
};
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
/// Why a chain failed [`chain_is_complete`].
const UNENDING_CHAIN: &str =
    "the chain does not end (a loop, a next index past the table or an unreadable descriptor)";
/// The MAC slirp gives its guest.
pub const DEFAULT_GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Counters of the device, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NicStats {
    /// Frames taken from the guest's TX queue.
    pub tx_frames: u64,
    /// Frames put in the guest's RX queue.
    pub rx_frames: u64,
    /// Ethernet bytes taken from the guest (TSO segments count whole).
    pub tx_bytes: u64,
    /// Ethernet bytes put in the guest's RX queue.
    pub rx_bytes: u64,
    /// Frames or chains dropped: TX frames that could not be read or sent, frames too large
    /// for the guest's RX buffer, malformed chains of either queue (see [`DropReason`]).
    pub dropped: u64,
}

/// The virtio-net device.
pub struct VirtioNet {
    config: [u8; 8],
    /// Features the driver accepted.
    acked: u64,
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
            acked: 0,
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

/// Why the device dropped a frame or returned a descriptor chain unused; each reason has its
/// own log rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A TX chain that is malformed (a loop, a bad next index, outside guest memory) or does
    /// not hold a virtio-net header and a frame of at most 64 KiB.
    TxChain,
    /// A TX frame whose virtio-net header asks for an offload the frame does not fit.
    TxHeader,
    /// A malformed RX chain (the frame waits for the next one).
    RxChain,
    /// An RX chain too small for the frame (the frame is lost).
    RxTooSmall,
    /// A chain that could not be put in the used ring.
    UsedRing,
}

impl DropReason {
    const ALL: usize = 5;

    fn what(self) -> &'static str {
        match self {
            DropReason::TxChain => "dropped a malformed TX descriptor chain",
            DropReason::TxHeader => "dropped a TX frame with a bad offload header",
            DropReason::RxChain => "skipped a malformed RX descriptor chain",
            DropReason::RxTooSmall => "dropped a frame too large for the guest's RX buffer",
            DropReason::UsedRing => "cannot complete a descriptor chain",
        }
    }
}

/// Warns about dropped frames and bad chains, at most one line per
/// [`crate::log_limit::LOG_INTERVAL`] and [`DropReason`], each with the number of events
/// left unlogged since the previous line of that reason.
#[derive(Debug, Default)]
pub struct DropLog {
    limits: [LogLimiter; DropReason::ALL],
}

impl DropLog {
    /// Logs `reason` with `detail` (e.g. the descriptor head) unless rate-limited.
    pub fn warn(&mut self, reason: DropReason, detail: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.admit(reason, Instant::now()) {
            tracing::warn!(suppressed, "virtio-net: {}: {detail}", reason.what());
        }
    }

    /// Counts one event of `reason` at `now`; `Some(events left unlogged before it)` when it
    /// gets a line.
    fn admit(&mut self, reason: DropReason, now: Instant) -> Option<u64> {
        self.limits[reason as usize].event(now)
    }
}

/// Takes every frame the guest queued for transmission and hands it to `net`.
pub fn drain_tx(
    mem: &GuestMem,
    q: &mut Queue,
    net: &mut UserNet,
    st: &mut NicStats,
    log: &mut DropLog,
) -> bool {
    let mut any = false;
    let mut buf = Vec::new();
    while let Some(chain) = q.pop_descriptor_chain(mem.as_ref()) {
        let head = chain.head_index();
        any = true;
        let read = if chain_is_complete(&chain) {
            match Reader::new(mem.as_ref(), chain) {
                Ok(mut r) => {
                    let n = r.available_bytes();
                    if (NET_HDR_LEN..=MAX_TX).contains(&n) {
                        buf.resize(n, 0);
                        r.read_exact(&mut buf).map_err(|e| e.to_string())
                    } else {
                        Err(format!("{n} bytes"))
                    }
                }
                Err(e) => Err(e.to_string()),
            }
        } else {
            Err(UNENDING_CHAIN.into())
        };
        let finished = read.map(|()| {
            let (hdr, frame) = buf.split_at_mut(NET_HDR_LEN);
            offload::finish_tx(hdr, frame, |f| net.guest_transmit(f))
        });
        match finished {
            Ok(Ok(())) => {
                st.tx_frames += 1;
                st.tx_bytes += (buf.len() - NET_HDR_LEN) as u64;
            }
            Ok(Err(e)) => {
                st.dropped += 1;
                log.warn(DropReason::TxHeader, format_args!("head {head}: {e:?}"));
            }
            Err(e) => {
                st.dropped += 1;
                log.warn(DropReason::TxChain, format_args!("head {head}: {e}"));
            }
        }
        if let Err(e) = q.add_used(mem.as_ref(), head, 0) {
            log.warn(DropReason::UsedRing, format_args!("TX head {head}: {e}"));
        }
    }
    any
}

/// Moves frames from `net` (and `pending`) into the guest's RX buffers while both last. A
/// malformed RX chain is returned unused and its frame waits for the next chain; a frame too
/// large for a well-formed chain is dropped.
pub fn fill_rx(
    mem: &GuestMem,
    q: &mut Queue,
    net: &mut UserNet,
    pending: &mut Option<Vec<u8>>,
    st: &mut NicStats,
    log: &mut DropLog,
) -> bool {
    let mut any = false;
    while let Some(frame) = pending.take().or_else(|| net.guest_receive()) {
        let Some(chain) = q.pop_descriptor_chain(mem.as_ref()) else {
            *pending = Some(frame); // no buffer yet: keep it for the next RX notification
            break;
        };
        let head = chain.head_index();
        any = true;
        let writer = if chain_is_complete(&chain) {
            Writer::new(mem.as_ref(), chain).map_err(|e| e.to_string())
        } else {
            Err(UNENDING_CHAIN.into())
        };
        let written = match writer {
            Ok(mut w) if w.available_bytes() >= NET_HDR_LEN + frame.len() => {
                let o = net.guest_offloads();
                w.write_all(&offload::rx_header(&frame, o.csum, o.tso))
                    .and_then(|()| w.write_all(&frame))
                    .map(|()| (NET_HDR_LEN + frame.len()) as u32)
                    .map_err(|e| (DropReason::RxChain, e.to_string()))
            }
            Ok(w) => Err((
                DropReason::RxTooSmall,
                format!(
                    "{} bytes for a {}-byte frame",
                    w.available_bytes(),
                    frame.len()
                ),
            )),
            Err(e) => Err((DropReason::RxChain, e)),
        };
        match &written {
            Ok(n) => {
                st.rx_frames += 1;
                st.rx_bytes += u64::from(*n) - NET_HDR_LEN as u64;
            }
            Err((reason, e)) => {
                st.dropped += 1;
                log.warn(*reason, format_args!("head {head}: {e}"));
                if *reason == DropReason::RxChain {
                    *pending = Some(frame);
                }
            }
        }
        if let Err(e) = q.add_used(mem.as_ref(), head, *written.as_ref().unwrap_or(&0)) {
            log.warn(DropReason::UsedRing, format_args!("RX head {head}: {e}"));
        }
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
        VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_STATUS
            | F_RING_EVENT_IDX
            | offload::F_CSUM
            | offload::F_HOST_TSO4
            | offload::F_GUEST_CSUM
            | offload::F_GUEST_TSO4
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn config_size(&self) -> u32 {
        self.config.len() as u32
    }

    fn read_config(&self, offset: u32, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config, offset, data);
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
        let csum = self.acked & offload::F_GUEST_CSUM != 0;
        let offloads = GuestOffloads {
            csum,
            // TSO frames carry no partial checksums, but the spec ties GUEST_TSO4 to GUEST_CSUM.
            tso: csum && self.acked & offload::F_GUEST_TSO4 != 0,
        };
        crate::bus::lock(&self.net).set_guest_offloads(offloads);
        tracing::debug!(
            features = format_args!("{:#x}", self.acked),
            ?offloads,
            "virtio-net features"
        );
        let (mem, net, stats) = (ctx.mem, self.net.clone(), self.stats.clone());
        let irq: Arc<dyn VirtioInterrupt> = ctx.interrupt;
        let worker = Worker::spawn("virtio-net", seccomp::ThreadKind::Net, move |poll| {
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
            let mut drops = DropLog::default();
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
                let sent = drain_suppressed(&mem, &mut tx.queue, |q| {
                    drain_tx(&mem, q, &mut n, &mut st, &mut drops)
                });
                if sent && tx.queue.needs_notification(mem.as_ref()).unwrap_or(true) {
                    irq.signal_queue(tx.index);
                }
                let now = Instant::now();
                n.poll(now);
                let mut filled = fill_rx(
                    &mem,
                    &mut rx.queue,
                    &mut n,
                    &mut pending,
                    &mut st,
                    &mut drops,
                );
                // Out of RX buffers: ask for a kick when the guest adds some (this moves
                // avail_event under event idx); fill again if some raced in meanwhile.
                if pending.is_some() && rx.queue.enable_notification(mem.as_ref()).unwrap_or(false)
                {
                    filled |= fill_rx(
                        &mem,
                        &mut rx.queue,
                        &mut n,
                        &mut pending,
                        &mut st,
                        &mut drops,
                    );
                }
                if filled && rx.queue.needs_notification(mem.as_ref()).unwrap_or(true) {
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
            let s = self.stats();
            tracing::info!(
                tx_frames = s.tx_frames,
                tx_bytes = s.tx_bytes,
                rx_frames = s.rx_frames,
                rx_bytes = s.rx_bytes,
                dropped = s.dropped,
                "virtio-net stopped"
            );
        }
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        self.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{UserNetConfig, GATEWAY_MAC};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

    const WRITE: u16 = 2;

    fn arp_request_for_gateway() -> Vec<u8> {
        let mut f = vec![0xff; 6]; // broadcast
        f.extend_from_slice(&DEFAULT_GUEST_MAC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&DEFAULT_GUEST_MAC);
        f.extend_from_slice(&[10, 0, 2, 15]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[10, 0, 2, 2]);
        f
    }

    fn setup() -> (GuestMem, UserNet) {
        let mem =
            Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100000)]).unwrap());
        let net = UserNet::new(UserNetConfig::with_dns(Vec::new(), Vec::new())).unwrap();
        (mem, net)
    }

    #[test]
    fn a_guest_arp_request_is_answered_through_the_rx_queue() {
        let (mem, mut net) = setup();
        let mut st = NicStats::default();
        let mut log = DropLog::default();
        let mut frame = vec![0u8; NET_HDR_LEN];
        frame.extend_from_slice(&arp_request_for_gateway());
        mem.write_slice(&frame, GuestAddress(0x10000)).unwrap();
        let txq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0x40000), 16);
        txq.build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(
            0x10000,
            frame.len() as u32,
            0,
            0,
        ))])
        .unwrap();
        let mut tx: Queue = txq.create_queue().unwrap();
        assert!(drain_tx(&mem, &mut tx, &mut net, &mut st, &mut log));
        assert_eq!(st.tx_frames, 1);
        net.poll(Instant::now());

        let rxq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0x50000), 16);
        rxq.build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(
            0x20000, 2048, WRITE, 0,
        ))])
        .unwrap();
        let mut rx: Queue = rxq.create_queue().unwrap();
        let mut pending = None;
        assert!(fill_rx(
            &mem,
            &mut rx,
            &mut net,
            &mut pending,
            &mut st,
            &mut log
        ));
        assert_eq!(st.rx_frames, 1);
        let len: u32 = mem
            .read_obj(rxq.used_addr().checked_add(8).unwrap())
            .unwrap();
        let mut got = vec![0u8; len as usize];
        mem.read_slice(&mut got, GuestAddress(0x20000)).unwrap();
        assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers");
        let eth = &got[NET_HDR_LEN..];
        assert_eq!(&eth[0..6], &DEFAULT_GUEST_MAC, "reply to the guest");
        assert_eq!(&eth[6..12], &GATEWAY_MAC);
        assert_eq!(&eth[20..22], &[0, 2], "ARP reply");
    }

    #[test]
    fn bad_chains_and_small_buffers_are_dropped_not_fatal() {
        let (mem, mut net) = setup();
        let mut st = NicStats::default();
        let mut log = DropLog::default();
        // TX chain shorter than the virtio-net header, and one outside guest memory.
        let txq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0x40000), 16);
        txq.build_multiple_desc_chains(&[
            RawDescriptor::from(SplitDescriptor::new(0x10000, 4, 0, 0)),
            RawDescriptor::from(SplitDescriptor::new(0xfff_0000, 100, 0, 0)),
        ])
        .unwrap();
        let mut tx: Queue = txq.create_queue().unwrap();
        assert!(drain_tx(&mem, &mut tx, &mut net, &mut st, &mut log));
        assert_eq!((st.tx_frames, st.dropped), (0, 2));
        // A frame for the guest with an RX buffer too small: dropped, the next buffer is used.
        let mut pending = Some(vec![0x55u8; 1000]);
        let rxq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0x50000), 16);
        rxq.build_desc_chain(&[RawDescriptor::from(SplitDescriptor::new(
            0x20000, 64, WRITE, 0,
        ))])
        .unwrap();
        let mut rx: Queue = rxq.create_queue().unwrap();
        assert!(fill_rx(
            &mem,
            &mut rx,
            &mut net,
            &mut pending,
            &mut st,
            &mut log
        ));
        assert_eq!(st.dropped, 3);
        assert!(pending.is_none());
        // No RX buffer at all: the frame stays pending.
        let mut pending = Some(vec![1u8; 60]);
        assert!(!fill_rx(
            &mem,
            &mut rx,
            &mut net,
            &mut pending,
            &mut st,
            &mut log
        ));
        assert!(pending.is_some());
    }

    const NEXT: u16 = 1;

    /// The `i`th used-ring element of the queue whose used ring is at `used`: (head, length).
    fn used_elem(mem: &GuestMem, used: GuestAddress, i: u64) -> (u32, u32) {
        let at = used.checked_add(4 + 8 * i).unwrap();
        let id: u32 = mem.read_obj(at).unwrap();
        let len: u32 = mem.read_obj(at.checked_add(4).unwrap()).unwrap();
        (id, len)
    }

    #[test]
    fn descriptor_loops_are_dropped_and_the_next_good_chain_is_served() {
        let (mem, mut net) = setup();
        let mut st = NicStats::default();
        let mut log = DropLog::default();
        let mut frame = vec![0u8; NET_HDR_LEN];
        frame.extend_from_slice(&arp_request_for_gateway());
        mem.write_slice(&frame, GuestAddress(0x10000)).unwrap();
        let len = frame.len() as u32;
        let desc = |next_flag: u16, next: u16| {
            RawDescriptor::from(SplitDescriptor::new(0x10000, len, next_flag, next))
        };
        // TX: a descriptor pointing at itself, a two-descriptor loop, a next index past the
        // table, then a good chain holding the same ARP request. Read naively, the self loop
        // is 16 copies of a valid request (which the NAT would answer).
        let txq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0x40000), 16);
        txq.add_desc_chains(&[desc(NEXT, 0)], 0).unwrap();
        txq.add_desc_chains(&[desc(NEXT, 2), desc(NEXT, 1)], 1)
            .unwrap();
        txq.add_desc_chains(&[desc(NEXT, 200)], 3).unwrap();
        txq.add_desc_chains(&[desc(0, 0)], 4).unwrap();
        let mut tx: Queue = txq.create_queue().unwrap();
        assert!(drain_tx(&mem, &mut tx, &mut net, &mut st, &mut log));
        assert_eq!((st.tx_frames, st.dropped), (1, 3));
        for (i, head) in [0, 1, 3, 4].into_iter().enumerate() {
            assert_eq!(used_elem(&mem, txq.used_addr(), i as u64), (head, 0));
        }
        net.poll(Instant::now());
        let mut replies = 0;
        while net.guest_receive().is_some() {
            replies += 1;
        }
        assert_eq!(replies, 1, "only the good chain's request is answered");

        // RX: a looping writable chain, then a good one: the frame skips the loop.
        let rxq = MockSplitQueue::create(mem.as_ref(), GuestAddress(0x50000), 16);
        rxq.add_desc_chains(
            &[RawDescriptor::from(SplitDescriptor::new(
                0x20000,
                2048,
                WRITE | NEXT,
                0,
            ))],
            0,
        )
        .unwrap();
        rxq.add_desc_chains(
            &[RawDescriptor::from(SplitDescriptor::new(
                0x30000, 2048, WRITE, 0,
            ))],
            1,
        )
        .unwrap();
        let mut rx: Queue = rxq.create_queue().unwrap();
        let mut pending = Some(vec![0x5au8; 60]);
        assert!(fill_rx(
            &mem,
            &mut rx,
            &mut net,
            &mut pending,
            &mut st,
            &mut log
        ));
        assert!(pending.is_none());
        assert_eq!((st.rx_frames, st.dropped), (1, 4));
        assert_eq!(used_elem(&mem, rxq.used_addr(), 0), (0, 0), "loop unused");
        assert_eq!(used_elem(&mem, rxq.used_addr(), 1), (1, 72));
        let mut got = [0u8; 60];
        mem.read_slice(&mut got, GuestAddress(0x30000 + NET_HDR_LEN as u64))
            .unwrap();
        assert_eq!(got, [0x5a; 60]);
        let mut untouched = [0u8; 72];
        mem.read_slice(&mut untouched, GuestAddress(0x20000))
            .unwrap();
        assert_eq!(untouched, [0; 72], "nothing written through the loop");
    }

    #[test]
    fn each_drop_reason_has_its_own_rate_limit() {
        let mut log = DropLog::default();
        let t0 = Instant::now();
        assert_eq!(log.admit(DropReason::TxChain, t0), Some(0));
        assert_eq!(log.admit(DropReason::TxChain, t0), None);
        assert_eq!(
            log.admit(DropReason::RxChain, t0),
            Some(0),
            "another reason is not muted"
        );
        assert_eq!(log.admit(DropReason::UsedRing, t0), Some(0));
        let later = t0 + crate::log_limit::LOG_INTERVAL;
        assert_eq!(log.admit(DropReason::TxChain, later), Some(1));
        assert_eq!(log.admit(DropReason::RxChain, later), Some(0));
    }

    #[test]
    fn config_has_mac_and_link_up() {
        let (_, net) = setup();
        let d = VirtioNet::new(DEFAULT_GUEST_MAC, net);
        let mut c = [0u8; 8];
        d.read_config(0, &mut c);
        assert_eq!(&c[..6], &DEFAULT_GUEST_MAC);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), VIRTIO_NET_S_LINK_UP);
        assert_ne!(d.features() & VIRTIO_NET_F_MAC, 0);
    }
}
