//! virtio-9p transport: a split virtqueue of 16 entries in 1 MiB of guest memory whose
//! descriptor table, avail ring and data area come from the input, processed by
//! `devices::p9::virtio::process_requests` against a versioned `NinePServer`.
//!
//! Input layout: 256 bytes of descriptor table (16 × addr u64, len u32, flags u16, next u16),
//! 36 bytes of avail ring (flags, idx, ring[16]), then the data written at 0x10000. Descriptor
//! addresses are reduced to the low 1 MiB unless their top byte is 0xff (kept raw, so
//! out-of-memory descriptors are exercised too); all other fields are raw.
#![no_main]

use cvmm_fuzz::p9::tversion;
use devices::p9::{virtio::process_requests, MemoryShare, NinePConfig, NinePServer, Share};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM: usize = 0x10_0000;
const QSIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
const DATA: u64 = 0x1_0000;
const DESC_BYTES: usize = 16 * QSIZE as usize;
const AVAIL_BYTES: usize = 4 + 2 * QSIZE as usize;

fn server() -> Mutex<NinePServer> {
    let share = MemoryShare::new()
        .with_file("environment", b"COCOS=1\n".to_vec(), 0o644)
        .and_then(|s| s.with_file("cert.pem", vec![b'c'; 5000], 0o644))
        .expect("static share contents are valid");
    let mut srv = NinePServer::new(Share::Memory(share), NinePConfig::default());
    let mut out = Vec::new();
    srv.handle(&tversion(16 * 1024), &mut out);
    Mutex::new(srv)
}

fuzz_target!(|data: &[u8]| {
    let mem = Arc::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).expect("1 MiB maps"),
    );
    let mut header = [0u8; DESC_BYTES + AVAIL_BYTES];
    let n = data.len().min(header.len());
    header[..n].copy_from_slice(&data[..n]);
    for d in header[..DESC_BYTES].chunks_exact_mut(16) {
        if d[7] != 0xff {
            let addr = u64::from_le_bytes(d[..8].try_into().expect("8 bytes")) & (MEM as u64 - 1);
            d[..8].copy_from_slice(&addr.to_le_bytes());
        }
    }
    mem.write_slice(&header[..DESC_BYTES], GuestAddress(DESC))
        .expect("descriptor table fits");
    mem.write_slice(&header[DESC_BYTES..], GuestAddress(AVAIL))
        .expect("avail ring fits");
    let payload = &data[n..];
    let room = MEM - DATA as usize;
    mem.write_slice(&payload[..payload.len().min(room)], GuestAddress(DATA))
        .expect("data fits");

    let mut q = Queue::new(QSIZE).expect("valid queue size");
    q.try_set_desc_table_address(GuestAddress(DESC))
        .expect("aligned");
    q.try_set_avail_ring_address(GuestAddress(AVAIL))
        .expect("aligned");
    q.try_set_used_ring_address(GuestAddress(USED))
        .expect("aligned");
    q.set_ready(true);
    let srv = server();
    process_requests(&mem, &mut q, &srv);
    // A second pass: the guest may have "published" more entries than one pass consumes.
    process_requests(&mem, &mut q, &srv);
});
