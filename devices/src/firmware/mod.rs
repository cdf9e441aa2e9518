//! What UEFI firmware (OVMF) needs from the device model to boot like under QEMU q35: the
//! fw_cfg device (with `-kernel/-initrd/-append` items and the named files), the ACPI table
//! loader script, the `etc/e820` map and the CFI flash that holds OVMF_CODE and OVMF_VARS.

pub mod acpi;
pub mod files;
pub mod fw_cfg;
pub mod linux;
pub mod loader;
pub mod pflash;

#[cfg(test)]
mod tests;

pub use acpi::{AcpiError, AcpiFiles, AcpiTables};
pub use files::E820Entry;
pub use fw_cfg::{DmaMemory, FwCfg, FwCfgError, FW_CFG_PORT_BASE, FW_CFG_PORT_LEN};
pub use linux::{LinuxBoot, LinuxBootError, LinuxBootLayout};
pub use loader::{LoaderCommand, Zone};
pub use pflash::{FlashArray, Pflash, PflashError, PFLASH_SECTOR_SIZE};
