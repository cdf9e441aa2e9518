//! Run-time exits of a private-memory guest (spec §5 steps 9–10; TDX §6 step 8 uses the same
//! two): `KVM_HC_MAP_GPA_RANGE` page-state changes, `KVM_EXIT_MEMORY_FAULT`, and
//! `KVM_SYSTEM_EVENT_SEV_TERM`. A conversion sets `KVM_MEMORY_ATTRIBUTE_PRIVATE` (or clears it)
//! over the range and then discards the backing that became unused: the guest_memfd range when
//! going shared, the shared mapping when going private. Guest-supplied ranges are checked
//! against the RAM the launch mapped before anything is called.

use std::io;

use crate::snp::{memfd_layout, RamRegion};
use crate::uapi::*;

/// The memory calls of [`crate::snp::TeeOps`] that the run-time conversions need too.
pub trait MemoryOps {
    /// `KVM_SET_MEMORY_ATTRIBUTES` on the VM.
    fn set_memory_attributes(&mut self, attrs: &KvmMemoryAttributes) -> io::Result<()>;
    /// `fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)` on `memfd`, a guest_memfd returned
    /// by `create_guest_memfd`.
    fn punch_hole(&mut self, memfd: u32, offset: u64, len: u64) -> io::Result<()>;
    /// `madvise(MADV_DONTNEED)` on `len` bytes of a RAM region's shared mapping.
    fn discard_shared(&mut self, userspace_addr: u64, len: u64) -> io::Result<()>;
}

/// Bound on retries of a `KVM_SET_MEMORY_ATTRIBUTES` that returned `EAGAIN` or `EINTR`.
const MAX_RETRIES: u32 = 16;
const PAGE: u64 = 4096;
/// GHCB MSR protocol: termination request code in bits 11:0 (GHCB spec, "Termination Request").
const GHCB_MSR_TERM_REQ: u64 = 0x100;

/// Why a conversion was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{exit}: gpa {gpa:#x} size {size:#x}: {reason}")]
    BadRange {
        exit: &'static str,
        gpa: u64,
        size: u64,
        reason: &'static str,
    },
    #[error("{exit}: gpa {gpa:#x} size {size:#x} is not guest RAM")]
    OutsideRam {
        exit: &'static str,
        gpa: u64,
        size: u64,
    },
    #[error("{call} for gpa {gpa:#x} size {size:#x} (to private: {private}) failed: {errno}")]
    Call {
        call: &'static str,
        gpa: u64,
        size: u64,
        private: bool,
        errno: io::Error,
    },
}

impl RuntimeError {
    /// The errno the guest is told (positive).
    pub fn errno(&self) -> i32 {
        match self {
            RuntimeError::BadRange { .. } | RuntimeError::OutsideRam { .. } => libc::EINVAL,
            RuntimeError::Call { errno, .. } => errno.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// A conversion that was carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conversion {
    pub gpa: u64,
    pub size: u64,
    pub private: bool,
}

/// A guest's termination request (`KVM_SYSTEM_EVENT_SEV_TERM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestTerminated {
    /// `system_event.data[0]`: the GHCB MSR value at the request.
    pub ghcb_msr: u64,
    /// Reason set and code when the guest used the MSR protocol; with a full GHCB the reason
    /// stays in the GHCB and KVM reports only its GPA.
    pub reason: Option<TermReason>,
}

/// GHCB termination reason: set 0 = general, 1 = Linux guest, …; the code within the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermReason {
    pub set: u8,
    pub code: u8,
}

impl std::fmt::Display for GuestTerminated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reason {
            Some(r) => write!(
                f,
                "SEV guest requested termination: reason set {} code {:#x}",
                r.set, r.code
            ),
            None => write!(
                f,
                "SEV guest requested termination through its GHCB at {:#x}",
                self.ghcb_msr
            ),
        }
    }
}

/// Decodes `KVM_EXIT_SYSTEM_EVENT`: `Some` for `KVM_SYSTEM_EVENT_SEV_TERM`.
pub fn sev_termination(event_type: u32, data: &[u64]) -> Option<GuestTerminated> {
    if event_type != KVM_SYSTEM_EVENT_SEV_TERM {
        return None;
    }
    let ghcb_msr = data.first().copied().unwrap_or(0);
    let reason = (ghcb_msr & 0xfff == GHCB_MSR_TERM_REQ).then_some(TermReason {
        set: ((ghcb_msr >> 12) & 0xf) as u8,
        code: ((ghcb_msr >> 16) & 0xff) as u8,
    });
    Some(GuestTerminated { ghcb_msr, reason })
}

/// One slice of a conversion that lies in one RAM region.
struct Piece {
    len: u64,
    userspace_addr: u64,
    memfd_offset: u64,
}

/// Page-state changes of one VM: its RAM as the launch mapped it into one guest_memfd.
#[derive(Debug, Clone)]
pub struct PageStateChanges {
    /// Regions sorted by gpa, each with its guest_memfd offset.
    regions: Vec<(RamRegion, u64)>,
    memfd: u32,
}

impl PageStateChanges {
    /// `ram` as given to the launch (the guest_memfd layout follows its order); `memfd` is the
    /// fd `create_guest_memfd` returned.
    pub fn new(ram: &[RamRegion], memfd: u32) -> Self {
        let mut regions: Vec<_> = memfd_layout(ram).map(|(r, o)| (*r, o)).collect();
        regions.sort_by_key(|(r, _)| r.gpa);
        PageStateChanges { regions, memfd }
    }

