//! The TDX half of the recording fake (spec §10 O6): a scripted TDX module behind
//! [`RecordingOps`]. It answers `KVM_TDX_CAPABILITIES` (with `-E2BIG` while the caller's CPUID
//! array is too small), `INIT_VM` (with scripted `-EAGAIN`s) and `INIT_MEM_REGION` (with
//! partial progress, `-EINTR`, `-EAGAIN` and TDX-module errors), and records every command.

use std::collections::VecDeque;
use std::io;

use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::fake::{Call, FdKind, RecordingOps};
use crate::uapi::*;

/// How the fake answers one `KVM_TDX_INIT_MEM_REGION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemRegionAnswer {
    /// Add every page.
    Done,
    /// Add this many pages, then fail with `-EINTR` (a signal arrived).
    Interrupted(u64),
    /// Fail with `-EAGAIN` without progress.
    Again,
    /// Fail with this errno and TDX-module status.
    Fail(i32, u64),
}

/// The TDX module as the fake models it.
#[derive(Debug, Clone, Default)]
pub struct TdxFake {
    /// What `KVM_TDX_CAPABILITIES` reports (its `nent` is ignored).
    pub caps: Option<KvmTdxCapabilities>,
    /// The configurable CPUID bits it reports.
    pub cpuid: Vec<KvmCpuidEntry2>,
    /// `-EAGAIN`s `INIT_VM` returns before it succeeds.
    pub init_vm_again: u32,
    /// Answers for successive `INIT_MEM_REGION` calls; when empty, `Done`.
    pub mem_region: VecDeque<MemRegionAnswer>,
}

impl RecordingOps {
    /// A fake TDX host: every capability, VM type 5, attributes/XFAM masks, two configurable
    /// CPUID leaves (1 and 7.0).
    pub fn tdx_host() -> Self {
        let mut ops = RecordingOps::default();
        for (cap, v) in [
            (KVM_CAP_VM_TYPES, 0x21),
            (KVM_CAP_GUEST_MEMFD, 1),
            (KVM_CAP_USER_MEMORY2, 1),
            (KVM_CAP_MEMORY_ATTRIBUTES, KVM_MEMORY_ATTRIBUTE_PRIVATE),
            (KVM_CAP_MEMORY_FAULT_INFO, 1),
            (KVM_CAP_EXIT_HYPERCALL, 1 << KVM_HC_MAP_GPA_RANGE),
            (KVM_CAP_SPLIT_IRQCHIP, 1),
            (KVM_CAP_X86_APIC_BUS_CYCLES_NS, 1),
        ] {
            ops.caps.insert(cap, v);
        }
        let mut caps = KvmTdxCapabilities::new_zeroed();
        caps.supported_attrs = 0x8000_0000_5000_0001;
        caps.supported_xfam = 0x6_02ff;
        caps.kernel_tdvmcallinfo_1_r11 = 0;
        caps.user_tdvmcallinfo_1_r11 = TDVMCALLINFO_1_R11_SETUP_EVENT_NOTIFY | 1;
        ops.tdx.caps = Some(caps);
        ops.tdx.cpuid = vec![
            KvmCpuidEntry2 {
                function: 1,
                ecx: 0x0000_ffff,
                edx: 0xffff_0000,
                ..Default::default()
            },
            KvmCpuidEntry2 {
                function: 7,
                index: 0,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ebx: 0x00ff_00ff,
                ..Default::default()
            },
        ];
        ops
    }

    /// The recorded TDX commands `(name, fd, kvm_tdx_cmd, data bytes)`, in order.
    pub fn tdx_calls(&self) -> Vec<&Call> {
        self.calls.iter().filter(|c| c.tdx_cmd.is_some()).collect()
    }

    /// The `INIT_MEM_REGION` structs as passed in, in order.
    pub fn init_mem_regions(&self) -> Vec<KvmTdxInitMemRegion> {
        self.calls
            .iter()
            .filter(|c| c.ioctl == "TDX_INIT_MEM_REGION")
            .filter_map(|c| KvmTdxInitMemRegion::read_from_bytes(&c.bytes).ok())
            .collect()
    }
}

