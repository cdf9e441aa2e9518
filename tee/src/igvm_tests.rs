//! Tests of the IGVM loader (oracle O4): generated IGVM files measured by cvmm and by the `igvm`
//! crate's `generate_snp_measurement`, the §7.2 rules, and malformed files.

use igvm::snp_defs::SevVmsa;
use igvm::{IgvmDirectiveHeader as D, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader};
use igvm_defs::{
    IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType, IGVM_VHS_PARAMETER,
    IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_SUPPORTED_PLATFORM,
};
use zerocopy::FromBytes;

use super::*;
use crate::measure::{hex, Firmware, MeasureInputs};
use crate::vmsa::{predict_vmsa, VcpuRegs};

pub(crate) const MASK: u32 = 1;

fn page(gpa: u64, data: Vec<u8>) -> D {
    page_with(
        gpa,
        IgvmPageDataFlags::new(),
        IgvmPageDataType::NORMAL,
        data,
    )
}

pub(crate) fn page_with(
    gpa: u64,
    flags: IgvmPageDataFlags,
    data_type: IgvmPageDataType,
    data: Vec<u8>,
) -> D {
    D::PageData {
        gpa,
        compatibility_mask: MASK,
        flags,
        data_type,
        data,
    }
}

fn vmsa_with(cr0: u64, sev_features: u64) -> Box<SevVmsa> {
    let mut regs = VcpuRegs::reset(0xffff_fff0, 0xa00f11);
    regs.cr0 = cr0;
    Box::new(SevVmsa::read_from_bytes(&predict_vmsa(&regs, sev_features)[..]).unwrap())
}

fn vp(gpa: u64, vp_index: u16, vmsa: Box<SevVmsa>) -> D {
    D::SnpVpContext {
        gpa,
        compatibility_mask: MASK,
        vp_index,
        vmsa,
    }
}

pub(crate) fn vmsa_last() -> D {
    vp(VMSA_GPA, 0, vmsa_with(0x31, 1))
}

pub(crate) fn file(directives: Vec<D>) -> Vec<u8> {
    let platform = IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
        compatibility_mask: MASK,
        highest_vtl: 0,
        platform_type: IgvmPlatformType::SEV_SNP,
        platform_version: 1,
        shared_gpa_boundary: 0,
    });
    let policy = IgvmInitializationHeader::GuestPolicy {
        policy: 0x30000,
        compatibility_mask: MASK,
    };
    let f = IgvmFile::new(
        igvm::IgvmRevision::V1,
        vec![platform],
        vec![policy],
        directives,
    )
    .expect("valid test IGVM");
    let mut out = Vec::new();
    f.serialize(&mut out).unwrap();
    out
}

pub(crate) fn inputs(data: Vec<u8>, guest_features: u64) -> MeasureInputs {
    MeasureInputs {
        firmware: Firmware::Igvm {
            name: "test.igvm".into(),
            data,
        },
        kernel: None,
        initrd: None,
        cmdline: None,
        vcpus: 1,
        vcpu_signature: 0xa00f11,
        guest_features,
        ovmf_hash: None,
    }
}

fn ours(bytes: &[u8]) -> String {
    hex(&crate::snp_digest(&inputs(bytes.to_vec(), 1)).unwrap())
}

pub(crate) fn oracle(bytes: &[u8]) -> String {
    let f = IgvmFile::new_from_binary(bytes, Some(igvm::IsolationType::Snp)).unwrap();
    hex(
        &igvm::measurement::generate_snp_measurement(f.initializations(), f.directives(), MASK)
            .unwrap(),
    )
}

fn full_page(seed: u8) -> Vec<u8> {
    (0..4096u32).map(|i| (i as u8).wrapping_mul(seed)).collect()
}

