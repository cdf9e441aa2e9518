//! Model of the VMSA that KVM builds for an SEV-SNP vCPU at `SNP_LAUNCH_FINISH` (spec §5 step 8,
//! §8.2 item 5, §7.3). The input is the register state cvmm passes to `KVM_SET_REGS/SREGS/FPU/
//! XCRS/DEBUGREGS/MSRS`; the output is the 4 KiB page KVM measures. The reverse direction turns an
//! IGVM VMSA into that register state, because KVM accepts no VMSA page from userspace.

use crate::TeeError;

/// A segment as KVM takes it (`struct kvm_segment`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    pub type_: u8,
    pub present: u8,
    pub dpl: u8,
    pub db: u8,
    pub s: u8,
    pub l: u8,
    pub g: u8,
    pub avl: u8,
}

impl Segment {
    /// The VMCB attribute word KVM derives from the segment (`svm_set_segment`).
    pub fn vmcb_attrib(&self) -> u16 {
        (self.type_ as u16 & 0xf)
            | (self.s as u16 & 1) << 4
            | (self.dpl as u16 & 3) << 5
            | (self.present as u16 & 1) << 7
            | (self.avl as u16 & 1) << 8
            | (self.l as u16 & 1) << 9
            | (self.db as u16 & 1) << 10
            | (self.g as u16 & 1) << 11
    }

    /// Inverse of [`Segment::vmcb_attrib`].
    pub fn from_vmcb(selector: u16, attrib: u16, limit: u32, base: u64) -> Self {
        let bit = |n: u16| ((attrib >> n) & 1) as u8;
        Segment {
            base,
            limit,
            selector,
            type_: (attrib & 0xf) as u8,
            s: bit(4),
            dpl: ((attrib >> 5) & 3) as u8,
            present: bit(7),
            avl: bit(8),
            l: bit(9),
            db: bit(10),
            g: bit(11),
        }
    }

    fn data16(selector: u16, base: u64) -> Self {
        Segment {
            base,
            limit: 0xffff,
            selector,
            type_: 3,
            present: 1,
            s: 1,
            ..Default::default()
        }
    }
}

/// A descriptor-table register (`struct kvm_dtable`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DTable {
    pub base: u64,
    pub limit: u16,
}

/// Register state of one vCPU, as the launcher sets it before `SNP_LAUNCH_FINISH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuRegs {
    /// rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8..r15 (KVM_SET_REGS order).
    pub gprs: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DTable,
    pub idt: DTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    /// x87 control word and MXCSR (KVM_SET_FPU).
    pub fcw: u16,
    pub mxcsr: u32,
    /// XCR0 (KVM_SET_XCRS).
    pub xcr0: u64,
    /// DR6, DR7 (KVM_SET_DEBUGREGS).
    pub dr6: u64,
    pub dr7: u64,
    /// IA32_PAT (KVM_SET_MSRS).
    pub pat: u64,
}

/// Index of RDX in [`VcpuRegs::gprs`].
pub const RDX: usize = 3;

const EFER_SVME: u64 = 1 << 12;
const CR4_MCE: u64 = 1 << 6;
const CR0_CD_NW: u64 = (1 << 30) | (1 << 29);
/// Default PAT after reset.
pub const RESET_PAT: u64 = 0x0007_0406_0007_0406;

impl VcpuRegs {
    /// x86 reset state (as QEMU sets it) for a vCPU that starts at `eip` in real mode with CS
    /// base `eip & 0xffff0000` and IP `eip & 0xffff`; RDX holds the CPUID signature.
    pub fn reset(eip: u32, signature: u32) -> Self {
        let mut gprs = [0u64; 16];
        gprs[RDX] = signature as u64;
        VcpuRegs {
            gprs,
            rip: (eip & 0xffff) as u64,
            rflags: 2,
            cs: Segment {
                type_: 0xb,
                ..Segment::data16(0xf000, (eip & 0xffff_0000) as u64)
            },
            ds: Segment::data16(0, 0),
            es: Segment::data16(0, 0),
            fs: Segment::data16(0, 0),
            gs: Segment::data16(0, 0),
            ss: Segment::data16(0, 0),
            tr: Segment {
                limit: 0xffff,
                type_: 0xb,
                present: 1,
                ..Default::default()
            },
            ldt: Segment {
                limit: 0xffff,
                type_: 2,
                present: 1,
                ..Default::default()
            },
            gdt: DTable {
                base: 0,
                limit: 0xffff,
            },
            idt: DTable {
                base: 0,
                limit: 0xffff,
            },
            cr0: 0x6000_0010,
            cr2: 0,
            cr3: 0,
            cr4: 0,
            efer: 0,
            fcw: 0x37f,
            mxcsr: 0x1f80,
            xcr0: 1,
            dr6: 0xffff_0ff0,
            dr7: 0x400,
            pat: RESET_PAT,
        }
    }
}

