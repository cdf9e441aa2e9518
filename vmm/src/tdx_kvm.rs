//! The Intel TDX boot step of `Vm::build` (the sibling of `tee_kvm::snp_boot`) and the TD's
//! run-time exits. The boot builds the launch plan from a TDVF image (`--firmware`, e.g.
//! Debian's OVMF.fd) or a TDX-platform IGVM file (the same plan `cvmm measure --mode tdx`
//! hashes), maps the firmware's range below 4 GiB, and runs `tee::tdx::TdxLauncher` over
//! [`KvmTeeOps`]; the VM comes back created, private, measured and finalized. At run time
//! [`TdxRuntime`] answers `KVM_EXIT_TDX` (which kvm-ioctls reports as
//! `VcpuExit::Unsupported(40)`) by reading `kvm_run.tdx` at its documented offset, letting
//! `tee::tdx_exit::TdxExits` decide, and writing the answer back before the next `KVM_RUN`.
//! None of this can run on a host without TDX; the pieces are tested with synthetic inputs.

use super::{ram_regions, read, KvmTeeOps, LaunchedVm, TeeRuntime, VcpuHook, VmHook};
use crate::error::{Result, VmmError};
use crate::memory::GuestMem;
use crate::spec::VmSpec;
use kvm_bindings::{kvm_msi, kvm_run, CpuId};
use kvm_ioctls::VmFd;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tee::quote::{QgsAddr, QuoteService, SharedMemory, Spawner};
use tee::snp::RamRegion;
use tee::tdx::{TdxCapabilities, TdxConfig, TdxLauncher, TdxProgress};
use tee::tdx_exit::{EventNotify, Notifier, TdxExits, TdxFatal, TdxVmcall};
use tee::tdx_plan::TdxPlan;
use tee::uapi::{KvmRunTdx, KVM_EXIT_TDX, KVM_RUN_EXIT_UNION_OFFSET, TDX_XFAM_REQUIRED};
use vm_memory::{Bytes, GuestAddress};

/// TD attribute SEPT_VE_DISABLE (bit 28): EPT violations on pending pages are not turned into
/// #VE in the guest; QEMU's `sept-ve-disable` default.
pub const TDX_ATTR_SEPT_VE_DISABLE: u64 = 1 << 28;
/// How long one GetQuote exchange with the QGS may take in all (request out, quote in).
pub const QUOTE_DEADLINE: Duration = Duration::from_secs(30);

const PAGE: u64 = 4096;

// The TDX member of the exit union sits where `tee::uapi` says.
const _: () = {
    assert!(std::mem::offset_of!(kvm_run, __bindgen_anon_1) == KVM_RUN_EXIT_UNION_OFFSET);
    assert!(
        std::mem::size_of::<kvm_run>()
            >= KVM_RUN_EXIT_UNION_OFFSET + std::mem::size_of::<KvmRunTdx>()
    );
    assert!(std::mem::size_of::<KvmRunTdx>() == 8 * TDX_WORDS);
};

/// The u64 words of `kvm_run.tdx` (flags, nr, ret, args[5]); from word 2 (`ret`) on they are
/// what userspace writes back.
const TDX_WORDS: usize = 8;
const TDX_FIRST_OUT: usize = 2;

fn tdx_from_words(w: &[u64; TDX_WORDS]) -> KvmRunTdx {
    KvmRunTdx {
        flags: w[0],
        nr: w[1],
        ret: w[2],
        args: [w[3], w[4], w[5], w[6], w[7]],
    }
}

fn tdx_to_words(t: &KvmRunTdx) -> [u64; TDX_WORDS] {
    let a = t.args;
    [t.flags, t.nr, t.ret, a[0], a[1], a[2], a[3], a[4]]
}

