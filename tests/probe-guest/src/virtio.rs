//! Modern (virtio 1.x) virtio-pci transport: vendor capability walk, reset, feature
//! negotiation (VERSION_1 and ACCESS_PLATFORM plus what the driver asks for), queue set-up
//! with MSI-X vectors left at NO_VECTOR, DRIVER_OK. Every wait is bounded.

use crate::clock::Deadline;
use crate::mmio::Mmio;
use crate::pci::{self, Access, Bdf};
use crate::virtq::{Queue, MAX_SIZE};

/// VIRTIO_F_VERSION_1.
pub const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_ACCESS_PLATFORM.
pub const F_ACCESS_PLATFORM: u64 = 1 << 33;

const S_ACK: u8 = 1;
const S_DRIVER: u8 = 2;
const S_DRIVER_OK: u8 = 4;
const S_FEATURES_OK: u8 = 8;
const S_FAILED: u8 = 128;
const NO_VECTOR: u16 = 0xffff;

// Common configuration offsets.
const DFSELECT: u64 = 0;
const DF: u64 = 4;
const GFSELECT: u64 = 8;
const GF: u64 = 12;
const MSIX_CONFIG: u64 = 16;
const NUM_QUEUES: u64 = 18;
const STATUS: u64 = 20;
const Q_SELECT: u64 = 22;
const Q_SIZE: u64 = 24;
const Q_MSIX: u64 = 26;
const Q_ENABLE: u64 = 28;
const Q_NOTIFY_OFF: u64 = 30;
const Q_DESC: u64 = 32;
const Q_DRIVER: u64 = 40;
const Q_DEVICE: u64 = 48;

/// Why a virtio device could not be brought up (printed in the error marker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A required capability (common/notify/device cfg) is missing or its BAR unusable.
    NoCap(&'static str),
    /// The device did not finish its reset.
    ResetTimeout,
    /// The device does not offer VIRTIO_F_VERSION_1.
    NoVersion1,
    /// FEATURES_OK did not stick.
    FeaturesRejected,
    /// The queue does not exist or could not be allocated.
    Queue(u16),
    /// The device set DEVICE_NEEDS_RESET or an unexpected value.
    Device(&'static str),
}

impl Error {
    /// Marker spelling.
    pub fn name(self) -> &'static [u8] {
        match self {
            Error::NoCap(w) => w.as_bytes(),
            Error::ResetTimeout => b"reset-timeout",
            Error::NoVersion1 => b"no-version-1",
            Error::FeaturesRejected => b"features-rejected",
            Error::Queue(_) => b"queue-setup",
            Error::Device(w) => w.as_bytes(),
        }
    }
}

/// A virtio-pci device after capability discovery.
pub struct Device {
    common: Mmio,
    notify: Mmio,
    notify_mult: u32,
    /// Device-specific configuration.
    pub cfg: Mmio,
    /// Features both sides agreed on.
    pub features: u64,
}

/// Maps the region that capability `at` describes: (region, notify multiplier).
fn cap_region(acc: Access, bdf: Bdf, at: u16) -> Option<Mmio> {
    let bar = acc.r8(bdf, at + 4);
    let off = u64::from(acc.r32(bdf, at + 8));
    let len = u64::from(acc.r32(bdf, at + 12));
    let b = pci::read_bar(acc, bdf, bar)?;
    if b.addr == 0 || (b.size != 0 && off.checked_add(len)? > b.size) {
        return None;
    }
    Mmio::map(b.addr.checked_add(off)?, len)
}

impl Device {
    /// Finds the capabilities of the function at `bdf` and resets the device.
    pub fn probe(acc: Access, bdf: Bdf) -> Result<Self, Error> {
        let (mut common, mut notify, mut cfg, mut mult) = (None, None, None, 0);
        for at in pci::capabilities(acc, bdf) {
            if acc.r8(bdf, at) != 0x09 {
                continue;
            }
            match acc.r8(bdf, at + 3) {
                1 if common.is_none() => common = cap_region(acc, bdf, at),
                2 if notify.is_none() => {
                    notify = cap_region(acc, bdf, at);
                    mult = acc.r32(bdf, at + 16);
                }
                4 if cfg.is_none() => cfg = cap_region(acc, bdf, at),
                _ => {}
            }
        }
        let common = common
            .filter(|m| m.len() >= 56)
            .ok_or(Error::NoCap("no-common-cfg"))?;
        let notify = notify.ok_or(Error::NoCap("no-notify-cfg"))?;
        let cfg = cfg.ok_or(Error::NoCap("no-device-cfg"))?;
        acc.enable(bdf, 0x6); // memory space + bus master
        let dev = Device {
            common,
            notify,
            notify_mult: mult,
            cfg,
            features: 0,
        };
        dev.reset()?;
        Ok(dev)
    }

