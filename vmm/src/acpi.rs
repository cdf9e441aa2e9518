//! ACPI tables for direct boot: RSDP, XSDT, a hardware-reduced FADT whose sleep and reset
//! registers are cvmm's power ports, a DSDT (`_S5_`, COM1, pvpanic) and a MADT listing every
//! vCPU and the IOAPIC. Built with the acpi_tables crate and written where guests scan for the
//! RSDP (0xE0000).

use crate::error::{Result, VmmError};
use crate::layout::*;
use crate::memory::GuestMem;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::{aml, Aml};
use devices::legacy::{ACPI_RESET_VALUE, ACPI_S5_SLP_TYP};
use vm_memory::{Bytes, GuestAddress};

const OEM_ID: [u8; 6] = *b"CVMM  ";
const OEM_TABLE: [u8; 8] = *b"CVMMVM  ";

const FADT_FLAG_RESET_REG_SUP: u32 = 1 << 10;
const FADT_FLAG_HEADLESS: u32 = 1 << 12;
const FADT_FLAG_HW_REDUCED_ACPI: u32 = 1 << 20;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;

/// A Generic Address Structure for a byte-wide system I/O register.
fn gas_io(port: u16) -> [u8; 12] {
    let mut g = [0u8; 12];
    g[0] = 1; // system I/O
    g[1] = 8; // bit width
    g[3] = 1; // byte access
    g[4..12].copy_from_slice(&u64::from(port).to_le_bytes());
    g
}

fn fadt(dsdt: u64) -> Sdt {
    let mut t = Sdt::new(*b"FACP", 276, 6, OEM_ID, OEM_TABLE, 1);
    t.write_u16(46, 9); // SCI_INT (unused: hardware reduced)
    t.write_u16(109, IAPC_VGA_NOT_PRESENT);
    t.write_u32(
        112,
        FADT_FLAG_HW_REDUCED_ACPI | FADT_FLAG_RESET_REG_SUP | FADT_FLAG_HEADLESS,
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

fn dsdt() -> Sdt {
    let mut body = Vec::new();
    let s5 = aml::Package::new(vec![&ACPI_S5_SLP_TYP, &ACPI_S5_SLP_TYP]);
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
    let pci_bus = aml::AddressSpace::new_bus_number(0u16, 0u16);
    let pci_cfg_io = aml::IO::new(PCI_CONFIG_IO_PORT, PCI_CONFIG_IO_PORT, 1, 8);
    let pci_io_lo = aml::AddressSpace::new_io(0u16, PCI_CONFIG_IO_PORT - 1, None);
    let pci_io_hi = aml::AddressSpace::new_io(0xd00u16, 0xffffu16, None);
    let pci_mem = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        PCI_MMIO_START as u32,
        (PCI_MMIO_START + PCI_MMIO_SIZE - 1) as u32,
        None,
    );
    let pci_crs = aml::ResourceTemplate::new(vec![
        &pci_bus,
        &pci_cfg_io,
        &pci_io_lo,
        &pci_io_hi,
        &pci_mem,
    ]);
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
    let mb_mem = aml::Memory32Fixed::new(false, PCI_ECAM_BASE as u32, PCI_ECAM_SIZE as u32);
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

    aml::Scope::new("\\_SB_".into(), vec![&com1, &rtc, &pvpanic, &pci0, &mbrd])
        .to_aml_bytes(&mut body);

    let mut t = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    t.append_slice(&body);
    t.update_checksum();
    t
}

fn madt(vcpus: u32) -> Sdt {
    let mut t = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE, 1);
    t.write_u32(36, LAPIC_ADDR);
    t.write_u32(40, 0); // no dual 8259 set-up (hardware-reduced)
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
    // Interrupt source override: ISA IRQ 0 (PIT) -> GSI 2, as KVM's IOAPIC wires it.
    t.append_slice(&[2, 10, 0, 0, 2, 0, 0, 0, 0, 0]);
    // Local APIC NMI on LINT1 for all processors.
    t.append_slice(&[4, 6, 0xff, 0, 0, 1]);
    t.update_checksum();
    t
}

fn mcfg() -> Sdt {
    let mut t = Sdt::new(*b"MCFG", 44, 1, OEM_ID, OEM_TABLE, 1);
    let mut e = [0u8; 16];
    e[0..8].copy_from_slice(&PCI_ECAM_BASE.to_le_bytes());
    // segment 0, buses 0..=0
    t.append_slice(&e);
    t.update_checksum();
    t
}

/// Builds the tables for `vcpus` vCPUs, writes them at [`ACPI_START`] and returns the RSDP
/// address.
pub fn write_tables(mem: &GuestMem, vcpus: u32) -> Result<u64> {
    let rsdp_addr = ACPI_START;
    let mut next = rsdp_addr + 64; // RSDP is 36 bytes; keep 16-byte alignment
    let mut place = |len: usize| {
        let at = next;
        next = (next + len as u64 + 15) & !15;
        at
    };
    let dsdt = dsdt();
    let dsdt_addr = place(dsdt.len());
    let fadt = fadt(dsdt_addr);
    let fadt_addr = place(fadt.len());
    let madt = madt(vcpus);
    let madt_addr = place(madt.len());
    let mcfg = mcfg();
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

    #[test]
    fn many_vcpus_use_x2apic_entries() {
        let m = madt(300);
        assert_eq!(count_lapics(m.as_slice()), 300);
        assert_eq!(sum(m.as_slice()), 0);
    }
}
