use super::*;
use igvm::{IgvmFile, IgvmInitializationHeader, IgvmRevision};
use igvm_defs::{
    IgvmPageDataFlags, IgvmPageDataType, IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_SUPPORTED_PLATFORM,
};
use vm_memory::Bytes;

const NATIVE: u32 = 1;
const SNP: u32 = 2;

fn platform(mask: u32, kind: IgvmPlatformType, version: u16) -> IgvmPlatformHeader {
    IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
        compatibility_mask: mask,
        highest_vtl: 0,
        platform_type: kind,
        platform_version: version,
        shared_gpa_boundary: 0,
    })
}

fn page(gpa: u64, mask: u32, data: Vec<u8>) -> IgvmDirectiveHeader {
    IgvmDirectiveHeader::PageData {
        gpa,
        compatibility_mask: mask,
        flags: IgvmPageDataFlags::new(),
        data_type: IgvmPageDataType::NORMAL,
        data,
    }
}

fn param(area: u32, offset: u32) -> IGVM_VHS_PARAMETER {
    IGVM_VHS_PARAMETER {
        parameter_area_index: area,
        byte_offset: offset,
    }
}

fn context(rip: u64) -> IgvmDirectiveHeader {
    let mut c = IgvmNativeVpContextX64 {
        rip,
        rbx: 0x6000,
        rflags: 2,
        cr0: 0x11,
        code_selector: 0x8,
        code_attributes: 0xc09b,
        code_limit: 0xffff_ffff,
        data_selector: 0x10,
        data_attributes: 0xc093,
        data_limit: 0xffff_ffff,
        gdtr_base: 0x5000,
        gdtr_limit: 23,
        ..zeroed_context()
    };
    c.rsp = 0x8ff0;
    IgvmDirectiveHeader::X64NativeVpContext {
        compatibility_mask: NATIVE,
        vp_index: 0,
        context: Box::new(c),
    }
}

fn zeroed_context() -> IgvmNativeVpContextX64 {
    use zerocopy::FromZeros;
    IgvmNativeVpContextX64::new_zeroed()
}

fn file(directives: Vec<IgvmDirectiveHeader>) -> Vec<u8> {
    let platforms = vec![
        platform(NATIVE, IgvmPlatformType::NATIVE, 1),
        platform(SNP, IgvmPlatformType::SEV_SNP, 1),
    ];
    let rev = IgvmRevision::V2 {
        arch: igvm::Arch::X64,
        page_size: 4096,
    };
    let f = IgvmFile::new(
        rev,
        platforms,
        Vec::<IgvmInitializationHeader>::new(),
        directives,
    )
    .expect("valid IGVM file");
    let mut out = Vec::new();
    f.serialize(&mut out).unwrap();
    out
}

fn params() -> NativeParams<'static> {
    NativeParams {
        vcpus: 3,
        memory_mib: 64,
        cmdline: "console=ttyS0 probe.exit=poweroff",
    }
}

/// A file with page data for both platforms, a command line + VP count area and a memory map.
fn full_file() -> Vec<u8> {
    file(vec![
        page(0x10_0000, NATIVE, b"native code".to_vec()),
        page(0x10_0000, SNP, b"snp code".to_vec()),
        page(0x10_1000, NATIVE, vec![]),
        IgvmDirectiveHeader::ParameterArea {
            number_of_bytes: 0x1000,
            parameter_area_index: 0,
            initial_data: b"junk".to_vec(),
        },
        IgvmDirectiveHeader::CommandLine(param(0, 0)),
        IgvmDirectiveHeader::VpCount(param(0, 0xff0)),
        IgvmDirectiveHeader::ParameterArea {
            number_of_bytes: 0x1000,
            parameter_area_index: 1,
            initial_data: vec![],
        },
        IgvmDirectiveHeader::MemoryMap(param(1, 0)),
        IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
            gpa: 0x7000,
            compatibility_mask: NATIVE,
            parameter_area_index: 0,
        }),
        IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
            gpa: 0x8000,
            compatibility_mask: NATIVE,
            parameter_area_index: 1,
        }),
        IgvmDirectiveHeader::RequiredMemory {
            gpa: 0x20_0000,
            compatibility_mask: NATIVE,
            number_of_bytes: 0x10_0000,
            vtl2_protectable: false,
        },
        context(0x10_000c),
    ])
}

