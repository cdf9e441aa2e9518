//! virtio-net (device 0x1041) driver as a smoltcp `phy::Device`: queue 0 receives into
//! fixed buffers (descriptor i ↔ buffer i), queue 1 transmits from fixed slots. No merged
//! buffers, no offloads: each frame is a 12-byte virtio-net header plus one Ethernet frame.

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::virtio::{self, Device};
use crate::virtq::{Queue, F_WRITE};

/// VIRTIO_NET_F_MAC.
const F_MAC: u64 = 1 << 5;
const HDR: usize = 12;
const BUF: usize = 2048;
const RX_N: u16 = 16;
const TX_N: u16 = 16;
const MTU: usize = 1514;

/// Receive side.
pub struct Rx {
    q: Queue,
    bufs: &'static mut [u8],
    n: u16,
}

/// Transmit side.
pub struct Tx {
    q: Queue,
    bufs: &'static mut [u8],
    n: u16,
    busy: [bool; TX_N as usize],
    next: u16,
}

/// A live virtio-net device.
pub struct Net {
    _dev: Device,
    /// MAC address from the device configuration (or a fixed local one).
    pub mac: [u8; 6],
    rx: Rx,
    tx: Tx,
}

impl Net {
    /// Negotiates features, sets up both queues, posts receive buffers, DRIVER_OK.
    pub fn new(mut dev: Device) -> Result<Self, virtio::Error> {
        let feats = dev.negotiate(F_MAC)?;
        let rxq = dev.queue(0, RX_N)?;
        let txq = dev.queue(1, TX_N)?;
        let (rn, tn) = (rxq.size(), txq.size());
        let rbufs =
            crate::arena::alloc(usize::from(rn) * BUF, 64).ok_or(virtio::Error::Queue(0))?;
        let tbufs =
            crate::arena::alloc(usize::from(tn) * BUF, 64).ok_or(virtio::Error::Queue(1))?;
        let mut mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        if feats & F_MAC != 0 {
            for (i, b) in mac.iter_mut().enumerate() {
                *b = dev.cfg.r8(i as u64);
            }
        }
        let mut rx = Rx {
            q: rxq,
            bufs: rbufs,
            n: rn,
        };
        for i in 0..rn {
            rx.post(i);
        }
        dev.driver_ok()?;
        rx.q.notify();
        let tx = Tx {
            q: txq,
            bufs: tbufs,
            n: tn,
            busy: [false; TX_N as usize],
            next: 0,
        };
        Ok(Net {
            _dev: dev,
            mac,
            rx,
            tx,
        })
    }
}

impl Rx {
    fn post(&mut self, i: u16) {
        let addr = self.bufs.as_ptr() as u64 + u64::from(i) * BUF as u64;
        self.q.set_desc(i, addr, BUF as u32, F_WRITE, 0);
        self.q.push(i);
    }
}

impl Tx {
    /// Frees slots the device has finished with; returns a free slot.
    fn slot(&mut self) -> Option<u16> {
        while let Some((id, _)) = self.q.pop() {
            if let Some(b) = self.busy.get_mut(id as usize) {
                *b = false;
            }
        }
        (0..self.n)
            .map(|k| (self.next + k) % self.n)
            .find(|&i| !self.busy[usize::from(i)])
    }
}

/// A received frame (buffer `id`, `len` bytes including the header).
pub struct RxToken<'a> {
    rx: &'a mut Rx,
    id: u16,
    len: usize,
}

/// Permission to send one frame.
pub struct TxToken<'a> {
    tx: &'a mut Tx,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let start = usize::from(self.id) * BUF;
        let end = start + self.len.clamp(HDR, BUF);
        let r = f(self.rx.bufs.get(start + HDR..end).unwrap_or(&[]));
        self.rx.post(self.id);
        self.rx.q.notify();
        r
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(BUF - HDR);
        let i = self.tx.slot().unwrap_or(self.tx.next);
        let start = usize::from(i) * BUF;
        let buf = &mut self.tx.bufs[start..start + HDR + len];
        buf[..HDR].fill(0);
        let r = f(&mut buf[HDR..]);
        let addr = buf.as_ptr() as u64;
        self.tx.q.set_desc(i, addr, (HDR + len) as u32, 0, 0);
        self.tx.busy[usize::from(i)] = true;
        self.tx.next = (i + 1) % self.tx.n;
        self.tx.q.push(i);
        self.tx.q.notify();
        r
    }
}

impl phy::Device for Net {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _t: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        self.tx.slot()?;
        loop {
            let (id, len) = self.rx.q.pop()?;
            // Ignore completions for descriptors we never posted (misbehaving device).
            if let Ok(id) = u16::try_from(id) {
                if id < self.rx.n {
                    let rx = RxToken {
                        rx: &mut self.rx,
                        id,
                        len: len as usize,
                    };
                    return Some((rx, TxToken { tx: &mut self.tx }));
                }
            }
        }
    }

    fn transmit(&mut self, _t: Instant) -> Option<TxToken<'_>> {
        self.tx.slot()?;
        Some(TxToken { tx: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = MTU;
        c.max_burst_size = Some(1);
        c
    }
}