/// VMSA field offsets (AMD APM vol. 2, table B-4, SEV-ES save area).
mod off {
    pub const ES: usize = 0x00;
    pub const CS: usize = 0x10;
    pub const SS: usize = 0x20;
    pub const DS: usize = 0x30;
    pub const FS: usize = 0x40;
    pub const GS: usize = 0x50;
    pub const GDTR: usize = 0x60;
    pub const LDTR: usize = 0x70;
    pub const IDTR: usize = 0x80;
    pub const TR: usize = 0x90;
    pub const EFER: usize = 0xd0;
    pub const CR4: usize = 0x148;
    pub const CR3: usize = 0x150;
    pub const CR0: usize = 0x158;
    pub const DR7: usize = 0x160;
    pub const DR6: usize = 0x168;
    pub const RFLAGS: usize = 0x170;
    pub const RIP: usize = 0x178;
    pub const RSP: usize = 0x1d8;
    pub const RAX: usize = 0x1f8;
    pub const CR2: usize = 0x240;
    pub const G_PAT: usize = 0x268;
    pub const RCX: usize = 0x308;
    pub const SEV_FEATURES: usize = 0x3b0;
    pub const XCR0: usize = 0x3e8;
    pub const MXCSR: usize = 0x408;
    pub const X87_FCW: usize = 0x410;
}

/// Byte offset of each entry of [`VcpuRegs::gprs`] in the VMSA (RSP and RAX live elsewhere).
const GPR_OFFSETS: [usize; 16] = [
    off::RAX,
    0x318, // rbx
    off::RCX,
    0x310, // rdx
    0x330, // rsi
    0x338, // rdi
    off::RSP,
    0x328, // rbp
    0x340,
    0x348,
    0x350,
    0x358,
    0x360,
    0x368,
    0x370,
    0x378,
];

fn put(page: &mut [u8], at: usize, bytes: &[u8]) {
    page[at..at + bytes.len()].copy_from_slice(bytes);
}

fn put_seg(page: &mut [u8], at: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
    put(page, at, &selector.to_le_bytes());
    put(page, at + 2, &attrib.to_le_bytes());
    put(page, at + 4, &limit.to_le_bytes());
    put(page, at + 8, &base.to_le_bytes());
}

/// The VMSA page KVM builds from `regs` with `sev_features` (SNP_ACTIVE included).
pub fn predict_vmsa(regs: &VcpuRegs, sev_features: u64) -> Box<[u8; 4096]> {
    let mut page = Box::new([0u8; 4096]);
    let p = &mut page[..];
    let segs = [
        (off::ES, &regs.es),
        (off::CS, &regs.cs),
        (off::SS, &regs.ss),
        (off::DS, &regs.ds),
        (off::FS, &regs.fs),
        (off::GS, &regs.gs),
        (off::LDTR, &regs.ldt),
        (off::TR, &regs.tr),
    ];
    for (at, s) in segs {
        put_seg(p, at, s.selector, s.vmcb_attrib(), s.limit, s.base);
    }
    put_seg(p, off::GDTR, 0, 0, regs.gdt.limit as u32, regs.gdt.base);
    put_seg(p, off::IDTR, 0, 0, regs.idt.limit as u32, regs.idt.base);
    // KVM sets EFER.SVME and CR4.MCE and clears CR0.CD/NW (quirk CD_NW_CLEARED) in the VMCB.
    let u64s = [
        (off::EFER, regs.efer | EFER_SVME),
        (off::CR4, regs.cr4 | CR4_MCE),
        (off::CR3, regs.cr3),
        (off::CR0, regs.cr0 & !CR0_CD_NW),
        (off::DR7, regs.dr7),
        (off::DR6, regs.dr6),
        (off::RFLAGS, regs.rflags),
        (off::RIP, regs.rip),
        (off::CR2, regs.cr2),
        (off::G_PAT, regs.pat),
        (off::SEV_FEATURES, sev_features),
        (off::XCR0, regs.xcr0),
    ];
    for (at, v) in u64s {
        put(p, at, &v.to_le_bytes());
    }
    for (at, v) in GPR_OFFSETS.iter().zip(regs.gprs) {
        put(p, *at, &v.to_le_bytes());
    }
    put(p, off::MXCSR, &regs.mxcsr.to_le_bytes());
    put(p, off::X87_FCW, &regs.fcw.to_le_bytes());
    page
}

