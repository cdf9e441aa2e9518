//! The pvpanic I/O port (0x505, ACPI id `QEMU0001`): a guest that writes the "panicked" bit
//! ends the VM as [`GuestStop::Panic`].

use super::{GuestStop, StopSignal};
use crate::bus::PioDevice;

const PVPANIC_PANICKED: u8 = 1 << 0;
const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

/// The pvpanic device.
pub struct PvPanic {
    stop: StopSignal,
}

impl PvPanic {
    /// A pvpanic port that reports through `stop`.
    pub fn new(stop: StopSignal) -> Self {
        Self { stop }
    }
}

impl PioDevice for PvPanic {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        // The features the guest may use.
        data.fill(PVPANIC_PANICKED | PVPANIC_CRASH_LOADED);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) {
        match data.first() {
            Some(v) if v & PVPANIC_PANICKED != 0 => {
                tracing::warn!("guest reported a panic through pvpanic");
                self.stop.stop(GuestStop::Panic);
            }
            Some(v) if v & PVPANIC_CRASH_LOADED != 0 => {
                tracing::warn!("guest reported a panic, crash kernel loaded");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panicked_bit_stops_with_panic() {
        let stop = StopSignal::new().unwrap();
        let mut dev = PvPanic::new(stop.clone());
        let mut f = [0u8];
        dev.read(0, &mut f);
        assert_eq!(f[0], 3);
        dev.write(0, &[PVPANIC_CRASH_LOADED]);
        assert_eq!(stop.reason(), None);
        dev.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(stop.reason(), Some(GuestStop::Panic));
    }
}