fn cmd_name(id: u32) -> &'static str {
    match id {
        KVM_TDX_CAPABILITIES => "TDX_CAPABILITIES",
        KVM_TDX_INIT_VM => "TDX_INIT_VM",
        KVM_TDX_INIT_VCPU => "TDX_INIT_VCPU",
        KVM_TDX_INIT_MEM_REGION => "TDX_INIT_MEM_REGION",
        KVM_TDX_FINALIZE_VM => "TDX_FINALIZE_VM",
        KVM_TDX_GET_CPUID => "TDX_GET_CPUID",
        _ => "TDX_UNKNOWN",
    }
}

fn record(ops: &mut RecordingOps, fd: FdKind, cmd: &KvmTdxCmd, data: &Option<&mut [u8]>) {
    ops.calls.push(Call {
        ioctl: cmd_name(cmd.id),
        fd,
        bytes: data.as_ref().map(|d| d.to_vec()).unwrap_or_default(),
        cmd: None,
        tdx_cmd: Some(*cmd),
    });
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

pub(crate) fn vm_op(
    ops: &mut RecordingOps,
    cmd: &mut KvmTdxCmd,
    data: Option<&mut [u8]>,
) -> io::Result<()> {
    record(ops, FdKind::Vm, cmd, &data);
    match cmd.id {
        KVM_TDX_CAPABILITIES => {
            let caps = ops.tdx.caps.ok_or_else(|| errno(libc::EINVAL))?;
            let buf = data.ok_or_else(|| errno(libc::EFAULT))?;
            let (head, _) =
                KvmTdxCapabilities::read_from_prefix(buf).map_err(|_| errno(libc::EFAULT))?;
            let want = ops.tdx.cpuid.len();
            if (head.nent as usize) < want {
                return Err(errno(libc::E2BIG));
            }
            let head_len = std::mem::size_of::<KvmTdxCapabilities>();
            if buf.len() < head_len + head.nent as usize * 40 {
                return Err(errno(libc::EFAULT));
            }
            let out = KvmTdxCapabilities {
                nent: want as u32,
                ..caps
            };
            buf[..head_len].copy_from_slice(out.as_bytes());
            let entries = ops.tdx.cpuid.as_bytes();
            buf[head_len..head_len + entries.len()].copy_from_slice(entries);
            Ok(())
        }
        KVM_TDX_INIT_VM if ops.tdx.init_vm_again > 0 => {
            ops.tdx.init_vm_again -= 1;
            Err(errno(libc::EAGAIN))
        }
        _ => Ok(()),
    }
}

pub(crate) fn vcpu_op(
    ops: &mut RecordingOps,
    id: u32,
    cmd: &mut KvmTdxCmd,
    data: Option<&mut [u8]>,
) -> io::Result<()> {
    record(ops, FdKind::Vcpu(id), cmd, &data);
    if cmd.id != KVM_TDX_INIT_MEM_REGION {
        return Ok(());
    }
    let buf = data.ok_or_else(|| errno(libc::EFAULT))?;
    let region = KvmTdxInitMemRegion::mut_from_bytes(buf).map_err(|_| errno(libc::EINVAL))?;
    let mut advance = |n: u64| {
        let n = n.min(region.nr_pages);
        region.gpa += n * 4096;
        region.source_addr += n * 4096;
        region.nr_pages -= n;
    };
    match ops
        .tdx
        .mem_region
        .pop_front()
        .unwrap_or(MemRegionAnswer::Done)
    {
        MemRegionAnswer::Done => {
            advance(u64::MAX);
            Ok(())
        }
        MemRegionAnswer::Interrupted(n) => {
            advance(n);
            Err(errno(libc::EINTR))
        }
        MemRegionAnswer::Again => Err(errno(libc::EAGAIN)),
        MemRegionAnswer::Fail(e, hw) => {
            cmd.hw_error = hw;
            Err(errno(e))
        }
    }
}
