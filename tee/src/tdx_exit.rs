//! TDX run-time exits (spec §6 step 8): `KVM_EXIT_TDX` sub-calls (GetQuote,
//! SetupEventNotifyInterrupt, GetTdVmCallInfo; anything else is answered SUBFUNC_UNSUPPORTED),
//! `KVM_SYSTEM_EVENT_TDX_FATAL` decoding, and the event-notify MSI. `KVM_HC_MAP_GPA_RANGE`
//! and `KVM_EXIT_MEMORY_FAULT` are the same as for SNP ([`crate::runtime::PageStateChanges`]).
//! Everything here works on plain values, so it is tested
//! without KVM.

use std::sync::{Arc, Mutex, PoisonError};

use crate::quote::{QuoteService, SharedMemory};
use crate::tdx::TdxCapabilities;
use crate::uapi::*;

/// A decoded `KVM_EXIT_TDX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TdxVmcall {
    GetQuote { gpa: u64, size: u64 },
    SetupEventNotify { vector: u64 },
    GetTdVmCallInfo { leaf: u64 },
    Unknown { nr: u64 },
}

/// Decodes `kvm_run.tdx`.
pub fn decode(run: &KvmRunTdx) -> TdxVmcall {
    match run.nr {
        TDVMCALL_GET_QUOTE => TdxVmcall::GetQuote {
            gpa: run.args[0],
            size: run.args[1],
        },
        TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT => TdxVmcall::SetupEventNotify {
            vector: run.args[0],
        },
        TDVMCALL_GET_TD_VM_CALL_INFO => TdxVmcall::GetTdVmCallInfo { leaf: run.args[0] },
        nr => TdxVmcall::Unknown { nr },
    }
}

/// The interrupt the guest asked for when a quote completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventNotify {
    pub vector: u8,
    /// APIC ID of the vCPU that registered it.
    pub apic_id: u32,
}

impl EventNotify {
    /// `KVM_SIGNAL_MSI` address (lo | hi << 32) and data: fixed delivery of `vector` to
    /// `apic_id` (bits 8..32 of the ID go in the extended destination, address bits 40..63).
    pub fn msi(&self) -> (u64, u32) {
        let lo = 0xfee0_0000u64 | u64::from(self.apic_id & 0xff) << 12;
        let hi = u64::from(self.apic_id & 0xffff_ff00) << 32;
        (lo | hi, u32::from(self.vector))
    }
}

/// Called when a quote completes, with the registered notify interrupt (if any).
pub type Notifier = Arc<dyn Fn(Option<EventNotify>) + Send + Sync>;

/// Answers `KVM_EXIT_TDX` for one TD.
pub struct TdxExits {
    r11: u64,
    r12: u64,
    notify: Arc<Mutex<Option<EventNotify>>>,
    quotes: QuoteService,
    notifier: Notifier,
}

impl TdxExits {
    /// `caps` from the launch; `notifier` injects the interrupt (e.g. `KVM_SIGNAL_MSI`).
    pub fn new(caps: &TdxCapabilities, quotes: QuoteService, notifier: Notifier) -> Self {
        TdxExits {
            // Userspace implements SetupEventNotifyInterrupt; KVM reports its own bits.
            r11: (caps.user_tdvmcallinfo_1_r11 & TDVMCALLINFO_1_R11_SETUP_EVENT_NOTIFY)
                | caps.kernel_tdvmcallinfo_1_r11,
            r12: caps.kernel_tdvmcallinfo_1_r12,
            notify: Arc::new(Mutex::new(None)),
            quotes,
            notifier,
        }
    }

    /// The registered notify interrupt.
    pub fn event_notify(&self) -> Option<EventNotify> {
        *self.notify.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Handles one exit from vCPU `apic_id` and sets `run.ret` (and the GetTdVmCallInfo
    /// outputs). Every sub-call gets an answer.
    pub fn handle(&self, run: &mut KvmRunTdx, apic_id: u32, mem: &Arc<dyn SharedMemory>) {
        let call = decode(run);
        run.ret = match call {
            TdxVmcall::GetQuote { gpa, size } => {
                let (notify, notifier) = (self.notify.clone(), self.notifier.clone());
                let done = Box::new(move || {
                    notifier(*notify.lock().unwrap_or_else(PoisonError::into_inner))
                });
                self.quotes.get_quote(mem.clone(), gpa, size, done)
            }
            TdxVmcall::SetupEventNotify { vector } => match u8::try_from(vector) {
                Ok(v) if v >= 32 => {
                    *self.notify.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(EventNotify { vector: v, apic_id });
                    TDVMCALL_STATUS_SUCCESS
                }
                _ => TDVMCALL_STATUS_INVALID_OPERAND,
            },
            TdxVmcall::GetTdVmCallInfo { leaf: 1 } => {
                run.args[1..5].copy_from_slice(&[self.r11, self.r12, 0, 0]);
                TDVMCALL_STATUS_SUCCESS
            }
            TdxVmcall::GetTdVmCallInfo { .. } => TDVMCALL_STATUS_INVALID_OPERAND,
            TdxVmcall::Unknown { .. } => TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED,
        };
        tracing::debug!(?call, ret = run.ret, "KVM_EXIT_TDX answered");
    }
}

/// A guest's `TDG.VP.VMCALL<ReportFatalError>` (`KVM_SYSTEM_EVENT_TDX_FATAL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxFatal {
    pub error_code: u64,
    /// The guest's message (up to 64 ASCII bytes from R14, R15, RBX, RDI, RSI, R8, R9, RDX).
    pub message: String,
    /// Set when the error code's bit 63 says R13 holds a GPA.
    pub gpa: Option<u64>,
}

/// Decodes `KVM_EXIT_SYSTEM_EVENT`: `Some` for `KVM_SYSTEM_EVENT_TDX_FATAL`, whose `data` holds
/// the guest GPRs in x86 order (RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8..R15).
pub fn system_event(event_type: u32, data: &[u64]) -> Option<TdxFatal> {
    if event_type != KVM_SYSTEM_EVENT_TDX_FATAL {
        return None;
    }
    let reg = |i: usize| data.get(i).copied().unwrap_or(0);
    let (error_code, mask) = (reg(12), reg(1));
    let mut bytes = Vec::new();
    for r in [14, 15, 3, 7, 6, 8, 9, 2] {
        if mask & (1 << r) != 0 {
            bytes.extend_from_slice(&reg(r).to_le_bytes());
        }
    }
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let message = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let gpa = (error_code & (1 << 63) != 0).then(|| reg(13));
    Some(TdxFatal {
        error_code,
        message,
        gpa,
    })
}

#[cfg(test)]
#[path = "tdx_exit_tests.rs"]
mod tests;
