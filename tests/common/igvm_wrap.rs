//! Wraps a PVH ELF kernel (the probe guest, or Debian's stock `vmlinux`) and an optional initrd
//! in a native-platform IGVM file, built with the `igvm` crate. Shared by `tests/igvm_probe.rs`
//! and `examples/mkigvm.rs` (each includes this file as a module).
//!
//! What the VMM knows (RAM layout, vCPU count, command line) stays a parameter the VMM fills,
//! so one file boots with any `--memory`, `--smp` and `--append`. Guest-physical layout:
//!
//! | gpa | what |
//! |---|---|
//! | 0x5000 | GDT: null, flat 32-bit code (0x08), flat data (0x10) |
//! | 0x6000 | PVH `hvm_start_info` v1; +0x80 the module list (the initrd), +0x100 the PVH memory map the shim writes |
//! | 0x7000 | COMMAND_LINE parameter area (2 pages), the start info's `cmdline_paddr` |
//! | 0x9000 | parameter area: VP_COUNT at +0, MEMORY_MAP (IGVM entries) at +8 |
//! | 0xA000 | the shim (32-bit code, below) |
//! | PT_LOAD | every loadable segment at its physical address; memsz beyond filesz as zero pages |
//! | above the image | the initrd, from the next 2 MiB boundary |
//!
//! PVH wants the memory map as `hvm_memmap_table_entry` (address, size, e820 type), IGVM hands
//! it over as `IGVM_VHS_MEMORY_MAP_ENTRY` (page number, page count, IGVM type), so the BSP
//! starts in a 98-byte shim rather than at the kernel: the native VP context enters it in 32-bit
//! protected mode with paging off (as PVH does), EBX = start info, ESI = the IGVM map, EBP =
//! the kernel's PVH entry. It converts the map (IGVM MEMORY -> e820 RAM, every other type ->
//! reserved; up to the all-zero terminator or 128 entries), stores the count in
//! `memmap_entries` and jumps to EBP with EBX unchanged. It touches no stack and no memory
//! but the start info page.

#![allow(dead_code)] // each includer uses its own part

use igvm::{IgvmDirectiveHeader, IgvmFile, IgvmPlatformHeader, IgvmRevision};
use igvm_defs::{
    IgvmNativeVpContextX64, IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType,
    IGVM_VHS_PARAMETER, IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_SUPPORTED_PLATFORM,
};
use std::collections::BTreeMap;

/// Compatibility mask of the one (native) platform.
pub const NATIVE: u32 = 1;
pub const PAGE: u64 = 4096;
pub const GDT: u64 = 0x5000;
pub const START_INFO: u64 = 0x6000;
pub const MODLIST: u64 = START_INFO + 0x80;
pub const PVH_MEMMAP: u64 = START_INFO + 0x100;
pub const CMDLINE_AREA: u64 = 0x7000;
pub const PARAM_AREA: u64 = 0x9000;
/// Where in the parameter area the IGVM memory map goes (after the u32 VP count, 8-aligned).
pub const MEMMAP_OFFSET: u32 = 8;
pub const SHIM: u64 = 0xA000;
/// The pages above, which the ELF must leave free.
const BOOT_PAGES: std::ops::Range<u64> = GDT..SHIM + PAGE;
/// The initrd starts at a multiple of this above the image.
pub const INITRD_ALIGN: u64 = 2 << 20;
const PVH_MAGIC: u32 = 0x336e_c578;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const FOUR_GIB: u64 = 1 << 32;

