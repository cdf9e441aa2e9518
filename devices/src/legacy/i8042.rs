//! A minimal i8042 keyboard controller: enough for Linux's reset path (command 0xFE on port
//! 0x64 pulses the CPU reset line, which ends the VM as [`GuestStop::Reset`]).

use super::{GuestStop, StopSignal};
use crate::bus::PioDevice;

const CMD_RESET_CPU: u8 = 0xfe;
const OFFSET_DATA: u16 = 0; // port 0x60
const OFFSET_CMD: u16 = 4; // port 0x64

/// The i8042 at ports 0x60..0x64.
pub struct I8042 {
    stop: StopSignal,
    absent: bool,
}

impl I8042 {
    /// An i8042 that reports a CPU reset through `stop`.
    pub fn new(stop: StopSignal) -> Self {
        Self {
            stop,
            absent: false,
        }
    }

    /// The same reset line behind ports that read like an absent controller (all ones), so
    /// that firmware keyboard drivers (OVMF's PS/2 driver) give up at once instead of
    /// waiting for a keyboard that never answers.
    pub fn reset_only(stop: StopSignal) -> Self {
        Self { stop, absent: true }
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        // No keyboard: the output buffer is always empty and the data port reads 0.
        let v = match offset {
            OFFSET_DATA | OFFSET_CMD if !self.absent => 0,
            _ => 0xff,
        };
        data.fill(v);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if offset == OFFSET_CMD && data.first() == Some(&CMD_RESET_CPU) {
            tracing::info!("guest requested reset through the i8042");
            self.stop.stop(GuestStop::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_stops_with_reset() {
        let stop = StopSignal::new().unwrap();
        let mut dev = I8042::new(stop.clone());
        dev.write(OFFSET_CMD, &[0xaa]);
        dev.write(OFFSET_DATA, &[CMD_RESET_CPU]);
        assert_eq!(stop.reason(), None);
        dev.write(OFFSET_CMD, &[CMD_RESET_CPU]);
        assert_eq!(stop.reason(), Some(GuestStop::Reset));
        assert_eq!(stop.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn reset_only_reads_absent_but_still_resets() {
        let stop = StopSignal::new().unwrap();
        let mut dev = I8042::reset_only(stop.clone());
        let mut b = [0u8];
        dev.read(OFFSET_CMD, &mut b);
        assert_eq!(b[0], 0xff);
        dev.write(OFFSET_CMD, &[CMD_RESET_CPU]);
        assert_eq!(stop.reason(), Some(GuestStop::Reset));
    }

    #[test]
    fn status_reads_empty() {
        let mut dev = I8042::new(StopSignal::new().unwrap());
        let mut b = [0x55u8];
        dev.read(OFFSET_CMD, &mut b);
        assert_eq!(b[0], 0);
    }
}
