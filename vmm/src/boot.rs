//! Direct kernel boot: a bzImage through the Linux 64-bit boot protocol, or an ELF vmlinux
//! through its PVH entry (linux-loader), with the initrd, the command line, the e820 map and the
//! ACPI RSDP handed over in `boot_params` or `hvm_start_info`.

use crate::error::{Result, VmmError};
use crate::layout::*;
use crate::memory::{e820_map, GuestMem, E820_RAM};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, KernelLoader};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use vm_memory::{Address, Bytes, GuestAddress};

const XLF_KERNEL_64: u16 = 1 << 0;
const LOADED_HIGH: u8 = 1 << 0;
const CAN_USE_HEAP: u8 = 1 << 7;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const PVH_MAGIC: u32 = 0x336e_c578;
const PVH_MODLIST: u64 = 0x6100;

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// Linux 64-bit boot protocol: long mode, RSI = zero page.
    Linux64,
    /// PVH: 32-bit protected mode without paging, EBX = `hvm_start_info`.
    Pvh,
}

impl BootProtocol {
    /// Short name for logs and the timeline.
    pub fn name(self) -> &'static str {
        match self {
            BootProtocol::Linux64 => "linux",
            BootProtocol::Pvh => "pvh",
        }
    }
}

/// Where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelEntry {
    /// Boot protocol.
    pub protocol: BootProtocol,
    /// Entry point (guest physical).
    pub rip: u64,
    /// Boot information pointer (zero page or start info).
    pub info: u64,
}

/// What the boot needs besides the kernel.
pub struct BootInputs<'a> {
    /// Kernel image path.
    pub kernel: &'a Path,
    /// Initrd path.
    pub initrd: Option<&'a Path>,
    /// Command line.
    pub cmdline: &'a str,
    /// Guest memory size in MiB.
    pub memory_mib: u64,
    /// Guest address of the ACPI RSDP.
    pub rsdp: u64,
}

fn open(what: &'static str, path: &Path) -> Result<File> {
    File::open(path).map_err(|source| VmmError::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn input(msg: String) -> VmmError {
    VmmError::Input(msg)
}

/// Kernel image kinds cvmm recognises.
#[derive(Debug, PartialEq, Eq)]
enum ImageKind {
    Elf,
    BzImage,
}

fn sniff(file: &mut File, path: &Path) -> Result<ImageKind> {
    let mut head = [0u8; 0x206];
    let n = read_up_to(file, &mut head).map_err(|source| VmmError::ReadFile {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    })?;
    if n >= 4 && &head[..4] == b"\x7fELF" {
        return Ok(ImageKind::Elf);
    }
    if n >= 0x206 && head[0x1fe..0x200] == [0x55, 0xaa] && &head[0x202..0x206] == b"HdrS" {
        return Ok(ImageKind::BzImage);
    }
    Err(input(format!(
        "kernel '{}' is neither a bzImage nor an ELF vmlinux ({n} bytes read, no 'HdrS' or ELF magic)",
        path.display()
    )))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(n)
}

/// Loads kernel, initrd and command line into `mem` and writes the boot information.
pub fn load(mem: &GuestMem, inp: &BootInputs) -> Result<KernelEntry> {
    let mut kfile = open("kernel", inp.kernel)?;
    let kind = sniff(&mut kfile, inp.kernel)?;
    let bad_kernel = |e: linux_loader::loader::Error| {
        input(format!(
            "kernel '{}' could not be loaded: {e}",
            inp.kernel.display()
        ))
    };
    let (entry, header, kernel_end) = match kind {
        ImageKind::BzImage => {
            let r = BzImage::load(mem, None, &mut kfile, Some(GuestAddress(HIMEM_START)))
                .map_err(bad_kernel)?;
            let hdr = r.setup_header.unwrap_or_default();
            if hdr.version < 0x020c || hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(input(format!(
                    "kernel '{}' is a bzImage without a 64-bit entry (boot protocol {:#x}, xloadflags {:#x})",
                    inp.kernel.display(),
                    { hdr.version },
                    { hdr.xloadflags }
                )));
            }
            (
                KernelEntry {
                    protocol: BootProtocol::Linux64,
                    rip: r.kernel_load.raw_value() + 0x200,
                    info: ZERO_PAGE,
                },
                Some(hdr),
                r.kernel_end,
            )
        }
        ImageKind::Elf => {
            let r = Elf::load(mem, None, &mut kfile, Some(GuestAddress(HIMEM_START)))
                .map_err(bad_kernel)?;
            match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(a) => (
                    KernelEntry {
                        protocol: BootProtocol::Pvh,
                        rip: a.raw_value(),
                        info: PVH_INFO,
                    },
                    None,
                    r.kernel_end,
                ),
                _ => {
                    return Err(input(format!(
                        "kernel '{}' is an ELF without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)",
                        inp.kernel.display()
                    )))
                }
            }
        }
    };

    let cmdline_max = match &header {
        Some(h) if h.cmdline_size > 0 => (h.cmdline_size as usize).min(CMDLINE_MAX - 1),
        _ => CMDLINE_MAX - 1,
    };
    if inp.cmdline.len() > cmdline_max {
        return Err(input(format!(
            "--append is {} bytes; the boot protocol allows at most {cmdline_max}",
            inp.cmdline.len()
        )));
    }
    let mut cmdline = Cmdline::new(cmdline_max + 1).map_err(|e| input(format!("{e}")))?;
    if !inp.cmdline.is_empty() {
        cmdline
            .insert_str(inp.cmdline)
            .map_err(|e| input(format!("--append '{}': {e}", inp.cmdline)))?;
    }
    load_cmdline(mem, GuestAddress(CMDLINE), &cmdline)
        .map_err(|e| VmmError::Memory(format!("command line: {e}")))?;

    let initrd_max = header
        .as_ref()
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(u64::from(u32::MAX));
    let initrd = match inp.initrd {
        Some(p) => Some(load_initrd(mem, p, kernel_end, initrd_max, inp.memory_mib)?),
        None => None,
    };

    match entry.protocol {
        BootProtocol::Linux64 => write_zero_page(
            mem,
            header.unwrap_or_default(),
            cmdline_len(inp.cmdline),
            initrd,
            inp,
        )?,
        BootProtocol::Pvh => write_start_info(mem, initrd, inp)?,
    }
    Ok(entry)
}