#[test]
fn native_directives_land_in_guest_memory() {
    let mem = crate::memory::create(64).unwrap();
    mem.write_slice(&[0xaa; 16], GuestAddress(0x10_1000))
        .unwrap();
    let boot = load_native(&mem, "t.igvm", &full_file(), &params()).unwrap();
    assert_eq!(boot.context.rip, 0x10_000c);
    assert_eq!(boot.pages_loaded, 2, "the SNP page is not loaded");
    assert_eq!(boot.parameter_inserts, 2);

    let mut code = [0u8; 16];
    mem.read_slice(&mut code, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(&code[..11], b"native code");
    assert_eq!(&code[11..], &[0; 5], "short page data is zero-padded");
    let mut empty = [0u8; 16];
    mem.read_slice(&mut empty, GuestAddress(0x10_1000)).unwrap();
    assert_eq!(empty, [0; 16], "a page without data is zeroed");

    let cmdline = "console=ttyS0 probe.exit=poweroff";
    let mut got = vec![0u8; cmdline.len() + 1];
    mem.read_slice(&mut got, GuestAddress(0x7000)).unwrap();
    assert_eq!(&got[..cmdline.len()], cmdline.as_bytes());
    assert_eq!(got[cmdline.len()], 0, "NUL-terminated");
    let vp: u32 = mem.read_obj(GuestAddress(0x7ff0)).unwrap();
    assert_eq!(vp, 3);

    let map = memory_map(64);
    let mut got = vec![0u8; map.len()];
    mem.read_slice(&mut got, GuestAddress(0x8000)).unwrap();
    assert_eq!(got, map);
}

#[test]
fn memory_map_is_sorted_page_granular_and_terminated() {
    let map = memory_map(128);
    let entries: Vec<(u64, u64, u16)> = map
        .chunks(MEMMAP_ENTRY)
        .map(|e| {
            (
                u64::from_le_bytes(e[0..8].try_into().unwrap()),
                u64::from_le_bytes(e[8..16].try_into().unwrap()),
                u16::from_le_bytes(e[16..18].try_into().unwrap()),
            )
        })
        .collect();
    // RAM below the EBDA (0x9fc00) rounds down to 0x9f pages; the reserved hole rounds out.
    assert_eq!(entries[0], (0, 0x9f, IGVM_MEMORY));
    assert_eq!(entries[1], (0x9f, 0x100 - 0x9f, IGVM_PLATFORM_RESERVED));
    assert_eq!(entries[2], (0x100, (128 << 8) - 0x100, IGVM_MEMORY));
    assert_eq!(entries.last(), Some(&(0, 0, 0)));
    let starts: Vec<u64> = entries[..entries.len() - 1].iter().map(|e| e.0).collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "{starts:?}");
}

#[test]
fn snp_only_file_is_refused_for_plain_boot() {
    let platforms = vec![platform(SNP, IgvmPlatformType::SEV_SNP, 1)];
    let f = IgvmFile::new(
        IgvmRevision::V1,
        platforms,
        vec![IgvmInitializationHeader::GuestPolicy {
            policy: 0x30000,
            compatibility_mask: SNP,
        }],
        vec![page(0x10_0000, SNP, vec![1])],
    )
    .unwrap();
    let mut data = Vec::new();
    f.serialize(&mut data).unwrap();
    let mem = crate::memory::create(16).unwrap();
    let e = load_native(&mem, "snp.igvm", &data, &params())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("snp.igvm") && e.contains("no NATIVE platform"),
        "{e}"
    );
}

#[test]
fn garbage_and_truncated_files_are_input_errors() {
    let mem = crate::memory::create(16).unwrap();
    let good = full_file();
    for data in [&b"not an igvm file"[..], &good[..good.len() / 2], &[][..]] {
        let e = load_native(&mem, "bad.igvm", data, &params()).unwrap_err();
        assert!(e.is_input(), "{e}");
        assert!(e.to_string().contains("cannot parse"), "{e}");
    }
}

