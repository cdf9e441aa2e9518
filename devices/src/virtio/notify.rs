//! Driver-notification suppression while a device works through a queue: notifications are off
//! while it drains, and back on (with `avail_event` moved to the next index under
//! `VIRTIO_F_RING_EVENT_IDX`) before it sleeps; buffers that raced in are drained at once. With
//! event idx a driver that keeps the queue busy kicks once per batch instead of once per buffer.

use virtio_queue::{Queue, QueueT};

use super::GuestMem;

/// Runs `drain` on `q` until no buffer arrived while notifications were off; returns whether
/// any run reported work. Only for queues whose every available buffer is work (TX, requests):
/// `drain` must consume all it can, or this loops while buffers stay available. A queue the guest corrupted ends the loop (the error was logged by the
/// queue's own checks on the next pop).
pub fn drain_suppressed(
    mem: &GuestMem,
    q: &mut Queue,
    mut drain: impl FnMut(&mut Queue) -> bool,
) -> bool {
    let mut any = false;
    loop {
        let _ = q.disable_notification(mem.as_ref());
        let worked = drain(q);
        any |= worked;
        let more = q.enable_notification(mem.as_ref()).unwrap_or(false);
        // No progress with buffers still "available" means a ring the queue refuses to pop
        // (e.g. a hostile avail idx): stop instead of spinning.
        if !(worked && more) {
            return any;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::F_RING_EVENT_IDX;
    use std::sync::Arc;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const SIZE: u16 = 16;

    fn mem() -> GuestMem {
        Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100000)]).unwrap())
    }

    fn avail_event(mem: &GuestMem, vq: &MockSplitQueue<GuestMemoryMmap>) -> u16 {
        let at = vq.used_addr().0 + 4 + 8 * u64::from(SIZE);
        mem.read_obj(GuestAddress(at)).unwrap()
    }

    /// Pops and completes every available chain; counts them.
    fn pop_all(mem: &GuestMem, q: &mut Queue, n: &mut usize) -> bool {
        let mut any = false;
        while let Some(c) = q.pop_descriptor_chain(mem.as_ref()) {
            q.add_used(mem.as_ref(), c.head_index(), 0).unwrap();
            *n += 1;
            any = true;
        }
        any
    }

    #[test]
    fn event_idx_asks_for_the_next_kick_after_the_batch() {
        let m = mem();
        let vq = MockSplitQueue::create(m.as_ref(), GuestAddress(0x1000), SIZE);
        let descs: Vec<RawDescriptor> = (0..3)
            .map(|i| RawDescriptor::from(SplitDescriptor::new(0x8000 + i * 0x100, 0x100, 0, 0)))
            .collect();
        vq.build_multiple_desc_chains(&descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        q.set_event_idx(true);
        assert_eq!(F_RING_EVENT_IDX, 1 << 29);
        let mut n = 0;
        assert!(drain_suppressed(&m, &mut q, |q| pop_all(&m, q, &mut n)));
        assert_eq!(n, 3);
        assert_eq!(
            avail_event(&m, &vq),
            3,
            "kick wanted when buffer 3 is made available"
        );
        assert!(!drain_suppressed(&m, &mut q, |q| pop_all(&m, q, &mut n)));
    }

    #[test]
    fn without_event_idx_notifications_end_enabled() {
        let m = mem();
        let vq = MockSplitQueue::create(m.as_ref(), GuestAddress(0x1000), SIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut n = 0;
        let mut flags_during = None;
        drain_suppressed(&m, &mut q, |q| {
            flags_during = Some(m.read_obj::<u16>(vq.used_addr()).unwrap());
            pop_all(&m, q, &mut n)
        });
        assert_eq!(
            flags_during,
            Some(1),
            "VRING_USED_F_NO_NOTIFY while draining"
        );
        assert_eq!(
            m.read_obj::<u16>(vq.used_addr()).unwrap(),
            0,
            "re-enabled after"
        );
    }

    #[test]
    fn a_hostile_avail_index_does_not_spin() {
        let m = mem();
        let vq = MockSplitQueue::create(m.as_ref(), GuestAddress(0x1000), SIZE);
        let mut q: Queue = vq.create_queue().unwrap();
        q.set_event_idx(true);
        vq.avail().idx().store(u16::to_le(SIZE * 40)); // far more than the ring holds
        let mut calls = 0;
        let mut n = 0;
        drain_suppressed(&m, &mut q, |q| {
            calls += 1;
            pop_all(&m, q, &mut n)
        });
        assert!(calls <= 2, "drained {calls} times");
    }
}