pub(crate) fn param_area(size: u64, gpa: u64) -> Vec<D> {
    vec![
        D::ParameterArea {
            number_of_bytes: size,
            parameter_area_index: 0,
            initial_data: vec![],
        },
        D::VpCount(IGVM_VHS_PARAMETER {
            parameter_area_index: 0,
            byte_offset: 0,
        }),
        D::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
            gpa,
            compatibility_mask: MASK,
            parameter_area_index: 0,
        }),
    ]
}

/// Every page kind of §7.1 in one file, VMSA last.
fn mixed_file(area_size: u64) -> Vec<u8> {
    let mut d = vec![
        page(0x10000, full_page(3)),
        page(0x11000, full_page(5)),
        page(0x12000, vec![0xab; 100]),
        page(0x13000, vec![]),
        page_with(
            0x14000,
            IgvmPageDataFlags::new().with_unmeasured(true),
            IgvmPageDataType::NORMAL,
            full_page(7),
        ),
        page_with(
            0x15000,
            IgvmPageDataFlags::new().with_shared(true),
            IgvmPageDataType::NORMAL,
            full_page(9),
        ),
        page_with(
            0x16000,
            IgvmPageDataFlags::new(),
            IgvmPageDataType::SECRETS,
            vec![],
        ),
        page_with(
            0x17000,
            IgvmPageDataFlags::new(),
            IgvmPageDataType::CPUID_DATA,
            vec![1; 64],
        ),
    ];
    d.extend(param_area(area_size, 0x20000));
    d.push(vmsa_last());
    file(d)
}

#[test]
fn o4_mixed_pages_match_igvm_crate() {
    let f = mixed_file(0x1000);
    assert_eq!(ours(&f), oracle(&f));
    let plan = crate::plan::LaunchPlan::from_inputs(&inputs(f, 1)).unwrap();
    // Contiguous NORMAL pages merge into one range; shared pages are not launched.
    assert_eq!(
        plan.update_list(),
        [
            (0x10000, 0x4000, PageType::Normal),
            (0x14000, 0x1000, PageType::Unmeasured),
            (0x16000, 0x1000, PageType::Secrets),
            (0x17000, 0x1000, PageType::Cpuid),
            (0x20000, 0x1000, PageType::Unmeasured),
        ]
    );
    assert_eq!(plan.policy, 0x30000);
    assert_eq!(plan.vcpus.len(), 1);
    assert_eq!(plan.vcpus[0].regs.gprs[crate::vmsa::RDX], 0xa00f11);
    // VP_COUNT was written into the parameter area that is inserted.
    assert_eq!(&plan.ranges[4].data.as_bytes()[..4], &1u32.to_le_bytes());
}

/// A parameter area larger than 4 KiB: cvmm measures (and launches) the whole area, as the
/// `igvm` crate and QEMU do. `igvmmeasure` would measure only its first page.
#[test]
fn o4_large_parameter_area_is_measured_whole() {
    let f = mixed_file(0x3000);
    assert_eq!(ours(&f), oracle(&f));
    assert_ne!(ours(&f), ours(&mixed_file(0x1000)));
}

/// A 2 MiB page is 512 4-KiB pages (the `igvm` crate allows at most 4 KiB of data; the rest is
/// zeros): same digest as the file that spells the pages out.
#[test]
fn o4_2mb_page_equals_512_small_pages() {
    let flags = IgvmPageDataFlags::new().with_is_2mb_page(true);
    let big = file(vec![
        page_with(0x20_0000, flags, IgvmPageDataType::NORMAL, full_page(11)),
        vmsa_last(),
    ]);
    let mut small: Vec<D> = (0..512u64)
        .map(|i| {
            page(
                0x20_0000 + i * 4096,
                if i == 0 { full_page(11) } else { vec![] },
            )
        })
        .collect();
    small.push(vmsa_last());
    let small = file(small);
    assert_eq!(ours(&big), oracle(&small));
    let plan = crate::plan::LaunchPlan::from_inputs(&inputs(big, 1)).unwrap();
    assert_eq!(plan.update_list(), [(0x20_0000, 2 << 20, PageType::Normal)]);
}

