//! Tests of the OVMF footer-table, SEV metadata and hashes-table code.

use super::*;
use crate::testutil::{debian_ovmf, SynthOvmf};

#[test]
fn guid_display_round_trips_the_text_form() {
    assert_eq!(
        FOOTER_TABLE_GUID.to_string(),
        "96b582de-1fb2-45f7-baea-a366c55a082d"
    );
    // On-disk order: first three groups little-endian.
    assert_eq!(&SEV_METADATA_GUID.0[..4], &[0x66, 0x65, 0x88, 0xdc]);
}

#[test]
fn synthetic_image_parses_every_entry() {
    let img = SynthOvmf::amdsev().build();
    let o = Ovmf::parse("synth", &img).unwrap();
    assert_eq!(o.gpa(), 0x1_0000_0000 - 0x10000);
    assert_eq!(o.sev_es_reset_eip().unwrap(), 0x80b004);
    assert_eq!(o.sev_hashes_table().unwrap(), Some((0x80f400, 0x400)));
    let kinds: Vec<_> = o.sev_sections().iter().map(|s| s.kind).collect();
    assert_eq!(
        kinds,
        [
            SevSectionKind::SnpSecMem,
            SevSectionKind::SnpSecMem,
            SevSectionKind::SnpSecrets,
            SevSectionKind::Cpuid,
            SevSectionKind::SnpKernelHashes,
            SevSectionKind::SnpSecMem
        ]
    );
    assert_eq!(o.sev_sections()[4].gpa, 0x80f000);
}

#[test]
fn debian_ovmf_matches_spec_section_9_1() {
    let Some(img) = debian_ovmf("debian_ovmf_matches_spec_section_9_1") else {
        return;
    };
    let o = Ovmf::parse(crate::testutil::DEBIAN_OVMF, &img).unwrap();
    let got: Vec<_> = o
        .sev_sections()
        .iter()
        .map(|s| (s.kind, s.gpa, s.size))
        .collect();
    use SevSectionKind::*;
    assert_eq!(
        got,
        [
            (SnpSecMem, 0x800000, 0x9000),
            (SnpSecMem, 0x80a000, 0x3000),
            (SnpSecrets, 0x80d000, 0x1000),
            (Cpuid, 0x80e000, 0x1000),
            (SnpSecMem, 0x80f000, 0x11000),
        ]
    );
    assert_eq!(o.sev_es_reset_eip().unwrap(), 0x80b004);
    assert_eq!(o.sev_hashes_table().unwrap(), None);
    assert!(!o.has_section(SnpKernelHashes));
    assert!(o.entry(&TDX_METADATA_GUID).is_some());
}

#[test]
fn image_without_footer_has_no_entries() {
    let img = vec![0u8; 0x2000];
    let o = Ovmf::parse("blank", &img).unwrap();
    assert!(o.sev_sections().is_empty());
    let e = o.sev_es_reset_eip().unwrap_err().to_string();
    assert!(e.contains("blank") && e.contains("reset block"), "{e}");
}

fn expect_err(img: &[u8], needle: &str) {
    let e = Ovmf::parse("bad.fd", img).unwrap_err().to_string();
    assert!(e.contains("bad.fd") && e.contains(needle), "{e}");
}

#[test]
fn bad_lengths_are_rejected() {
    expect_err(&[], "length 0x0");
    expect_err(&[0u8; 100], "length 0x64");
}

#[test]
fn bad_footer_sizes_are_rejected() {
    let good = SynthOvmf::amdsev().build();
    let footer = good.len() - 50;
    let mut img = good.clone();
    img[footer..footer + 2].copy_from_slice(&4u16.to_le_bytes());
    expect_err(&img, "smaller than its own entry");

    let mut img = good.clone();
    // A table larger than what precedes it inside the image cannot be walked.
    let small = &mut img[good.len() - 0x1000..];
    let small_footer = small.len() - 50;
    small[small_footer..small_footer + 2].copy_from_slice(&0x2000u16.to_le_bytes());
    expect_err(small, "exceeds the image");

    // An entry whose size runs past the table's start.
    let mut img = good.clone();
    let last_entry_size = footer - 18;
    img[last_entry_size..last_entry_size + 2].copy_from_slice(&0x4000u16.to_le_bytes());
    expect_err(&img, "has size 0x4000");

    let mut img = good;
    img[last_entry_size..last_entry_size + 2].copy_from_slice(&3u16.to_le_bytes());
    expect_err(&img, "has size 0x3");
}

#[test]
fn bad_sev_metadata_is_rejected() {
    let base = SynthOvmf::amdsev();
    let meta_at = base.len - 0x800;

    let mut img = base.build();
    img[meta_at] = b'X';
    expect_err(&img, "is not \"ASEV\"");

    let mut img = base.build();
    img[meta_at + 8] = 2;
    expect_err(&img, "version 2");

    let mut img = base.build();
    img[meta_at + 12..meta_at + 16].copy_from_slice(&1000u32.to_le_bytes());
    expect_err(&img, "does not hold 1000 sections");

    let mut img = base.build();
    img[meta_at + 16 + 8..meta_at + 16 + 12].copy_from_slice(&7u32.to_le_bytes());
    expect_err(&img, "unknown type 0x7");

    let mut img = base.build();
    img[meta_at + 16..meta_at + 20].copy_from_slice(&0x800010u32.to_le_bytes());
    expect_err(&img, "not a 4 KiB-aligned range");

    // Metadata offset pointing before the start of the image.
    let synth = SynthOvmf {
        sections: Some(vec![]),
        ..SynthOvmf::amdsev()
    };
    let mut img = synth.build();
    let o = Ovmf::parse("ok", &img).unwrap();
    let entry = o.entry(&SEV_METADATA_GUID).unwrap().as_ptr() as usize - img.as_ptr() as usize;
    img[entry..entry + 4].copy_from_slice(&0x20000u32.to_le_bytes());
    expect_err(&img, "outside the image");
}

#[test]
fn hashes_table_layout() {
    let h = SevHashes::new(b"kernel", Some(b"initrd"), Some("console=ttyS0"));
    let t = h.table();
    assert_eq!(t.len(), 176);
    assert_eq!(&t[..16], &HASH_TABLE_HEADER_GUID.0);
    assert_eq!(u16::from_le_bytes([t[16], t[17]]), 168);
    assert_eq!(&t[18..34], &HASH_CMDLINE_GUID.0);
    assert_eq!(u16::from_le_bytes([t[34], t[35]]), 50);
    assert_eq!(&t[36..68], &Sha256::digest(b"console=ttyS0\0")[..]);
    assert_eq!(&t[68..84], &HASH_INITRD_GUID.0);
    assert_eq!(&t[86..118], &Sha256::digest(b"initrd")[..]);
    assert_eq!(&t[118..134], &HASH_KERNEL_GUID.0);
    assert_eq!(&t[136..168], &Sha256::digest(b"kernel")[..]);
    assert_eq!(&t[168..], &[0u8; 8]);

    let none = SevHashes::new(b"k", None, None);
    assert_eq!(none.cmdline, <[u8; 32]>::from(Sha256::digest(b"\0")));
    assert_eq!(none.initrd, <[u8; 32]>::from(Sha256::digest(b"")));

    let page = h.page(0x400).unwrap();
    assert_eq!(page.len(), 4096);
    assert_eq!(&page[0x400..0x400 + 176], &t[..]);
    assert!(page[..0x400].iter().chain(&page[0x4b0..]).all(|b| *b == 0));
    let e = h.page(0xf80).unwrap_err().to_string();
    assert!(e.contains("0xf80"), "{e}");
}