    fn reset(&self) -> Result<(), Error> {
        self.common.w8(STATUS, 0);
        let d = Deadline::after_ms(1000);
        while self.common.r8(STATUS) != 0 {
            if d.expired() {
                return Err(Error::ResetTimeout);
            }
        }
        Ok(())
    }

    fn set_status(&self, bits: u8) {
        let s = self.common.r8(STATUS);
        self.common.w8(STATUS, s | bits);
    }

    /// Marks the device failed (after an error during set-up).
    pub fn fail(&self) {
        self.set_status(S_FAILED);
    }

    /// ACKNOWLEDGE, DRIVER, feature negotiation: accepts VERSION_1, ACCESS_PLATFORM and the
    /// bits of `wanted` the device offers.
    pub fn negotiate(&mut self, wanted: u64) -> Result<u64, Error> {
        self.set_status(S_ACK | S_DRIVER);
        self.common.w32(DFSELECT, 0);
        let lo = self.common.r32(DF);
        self.common.w32(DFSELECT, 1);
        let hi = self.common.r32(DF);
        let offered = u64::from(lo) | (u64::from(hi) << 32);
        if offered & F_VERSION_1 == 0 {
            return Err(Error::NoVersion1);
        }
        let accepted = offered & (wanted | F_VERSION_1 | F_ACCESS_PLATFORM);
        self.common.w32(GFSELECT, 0);
        self.common.w32(GF, accepted as u32);
        self.common.w32(GFSELECT, 1);
        self.common.w32(GF, (accepted >> 32) as u32);
        self.set_status(S_FEATURES_OK);
        if self.common.r8(STATUS) & S_FEATURES_OK == 0 {
            return Err(Error::FeaturesRejected);
        }
        self.common.w16(MSIX_CONFIG, NO_VECTOR);
        self.features = accepted;
        Ok(accepted)
    }

    /// Number of queues the device has.
    pub fn num_queues(&self) -> u16 {
        self.common.r16(NUM_QUEUES)
    }

    /// Sets up and enables queue `index` with at most `want` entries.
    pub fn queue(&self, index: u16, want: u16) -> Result<Queue, Error> {
        if index >= self.num_queues() {
            return Err(Error::Queue(index));
        }
        self.common.w16(Q_SELECT, index);
        let max = self.common.r16(Q_SIZE);
        if max == 0 {
            return Err(Error::Queue(index));
        }
        // Largest power of two not above the device's maximum, ours and `want`.
        let cap = max.min(want).min(MAX_SIZE);
        let size = 1u16 << (15 - cap.leading_zeros().min(15));
        let noff = u64::from(self.common.r16(Q_NOTIFY_OFF));
        let notify = noff
            .checked_mul(u64::from(self.notify_mult))
            .and_then(|o| self.notify.sub(o, 2))
            .ok_or(Error::Queue(index))?;
        let q = Queue::new(size, index, notify).ok_or(Error::Queue(index))?;
        let (desc, drv, dev) = q.addrs();
        self.common.w16(Q_SIZE, size);
        self.common.w16(Q_MSIX, NO_VECTOR);
        self.common.w64(Q_DESC, desc);
        self.common.w64(Q_DRIVER, drv);
        self.common.w64(Q_DEVICE, dev);
        self.common.w16(Q_ENABLE, 1);
        Ok(q)
    }

    /// DRIVER_OK: the device is live.
    pub fn driver_ok(&self) -> Result<(), Error> {
        self.set_status(S_DRIVER_OK);
        if self.common.r8(STATUS) & 0x40 != 0 {
            return Err(Error::Device("needs-reset"));
        }
        Ok(())
    }
}
