//! A recording fake of [`TeeOps`] (spec §10 O5): it records every call as `(ioctl, fd kind,
//! struct bytes)` and answers from a script, so tests can assert the launch sequence and drive
//! the partial-progress, `-EAGAIN` and PSP-error paths without KVM.

use std::collections::{HashMap, VecDeque};
use std::io;

use zerocopy::{FromBytes, IntoBytes};

use crate::snp::{MemoryOps, TeeOps};
use crate::uapi::*;
use crate::vmsa::VcpuRegs;

/// Which fd a call went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    Kvm,
    Sev,
    Vm,
    Vcpu(u32),
    /// A guest_memfd (its fd number).
    Memfd(u32),
    /// A call on the VMM's own address space (`madvise`).
    Process,
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub ioctl: &'static str,
    pub fd: FdKind,
    /// The struct passed (for `KVM_MEMORY_ENCRYPT_OP`: the command's data struct as passed in).
    pub bytes: Vec<u8>,
    /// For `KVM_MEMORY_ENCRYPT_OP`: the `kvm_sev_cmd` as passed in.
    pub cmd: Option<KvmSevCmd>,
    /// For TDX `KVM_MEMORY_ENCRYPT_OP`: the `kvm_tdx_cmd` as passed in.
    pub tdx_cmd: Option<KvmTdxCmd>,
}

/// How the fake answers one `SNP_LAUNCH_UPDATE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateAnswer {
    /// Process everything.
    Done,
    /// Process this many pages and report the rest as remaining.
    Partial(u64),
    /// Fail with `-EAGAIN` without progress.
    Again,
    /// Fail with this errno and PSP status.
    Fail(i32, u32),
}

/// The recording fake.
#[derive(Debug)]
pub struct RecordingOps {
    pub calls: Vec<Call>,
    /// `KVM_CHECK_EXTENSION` answers; missing caps answer 0.
    pub caps: HashMap<u32, u64>,
    /// `KVM_X86_SEV_VMSA_FEATURES` value; `None` = `ENXIO`.
    pub vmsa_features: Option<u64>,
    /// `open("/dev/sev")` result: fd or errno.
    pub sev: Result<u32, i32>,
    /// Answers for successive LAUNCH_UPDATE calls; when empty, `Done`.
    pub updates: VecDeque<UpdateAnswer>,
    /// The TDX module as the fake models it.
    pub tdx: crate::fake_tdx::TdxFake,
    /// Errnos for successive `KVM_SET_MEMORY_ATTRIBUTES` calls; when empty, success.
    pub attr_errors: VecDeque<i32>,
    /// Errnos for successive punch-hole / `MADV_DONTNEED` calls; when empty, success.
    pub discard_errors: VecDeque<i32>,
}

impl Default for RecordingOps {
    /// A host with no capabilities and no `/dev/sev`.
    fn default() -> Self {
        RecordingOps {
            calls: Vec::new(),
            caps: HashMap::new(),
            vmsa_features: None,
            sev: Err(libc::ENOENT),
            updates: VecDeque::new(),
            tdx: Default::default(),
            attr_errors: VecDeque::new(),
            discard_errors: VecDeque::new(),
        }
    }
}

impl RecordingOps {
    /// A fake SNP host: every capability present, features 0x3f supported, `/dev/sev` = fd 9.
    pub fn snp_host() -> Self {
        let caps = [
            (KVM_CAP_VM_TYPES, 0x13),
            (KVM_CAP_GUEST_MEMFD, 1),
            (KVM_CAP_USER_MEMORY2, 1),
            (KVM_CAP_MEMORY_ATTRIBUTES, KVM_MEMORY_ATTRIBUTE_PRIVATE),
            (KVM_CAP_MEMORY_FAULT_INFO, 1),
            (KVM_CAP_EXIT_HYPERCALL, 1 << KVM_HC_MAP_GPA_RANGE),
        ];
        RecordingOps {
            caps: caps.into_iter().collect(),
            vmsa_features: Some(0x3f),
            sev: Ok(9),
            ..Default::default()
        }
    }

    pub(crate) fn record(&mut self, ioctl: &'static str, fd: FdKind, bytes: &[u8]) {
        self.calls.push(Call {
            ioctl,
            fd,
            bytes: bytes.to_vec(),
            cmd: None,
            tdx_cmd: None,
        });
    }

    /// Names of the recorded calls, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.calls.iter().map(|c| c.ioctl).collect()
    }

    /// The LAUNCH_UPDATE structs as passed in, in order.
    pub fn launch_updates(&self) -> Vec<KvmSevSnpLaunchUpdate> {
        self.calls
            .iter()
            .filter(|c| c.ioctl == "SNP_LAUNCH_UPDATE")
            .filter_map(|c| KvmSevSnpLaunchUpdate::read_from_bytes(&c.bytes).ok())
            .collect()
    }
}

fn cmd_name(id: u32) -> &'static str {
    match id {
        KVM_SEV_INIT2 => "SEV_INIT2",
        KVM_SEV_SNP_LAUNCH_START => "SNP_LAUNCH_START",
        KVM_SEV_SNP_LAUNCH_UPDATE => "SNP_LAUNCH_UPDATE",
        KVM_SEV_SNP_LAUNCH_FINISH => "SNP_LAUNCH_FINISH",
        _ => "SEV_UNKNOWN",
    }
}

impl MemoryOps for RecordingOps {
    fn set_memory_attributes(&mut self, attrs: &KvmMemoryAttributes) -> io::Result<()> {
        self.record("KVM_SET_MEMORY_ATTRIBUTES", FdKind::Vm, attrs.as_bytes());
        scripted(&mut self.attr_errors)
    }