#[test]
fn directives_outside_ram_or_areas_are_named() {
    let mem = crate::memory::create(16).unwrap();
    let cases: Vec<(Vec<IgvmDirectiveHeader>, &str)> = vec![
        (
            vec![page(64 << 20, NATIVE, vec![1]), context(0)],
            "directive 0 (PAGE_DATA): gpa 0x4000000+0x1000 is outside guest RAM",
        ),
        (
            vec![
                IgvmDirectiveHeader::RequiredMemory {
                    gpa: 8 << 20,
                    compatibility_mask: NATIVE,
                    number_of_bytes: 16 << 20,
                    vtl2_protectable: false,
                },
                context(0),
            ],
            "REQUIRED_MEMORY): gpa 0x800000+0x1000000 is not guest RAM",
        ),
        (
            vec![
                IgvmDirectiveHeader::ParameterArea {
                    number_of_bytes: 0x1000,
                    parameter_area_index: 0,
                    initial_data: vec![],
                },
                IgvmDirectiveHeader::VpCount(param(0, 0xffe)),
                context(0),
            ],
            "(VP_COUNT): 4 bytes at offset 0xffe do not fit area 0",
        ),
        (
            vec![page(0x10_0000, NATIVE, vec![1])],
            "no X64NativeVpContext for vp 0",
        ),
    ];
    for (directives, want) in cases {
        let e = load_native(&mem, "t.igvm", &file(directives), &params())
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "want '{want}' in: {e}");
    }
}

#[test]
fn command_line_longer_than_its_area_is_refused() {
    let mem = crate::memory::create(16).unwrap();
    let data = file(vec![
        IgvmDirectiveHeader::ParameterArea {
            number_of_bytes: 0x1000,
            parameter_area_index: 0,
            initial_data: vec![],
        },
        IgvmDirectiveHeader::CommandLine(param(0, 0)),
        context(0),
    ]);
    let long = "x".repeat(5000);
    let p = NativeParams {
        cmdline: &long,
        ..params()
    };
    let e = load_native(&mem, "t.igvm", &data, &p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("COMMAND_LINE") && e.contains("5001 bytes"),
        "{e}"
    );
}

#[test]
fn segment_attributes_decode_like_descriptors() {
    let cs = segment(0x8, 0xc09b, 0, 0xffff_ffff);
    assert_eq!(
        (
            cs.type_,
            cs.s,
            cs.present,
            cs.db,
            cs.g,
            cs.l,
            cs.dpl,
            cs.unusable
        ),
        (0xb, 1, 1, 1, 1, 0, 0, 0)
    );
    let cs64 = segment(0x8, 0xa09b, 0, 0xffff_ffff);
    assert_eq!((cs64.l, cs64.db), (1, 0));
    let absent = segment(0, 0, 0, 0);
    assert_eq!(absent.unusable, 1);
}

/// Two native-platform directives over one guest page are refused (the check the SEV-SNP and
/// TDX plans share), naming the file and both directives; the same GPA used by another
/// platform's directive (see `full_file`) is not an overlap.
#[test]
fn overlapping_pages_are_refused_naming_both_directives() {
    let mem = crate::memory::create(16).unwrap();
    let two_mb = IgvmDirectiveHeader::PageData {
        gpa: 0x20_0000,
        compatibility_mask: NATIVE,
        flags: IgvmPageDataFlags::new().with_is_2mb_page(true),
        data_type: IgvmPageDataType::NORMAL,
        data: vec![],
    };
    let cases: Vec<(Vec<IgvmDirectiveHeader>, &str)> = vec![
        (
            vec![
                page(0x10_0000, NATIVE, vec![1]),
                page(0x10_0000, NATIVE, vec![2]),
                context(0),
            ],
            "directive 1 (PAGE_DATA at gpa 0x100000, 0x1000 bytes) overlaps directive 0 \
             (PAGE_DATA at gpa 0x100000, 0x1000 bytes)",
        ),
        (
            vec![page(0x3f_f000, NATIVE, vec![1]), two_mb, context(0)],
            "directive 1 (PAGE_DATA at gpa 0x200000, 0x200000 bytes) overlaps directive 0 \
             (PAGE_DATA at gpa 0x3ff000, 0x1000 bytes)",
        ),
        (
            vec![
                page(0x8000, NATIVE, vec![1]),
                IgvmDirectiveHeader::ParameterArea {
                    number_of_bytes: 0x2000,
                    parameter_area_index: 0,
                    initial_data: vec![],
                },
                IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
                    gpa: 0x7000,
                    compatibility_mask: NATIVE,
                    parameter_area_index: 0,
                }),
                context(0),
            ],
            "directive 2 (PARAMETER_INSERT at gpa 0x7000, 0x2000 bytes) overlaps directive 0 \
             (PAGE_DATA at gpa 0x8000, 0x1000 bytes)",
        ),
    ];
    for (directives, want) in cases {
        let e = load_native(&mem, "t.igvm", &file(directives), &params()).unwrap_err();
        assert!(e.is_input(), "{e}");
        let e = e.to_string();
        assert!(e.contains("IGVM file 't.igvm'") && e.contains(want), "{e}");
    }
}
