//! Tier B: an IGVM file booted on plain KVM (`cvmm run --igvm`). The test wraps the probe guest
//! ELF in an IGVM file built with the `igvm` crate (`common/igvm_wrap.rs`, shared with
//! `examples/mkigvm.rs`): PT_LOAD segments become PAGE_DATA at their physical addresses, a flat
//! GDT page and a PVH `hvm_start_info` page are added, the command line arrives through a
//! COMMAND_LINE parameter area inserted where the start info points, the memory map through a
//! MEMORY_MAP parameter that a small shim turns into the PVH map, and the BSP starts from a
//! native VP context in 32-bit protected mode (paging off, flat segments, EBX = start info), as
//! the PVH protocol wants. Tier A checks of the builder itself (initrd module, zero pages,
//! refused ELFs) need no KVM.

mod common;
#[path = "common/igvm_wrap.rs"]
mod igvm_wrap;

use common::*;
use igvm::{IgvmDirectiveHeader, IgvmFile, IsolationType};
use igvm_wrap::{wrap_pvh_elf, NATIVE};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// Builds the IGVM file around the probe; `extra` directives go before the VP context.
fn probe_igvm(extra: Vec<IgvmDirectiveHeader>) -> Vec<u8> {
    let elf = std::fs::read(probe("pvh")).expect("read the probe ELF");
    wrap_pvh_elf(&elf, None, extra)
        .expect("wrap the probe")
        .igvm
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

#[test]
fn igvm_memory_map_reaches_the_guest_as_the_pvh_map() {
    if !kvm_available("tier B IGVM") {
        return;
    }
    // The MEMORY_MAP parameter (IGVM entries) is turned into the PVH map by the file's shim:
    // the guest must count the same RAM as with a direct PVH boot, below and above 4 GiB
    // (8G: 3 GiB below the MMIO hole, 5 GiB from 4 GiB, so both halves of every address and
    // size are used).
    let path = write_igvm("probe-memmap.igvm", &probe_igvm(vec![]));
    let pvh = probe("pvh");
    for (memory, mib) in [("128M", "127"), ("8G", "8191")] {
        let base = ["--memory", memory, "--append", "probe.exit=poweroff"];
        let igvm = run_cvmm(
            &[&["run", "--igvm", path.to_str().unwrap()][..], &base].concat(),
            LIMIT,
        );
        let direct = run_cvmm(
            &[&["run", "--kernel", pvh.to_str().unwrap()][..], &base].concat(),
            LIMIT,
        );
        for (how, r) in [("igvm", &igvm), ("direct", &direct)] {
            assert_eq!(
                r.code,
                Some(0),
                "{how} {memory}: {}\n{}",
                r.stdout,
                r.stderr
            );
            assert_eq!(
                field(&r.stdout, "mem_mib"),
                Some(mib),
                "{how} {memory}: {}",
                r.stdout
            );
        }
    }
}

/// A minimal x86-64 ELF: one PT_LOAD per (paddr, file bytes, memsz), and a PT_NOTE with the
/// Xen PHYS32_ENTRY note when `entry` is given.
fn tiny_elf(segments: &[(u64, &[u8], u64)], entry: Option<u32>) -> Vec<u8> {
    let mut note = Vec::new();
    if let Some(e) = entry {
        for v in [4u32, 4, 18] {
            note.extend_from_slice(&v.to_le_bytes());
        }
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&e.to_le_bytes());
    }
    let phnum = segments.len() + usize::from(entry.is_some());
    let mut elf = vec![0u8; 64 + phnum * 56];
    elf[..4].copy_from_slice(b"\x7fELF");
    (elf[4], elf[5], elf[6]) = (2, 1, 1);
    elf[0x10] = 2; // ET_EXEC
    elf[0x12] = 0x3e; // EM_X86_64
    elf[0x20] = 64; // e_phoff
    elf[0x34] = 64; // e_ehsize
    elf[0x36] = 56; // e_phentsize
    elf[0x38] = phnum as u8;
    let mut phdr = |i: usize, kind: u32, off: u64, paddr: u64, filesz: u64, memsz: u64| {
        let h = &mut elf[64 + i * 56..64 + (i + 1) * 56];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        for (o, v) in [
            (8, off),
            (16, paddr),
            (24, paddr),
            (32, filesz),
            (40, memsz),
        ] {
            h[o..o + 8].copy_from_slice(&v.to_le_bytes());
        }
    };
    let mut data = Vec::new();
    let data_start = 64 + phnum as u64 * 56;
    for (i, (paddr, bytes, memsz)) in segments.iter().enumerate() {
        let off = data_start + data.len() as u64;
        phdr(i, 1, off, *paddr, bytes.len() as u64, *memsz);
        data.extend_from_slice(bytes);
    }
    if entry.is_some() {
        let off = data_start + data.len() as u64;
        phdr(
            segments.len(),
            4,
            off,
            0,
            note.len() as u64,
            note.len() as u64,
        );
        data.extend_from_slice(&note);
    }
    elf.extend(data);
    elf
}

/// The pages a native loader would write (gpa -> 4 KiB page), the REQUIRED_MEMORY ranges and
/// the BSP context of an IGVM file.
struct Parsed {
    pages: BTreeMap<u64, Vec<u8>>,
    required: Vec<(u64, u64)>,
    context: igvm_defs::IgvmNativeVpContextX64,
}

