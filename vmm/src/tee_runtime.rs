//! Run-time exits of a confidential guest for the vCPU loop: [`TeeRuntime`] answers
//! `KVM_HC_MAP_GPA_RANGE`, converts memory on `KVM_EXIT_MEMORY_FAULT` and decodes
//! `KVM_SYSTEM_EVENT_SEV_TERM` (SEV-SNP and TDX alike for the first two), with
//! `tee::runtime::PageStateChanges` deciding what to call and [`KvmMemoryOps`] calling KVM,
//! `fallocate` and `madvise` — each only on the VM's own RAM. A TD also gets its
//! `KVM_EXIT_TDX` sub-calls and `KVM_SYSTEM_EVENT_TDX_FATAL` answered ([`TdxRuntime`]).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use kvm_bindings::{kvm_memory_attributes, kvm_run};
use kvm_ioctls::{Kvm, VmFd};
use tee::runtime::{GuestTerminated, MemoryOps, PageStateChanges};
use tee::snp::RamRegion;
use tee::tdx_exit::{TdxFatal, TdxVmcall};
use tee::uapi::KvmMemoryAttributes;

use crate::error::{Result, VmmError};
use crate::tee_kvm::tdx::TdxRuntime;

/// A second `VmFd` for the same VM (a duplicated fd), for handlers that outlive the borrow.
pub(crate) fn dup_vm(vm: &VmFd) -> io::Result<VmFd> {
    // SAFETY: `vm` keeps its fd open for the whole borrow, which ends at the clone.
    let dup = unsafe { BorrowedFd::borrow_raw(vm.as_raw_fd()) }.try_clone_to_owned()?;
    let kvm = Kvm::new().map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    // SAFETY: `dup` is a fresh fd for this VM that nothing else owns; the new VmFd takes it.
    unsafe { kvm.create_vmfd_from_rawfd(dup.into_raw_fd()) }
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))
}

/// `KVM_SET_MEMORY_ATTRIBUTES` on `vm`.
pub(crate) fn set_attributes(vm: &VmFd, a: &KvmMemoryAttributes) -> io::Result<()> {
    let attr = kvm_memory_attributes {
        address: a.address,
        size: a.size,
        attributes: a.attributes,
        flags: a.flags,
    };
    vm.set_memory_attributes(attr)
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))
}

