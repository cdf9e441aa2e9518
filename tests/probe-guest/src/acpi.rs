//! Firmware tables: ACPI (RSDP → XSDT/RSDT → MADT, FADT, DSDT `_S5_`) and, without ACPI, the
//! Intel MultiProcessor table. Parsers work on byte slices; lookups read guest memory via `phys`.

use crate::phys::{self, checksum_ok, u16_at, u32_at, u64_at, u8_at};

const HDR_LEN: usize = 36;
const TABLE_MAX: u32 = 1 << 20;

/// Where the CPU count came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuSource {
    /// ACPI MADT.
    Madt,
    /// MP table.
    MpTable,
    /// Nothing found.
    None,
}

impl CpuSource {
    /// Marker spelling.
    pub fn name(self) -> &'static [u8] {
        match self {
            CpuSource::Madt => b"madt",
            CpuSource::MpTable => b"mptable",
            CpuSource::None => b"none",
        }
    }
}

/// Firmware pointers found in the BIOS areas (EBDA's first KiB, then 0xE0000..0x100000).
#[derive(Clone, Copy, Default)]
struct BiosScan {
    rsdp: Option<u64>,
    mp_cfg: Option<u64>,
}

/// One pass over the BIOS areas on 16-byte boundaries, for both the RSDP and the MP floating
/// pointer (every guest instruction is costly on PVM, so the areas are walked once).
fn scan_bios() -> BiosScan {
    let ebda = phys::bytes(0x40e, 2)
        .and_then(|b| u16_at(b, 0))
        .map(|seg| u64::from(seg) << 4)
        .unwrap_or(0);
    let mut found = BiosScan::default();
    for (base, len) in [(ebda, 1024usize), (0xe0000, 0x20000)] {
        let Some(area) = phys::bytes(base, len) else {
            continue;
        };
        for (i, c) in area.chunks_exact(16).enumerate() {
            let addr = base + (i as u64) * 16;
            match c.get(..4) {
                Some(b"RSD ") if found.rsdp.is_none() => found.rsdp = rsdp_at(addr).map(|_| addr),
                Some(b"_MP_") if found.mp_cfg.is_none() => found.mp_cfg = mp_fp_at(addr),
                _ => continue,
            }
            if found.rsdp.is_some() && found.mp_cfg.is_some() {
                return found;
            }
        }
    }
    found
}

/// Where the firmware tables are: the RSDP, and the MP table if the BIOS areas were scanned.
pub struct Firmware {
    /// RSDP address.
    pub rsdp: Option<u64>,
    scan: Option<BiosScan>,
}

/// Finds the RSDP: the loader's hint if valid, else by scanning the BIOS areas.
pub fn locate(hint: u64) -> Firmware {
    if hint != 0 && rsdp_at(hint).is_some() {
        return Firmware {
            rsdp: Some(hint),
            scan: None,
        };
    }
    let scan = scan_bios();
    Firmware {
        rsdp: scan.rsdp,
        scan: Some(scan),
    }
}

/// A valid RSDP at `addr` (signature, v1 checksum, v2 extended checksum).
fn rsdp_at(addr: u64) -> Option<&'static [u8]> {
    let b = phys::bytes(addr, 20)?;
    if b.get(..8)? != b"RSD PTR " || !checksum_ok(b) {
        return None;
    }
    if u8_at(b, 15)? >= 2 {
        let len = u32_at(phys::bytes(addr, 24)?, 20)?;
        if !(36..=1024).contains(&len) {
            return None;
        }
        let full = phys::bytes(addr, len as usize)?;
        return checksum_ok(full).then_some(full);
    }
    Some(b)
}

/// The checksummed ACPI table at `addr`, if its signature is `sig`.
fn table_at(addr: u64, sig: &[u8; 4]) -> Option<&'static [u8]> {
    let hdr = phys::bytes(addr, HDR_LEN)?;
    if hdr.get(..4)? != sig {
        return None;
    }
    let len = u32_at(hdr, 4)?;
    if !(HDR_LEN as u32..=TABLE_MAX).contains(&len) {
        return None;
    }
    let t = phys::bytes(addr, len as usize)?;
    checksum_ok(t).then_some(t)
}

/// The ACPI table `sig` reachable from the RSDP at `rsdp` (XSDT preferred, else RSDT).
pub fn find_table(rsdp: u64, sig: &[u8; 4]) -> Option<&'static [u8]> {
    let r = rsdp_at(rsdp)?;
    let xsdt = if u8_at(r, 15)? >= 2 {
        u64_at(r, 24).unwrap_or(0)
    } else {
        0
    };
    let (root, width) = match xsdt {
        0 => (table_at(u64::from(u32_at(r, 16)?), b"RSDT")?, 4),
        x => (table_at(x, b"XSDT")?, 8),
    };
    root.get(HDR_LEN..)?.chunks_exact(width).find_map(|e| {
        let addr = if width == 8 {
            u64_at(e, 0)?
        } else {
            u64::from(u32_at(e, 0)?)
        };
        table_at(addr, sig)
    })
}

