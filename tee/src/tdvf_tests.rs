//! Tests of the TDVF metadata parser: Debian's OVMF.fd against spec §9.2, synthetic images, and
//! malformed metadata (each rejected with an error naming the image and the field).

use super::*;
use crate::tdx_testutil::{small_tdvf, synth_tdvf, RawSection};
use crate::testutil::{debian_ovmf, DEBIAN_OVMF};

#[test]
fn debian_ovmf_matches_spec_section_9_2() {
    let Some(img) = debian_ovmf("debian_ovmf_matches_spec_section_9_2") else {
        return;
    };
    let t = Tdvf::parse(DEBIAN_OVMF, &img).unwrap();
    let got: Vec<_> = t
        .sections()
        .iter()
        .map(|s| {
            (
                s.kind,
                s.data_offset,
                s.raw_size,
                s.gpa,
                s.mem_size,
                s.attributes,
            )
        })
        .collect();
    use TdvfSectionKind::*;
    assert_eq!(
        got,
        [
            (
                Bfv,
                0x20000,
                0x1e0000,
                0xffe20000,
                0x1e0000,
                TDVF_ATTR_MR_EXTEND
            ),
            (Cfv, 0, 0x20000, 0xffe00000, 0x20000, 0),
            (TempMem, 0, 0, 0x810000, 0x10000, 0),
            (TempMem, 0, 0, 0x80b000, 0x2000, 0),
            (TdHob, 0, 0, 0x809000, 0x2000, 0),
            (TempMem, 0, 0, 0x800000, 0x6000, 0),
        ]
    );
    assert_eq!(t.td_hob().map(|s| s.gpa), Some(0x809000));
    // BFV contents are the image bytes from data_offset.
    let bfv = t.section_data(&t.sections()[0]);
    assert_eq!(&bfv.as_bytes()[..64], &img[0x20000..0x20040]);
}

#[test]
fn synthetic_image_round_trips_every_field() {
    let img = small_tdvf();
    let t = Tdvf::parse("small.fd", &img).unwrap();
    let s = t.sections();
    assert_eq!(s.len(), 5);
    assert!(s[0].mr_extend() && !s[0].page_aug());
    assert_eq!(s[3].kind, TdvfSectionKind::TempMem);
    assert_eq!(
        (s[4].kind, s[4].page_aug()),
        (TdvfSectionKind::PermMem, true)
    );
    // VMM-provided sections start as zeros.
    assert!(t.section_data(&s[2]).as_bytes().iter().all(|&b| b == 0));
    assert_eq!(t.section_data(&s[1]).as_bytes(), &img[..0x10000]);
}

#[test]
fn image_data_shorter_than_the_section_is_zero_padded() {
    let img = synth_tdvf(0x10000, &[(0, 0x1800, 0xffff0000, 0x3000, 0, 1)]);
    let t = Tdvf::parse("pad.fd", &img).unwrap();
    let d = t.section_data(&t.sections()[0]);
    assert_eq!(d.len(), 0x3000);
    assert_eq!(&d.as_bytes()[..0x1800], &img[..0x1800]);
    assert!(d.as_bytes()[0x1800..].iter().all(|&b| b == 0));
}

fn expect_err(sections: &[RawSection], needle: &str) {
    let img = synth_tdvf(0x10000, sections);
    let e = Tdvf::parse("bad.fd", &img).unwrap_err().to_string();
    assert!(e.contains("bad.fd") && e.contains(needle), "{e}");
}

const BFV: RawSection = (0, 0x1000, 0xffff0000, 0x1000, 0, 1);

