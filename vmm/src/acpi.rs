//! ACPI tables, built with the acpi_tables crate for the two platforms cvmm offers:
//!
//! - direct boot: a hardware-reduced FADT whose sleep and reset registers are cvmm's power
//!   ports, written with RSDP and XSDT where guests scan for the RSDP (0xE0000);
//! - firmware boot (q35): a full FADT on the ICH9 PM block and the 0xCF9 reset register, a
//!   FACS, and the 64-bit PCI window, handed to the firmware through fw_cfg with the
//!   table-loader script ([`firmware_tables`]).
//!
//! Both get a DSDT (`_S5_`, COM1, the RTC, pvpanic, PCI0 with its windows, the ECAM
//! reservation), a MADT listing every vCPU and the IOAPIC, and an MCFG.
//!
//! The power button: q35 has the fixed-feature button of the ICH9 PM block (FADT flag
//! PWR_BUTTON clear, PWRBTN_STS/EN in PM1, the SCI on IRQ 9); the hardware-reduced platform,
//! which has no fixed features, has a PNP0C0C button device notified by a Generic Event
//! Device (ACPI0013) whose `_EVT` reads the GED's event register on its edge-triggered GSI.

use crate::error::{Result, VmmError};
use crate::layout::*;
use crate::memory::GuestMem;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::{aml, Aml};
use devices::chipset::{Q35_ECAM_BASE, Q35_ECAM_SIZE, Q35_PM_BASE, Q35_S5_SLP_TYP, Q35_SCI_IRQ};
use devices::legacy::{ACPI_RESET_VALUE, ACPI_S5_SLP_TYP, GED_EVENT_POWER_BUTTON};
use vm_memory::{Bytes, GuestAddress};

const OEM_ID: [u8; 6] = *b"CVMM  ";
const OEM_TABLE: [u8; 8] = *b"CVMMVM  ";

/// Set: the power button is a control-method device (the GED's PNP0C0C); clear: the fixed
/// feature in PM1.
const FADT_FLAG_PWR_BUTTON: u32 = 1 << 4;
const FADT_FLAG_RESET_REG_SUP: u32 = 1 << 10;
const FADT_FLAG_HEADLESS: u32 = 1 << 12;
const FADT_FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;

/// The 32-bit PCI window of firmware boot (OVMF on q35: above ECAM, below 0xFC000000).
pub const Q35_MMIO32_START: u64 = Q35_ECAM_BASE + Q35_ECAM_SIZE;
/// End of that window.
pub const Q35_MMIO32_END: u64 = 0xfc00_0000;

/// What differs between the platforms' tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiPlatform {
    /// ECAM base and size (256 buses = 256 MiB).
    pub ecam: (u64, u64),
    /// The 32-bit PCI memory window: start and size.
    pub mmio32: (u64, u64),
    /// The 64-bit PCI memory window, if any: start and size.
    pub mmio64: Option<(u64, u64)>,
    /// Firmware boot: ICH9 PM block, FACS, 8259s present. Direct boot: hardware-reduced.
    pub q35: bool,
    /// Split irqchip: cvmm's IOAPIC and no 8259s or PIT, so the MADT neither claims
    /// PC-AT compatibility nor overrides ISA IRQ 0 for a PIT.
    pub split_irqchip: bool,
}

impl AcpiPlatform {
    /// Direct boot.
    pub fn direct() -> Self {
        Self {
            ecam: (PCI_ECAM_BASE, PCI_ECAM_SIZE),
            mmio32: (PCI_MMIO_START, PCI_MMIO_SIZE),
            mmio64: None,
            q35: false,
            split_irqchip: false,
        }
    }

    /// Firmware boot on q35 with a 64-bit window.
    pub fn q35(mmio64: Option<(u64, u64)>) -> Self {
        Self {
            ecam: (Q35_ECAM_BASE, Q35_ECAM_SIZE),
            mmio32: (Q35_MMIO32_START, Q35_MMIO32_END - Q35_MMIO32_START),
            mmio64,
            q35: true,
            split_irqchip: false,
        }
    }