#[test]
fn vmsa_becomes_registers_and_is_measured_once() {
    let f = file(vec![page(0x1000, full_page(1)), vmsa_last()]);
    let plan = crate::plan::LaunchPlan::from_inputs(&inputs(f.clone(), 1)).unwrap();
    assert_eq!(plan.sev_features, 1);
    assert_eq!(plan.vcpus[0].regs.cs.base, 0xffff_0000);
    assert_eq!(plan.vcpus[0].regs.rip, 0xfff0);
    assert_eq!(ours(&f), oracle(&f));
}

fn rule_error(directives: Vec<D>, guest_features: u64) -> String {
    crate::snp_digest(&inputs(file(directives), guest_features))
        .unwrap_err()
        .to_string()
}

#[test]
fn kvm_rules_are_enforced() {
    let e = rule_error(vec![vp(0x5000, 0, vmsa_with(0x31, 1))], 1);
    assert!(
        e.contains("test.igvm") && e.contains("VMSA gpa must be"),
        "{e}"
    );

    let e = rule_error(vec![vmsa_last(), page(0x1000, vec![])], 1);
    assert!(
        e.contains("directive 1 (PAGE_DATA)") && e.contains("last page directive"),
        "{e}"
    );

    let mut after = vec![vmsa_last()];
    after.extend(param_area(0x1000, 0x2000));
    let e = rule_error(after, 1);
    assert!(
        e.contains("PARAMETER_INSERT") && e.contains("last page directive"),
        "{e}"
    );

    let e = rule_error(vec![vp(VMSA_GPA, 1, vmsa_with(0x31, 1))], 1);
    assert!(e.contains("vp 0, not vp 1"), "{e}");

    let e = rule_error(vec![vp(VMSA_GPA, 0, vmsa_with(0x11, 1))], 1);
    assert!(
        e.contains("CR0 must be 0x30 or 0x31") && e.contains("0x11"),
        "{e}"
    );

    // DEBUG_SWAP (bit 5) only if cvmm passes it through INIT2.
    let debug_swap = vec![vp(VMSA_GPA, 0, vmsa_with(0x30, 0x21))];
    let e = rule_error(debug_swap, 1);
    assert!(e.contains("sev_features 0x21"), "{e}");
    let ok = file(vec![vp(VMSA_GPA, 0, vmsa_with(0x30, 0x21))]);
    let plan = crate::plan::LaunchPlan::from_inputs(&inputs(ok, 0x21)).unwrap();
    assert_eq!(plan.sev_features, 0x21);

    let e = rule_error(vec![vp(VMSA_GPA, 0, vmsa_with(0x31, 0))], 1);
    assert!(e.contains("sev_features 0x0"), "{e}");
}

#[test]
fn missing_vmsa_is_an_error() {
    let e = rule_error(vec![page(0x1000, vec![1])], 1);
    assert!(e.contains("no SNP_VP_CONTEXT"), "{e}");
}

#[test]
fn malformed_files_name_the_input() {
    let good = mixed_file(0x1000);
    for bad in [
        &good[..good.len() / 2],
        &good[..10],
        &b"not an igvm file at all"[..],
        &[][..],
    ] {
        let e = crate::snp_digest(&inputs(bad.to_vec(), 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.igvm") && e.contains("cannot parse"), "{e}");
    }
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 3;
    corrupt[mid..mid + 64].fill(0xff);
    // Either rejected with the file name, or (if the bytes were page contents) still measured.
    if let Err(e) = crate::snp_digest(&inputs(corrupt, 1)) {
        assert!(e.to_string().contains("test.igvm"), "{e}");
    }
}

#[test]
fn native_only_file_has_no_snp_platform() {
    let platform = IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
        compatibility_mask: MASK,
        highest_vtl: 0,
        platform_type: IgvmPlatformType::NATIVE,
        platform_version: 1,
        shared_gpa_boundary: 0,
    });
    let f = IgvmFile::new(
        igvm::IgvmRevision::V1,
        vec![platform],
        vec![],
        vec![page(0x1000, vec![1])],
    )
    .unwrap();
    let mut out = Vec::new();
    f.serialize(&mut out).unwrap();
    let e = crate::snp_digest(&inputs(out, 1)).unwrap_err().to_string();
    assert!(e.contains("test.igvm"), "{e}");
}