/// The shim (GNU as, `.code32`), assembled once; offsets on the left.
#[rustfmt::skip]
pub const SHIM_CODE: [u8; 98] = [
    0x8b, 0x7b, 0x28,                   // 00: mov  0x28(%ebx),%edi    edi = memmap_paddr
    0x31, 0xc9,                         // 03: xor  %ecx,%ecx          ecx = entries written
    0x81, 0xf9, 0x80, 0x00, 0x00, 0x00, // 05: cmp  $128,%ecx
    0x73, 0x50,                         // 0b: jae  5d
    0x8b, 0x46, 0x08,                   // 0d: mov  0x8(%esi),%eax     page count, low half
    0x0b, 0x46, 0x0c,                   // 10: or   0xc(%esi),%eax     | high half
    0x74, 0x48,                         // 13: je   5d                 zero: the terminator
    0x8b, 0x06,                         // 15: mov  (%esi),%eax        first page number
    0x8b, 0x56, 0x04,                   // 17: mov  0x4(%esi),%edx
    0x0f, 0xa4, 0xc2, 0x0c,             // 1a: shld $12,%eax,%edx      edx:eax <<= 12
    0xc1, 0xe0, 0x0c,                   // 1e: shl  $12,%eax
    0x89, 0x07,                         // 21: mov  %eax,(%edi)        addr
    0x89, 0x57, 0x04,                   // 23: mov  %edx,0x4(%edi)
    0x8b, 0x46, 0x08,                   // 26: mov  0x8(%esi),%eax     page count
    0x8b, 0x56, 0x0c,                   // 29: mov  0xc(%esi),%edx
    0x0f, 0xa4, 0xc2, 0x0c,             // 2c: shld $12,%eax,%edx
    0xc1, 0xe0, 0x0c,                   // 30: shl  $12,%eax
    0x89, 0x47, 0x08,                   // 33: mov  %eax,0x8(%edi)     size
    0x89, 0x57, 0x0c,                   // 36: mov  %edx,0xc(%edi)
    0xba, 0x01, 0x00, 0x00, 0x00,       // 39: mov  $1,%edx            e820 RAM
    0x66, 0x83, 0x7e, 0x10, 0x00,       // 3e: cmpw $0,0x10(%esi)      IGVM MEMORY?
    0x74, 0x05,                         // 43: je   4a
    0xba, 0x02, 0x00, 0x00, 0x00,       // 45: mov  $2,%edx            e820 reserved
    0x89, 0x57, 0x10,                   // 4a: mov  %edx,0x10(%edi)    type
    0xc7, 0x47, 0x14, 0x00, 0x00, 0x00, 0x00, // 4d: movl $0,0x14(%edi) reserved
    0x83, 0xc6, 0x18,                   // 54: add  $24,%esi
    0x83, 0xc7, 0x18,                   // 57: add  $24,%edi
    0x41,                               // 5a: inc  %ecx
    0xeb, 0xa8,                         // 5b: jmp  05
    0x89, 0x4b, 0x30,                   // 5d: mov  %ecx,0x30(%ebx)    memmap_entries
    0xff, 0xe5,                         // 60: jmp  *%ebp              the kernel's PVH entry
];

/// Where things landed, for logs and tests.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The kernel's PVH 32-bit entry (XEN_ELFNOTE_PHYS32_ENTRY).
    pub entry: u64,
    /// Start and end (exclusive, page-aligned) of the loaded segments.
    pub image: (u64, u64),
    /// Start and length of the initrd, if any.
    pub initrd: Option<(u64, u64)>,
    /// PAGE_DATA directives, and how many of them carry no bytes (zero pages).
    pub pages: usize,
    pub zero_pages: usize,
    /// The REQUIRED_MEMORY range (start, length).
    pub required: (u64, u64),
}