    /// The same platform with the split irqchip (or not).
    pub fn with_split_irqchip(self, split: bool) -> Self {
        Self {
            split_irqchip: split,
            ..self
        }
    }

    /// Whether the 8259 pair exists (MADT PCAT_COMPAT).
    fn pcat_compat(&self) -> bool {
        self.q35 && !self.split_irqchip
    }

    fn s5_slp_typ(&self) -> u8 {
        if self.q35 {
            Q35_S5_SLP_TYP as u8
        } else {
            ACPI_S5_SLP_TYP
        }
    }
}

/// A Generic Address Structure for a system I/O register of `bits` bits.
fn gas_io_bits(port: u16, bits: u8, access: u8) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O
    g[1] = bits;
    g[3] = access;
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

/// A Generic Address Structure for a byte-wide system I/O register.
fn gas_io(port: u16) -> [u8; 12] {
    gas_io_bits(port, 8, 1)
}

fn fadt(dsdt: u64) -> Sdt {
    let mut t = Sdt::new(*b"FACP", 276, 6, OEM_ID, OEM_TABLE, 1);
    t.write_u16(46, 9); // SCI_INT (unused: hardware reduced)
    t.write_u16(109, IAPC_VGA_NOT_PRESENT);
    t.write_u32(
        112,
        FADT_FLAG_HW_REDUCED_ACPI
            | FADT_FLAG_PWR_BUTTON
            | FADT_FLAG_RESET_REG_SUP
            | FADT_FLAG_HEADLESS,
    );
    t.write_bytes(116, &gas_io(ACPI_PM_PORT + 2)); // RESET_REG
    t.write_u8(128, ACPI_RESET_VALUE);
    t.write_u8(131, 5); // FADT minor version (6.5)
    t.write_u64(140, dsdt); // X_DSDT
    t.write_bytes(244, &gas_io(ACPI_PM_PORT)); // SLEEP_CONTROL_REG
    t.write_bytes(256, &gas_io(ACPI_PM_PORT + 1)); // SLEEP_STATUS_REG
    t.write_bytes(268, b"CVMMKVM\0"); // hypervisor vendor identity
    t.update_checksum();
    t
}

const FADT_FLAG_WBINVD: u32 = 1 << 0;
const FADT_FLAG_PROC_C1: u32 = 1 << 2;
const FADT_FLAG_SLP_BUTTON: u32 = 1 << 5;
const FADT_FLAG_RTC_S4: u32 = 1 << 7;
const FADT_FLAG_PLATFORM_CLOCK: u32 = 1 << 15;
/// What the q35 FADT tells the guest to write to 0xCF9 (SYS_RST | RST_CPU | FULL_RST).
const Q35_RESET_VALUE: u8 = 0x0e;

