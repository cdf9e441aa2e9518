//! Tests of the MRTD (oracle O6): record bytes, Debian's OVMF.fd against the `igvm` crate's
//! MRTD of an IGVM file built from its TDVF sections, synthetic TDVF images, and generated
//! TDX IGVM files against `generate_tdx_measurement`.

use igvm::IgvmDirectiveHeader as D;
use igvm_defs::{IgvmPageDataFlags, IGVM_VHS_PARAMETER_INSERT};
use sha2::{Digest, Sha384};

use super::*;
use crate::measure::hex;
use crate::tdx_testutil::*;
use crate::testutil::{debian_ovmf, DEBIAN_OVMF};

fn ovmf(name: &str, data: Vec<u8>) -> Firmware {
    Firmware::Ovmf {
        name: name.into(),
        data,
    }
}

fn igvm(data: Vec<u8>) -> Firmware {
    Firmware::Igvm {
        name: "tdx.igvm".into(),
        data,
    }
}

#[test]
fn record_bytes_follow_spec_section_8_4() {
    let r = page_add_record(0xffe2_0000);
    assert_eq!(&r[..16], b"MEM.PAGE.ADD\0\0\0\0");
    assert_eq!(&r[16..24], &0xffe2_0000u64.to_le_bytes());
    assert!(r[24..].iter().all(|&b| b == 0));
    let r = mr_extend_record(0x1100);
    assert_eq!(&r[..16], b"MR.EXTEND\0\0\0\0\0\0\0");
    assert_eq!(&r[16..24], &0x1100u64.to_le_bytes());
    assert_eq!(r.len(), 128);
}

#[test]
fn a_measured_page_hashes_one_add_and_sixteen_extends() {
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let mut expected = Sha384::new();
    expected.update(page_add_record(0x5000));
    for i in 0..16u64 {
        expected.update(mr_extend_record(0x5000 + i * 256));
        expected.update(&data[i as usize * 256..(i as usize + 1) * 256]);
    }
    expected.update(page_add_record(0x6000));
    let mut m = Mrtd::new();
    m.add_page(0x5000, Some(&data));
    m.add_page(0x6000, None);
    assert_eq!(m.value(), <[u8; 48]>::from(expected.finalize()));
}

/// The trap of §8.4: all PAGE.ADDs first, then all EXTENDs, is a different value.
#[test]
fn single_pass_differs_from_two_pass() {
    let data = vec![0xa5u8; 8192];
    let mut single = Mrtd::new();
    single.add_range(0x1000, 2, &data, true);
    let mut two = Sha384::new();
    for gpa in [0x1000u64, 0x2000] {
        two.update(page_add_record(gpa));
    }
    for gpa in (0x1000u64..0x3000).step_by(256) {
        two.update(mr_extend_record(gpa));
        two.update([0xa5u8; 256]);
    }
    assert_ne!(single.value(), <[u8; 48]>::from(two.finalize()));
}

/// O6: Debian's OVMF.fd, cvmm's MRTD = the igvm crate's MRTD of the IGVM built from the
/// TDVF sections = cvmm's MRTD of that IGVM file.
#[test]
fn debian_ovmf_mrtd_matches_igvm_crate() {
    let Some(img) = debian_ovmf("debian_ovmf_mrtd_matches_igvm_crate") else {
        return;
    };
    let ours = tdx_mrtd(&ovmf(DEBIAN_OVMF, img.clone())).unwrap();
    let file = igvm_from_tdvf(DEBIAN_OVMF, &img);
    let oracle = igvm_crate_mrtd(&file);
    println!("Debian OVMF.fd MRTD = {}", hex(&ours));
    assert_eq!(hex(&ours), hex(&oracle));
    assert_eq!(hex(&tdx_mrtd(&igvm(file)).unwrap()), hex(&oracle));
}

/// O6 on a synthetic TDVF with a PAGE_AUG section (omitted) and a measured short BFV.
#[test]
fn synthetic_tdvf_mrtd_matches_igvm_crate() {
    let img = small_tdvf();
    let ours = tdx_mrtd(&ovmf("small.fd", img.clone())).unwrap();
    let oracle = igvm_crate_mrtd(&igvm_from_tdvf("small.fd", &img));
    assert_eq!(hex(&ours), hex(&oracle));
    // Changing a measured byte changes the MRTD; changing an unmeasured (CFV) byte does not.
    let mut bfv = img.clone();
    bfv[0x10000] ^= 1;
    assert_ne!(tdx_mrtd(&ovmf("x", bfv)).unwrap(), ours);
    let mut cfv = img.clone();
    cfv[0x100] ^= 1;
    assert_eq!(tdx_mrtd(&ovmf("x", cfv)).unwrap(), ours);
}

