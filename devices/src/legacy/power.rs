//! The hardware-reduced ACPI registers cvmm's FADT points at: sleep control (offset 0), sleep
//! status (offset 1) and the reset register (offset 2), in one small I/O range.
//!
//! Writing SLP_EN with SLP_TYP = [`ACPI_S5_SLP_TYP`] (the DSDT's `_S5_`) powers the VM off;
//! writing [`ACPI_RESET_VALUE`] to the reset register resets it.

use super::{GuestStop, StopSignal};
use crate::bus::PioDevice;

/// The SLP_TYP value the DSDT's `_S5_` package advertises.
pub const ACPI_S5_SLP_TYP: u8 = 5;
/// The value the FADT tells the guest to write to the reset register.
pub const ACPI_RESET_VALUE: u8 = 0x01;

const SLEEP_CONTROL: u16 = 0;
const SLEEP_STATUS: u16 = 1;
const RESET: u16 = 2;
const SLP_EN: u8 = 1 << 5;
const WAK_STS: u8 = 1 << 7;

/// The ACPI sleep/reset register block.
pub struct AcpiPowerPorts {
    stop: StopSignal,
}

impl AcpiPowerPorts {
    /// Registers that report power-off and reset through `stop`.
    pub fn new(stop: StopSignal) -> Self {
        Self { stop }
    }
}

impl PioDevice for AcpiPowerPorts {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let v = match offset {
            SLEEP_STATUS => WAK_STS,
            _ => 0,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            SLEEP_CONTROL if v & SLP_EN != 0 => {
                let slp_typ = (v >> 2) & 0x7;
                if slp_typ == ACPI_S5_SLP_TYP {
                    tracing::info!("guest entered ACPI S5 (power-off)");
                    self.stop.stop(GuestStop::PowerOff);
                } else {
                    tracing::debug!(slp_typ, "guest asked for an unsupported sleep state");
                }
            }
            RESET if v == ACPI_RESET_VALUE => {
                tracing::info!("guest requested reset through the ACPI reset register");
                self.stop.stop(GuestStop::Reset);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let stop = StopSignal::new().unwrap();
        let mut p = AcpiPowerPorts::new(stop.clone());
        p.write(SLEEP_CONTROL, &[ACPI_S5_SLP_TYP << 2]); // no SLP_EN
        p.write(SLEEP_CONTROL, &[(3 << 2) | SLP_EN]); // S3: not supported
        assert_eq!(stop.reason(), None);
        p.write(SLEEP_CONTROL, &[(ACPI_S5_SLP_TYP << 2) | SLP_EN]);
        assert_eq!(stop.reason(), Some(GuestStop::PowerOff));
    }

    #[test]
    fn reset_register_resets_and_empty_writes_are_ignored() {
        let stop = StopSignal::new().unwrap();
        let mut p = AcpiPowerPorts::new(stop.clone());
        p.write(RESET, &[]);
        p.write(RESET, &[0x55]);
        assert_eq!(stop.reason(), None);
        p.write(RESET, &[ACPI_RESET_VALUE]);
        assert_eq!(stop.reason(), Some(GuestStop::Reset));
        let mut s = [0u8; 1];
        p.read(SLEEP_STATUS, &mut s);
        assert_eq!(s[0], WAK_STS);
    }
}
