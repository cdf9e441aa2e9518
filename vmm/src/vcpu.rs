//! vCPU threads: each runs `KVM_RUN` in a loop and routes exits to the port-I/O and MMIO buses;
//! exits that end the VM (triple fault, system events, emulation failures) are reported as a
//! [`VmExit`]. The main thread stops a vCPU by clearing `running` and kicking the thread with a
//! signal so that `KVM_RUN` returns `EINTR`.

use crate::timeline::Timeline;
use crate::vm::VmExit;
use devices::bus::{MmioBus, PioBus};
use devices::legacy::StopSignal;
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use tee::uapi::KVM_EXIT_TDX;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// The signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler once per process.
pub fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = register_signal_handler(kick_signal(), on_kick) {
            tracing::error!("cannot install the vCPU kick handler: {e}");
        }
    });
}

/// Shared state of the VM the vCPU threads report to.
#[derive(Clone)]
pub struct VcpuShared {
    pub pio: Arc<PioBus>,
    pub mmio: Arc<MmioBus>,
    pub stop: StopSignal,
    pub fault: Arc<Mutex<Option<VmExit>>>,
    pub running: Arc<AtomicBool>,
    pub timeline: Timeline,
    /// Confidential run-time handling (page-state changes, memory faults, termination
    /// requests; a TD's `KVM_EXIT_TDX` and fatal errors).
    pub tee: Option<Arc<crate::tee_kvm::runtime::TeeRuntime>>,
    /// The userspace IOAPIC of a split-irqchip VM: `KVM_EXIT_IOAPIC_EOI` goes there.
    pub ioapic: Option<Arc<Mutex<devices::ioapic::Ioapic>>>,
}

impl VcpuShared {
    fn fail(&self, exit: VmExit) {
        let mut f = self.fault.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(exit);
        }
        let _ = self.stop.eventfd().write(1);
    }
}

/// The system events every VM has: power-off, reset, crash.
fn system_event(sh: &VcpuShared, id: u32, kind: u32) {
    match kind {
        KVM_SYSTEM_EVENT_SHUTDOWN => sh.stop.stop(devices::legacy::GuestStop::PowerOff),
        KVM_SYSTEM_EVENT_RESET => sh.stop.stop(devices::legacy::GuestStop::Reset),
        KVM_SYSTEM_EVENT_CRASH => sh.stop.stop(devices::legacy::GuestStop::Panic),
        other => sh.fail(VmExit::Failed(format!(
            "vCPU {id}: unhandled KVM system event {other}"
        ))),
    }
}

