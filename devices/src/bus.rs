//! Port-I/O and MMIO dispatch: devices register address ranges, vCPU exits are routed to them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device reached through x86 port I/O.
pub trait PioDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` from the device's base port.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    /// The guest writes `data` at `offset` from the device's base port.
    fn write(&mut self, offset: u16, data: &[u8]);
}

/// A device reached through memory-mapped I/O.
pub trait MmioDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` from the device's base address.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` from the device's base address.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors registering a device range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    #[error("invalid range {base:#x}+{len:#x}")]
    InvalidRange { base: u64, len: u64 },
    /// The range overlaps one already registered.
    #[error("range {base:#x}+{len:#x} overlaps a registered device")]
    Overlap { base: u64, len: u64 },
}

struct Entry<D: ?Sized> {
    len: u64,
    device: Arc<Mutex<D>>,
}

/// An address space of non-overlapping device ranges.
pub struct Bus<D: ?Sized> {
    ranges: BTreeMap<u64, Entry<D>>,
}

impl<D: ?Sized> Default for Bus<D> {
    fn default() -> Self {
        Self {
            ranges: BTreeMap::new(),
        }
    }
}

impl<D: ?Sized> Bus<D> {
    /// Registers `device` for `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: Arc<Mutex<D>>) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        if let Some((&b, e)) = self.ranges.range(..end).next_back() {
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.ranges.insert(base, Entry { len, device });
        Ok(())
    }

    /// Finds the device covering `addr` with its offset; `None` when nothing is there.
    pub fn find(&self, addr: u64) -> Option<(u64, &Arc<Mutex<D>>)> {
        let (&b, e) = self.ranges.range(..=addr).next_back()?;
        (addr - b < e.len).then_some((addr - b, &e.device))
    }
}

/// The port-I/O bus of a VM.
pub type PioBus = Bus<dyn PioDevice>;
/// The MMIO bus of a VM.
pub type MmioBus = Bus<dyn MmioDevice>;

impl PioBus {
    /// Dispatches a guest read; unclaimed ports read as all ones, like an open ISA bus.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) -> bool {
        match self.find(u64::from(port)) {
            Some((off, dev)) => {
                lock(dev).read(off as u16, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a guest write; writes to unclaimed ports are dropped.
    pub fn pio_write(&self, port: u16, data: &[u8]) -> bool {
        match self.find(u64::from(port)) {
            Some((off, dev)) => {
                lock(dev).write(off as u16, data);
                true
            }
            None => false,
        }
    }
}

impl MmioBus {
    /// Dispatches a guest read; unclaimed addresses read as all ones.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                lock(dev).read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a guest write; writes to unclaimed addresses are dropped.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                lock(dev).write(off, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a device that panicked once keeps serving.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u8);
    impl PioDevice for Reg {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u16, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn dispatches_by_range_and_offset() {
        let mut bus = PioBus::default();
        bus.insert(0x70, 2, Arc::new(Mutex::new(Reg(10)))).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.pio_read(0x71, &mut b));
        assert_eq!(b[0], 11);
        assert!(bus.pio_write(0x70, &[40]));
        bus.pio_read(0x70, &mut b);
        assert_eq!(b[0], 40);
        assert!(!bus.pio_read(0x72, &mut b));
        assert_eq!(b[0], 0xff);
        assert!(!bus.pio_read(0x6f, &mut b));
    }

    #[test]
    fn rejects_overlap_and_bad_ranges() {
        let mut bus = PioBus::default();
        bus.insert(0x3f8, 8, Arc::new(Mutex::new(Reg(0)))).unwrap();
        let d = Arc::new(Mutex::new(Reg(0)));
        assert!(matches!(
            bus.insert(0x3ff, 1, d.clone()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x3f0, 9, d.clone()),
            Err(BusError::Overlap { .. })
        ));
        assert!(bus.insert(0x3f0, 8, d.clone()).is_ok());
        assert!(matches!(
            bus.insert(5, 0, d.clone()),
            Err(BusError::InvalidRange { .. })
        ));
        let mut mbus = MmioBus::default();
        struct M;
        impl MmioDevice for M {
            fn read(&mut self, _: u64, _: &mut [u8]) {}
            fn write(&mut self, _: u64, _: &[u8]) {}
        }
        assert!(matches!(
            mbus.insert(u64::MAX, 2, Arc::new(Mutex::new(M))),
            Err(BusError::InvalidRange { .. })
        ));
    }
}
