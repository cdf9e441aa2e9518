//! The event register of the hardware-reduced platform's Generic Event Device (ACPI0013): one
//! byte of pending events at an I/O port. Raising an event sets its bit and pulses the GED's
//! interrupt (an edge on a GSI, through a KVM irqfd); the DSDT's `_EVT` method reads the byte,
//! which hands the pending bits over and clears them, and notifies the device of each bit
//! (bit 0: the PNP0C0C power button, `Notify(PWRB, 0x80)`).

use crate::bus::PioDevice;
use vmm_sys_util::eventfd::EventFd;

/// Pending-event bit of the power button.
pub const GED_EVENT_POWER_BUTTON: u8 = 1 << 0;
/// Ports of the register.
pub const GED_PORT_LEN: u16 = 1;

/// The GED's event register.
pub struct GenericEventDevice {
    pending: u8,
    irq: EventFd,
    raised: u64,
}

impl GenericEventDevice {
    /// A register that pulses `irq` (an irqfd on the GED's GSI) for each event raised.
    pub fn new(irq: EventFd) -> Self {
        Self {
            pending: 0,
            irq,
            raised: 0,
        }
    }

    /// Presses the power button: sets [`GED_EVENT_POWER_BUTTON`] and interrupts the guest.
    pub fn press_power_button(&mut self) {
        self.raise(GED_EVENT_POWER_BUTTON);
        tracing::info!("ACPI power button pressed (GED)");
    }

    /// Events the guest has not read yet.
    pub fn pending(&self) -> u8 {
        self.pending
    }

    /// Interrupts raised so far.
    pub fn raised(&self) -> u64 {
        self.raised
    }

    fn raise(&mut self, event: u8) {
        self.pending |= event;
        self.raised += 1;
        if let Err(e) = self.irq.write(1) {
            tracing::warn!("GED interrupt: {e}");
        }
    }
}

impl PioDevice for GenericEventDevice {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(b) = data.first_mut() {
                *b = std::mem::take(&mut self.pending);
            }
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        tracing::trace!(offset, len = data.len(), "GED register write ignored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_press_sets_the_bit_pulses_the_irq_and_a_read_hands_it_over() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut ged = GenericEventDevice::new(irq.try_clone().unwrap());
        let mut b = [0xaau8];
        ged.read(0, &mut b);
        assert_eq!(b[0], 0, "nothing pending");
        assert!(irq.read().is_err(), "no interrupt yet");
        ged.press_power_button();
        assert_eq!(ged.pending(), GED_EVENT_POWER_BUTTON);
        assert_eq!(irq.read().unwrap(), 1, "one edge on the GSI");
        // Writes cannot set or clear events.
        ged.write(0, &[0]);
        ged.write(0, &[0xff]);
        assert_eq!(ged.pending(), GED_EVENT_POWER_BUTTON);
        ged.read(0, &mut b);
        assert_eq!(b[0], GED_EVENT_POWER_BUTTON);
        ged.read(0, &mut b);
        assert_eq!(b[0], 0, "read once, then cleared");
        // Two presses before the guest reads: one pending bit, two interrupts.
        ged.press_power_button();
        ged.press_power_button();
        assert_eq!(irq.read().unwrap(), 2);
        assert_eq!(ged.raised(), 3);
        let mut wide = [0xffu8; 4];
        ged.read(0, &mut wide);
        assert_eq!(wide, [GED_EVENT_POWER_BUTTON, 0, 0, 0]);
        ged.read(1, &mut b);
        assert_eq!(b[0], 0, "past the register");
    }
}