fn get_u64(p: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&p[at..at + 8]);
    u64::from_le_bytes(b)
}

fn get_seg(p: &[u8], at: usize) -> Segment {
    let selector = u16::from_le_bytes([p[at], p[at + 1]]);
    let attrib = u16::from_le_bytes([p[at + 2], p[at + 3]]);
    let limit = u32::from_le_bytes([p[at + 4], p[at + 5], p[at + 6], p[at + 7]]);
    Segment::from_vmcb(selector, attrib, limit, get_u64(p, at + 8))
}

/// The register state that makes KVM build `vmsa` (an IGVM `SNP_VP_CONTEXT`), and the VMSA's
/// `sev_features`. `vmsa` must be at least 0x418 bytes (the fields read).
pub fn regs_from_vmsa(vmsa: &[u8]) -> Result<(VcpuRegs, u64), TeeError> {
    if vmsa.len() < off::X87_FCW + 2 {
        return Err(TeeError::input(
            "VMSA",
            format!(
                "{} bytes, need at least {:#x}",
                vmsa.len(),
                off::X87_FCW + 2
            ),
        ));
    }
    let dt = |at: usize| {
        let s = get_seg(vmsa, at);
        DTable {
            base: s.base,
            limit: s.limit as u16,
        }
    };
    let mut gprs = [0u64; 16];
    for (g, at) in gprs.iter_mut().zip(GPR_OFFSETS) {
        *g = get_u64(vmsa, at);
    }
    let regs = VcpuRegs {
        gprs,
        rip: get_u64(vmsa, off::RIP),
        rflags: get_u64(vmsa, off::RFLAGS),
        cs: get_seg(vmsa, off::CS),
        ds: get_seg(vmsa, off::DS),
        es: get_seg(vmsa, off::ES),
        fs: get_seg(vmsa, off::FS),
        gs: get_seg(vmsa, off::GS),
        ss: get_seg(vmsa, off::SS),
        tr: get_seg(vmsa, off::TR),
        ldt: get_seg(vmsa, off::LDTR),
        gdt: dt(off::GDTR),
        idt: dt(off::IDTR),
        cr0: get_u64(vmsa, off::CR0),
        cr2: get_u64(vmsa, off::CR2),
        cr3: get_u64(vmsa, off::CR3),
        cr4: get_u64(vmsa, off::CR4),
        efer: get_u64(vmsa, off::EFER),
        fcw: u16::from_le_bytes([vmsa[off::X87_FCW], vmsa[off::X87_FCW + 1]]),
        mxcsr: u32::from_le_bytes([
            vmsa[off::MXCSR],
            vmsa[off::MXCSR + 1],
            vmsa[off::MXCSR + 2],
            vmsa[off::MXCSR + 3],
        ]),
        xcr0: get_u64(vmsa, off::XCR0),
        dr6: get_u64(vmsa, off::DR6),
        dr7: get_u64(vmsa, off::DR7),
        pat: get_u64(vmsa, off::G_PAT),
    };
    Ok((regs, get_u64(vmsa, off::SEV_FEATURES)))
}
