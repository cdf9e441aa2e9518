//! The smoltcp `Device` of the NAT: two bounded in-memory frame queues, one with frames the
//! guest sent (consumed by smoltcp), one with frames for the guest (produced by smoltcp and by
//! the hand-built DHCP/UDP/RST paths).

use std::collections::VecDeque;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Largest Ethernet frame exchanged with the guest (1500-byte MTU, no VLAN tag).
pub(crate) const MAX_FRAME: usize = 1514;
/// The NAT stack's own frame limit: a whole IPv4 packet. Its TCP segments are still bounded by
/// the MSS each guest SYN announces, which is only raised for a guest that takes TSO frames.
pub(crate) const NAT_MAX_FRAME: usize = 14 + 65_535;

/// Bounded frame queues between the guest and smoltcp.
pub(crate) struct FrameDevice {
    pub from_guest: VecDeque<Vec<u8>>,
    pub to_guest: VecDeque<Vec<u8>>,
    pub cap: usize,
}

impl FrameDevice {
    pub fn new(cap: usize) -> Self {
        FrameDevice {
            from_guest: VecDeque::new(),
            to_guest: VecDeque::new(),
            cap,
        }
    }

    /// Queues a frame for the guest; drops it when the queue is full (returns false).
    pub fn push_to_guest(&mut self, frame: Vec<u8>) -> bool {
        if self.to_guest.len() >= self.cap {
            tracing::trace!("to-guest queue full, dropping frame");
            return false;
        }
        self.to_guest.push_back(frame);
        true
    }

    /// Queues a guest frame for smoltcp; drops it when the queue is full (returns false).
    pub fn push_from_guest(&mut self, frame: Vec<u8>) -> bool {
        if self.from_guest.len() >= self.cap {
            tracing::trace!("from-guest queue full, dropping frame");
            return false;
        }
        self.from_guest.push_back(frame);
        true
    }
}

pub(crate) struct RxToken(Vec<u8>);

pub(crate) struct TxToken<'a> {
    queue: &'a mut VecDeque<Vec<u8>>,
    cap: usize,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let result = f(&mut frame);
        if self.queue.len() < self.cap {
            self.queue.push_back(frame);
        } else {
            tracing::trace!("to-guest queue full, dropping smoltcp reply");
        }
        result
    }
}

impl phy::Device for FrameDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.from_guest.pop_front()?;
        Some((
            RxToken(frame),
            TxToken {
                queue: &mut self.to_guest,
                cap: self.cap,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        // Backpressure: smoltcp keeps data in its socket buffers while the guest is behind.
        if self.to_guest.len() >= self.cap {
            return None;
        }
        Some(TxToken {
            queue: &mut self.to_guest,
            cap: self.cap,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = NAT_MAX_FRAME;
        caps.max_burst_size = None;
        caps
    }
}