/// The q35 FADT: PM1a event/control, PM timer and GPE0 in the ICH9 block at PMBASE, SCI 9,
/// ACPI always enabled (no SMI_CMD), reset through 0xCF9, the fixed-feature power button
/// (PWR_BUTTON clear) and no sleep button (SLP_BUTTON set: none as a fixed feature, and no
/// device either). The FACS and DSDT links are filled in by the firmware (table-loader).
fn fadt_q35() -> Sdt {
    let pm = Q35_PM_BASE;
    let mut t = Sdt::new(*b"FACP", 276, 6, OEM_ID, OEM_TABLE, 1);
    t.write_u16(46, Q35_SCI_IRQ as u16); // SCI_INT
    t.write_u32(56, u32::from(pm)); // PM1a_EVT_BLK
    t.write_u32(64, u32::from(pm + 4)); // PM1a_CNT_BLK
    t.write_u32(76, u32::from(pm + 8)); // PM_TMR_BLK
    t.write_u32(80, u32::from(pm + 0x20)); // GPE0_BLK
    t.write_u8(88, 4); // PM1_EVT_LEN
    t.write_u8(89, 2); // PM1_CNT_LEN
    t.write_u8(91, 4); // PM_TMR_LEN
    t.write_u8(92, 16); // GPE0_BLK_LEN
    t.write_u16(96, 0xfff); // P_LVL2_LAT: no C2
    t.write_u16(98, 0xfff); // P_LVL3_LAT: no C3
    t.write_u8(108, 0x32); // CENTURY: the RTC's century register
    t.write_u16(109, IAPC_VGA_NOT_PRESENT);
    t.write_u32(
        112,
        FADT_FLAG_WBINVD
            | FADT_FLAG_PROC_C1
            | FADT_FLAG_SLP_BUTTON
            | FADT_FLAG_RTC_S4
            | FADT_FLAG_RESET_REG_SUP
            | FADT_FLAG_PLATFORM_CLOCK,
    );
    t.write_bytes(116, &gas_io(0xcf9)); // RESET_REG
    t.write_u8(128, Q35_RESET_VALUE);
    t.write_u8(131, 5); // FADT minor version (6.5)
    t.write_bytes(148, &gas_io_bits(pm, 32, 0)); // X_PM1a_EVT_BLK
    t.write_bytes(172, &gas_io_bits(pm + 4, 16, 0)); // X_PM1a_CNT_BLK
    t.write_bytes(208, &gas_io_bits(pm + 8, 32, 0)); // X_PM_TMR_BLK
    t.write_bytes(220, &gas_io_bits(pm + 0x20, 128, 0)); // X_GPE0_BLK
    t.write_bytes(268, b"CVMMKVM\0"); // hypervisor vendor identity
    t.update_checksum();
    t
}

/// A FACS (no waking vector, no global lock use), required with a full FADT.
fn facs() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[0..4].copy_from_slice(b"FACS");
    f[4..8].copy_from_slice(&64u32.to_le_bytes());
    f[32] = 2; // version
    f
}

