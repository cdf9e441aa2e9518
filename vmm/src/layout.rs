//! The guest physical address map of a cvmm VM (x86-64, direct boot).

/// Start of the GDT the VMM builds for the boot vCPU.
pub const BOOT_GDT: u64 = 0x500;
/// Start of the (empty) boot IDT.
pub const BOOT_IDT: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO: u64 = 0x6000;
/// PVH memory map, right after the start info.
pub const PVH_MEMMAP: u64 = 0x6040;
/// The Linux zero page (`boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// Top of the boot stack.
pub const BOOT_STACK: u64 = 0x8ff0;
/// PML4 of the boot page tables; the PDPT and four page directories follow.
pub const PML4: u64 = 0x9000;
/// The kernel command line.
pub const CMDLINE: u64 = 0x20000;
/// Largest command line accepted (Linux's x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX: usize = 2048;
/// Start of the EBDA; RAM below it is usable, the range up to 1 MiB is reserved.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the ACPI tables live (inside the BIOS area the guest scans for the RSDP).
pub const ACPI_START: u64 = 0xe0000;
/// End of the ACPI area.
pub const ACPI_END: u64 = 0x100000;
/// Where the kernel is loaded (1 MiB).
pub const HIMEM_START: u64 = 0x100000;
/// Start of the 32-bit MMIO hole (PCI, IOAPIC, LAPIC); RAM above it moves to 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// The first address above 4 GiB.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// IOAPIC base.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC base.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM's TSS (three pages below the identity-map page, under 4 GiB).
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// Base of the ACPI sleep/reset I/O ports.
pub const ACPI_PM_PORT: u16 = 0x600;
/// The event register of the direct-boot Generic Event Device (after the sleep/reset ports).
pub const GED_PORT: u16 = 0x604;
/// The GSI of the Generic Event Device's interrupt (edge, active high; ISA IRQ 5 is unused).
pub const GED_IRQ: u32 = 5;
/// The pvpanic I/O port.
pub const PVPANIC_PORT: u16 = 0x505;
/// COM1.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's IRQ line.
pub const COM1_IRQ: u32 = 4;
/// Start of the 32-bit PCI BAR window.
pub const PCI_MMIO_START: u64 = 0xc000_0000;
/// Size of the 32-bit PCI BAR window.
pub const PCI_MMIO_SIZE: u64 = 0x2000_0000;
/// PCI Express ECAM (MMCONFIG) base, bus 0 only.
pub const PCI_ECAM_BASE: u64 = 0xe000_0000;
/// ECAM size for one bus.
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
/// PCI configuration mechanism #1 ports.
pub const PCI_CONFIG_IO_PORT: u16 = 0xcf8;
