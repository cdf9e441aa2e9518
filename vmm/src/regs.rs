//! Boot-time vCPU state: identity page tables with 2 MiB pages (1 GiB pages are not assumed:
//! some hypervisors, such as PVM, do not support them), the boot GDT, segment and control
//! registers for the chosen boot protocol, FPU, MSRs and the local APIC's LINT pins.

use crate::boot::{BootProtocol, KernelEntry};
use crate::error::{kvm_call, Result, VmmError};
use crate::layout::*;
use crate::memory::GuestMem;
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

const PDPT: u64 = PML4 + 0x1000;
const PD: u64 = PML4 + 0x2000;
/// Page directories: each maps 1 GiB with 2 MiB pages; four map the low 4 GiB.
const PD_COUNT: u64 = 4;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_2M: u64 = 1 << 7;

/// GDT selectors the boot protocols expect (Linux: __BOOT_CS = 0x10, __BOOT_DS = 0x18).
const SEL_CODE: u16 = 0x10;
const SEL_DATA: u16 = 0x18;
const SEL_TSS: u16 = 0x20;

/// Writes identity-mapped page tables for the low 4 GiB using 2 MiB pages.
pub fn write_page_tables(mem: &GuestMem) -> Result<()> {
    let err = |e: vm_memory::GuestMemoryError| VmmError::Memory(format!("page tables: {e}"));
    mem.write_obj(PDPT | PTE_PRESENT_RW, GuestAddress(PML4))
        .map_err(err)?;
    for i in 0..PD_COUNT {
        let pd = PD + i * 0x1000;
        mem.write_obj(pd | PTE_PRESENT_RW, GuestAddress(PDPT + i * 8))
            .map_err(err)?;
        let mut table = [0u8; 4096];
        for j in 0..512u64 {
            let addr = ((i << 30) | (j << 21)) | PTE_PRESENT_RW | PDE_2M;
            table[(j * 8) as usize..(j * 8 + 8) as usize].copy_from_slice(&addr.to_le_bytes());
        }
        mem.write_slice(&table, GuestAddress(pd)).map_err(err)?;
    }
    Ok(())
}

fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    (u64::from(base & 0xff00_0000) << 32)
        | (u64::from(flags & 0xf0ff) << 40)
        | (u64::from(limit & 0x000f_0000) << 32)
        | (u64::from(base & 0x00ff_ffff) << 16)
        | u64::from(limit & 0xffff)
}

fn segment(entry: u64, selector: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit_raw = (entry & 0xffff) | ((entry >> 32) & 0xf_0000);
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 {
            ((limit_raw << 12) | 0xfff) as u32
        } else {
            limit_raw as u32
        },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Sets the segment and control registers for `entry.protocol`, writing the GDT.
pub fn setup_sregs(mem: &GuestMem, vcpu: &VcpuFd, entry: &KernelEntry) -> Result<()> {
    let long = entry.protocol == BootProtocol::Linux64;
    let code = if long {
        gdt_entry(0xa09b, 0, 0xfffff)
    } else {
        gdt_entry(0xc09b, 0, 0xfffff)
    };
    let data = gdt_entry(0xc093, 0, 0xfffff);
    let tss = gdt_entry(0x808b, 0, 0xfffff);
    let gdt = [0u64, 0, code, data, tss];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT + i as u64 * 8))
            .map_err(|e| VmmError::Memory(format!("GDT: {e}")))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT))
        .map_err(|e| VmmError::Memory(format!("IDT: {e}")))?;

    let mut s: kvm_sregs = vcpu.get_sregs().map_err(kvm_call("KVM_GET_SREGS"))?;
    s.gdt.base = BOOT_GDT;
    s.gdt.limit = (gdt.len() * 8 - 1) as u16;
    s.idt.base = BOOT_IDT;
    s.idt.limit = 7;
    s.cs = segment(code, SEL_CODE);
    let ds = segment(data, SEL_DATA);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (ds, ds, ds, ds, ds);
    s.tr = segment(tss, SEL_TSS);
    if long {
        write_page_tables(mem)?;
        s.cr3 = PML4;
        s.cr4 |= CR4_PAE;
        s.cr0 |= CR0_PE | CR0_ET | CR0_PG;
        s.efer |= EFER_LME | EFER_LMA;
    } else {
        s.cr0 = (s.cr0 | CR0_PE | CR0_ET) & !CR0_PG;
        s.cr4 = 0;
        s.efer = 0;
    }
    vcpu.set_sregs(&s).map_err(kvm_call("KVM_SET_SREGS"))
}

