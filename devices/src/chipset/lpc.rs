//! The ICH9 LPC bridge (8086:2918) at 00:1f.0: PMBASE (0x40) and ACPI_CNTL (0x44) switch the
//! ACPI power-management block on, PIRQA..H_ROUT (0x60..0x63, 0x68..0x6b) hold the INTx
//! routing firmware writes, GPIOBASE/GC (0x48/0x4c) and RCBA (0xf0) are plain registers.

use super::pm::PmDecode;
use crate::pci::{PciBarInfo, PciConfiguration, PciDevice, PciHeader, VENDOR_INTEL};
use std::sync::Arc;

/// PCI device id of the ICH9 LPC bridge.
pub const LPC_DEVICE_ID: u16 = 0x2918;
/// The slot firmware looks for it in (device 0x1f, function 0).
pub const LPC_SLOT: u8 = 0x1f;

const PMBASE: u16 = 0x40;
const ACPI_CNTL: u16 = 0x44;
const ACPI_EN: u8 = 1 << 7;
const GPIOBASE: u16 = 0x48;
const GC: u16 = 0x4c;
const PIRQ_A: u16 = 0x60;
const PIRQ_E: u16 = 0x68;
const PIRQ_DISABLED: u8 = 0x80;
const RCBA: u16 = 0xf0;

/// The LPC bridge; it tells the PM block where (and whether) to decode.
pub struct Ich9Lpc {
    config: PciConfiguration,
    decode: Arc<PmDecode>,
}

impl Ich9Lpc {
    /// A bridge whose PMBASE/ACPI_CNTL settings drive `decode`.
    pub fn new(decode: Arc<PmDecode>) -> Self {
        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id: VENDOR_INTEL,
            device_id: LPC_DEVICE_ID,
            revision: 2,
            class_code: 0x06_01_00,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
        });
        // PMBASE: bit 0 reads 1 (I/O space), bits 7..15 hold a 128-byte aligned port.
        config.set_raw(PMBASE, &1u32.to_le_bytes());
        config.set_writable(PMBASE, &0xff80u32.to_le_bytes());
        // ACPI_CNTL: ACPI_EN and the SCI IRQ select.
        config.set_writable(ACPI_CNTL, &[ACPI_EN | 0x07]);
        config.set_raw(GPIOBASE, &1u32.to_le_bytes());
        config.set_writable(GPIOBASE, &0xffc0u32.to_le_bytes());
        config.set_writable(GC, &[0x10]);
        for base in [PIRQ_A, PIRQ_E] {
            config.set_raw(base, &[PIRQ_DISABLED; 4]);
            config.set_writable(base, &[0x8f; 4]);
        }
        config.set_writable(RCBA, &0xffff_c001u32.to_le_bytes());
        decode.set(None);
        Self { config, decode }
    }

    /// The PM block's I/O base when firmware has enabled it.
    pub fn pm_base(&self) -> Option<u16> {
        let mut b = [0u8; 1];
        self.config.read(ACPI_CNTL, &mut b);
        (b[0] & ACPI_EN != 0).then(|| (self.config.read_u32(PMBASE) & 0xff80) as u16)
    }
}

impl PciDevice for Ich9Lpc {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data)
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
        if PciConfiguration::touched(offset, data.len(), PMBASE, 4)
            || PciConfiguration::touched(offset, data.len(), ACPI_CNTL, 1)
        {
            self.decode.set(self.pm_base());
        }
    }

    fn bars(&self) -> Vec<PciBarInfo> {
        Vec::new()
    }

    fn read_bar(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff)
    }

    fn write_bar(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}