fn dsdt(p: &AcpiPlatform) -> Sdt {
    let mut body = Vec::new();
    let slp_typ = p.s5_slp_typ();
    let s5 = aml::Package::new(vec![&slp_typ, &slp_typ]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut body);

    let com1_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::EISAName::new("PNP0501");
    let com1_name_hid = aml::Name::new("_HID".into(), &com1_hid);
    let com1_name_uid = aml::Name::new("_UID".into(), &aml::ONE);
    let com1_name_crs = aml::Name::new("_CRS".into(), &com1_crs);
    let com1 = aml::Device::new(
        "COM1".into(),
        vec![&com1_name_hid, &com1_name_uid, &com1_name_crs],
    );

    // The CMOS RTC, so Linux's rtc_cmos binds through PNP (no alarm interrupt is wired).
    let rtc_hid = aml::EISAName::new("PNP0B00");
    let rtc_io = aml::IO::new(0x70, 0x70, 1, 2);
    let rtc_crs = aml::ResourceTemplate::new(vec![&rtc_io]);
    let rtc_names = [
        aml::Name::new("_HID".into(), &rtc_hid),
        aml::Name::new("_CRS".into(), &rtc_crs),
    ];
    let rtc = aml::Device::new(
        "RTC_".into(),
        rtc_names.iter().map(|n| n as &dyn Aml).collect(),
    );

    let pvp_hid: &'static str = "QEMU0001";
    let pvp_io = aml::IO::new(PVPANIC_PORT, PVPANIC_PORT, 1, 1);
    let pvp_crs = aml::ResourceTemplate::new(vec![&pvp_io]);
    let pvp_name_hid = aml::Name::new("_HID".into(), &pvp_hid);
    let pvp_name_crs = aml::Name::new("_CRS".into(), &pvp_crs);
    let pvpanic = aml::Device::new("PEVT".into(), vec![&pvp_name_hid, &pvp_name_crs]);

    let pci_hid = aml::EISAName::new("PNP0A08");
    let pci_cid = aml::EISAName::new("PNP0A03");
    let last_bus = ((p.ecam.1 >> 20).clamp(1, 256) - 1) as u16;
    let pci_bus = aml::AddressSpace::new_bus_number(0u16, last_bus);
    let pci_cfg_io = aml::IO::new(PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_PORT, 1, 8);
    let pci_io_lo = aml::AddressSpace::new_io(0u16, PCI_CONFIG_IO_PORT - 1, None);
    let pci_io_hi = aml::AddressSpace::new_io(0xd00u16, 0xffffu16, None);
    let pci_mem = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        p.mmio32.0 as u32,
        (p.mmio32.0 + p.mmio32.1 - 1) as u32,
        None,
    );
    let pci_mem64 = p.mmio64.map(|(start, size)| {
        aml::AddressSpace::new_memory(
            aml::AddressSpaceCacheable::Cacheable,
            true,
            start,
            start + size - 1,
            None,
        )
    });
    let mut pci_res: Vec<&dyn Aml> = vec![&pci_bus, &pci_cfg_io, &pci_io_lo, &pci_io_hi, &pci_mem];
    if let Some(m) = &pci_mem64 {
        pci_res.push(m);
    }
    let pci_crs = aml::ResourceTemplate::new(pci_res);
    let pci_names = [
        aml::Name::new("_HID".into(), &pci_hid),
        aml::Name::new("_CID".into(), &pci_cid),
        aml::Name::new("_ADR".into(), &aml::ZERO),
        aml::Name::new("_SEG".into(), &aml::ZERO),
        aml::Name::new("_UID".into(), &aml::ZERO),
        aml::Name::new("_BBN".into(), &aml::ZERO),
        aml::Name::new("_CRS".into(), &pci_crs),
    ];
    let pci0 = aml::Device::new(
        "PCI0".into(),
        pci_names.iter().map(|n| n as &dyn Aml).collect(),
    );
    // The ECAM window, reserved as a motherboard resource so Linux trusts the MCFG.
    let mb_hid = aml::EISAName::new("PNP0C02");
    let mb_mem = aml::Memory32Fixed::new(false, p.ecam.0 as u32, p.ecam.1 as u32);
    let mb_crs = aml::ResourceTemplate::new(vec![&mb_mem]);
    let mb_names = [
        aml::Name::new("_HID".into(), &mb_hid),
        aml::Name::new("_UID".into(), &aml::ONE),
        aml::Name::new("_CRS".into(), &mb_crs),
    ];
    let mbrd = aml::Device::new(
        "MBRD".into(),
        mb_names.iter().map(|n| n as &dyn Aml).collect(),
    );

    let mut sb: Vec<&dyn Aml> = vec![&com1, &rtc, &pvpanic, &pci0, &mbrd];
    let button = (!p.q35).then(ged_power_button);
    if let Some((ged, pwrb)) = &button {
        sb.push(ged);
        sb.push(pwrb);
    }
    aml::Scope::new("\\_SB_".into(), sb).to_aml_bytes(&mut body);

    let mut t = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    t.append_slice(&body);
    t.update_checksum();
    t
}

/// AML already encoded, placed as it is.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