/// The IGVM file and its layout.
#[derive(Debug, Clone)]
pub struct Wrapped {
    pub igvm: Vec<u8>,
    pub layout: Layout,
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Loadable contents of a PVH ELF: page address -> page, and the PVH entry.
pub struct ElfImage {
    pub pages: BTreeMap<u64, Vec<u8>>,
    pub entry: u64,
}

/// Reads an x86-64 ELF's PT_LOAD segments (at their physical addresses, each below 4 GiB;
/// the part of memsz beyond filesz is zero) and its Xen PHYS32_ENTRY note.
pub fn elf_pages(elf: &[u8]) -> Result<ElfImage, String> {
    let short = || "truncated ELF".to_string();
    if elf.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF file".into());
    }
    if elf[4] != 2 || elf[5] != 1 || u16_at(elf, 0x12) != Some(0x3e) {
        return Err("not a little-endian 64-bit x86-64 ELF".into());
    }
    let phoff = u64_at(elf, 0x20).ok_or_else(short)? as usize;
    let phentsize = usize::from(u16_at(elf, 0x36).ok_or_else(short)?);
    let phnum = usize::from(u16_at(elf, 0x38).ok_or_else(short)?);
    if phentsize < 56 {
        return Err(format!(
            "program header entries of {phentsize} bytes (want 56)"
        ));
    }
    let mut pages: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut entry = None;
    let mut loads = Vec::new();
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i * phentsize)
            .and_then(|o| elf.get(o..o + phentsize))
            .ok_or_else(|| format!("program header {i} lies outside the file"))?;
        let field = |o| u64_at(ph, o).unwrap_or(0);
        let (kind, off, paddr) = (u32_at(ph, 0).unwrap_or(0), field(8), field(24));
        let (filesz, memsz) = (field(32), field(40));
        let bytes = usize::try_from(off)
            .ok()
            .zip(usize::try_from(filesz).ok())
            .and_then(|(o, n)| elf.get(o..o.checked_add(n)?))
            .ok_or_else(|| {
                format!(
                    "segment {i}: {filesz:#x} bytes at file offset {off:#x} lie outside the file"
                )
            })?;
        match kind {
            PT_LOAD if memsz > 0 => {
                if filesz > memsz {
                    return Err(format!(
                        "segment {i}: filesz {filesz:#x} is larger than memsz {memsz:#x}"
                    ));
                }
                let end = paddr
                    .checked_add(memsz)
                    .filter(|&e| e <= FOUR_GIB)
                    .ok_or_else(|| {
                        format!(
                            "segment {i}: paddr {paddr:#x}+{memsz:#x} does not end below 4 GiB \
                             (PVH enters in 32-bit mode)"
                        )
                    })?;
                let first = paddr & !(PAGE - 1);
                if first < BOOT_PAGES.end && end > BOOT_PAGES.start {
                    return Err(format!(
                        "segment {i}: paddr {paddr:#x}+{memsz:#x} overlaps the boot pages \
                         {:#x}..{:#x}",
                        BOOT_PAGES.start, BOOT_PAGES.end
                    ));
                }
                for gpa in (first..end).step_by(PAGE as usize) {
                    pages.entry(gpa).or_insert_with(|| vec![0; PAGE as usize]);
                }
                // Copy page by page (a stock kernel is tens of MiB).
                let (mut a, mut src) = (paddr, bytes);
                while !src.is_empty() {
                    let o = (a % PAGE) as usize;
                    let n = src.len().min(PAGE as usize - o);
                    pages
                        .get_mut(&(a - o as u64))
                        .expect("page allocated above")[o..o + n]
                        .copy_from_slice(&src[..n]);
                    a += n as u64;
                    src = &src[n..];
                }
                loads.push((paddr, end));
            }
            PT_NOTE => {
                let mut n = bytes;
                while n.len() >= 12 {
                    let (namesz, descsz, ty) = (
                        u32_at(n, 0).unwrap_or(0) as usize,
                        u32_at(n, 4).unwrap_or(0) as usize,
                        u32_at(n, 8).unwrap_or(0),
                    );
                    let name_end = 12 + namesz.next_multiple_of(4);
                    let desc = n
                        .get(name_end..name_end + descsz)
                        .ok_or_else(|| format!("segment {i}: truncated note"))?;
                    if &n[12..12 + namesz] == b"Xen\0" && ty == XEN_ELFNOTE_PHYS32_ENTRY {
                        entry = Some(u64::from(u32_at(desc, 0).ok_or_else(|| {
                            format!("segment {i}: PHYS32_ENTRY note of {descsz} bytes")
                        })?));
                    }
                    n = n
                        .get(name_end + descsz.next_multiple_of(4)..)
                        .unwrap_or(&[]);
                }
            }
            _ => {}
        }
    }
    let entry = entry.ok_or("no PVH entry note (Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY, 18)")?;
    if !loads.iter().any(|&(s, e)| (s..e).contains(&entry)) {
        return Err(format!(
            "the PVH entry {entry:#x} is not inside a loadable segment"
        ));
    }
    Ok(ElfImage { pages, entry })
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

fn put(buf: &mut [u8], off: usize, v: &[u8]) {
    buf[off..off + v.len()].copy_from_slice(v);
}

