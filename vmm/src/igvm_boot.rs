//! IGVM boot on plain KVM (the file's NATIVE platform): page data is copied into guest memory,
//! parameter areas are filled (command line, vCPU count, memory map, environment info) and
//! inserted, REQUIRED_MEMORY is checked against guest RAM, and the BSP starts from the file's
//! `X64NativeVpContext`. Directives apply in file order, only those whose compatibility mask
//! matches the native platform. Confidential (SNP) launches of IGVM files go through `tee`.

use crate::error::{kvm_call, Result, VmmError};
use crate::memory::{e820_map, GuestMem, E820_RAM};
use igvm::{IgvmDirectiveHeader, IgvmPlatformHeader, IsolationType};
use igvm_defs::{IgvmNativeVpContextX64, IgvmPlatformType, IGVM_VHS_PARAMETER};
use kvm_bindings::{kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;
use std::collections::HashMap;
use tee::igvm::{PageClaim, PageClaims};
use tee::igvm_params::{MemoryKind, MemoryRange};
#[cfg(test)]
use tee::igvm_params::{IGVM_MEMORY, IGVM_PLATFORM_RESERVED, MEMMAP_ENTRY};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

const PAGE_4K: u64 = 4096;
/// Largest parameter area cvmm fills (a bound on what a hostile file can make it allocate).
pub const MAX_PARAMETER_AREA: u64 = 16 << 20;
const CR0_PG: u64 = 1 << 31;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// What the VMM supplies to the IGVM parameters.
#[derive(Debug, Clone)]
pub struct NativeParams<'a> {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub cmdline: &'a str,
}

/// The loaded file: the BSP's initial state.
#[derive(Debug, Clone)]
pub struct NativeBoot {
    pub context: IgvmNativeVpContextX64,
    /// Directives that were applied (for logs and tests).
    pub pages_loaded: u64,
    pub parameter_inserts: u32,
}

fn bad(name: &str, reason: String) -> VmmError {
    VmmError::Input(format!("IGVM file '{name}': {reason}"))
}

/// Parses `data` and loads its native-platform directives into `mem`.
pub fn load_native(
    mem: &GuestMem,
    name: &str,
    data: &[u8],
    params: &NativeParams,
) -> Result<NativeBoot> {
    // The tee parser turns the igvm crate's panics on hostile headers into errors.
    let file = tee::igvm::parse_file(name, data, IsolationType::NotIsolated)
        .map_err(|e| VmmError::Input(e.to_string()))?;
    let mask = file
        .platforms()
        .iter()
        .find_map(|p| match p {
            IgvmPlatformHeader::SupportedPlatform(sp)
                if sp.platform_type == IgvmPlatformType::NATIVE =>
            {
                Some(sp.compatibility_mask)
            }
            _ => None,
        })
        .ok_or_else(|| {
            bad(
                name,
                "no NATIVE platform header (plain KVM boots only native IGVM files; use \
                 --tee snp for SEV-SNP files)"
                    .into(),
            )
        })?;
    let mut l = Loader {
        mem,
        name,
        params,
        values: tee::igvm_params::IgvmParams {
            cmdline: params.cmdline.to_string(),
            memory: memory_ranges(params.memory_mib),
        },
        areas: HashMap::new(),
        claims: PageClaims::default(),
        context: None,
        pages_loaded: 0,
        parameter_inserts: 0,
    };
    for (index, d) in file.directives().iter().enumerate() {
        if d.compatibility_mask().is_none_or(|m| m & mask != 0) {
            l.directive(index, d)?;
        }
    }
    let context = l
        .context
        .ok_or_else(|| bad(name, "no X64NativeVpContext for vp 0".into()))?;
    tracing::info!(
        file = name,
        pages = l.pages_loaded,
        parameter_inserts = l.parameter_inserts,
        rip = format!("{:#x}", context.rip),
        "IGVM file loaded (native platform)"
    );
    Ok(NativeBoot {
        context,
        pages_loaded: l.pages_loaded,
        parameter_inserts: l.parameter_inserts,
    })
}