/// Answers the `KVM_EXIT_TDX` in `run`: reads `kvm_run.tdx` (offset 32), lets `answer` set
/// `ret` (and the outputs of the sub-call), and writes `ret` and the outputs back. Returns the
/// exit as answered; `Err` names the exit reason when `run` holds no `KVM_EXIT_TDX`.
pub fn answer_tdx_exit(
    run: &mut kvm_run,
    answer: impl FnOnce(&mut KvmRunTdx),
) -> std::result::Result<KvmRunTdx, String> {
    if run.exit_reason != KVM_EXIT_TDX {
        return Err(format!(
            "exit reason {} is not KVM_EXIT_TDX ({KVM_EXIT_TDX})",
            run.exit_reason
        ));
    }
    // SAFETY: `run` is an exclusively borrowed, plain-old-data #[repr(C)] kvm_run (the vCPU's
    // mmap'ed run area, or a test's copy); its bytes may be viewed for its whole size while
    // the borrow lasts, and every byte pattern written back is valid for it.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(
            (run as *mut kvm_run).cast::<u8>(),
            std::mem::size_of::<kvm_run>(),
        )
    };
    let area = &mut bytes[KVM_RUN_EXIT_UNION_OFFSET..KVM_RUN_EXIT_UNION_OFFSET + 8 * TDX_WORDS];
    let mut words = [0u64; TDX_WORDS];
    for (w, b) in words.iter_mut().zip(area.chunks_exact(8)) {
        *w = u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
    }
    let mut tdx = tdx_from_words(&words);
    answer(&mut tdx);
    let out = tdx_to_words(&tdx);
    for (i, b) in area.chunks_exact_mut(8).enumerate().skip(TDX_FIRST_OUT) {
        b.copy_from_slice(&out[i].to_le_bytes());
    }
    Ok(tdx)
}

/// Guest RAM as the quote path sees it: the shared (host-visible) mapping of the GetQuote
/// buffer, by copies.
pub struct GuestShared(pub GuestMem);

impl SharedMemory for GuestShared {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
    }

    fn write(&self, gpa: u64, data: &[u8]) -> io::Result<()> {
        self.0
            .write_slice(data, GuestAddress(gpa))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
    }
}

/// The run-time side of one TD, shared by its vCPU threads.
pub struct TdxRuntime {
    exits: TdxExits,
    mem: Arc<dyn SharedMemory>,
}

impl TdxRuntime {
    /// Run-time handling with the capabilities of the launch, quotes through `quotes`, guest
    /// memory `mem`, and `notifier` for the GetQuote completion interrupt.
    pub fn new(
        caps: &TdxCapabilities,
        quotes: QuoteService,
        mem: Arc<dyn SharedMemory>,
        notifier: Notifier,
    ) -> Self {
        TdxRuntime {
            exits: TdxExits::new(caps, quotes, notifier),
            mem,
        }
    }

    /// Answers the `KVM_EXIT_TDX` of the vCPU with APIC ID `apic_id` in its `run` area.
    pub fn on_exit(&self, run: &mut kvm_run, apic_id: u32) -> Result<TdxVmcall> {
        let answered = answer_tdx_exit(run, |tdx| self.exits.handle(tdx, apic_id, &self.mem))
            .map_err(|e| VmmError::Host {
                what: "KVM_EXIT_TDX",
                source: io::Error::other(e),
            })?;
        Ok(tee::tdx_exit::decode(&answered))
    }

    /// The GetQuote completion interrupt the guest registered, if any.
    pub fn event_notify(&self) -> Option<EventNotify> {
        self.exits.event_notify()
    }
}

/// A TD's fatal error as the reason the VM failed: the guest's error code, its message and
/// the GPA it named, if any.
pub fn fatal_reason(f: &TdxFatal) -> String {
    let mut s = format!(
        "the TD reported a fatal error, error code {:#x}",
        f.error_code
    );
    if !f.message.is_empty() {
        s.push_str(&format!(": \"{}\"", f.message.escape_debug()));
    }
    if let Some(gpa) = f.gpa {
        s.push_str(&format!(" (GPA {gpa:#x})"));
    }
    s
}

/// Where GetQuote requests go: `spec.tdx.quote_generation`, by default vsock CID 2 port 4050.
pub fn quote_address(spec: &VmSpec) -> Result<QgsAddr> {
    match &spec.tdx.quote_generation {
        None => Ok(QgsAddr::default()),
        Some(s) => s
            .parse::<QgsAddr>()
            .map_err(|e| VmmError::Input(format!("TDX quote-generation socket '{s}': {e}"))),
    }
}

/// Starts GetQuote workers with their own seccomp filter (through the worker spawner).
fn quote_spawner() -> Spawner {
    Arc::new(|name, body| seccomp::spawn(name, seccomp::ThreadKind::Quote, body).map(|_| ()))
}

/// `KVM_SIGNAL_MSI` of the registered notify vector when a quote completes (nothing when the
/// guest registered none: it polls the buffer).
fn msi_notifier(vm: VmFd) -> Notifier {
    let vm = Arc::new(vm);
    Arc::new(move |notify: Option<EventNotify>| {
        let Some(n) = notify else { return };
        let (address, data) = n.msi();
        let msi = kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        if let Err(e) = vm.signal_msi(msi) {
            tracing::warn!(vector = n.vector, apic_id = n.apic_id, error = %e,
                "GetQuote: cannot inject the completion interrupt");
        }
    })
}