#[test]
fn kernel_inputs_do_not_apply_to_igvm() {
    let mut i = inputs(mixed_file(0x1000), 1);
    i.kernel = Some(vec![1]);
    let e = crate::snp_digest(&i).unwrap_err().to_string();
    assert!(e.contains("test.igvm"), "{e}");
}

/// An SNP ID block directive (author key disabled) with recognisable bytes: ld 0x55.., family
/// 0x66.., image 0x77.., version 1, ID signature r 0x11.. s 0x22.., public key curve 2 with
/// qx 0x33.. qy 0x44...
pub(crate) fn id_block(guest_svn: u32) -> D {
    use igvm_defs::{
        IGVM_VHS_SNP_ID_BLOCK_PUBLIC_KEY as Key, IGVM_VHS_SNP_ID_BLOCK_SIGNATURE as Sig,
    };
    let sig = Sig {
        r_comp: [0x11; 72],
        s_comp: [0x22; 72],
    };
    let key = Key {
        curve: 2,
        reserved: 0,
        qx: [0x33; 72],
        qy: [0x44; 72],
    };
    D::SnpIdBlock {
        compatibility_mask: MASK,
        author_key_enabled: 0,
        reserved: [0; 3],
        ld: [0x55; 48],
        family_id: [0x66; 16],
        image_id: [0x77; 16],
        version: 1,
        guest_svn,
        id_key_algorithm: 1,
        author_key_algorithm: 0,
        id_key_signature: Box::new(sig),
        id_public_key: Box::new(key),
        author_key_signature: Box::new(sig),
        author_public_key: Box::new(key),
    }
}

#[test]
fn id_block_is_built_for_launch_finish() {
    let id = id_block(9);
    let f = file(vec![page(0x1000, vec![1]), id, vmsa_last()]);
    let plan = crate::plan::LaunchPlan::from_inputs(&inputs(f, 1)).unwrap();
    let ib = plan.id_block.expect("ID block");
    assert_eq!(&ib.block[..48], &[0x55; 48]);
    assert_eq!(&ib.block[48..64], &[0x66; 16]);
    assert_eq!(&ib.block[64..80], &[0x77; 16]);
    assert_eq!(&ib.block[80..88], &[1, 0, 0, 0, 9, 0, 0, 0]);
    assert_eq!(&ib.block[88..96], &0x30000u64.to_le_bytes());
    assert_eq!(&ib.auth[0..4], &1u32.to_le_bytes());
    assert_eq!(&ib.auth[0x40..0x40 + 72], &[0x11; 72]);
    assert_eq!(&ib.auth[0x88..0x88 + 72], &[0x22; 72]);
    assert_eq!(&ib.auth[0x240..0x244], &2u32.to_le_bytes());
    assert_eq!(&ib.auth[0x244..0x244 + 72], &[0x33; 72]);
    assert_eq!(&ib.auth[0x28c..0x28c + 72], &[0x44; 72]);
    assert!(
        ib.auth[0x680..].iter().all(|b| *b == 0),
        "author key disabled"
    );
    assert!(!ib.author_key_enabled);
}