/// Punches `offset..offset+len` out of the guest_memfd numbered `memfd`, which must be one of
/// `memfds` (`EBADF` otherwise: no other fd is ever touched).
pub(crate) fn punch_hole(memfds: &[OwnedFd], memfd: u32, offset: u64, len: u64) -> io::Result<()> {
    let fd = memfds
        .iter()
        .find(|f| f.as_raw_fd() as u32 == memfd)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
    let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    // SAFETY: fallocate on an fd this process owns; it changes only that file's contents.
    let r = unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            n,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `madvise(MADV_DONTNEED)` on `addr..addr+len`, which must lie inside one of the guest's
/// shared mappings `(address, size)` (`EFAULT` otherwise: no other memory is ever touched).
pub(crate) fn discard_shared(shared: &[(u64, u64)], addr: u64, len: u64) -> io::Result<()> {
    let inside = addr
        .checked_add(len)
        .is_some_and(|end| shared.iter().any(|&(a, n)| addr >= a && end <= a + n));
    if !inside || len == 0 {
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    // SAFETY: the range lies inside a guest RAM mapping that lives as long as the VM; the VMM
    // holds no references into it (guest memory is accessed by copies), and DONTNEED only
    // drops its contents, which the guest no longer uses there after a conversion.
    let r = unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, libc::MADV_DONTNEED) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// [`MemoryOps`] of a running VM: its own fd, its guest_memfd(s) and its shared mappings.
pub struct KvmMemoryOps {
    vm: VmFd,
    memfds: Vec<OwnedFd>,
    shared: Vec<(u64, u64)>,
}

impl MemoryOps for KvmMemoryOps {
    fn set_memory_attributes(&mut self, a: &KvmMemoryAttributes) -> io::Result<()> {
        set_attributes(&self.vm, a)
    }

    fn punch_hole(&mut self, memfd: u32, offset: u64, len: u64) -> io::Result<()> {
        punch_hole(&self.memfds, memfd, offset, len)
    }

    fn discard_shared(&mut self, userspace_addr: u64, len: u64) -> io::Result<()> {
        discard_shared(&self.shared, userspace_addr, len)
    }
}

/// The run-time exit handler of one confidential VM, shared by its vCPU threads (conversions
/// are serialised by a lock). Generic over [`MemoryOps`] so it can be tested with a fake.
pub struct TeeRuntime<M: MemoryOps = KvmMemoryOps> {
    ops: Mutex<M>,
    psc: PageStateChanges,
    conversions: AtomicU64,
    /// Set for a TD.
    tdx: Option<TdxRuntime>,
}

impl TeeRuntime<KvmMemoryOps> {
    /// The handler for a launched VM: duplicates the VM fd and the guest_memfd (the first of
    /// `memfds`, the one the launch backed `ram` with) so it owns what it calls.
    pub fn for_vm(vm: &VmFd, memfds: &[OwnedFd], ram: &[RamRegion]) -> io::Result<Self> {
        let memfd = memfds
            .first()
            .ok_or_else(|| io::Error::other("the launch created no guest_memfd"))?
            .try_clone()?;
        let vm = dup_vm(vm)?;
        let psc = PageStateChanges::new(ram, memfd.as_raw_fd() as u32);
        let ops = KvmMemoryOps {
            vm,
            memfds: vec![memfd],
            shared: ram.iter().map(|r| (r.userspace_addr, r.size)).collect(),
        };
        Ok(TeeRuntime::new(ops, psc))
    }
}

impl<M: MemoryOps> TeeRuntime<M> {
    pub fn new(ops: M, psc: PageStateChanges) -> Self {
        TeeRuntime {
            ops: Mutex::new(ops),
            psc,
            conversions: AtomicU64::new(0),
            tdx: None,
        }
    }

    /// The same handler for a TD: `KVM_EXIT_TDX` and TDX fatal errors are answered by `tdx`.
    pub fn with_tdx(mut self, tdx: TdxRuntime) -> Self {
        self.tdx = Some(tdx);
        self
    }

    /// Whether this is a TD's handler.
    pub fn is_tdx(&self) -> bool {
        self.tdx.is_some()
    }

    /// `VcpuExit::Unsupported(KVM_EXIT_TDX)`: answers the sub-call in the vCPU's `run` area
    /// (before the next `KVM_RUN`). An error means there is no TD to answer for, or `run`
    /// holds another exit.
    pub fn on_tdx_exit(&self, run: &mut kvm_run, apic_id: u32) -> Result<TdxVmcall> {
        let tdx = self.tdx.as_ref().ok_or_else(|| VmmError::Host {
            what: "KVM_EXIT_TDX",
            source: io::Error::other("a TDX exit from a VM that is not a TD"),
        })?;
        tdx.on_exit(run, apic_id)
    }

    /// `VcpuExit::SystemEvent`: `Some` for a TD's `KVM_SYSTEM_EVENT_TDX_FATAL`; the VM then
    /// ends as a failure naming the guest's error code.
    pub fn on_tdx_fatal(&self, kind: u32, data: &[u64]) -> Option<TdxFatal> {
        self.tdx.as_ref()?;
        let f = tee::tdx_exit::system_event(kind, data)?;
        tracing::error!(
            error_code = format!("{:#x}", f.error_code),
            message = %f.message,
            "TD fatal error"
        );
        Some(f)
    }

    /// `VcpuExit::Hypercall`: `Some(ret)` to store in `*exit.ret` before re-entering the guest
    /// (0, or a negative errno the guest sees as a failed page-state change), `None` when `nr`
    /// is not `KVM_HC_MAP_GPA_RANGE`.
    pub fn on_hypercall(&self, nr: u64, args: &[u64]) -> Option<u64> {
        let ret = self.psc.on_hypercall(&mut *self.lock(), nr, args)?;
        if ret == 0 {
            self.conversions.fetch_add(1, Ordering::Relaxed);
        }
        Some(ret)
    }

    /// `VcpuExit::MemoryFault`: converts the range so the vCPU can re-run; an error means the
    /// guest cannot continue (a fault outside its RAM, or KVM refused the change).
    pub fn on_memory_fault(&self, flags: u64, gpa: u64, size: u64) -> Result<()> {
        self.psc
            .on_memory_fault(&mut *self.lock(), flags, gpa, size)
            .map_err(|e| VmmError::Host {
                what: "KVM_EXIT_MEMORY_FAULT",
                source: io::Error::other(e.to_string()),
            })?;
        self.conversions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// `VcpuExit::SystemEvent`: `Some` when the guest asked to terminate (SEV_TERM); the VM
    /// then stops with this reason. Other event types are the caller's.
    pub fn on_system_event(&self, kind: u32, data: &[u64]) -> Option<GuestTerminated> {
        let t = tee::runtime::sev_termination(kind, data)?;
        tracing::warn!(reason = %t, "guest terminated");
        Some(t)
    }

    /// Conversions done so far (for metrics).
    pub fn conversions(&self) -> u64 {
        self.conversions.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, M> {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
#[path = "tee_runtime_tests.rs"]
mod tests;
