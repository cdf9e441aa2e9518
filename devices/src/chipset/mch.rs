//! The q35 MCH host bridge (8086:29c0) at 00:00.0, as OVMF's platform code expects it: the
//! device id picks OVMF's Q35 path, PCIEXBAR (0x60) is where it enables ECAM, PAM0..6
//! (0x90..0x96) open the BIOS shadow as RAM, SMRAM/ESMRAMC (0x9d/0x9e) hold SMM settings
//! (no SMM here) and EXT_TSEG_MBYTES (0x50) reads 0: no extended TSEG.

use crate::pci::{PciBarInfo, PciConfiguration, PciDevice, PciHeader, VENDOR_INTEL};

/// Where cvmm decodes ECAM for firmware boot (OVMF's PcdPciExpressBaseAddress).
pub const Q35_ECAM_BASE: u64 = 0xb000_0000;
/// ECAM size: 256 buses.
pub const Q35_ECAM_SIZE: u64 = 0x1000_0000;

const PCIEXBAR: u16 = 0x60;
const PCIEXBAR_ENABLE: u64 = 1;
const PCIEXBAR_LENGTH_MASK: u64 = 0x6;
const PCIEXBAR_BASE_MASK: u64 = 0xf_fc00_0000;
const PAM0: u16 = 0x90;
const PAM_COUNT: u16 = 7;
const SMRAM: u16 = 0x9d;
const ESMRAMC: u16 = 0x9e;

/// The MCH host bridge.
pub struct Q35Mch {
    config: PciConfiguration,
    warned: bool,
}

impl Default for Q35Mch {
    fn default() -> Self {
        Self::new()
    }
}

impl Q35Mch {
    /// A host bridge with ECAM disabled and PAM closed, as after reset.
    pub fn new() -> Self {
        let mut config = PciConfiguration::new(&PciHeader {
            vendor_id: VENDOR_INTEL,
            device_id: crate::pci::HOST_BRIDGE_DEVICE_ID,
            revision: 0,
            class_code: 0x06_00_00,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1100,
        });
        // PCIEXBAR: enable, length and base bits 26..35 (256 MiB alignment at length 0).
        let mask = PCIEXBAR_ENABLE | PCIEXBAR_LENGTH_MASK | PCIEXBAR_BASE_MASK;
        config.set_writable(PCIEXBAR, &mask.to_le_bytes());
        for i in 0..PAM_COUNT {
            // PAM0 has only the high nibble (0xF0000 segment); the others two segments.
            config.set_writable(PAM0 + i, &[if i == 0 { 0x30 } else { 0x33 }]);
        }
        config.set_writable(SMRAM, &[0x78]);
        config.set_writable(ESMRAMC, &[0x07]);
        config.set_raw(SMRAM, &[0x02]); // C_BASE_SEG: compatible SMRAM at 0xA0000
        config.set_raw(ESMRAMC, &[0x38]); // TSEG size and cache bits as after reset
        Self {
            config,
            warned: false,
        }
    }

    /// The PCIEXBAR register as the guest last wrote it.
    pub fn pciexbar(&self) -> u64 {
        u64::from(self.config.read_u32(PCIEXBAR))
            | u64::from(self.config.read_u32(PCIEXBAR + 4)) << 32
    }

    /// The ECAM base the guest enabled, if any.
    pub fn ecam_enabled_at(&self) -> Option<u64> {
        let v = self.pciexbar();
        (v & PCIEXBAR_ENABLE != 0).then_some(v & PCIEXBAR_BASE_MASK)
    }

    fn check_ecam(&mut self) {
        let v = self.pciexbar();
        let length = (v & PCIEXBAR_LENGTH_MASK) >> 1;
        let moved = self
            .ecam_enabled_at()
            .is_some_and(|b| b != Q35_ECAM_BASE || length != 0);
        if moved && !self.warned {
            self.warned = true;
            tracing::warn!(
                pciexbar = format!("{v:#x}"),
                "the guest moved ECAM; cvmm keeps decoding 256 buses at {Q35_ECAM_BASE:#x}"
            );
        }
    }
}

impl PciDevice for Q35Mch {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data)
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
        if PciConfiguration::touched(offset, data.len(), PCIEXBAR, 8) {
            self.check_ecam();
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
