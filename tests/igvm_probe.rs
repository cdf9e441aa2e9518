//! Tier B: an IGVM file booted on plain KVM (`cvmm run --igvm`). The test wraps the probe guest
//! ELF in an IGVM file built here with the `igvm` crate: PT_LOAD segments become PAGE_DATA at
//! their physical addresses, a flat GDT page and a PVH `hvm_start_info` page are added, the
//! command line arrives through a COMMAND_LINE parameter area inserted where the start info
//! points, and the BSP starts at the probe's PVH entry from a native VP context in 32-bit
//! protected mode (paging off, flat segments, EBX = start info), as the PVH protocol wants.

mod common;

use common::*;
use igvm::{IgvmDirectiveHeader, IgvmFile, IgvmPlatformHeader, IgvmRevision};
use igvm_defs::{
    IgvmNativeVpContextX64, IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType,
    IGVM_VHS_PARAMETER, IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_SUPPORTED_PLATFORM,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);
const NATIVE: u32 = 1;
const PAGE: u64 = 4096;
const GDT: u64 = 0x5000;
const START_INFO: u64 = 0x6000;
const CMDLINE_AREA: u64 = 0x7000;
const PARAM_AREA: u64 = 0x9000;
const PVH_MAGIC: u32 = 0x336e_c578;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// The probe ELF's pages (physical address -> contents) and its PVH 32-bit entry.
fn elf_pages(elf: &[u8]) -> (BTreeMap<u64, Vec<u8>>, u64) {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF");
    let (phoff, phentsize, phnum) = (
        u64_at(elf, 0x20) as usize,
        u16_at(elf, 0x36) as usize,
        u16_at(elf, 0x38) as usize,
    );
    let mut pages: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut entry = None;
    for i in 0..phnum {
        let ph = &elf[phoff + i * phentsize..];
        let (kind, off, paddr) = (u32_at(ph, 0), u64_at(ph, 8) as usize, u64_at(ph, 24));
        let (filesz, memsz) = (u64_at(ph, 32) as usize, u64_at(ph, 40));
        match kind {
            1 => {
                for gpa in (paddr & !(PAGE - 1)..paddr + memsz).step_by(PAGE as usize) {
                    pages.entry(gpa).or_insert_with(|| vec![0; PAGE as usize]);
                }
                for (i, b) in elf[off..off + filesz].iter().enumerate() {
                    let a = paddr + i as u64;
                    pages.get_mut(&(a & !(PAGE - 1))).unwrap()[(a % PAGE) as usize] = *b;
                }
            }
            4 => {
                let mut n = &elf[off..off + filesz];
                while n.len() >= 12 {
                    let (namesz, descsz, ty) = (u32_at(n, 0), u32_at(n, 4), u32_at(n, 8));
                    let name_end = 12 + namesz.next_multiple_of(4) as usize;
                    let desc = &n[name_end..name_end + descsz as usize];
                    if &n[12..12 + namesz as usize] == b"Xen\0" && ty == XEN_ELFNOTE_PHYS32_ENTRY {
                        entry = Some(u32_at(desc, 0) as u64);
                    }
                    n = &n[name_end + descsz.next_multiple_of(4) as usize..];
                }
            }
            _ => {}
        }
    }
    (pages, entry.expect("the probe ELF has a PVH entry note"))
}

fn page_data(gpa: u64, mut data: Vec<u8>) -> IgvmDirectiveHeader {
    while data.last() == Some(&0) {
        data.pop();
    }
    IgvmDirectiveHeader::PageData {
        gpa,
        compatibility_mask: NATIVE,
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

fn insert(area: u32, gpa: u64) -> IgvmDirectiveHeader {
    IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
        gpa,
        compatibility_mask: NATIVE,
        parameter_area_index: area,
    })
}