/// Two parameter areas with every usage cvmm fills: area 0 (4 KiB) holds the vCPU count, the
/// environment info and the command line; area 1 (8 KiB) the memory map.
fn all_params_file() -> Vec<u8> {
    let at = |area: u32, byte_offset: u32| IGVM_VHS_PARAMETER {
        parameter_area_index: area,
        byte_offset,
    };
    let insert = |area: u32, gpa: u64| {
        D::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
            gpa,
            compatibility_mask: MASK,
            parameter_area_index: area,
        })
    };
    file(vec![
        page(0x10000, full_page(3)),
        D::ParameterArea {
            number_of_bytes: 0x1000,
            parameter_area_index: 0,
            initial_data: vec![0xee; 16],
        },
        D::ParameterArea {
            number_of_bytes: 0x2000,
            parameter_area_index: 1,
            initial_data: vec![],
        },
        D::VpCount(at(0, 0)),
        D::EnvironmentInfo(at(0, 8)),
        D::CommandLine(at(0, 0x100)),
        D::MemoryMap(at(1, 0)),
        insert(0, 0x30000),
        insert(1, 0x40000),
        vmsa_last(),
    ])
}

fn vm_params() -> IgvmParams {
    use crate::igvm_params::{MemoryKind, MemoryRange};
    IgvmParams {
        cmdline: "console=ttyS0 svsm=1".into(),
        memory: vec![
            MemoryRange {
                gpa: 0x10_0000,
                size: 0x7ff0_0000,
                kind: MemoryKind::Ram,
            },
            MemoryRange {
                gpa: 0,
                size: 0x9fc00,
                kind: MemoryKind::Ram,
            },
            MemoryRange {
                gpa: 0x9fc00,
                size: 0x60400,
                kind: MemoryKind::Reserved,
            },
        ],
    }
}

#[test]
fn o4_parameter_areas_are_filled_and_the_digest_is_unchanged() {
    let f = all_params_file();
    let mut inp = inputs(f.clone(), 1);
    inp.vcpus = 4;
    let filled = crate::plan::LaunchPlan::from_inputs_with(&inp, &vm_params()).unwrap();
    let empty = crate::plan::LaunchPlan::from_inputs(&inp).unwrap();
    // Inserted areas are UNMEASURED: the digest is the igvm crate's, whatever they hold.
    assert_eq!(hex(&filled.digest()), oracle(&f));
    assert_eq!(filled.digest(), empty.digest());
    assert_eq!(
        filled.update_list(),
        [
            (0x10000, 0x1000, PageType::Normal),
            (0x30000, 0x1000, PageType::Unmeasured),
            (0x40000, 0x2000, PageType::Unmeasured),
        ]
    );

    let a0 = filled.ranges[1].data.as_bytes();
    assert_eq!(&a0[0..4], &4u32.to_le_bytes(), "VP_COUNT");
    assert_eq!(&a0[4..8], &[0xee; 4], "initial data kept around the usages");
    assert_eq!(&a0[8..12], &1u32.to_le_bytes(), "ENVIRONMENT_INFO");
    assert_eq!(&a0[0x100..0x115], b"console=ttyS0 svsm=1\0", "COMMAND_LINE");

    let a1 = filled.ranges[2].data.as_bytes();
    let entry = |i: usize| {
        let e = &a1[i * 24..(i + 1) * 24];
        (
            u64::from_le_bytes(e[0..8].try_into().unwrap()),
            u64::from_le_bytes(e[8..16].try_into().unwrap()),
            u16::from_le_bytes(e[16..18].try_into().unwrap()),
        )
    };
    // Sorted; RAM rounded inwards, reserved outwards, in 4 KiB pages; zero terminator.
    assert_eq!(entry(0), (0, 0x9f, 0));
    assert_eq!(entry(1), (0x9f, 0x61, 1));
    assert_eq!(entry(2), (0x100, 0x7ff00, 0));
    assert_eq!(entry(3), (0, 0, 0));

    // Without VMM values the areas still get the vCPU count and an empty command line.
    let a0 = empty.ranges[1].data.as_bytes();
    assert_eq!(&a0[0..4], &4u32.to_le_bytes());
    assert_eq!(a0[0x100], 0);
    assert_eq!(
        &empty.ranges[2].data.as_bytes()[..24],
        &[0u8; 24],
        "terminator only"
    );
}