/// XCR0 | IA32_XSS features the CPUID offers (leaf 0xD sub-leaves 0 and 1): the XFAM the TD
/// gets where KVM's `supported_xfam` allows.
pub fn xfam_from_cpuid(cpuid: &CpuId) -> u64 {
    let leaf = |index: u32| {
        cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == 0xd && e.index == index)
    };
    let xcr0 = leaf(0).map_or(0, |e| u64::from(e.eax) | u64::from(e.edx) << 32);
    let xss = leaf(1).map_or(0, |e| u64::from(e.ecx) | u64::from(e.edx) << 32);
    xcr0 | xss | TDX_XFAM_REQUIRED
}

/// The plan's ranges that no RAM region holds, as one page-aligned window below 4 GiB
/// (TDVF's BFV and CFV end at 4 GiB); `None` when RAM holds every range.
pub fn firmware_window(plan: &TdxPlan, ram: &[RamRegion]) -> Result<Option<(u64, u64)>> {
    let in_ram = |gpa: u64, end: u64| {
        ram.iter()
            .any(|r| gpa >= r.gpa && end <= r.gpa.saturating_add(r.size))
    };
    let outside: Vec<(u64, u64)> = plan
        .regions
        .iter()
        .map(|r| (r.gpa, r.end()))
        .filter(|&(gpa, end)| !in_ram(gpa, end))
        .collect();
    let Some(lo) = outside.iter().map(|r| r.0).min() else {
        return Ok(None);
    };
    let hi = outside.iter().map(|r| r.1).max().unwrap_or(lo);
    let (lo, hi) = (lo & !(PAGE - 1), hi.next_multiple_of(PAGE));
    let overlaps = ram
        .iter()
        .any(|r| lo < r.gpa.saturating_add(r.size) && r.gpa < hi);
    if hi > 1 << 32 || overlaps {
        return Err(VmmError::Input(format!(
            "TDX firmware: launch ranges {lo:#x}..{hi:#x} are neither in guest RAM nor in a \
             window below 4 GiB that RAM leaves free"
        )));
    }
    Ok(Some((lo, hi - lo)))
}

/// The launch plan from `--igvm` (TDX platform) or `--firmware` (a TDVF).
fn plan_for(spec: &VmSpec) -> Result<TdxPlan> {
    let input = |e: tee::TeeError| VmmError::Input(format!("--tee tdx: {e}"));
    match (&spec.igvm, &spec.firmware) {
        (Some(p), _) => {
            TdxPlan::from_igvm(&p.display().to_string(), &read("IGVM file", p)?).map_err(input)
        }
        (None, Some(p)) => {
            TdxPlan::from_tdvf(&p.display().to_string(), &read("firmware", p)?).map_err(input)
        }
        (None, None) => Err(VmmError::Input(
            "--tee tdx needs --firmware TDVF (an OVMF image with TDX metadata) or --igvm FILE"
                .into(),
        )),
    }
}

/// The launch settings of a TD from its spec: SEPT_VE_DISABLE, the XFAM the CPUID offers, the
/// TD report values of `spec.tdx` (zero when unset), vCPU 0's CPUID, the memslots and the E820
/// RAM for the TD HOB.
fn tdx_config(spec: &VmSpec, cpuid: &CpuId, ram: Vec<RamRegion>) -> TdxConfig {
    let report_value = |v: Option<crate::spec::TdReportValue>| v.map_or([0; 48], |v| v.0);
    TdxConfig {
        vcpus: spec.vcpus,
        attributes: TDX_ATTR_SEPT_VE_DISABLE,
        xfam: TDX_XFAM_REQUIRED,
        xfam_optional: xfam_from_cpuid(cpuid),
        mrconfigid: report_value(spec.tdx.mrconfigid),
        mrowner: report_value(spec.tdx.mrowner),
        mrownerconfig: report_value(spec.tdx.mrownerconfig),
        cpuid: super::bsp_cpuid_entries(cpuid, spec.vcpus),
        ram,
        system_ram: crate::firmware::e820(spec.memory_mib)
            .into_iter()
            .filter(|e| e.kind == devices::firmware::files::E820_RAM)
            .map(|e| (e.addr, e.size))
            .collect(),
    }
}

fn tdx_err(e: tee::TeeError) -> VmmError {
    match e {
        tee::TeeError::Ioctl { .. } => VmmError::Host {
            what: "TDX launch",
            source: io::Error::other(e.to_string()),
        },
        other => VmmError::Input(other.to_string()),
    }
}