/// The hardware-reduced power button: `\_SB_.PWRB` (PNP0C0C) and the Generic Event Device
/// `\_SB_.GED_` (ACPI0013) on [`GED_IRQ`], whose `_EVT` reads the event register at
/// [`GED_PORT`] (the read clears it) and notifies the button (0x80: pressed) when its bit is
/// set. Both as opaque AML, ready for the `\_SB_` scope.
fn ged_power_button() -> (RawAml, RawAml) {
    let mut ged = Vec::new();
    let ged_hid: &'static str = "ACPI0013";
    let ged_irq = aml::Interrupt::new(true, true, false, false, GED_IRQ);
    let ged_crs = aml::ResourceTemplate::new(vec![&ged_irq]);
    let ged_region = aml::OpRegion::new(
        "GDST".into(),
        aml::OpRegionSpace::SystemIO,
        &GED_PORT,
        &(devices::legacy::GED_PORT_LEN as u8),
    );
    let ged_field = aml::Field::new(
        "GDST".into(),
        aml::FieldAccessType::Byte,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::Preserve,
        vec![aml::FieldEntry::Named(*b"GDAT", 8)],
    );
    let events = aml::Local(0);
    let gdat = aml::Path::new("GDAT");
    let read = aml::Store::new(&events, &gdat);
    let button_bit = aml::And::new(&aml::ZERO, &events, &GED_EVENT_POWER_BUTTON);
    let pwrb_path = aml::Path::new("\\_SB_.PWRB");
    let notify = aml::Notify::new(&pwrb_path, &0x80u8);
    let on_button = aml::If::new(&button_bit, vec![&notify]);
    let evt = aml::Method::new("_EVT".into(), 1, true, vec![&read, &on_button]);
    let ged_names = [
        aml::Name::new("_HID".into(), &ged_hid),
        aml::Name::new("_UID".into(), &aml::ZERO),
        aml::Name::new("_CRS".into(), &ged_crs),
    ];
    let mut ged_children: Vec<&dyn Aml> = ged_names.iter().map(|n| n as &dyn Aml).collect();
    ged_children.extend([&ged_region as &dyn Aml, &ged_field, &evt]);
    aml::Device::new("GED_".into(), ged_children).to_aml_bytes(&mut ged);

    let mut pwrb = Vec::new();
    let pwrb_hid = aml::EISAName::new("PNP0C0C");
    let pwrb_names = [
        aml::Name::new("_HID".into(), &pwrb_hid),
        aml::Name::new("_UID".into(), &aml::ZERO),
    ];
    aml::Device::new(
        "PWRB".into(),
        pwrb_names.iter().map(|n| n as &dyn Aml).collect(),
    )
    .to_aml_bytes(&mut pwrb);
    (RawAml(ged), RawAml(pwrb))
}

fn madt(vcpus: u32, p: &AcpiPlatform) -> Sdt {
    let mut t = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE, 1);
    t.write_u32(36, LAPIC_ADDR);
    t.write_u32(40, u32::from(p.pcat_compat())); // PCAT_COMPAT: the 8259s exist
    for id in 0..vcpus {
        if id < 255 {
            // Processor Local APIC: type 0, length 8, UID, APIC id, flags (enabled).
            t.append_slice(&[0, 8, id as u8, id as u8, 1, 0, 0, 0]);
        } else {
            // Processor Local x2APIC: type 9, length 16.
            let mut e = [0u8; 16];
            e[0] = 9;
            e[1] = 16;
            e[4..8].copy_from_slice(&id.to_le_bytes());
            e[8..12].copy_from_slice(&1u32.to_le_bytes());
            e[12..16].copy_from_slice(&id.to_le_bytes());
            t.append_slice(&e);
        }
    }
    // IOAPIC: type 1, length 12, id, reserved, address, GSI base 0.
    let mut io = [0u8; 12];
    io[0] = 1;
    io[1] = 12;
    io[2] = 0; // an id no vCPU uses would be cleaner, but Linux renumbers it anyway
    io[4..8].copy_from_slice(&IOAPIC_ADDR.to_le_bytes());
    t.append_slice(&io);
    if !p.split_irqchip {
        // Interrupt source override: ISA IRQ 0 (PIT) -> GSI 2, as KVM's IOAPIC wires it.
        t.append_slice(&[2, 10, 0, 0, 2, 0, 0, 0, 0, 0]);
    }
    if p.q35 {
        // The SCI (IRQ 9): level-triggered, active high, as on ICH9.
        t.append_slice(&[2, 10, 0, 9, 9, 0, 0, 0, 0x0d, 0]);
    }
    // Local APIC NMI on LINT1 for all processors.
    t.append_slice(&[4, 6, 0xff, 0, 0, 1]);
    t.update_checksum();
    t
}

