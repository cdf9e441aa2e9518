//! The ICH9 ACPI power-management I/O block (128 ports at PMBASE): PM1 status/enable (0x00,
//! 0x02), PM1 control (0x04: SCI_EN reads 1, SLP_EN with the `_S5_` type powers off), the
//! 24-bit PM timer at 3.579545 MHz (0x08), GPE0 status/enable (0x20, 0x28) and SMI enable
//! (0x30). It decodes only while the LPC bridge has it enabled at [`Q35_PM_BASE`].
//!
//! The fixed-feature power button: a press ([`AcpiPm::press_power_button`]) latches
//! PWRBTN_STS (PM1 status bit 8) whether or not the guest listens, as the hardware does; the
//! SCI (ICH9 routes it to IRQ 9, level-triggered, active high) is asserted while any status
//! bit is set together with its enable bit (PWRBTN_EN, PM1 enable bit 8; or a GPE0 pair) and
//! released when the guest clears the status by writing 1 to it.

use crate::bus::PioDevice;
use crate::interrupt::IrqLine;
use crate::legacy::{GuestStop, StopSignal};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where cvmm decodes the PM block (OVMF's PcdAcpiPmBaseAddress on Q35).
pub const Q35_PM_BASE: u16 = 0x600;
/// Ports of the block.
pub const PM_BLOCK_LEN: u16 = 0x80;
/// PM timer frequency.
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// The SLP_TYP of S5 in the firmware-boot DSDT (as QEMU's q35 `_S5_`).
pub const Q35_S5_SLP_TYP: u16 = 0;
/// The ISA IRQ the ICH9 routes the SCI to (the FADT's SCI_INT).
pub const Q35_SCI_IRQ: u32 = 9;
/// PM1 status: the power button was pressed (write 1 to clear).
pub const PWRBTN_STS: u16 = 1 << 8;
/// PM1 enable: a pressed power button raises the SCI.
pub const PWRBTN_EN: u16 = 1 << 8;

const PM1_STS: u16 = 0x00;
const PM1_EN: u16 = 0x02;
const PM1_CNT: u16 = 0x04;
const PM_TMR: u16 = 0x08;
const GPE0_STS: u16 = 0x20;
const GPE0_EN: u16 = 0x28;
const GPE0_LEN: u16 = 8;
const SMI_EN: u16 = 0x30;
const SCI_EN: u16 = 1;
/// PM1 events that raise the SCI: the power button (the PM timer overflow, the global lock
/// and the RTC alarm are not modelled).
const PM1_SCI_EVENTS: u16 = PWRBTN_STS;
const SLP_EN: u16 = 1 << 13;
const TIMER_MASK: u64 = 0xff_ffff;

/// Where the LPC bridge lets the PM block decode: shared between the two devices.
#[derive(Debug, Default)]
pub struct PmDecode(AtomicU32);

impl PmDecode {
    /// Sets the enabled base (`None`: decoding off).
    pub fn set(&self, base: Option<u16>) {
        self.0.store(
            base.map_or(0, |b| 0x1_0000 | u32::from(b)),
            Ordering::Release,
        );
    }

    /// The enabled base, if any.
    pub fn get(&self) -> Option<u16> {
        let v = self.0.load(Ordering::Acquire);
        (v & 0x1_0000 != 0).then_some(v as u16)
    }
}

/// A monotonic clock (tests pass their own).
pub type PmClock = Box<dyn Fn() -> Duration + Send>;

/// The PM block.
pub struct AcpiPm {
    decode: std::sync::Arc<PmDecode>,
    stop: StopSignal,
    clock: PmClock,
    pm1_sts: u16,
    pm1_en: u16,
    pm1_cnt: u16,
    gpe0: [u8; 2 * GPE0_LEN as usize],
    smi_en: u32,
    warned: bool,
    sci: Option<IrqLine>,
    sci_level: bool,
}

impl AcpiPm {
    /// A block at [`Q35_PM_BASE`] that decodes when `decode` says so and reports power-off
    /// through `stop`.
    pub fn new(decode: std::sync::Arc<PmDecode>, stop: StopSignal) -> Self {
        let start = Instant::now();
        Self::with_clock(decode, stop, Box::new(move || start.elapsed()))
    }

    /// The same with the PM timer driven by `clock`.
    pub fn with_clock(decode: std::sync::Arc<PmDecode>, stop: StopSignal, clock: PmClock) -> Self {
        Self {
            decode,
            stop,
            clock,
            pm1_sts: 0,
            pm1_en: 0,
            pm1_cnt: SCI_EN,
            gpe0: [0; 2 * GPE0_LEN as usize],
            smi_en: 0,
            warned: false,
            sci: None,
            sci_level: false,
        }
    }

    /// The same block driving `sci` (the SCI line, IRQ 9 on q35).
    pub fn with_sci(mut self, sci: IrqLine) -> Self {
        self.sci = Some(sci);
        self
    }

    /// Presses the fixed-feature power button: PWRBTN_STS is latched and the SCI asserted if
    /// the guest has set PWRBTN_EN (at once, or later when it sets it).
    pub fn press_power_button(&mut self) {
        self.pm1_sts |= PWRBTN_STS;
        tracing::info!(
            enabled = self.pm1_en & PWRBTN_EN != 0,
            "ACPI power button pressed"
        );
        self.update_sci();
    }

    /// Whether the SCI is asserted now.
    pub fn sci_asserted(&self) -> bool {
        self.sci_level
    }

    /// Recomputes the SCI level from the status/enable pairs and tells the line on a change.
    fn update_sci(&mut self) {
        let gpe = (0..usize::from(GPE0_LEN))
            .any(|i| self.gpe0[i] & self.gpe0[i + usize::from(GPE0_LEN)] != 0);
        let level = self.pm1_sts & self.pm1_en & PM1_SCI_EVENTS != 0 || gpe;
        if level == self.sci_level {
            return;
        }
        self.sci_level = level;
        tracing::debug!(level, "SCI");
        if let Some(line) = self.sci.as_mut() {
            line(level);
        }
    }

    fn decoding(&mut self) -> bool {
        match self.decode.get() {
            Some(Q35_PM_BASE) => true,
            Some(other) => {
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        pmbase = format!("{other:#x}"),
                        "the guest moved the ACPI PM block; cvmm decodes it only at {Q35_PM_BASE:#x}"
                    );
                }
                false
            }
            None => false,
        }
    }

    fn timer(&self) -> u32 {
        let t = (self.clock)();
        let ticks = t.as_nanos() * u128::from(PM_TIMER_HZ) / 1_000_000_000;
        (ticks as u64 & TIMER_MASK) as u32
    }

    /// The value of the 32-bit register containing `offset`.
    fn register(&self, offset: u16) -> u32 {
        match offset & !3 {
            PM1_STS => u32::from(self.pm1_sts) | u32::from(self.pm1_en) << 16,
            PM1_CNT => u32::from(self.pm1_cnt),
            PM_TMR => self.timer(),
            SMI_EN => self.smi_en,
            o if (GPE0_STS..GPE0_EN + GPE0_LEN).contains(&o) => {
                let i = usize::from(o - GPE0_STS);
                u32::from_le_bytes([
                    self.gpe0[i],
                    self.gpe0[i + 1],
                    self.gpe0[i + 2],
                    self.gpe0[i + 3],
                ])
            }
            _ => 0,
        }
    }

    fn write_pm1_cnt(&mut self, v: u16) {
        self.pm1_cnt = (v & !SLP_EN) | SCI_EN;
        if v & SLP_EN == 0 {
            return;
        }
        let slp_typ = (v >> 10) & 7;
        if slp_typ == Q35_S5_SLP_TYP {
            tracing::info!("guest entered ACPI S5 (power-off) through PM1_CNT");
            self.stop.stop(GuestStop::PowerOff);
        } else {
            tracing::info!(slp_typ, "guest asked for a sleep state cvmm does not offer");
        }
    }
}