    /// Handles `KVM_EXIT_HYPERCALL`: `None` when `nr` is not `KVM_HC_MAP_GPA_RANGE` (the caller
    /// answers it), else the value for `hypercall.ret`: 0, or a negative errno as KVM's own
    /// hypercalls return (`-EINVAL` for a bad range). A failure is logged, never a panic.
    pub fn on_hypercall<O: MemoryOps + ?Sized>(
        &self,
        ops: &mut O,
        nr: u64,
        args: &[u64],
    ) -> Option<u64> {
        if nr != KVM_HC_MAP_GPA_RANGE {
            return None;
        }
        let arg = |i: usize| args.get(i).copied().unwrap_or(0);
        let ret = match self.map_gpa_range(ops, arg(0), arg(1), arg(2)) {
            Ok(_) => 0,
            Err(e) => {
                tracing::warn!(error = %e, "KVM_HC_MAP_GPA_RANGE refused");
                (-i64::from(e.errno())) as u64
            }
        };
        Some(ret)
    }

    /// `KVM_HC_MAP_GPA_RANGE(gpa, npages, attrs)`: bit 4 of `attrs` (ENCRYPTED) asks for
    /// private; bits 0–1 are only a page-size hint, the range is `npages` 4 KiB pages.
    pub fn map_gpa_range<O: MemoryOps + ?Sized>(
        &self,
        ops: &mut O,
        gpa: u64,
        npages: u64,
        attrs: u64,
    ) -> Result<Conversion, RuntimeError> {
        const EXIT: &str = "KVM_HC_MAP_GPA_RANGE";
        let size = npages.checked_mul(PAGE).ok_or(RuntimeError::BadRange {
            exit: EXIT,
            gpa,
            size: npages,
            reason: "the page count overflows",
        })?;
        let private = attrs & KVM_MAP_GPA_RANGE_ENCRYPTED != 0;
        self.convert(ops, EXIT, gpa, size, private)
    }

    /// `KVM_EXIT_MEMORY_FAULT`: the guest accessed `gpa..gpa+size` as private (flag bit 3) or
    /// shared; the attributes are made to match so the vCPU can re-run.
    pub fn on_memory_fault<O: MemoryOps + ?Sized>(
        &self,
        ops: &mut O,
        flags: u64,
        gpa: u64,
        size: u64,
    ) -> Result<Conversion, RuntimeError> {
        let private = flags & KVM_MEMORY_EXIT_FLAG_PRIVATE != 0;
        self.convert(ops, "KVM_EXIT_MEMORY_FAULT", gpa, size, private)
    }

    /// Checks the range, sets the attributes, then discards the unused backing.
    pub fn convert<O: MemoryOps + ?Sized>(
        &self,
        ops: &mut O,
        exit: &'static str,
        gpa: u64,
        size: u64,
        private: bool,
    ) -> Result<Conversion, RuntimeError> {
        let pieces = self.pieces(exit, gpa, size)?;
        let call_err = |call, errno| RuntimeError::Call {
            call,
            gpa,
            size,
            private,
            errno,
        };
        let attrs = KvmMemoryAttributes {
            address: gpa,
            size,
            attributes: if private {
                KVM_MEMORY_ATTRIBUTE_PRIVATE
            } else {
                0
            },
            flags: 0,
        };
        let mut retries = 0;
        loop {
            match ops.set_memory_attributes(&attrs) {
                Ok(()) => break,
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR))
                        && retries < MAX_RETRIES =>
                {
                    retries += 1;
                }
                Err(e) => return Err(call_err("KVM_SET_MEMORY_ATTRIBUTES", e)),
            }
        }
        for p in &pieces {
            if private {
                ops.discard_shared(p.userspace_addr, p.len)
                    .map_err(|e| call_err("madvise(MADV_DONTNEED)", e))?;
            } else {
                ops.punch_hole(self.memfd, p.memfd_offset, p.len)
                    .map_err(|e| call_err("fallocate(PUNCH_HOLE)", e))?;
            }
        }
        tracing::debug!(exit, gpa, size, private, retries, "memory converted");
        Ok(Conversion { gpa, size, private })
    }

    /// Splits a guest range into per-region pieces; the whole range must be RAM.
    fn pieces(&self, exit: &'static str, gpa: u64, size: u64) -> Result<Vec<Piece>, RuntimeError> {
        let bad = |reason| RuntimeError::BadRange {
            exit,
            gpa,
            size,
            reason,
        };
        if size == 0 {
            return Err(bad("the range is empty"));
        }
        if !gpa.is_multiple_of(PAGE) || !size.is_multiple_of(PAGE) {
            return Err(bad("the range is not 4 KiB-aligned"));
        }
        let end = gpa.checked_add(size).ok_or(bad("the range overflows"))?;
        let mut pieces = Vec::new();
        let mut at = gpa;
        for (r, memfd_offset) in &self.regions {
            let r_end = r.gpa.saturating_add(r.size);
            if at >= end {
                break;
            }
            if at < r.gpa || at >= r_end {
                continue;
            }
            let len = end.min(r_end) - at;
            let off = at - r.gpa;
            pieces.push(Piece {
                len,
                userspace_addr: r.userspace_addr + off,
                memfd_offset: memfd_offset + off,
            });
            at += len;
        }
        if at != end {
            return Err(RuntimeError::OutsideRam { exit, gpa, size });
        }
        Ok(pieces)
    }
}

#[cfg(test)]
#[path = "runtime_tests.rs"]
mod tests;