#[test]
fn parameter_usages_outside_their_area_are_refused() {
    let usage = |d: D| {
        file(vec![
            D::ParameterArea {
                number_of_bytes: 0x1000,
                parameter_area_index: 0,
                initial_data: vec![],
            },
            d,
            D::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
                gpa: 0x30000,
                compatibility_mask: MASK,
                parameter_area_index: 0,
            }),
            vmsa_last(),
        ])
    };
    let at = |byte_offset| IGVM_VHS_PARAMETER {
        parameter_area_index: 0,
        byte_offset,
    };
    let long = IgvmParams {
        cmdline: "x".repeat(0x1000),
        ..vm_params()
    };
    for (d, params, want) in [
        (D::CommandLine(at(0)), &long, "COMMAND_LINE"),
        (D::VpCount(at(0xffe)), &vm_params(), "VP_COUNT"),
        (D::MemoryMap(at(0xff0)), &vm_params(), "MEMORY_MAP"),
        (
            D::EnvironmentInfo(at(u32::MAX)),
            &vm_params(),
            "ENVIRONMENT_INFO",
        ),
    ] {
        let f = usage(d);
        let e = crate::plan::LaunchPlan::from_inputs_with(&inputs(f, 1), params)
            .unwrap_err()
            .to_string();
        assert!(e.contains("test.igvm") && e.contains(want), "{e}");
        assert!(e.contains("outside area 0"), "{e}");
    }
}

#[test]
fn memory_map_encodes_every_kind_and_drops_empty_ranges() {
    use crate::igvm_params::{memory_map, MemoryKind, MemoryRange};
    let r = |gpa, size, kind| MemoryRange { gpa, size, kind };
    let map = memory_map(&[
        r(0x2000_0000, 0x1000, MemoryKind::Persistent),
        r(0x1800, 0x800, MemoryKind::Ram),
        r(0x1000_0800, 0x100, MemoryKind::Reserved),
    ]);
    let entries: Vec<_> = map
        .chunks(24)
        .map(|e| {
            (
                u64::from_le_bytes(e[0..8].try_into().unwrap()),
                u64::from_le_bytes(e[8..16].try_into().unwrap()),
                u16::from_le_bytes(e[16..18].try_into().unwrap()),
                &e[18..24],
            )
        })
        .collect();
    // The RAM range has no whole page and is dropped.
    assert_eq!(
        entries,
        [
            (0x10000, 1, 1, &[0u8; 6][..]),
            (0x20000, 1, 2, &[0u8; 6][..]),
            (0, 0, 0, &[0u8; 6][..]),
        ]
    );
    assert_eq!(crate::igvm_params::command_line("a b"), b"a b\0");
}