impl PioDevice for AcpiPm {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        if !self.decoding() {
            data.fill(0xff);
            return;
        }
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset.wrapping_add(i as u16);
            *b = self.register(at).to_le_bytes()[usize::from(at & 3)];
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        if !self.decoding() || data.is_empty() || data.len() > 4 {
            return;
        }
        let mut v = [0u8; 4];
        v[..data.len()].copy_from_slice(data);
        let v = u32::from_le_bytes(v);
        match (offset, data.len()) {
            // PM1 status (write 1 to clear) and enable, at any width within the pair.
            (o, n) if o < PM1_CNT && o + n as u16 <= PM1_CNT => {
                for (i, &b) in data.iter().enumerate() {
                    let at = o + i as u16;
                    let shift = 8 * (at & 1);
                    let bits = u16::from(b) << shift;
                    if at < PM1_EN {
                        self.pm1_sts &= !bits;
                    } else {
                        self.pm1_en = (self.pm1_en & !(0xff << shift)) | bits;
                    }
                }
                self.update_sci();
            }
            (PM1_CNT, 2 | 4) => self.write_pm1_cnt(v as u16),
            (SMI_EN, 4) => self.smi_en = v,
            (o, n) if o >= GPE0_STS && o + n as u16 <= GPE0_EN + GPE0_LEN => {
                for (i, &b) in data.iter().enumerate() {
                    let at = usize::from(o - GPE0_STS) + i;
                    if at < usize::from(GPE0_LEN) {
                        self.gpe0[at] &= !b; // status: write one to clear
                    } else {
                        self.gpe0[at] = b;
                    }
                }
                self.update_sci();
            }
            _ => tracing::trace!(offset, len = data.len(), "PM block write ignored"),
        }
    }
}