/// Checks the VM-level limits of a new TD (the VM hook of a TDX launch): KVM caps the vCPUs of
/// a TD by what the TDX module allows, which the VM fd reports.
pub fn tdx_vm_setup(vm: &VmFd, vcpus: u32) -> Result<()> {
    let max = vm.check_extension_int(kvm_ioctls::Cap::MaxVcpus);
    if max > 0 && vcpus > max as u32 {
        return Err(VmmError::Input(format!(
            "--smp {vcpus}: a TD on this host has at most {max} vCPUs (KVM_CAP_MAX_VCPUS)"
        )));
    }
    Ok(())
}

/// The TDX boot step: the launch plan, the RAM and firmware memslots, the TD HOB's memory map,
/// the launch (with the VMM's hooks), then the run-time handler.
pub fn tdx_boot<'a>(
    spec: &VmSpec,
    mem: &GuestMem,
    cpuid: &CpuId,
    on_vm: VmHook<'a>,
    on_vcpu: VcpuHook<'a>,
    timeline: &crate::timeline::Timeline,
) -> Result<LaunchedVm> {
    if spec.firmware_vars.is_some() {
        return Err(VmmError::Input(
            "--tee tdx: the TDVF is one image loaded into private memory; a separate variable \
             store (--firmware-vars, pflash) is not possible with TDX"
                .into(),
        ));
    }
    let qgs = quote_address(spec)?;
    let mut plan = plan_for(spec)?;
    tracing::info!(
        mrtd = %tee::measure::hex(&plan.mrtd()),
        regions = plan.regions.len(),
        "TDX launch plan built"
    );
    let mut ram = ram_regions(mem)?;
    let firmware = match firmware_window(&plan, &ram)? {
        Some((gpa, size)) => Some(super::firmware_memslot(
            &mut ram,
            gpa,
            size,
            "TDX firmware",
        )?),
        None => None,
    };
    let cfg = tdx_config(spec, cpuid, ram);
    let mut ops = KvmTeeOps::open().with_hooks(on_vm, on_vcpu);
    let (mut pages, mut measured) = (0u64, 0u64);
    let caps = TdxLauncher::new(&mut ops)
        .with_progress(|p| launch_phase(timeline, p, &mut pages, &mut measured))
        .launch(&mut plan, &cfg)
        .map_err(tdx_err)?;
    timeline.set_metric("tee_pages", pages);
    timeline.set_metric("tee_measured_pages", measured);
    let (vm, vcpus, mut keep) = ops.into_parts().map_err(|source| VmmError::Host {
        what: "TDX launch",
        source,
    })?;
    keep._firmware = firmware;
    let host = |source| VmmError::Host {
        what: "TDX run-time handler",
        source,
    };
    let runtime = TeeRuntime::for_vm(&vm, &keep._memfds, &cfg.ram).map_err(host)?;
    let quotes = QuoteService::new(Some(qgs), QUOTE_DEADLINE).with_spawner(quote_spawner());
    let notifier = msi_notifier(super::runtime::dup_vm(&vm).map_err(host)?);
    let tdx = TdxRuntime::new(&caps, quotes, Arc::new(GuestShared(mem.clone())), notifier);
    keep.runtime = Some(Arc::new(runtime.with_tdx(tdx)));
    Ok((vm, vcpus, keep))
}

/// Timeline phases of a TDX launch: start (INIT_VM done), each INIT_MEM_REGION range (named
/// by its GPA, page count, origin and whether it was measured), finish; page totals.
fn launch_phase(
    timeline: &crate::timeline::Timeline,
    p: TdxProgress,
    pages: &mut u64,
    measured_pages: &mut u64,
) {
    match p {
        TdxProgress::Started => timeline.mark("tee_launch_start"),
        TdxProgress::Region {
            gpa,
            pages: n,
            measured,
            origin,
            ..
        } => {
            *pages += n;
            if measured {
                *measured_pages += n;
            }
            let what = match origin {
                tee::tdx_plan::RegionOrigin::Tdvf(kind) => format!("{kind:?}"),
                tee::tdx_plan::RegionOrigin::IgvmPage => "IgvmPage".into(),
                tee::tdx_plan::RegionOrigin::IgvmParameter => "IgvmParameter".into(),
            };
            let m = if measured { ":measured" } else { "" };
            timeline.mark(&format!("tee_init_mem[{gpa:#x}+{n}p:{what}{m}]"));
        }
        TdxProgress::Finished => timeline.mark("tee_launch_finish"),
    }
}

#[cfg(test)]
#[path = "tdx_kvm_tests.rs"]
mod tests;