/// Two page directives over one guest page are refused, naming the file and both directives
/// with their types and GPAs: 4 KiB over 4 KiB, a 2 MiB page over a 4 KiB one (and the other
/// way round), a parameter area over data, data at the VMSA's GPA. The SNP plan never gets a
/// second LAUNCH_UPDATE of a page.
#[test]
fn overlapping_page_directives_are_refused() {
    let two_mb = IgvmPageDataFlags::new().with_is_2mb_page(true);
    let shared = IgvmPageDataFlags::new().with_shared(true);
    let mut param_over_data = vec![page(0x20000, full_page(1))];
    param_over_data.extend(param_area(0x2000, 0x1f000));
    param_over_data.push(vmsa_last());
    let cases: Vec<(Vec<D>, [&str; 2])> = vec![
        (
            vec![page(0x1000, vec![1]), page(0x1000, vec![2]), vmsa_last()],
            [
                "directive 1 (PAGE_DATA at gpa 0x1000, 0x1000 bytes)",
                "directive 0 (PAGE_DATA at gpa 0x1000, 0x1000 bytes)",
            ],
        ),
        (
            vec![
                page(0x20_3000, vec![1]),
                page_with(0x20_0000, two_mb, IgvmPageDataType::NORMAL, vec![]),
                vmsa_last(),
            ],
            [
                "directive 1 (PAGE_DATA at gpa 0x200000, 0x200000 bytes)",
                "directive 0 (PAGE_DATA at gpa 0x203000, 0x1000 bytes)",
            ],
        ),
        (
            vec![
                page_with(0x20_0000, two_mb, IgvmPageDataType::NORMAL, vec![]),
                page(0x3f_f000, vec![1]),
                vmsa_last(),
            ],
            [
                "directive 1 (PAGE_DATA at gpa 0x3ff000, 0x1000 bytes)",
                "directive 0 (PAGE_DATA at gpa 0x200000, 0x200000 bytes)",
            ],
        ),
        (
            vec![
                page_with(0x5000, shared, IgvmPageDataType::NORMAL, vec![]),
                page(0x5000, vec![1]),
                vmsa_last(),
            ],
            [
                "directive 1 (PAGE_DATA at gpa 0x5000, 0x1000 bytes)",
                "directive 0 (PAGE_DATA at gpa 0x5000, 0x1000 bytes)",
            ],
        ),
        (
            param_over_data,
            [
                "directive 3 (PARAMETER_INSERT at gpa 0x1f000, 0x2000 bytes)",
                "directive 0 (PAGE_DATA at gpa 0x20000, 0x1000 bytes)",
            ],
        ),
        (
            vec![page(VMSA_GPA, vec![1]), vmsa_last()],
            [
                "directive 1 (SNP_VP_CONTEXT at gpa 0xfffffffff000, 0x1000 bytes)",
                "directive 0 (PAGE_DATA at gpa 0xfffffffff000, 0x1000 bytes)",
            ],
        ),
    ];
    for (directives, [later, earlier]) in cases {
        let e = rule_error(directives, 1);
        assert!(
            e.starts_with("IGVM file test.igvm: ")
                && e.contains(&format!("{later} overlaps {earlier}")),
            "{e}"
        );
    }
    // Adjacent pages (and a 2 MiB page right after 4 KiB ones) are not an overlap.
    let ok = file(vec![
        page(0x1f_f000, vec![1]),
        page_with(0x20_0000, two_mb, IgvmPageDataType::NORMAL, vec![]),
        page(0x40_0000, vec![2]),
        vmsa_last(),
    ]);
    let plan = crate::plan::LaunchPlan::from_inputs(&inputs(ok, 1)).unwrap();
    assert_eq!(
        plan.update_list(),
        [(0x1f_f000, 0x20_2000, PageType::Normal)]
    );
}

#[test]
fn page_claims_find_overlaps_in_any_order_and_refuse_wrapping_ranges() {
    let c = |index, gpa, len| PageClaim {
        index,
        kind: "PAGE_DATA",
        gpa,
        len,
    };
    let mut claims = PageClaims::default();
    claims.claim(c(0, 0x10000, 0x1000)).unwrap();
    claims.claim(c(1, 0x30000, 0x2000)).unwrap();
    claims.claim(c(2, 0x11000, 0x1000)).unwrap();
    claims.claim(c(3, 0x0f000, 0x1000)).unwrap();
    // Below, inside, straddling the start, covering two earlier claims.
    for (gpa, len, hit) in [
        (0x10000, 0x1000, 0),
        (0x31000, 0x1000, 1),
        (0x2f000, 0x2000, 1),
        (0x0e000, 0x3000, 0),
        (0x0e000, 0x2000, 3),
        (0x00000, 0x40000, 1),
    ] {
        let e = claims.claim(c(9, gpa, len)).unwrap_err();
        assert!(e.contains(&format!("overlaps directive {hit} ")), "{e}");
    }
    let e = claims
        .claim(c(9, 0xffff_ffff_ffff_f000, 0x2000))
        .unwrap_err();
    assert!(
        e.contains("directive 9") && e.contains("runs past the end"),
        "{e}"
    );
}
