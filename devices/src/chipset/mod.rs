//! The q35 chipset registers UEFI firmware (OVMF) programs before it boots an OS: the MCH host
//! bridge at 00:00.0 (PCIEXBAR, PAM, SMRAM), the ICH9 LPC bridge at 00:1f.0 (PMBASE, ACPI
//! enable, PIRQ routing) and the ACPI power-management block the LPC decodes (PM1 event and
//! control with the fixed-feature power button and the SCI, the 3.579545 MHz PM timer, GPE0,
//! SMI enable), plus the ISA debug console at 0x402
//! that OVMF writes its log to.
//!
//! cvmm keeps the decode fixed where OVMF puts it (ECAM at [`Q35_ECAM_BASE`], the PM block at
//! [`Q35_PM_BASE`]); a guest programming other bases is logged and keeps the fixed decode.

pub mod debugcon;
mod lpc;
mod mch;
mod pm;
#[cfg(test)]
mod tests;

pub use debugcon::{DebugConsole, DEBUGCON_MAGIC, DEBUGCON_PORT};
pub use lpc::{Ich9Lpc, LPC_DEVICE_ID, LPC_SLOT};
pub use mch::{Q35Mch, Q35_ECAM_BASE, Q35_ECAM_SIZE};
pub use pm::{
    AcpiPm, PmDecode, PM_BLOCK_LEN, PM_TIMER_HZ, PWRBTN_EN, PWRBTN_STS, Q35_PM_BASE,
    Q35_S5_SLP_TYP, Q35_SCI_IRQ,
};
