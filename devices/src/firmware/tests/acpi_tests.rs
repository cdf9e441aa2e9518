//! The loader script run the way OVMF's AcpiPlatformDxe runs it (QemuFwCfgAcpi.c): parse the
//! raw 128-byte entries, allocate and download files, relocate pointers, compute checksums,
//! then install every table an ADD_POINTER reaches (skipping RSDT/XSDT).

use super::*;
use crate::firmware::acpi::*;
use crate::firmware::loader::{decode_script, encode_script, LoaderCommand, Zone};

fn name_at(e: &[u8], at: usize) -> Result<String, String> {
    let raw = &e[at..at + 56];
    if raw[55] != 0 {
        return Err("malformed file name".into());
    }
    let end = raw.iter().position(|&b| b == 0).unwrap();
    Ok(String::from_utf8(raw[..end].to_vec()).unwrap())
}

fn u32_at(e: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(e[at..at + 4].try_into().unwrap())
}

struct Blob {
    base: u64,
    size: usize,
}

/// What OVMF ends up with: installed tables (signature, guest address) in install order.
struct Installed {
    tables: Vec<(String, u64)>,
    blobs: Vec<(String, Blob)>,
}

fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// Runs `etc/table-loader`, allocating downward from 0xC0000 as AllocateMaxAddress would.
fn run_loader(fw: &Firmware) -> Result<Installed, String> {
    let (key, size) = fw.find_file(TABLE_LOADER_FILE).ok_or("no loader")?;
    if size % 128 != 0 {
        return Err("loader size".into());
    }
    let script = fw.read_item(key, size as usize);
    let mem = &fw.mem;
    let mut blobs: Vec<(String, Blob)> = Vec::new();
    let mut top = 0xc_0000u64;
    let find = |blobs: &Vec<(String, Blob)>, n: &str| {
        blobs
            .iter()
            .position(|(b, _)| b == n)
            .ok_or(format!("unknown blob {n}"))
    };
    for e in script.chunks_exact(128) {
        match u32_at(e, 0) {
            1 => {
                let file = name_at(e, 4)?;
                let align = u32_at(e, 60);
                if align > 4096 || !align.is_power_of_two() {
                    return Err(format!("alignment {align}"));
                }
                if find(&blobs, &file).is_ok() {
                    return Err("duplicate".into());
                }
                let (_, fsize) = fw.find_file(&file).ok_or(format!("no file {file}"))?;
                let pages = u64::from(fsize).div_ceil(4096);
                top -= pages * 4096;
                let data = fw.dma_read_file(&file, top);
                assert_eq!(data.len(), fsize as usize);
                blobs.push((
                    file,
                    Blob {
                        base: top,
                        size: fsize as usize,
                    },
                ));
            }
            2 => {
                let ptr = &blobs[find(&blobs, &name_at(e, 4)?)?].1;
                let pointee = &blobs[find(&blobs, &name_at(e, 60)?)?].1;
                let (off, psize) = (u32_at(e, 116) as usize, e[120] as usize);
                if ![1, 2, 4, 8].contains(&psize) || ptr.size < psize || ptr.size - psize < off {
                    return Err("pointer location".into());
                }
                let at = GuestAddress(ptr.base + off as u64);
                let mut v = [0u8; 8];
                mem.read_slice(&mut v[..psize], at).unwrap();
                let mut value = u64::from_le_bytes(v);
                if value >= pointee.size as u64 {
                    return Err(format!("pointer value {value:#x} outside pointee"));
                }
                value += pointee.base;
                if psize < 8 && value >> (psize * 8) != 0 {
                    return Err("unrepresentable".into());
                }
                mem.write_slice(&value.to_le_bytes()[..psize], at).unwrap();
            }
            3 => {
                let b = &blobs[find(&blobs, &name_at(e, 4)?)?].1;
                let (res, start, len) = (
                    u32_at(e, 60) as usize,
                    u32_at(e, 64) as usize,
                    u32_at(e, 68) as usize,
                );
                if b.size <= res || b.size < len || b.size - len < start {
                    return Err("checksum range".into());
                }
                let mut bytes = vec![0u8; len];
                mem.read_slice(&mut bytes, GuestAddress(b.base + start as u64))
                    .unwrap();
                let ck = 0u8.wrapping_sub(sum(&bytes));
                mem.write_slice(&[ck], GuestAddress(b.base + res as u64))
                    .unwrap();
            }
            _ => {}
        }
    }
    // Second pass: find the tables the pointers reach.
    let mut tables = Vec::new();
    for e in script.chunks_exact(128).filter(|e| u32_at(e, 0) == 2) {
        let ptr = &blobs[find(&blobs, &name_at(e, 4)?)?].1;
        let pointee = &blobs[find(&blobs, &name_at(e, 60)?)?].1;
        let mut v = [0u8; 8];
        mem.read_slice(
            &mut v[..e[120] as usize],
            GuestAddress(ptr.base + u64::from(u32_at(e, 116))),
        )
        .unwrap();
        let addr = u64::from_le_bytes(v);
        let remaining = (pointee.base + pointee.size as u64 - addr) as usize;
        let mut hdr = [0u8; 8];
        mem.read_slice(&mut hdr, GuestAddress(addr)).unwrap();
        let sig = String::from_utf8_lossy(&hdr[..4]).into_owned();
        let len = u32_at(&hdr, 4) as usize;
        if sig == "FACS" && (64..=remaining).contains(&len) {
            tables.push((sig, addr));
            continue;
        }
        if (36..=remaining).contains(&len) {
            let mut t = vec![0u8; len];
            mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
            if sum(&t) == 0 {
                if sig != "XSDT" && sig != "RSDT" {
                    tables.push((sig, addr));
                }
                continue;
            }
        }
        return Err(format!("pointer at {addr:#x} reaches no table"));
    }
    Ok(Installed { tables, blobs })
}

