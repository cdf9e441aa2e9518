//! A CMOS RTC (MC146818) on ports 0x70/0x71. Linux probes it at boot and stalls for about ten
//! seconds when nothing answers; this one reports the host's UTC time, never shows an update
//! in progress, and keeps the other CMOS bytes as plain storage.

use crate::bus::PioDevice;
use std::time::{SystemTime, UNIX_EPOCH};

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
const B_BINARY: u8 = 1 << 2;
const B_24H: u8 = 1 << 1;

/// The CMOS RTC and its 128 bytes of storage.
pub struct CmosRtc {
    index: u8,
    ram: [u8; 128],
    clock: Box<dyn Fn() -> u64 + Send>,
}

impl Default for CmosRtc {
    fn default() -> Self {
        Self::with_clock(Box::new(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        }))
    }
}

impl CmosRtc {
    /// An RTC reading seconds since the Unix epoch from `clock` (tests pass a fixed one).
    pub fn with_clock(clock: Box<dyn Fn() -> u64 + Send>) -> Self {
        let mut ram = [0u8; 128];
        ram[REG_A as usize] = 0x26; // 32.768 kHz base, 1.024 kHz rate, UIP clear
        ram[REG_B as usize] = B_24H;
        ram[REG_D as usize] = 0x80; // valid RAM and time
        Self {
            index: 0,
            ram,
            clock,
        }
    }

    fn encode(&self, v: u32) -> u8 {
        let v = (v % 100) as u8;
        if self.ram[REG_B as usize] & B_BINARY != 0 {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn read_reg(&mut self, reg: u8) -> u8 {
        let t = (self.clock)();
        let days = t / 86_400;
        let secs = (t % 86_400) as u32;
        let (year, month, day) = civil_from_days(days as i64);
        match reg {
            REG_SECONDS => self.encode(secs % 60),
            REG_MINUTES => self.encode(secs / 60 % 60),
            REG_HOURS => self.encode(secs / 3600),
            REG_WEEKDAY => self.encode(((days + 4) % 7 + 1) as u32), // 1970-01-01 was a Thursday
            REG_DAY => self.encode(day),
            REG_MONTH => self.encode(month),
            REG_YEAR => self.encode(year % 100),
            REG_CENTURY => self.encode(year / 100),
            REG_C => {
                // Reading C acknowledges interrupts.
                let v = self.ram[REG_C as usize];
                self.ram[REG_C as usize] = 0;
                v
            }
            r => self.ram[r as usize],
        }
    }

    fn write_reg(&mut self, reg: u8, v: u8) {
        match reg {
            REG_A => self.ram[REG_A as usize] = v & 0x7f, // UIP is read-only
            REG_C | REG_D => {}                           // read-only
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH
            | REG_YEAR | REG_CENTURY => {
                tracing::debug!(
                    reg,
                    v,
                    "guest set the RTC; the host clock stays authoritative"
                )
            }
            r => self.ram[r as usize] = v,
        }
    }
}

/// Days since 1970-01-01 -> (year, month 1-12, day 1-31), proleptic Gregorian.
fn civil_from_days(z: i64) -> (u32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as u32, m as u32, d as u32)
}

impl PioDevice for CmosRtc {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        let v = match offset {
            1 => self.read_reg(self.index),
            _ => 0xff,
        };
        data.fill(v);
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            0 => self.index = v & 0x7f, // bit 7 masks NMIs
            1 => self.write_reg(self.index, v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(rtc: &mut CmosRtc, r: u8) -> u8 {
        rtc.write(0, &[r | 0x80]);
        let mut b = [0u8];
        rtc.read(1, &mut b);
        b[0]
    }

    #[test]
    fn reports_a_fixed_time_in_bcd_and_binary() {
        // 2026-11-22 07:39:54 UTC, a Sunday.
        let mut rtc = CmosRtc::with_clock(Box::new(|| 1_795_333_194));
        assert_eq!(reg(&mut rtc, REG_SECONDS), 0x54);
        assert_eq!(reg(&mut rtc, REG_MINUTES), 0x39);
        assert_eq!(reg(&mut rtc, REG_HOURS), 0x07);
        assert_eq!(reg(&mut rtc, REG_DAY), 0x22);
        assert_eq!(reg(&mut rtc, REG_MONTH), 0x11);
        assert_eq!(reg(&mut rtc, REG_YEAR), 0x26);
        assert_eq!(reg(&mut rtc, REG_CENTURY), 0x20);
        assert_eq!(reg(&mut rtc, REG_WEEKDAY), 1);
        rtc.write(0, &[REG_B]);
        rtc.write(1, &[B_24H | B_BINARY]);
        assert_eq!(reg(&mut rtc, REG_MINUTES), 39);
        assert_eq!(reg(&mut rtc, REG_YEAR), 26);
    }

    #[test]
    fn never_shows_update_in_progress_and_keeps_storage() {
        let mut rtc = CmosRtc::default();
        rtc.write(0, &[REG_A]);
        rtc.write(1, &[0xa6]);
        assert_eq!(reg(&mut rtc, REG_A) & 0x80, 0);
        assert_eq!(reg(&mut rtc, REG_D), 0x80);
        rtc.write(0, &[0x40]);
        rtc.write(1, &[0x5a]);
        assert_eq!(reg(&mut rtc, 0x40), 0x5a);
        // Out-of-range index bits are masked, never index past the RAM.
        rtc.write(0, &[0xff]);
        let mut b = [0u8];
        rtc.read(1, &mut b);
        rtc.write(1, &[1]);
        rtc.write(0, &[]);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_779), (2026, 11, 22));
    }
}