fn cmdline_len(s: &str) -> u32 {
    s.len() as u32
}

fn load_initrd(
    mem: &GuestMem,
    path: &Path,
    kernel_end: u64,
    addr_max: u64,
    mib: u64,
) -> Result<(u64, u64)> {
    let mut f = open("initrd", path)?;
    let size = f
        .metadata()
        .map_err(|source| VmmError::ReadFile {
            what: "initrd",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let low_end = (mib << 20)
        .min(MMIO_HOLE_START)
        .min(addr_max.saturating_add(1));
    let start = low_end.checked_sub(size).map(|a| a & !0xfff);
    let start = match start {
        Some(a) if a >= kernel_end && size > 0 => a,
        _ if size == 0 => {
            return Err(input(format!("initrd '{}' is empty", path.display())));
        }
        _ => {
            return Err(input(format!(
                "initrd '{}' ({size} bytes) does not fit in guest memory: {} bytes free between the kernel end {kernel_end:#x} and {low_end:#x} (--memory {mib}M)",
                path.display(),
                low_end.saturating_sub(kernel_end)
            )))
        }
    };
    mem.read_exact_volatile_from(GuestAddress(start), &mut f, size as usize)
        .map_err(|e| VmmError::Memory(format!("loading initrd '{}': {e}", path.display())))?;
    Ok((start, size))
}

fn write_zero_page(
    mem: &GuestMem,
    hdr: setup_header,
    cmdline_len: u32,
    initrd: Option<(u64, u64)>,
    inp: &BootInputs,
) -> Result<()> {
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = cmdline_len + 1;
    if let Some((start, size)) = initrd {
        params.hdr.ramdisk_image = start as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = inp.rsdp;
    let map = e820_map(inp.memory_mib);
    for (i, (addr, size, ty)) in map.iter().enumerate() {
        params.e820_table[i].addr = *addr;
        params.e820_table[i].size = *size;
        params.e820_table[i].r#type = *ty;
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE)),
        mem,
    )
    .map_err(|e| VmmError::Memory(format!("zero page: {e}")))
}

fn write_start_info(mem: &GuestMem, initrd: Option<(u64, u64)>, inp: &BootInputs) -> Result<()> {
    let map: Vec<hvm_memmap_table_entry> = e820_map(inp.memory_mib)
        .into_iter()
        .map(|(addr, size, ty)| hvm_memmap_table_entry {
            addr,
            size,
            type_: ty,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE,
        rsdp_paddr: inp.rsdp,
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new::<hvm_start_info>(&info, GuestAddress(PVH_INFO));
    params.set_sections::<hvm_memmap_table_entry>(&map, GuestAddress(PVH_MEMMAP));
    if let Some((start, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST;
        params = BootParams::new::<hvm_start_info>(&info, GuestAddress(PVH_INFO));
        params.set_sections::<hvm_memmap_table_entry>(&map, GuestAddress(PVH_MEMMAP));
        params.set_modules::<hvm_modlist_entry>(
            &[hvm_modlist_entry {
                paddr: start,
                size,
                ..Default::default()
            }],
            GuestAddress(PVH_MODLIST),
        );
    }
    PvhBootConfigurator::write_bootparams::<GuestMem>(&params, mem)
        .map_err(|e| VmmError::Memory(format!("PVH start info: {e}")))
}

/// Total RAM (bytes) the e820 map reports as usable; used by tests.
pub fn usable_ram(mib: u64) -> u64 {
    e820_map(mib)
        .iter()
        .filter(|e| e.2 == E820_RAM)
        .map(|e| e.1)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("cvmm-boot-{}-{name}", std::process::id()));
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    /// A minimal bzImage: one setup sector plus a protected-mode payload.
    fn fake_bzimage(xloadflags: u16) -> Vec<u8> {
        let mut img = vec![0u8; 1024 + 4096];
        img[0x1f1] = 1; // setup_sects
        img[0x1fe] = 0x55;
        img[0x1ff] = 0xaa;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x211] = LOADED_HIGH;
        img[0x214..0x218].copy_from_slice(&0x100000u32.to_le_bytes());
        img[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        img[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        img[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        img[1024] = 0xf4;
        img
    }

    fn inputs<'a>(k: &'a Path, i: Option<&'a Path>, c: &'a str) -> BootInputs<'a> {
        BootInputs {
            kernel: k,
            initrd: i,
            cmdline: c,
            memory_mib: 64,
            rsdp: ACPI_START,
        }
    }

    #[test]
    fn bzimage_loads_with_zero_page_initrd_and_cmdline() {
        let mem = crate::memory::create(64).unwrap();
        let k = tmp("bz", &fake_bzimage(XLF_KERNEL_64));
        let i = tmp("initrd", &[7u8; 5000]);
        let e = load(&mem, &inputs(&k, Some(&i), "console=ttyS0 quiet")).unwrap();
        assert_eq!(e.protocol, BootProtocol::Linux64);
        assert_eq!(e.rip, 0x100200);
        let bp: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE)).unwrap();
        assert_eq!({ bp.hdr.cmd_line_ptr }, CMDLINE as u32);
        assert_eq!({ bp.hdr.ramdisk_size }, 5000);
        assert_eq!({ bp.acpi_rsdp_addr }, ACPI_START);
        assert_eq!(bp.e820_entries, 4);
        let start = u64::from(bp.hdr.ramdisk_image);
        assert_eq!(start % 4096, 0);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(start + 4999)).unwrap(), 7);
        let mut cl = [0u8; 20];
        mem.read_slice(&mut cl, GuestAddress(CMDLINE)).unwrap();
        assert_eq!(&cl[..19], b"console=ttyS0 quiet");
        assert_eq!(cl[19], 0);
        std::fs::remove_file(k).unwrap();
        std::fs::remove_file(i).unwrap();
    }

    #[test]
    fn bad_kernels_and_inputs_are_named() {
        let mem = crate::memory::create(64).unwrap();
        let junk = tmp("junk", b"this is not a kernel at all");
        let err = load(&mem, &inputs(&junk, None, ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("neither a bzImage nor an ELF"), "{err}");
        assert!(err.contains(&*junk.to_string_lossy()));

        let k32 = tmp("bz32", &fake_bzimage(0));
        let err = load(&mem, &inputs(&k32, None, "")).unwrap_err().to_string();
        assert!(err.contains("without a 64-bit entry"), "{err}");

        let k = tmp("bz-ok", &fake_bzimage(XLF_KERNEL_64));
        let long = "x".repeat(3000);
        let err = load(&mem, &inputs(&k, None, &long))
            .unwrap_err()
            .to_string();
        assert!(err.contains("3000 bytes"), "{err}");

        let big = tmp("bigrd", &vec![0u8; 70 << 20]);
        let err = load(&mem, &inputs(&k, Some(&big), ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not fit in guest memory"), "{err}");

        let missing = Path::new("/nonexistent/cvmm-kernel");
        let err = load(&mem, &inputs(missing, None, "")).unwrap_err();
        assert!(matches!(err, VmmError::ReadFile { .. }));
        assert!(err.to_string().contains("/nonexistent/cvmm-kernel"));
        for p in [junk, k32, k, big] {
            std::fs::remove_file(p).unwrap();
        }
    }
}