fn sdt(sig: &[u8; 4], len: usize, fill: u8) -> Vec<u8> {
    let mut t = vec![fill; len];
    t[0..4].copy_from_slice(sig);
    t[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    t[8] = 1;
    t[9] = 0x5a; // stale checksum: the loader must replace it
    t
}

fn tables(fadt_len: usize, facs: bool) -> AcpiTables {
    let mut facs_t = vec![0u8; 64];
    facs_t[0..4].copy_from_slice(b"FACS");
    facs_t[4..8].copy_from_slice(&64u32.to_le_bytes());
    AcpiTables {
        facs: facs.then_some(facs_t),
        dsdt: sdt(b"DSDT", 77, 0x11),
        fadt: sdt(b"FACP", fadt_len, 0),
        others: vec![sdt(b"APIC", 90, 0x22), sdt(b"HPET", 56, 0x33)],
        oem_id: *b"CVMM  ",
        oem_table_id: *b"CVMMVM  ",
    }
}

fn mem_read(fw: &Firmware, addr: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    fw.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
    b
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn firmware_with(t: &AcpiTables) -> Firmware {
    let mut dev = FwCfg::new();
    t.build().unwrap().install(&mut dev).unwrap();
    Firmware::with_dma(dev)
}

#[test]
fn ovmf_style_loader_links_and_checksums_every_table() {
    let fw = firmware_with(&tables(276, true));
    let out = run_loader(&fw).unwrap();
    let sigs: Vec<_> = out.tables.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(sigs, ["FACS", "DSDT", "FACP", "APIC", "HPET"]);
    let addr = |s: &str| out.tables.iter().find(|t| t.0 == s).unwrap().1;

    // RSDP: both checksums hold, it points at a valid XSDT listing FACP, APIC, HPET.
    let rsdp_base = out
        .blobs
        .iter()
        .find(|b| b.0 == ACPI_RSDP_FILE)
        .unwrap()
        .1
        .base;
    let rsdp = mem_read(&fw, rsdp_base, 36);
    assert_eq!(&rsdp[0..8], b"RSD PTR ");
    assert_eq!(rsdp[15], 2);
    assert_eq!(sum(&rsdp[..20]), 0);
    assert_eq!(sum(&rsdp), 0);
    let xsdt_at = u64_at(&rsdp, 24);
    let hdr = mem_read(&fw, xsdt_at, 8);
    let xsdt = mem_read(&fw, xsdt_at, u32_at(&hdr, 4) as usize);
    assert_eq!(&xsdt[0..4], b"XSDT");
    assert_eq!(sum(&xsdt), 0);
    let entries: Vec<u64> = (36..xsdt.len())
        .step_by(8)
        .map(|o| u64_at(&xsdt, o))
        .collect();
    assert_eq!(entries, [addr("FACP"), addr("APIC"), addr("HPET")]);

    // FADT: FIRMWARE_CTRL → FACS, X_DSDT → DSDT, the 32-bit DSDT and X_FIRMWARE_CTRL zero.
    let fadt = mem_read(&fw, addr("FACP"), 276);
    assert_eq!(u64::from(u32_at(&fadt, 36)), addr("FACS"));
    assert_eq!(u32_at(&fadt, 40), 0);
    assert_eq!(u64_at(&fadt, 132), 0);
    assert_eq!(u64_at(&fadt, 140), addr("DSDT"));
    assert_eq!(addr("FACS") % 64, 0);
    // Table bodies arrive unchanged.
    assert_eq!(mem_read(&fw, addr("APIC") + 36, 54), vec![0x22; 54]);
}

#[test]
fn short_fadt_gets_the_32_bit_dsdt_link_and_no_facs() {
    let fw = firmware_with(&tables(116, false));
    let out = run_loader(&fw).unwrap();
    let sigs: Vec<_> = out.tables.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(sigs, ["DSDT", "FACP", "APIC", "HPET"]);
    let fadt = mem_read(&fw, out.tables[1].1, 116);
    assert_eq!(u64::from(u32_at(&fadt, 40)), out.tables[0].1);
    assert_eq!(u32_at(&fadt, 36), 0);
}

#[test]
fn loader_entries_have_the_qemu_layout() {
    let cmds = vec![
        LoaderCommand::Allocate {
            file: "etc/acpi/rsdp".into(),
            align: 16,
            zone: Zone::FSeg,
        },
        LoaderCommand::AddPointer {
            pointer: "a".into(),
            pointee: "b".into(),
            offset: 0x1234,
            size: 8,
        },
        LoaderCommand::AddChecksum {
            file: "c".into(),
            result: 9,
            start: 0x40,
            length: 0x100,
        },
    ];
    let s = encode_script(&cmds);
    assert_eq!(s.len(), 3 * 128);
    assert_eq!(u32_at(&s, 0), 1);
    assert_eq!(&s[4..17], b"etc/acpi/rsdp");
    assert_eq!(u32_at(&s, 60), 16);
    assert_eq!(s[64], 2);
    assert_eq!(u32_at(&s, 128), 2);
    assert_eq!((s[132], s[188]), (b'a', b'b'));
    assert_eq!(u32_at(&s, 128 + 116), 0x1234);
    assert_eq!(s[128 + 120], 8);
    assert_eq!(u32_at(&s, 256), 3);
    assert_eq!(
        (
            u32_at(&s, 256 + 60),
            u32_at(&s, 256 + 64),
            u32_at(&s, 256 + 68)
        ),
        (9, 0x40, 0x100)
    );
    assert_eq!(decode_script(&s), Some(cmds));
    assert_eq!(decode_script(&s[..100]), None);
    let mut bad = s.clone();
    bad[4..60].fill(b'x'); // unterminated name
    assert_eq!(decode_script(&bad), None);
}

#[test]
fn bad_tables_are_rejected() {
    let mut t = tables(276, true);
    t.fadt[0] = b'X';
    assert!(matches!(t.build(), Err(AcpiError::WrongSignature { .. })));
    let mut t = tables(276, true);
    t.dsdt.pop();
    assert!(matches!(t.build(), Err(AcpiError::LengthMismatch { .. })));
    let mut t = tables(276, true);
    t.others.push(b"SSDT".to_vec());
    assert!(matches!(t.build(), Err(AcpiError::TooShort { .. })));
    let mut t = tables(40, true);
    t.fadt = sdt(b"FACP", 40, 0);
    assert!(matches!(t.build(), Err(AcpiError::TooShort { .. })));
}
