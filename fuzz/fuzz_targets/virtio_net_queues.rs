//! virtio-net queue handling: a TX and an RX split queue of 16 entries in 1 MiB of guest memory
//! whose descriptor tables, avail rings and data come from the input, driven through
//! `devices::net::virtio::{drain_tx, fill_rx}` against a `UserNet` (as the device's worker does:
//! drain TX, poll the NAT, fill RX, then the notification checks).
//!
//! Input layout (see `cvmm_fuzz::virtq`): one flags byte (bit 0: event idx on both queues, bits
//! 1-2: queue size 16 >> n), the TX queue's 256-byte descriptor table and 36-byte avail ring, the
//! RX queue's, a u16 LE length and that many bytes of a frame already waiting for the guest,
//! then the data written at 0x10000. Descriptor addresses are reduced to the 1 MiB unless their
//! top byte is 0xff (kept raw: out-of-memory descriptors).
//!
//! No traffic leaves the host: before the real pass, every TX chain is gathered on a twin queue
//! and the input is skipped when a frame could reach an IPv4 address outside 10.0.2.0/24 and
//! 127.0.0.0/8 (see `cvmm_fuzz::virtq::tx_is_confined`).
#![no_main]

use cvmm_fuzz::virtq::{self, Layout, RingSetup};
use devices::net::virtio::{drain_tx, fill_rx, DropLog, NicStats};
use devices::net::{UserNet, UserNetConfig};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::time::Instant;
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x10_0000;
const TX: RingSetup = RingSetup {
    desc: 0x0,
    avail: 0x1000,
    used: 0x2000,
};
const RX: RingSetup = RingSetup {
    desc: 0x3000,
    avail: 0x4000,
    used: 0x5000,
};
const DATA: u64 = 0x1_0000;

fuzz_target!(|data: &[u8]| {
    let mem = Arc::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).expect("1 MiB maps"),
    );
    let layout = Layout::split(data);
    layout.write_ring(mem.as_ref(), &TX, 0);
    layout.write_ring(mem.as_ref(), &RX, 1);
    layout.write_data(mem.as_ref(), DATA);

    let size = layout.queue_size();
    let event_idx = layout.event_idx();
    if !virtq::tx_is_confined(mem.as_ref(), TX.queue(size, event_idx)) {
        return;
    }
    let mut tx = TX.queue(size, event_idx);
    let mut rx = RX.queue(size, event_idx);
    let mut net =
        UserNet::new(UserNetConfig::with_dns(vec![], vec![])).expect("a NAT without forwards");
    let mut st = NicStats::default();
    let mut log = DropLog::default();
    let mut pending = layout.pending_frame();

    drain_tx(&mem, &mut tx, &mut net, &mut st, &mut log);
    let _ = tx.needs_notification(mem.as_ref());
    net.poll(Instant::now());
    let mut filled = fill_rx(&mem, &mut rx, &mut net, &mut pending, &mut st, &mut log);
    if pending.is_some() && rx.enable_notification(mem.as_ref()).unwrap_or(false) {
        filled |= fill_rx(&mem, &mut rx, &mut net, &mut pending, &mut st, &mut log);
    }
    if filled {
        let _ = rx.needs_notification(mem.as_ref());
    }
});
