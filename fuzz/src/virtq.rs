//! Split virtqueues built from fuzz input for the `virtio_net_queues` target: the input layout,
//! writing rings and data into guest memory, and the check that keeps guest TX frames on the
//! host (IPv4 destinations confined to 10.0.2.0/24 or 127.0.0.0/8).

use std::io::Read;
use virtio_queue::{Queue, QueueT, Reader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Entries of each queue's descriptor table in the input.
pub const QSIZE: u16 = 16;
/// Bytes of a descriptor table (16 × addr u64, len u32, flags u16, next u16).
pub const DESC_BYTES: usize = 16 * QSIZE as usize;
/// Bytes of an avail ring without used_event (flags, idx, ring[16]).
pub const AVAIL_BYTES: usize = 4 + 2 * QSIZE as usize;
/// Bytes of one queue's part of the input.
pub const RING_BYTES: usize = DESC_BYTES + AVAIL_BYTES;
/// Size of the guest memory descriptor addresses are reduced into.
pub const MEM: u64 = 0x10_0000;
/// Bytes of `virtio_net_hdr_v1`.
pub const NET_HDR: usize = 12;

/// Where one queue's rings live in guest memory.
pub struct RingSetup {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl RingSetup {
    /// A ready queue of `size` on these rings (event idx as given), next index 0.
    pub fn queue(&self, size: u16, event_idx: bool) -> Queue {
        let mut q = Queue::new(QSIZE).expect("16 is a valid queue size");
        q.set_size(size);
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .expect("aligned descriptor table");
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .expect("aligned avail ring");
        q.try_set_used_ring_address(GuestAddress(self.used))
            .expect("aligned used ring");
        q.set_event_idx(event_idx);
        q.set_ready(true);
        q
    }
}

/// The parts of a `virtio_net_queues` input (see the target's module doc).
pub struct Layout<'a> {
    flags: u8,
    rings: [[u8; RING_BYTES]; 2],
    pending: Option<&'a [u8]>,
    data: &'a [u8],
}

impl<'a> Layout<'a> {
    /// Splits `input`; missing ring bytes are zero.
    pub fn split(input: &'a [u8]) -> Self {
        let (&flags, mut rest) = input.split_first().unwrap_or((&0, &[]));
        let mut rings = [[0u8; RING_BYTES]; 2];
        for ring in &mut rings {
            let n = rest.len().min(RING_BYTES);
            ring[..n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            for d in ring[..DESC_BYTES].chunks_exact_mut(16) {
                if d[7] != 0xff {
                    let a = u64::from_le_bytes(d[..8].try_into().expect("8 bytes")) & (MEM - 1);
                    d[..8].copy_from_slice(&a.to_le_bytes());
                }
            }
        }
        let mut pending = None;
        if rest.len() >= 2 {
            let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
            let body = &rest[2..];
            let take = len.min(body.len());
            if len > 0 {
                pending = Some(&body[..take]);
            }
            rest = &body[take..];
        }
        Self {
            flags,
            rings,
            pending,
            data: rest,
        }
    }

    /// Queue size: 16 >> flags bits 1-2.
    pub fn queue_size(&self) -> u16 {
        QSIZE >> ((self.flags >> 1) & 3)
    }

    /// Whether VIRTIO_F_EVENT_IDX is on.
    pub fn event_idx(&self) -> bool {
        self.flags & 1 != 0
    }

    /// The frame already waiting for the guest, if any.
    pub fn pending_frame(&self) -> Option<Vec<u8>> {
        self.pending.map(<[u8]>::to_vec)
    }

    /// Writes ring `which` (0 or 1) of the input where `at` says.
    pub fn write_ring(&self, mem: &GuestMemoryMmap<()>, at: &RingSetup, which: usize) {
        let ring = &self.rings[which];
        mem.write_slice(&ring[..DESC_BYTES], GuestAddress(at.desc))
            .expect("descriptor table fits");
        mem.write_slice(&ring[DESC_BYTES..], GuestAddress(at.avail))
            .expect("avail ring fits");
    }

    /// Writes the data part at `at`, cut to what fits below [`MEM`].
    pub fn write_data(&self, mem: &GuestMemoryMmap<()>, at: u64) {
        let room = (MEM - at) as usize;
        let d = &self.data[..self.data.len().min(room)];
        mem.write_slice(d, GuestAddress(at)).expect("data fits");
    }
}

/// Whether every chain the device would take from `twin` (a fresh queue configured like the
/// real TX queue, consumed here) carries a frame the NAT may see without anything leaving the
/// host. False when a frame is IPv4 to an address outside 10.0.2.0/24 and 127.0.0.0/8, when the
/// checksum offload would write into the Ethernet type or IPv4 addresses (so the check could not
/// tell), or when a descriptor reads the TX used ring (which changes while the queue drains).
pub fn tx_is_confined(mem: &GuestMemoryMmap<()>, mut twin: Queue) -> bool {
    let used = twin.used_ring();
    let used_end = used + 6 + 8 * u64::from(QSIZE) + 2;
    let mut buf = Vec::new();
    while let Some(chain) = twin.pop_descriptor_chain(mem) {
        let reads_used = chain.clone().any(|d| {
            let a = d.addr().0;
            a < used_end && used < a.saturating_add(u64::from(d.len()))
        });
        if reads_used {
            return false;
        }
        let Ok(mut r) = Reader::new(mem, chain) else {
            continue;
        };
        buf.resize(r.available_bytes().min(NET_HDR + 64), 0);
        if r.read_exact(&mut buf).is_err() {
            continue;
        }
        if !frame_is_confined(&buf) {
            return false;
        }
    }
    true
}

/// The check of [`tx_is_confined`] on the first bytes of one TX buffer (header + frame).
pub fn frame_is_confined(buf: &[u8]) -> bool {
    let Some((hdr, frame)) = buf.split_at_checked(NET_HDR) else {
        return true; // too short for the device to send
    };
    if hdr[0] & 1 != 0 {
        let start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
        let off = usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
        let at = start + off;
        if at < 34 && at + 2 > 12 {
            return false;
        }
    }
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return true; // not IPv4 with addresses: ARP or dropped
    }
    let dst = &frame[30..34];
    dst[0] == 127 || dst[..3] == [10, 0, 2]
}