/// Sets the general registers of the boot vCPU.
pub fn setup_regs(vcpu: &VcpuFd, entry: &KernelEntry) -> Result<()> {
    let mut r = kvm_regs {
        rflags: 0x2,
        rip: entry.rip,
        ..Default::default()
    };
    match entry.protocol {
        BootProtocol::Linux64 => {
            r.rsp = BOOT_STACK;
            r.rbp = BOOT_STACK;
            r.rsi = entry.info;
        }
        BootProtocol::Pvh => r.rbx = entry.info,
    }
    vcpu.set_regs(&r).map_err(kvm_call("KVM_SET_REGS"))
}

/// Sets the x87/SSE control words to their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_call("KVM_SET_FPU"))
}

/// Sets the MSRs a booting kernel expects (syscall MSRs cleared, fast strings, MTRRs on, WB).
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let list: &[(u32, u64)] = &[
        (0x174, 0),             // IA32_SYSENTER_CS
        (0x175, 0),             // IA32_SYSENTER_ESP
        (0x176, 0),             // IA32_SYSENTER_EIP
        (0xc000_0081, 0),       // STAR
        (0xc000_0082, 0),       // LSTAR
        (0xc000_0083, 0),       // CSTAR
        (0xc000_0084, 0),       // SYSCALL_MASK
        (0xc000_0102, 0),       // KERNEL_GS_BASE
        (0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
        (0x2ff, (1 << 11) | 6), // MTRRdefType: enabled, write-back
    ];
    let entries: Vec<kvm_msr_entry> = list
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs =
        Msrs::from_entries(&entries).map_err(|e| VmmError::Memory(format!("MSR list: {e:?}")))?;
    let n = vcpu.set_msrs(&msrs).map_err(kvm_call("KVM_SET_MSRS"))?;
    if n != entries.len() {
        tracing::debug!(
            set = n,
            wanted = entries.len(),
            "KVM accepted only some boot MSRs"
        );
    }
    Ok(())
}

/// Wires LINT0 as ExtINT and LINT1 as NMI, as firmware would.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<()> {
    let mut l = vcpu.get_lapic().map_err(kvm_call("KVM_GET_LAPIC"))?;
    let mut set = |off: usize, mode: u32| {
        let raw = &mut l.regs[off..off + 4];
        let mut v = u32::from_le_bytes([raw[0] as u8, raw[1] as u8, raw[2] as u8, raw[3] as u8]);
        v = (v & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            raw[i] = *b as _;
        }
    };
    set(0x350, 7); // LVT LINT0: ExtINT
    set(0x360, 4); // LVT LINT1: NMI
    vcpu.set_lapic(&l).map_err(kvm_call("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tables_identity_map_4g_with_2m_pages() {
        let mem = crate::memory::create(64).unwrap();
        write_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPT);
        for i in 0..4u64 {
            let pdpte: u64 = mem.read_obj(GuestAddress(PDPT + i * 8)).unwrap();
            assert_eq!(pdpte & PDE_2M, 0, "no 1 GiB pages");
            let pd = pdpte & !0xfff;
            let last: u64 = mem.read_obj(GuestAddress(pd + 511 * 8)).unwrap();
            assert_eq!(last & !0xfff, (i << 30) + (511 << 21));
            assert_ne!(last & PDE_2M, 0);
        }
    }

    #[test]
    fn gdt_entries_decode_to_flat_segments() {
        let code = segment(gdt_entry(0xa09b, 0, 0xfffff), SEL_CODE);
        assert_eq!((code.l, code.db, code.type_, code.present), (1, 0, 0xb, 1));
        assert_eq!(code.limit, 0xffff_ffff);
        let code32 = segment(gdt_entry(0xc09b, 0, 0xfffff), SEL_CODE);
        assert_eq!((code32.l, code32.db), (0, 1));
        let data = segment(gdt_entry(0xc093, 0, 0xfffff), SEL_DATA);
        assert_eq!((data.type_, data.s, data.base), (3, 1, 0));
    }
}