fn full(seed: u8) -> Vec<u8> {
    (0..4096u32).map(|i| (i as u8).wrapping_mul(seed)).collect()
}

/// O6: generated TDX IGVM files against `generate_tdx_measurement`.
#[test]
fn igvm_mrtd_matches_igvm_crate() {
    let unmeasured = IgvmPageDataFlags::new().with_unmeasured(true);
    let shared = IgvmPageDataFlags::new().with_shared(true);
    let cases: Vec<(&str, Vec<D>)> = vec![
        (
            "data pages",
            vec![
                page(0x1000, IgvmPageDataFlags::new(), full(3)),
                page(0x2000, IgvmPageDataFlags::new(), full(5)),
            ],
        ),
        (
            "short and empty pages",
            vec![
                page(0x1000, IgvmPageDataFlags::new(), vec![7; 100]),
                page(0x3000, IgvmPageDataFlags::new(), vec![]),
            ],
        ),
        (
            "unmeasured and shared",
            vec![
                page(0x1000, unmeasured, full(9)),
                page(0x2000, shared, full(1)),
                page(0x4000, IgvmPageDataFlags::new(), full(2)),
            ],
        ),
        (
            "parameter area of 3 pages",
            vec![
                page(0x1000, IgvmPageDataFlags::new(), full(4)),
                D::ParameterArea {
                    number_of_bytes: 0x3000,
                    parameter_area_index: 0,
                    initial_data: vec![],
                },
                D::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
                    gpa: 0x10000,
                    compatibility_mask: TDX_MASK,
                    parameter_area_index: 0,
                }),
                page(0x20000, IgvmPageDataFlags::new(), full(6)),
            ],
        ),
    ];
    for (what, dirs) in cases {
        let file = tdx_igvm(dirs);
        let ours = tdx_mrtd(&igvm(file.clone())).unwrap();
        assert_eq!(hex(&ours), hex(&igvm_crate_mrtd(&file)), "{what}");
    }
}

#[test]
fn truncated_or_foreign_igvm_is_an_error_naming_the_file() {
    let file = tdx_igvm(vec![page(0x1000, IgvmPageDataFlags::new(), full(3))]);
    for cut in [0, 16, file.len() / 2, file.len() - 1] {
        let e = tdx_mrtd(&igvm(file[..cut].to_vec()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tdx.igvm") && e.contains("cannot parse"),
            "cut {cut}: {e}"
        );
    }
    let shared_only = vec![page(
        0x1000,
        IgvmPageDataFlags::new().with_shared(true),
        full(1),
    )];
    let e = tdx_mrtd(&igvm(tdx_igvm(shared_only)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no page data"), "{e}");
}

/// The TDX plan refuses two directives over one page (the shared check of the SNP plan and the
/// native loader): no page is added to the TD twice.
#[test]
fn overlapping_igvm_pages_are_refused_naming_both_directives() {
    let none = IgvmPageDataFlags::new();
    let two_mb = IgvmPageDataFlags::new().with_is_2mb_page(true);
    let area = |gpa| {
        vec![
            D::ParameterArea {
                number_of_bytes: 0x2000,
                parameter_area_index: 0,
                initial_data: vec![],
            },
            D::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
                gpa,
                compatibility_mask: TDX_MASK,
                parameter_area_index: 0,
            }),
        ]
    };
    let mut param_over_data = vec![page(0x11000, none, full(1))];
    param_over_data.extend(area(0x10000));
    let cases: Vec<(Vec<D>, &str)> = vec![
        (
            vec![page(0x1000, none, full(1)), page(0x1000, none, full(2))],
            "directive 1 (PAGE_DATA at gpa 0x1000, 0x1000 bytes) overlaps directive 0 \
             (PAGE_DATA at gpa 0x1000, 0x1000 bytes)",
        ),
        (
            vec![
                page(0x20_5000, none, full(1)),
                page(0x20_0000, two_mb, vec![]),
            ],
            "directive 1 (PAGE_DATA at gpa 0x200000, 0x200000 bytes) overlaps directive 0 \
             (PAGE_DATA at gpa 0x205000, 0x1000 bytes)",
        ),
        (
            param_over_data,
            "directive 2 (PARAMETER_INSERT at gpa 0x10000, 0x2000 bytes) overlaps directive 0 \
             (PAGE_DATA at gpa 0x11000, 0x1000 bytes)",
        ),
    ];
    for (dirs, want) in cases {
        let e = tdx_mrtd(&igvm(tdx_igvm(dirs))).unwrap_err().to_string();
        assert!(e.contains("tdx.igvm") && e.contains(want), "{e}");
    }
}

#[test]
fn malformed_tdvf_is_an_error_naming_the_image() {
    let e = tdx_mrtd(&ovmf("empty.fd", vec![0; 0x1000]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty.fd") && e.contains("TDX metadata"), "{e}");
}