fn parse(igvm: &[u8]) -> Parsed {
    let file = IgvmFile::new_from_binary(igvm, Some(IsolationType::NotIsolated)).expect("parse");
    let (mut pages, mut required, mut context) = (BTreeMap::new(), Vec::new(), None);
    for d in file.directives() {
        match d {
            IgvmDirectiveHeader::PageData { gpa, data, .. } => {
                let mut page = data.clone();
                page.resize(4096, 0);
                assert!(pages.insert(*gpa, page).is_none(), "two pages at {gpa:#x}");
            }
            IgvmDirectiveHeader::RequiredMemory {
                gpa,
                number_of_bytes,
                ..
            } => required.push((*gpa, u64::from(*number_of_bytes))),
            IgvmDirectiveHeader::X64NativeVpContext { context: c, .. } => context = Some(**c),
            _ => {}
        }
    }
    Parsed {
        pages,
        required,
        context: context.expect("a native VP context"),
    }
}

impl Parsed {
    /// `len` bytes from `gpa`; every page on the way must be PAGE_DATA.
    fn read(&self, gpa: u64, len: u64) -> Vec<u8> {
        (gpa..gpa + len)
            .map(|a| {
                let page = self.pages.get(&(a & !4095)).unwrap_or_else(|| {
                    panic!("gpa {a:#x} is not loaded by the file");
                });
                page[(a % 4096) as usize]
            })
            .collect()
    }
    fn u32(&self, gpa: u64) -> u32 {
        u32::from_le_bytes(self.read(gpa, 4).try_into().unwrap())
    }
    fn u64(&self, gpa: u64) -> u64 {
        u64::from_le_bytes(self.read(gpa, 8).try_into().unwrap())
    }
}

#[test]
fn wrapped_initrd_is_a_pvh_module_above_the_image_and_bss_is_zero_pages() {
    let text: Vec<u8> = (0..5000u32).map(|i| (i % 251 + 1) as u8).collect();
    let data = [0xabu8; 100];
    // .text with a bss tail to 0x104000 (two whole zero pages), a second segment at 2 MiB.
    let elf = tiny_elf(
        &[(0x10_0000, &text, 0x4000), (0x20_0000, &data, 0x100)],
        Some(0x10_0010),
    );
    let initrd: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8 ^ 0x5a).collect();
    let w = wrap_pvh_elf(&elf, Some(&initrd), vec![]).expect("wrap");
    let f = parse(&w.igvm);

    // The segments at their physical addresses, memsz beyond filesz loaded as zeroes.
    assert_eq!(f.read(0x10_0000, 5000), text);
    assert!(f
        .read(0x10_0000 + 5000, 0x4000 - 5000)
        .iter()
        .all(|&b| b == 0));
    assert_eq!(f.read(0x20_0000, 100), data);

    // hvm_start_info (EBX of the BSP): magic, version 1, one module, the module entry.
    let si = f.context.rbx;
    assert_eq!(f.u32(si), 0x336e_c578);
    assert_eq!(f.u32(si + 4), 1);
    assert_eq!(f.u32(si + 12), 1, "nr_modules");
    let modlist = f.u64(si + 16);
    let (rd_at, rd_len) = (f.u64(modlist), f.u64(modlist + 8));
    assert_eq!(rd_len, initrd.len() as u64);
    assert_eq!(
        f.read(rd_at, rd_len),
        initrd,
        "the module's bytes are the initrd"
    );
    assert!(
        rd_at >= 0x20_1000,
        "initrd at {rd_at:#x} overlaps the image"
    );
    assert_eq!(rd_at % (2 << 20), 0);
    assert_eq!(w.layout.initrd, Some((rd_at, rd_len)));

    // REQUIRED_MEMORY covers the image and the initrd.
    assert!(
        f.required
            .iter()
            .any(|&(gpa, n)| gpa <= 0x10_0000 && gpa + n >= rd_at + rd_len),
        "{:?}",
        f.required
    );
    // The BSP starts in the shim, which ends in a jump to the ELF's PVH entry (EBP).
    assert_eq!(f.context.rbp, 0x10_0010);
    assert_eq!(
        f.read(f.context.rip, igvm_wrap::SHIM_CODE.len() as u64),
        igvm_wrap::SHIM_CODE
    );
    // Without an initrd: no module.
    let w = wrap_pvh_elf(&elf, None, vec![]).expect("wrap");
    let f = parse(&w.igvm);
    assert_eq!(f.u32(f.context.rbx + 12), 0, "nr_modules");
}

#[test]
fn elfs_the_builder_cannot_wrap_are_refused() {
    let code = [0x90u8; 16];
    for (elf, why) in [
        (b"MZ not an ELF at all".to_vec(), "not an ELF"),
        (tiny_elf(&[(0x10_0000, &code, 16)], None), "PVH entry note"),
        (
            tiny_elf(&[(0x10_0000, &code, 16)], Some(0x30_0000)),
            "not inside a loadable segment",
        ),
        (
            tiny_elf(&[(0x6000, &code, 16)], Some(0x6000)),
            "overlaps the boot pages",
        ),
        (
            tiny_elf(&[(0xffff_f000, &code, 0x2000)], Some(0xffff_f000)),
            "below 4 GiB",
        ),
    ] {
        let e = wrap_pvh_elf(&elf, None, vec![]).expect_err(why);
        assert!(e.contains(why), "{e}");
    }
    let mut truncated = tiny_elf(&[(0x10_0000, &code, 16)], Some(0x10_0000));
    truncated.truncate(64 + 56);
    let e = wrap_pvh_elf(&truncated, None, vec![]).expect_err("truncated");
    assert!(e.contains("outside the file"), "{e}");
}