/// The DSDT named by a FADT (X_DSDT if present, else DSDT).
pub fn dsdt(fadt: &[u8]) -> Option<&'static [u8]> {
    let addr = match u64_at(fadt, 140) {
        Some(x) if x != 0 => x,
        _ => u64::from(u32_at(fadt, 40)?),
    };
    table_at(addr, b"DSDT")
}

/// Enabled (or online-capable) CPUs in a MADT: local APIC (type 0) and x2APIC (type 9) entries.
pub fn madt_cpus(madt: &[u8]) -> u32 {
    let mut n = 0;
    let mut off = HDR_LEN + 8;
    while let (Some(ty), Some(len)) = (u8_at(madt, off), u8_at(madt, off + 1)) {
        if len < 2 {
            break;
        }
        let flags = match ty {
            0 => u32_at(madt, off + 4),
            9 => u32_at(madt, off + 8),
            _ => None,
        };
        if flags.is_some_and(|f| f & 0b11 != 0) {
            n += 1;
        }
        off += usize::from(len);
    }
    n
}

/// The address of the first I/O APIC (type 1 entry) in a MADT.
pub fn madt_ioapic(madt: &[u8]) -> Option<u64> {
    let mut off = HDR_LEN + 8;
    while let (Some(ty), Some(len)) = (u8_at(madt, off), u8_at(madt, off + 1)) {
        if len < 2 {
            break;
        }
        if ty == 1 {
            return u32_at(madt, off + 4).map(u64::from);
        }
        off += usize::from(len);
    }
    None
}

/// MADT flags (bit 0: PCAT_COMPAT, the 8259 pair exists).
pub fn madt_flags(madt: &[u8]) -> Option<u32> {
    u32_at(madt, HDR_LEN + 4)
}

/// SLP_TYPa of the `_S5_` package in AML bytes: `_S5_`, PackageOp (0x12), PkgLength,
/// NumElements, then the first element as ZeroOp, OneOp or BytePrefix + byte.
pub fn s5_slp_typ(aml: &[u8]) -> Option<u8> {
    let at = aml.windows(4).position(|w| w == b"_S5_")?;
    let mut p = at + 4;
    if u8_at(aml, p)? != 0x12 {
        return None;
    }
    let lead = u8_at(aml, p + 1)?;
    p += 2 + usize::from(lead >> 6); // PackageOp + PkgLength lead byte + follow bytes
    p += 1; // NumElements
    match u8_at(aml, p)? {
        0x00 => Some(0),
        0x01 => Some(1),
        0x0a => u8_at(aml, p + 1),
        _ => None,
    }
}

/// A Generic Address Structure: address space, access size, address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gas {
    /// 0 = system memory, 1 = system I/O.
    pub space: u8,
    /// Register width in bits.
    pub bit_width: u8,
    /// Access size: 1 byte, 2 word, 3 dword, 4 qword (0 = from bit width).
    pub access: u8,
    /// Register address.
    pub addr: u64,
}

/// The GAS at `off` in `t`, if present and non-zero.
pub fn gas_at(t: &[u8], off: usize) -> Option<Gas> {
    let g = Gas {
        space: u8_at(t, off)?,
        bit_width: u8_at(t, off + 1)?,
        access: u8_at(t, off + 3)?,
        addr: u64_at(t, off + 4)?,
    };
    (g.addr != 0).then_some(g)
}

/// FADT SLEEP_CONTROL_REG (hardware-reduced ACPI).
pub fn sleep_control(fadt: &[u8]) -> Option<Gas> {
    gas_at(fadt, 244)
}

/// FADT RESET_REG and RESET_VALUE.
pub fn reset_reg(fadt: &[u8]) -> Option<(Gas, u8)> {
    Some((gas_at(fadt, 116)?, u8_at(fadt, 128)?))
}

/// FADT PM1a_CNT_BLK port (0 if absent).
pub fn pm1a_cnt(fadt: &[u8]) -> u32 {
    u32_at(fadt, 64).unwrap_or(0)
}

/// A valid MP floating pointer at `addr`: returns the configuration table address.
fn mp_fp_at(addr: u64) -> Option<u64> {
    let fp = phys::bytes(addr, 16)?;
    if fp.get(..4)? != b"_MP_" {
        return None;
    }
    let len = usize::from(u8_at(fp, 8)?).max(1) * 16;
    if !checksum_ok(phys::bytes(addr, len)?) {
        return None;
    }
    Some(u64::from(u32_at(fp, 4)?))
}

/// Enabled processor entries of an MP configuration table ("PCMP").
pub fn mp_cpus(cfg: &[u8]) -> Option<u32> {
    if cfg.get(..4)? != b"PCMP" || !checksum_ok(cfg) {
        return None;
    }
    let count = u16_at(cfg, 34)?;
    let mut off = 44;
    let mut n = 0;
    for _ in 0..count {
        let len = match u8_at(cfg, off)? {
            0 => {
                n += u32::from(u8_at(cfg, off + 3)? & 1);
                20
            }
            1..=4 => 8,
            _ => break,
        };
        off += len;
    }
    Some(n)
}