fn mcfg(p: &AcpiPlatform) -> Sdt {
    let mut t = Sdt::new(*b"MCFG", 44, 1, OEM_ID, OEM_TABLE, 1);
    let mut e = [0u8; 16];
    e[0..8].copy_from_slice(&p.ecam.0.to_le_bytes());
    // segment 0, buses 0..=last
    e[11] = ((p.ecam.1 >> 20).clamp(1, 256) - 1) as u8;
    t.append_slice(&e);
    t.update_checksum();
    t
}

/// Builds the tables for `vcpus` vCPUs, writes them at [`ACPI_START`] and returns the RSDP
/// address.
pub fn write_tables(mem: &GuestMem, vcpus: u32) -> Result<u64> {
    write_tables_for(mem, vcpus, &AcpiPlatform::direct())
}

/// [`write_tables`] for a direct-boot platform `p` (e.g. with the split irqchip).
pub fn write_tables_for(mem: &GuestMem, vcpus: u32, p: &AcpiPlatform) -> Result<u64> {
    let rsdp_addr = ACPI_START;
    let mut next = rsdp_addr + 64; // RSDP is 36 bytes; keep 16-byte alignment
    let mut place = |len: usize| {
        let at = next;
        next = (next + len as u64 + 15) & !15;
        at
    };
    let dsdt = dsdt(p);
    let dsdt_addr = place(dsdt.len());
    let fadt = fadt(dsdt_addr);
    let fadt_addr = place(fadt.len());
    let madt = madt(vcpus, p);
    let madt_addr = place(madt.len());
    let mcfg = mcfg(p);
    let mcfg_addr = place(mcfg.len());
    let mut xsdt = Sdt::new(*b"XSDT", 36, 1, OEM_ID, OEM_TABLE, 1);
    for a in [fadt_addr, madt_addr, mcfg_addr] {
        xsdt.append(a);
    }
    xsdt.update_checksum();
    let xsdt_addr = place(xsdt.len());
    if next > ACPI_END {
        return Err(VmmError::Input(format!(
            "ACPI tables for {vcpus} vCPUs ({} bytes) do not fit below 1 MiB",
            next - ACPI_START
        )));
    }
    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    let mut rsdp_bytes = Vec::new();
    rsdp.to_aml_bytes(&mut rsdp_bytes);
    let w = |addr: u64, bytes: &[u8]| {
        mem.write_slice(bytes, GuestAddress(addr))
            .map_err(|e| VmmError::Memory(format!("ACPI tables: {e}")))
    };
    w(rsdp_addr, &rsdp_bytes)?;
    w(dsdt_addr, dsdt.as_slice())?;
    w(fadt_addr, fadt.as_slice())?;
    w(madt_addr, madt.as_slice())?;
    w(mcfg_addr, mcfg.as_slice())?;
    w(xsdt_addr, xsdt.as_slice())?;
    Ok(rsdp_addr)
}

/// The tables of a firmware boot, for fw_cfg (`etc/acpi/tables` and the loader script).
pub fn firmware_tables(vcpus: u32, p: &AcpiPlatform) -> devices::firmware::AcpiTables {
    devices::firmware::AcpiTables {
        facs: Some(facs()),
        dsdt: dsdt(p).as_slice().to_vec(),
        fadt: fadt_q35().as_slice().to_vec(),
        others: vec![
            madt(vcpus, p).as_slice().to_vec(),
            mcfg(p).as_slice().to_vec(),
        ],
        oem_id: OEM_ID,
        oem_table_id: OEM_TABLE,
    }
}

/// The tables a VM would get, by signature, for `cvmm run --dump-acpi`: DSDT, FACP, APIC,
/// MCFG (and FACS for firmware boot), each a complete table with a valid checksum.
pub fn tables_for_dump(vcpus: u32, p: &AcpiPlatform) -> Vec<(&'static str, Vec<u8>)> {
    let dsdt = dsdt(p);
    let fadt = if p.q35 { fadt_q35() } else { fadt(0) };
    let mut out = vec![
        ("DSDT", dsdt.as_slice().to_vec()),
        ("FACP", fadt.as_slice().to_vec()),
        ("APIC", madt(vcpus, p).as_slice().to_vec()),
        ("MCFG", mcfg(p).as_slice().to_vec()),
    ];
    if p.q35 {
        out.push(("FACS", facs()));
    }
    out
}