/// Runs vCPU `id` until the VM stops.
pub fn run(mut fd: VcpuFd, id: u32, sh: VcpuShared) {
    if let Err(e) = seccomp::install(seccomp::ThreadKind::Vcpu) {
        sh.fail(VmExit::Failed(e.to_string()));
        return;
    }
    let mut first = true;
    while sh.running.load(Ordering::Acquire) {
        if first {
            sh.timeline.mark_vcpu("first_kvm_run", id);
            first = false;
        }
        match fd.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                sh.pio.pio_read(port, data);
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                sh.pio.pio_write(port, data);
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                sh.mmio.mmio_read(addr, data);
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                sh.mmio.mmio_write(addr, data);
            }
            Ok(VcpuExit::Hlt) => {
                // With the in-kernel LAPIC, HLT does not exit; if it does, nothing will wake
                // this vCPU, which is how a halted single-vCPU guest ends.
                tracing::debug!(vcpu = id, "vCPU halted");
                std::thread::park_timeout(std::time::Duration::from_millis(10));
            }
            Ok(VcpuExit::Shutdown) => {
                tracing::warn!(vcpu = id, "triple fault");
                sh.fail(VmExit::TripleFault);
            }
            Ok(VcpuExit::Hypercall(h)) => {
                match sh.tee.as_ref().and_then(|t| t.on_hypercall(h.nr, &h.args)) {
                    Some(ret) => *h.ret = ret,
                    None => sh.fail(VmExit::Failed(format!(
                        "vCPU {id}: unhandled hypercall {}",
                        h.nr
                    ))),
                }
            }
            Ok(VcpuExit::MemoryFault { flags, gpa, size }) => {
                let handled = sh.tee.as_ref().map(|t| t.on_memory_fault(flags, gpa, size));
                match handled {
                    Some(Ok(())) => {}
                    Some(Err(e)) => sh.fail(VmExit::Failed(format!("vCPU {id}: {e}"))),
                    None => sh.fail(VmExit::Failed(format!(
                        "vCPU {id}: memory fault at {gpa:#x}+{size:#x} (flags {flags:#x}) outside a confidential VM"
                    ))),
                }
            }
            Ok(VcpuExit::IoapicEoi(vector)) => match &sh.ioapic {
                Some(io) => devices::bus::lock(io).end_of_interrupt(vector),
                None => tracing::debug!(vcpu = id, vector, "IOAPIC EOI without an IOAPIC"),
            },
            Ok(VcpuExit::Unsupported(KVM_EXIT_TDX)) => {
                let answered = match sh.tee.as_ref() {
                    Some(t) => t.on_tdx_exit(fd.get_kvm_run(), id),
                    None => Err(crate::error::VmmError::Input(
                        "KVM_EXIT_TDX from a VM that is not a TD".into(),
                    )),
                };
                if let Err(e) = answered {
                    sh.fail(VmExit::Failed(format!("vCPU {id}: {e}")));
                }
            }
            Ok(VcpuExit::SystemEvent(kind, data))
                if sh.tee.as_ref().is_some_and(|t| t.is_tdx()) =>
            {
                let reason = sh
                    .tee
                    .as_ref()
                    .and_then(|t| t.on_tdx_fatal(kind, data))
                    .map(|f| crate::tee_kvm::tdx::fatal_reason(&f));
                match reason {
                    Some(r) => sh.fail(VmExit::Failed(format!("vCPU {id}: {r}"))),
                    None => system_event(&sh, id, kind),
                }
            }
            Ok(VcpuExit::SystemEvent(kind, data))
                if sh
                    .tee
                    .as_ref()
                    .is_some_and(|t| t.on_system_event(kind, data).is_some()) =>
            {
                sh.fail(VmExit::Failed(format!(
                    "vCPU {id}: the guest asked to terminate (SEV-SNP, system event {kind})"
                )));
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => system_event(&sh, id, kind),
            Ok(VcpuExit::InternalError) => {
                let run = fd.get_kvm_run();
                // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the member of
                // the exit union KVM filled in.
                let internal = unsafe { run.__bindgen_anon_1.internal };
                let n = (internal.ndata as usize).min(internal.data.len());
                sh.fail(VmExit::InternalError(format!(
                    "vCPU {id}: KVM internal error, suberror {} data {:x?}",
                    internal.suberror,
                    &internal.data[..n]
                )));
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => sh.fail(VmExit::Failed(format!(
                "vCPU {id}: VM entry failed, hardware reason {reason:#x} on host CPU {cpu}"
            ))),
            Ok(VcpuExit::Intr) => {}
            Ok(other) => {
                tracing::warn!(vcpu = id, exit = ?other, "unexpected vCPU exit");
                sh.fail(VmExit::Failed(format!(
                    "vCPU {id}: unexpected exit {other:?}"
                )));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                fd.set_kvm_immediate_exit(0);
            }
            Err(e) => sh.fail(VmExit::Failed(format!("vCPU {id}: KVM_RUN failed: {e}"))),
        }
        if sh.fault.lock().map(|f| f.is_some()).unwrap_or(true) || sh.stop.reason().is_some() {
            break;
        }
    }
    tracing::debug!(vcpu = id, "vCPU thread exits");
}