/// Builds the IGVM file around the probe; `extra` directives go before the VP context.
fn probe_igvm(extra: Vec<IgvmDirectiveHeader>) -> Vec<u8> {
    let elf = std::fs::read(probe("pvh")).expect("read the probe ELF");
    let (pages, entry) = elf_pages(&elf);

    let mut gdt = Vec::new();
    for e in [0u64, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff] {
        gdt.extend_from_slice(&e.to_le_bytes());
    }
    let mut si = vec![0u8; 56];
    si[0..4].copy_from_slice(&PVH_MAGIC.to_le_bytes());
    si[4..8].copy_from_slice(&1u32.to_le_bytes());
    si[24..32].copy_from_slice(&CMDLINE_AREA.to_le_bytes());

    let mut d = vec![page_data(GDT, gdt), page_data(START_INFO, si)];
    d.extend(pages.into_iter().map(|(gpa, data)| page_data(gpa, data)));
    d.extend([
        IgvmDirectiveHeader::ParameterArea {
            number_of_bytes: 2 * PAGE,
            parameter_area_index: 0,
            initial_data: vec![],
        },
        IgvmDirectiveHeader::CommandLine(param(0, 0)),
        IgvmDirectiveHeader::ParameterArea {
            number_of_bytes: PAGE,
            parameter_area_index: 1,
            initial_data: vec![],
        },
        IgvmDirectiveHeader::VpCount(param(1, 0)),
        IgvmDirectiveHeader::MemoryMap(param(1, 8)),
        insert(0, CMDLINE_AREA),
        insert(1, PARAM_AREA),
        IgvmDirectiveHeader::RequiredMemory {
            gpa: 0x10_0000,
            compatibility_mask: NATIVE,
            number_of_bytes: 4 << 20,
            vtl2_protectable: false,
        },
    ]);
    d.extend(extra);
    let context = IgvmNativeVpContextX64 {
        rax: 0,
        rcx: 0,
        rdx: 0,
        rbx: START_INFO,
        rsp: 0,
        rbp: 0,
        rsi: 0,
        rdi: 0,
        r8: 0,
        r9: 0,
        r10: 0,
        r11: 0,
        r12: 0,
        r13: 0,
        r14: 0,
        r15: 0,
        rip: entry,
        rflags: 2,
        idtr_base: 0,
        idtr_limit: 0,
        reserved: [0; 2],
        gdtr_limit: 23,
        gdtr_base: GDT,
        code_selector: 0x08,
        code_attributes: 0xc09b,
        code_base: 0,
        code_limit: 0xffff_ffff,
        data_selector: 0x10,
        data_attributes: 0xc093,
        data_base: 0,
        data_limit: 0xffff_ffff,
        gs_base: 0,
        cr0: 0x11, // PE | ET: protected mode, paging off
        cr3: 0,
        cr4: 0,
        efer: 0,
    };
    d.push(IgvmDirectiveHeader::X64NativeVpContext {
        compatibility_mask: NATIVE,
        vp_index: 0,
        context: Box::new(context),
    });
    let platform = IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
        compatibility_mask: NATIVE,
        highest_vtl: 0,
        platform_type: IgvmPlatformType::NATIVE,
        platform_version: 1,
        shared_gpa_boundary: 0,
    });
    let rev = IgvmRevision::V2 {
        arch: igvm::Arch::X64,
        page_size: 4096,
    };
    let file = IgvmFile::new(rev, vec![platform], vec![], d).expect("a valid IGVM file");
    let mut out = Vec::new();
    file.serialize(&mut out).expect("serialize");
    out
}

fn write_igvm(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("igvm-probe");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn field<'a>(out: &'a str, key: &str) -> Option<&'a str> {
    out.lines()
        .filter_map(|l| l.strip_prefix("cvmm-probe: "))
        .flat_map(|l| l.split_whitespace())
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn igvm_wrapped_probe_boots_on_plain_kvm() {
    if !kvm_available("tier B IGVM") {
        return;
    }
    let path = write_igvm("probe.igvm", &probe_igvm(vec![]));
    let file = path.to_str().unwrap();
    for (smp, tee) in [("1", "none"), ("2", "auto")] {
        let append = format!("probe.exit=poweroff igvm.smp={smp}");
        let r = run_cvmm(
            &[
                "run", "--igvm", file, "--memory", "128M", "--smp", smp, "--tee", tee, "--append",
                &append,
            ],
            LIMIT,
        );
        assert_eq!(r.code, Some(0), "smp {smp}: {}\n{}", r.stdout, r.stderr);
        assert!(
            r.stdout.contains("cvmm-probe: start proto=pvh"),
            "{}",
            r.stdout
        );
        // The command line reached the guest through the IGVM COMMAND_LINE parameter.
        assert!(
            r.stdout
                .contains(&format!("cvmm-probe: cmdline={append}\n")),
            "{}",
            r.stdout
        );
        assert_eq!(field(&r.stdout, "cpus"), Some(smp), "{}", r.stdout);
        assert!(r.stdout.contains("cvmm-probe: ready"), "{}", r.stdout);
        assert!(r.stdout.contains("cvmm-probe: exit=poweroff"));
        assert!(r.stderr.contains("cvmm: guest powered off"), "{}", r.stderr);
    }
}

#[test]
fn igvm_needing_more_memory_than_given_is_an_input_error() {
    if !kvm_available("tier B IGVM") {
        return;
    }
    let big = IgvmDirectiveHeader::RequiredMemory {
        gpa: 0x400_0000,
        compatibility_mask: NATIVE,
        number_of_bytes: 256 << 20,
        vtl2_protectable: false,
    };
    let path = write_igvm("big.igvm", &probe_igvm(vec![big]));
    let r = run_cvmm(
        &["run", "--igvm", path.to_str().unwrap(), "--memory", "128M"],
        LIMIT,
    );
    assert_eq!(r.code, Some(2), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("REQUIRED_MEMORY") && r.stderr.contains("gpa 0x4000000+0x10000000"),
        "{}",
        r.stderr
    );
    assert!(!r.stdout.contains("cvmm-probe"), "the guest must not run");
}

#[test]
fn garbage_igvm_and_kernel_plus_igvm_are_refused() {
    let path = write_igvm("garbage.igvm", b"IGVM? no, just text");
    let r = run_cvmm(&["run", "--igvm", path.to_str().unwrap()], LIMIT);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    if kvm_available("tier B IGVM") {
        assert!(
            r.stderr.contains("garbage.igvm") && r.stderr.contains("cannot parse"),
            "{}",
            r.stderr
        );
    }
    let r = run_cvmm(
        &["run", "--igvm", path.to_str().unwrap(), "--kernel", "/k"],
        LIMIT,
    );
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(
        r.stderr.contains("--kernel") && r.stderr.contains("--igvm"),
        "{}",
        r.stderr
    );
}