/// The tables a VM built from `spec` gets (`--dump-acpi`): firmware boot takes the q35
/// platform with the 64-bit window sized from the host's physical address width; the split
/// irqchip (`--irqchip split`, and every TDX guest) changes the MADT.
pub fn tables_for_spec(spec: &crate::spec::VmSpec) -> Vec<(&'static str, Vec<u8>)> {
    let p = if spec.firmware.is_some() {
        let max_ext = std::arch::x86_64::__cpuid(0x8000_0000).eax;
        let bits = if max_ext >= 0x8000_0008 {
            (std::arch::x86_64::__cpuid(0x8000_0008).eax & 0xff) as u8
        } else {
            36
        };
        AcpiPlatform::q35(crate::firmware::mmio64_window(spec.memory_mib, bits))
    } else {
        AcpiPlatform::direct()
    };
    let split =
        spec.irqchip == crate::spec::IrqChip::Split || spec.tee == crate::spec::TeeMode::Tdx;
    tables_for_dump(spec.vcpus, &p.with_split_irqchip(split))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn table_at(mem: &GuestMem, addr: u64) -> Vec<u8> {
        let len: u32 = mem.read_obj(GuestAddress(addr + 4)).unwrap();
        let mut t = vec![0u8; len as usize];
        mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
        t
    }

    #[test]
    fn tables_are_linked_and_checksummed() {
        let mem = crate::memory::create(64).unwrap();
        let rsdp = write_tables(&mem, 4).unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, GuestAddress(rsdp)).unwrap();
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0);
        assert_eq!(sum(&r), 0);
        let xsdt_addr = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let xsdt = table_at(&mem, xsdt_addr);
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(sum(&xsdt), 0);
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(entries.len(), 3);
        let mcfg = table_at(&mem, entries[2]);
        assert_eq!(&mcfg[..4], b"MCFG");
        assert_eq!(sum(&mcfg), 0);
        assert_eq!(
            u64::from_le_bytes(mcfg[44..52].try_into().unwrap()),
            PCI_ECAM_BASE
        );
        let fadt = table_at(&mem, entries[0]);
        assert_eq!(&fadt[..4], b"FACP");
        assert_eq!(sum(&fadt), 0);
        assert_ne!(
            u32::from_le_bytes(fadt[112..116].try_into().unwrap()) & (1 << 20),
            0
        );
        assert_eq!(&fadt[244..246], &[1, 8]);
        assert_eq!(
            u16::from_le_bytes(fadt[248..250].try_into().unwrap()),
            ACPI_PM_PORT
        );
        let dsdt = table_at(&mem, u64::from_le_bytes(fadt[140..148].try_into().unwrap()));
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(sum(&dsdt), 0);
        let s5 = dsdt.windows(4).position(|w| w == b"_S5_").unwrap();
        assert_eq!(dsdt[s5 + 4], 0x12, "_S5_ is a package");
        assert!(dsdt.windows(8).any(|w| w == b"QEMU0001"));
        assert!(dsdt.windows(4).any(|w| w == b"PCI0"));
        let madt = table_at(&mem, entries[1]);
        assert_eq!(&madt[..4], b"APIC");
        assert_eq!(sum(&madt), 0);
        let lapics = count_lapics(&madt);
        assert_eq!(lapics, 4);
    }

    fn count_lapics(madt: &[u8]) -> usize {
        let mut n = 0;
        let mut i = 44;
        while i + 2 <= madt.len() {
            let (ty, len) = (madt[i], madt[i + 1] as usize);
            if (ty == 0 && madt[i + 4] & 1 == 1) || ty == 9 {
                n += 1;
            }
            i += len.max(2);
        }
        n
    }

    /// MADT entries after the 44-byte header: (type, bytes).
    fn madt_entries(madt: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let mut i = 44;
        while i + 2 <= madt.len() {
            let len = usize::from(madt[i + 1]).max(2);
            out.push((madt[i], madt[i..(i + len).min(madt.len())].to_vec()));
            i += len;
        }
        out
    }

    #[test]
    fn split_irqchip_madt_claims_no_8259s_and_no_pit_override() {
        for p in [AcpiPlatform::direct(), AcpiPlatform::q35(None)] {
            let kernel = madt(2, &p);
            let split = madt(2, &p.clone().with_split_irqchip(true));
            assert_eq!(sum(split.as_slice()), 0);
            let flags = |t: &Sdt| u32::from_le_bytes(t.as_slice()[40..44].try_into().unwrap());
            assert_eq!(flags(&kernel), u32::from(p.q35), "q35 {}", p.q35);
            assert_eq!(flags(&split), 0, "PCAT_COMPAT clear (q35 {})", p.q35);
            let isos = |t: &Sdt| -> Vec<(u8, u32)> {
                madt_entries(t.as_slice())
                    .into_iter()
                    .filter(|(ty, _)| *ty == 2)
                    .map(|(_, e)| (e[3], u32::from_le_bytes(e[4..8].try_into().unwrap())))
                    .collect()
            };
            assert!(
                isos(&kernel).contains(&(0, 2)),
                "PIT override with KVM's PIT"
            );
            assert!(!isos(&split).iter().any(|&(irq, _)| irq == 0), "no PIT");
            // The IOAPIC is still there, at the same address.
            let ioapic = |t: &Sdt| {
                madt_entries(t.as_slice())
                    .into_iter()
                    .find(|(ty, _)| *ty == 1)
                    .map(|(_, e)| u32::from_le_bytes(e[4..8].try_into().unwrap()))
            };
            assert_eq!(ioapic(&split), Some(IOAPIC_ADDR));
            assert_eq!(ioapic(&kernel), ioapic(&split));
        }
    }

    #[test]
    fn the_power_button_is_fixed_on_q35_and_a_ged_device_when_hardware_reduced() {
        let flags = |t: &Sdt| u32::from_le_bytes(t.as_slice()[112..116].try_into().unwrap());
        assert_eq!(flags(&fadt_q35()) & FADT_FLAG_PWR_BUTTON, 0, "fixed button");
        assert_eq!(
            u16::from_le_bytes([fadt_q35().as_slice()[46], fadt_q35().as_slice()[47]]),
            9
        );
        assert_ne!(
            flags(&fadt(0)) & FADT_FLAG_PWR_BUTTON,
            0,
            "control-method button"
        );
        let has = |t: &Sdt, what: &[u8]| t.as_slice().windows(what.len()).any(|w| w == what);
        let direct = dsdt(&AcpiPlatform::direct());
        let q35 = dsdt(&AcpiPlatform::q35(None));
        assert_eq!(sum(direct.as_slice()), 0);
        for what in [&b"ACPI0013"[..], b"GED_", b"PWRB", b"_EVT", b"GDAT"] {
            assert!(
                has(&direct, what),
                "direct DSDT lacks {}",
                String::from_utf8_lossy(what)
            );
            assert!(
                !has(&q35, what),
                "q35 DSDT has {}",
                String::from_utf8_lossy(what)
            );
        }
        // PNP0C0C as a compressed EISA id (0x0C0CD041, little-endian), after a DWordPrefix.
        assert!(has(&direct, &[0x0c, 0x41, 0xd0, 0x0c, 0x0c]));
        // The GED's interrupt: an Extended Interrupt descriptor, consumer, edge, GSI 5.
        let mut irq = vec![0x89, 6, 0, 0b11, 1];
        irq.extend_from_slice(&GED_IRQ.to_le_bytes());
        assert!(has(&direct, &irq));
    }

    #[test]
    fn many_vcpus_use_x2apic_entries() {
        let m = madt(300, &AcpiPlatform::direct());
        assert_eq!(count_lapics(m.as_slice()), 300);
        assert_eq!(sum(m.as_slice()), 0);
    }
}