/// Builds the IGVM file for `elf` (a PVH ELF) and `initrd`; `extra` directives go before
/// the VP context.
pub fn wrap_pvh_elf(
    elf: &[u8],
    initrd: Option<&[u8]>,
    extra: Vec<IgvmDirectiveHeader>,
) -> Result<Wrapped, String> {
    let ElfImage { mut pages, entry } = elf_pages(elf)?;
    let image = match (pages.keys().next(), pages.keys().next_back()) {
        (Some(&first), Some(&last)) => (first, last + PAGE),
        _ => return Err("the ELF has no loadable segment".into()),
    };
    let mut end = image.1;
    let initrd = match initrd {
        Some(rd) if !rd.is_empty() => {
            let at = image.1.next_multiple_of(INITRD_ALIGN);
            let len = rd.len() as u64;
            if at + len > FOUR_GIB {
                return Err(format!(
                    "the initrd ({len} bytes at {at:#x}) does not fit below 4 GiB"
                ));
            }
            for (i, chunk) in rd.chunks(PAGE as usize).enumerate() {
                pages.insert(at + i as u64 * PAGE, chunk.to_vec());
            }
            end = (at + len).next_multiple_of(PAGE);
            Some((at, len))
        }
        _ => None,
    };

    let mut gdt = Vec::new();
    for e in [0u64, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff] {
        gdt.extend_from_slice(&e.to_le_bytes());
    }
    // hvm_start_info v1: magic, version, flags, nr_modules, modlist_paddr, cmdline_paddr,
    // rsdp_paddr (0: the guest scans the BIOS area, where cvmm writes the RSDP),
    // memmap_paddr, memmap_entries (the shim's).
    let mut si = vec![0u8; (MODLIST - START_INFO) as usize + 32];
    put(&mut si, 0, &PVH_MAGIC.to_le_bytes());
    put(&mut si, 4, &1u32.to_le_bytes());
    put(&mut si, 24, &CMDLINE_AREA.to_le_bytes());
    put(&mut si, 40, &PVH_MEMMAP.to_le_bytes());
    if let Some((at, len)) = initrd {
        put(&mut si, 12, &1u32.to_le_bytes());
        put(&mut si, 16, &MODLIST.to_le_bytes());
        // hvm_modlist_entry: paddr, size, cmdline_paddr (none), reserved.
        let m = (MODLIST - START_INFO) as usize;
        put(&mut si, m, &at.to_le_bytes());
        put(&mut si, m + 8, &len.to_le_bytes());
    }

    let mut d = vec![
        page_data(GDT, gdt),
        page_data(START_INFO, si),
        page_data(SHIM, SHIM_CODE.to_vec()),
    ];
    let count = pages.len();
    let mut zero_pages = 0;
    for (gpa, data) in pages {
        let p = page_data(gpa, data);
        if matches!(&p, IgvmDirectiveHeader::PageData { data, .. } if data.is_empty()) {
            zero_pages += 1;
        }
        d.push(p);
    }
    let required = (image.0, end - image.0);
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
        IgvmDirectiveHeader::MemoryMap(param(1, MEMMAP_OFFSET)),
        insert(0, CMDLINE_AREA),
        insert(1, PARAM_AREA),
        IgvmDirectiveHeader::RequiredMemory {
            gpa: required.0,
            compatibility_mask: NATIVE,
            number_of_bytes: u32::try_from(required.1)
                .map_err(|_| format!("the image spans {:#x} bytes", required.1))?,
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
        rbp: entry,
        rsi: PARAM_AREA + u64::from(MEMMAP_OFFSET),
        rdi: 0,
        r8: 0,
        r9: 0,
        r10: 0,
        r11: 0,
        r12: 0,
        r13: 0,
        r14: 0,
        r15: 0,
        rip: SHIM,
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
    let file = IgvmFile::new(rev, vec![platform], vec![], d)
        .map_err(|e| format!("the igvm crate refused the file: {e}"))?;
    let mut igvm = Vec::new();
    file.serialize(&mut igvm)
        .map_err(|e| format!("serializing the IGVM file: {e}"))?;
    Ok(Wrapped {
        igvm,
        layout: Layout {
            entry,
            image,
            initrd,
            pages: count + 3,
            zero_pages,
            required,
        },
    })
}