#[test]
fn bad_sections_are_rejected_with_the_field_named() {
    expect_err(&[BFV, (0, 0, 0x800000, 0x1000, 9, 0)], "unknown type 0x9");
    expect_err(
        &[(0, 0x1000, 0xffff0800, 0x1000, 0, 1)],
        "not a non-empty 4 KiB-aligned",
    );
    expect_err(
        &[(0, 0x1000, 0xffff0000, 0, 0, 1)],
        "not a non-empty 4 KiB-aligned",
    );
    expect_err(
        &[(0, 0x2000, 0xffff0000, 0x1000, 0, 1)],
        "raw size 0x2000 exceeds",
    );
    expect_err(
        &[(0xf000, 0x2000, 0xffff0000, 0x2000, 0, 1)],
        "outside the 0x10000-byte image",
    );
    expect_err(
        &[BFV, (0, 0, 0x800000, 0x1000, 3, 4)],
        "unknown attributes 0x4",
    );
    expect_err(
        &[BFV, (0, 0x10, 0x800000, 0x1000, 3, 0)],
        "carry no image data",
    );
    expect_err(
        &[BFV, (0, 0, 0x800000, 0x1000, 2, 1)],
        "TD HOB must be added",
    );
    expect_err(&[BFV, (0, 0, 0x1000, !0xfff, 3, 0)], "not a non-empty");
    expect_err(&[BFV, (0, 0, 0, 1 << 40, 3, 0)], "exceeds the");
    expect_err(
        &[
            BFV,
            (0, 0, 0x800000, 0x1000, 2, 0),
            (0, 0, 0x900000, 0x1000, 2, 0),
        ],
        "2 TD_HOB sections",
    );
    expect_err(
        &[
            BFV,
            (0, 0, 0x800000, 0x2000, 3, 0),
            (0, 0, 0x801000, 0x1000, 3, 0),
        ],
        "overlap",
    );
}

/// Patches the descriptor of a valid image (at len − 0x1000) and expects an error.
fn expect_desc_err(patch: impl Fn(&mut [u8]), needle: &str) {
    let mut img = synth_tdvf(0x10000, &[BFV]);
    patch(&mut img[0xf000..0xf010]);
    let e = Tdvf::parse("bad.fd", &img).unwrap_err().to_string();
    assert!(e.contains("bad.fd") && e.contains(needle), "{e}");
}

#[test]
fn bad_descriptors_are_rejected() {
    expect_desc_err(|d| d[..4].copy_from_slice(b"XDVF"), "not \"TDVF\"");
    expect_desc_err(|d| d[8] = 2, "version 2 is not 1");
    expect_desc_err(|d| d[12] = 2, "does not hold 2 sections");
    expect_desc_err(|d| d[12] = 0, "does not hold 0 sections");
    expect_desc_err(
        |d| d[4..8].copy_from_slice(&0x10_0000u32.to_le_bytes()),
        "does not hold",
    );
}

#[test]
fn metadata_offset_outside_the_image_is_rejected() {
    let mut img = synth_tdvf(0x10000, &[BFV]);
    // The TDX entry's data is the u32 just before its size+GUID, 40 bytes below the footer.
    let entry = 0x10000 - 32 - 18 - 22;
    img[entry..entry + 4].copy_from_slice(&0x20000u32.to_le_bytes());
    let e = Tdvf::parse("bad.fd", &img).unwrap_err().to_string();
    assert!(e.contains("offset 0x20000"), "{e}");
}

#[test]
fn image_without_tdx_metadata_is_rejected() {
    let e = Tdvf::parse("plain.fd", &[0u8; 0x2000])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("plain.fd") && e.contains("not a TDVF image"),
        "{e}"
    );
}

/// Hostile input: every single-byte corruption of the metadata and the footer table gives
/// either a parse or an error, never a panic.
#[test]
fn corrupted_metadata_never_panics() {
    let img = small_tdvf();
    let len = img.len();
    let spots = (len - 0x1000..len - 0x1000 + 16 + 5 * 32).chain(len - 80..len);
    for at in spots {
        for v in [0x00, 0x01, 0x7f, 0xff] {
            let mut bad = img.clone();
            bad[at] = v;
            let _ = Tdvf::parse("fuzz.fd", &bad);
        }
    }
    for cut in [0x1000, 0x3f000] {
        assert!(Tdvf::parse("cut.fd", &img[..cut]).is_err());
    }
}
