//! System control port A (0x92): bit 1 is the fast A20 gate (always on under KVM, kept as
//! written), bit 0 a fast reset when it goes from 0 to 1. Firmware read-modify-writes it
//! (OVMF sets A20), so reads return the latched value.

use super::{GuestStop, StopSignal};
use crate::bus::PioDevice;

const FAST_RESET: u8 = 1 << 0;
const A20: u8 = 1 << 1;

/// Port 0x92.
pub struct SystemControlA {
    value: u8,
    stop: StopSignal,
}

impl SystemControlA {
    /// The port with A20 on; a reset goes to `stop`.
    pub fn new(stop: StopSignal) -> Self {
        Self { value: A20, stop }
    }
}

impl PioDevice for SystemControlA {
    fn read(&mut self, _offset: u16, data: &mut [u8]) {
        data.fill(self.value);
    }

    fn write(&mut self, _offset: u16, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        let old = self.value;
        self.value = v & !FAST_RESET;
        if v & FAST_RESET != 0 && old & FAST_RESET == 0 {
            tracing::info!("guest requested reset through port 0x92");
            self.stop.stop(GuestStop::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_modify_write_of_a20_keeps_running_and_bit0_resets() {
        let stop = StopSignal::new().unwrap();
        let mut p = SystemControlA::new(stop.clone());
        let mut b = [0u8];
        p.read(0, &mut b);
        p.write(0, &[b[0] | A20]);
        assert_eq!(stop.reason(), None);
        p.read(0, &mut b);
        assert_eq!(b[0], A20);
        p.write(0, &[]);
        p.write(0, &[A20 | FAST_RESET]);
        assert_eq!(stop.reason(), Some(GuestStop::Reset));
    }
}