struct Loader<'a> {
    mem: &'a GuestMem,
    name: &'a str,
    params: &'a NativeParams<'a>,
    /// What the parameter usages insert (command line, memory map), built once.
    values: tee::igvm_params::IgvmParams,
    areas: HashMap<u32, Vec<u8>>,
    /// Guest pages claimed by page data and parameter inserts (one directive per page).
    claims: PageClaims,
    context: Option<IgvmNativeVpContextX64>,
    pages_loaded: u64,
    parameter_inserts: u32,
}

impl Loader<'_> {
    fn err(&self, index: usize, what: &str, reason: String) -> VmmError {
        bad(self.name, format!("directive {index} ({what}): {reason}"))
    }

    /// Claims the pages of one directive (see [`PageClaims`]).
    fn claim(&mut self, index: usize, kind: &'static str, gpa: u64, len: u64) -> Result<()> {
        self.claims
            .claim(PageClaim {
                index,
                kind,
                gpa,
                len,
            })
            .map_err(|why| bad(self.name, why))
    }

    fn write(&self, index: usize, what: &str, gpa: u64, bytes: &[u8]) -> Result<()> {
        if !self.mem.check_range(GuestAddress(gpa), bytes.len()) {
            return Err(self.err(
                index,
                what,
                format!(
                    "gpa {gpa:#x}+{:#x} is outside guest RAM ({} MiB)",
                    bytes.len(),
                    self.params.memory_mib
                ),
            ));
        }
        self.mem
            .write_slice(bytes, GuestAddress(gpa))
            .map_err(|e| self.err(index, what, format!("writing gpa {gpa:#x}: {e}")))
    }

    fn directive(&mut self, index: usize, d: &IgvmDirectiveHeader) -> Result<()> {
        match d {
            IgvmDirectiveHeader::PageData {
                gpa, flags, data, ..
            } => {
                let len = tee::igvm::page_data_size(*gpa, flags.is_2mb_page(), data.len())
                    .map_err(|why| self.err(index, "PAGE_DATA", why))?;
                self.claim(index, "PAGE_DATA", *gpa, len)?;
                let mut page = vec![0u8; len as usize];
                page[..data.len()].copy_from_slice(data);
                self.write(index, "PAGE_DATA", *gpa, &page)?;
                self.pages_loaded += len / PAGE_4K;
            }
            IgvmDirectiveHeader::ParameterArea {
                number_of_bytes,
                parameter_area_index,
                initial_data,
            } => {
                let n = *number_of_bytes;
                if n == 0
                    || n % PAGE_4K != 0
                    || n > MAX_PARAMETER_AREA
                    || initial_data.len() as u64 > n
                {
                    return Err(self.err(
                        index,
                        "PARAMETER_AREA",
                        format!(
                            "area {parameter_area_index} has size {n:#x} (whole pages up to \
                             {MAX_PARAMETER_AREA:#x}) and {} bytes of initial data",
                            initial_data.len()
                        ),
                    ));
                }
                let mut area = vec![0u8; n as usize];
                area[..initial_data.len()].copy_from_slice(initial_data);
                self.areas.insert(*parameter_area_index, area);
            }
            IgvmDirectiveHeader::VpCount(_)
            | IgvmDirectiveHeader::CommandLine(_)
            | IgvmDirectiveHeader::MemoryMap(_)
            | IgvmDirectiveHeader::EnvironmentInfo(_) => {
                // The same values as the SEV-SNP path (ENVIRONMENT_INFO bit 0 memory_is_shared:
                // without isolation all guest memory is host-visible).
                let vcpus = self.params.vcpus;
                if let Some((what, p, bytes)) =
                    tee::igvm_params::usage_bytes(d, vcpus, &self.values)
                {
                    self.param(index, what, p, &bytes)?;
                }
            }
            IgvmDirectiveHeader::Madt(_)
            | IgvmDirectiveHeader::Srat(_)
            | IgvmDirectiveHeader::Slit(_)
            | IgvmDirectiveHeader::Pptt(_)
            | IgvmDirectiveHeader::MmioRanges(_)
            | IgvmDirectiveHeader::DeviceTree(_) => {
                tracing::warn!(
                    file = self.name,
                    directive = index,
                    "IGVM parameter not supplied by cvmm (left zero); the guest finds ACPI \
                     tables in the BIOS area instead"
                );
            }
            IgvmDirectiveHeader::ParameterInsert(ins) => {
                let area = self
                    .areas
                    .remove(&ins.parameter_area_index)
                    .ok_or_else(|| {
                        self.err(
                            index,
                            "PARAMETER_INSERT",
                            format!(
                                "unknown or already inserted parameter area {}",
                                ins.parameter_area_index
                            ),
                        )
                    })?;
                if ins.gpa % PAGE_4K != 0 {
                    return Err(self.err(
                        index,
                        "PARAMETER_INSERT",
                        format!("gpa {:#x} is not 4 KiB-aligned", ins.gpa),
                    ));
                }
                self.claim(index, "PARAMETER_INSERT", ins.gpa, area.len() as u64)?;
                self.write(index, "PARAMETER_INSERT", ins.gpa, &area)?;
                self.parameter_inserts += 1;
            }
            IgvmDirectiveHeader::RequiredMemory {
                gpa,
                number_of_bytes,
                ..
            } if !self
                .mem
                .check_range(GuestAddress(*gpa), *number_of_bytes as usize) =>
            {
                return Err(self.err(
                    index,
                    "REQUIRED_MEMORY",
                    format!(
                        "gpa {gpa:#x}+{number_of_bytes:#x} is not guest RAM (the VM has {} \
                         MiB; give more with --memory)",
                        self.params.memory_mib
                    ),
                ));
            }
            IgvmDirectiveHeader::X64NativeVpContext {
                vp_index, context, ..
            } => {
                if *vp_index != 0 {
                    return Err(self.err(
                        index,
                        "X64_NATIVE_VP_CONTEXT",
                        format!("only vp 0 (the BSP) can be given a context, not vp {vp_index}"),
                    ));
                }
                if self.context.is_some() {
                    return Err(self.err(
                        index,
                        "X64_NATIVE_VP_CONTEXT",
                        "a second context for vp 0".into(),
                    ));
                }
                check_segment_attrs(context)
                    .map_err(|r| self.err(index, "X64_NATIVE_VP_CONTEXT", r))?;
                self.context = Some(**context);
            }
            IgvmDirectiveHeader::SnpVpContext { .. }
            | IgvmDirectiveHeader::X64VbsVpContext { .. }
            | IgvmDirectiveHeader::AArch64VbsVpContext { .. }
            | IgvmDirectiveHeader::AArch64CcaVpContext { .. } => {
                return Err(self.err(
                    index,
                    "VP_CONTEXT",
                    "not a native x86-64 context, but its mask matches the native platform".into(),
                ));
            }
            // REQUIRED_MEMORY inside RAM needs nothing more; measurement-only and error-reporting
            // directives mean nothing without isolation.
            _ => {}
        }
        Ok(())
    }

    fn param(
        &mut self,
        index: usize,
        what: &str,
        p: &IGVM_VHS_PARAMETER,
        bytes: &[u8],
    ) -> Result<()> {
        let name = self.name;
        let area = self.areas.get_mut(&p.parameter_area_index).ok_or_else(|| {
            bad(
                name,
                format!(
                    "directive {index} ({what}): unknown parameter area {}",
                    p.parameter_area_index
                ),
            )
        })?;
        let size = area.len();
        let start = p.byte_offset as usize;
        let slot = start
            .checked_add(bytes.len())
            .and_then(|end| area.get_mut(start..end))
            .ok_or_else(|| {
                bad(
                    name,
                    format!(
                        "directive {index} ({what}): {} bytes at offset {start:#x} do not fit \
                         area {} of {size:#x} bytes",
                        bytes.len(),
                        p.parameter_area_index
                    ),
                )
            })?;
        slot.copy_from_slice(bytes);
        Ok(())
    }
}