/// Counts CPUs: MADT through the RSDP, else the MP table.
pub fn count_cpus(fw: &Firmware) -> (u32, CpuSource) {
    if let Some(madt) = fw.rsdp.and_then(|r| find_table(r, b"APIC")) {
        return (madt_cpus(madt), CpuSource::Madt);
    }
    let mp = fw.scan.unwrap_or_else(scan_bios).mp_cfg.and_then(|cfg| {
        let len = u16_at(phys::bytes(cfg, 8)?, 4)?;
        mp_cpus(phys::bytes(cfg, usize::from(len))?)
    });
    match mp {
        Some(n) => (n, CpuSource::MpTable),
        None => (0, CpuSource::None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_checksum(mut t: Vec<u8>, at: usize) -> Vec<u8> {
        let sum = t.iter().fold(0u8, |a, &x| a.wrapping_add(x));
        t[at] = t[at].wrapping_sub(sum);
        t
    }

    fn madt(entries: &[&[u8]]) -> Vec<u8> {
        let mut t = b"APIC".to_vec();
        t.resize(HDR_LEN + 8, 0);
        for e in entries {
            t.extend_from_slice(e);
        }
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        t
    }

    #[test]
    fn madt_counts_enabled_and_online_capable_cpus() {
        let lapic = |id: u8, flags: u32| {
            let mut e = vec![0u8, 8, id, id];
            e.extend_from_slice(&flags.to_le_bytes());
            e
        };
        let x2apic = |flags: u32| {
            let mut e = vec![9u8, 16, 0, 0, 7, 0, 0, 0];
            e.extend_from_slice(&flags.to_le_bytes());
            e.extend_from_slice(&[0; 4]);
            e
        };
        let ioapic = [1u8, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0];
        let t = madt(&[
            &lapic(0, 1),
            &lapic(1, 0),
            &lapic(2, 2),
            &ioapic,
            &x2apic(1),
            &x2apic(0),
        ]);
        assert_eq!(madt_cpus(&t), 3);
    }

    #[test]
    fn madt_gives_the_ioapic_address_and_flags() {
        let ioapic = [1u8, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0];
        let mut t = madt(&[&[0, 8, 0, 0, 1, 0, 0, 0], &ioapic]);
        assert_eq!(madt_ioapic(&t), Some(0xfec0_0000));
        assert_eq!(madt_flags(&t), Some(0));
        t[HDR_LEN + 4] = 1;
        assert_eq!(madt_flags(&t), Some(1));
        assert_eq!(madt_ioapic(&madt(&[&[0, 8, 0, 0, 1, 0, 0, 0]])), None);
    }

    #[test]
    fn madt_stops_on_zero_length_entry() {
        let t = madt(&[&[0, 0, 0, 0, 1, 0, 0, 0], &[0, 8, 0, 0, 1, 0, 0, 0]]);
        assert_eq!(madt_cpus(&t), 0);
    }

    #[test]
    fn s5_package_forms() {
        assert_eq!(s5_slp_typ(b"\x08_S5_\x12\x06\x04\x00\x00\x00\x00"), Some(0));
        assert_eq!(
            s5_slp_typ(b"xx\x08_S5_\x12\x08\x04\x0a\x05\x0a\x05\x00\x00"),
            Some(5)
        );
        assert_eq!(s5_slp_typ(b"_S5_\x12\x40\x01\x02\x01"), Some(1)); // two-byte PkgLength
        assert_eq!(s5_slp_typ(b"_S5_\x12\x06"), None); // truncated
        assert_eq!(s5_slp_typ(b"_S4_\x12\x06\x04\x00"), None);
    }

    #[test]
    fn gas_and_fadt_fields() {
        let mut f = vec![0u8; 276];
        f[64..68].copy_from_slice(&0x604u32.to_le_bytes());
        f[244] = 0;
        f[245] = 8;
        f[247] = 1;
        f[248..256].copy_from_slice(&0xfea0_0100u64.to_le_bytes());
        assert_eq!(pm1a_cnt(&f), 0x604);
        let g = sleep_control(&f).unwrap();
        assert_eq!(
            (g.space, g.bit_width, g.access, g.addr),
            (0, 8, 1, 0xfea0_0100)
        );
        assert_eq!(reset_reg(&f), None);
        assert_eq!(sleep_control(&f[..250]), None);
    }

    #[test]
    fn mp_table_counts_enabled_processors() {
        let mut t = b"PCMP".to_vec();
        t.resize(44, 0);
        let proc_entry = |flags: u8| {
            let mut e = vec![0u8, 0, 0x14, flags];
            e.resize(20, 0);
            e
        };
        t.extend(proc_entry(3));
        t.extend(proc_entry(0));
        t.extend([1u8, 0, b'I', b'S', b'A', 0, 0, 0]);
        t.extend(proc_entry(1));
        t[34..36].copy_from_slice(&4u16.to_le_bytes());
        let len = t.len() as u16;
        t[4..6].copy_from_slice(&len.to_le_bytes());
        let t = with_checksum(t, 7);
        assert_eq!(mp_cpus(&t), Some(2));
        let mut bad = t.clone();
        bad[7] ^= 1;
        assert_eq!(mp_cpus(&bad), None);
    }
}