    fn punch_hole(&mut self, memfd: u32, offset: u64, len: u64) -> io::Result<()> {
        let b = [offset.to_le_bytes(), len.to_le_bytes()].concat();
        self.record("FALLOCATE_PUNCH_HOLE", FdKind::Memfd(memfd), &b);
        scripted(&mut self.discard_errors)
    }

    fn discard_shared(&mut self, userspace_addr: u64, len: u64) -> io::Result<()> {
        let b = [userspace_addr.to_le_bytes(), len.to_le_bytes()].concat();
        self.record("MADV_DONTNEED", FdKind::Process, &b);
        scripted(&mut self.discard_errors)
    }
}

fn scripted(errors: &mut VecDeque<i32>) -> io::Result<()> {
    match errors.pop_front() {
        Some(errno) => Err(io::Error::from_raw_os_error(errno)),
        None => Ok(()),
    }
}

impl TeeOps for RecordingOps {
    fn check_extension(&mut self, cap: u32) -> io::Result<u64> {
        self.record("KVM_CHECK_EXTENSION", FdKind::Kvm, &cap.to_le_bytes());
        Ok(self.caps.get(&cap).copied().unwrap_or(0))
    }

    fn get_device_attr(&mut self, group: u32, attr: u64) -> io::Result<u64> {
        let mut b = group.to_le_bytes().to_vec();
        b.extend_from_slice(&attr.to_le_bytes());
        self.record("KVM_GET_DEVICE_ATTR", FdKind::Kvm, &b);
        self.vmsa_features
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENXIO))
    }

    fn open_sev(&mut self) -> io::Result<u32> {
        self.record("OPEN_SEV", FdKind::Sev, &[]);
        self.sev.map_err(io::Error::from_raw_os_error)
    }

    fn create_vm(&mut self, vm_type: u64) -> io::Result<()> {
        self.record("KVM_CREATE_VM", FdKind::Kvm, &vm_type.to_le_bytes());
        Ok(())
    }

    fn enable_cap(&mut self, cap: u32, arg0: u64) -> io::Result<()> {
        let mut b = cap.to_le_bytes().to_vec();
        b.extend_from_slice(&arg0.to_le_bytes());
        self.record("KVM_ENABLE_CAP", FdKind::Vm, &b);
        Ok(())
    }

    fn sev_op(&mut self, cmd: &mut KvmSevCmd, data: &mut [u8]) -> io::Result<()> {
        self.calls.push(Call {
            ioctl: cmd_name(cmd.id),
            fd: FdKind::Vm,
            bytes: data.to_vec(),
            cmd: Some(*cmd),
            tdx_cmd: None,
        });
        if cmd.id != KVM_SEV_SNP_LAUNCH_UPDATE {
            return Ok(());
        }
        let Ok(upd) = KvmSevSnpLaunchUpdate::mut_from_bytes(data) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        match self.updates.pop_front().unwrap_or(UpdateAnswer::Done) {
            UpdateAnswer::Done => {
                upd.gfn_start += upd.len >> 12;
                if upd.type_ != 3 {
                    upd.uaddr += upd.len;
                }
                upd.len = 0;
                Ok(())
            }
            UpdateAnswer::Partial(pages) => {
                let done = (pages * 4096).min(upd.len);
                upd.gfn_start += done >> 12;
                if upd.type_ != 3 {
                    upd.uaddr += done;
                }
                upd.len -= done;
                Ok(())
            }
            UpdateAnswer::Again => Err(io::Error::from_raw_os_error(libc::EAGAIN)),
            UpdateAnswer::Fail(errno, psp) => {
                cmd.error = psp;
                Err(io::Error::from_raw_os_error(errno))
            }
        }
    }

    fn create_guest_memfd(&mut self, args: &KvmCreateGuestMemfd) -> io::Result<u32> {
        self.record("KVM_CREATE_GUEST_MEMFD", FdKind::Vm, args.as_bytes());
        Ok(20)
    }

    fn set_user_memory_region2(&mut self, region: &KvmUserspaceMemoryRegion2) -> io::Result<()> {
        self.record("KVM_SET_USER_MEMORY_REGION2", FdKind::Vm, region.as_bytes());
        Ok(())
    }

    fn create_vcpu(&mut self, id: u32) -> io::Result<()> {
        self.record("KVM_CREATE_VCPU", FdKind::Vm, &id.to_le_bytes());
        Ok(())
    }

    fn tdx_vm_op(&mut self, cmd: &mut KvmTdxCmd, data: Option<&mut [u8]>) -> io::Result<()> {
        crate::fake_tdx::vm_op(self, cmd, data)
    }

    fn tdx_vcpu_op(
        &mut self,
        id: u32,
        cmd: &mut KvmTdxCmd,
        data: Option<&mut [u8]>,
    ) -> io::Result<()> {
        crate::fake_tdx::vcpu_op(self, id, cmd, data)
    }

    fn set_cpuid2(&mut self, id: u32, entries: &[KvmCpuidEntry2]) -> io::Result<()> {
        self.record("KVM_SET_CPUID2", FdKind::Vcpu(id), entries.as_bytes());
        Ok(())
    }

    fn set_vcpu_regs(&mut self, id: u32, regs: &VcpuRegs) -> io::Result<()> {
        // The register state is recorded as the VMSA it yields, so tests can compare it.
        let vmsa = crate::vmsa::predict_vmsa(regs, 1);
        self.record("KVM_SET_REGS", FdKind::Vcpu(id), &vmsa[..]);
        Ok(())
    }
}