/// The guest's memory map as IGVM `MEMORY_MAP` entries (sorted, page granular: RAM rounded
/// inwards, reserved ranges outwards), followed by the zero terminator entry.
#[cfg(test)]
pub fn memory_map(memory_mib: u64) -> Vec<u8> {
    tee::igvm_params::memory_map(&memory_ranges(memory_mib))
}

/// The E820 map of a guest with `memory_mib` of RAM as IGVM memory ranges (also what the
/// SEV-SNP launch puts in an IGVM file's MEMORY_MAP).
pub fn memory_ranges(memory_mib: u64) -> Vec<MemoryRange> {
    e820_map(memory_mib)
        .into_iter()
        .map(|(gpa, size, kind)| MemoryRange {
            gpa,
            size,
            kind: if kind == E820_RAM {
                MemoryKind::Ram
            } else {
                MemoryKind::Reserved
            },
        })
        .collect()
}

/// Bits 11:8 of the IGVM segment attributes must be zero (they hold the limit in a descriptor).
fn check_segment_attrs(c: &IgvmNativeVpContextX64) -> std::result::Result<(), String> {
    for (seg, a) in [("code", c.code_attributes), ("data", c.data_attributes)] {
        if a & 0x0f00 != 0 {
            return Err(format!(
                "{seg} segment attributes {a:#06x} have bits 11:8 set"
            ));
        }
    }
    Ok(())
}

/// Decodes IGVM (Hyper-V layout) segment attributes: type 3:0, S 4, DPL 6:5, P 7, AVL 12,
/// L 13, D/B 14, G 15.
pub fn segment(selector: u16, attributes: u16, base: u64, limit: u32) -> kvm_segment {
    let bit = |n: u16| ((attributes >> n) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector,
        type_: (attributes & 0xf) as u8,
        s: bit(4),
        dpl: ((attributes >> 5) & 3) as u8,
        present: bit(7),
        avl: bit(12),
        l: bit(13),
        db: bit(14),
        g: bit(15),
        unusable: u8::from(bit(7) == 0),
        padding: 0,
    }
}

/// Sets the BSP's registers from the native VP context. Registers the context does not name
/// keep KVM's reset values (TR, LDT, APIC base); EFER.LMA follows LME and CR0.PG.
pub fn apply_context(vcpu: &VcpuFd, c: &IgvmNativeVpContextX64) -> Result<()> {
    let mut s = vcpu.get_sregs().map_err(kvm_call("KVM_GET_SREGS"))?;
    s.cs = segment(
        c.code_selector,
        c.code_attributes,
        c.code_base.into(),
        c.code_limit,
    );
    let data = segment(
        c.data_selector,
        c.data_attributes,
        c.data_base.into(),
        c.data_limit,
    );
    (s.ds, s.es, s.fs, s.ss) = (data, data, data, data);
    s.gs = kvm_segment {
        base: c.gs_base,
        ..data
    };
    s.gdt.base = c.gdtr_base;
    s.gdt.limit = c.gdtr_limit;
    s.idt.base = c.idtr_base;
    s.idt.limit = c.idtr_limit;
    s.cr0 = c.cr0;
    s.cr3 = c.cr3;
    s.cr4 = c.cr4;
    s.efer = c.efer;
    if c.efer & EFER_LME != 0 && c.cr0 & CR0_PG != 0 {
        s.efer |= EFER_LMA;
    }
    vcpu.set_sregs(&s).map_err(kvm_call("KVM_SET_SREGS"))?;
    let r = kvm_regs {
        rax: c.rax,
        rbx: c.rbx,
        rcx: c.rcx,
        rdx: c.rdx,
        rsi: c.rsi,
        rdi: c.rdi,
        rsp: c.rsp,
        rbp: c.rbp,
        r8: c.r8,
        r9: c.r9,
        r10: c.r10,
        r11: c.r11,
        r12: c.r12,
        r13: c.r13,
        r14: c.r14,
        r15: c.r15,
        rip: c.rip,
        // Bit 1 of RFLAGS is reserved and reads as one.
        rflags: c.rflags | 2,
    };
    vcpu.set_regs(&r).map_err(kvm_call("KVM_SET_REGS"))
}

#[cfg(test)]
#[path = "igvm_boot_tests.rs"]
mod tests;
