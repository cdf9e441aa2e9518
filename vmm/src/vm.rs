//! Building and running one VM from a [`VmSpec`]: KVM VM, guest memory, the interrupt
//! controllers (KVM's irqchip, or the split irqchip with cvmm's IOAPIC), ACPI tables, kernel,
//! legacy devices, vCPU threads, and the device event loop that runs until the guest stops
//! (power-off, reset, panic, triple fault) or the VMM is told to stop.

use crate::acpi;
use crate::boot::{self, BootInputs};
use crate::console::{ConsoleInput, ConsoleOutput};
use crate::cpuid::{self, CpuTemplate};
use crate::error::{kvm_call, Result, VmmError};
use crate::firmware::{self, FirmwareUnit};
use crate::irq::GsiRouting;
use crate::layout::*;
use crate::memory::{self, GuestMem};
use crate::power_button::{ButtonDevice, ButtonWatcher, PowerButton};
use crate::regs;
use crate::spec::{IrqChip, VmSpec};
use crate::timeline::Timeline;
use crate::vcpu::{self, VcpuShared};
use devices::bus::{MmioBus, PioBus, PioDevice};
use devices::chipset::{
    AcpiPm, DebugConsole, PmDecode, DEBUGCON_PORT, PM_BLOCK_LEN, Q35_PM_BASE, Q35_SCI_IRQ,
};
use devices::firmware::{FW_CFG_PORT_BASE, FW_CFG_PORT_LEN};
use devices::interrupt::IrqLine;
use devices::ioapic::{Ioapic, IOAPIC_BASE, IOAPIC_MMIO_LEN, IOAPIC_PINS};
use devices::legacy::{
    AcpiPowerPorts, CmosRtc, DebugPort, GenericEventDevice, GuestStop, PvPanic, SerialPort,
    StopSignal, SystemControlA, GED_PORT_LEN, I8042,
};
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    kvm_enable_cap, kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_CAP_SPLIT_IRQCHIP,
    KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VmFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tee::detect::Platform;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset (reboot).
    Reset,
    /// The guest reported a panic (pvpanic).
    Panic,
    /// The guest triple-faulted.
    TripleFault,
    /// KVM could not run the guest (e.g. emulation failure).
    InternalError(String),
    /// The VMM was told to stop by a signal.
    Signal(i32),
    /// The VMM failed while running.
    Failed(String),
}

impl VmExit {
    /// The process exit status `cvmm run` uses for this end.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExit::PowerOff => 0,
            VmExit::Failed(_) => 1,
            VmExit::Reset => 3,
            VmExit::TripleFault => 4,
            VmExit::Panic => 5,
            VmExit::InternalError(_) => 6,
            VmExit::Signal(s) => 128 + s,
        }
    }

    /// Short machine-friendly name.
    pub fn name(&self) -> &'static str {
        match self {
            VmExit::PowerOff => "poweroff",
            VmExit::Reset => "reset",
            VmExit::Panic => "panic",
            VmExit::TripleFault => "triple_fault",
            VmExit::InternalError(_) => "internal_error",
            VmExit::Signal(_) => "signal",
            VmExit::Failed(_) => "failed",
        }
    }

    /// A one-line human reason.
    pub fn reason(&self) -> String {
        match self {
            VmExit::PowerOff => "guest powered off".into(),
            VmExit::Reset => "guest requested a reset (reboot)".into(),
            VmExit::Panic => "guest kernel panicked (pvpanic)".into(),
            VmExit::TripleFault => "guest triple-faulted (CPU shutdown)".into(),
            VmExit::InternalError(s) => format!("KVM could not run the guest: {s}"),
            VmExit::Signal(s) => format!("stopped by signal {s}"),
            VmExit::Failed(s) => format!("VMM failure: {s}"),
        }
    }
}

/// A port-I/O device shared between the bus and its owner.
type SharedPio = Arc<Mutex<dyn PioDevice>>;
/// The vCPUs of a VM with their ids, as created (not yet running).
type Vcpus = Vec<(u32, kvm_ioctls::VcpuFd)>;

static TERM_FD: AtomicI32 = AtomicI32::new(-1);
static TERM_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_term(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    TERM_SIGNAL.store(sig, Ordering::SeqCst);
    let fd = TERM_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` outlives the call and fd is an eventfd
        // owned by the running VM (a stale fd number only makes the write fail).
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Checks a spec without touching KVM: every user-given value that can be wrong.
pub fn validate(spec: &VmSpec) -> Result<CpuTemplate> {
    if spec.vcpus == 0 {
        return Err(VmmError::Input(
            "--smp 0: a VM needs at least one vCPU".into(),
        ));
    }
    memory::ram_ranges(spec.memory_mib)?;
    match (&spec.kernel, &spec.igvm, &spec.firmware) {
        (Some(_), Some(_), _) => {
            return Err(VmmError::Input(
                "--kernel and --igvm are exclusive: an IGVM file carries its own boot image".into(),
            ))
        }
        (None, None, None) => return Err(VmmError::Input("no --kernel or --igvm given".into())),
        _ => {}
    }
    CpuTemplate::parse(&spec.cpu)
}

/// A VM that has been built and is ready to run.
pub struct Vm {
    _kvm: Kvm,
    vm: Arc<VmFd>,
    _mem: Arc<GuestMem>,
    _pci: Arc<Mutex<devices::pci::PciBus>>,
    vcpus: Vcpus,
    /// SEV-SNP launch resources (/dev/sev, guest_memfd, firmware mapping) kept with the VM.
    _tee: Option<crate::tee_kvm::TeeResources>,
    /// Firmware images of a firmware boot (their memslots; the variable store is synced at
    /// stop) and the firmware's debug console.
    firmware: Vec<Arc<Mutex<FirmwareUnit>>>,
    debugcon: Option<Arc<Mutex<DebugConsole>>>,
    /// The ACPI power button a [`PowerButton`] press reaches.
    button: ButtonDevice,
    shared: VcpuShared,
    serial: Arc<Mutex<SerialPort>>,
    serial_out: ConsoleOutput,
    stdin: bool,
    timeline: Timeline,
}

fn open_kvm() -> Result<Kvm> {
    let kvm = Kvm::new().map_err(|e| {
        VmmError::Kvm(format!(
            "cannot open /dev/kvm: {e} (is the kvm module loaded, and may this user open it?)"
        ))
    })?;
    match kvm.get_api_version() {
        12 => Ok(kvm),
        v => Err(VmmError::Kvm(format!(
            "/dev/kvm does not answer as KVM (KVM_GET_API_VERSION gave {v}, expected 12)"
        ))),
    }
}

impl Vm {
    /// Builds the VM described by `spec`.
    pub fn build(spec: &VmSpec, timeline: Timeline) -> Result<Self> {
        let template = validate(spec)?;
        // The launch path is settled before anything is created (tee::detect).
        let platform = crate::tee_kvm::resolve(spec.tee)?;
        let kvm = open_kvm()?;
        let max = kvm.get_max_vcpus() as u32;
        if spec.vcpus > max {
            return Err(VmmError::Input(format!(
                "--smp {}: KVM allows at most {max} vCPUs per VM",
                spec.vcpus
            )));
        }
        let mut supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_call("KVM_GET_SUPPORTED_CPUID"))?;
        cpuid::apply_template(&mut supported, &template);
        let firmware_boot = runs_firmware(spec, platform);
        if platform == Platform::Plain {
            cpuid::hide_sev(&mut supported);
        }
        let chip = irqchip_for(spec, platform);
        if chip == IrqChip::Split && !kvm.check_extension(kvm_ioctls::Cap::SplitIrqchip) {
            return Err(VmmError::Kvm(
                "--irqchip split: this KVM lacks KVM_CAP_SPLIT_IRQCHIP".into(),
            ));
        }
        let mem = if firmware_boot {
            memory::create_below(spec.memory_mib, firmware::low_ram_bytes(spec.memory_mib))?
        } else {
            memory::create(spec.memory_mib)?
        };

        // Boot step: plain KVM (kernel, native IGVM or firmware) or the SEV-SNP launch.
        let mut fw = None;
        let (vm, vcpus, tee) = match platform {
            Platform::Plain if firmware_boot => {
                let (vm, vcpus, f) = boot_firmware(&kvm, spec, &mem, &supported, &timeline, chip)?;
                fw = Some(f);
                (vm, vcpus, None)
            }
            Platform::Plain => {
                let (vm, vcpus) = plain_boot(&kvm, spec, &mem, &supported, &timeline, chip)?;
                (vm, vcpus, None)
            }
            Platform::Snp => {
                let (vm, vcpus, keep) = crate::tee_kvm::snp_boot(
                    spec,
                    &mem,
                    &supported,
                    Box::new(|vm| platform_setup(vm, KVM_TSS_ADDR, chip)),
                    Box::new(|id, fd| setup_vcpu(fd, id, &supported, spec.vcpus)),
                    &timeline,
                )?;
                timeline.mark("vcpus_created");
                // The firmware in the launch image reads the platform from fw_cfg, as OVMF
                // does under QEMU's igvm-cfg; a measured kernel keeps its file's bytes.
                fw = Some(confidential_firmware_platform(
                    spec,
                    &mem,
                    &supported,
                    &timeline,
                    spec.snp.kernel_hashes,
                    chip,
                )?);
                (vm, vcpus, Some(keep))
            }
            Platform::Tdx => {
                // The launcher enables the split irqchip itself (TDX requires it, before
                // INIT_VM); the VM hook checks the TD's limits. A TD vCPU's registers, MSRs and
                // LAPIC belong to the TDX module: the launcher only gives it its CPUID.
                let (vm, vcpus, keep) = crate::tee_kvm::tdx::tdx_boot(
                    spec,
                    &mem,
                    &supported,
                    Box::new(|vm| crate::tee_kvm::tdx::tdx_vm_setup(vm, spec.vcpus)),
                    Box::new(|_, _| Ok(())),
                    &timeline,
                )?;
                timeline.mark("vcpus_created");
                // TDVF reads the platform from fw_cfg; the kernel goes there as QEMU hands it
                // over (setup header patched): TDX measures it at run time into the RTMRs.
                fw = Some(confidential_firmware_platform(
                    spec, &mem, &supported, &timeline, false, chip,
                )?);
                (vm, vcpus, Some(keep))
            }
        };
        let vm = Arc::new(vm);
        let routing = Arc::new(GsiRouting::new(vm.clone(), chip));
        let ioapic =
            (chip == IrqChip::Split).then(|| Arc::new(Mutex::new(Ioapic::new(routing.clone()))));

        let stop = StopSignal::new().map_err(host_err("stop eventfd"))?;
        let (serial_out, stdin) = ConsoleOutput::open(&spec.serial)?;
        let serial_irq =
            EventFd::new(libc::EFD_NONBLOCK).map_err(host_err("serial irq eventfd"))?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(kvm_call("KVM_IRQFD"))?;
        let serial = Arc::new(Mutex::new(SerialPort::new(
            serial_irq,
            Box::new(serial_out.clone()),
        )));
        let mut pio = PioBus::default();
        let tl = timeline.clone();
        let debug = DebugPort::new(Box::new(move |code, at| tl.debug_code(code, at)));
        let i8042 = if fw.is_some() {
            I8042::reset_only(stop.clone())
        } else {
            I8042::new(stop.clone())
        };
        let mut devs: Vec<(u16, u16, SharedPio)> = vec![
            (COM1_PORT, 8, serial.clone()),
            (0x60, 5, Arc::new(Mutex::new(i8042))),
            (0x70, 2, Arc::new(Mutex::new(CmosRtc::default()))),
            (0x80, 1, Arc::new(Mutex::new(debug))),
            (
                PVPANIC_PORT,
                1,
                Arc::new(Mutex::new(PvPanic::new(stop.clone()))),
            ),
        ];
        let pm_decode = Arc::new(PmDecode::default());
        let mut debugcon = None;
        let mut mmio = MmioBus::default();
        if let Some(io) = &ioapic {
            mmio.insert(IOAPIC_BASE, IOAPIC_MMIO_LEN, io.clone())
                .map_err(|e| VmmError::Memory(format!("IOAPIC map: {e}")))?;
        }
        let mut firmware_units = Vec::new();
        let button;
        let pci_platform = match fw {
            Some(f) => {
                let con = Arc::new(Mutex::new(DebugConsole::new(firmware_log_sink(spec)?)));
                debugcon = Some(con.clone());
                let pm = AcpiPm::new(pm_decode.clone(), stop.clone())
                    .with_sci(sci_line(&vm, ioapic.clone()));
                let pm = Arc::new(Mutex::new(pm));
                button = ButtonDevice::Fixed(pm.clone());
                devs.extend([
                    (Q35_PM_BASE, PM_BLOCK_LEN, pm as SharedPio),
                    (
                        0x92,
                        1,
                        Arc::new(Mutex::new(SystemControlA::new(stop.clone()))),
                    ),
                    (DEBUGCON_PORT, 1, con),
                    (
                        FW_CFG_PORT_BASE,
                        FW_CFG_PORT_LEN,
                        Arc::new(Mutex::new(f.fw_cfg)),
                    ),
                ]);
                for mut unit in f.units {
                    unit.attach(vm.clone());
                    let (base, len) = (unit.gpa(), unit.len());
                    let unit = Arc::new(Mutex::new(unit));
                    mmio.insert(base, len, unit.clone())
                        .map_err(|e| VmmError::Memory(format!("firmware map: {e}")))?;
                    firmware_units.push(unit);
                }
                crate::devices::PciPlatform::Q35 {
                    pm: pm_decode,
                    mmio64: f.mmio64,
                }
            }
            None => {
                let ged_irq =
                    EventFd::new(libc::EFD_NONBLOCK).map_err(host_err("GED irq eventfd"))?;
                vm.register_irqfd(&ged_irq, GED_IRQ)
                    .map_err(kvm_call("KVM_IRQFD"))?;
                let ged = Arc::new(Mutex::new(GenericEventDevice::new(ged_irq)));
                button = ButtonDevice::Ged(ged.clone());
                devs.extend([
                    (
                        ACPI_PM_PORT,
                        3,
                        Arc::new(Mutex::new(AcpiPowerPorts::new(stop.clone()))) as SharedPio,
                    ),
                    (GED_PORT, GED_PORT_LEN, ged),
                ]);
                crate::devices::PciPlatform::Direct
            }
        };
        for (base, len, dev) in devs {
            pio.insert(u64::from(base), u64::from(len), dev)
                .map_err(|e| VmmError::Memory(format!("port map: {e}")))?;
        }

        let mem = Arc::new(mem);
        let pci = crate::devices::attach_pci(
            spec,
            pci_platform,
            &routing,
            &mem,
            (&mut pio, &mut mmio),
            &stop,
            &timeline,
        )?;

        let tee_runtime = tee.as_ref().and_then(|k| k.runtime());
        Ok(Self {
            _kvm: kvm,
            vm,
            _mem: mem,
            _pci: pci,
            vcpus,
            _tee: tee,
            firmware: firmware_units,
            debugcon,
            button,
            shared: VcpuShared {
                pio: Arc::new(pio),
                mmio: Arc::new(mmio),
                stop,
                fault: Arc::new(Mutex::new(None)),
                running: Arc::new(AtomicBool::new(true)),
                timeline: timeline.clone(),
                tee: tee_runtime,
                ioapic,
            },
            serial,
            serial_out,
            stdin,
            timeline,
        })
    }

    /// Runs the VM until it stops; returns how it ended.
    pub fn run(self) -> Result<VmExit> {
        self.run_with(None)
    }

    /// Runs the VM until it stops, delivering presses of `button` to its ACPI power button.
    pub fn run_with(mut self, button: Option<PowerButton>) -> Result<VmExit> {
        vcpu::install_kick_handler();
        let term = EventFd::new(libc::EFD_NONBLOCK).map_err(host_err("signal eventfd"))?;
        TERM_FD.store(term_raw(&term), Ordering::SeqCst);
        for sig in [libc::SIGTERM, libc::SIGINT] {
            if let Err(e) = vmm_sys_util::signal::register_signal_handler(sig, on_term) {
                tracing::warn!("cannot handle signal {sig}: {e}");
            }
        }
        let mut threads = Vec::new();
        for (id, fd) in self.vcpus.drain(..) {
            let sh = self.shared.clone();
            let t = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || vcpu::run(fd, id, sh))
                .map_err(host_err("spawning a vCPU thread"))?;
            threads.push(t);
        }

        let done = Arc::new(AtomicBool::new(false));
        let mut em =
            EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().map_err(|e| {
                VmmError::Host {
                    what: "event manager",
                    source: std::io::Error::other(format!("{e:?}")),
                }
            })?;
        em.add_subscriber(Arc::new(Mutex::new(StopWatcher {
            stop: self
                .shared
                .stop
                .eventfd()
                .try_clone()
                .map_err(host_err("eventfd"))?,
            term: term.try_clone().map_err(host_err("eventfd"))?,
            done: done.clone(),
        })));
        if self.stdin {
            em.add_subscriber(Arc::new(Mutex::new(ConsoleInput::new(self.serial.clone()))));
        }
        if let Some(button) = button {
            em.add_subscriber(Arc::new(Mutex::new(ButtonWatcher {
                button,
                device: self.button.clone(),
                timeline: self.timeline.clone(),
            })));
        }
        // Set-up is over: from here on the main thread only runs the event loop and shutdown.
        if let Err(e) = seccomp::install(seccomp::ThreadKind::Main) {
            tracing::error!(error = %e, "stopping the VM");
            let mut f = self.shared.fault.lock().unwrap_or_else(|p| p.into_inner());
            f.get_or_insert(VmExit::Failed(e.to_string()));
            done.store(true, Ordering::Release);
        }
        while !done.load(Ordering::Acquire) {
            if let Err(e) = em.run_with_timeout(50) {
                tracing::warn!("event loop: {e:?}");
            }
            self.serial_out.flush_pending();
        }
        self.timeline.mark("guest_stop");

        // Stop the vCPUs: clear `running`, then kick until every thread is gone.
        self.shared.running.store(false, Ordering::Release);
        let deadline = Instant::now() + Duration::from_secs(5);
        while threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            for t in threads.iter().filter(|t| !t.is_finished()) {
                let _ = t.kill(vcpu::kick_signal());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for t in threads {
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::error!("a vCPU thread did not stop within 5 s");
            }
        }
        TERM_FD.store(-1, Ordering::SeqCst);
        self.serial_out.flush_pending();
        for unit in &self.firmware {
            devices::bus::lock(unit).sync();
        }
        if let Some(con) = &self.debugcon {
            let mut con = devices::bus::lock(con);
            con.flush();
            self.timeline.set_metric("firmware_log_bytes", con.bytes());
        }
        if let Some(io) = &self.shared.ioapic {
            let io = devices::bus::lock(io);
            self.timeline.set_metric("ioapic_eois", io.eois());
            self.timeline
                .set_metric("ioapic_routes", io.routes_installed());
            self.timeline
                .set_metric("ioapic_route_updates", io.route_updates());
        }

        let fault = self
            .shared
            .fault
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((hwm, guest)) = memory::resident_kib(&self._mem) {
            self.timeline.set_metric("vmm_hwm_kib", hwm);
            self.timeline.set_metric("guest_rss_kib", guest);
            self.timeline
                .set_metric("vmm_overhead_kib", hwm.saturating_sub(guest));
        }
        let exit = match (self.shared.stop.reason(), fault) {
            (Some(GuestStop::PowerOff), _) => VmExit::PowerOff,
            (Some(GuestStop::Reset), _) => VmExit::Reset,
            (Some(GuestStop::Panic), _) => VmExit::Panic,
            (None, Some(f)) => f,
            (None, None) => VmExit::Signal(TERM_SIGNAL.load(Ordering::SeqCst)),
        };
        drop(self.vm);
        Ok(exit)
    }
}

/// The interrupt controllers of a VM on `platform`: a TD always has the split irqchip.
fn irqchip_for(spec: &VmSpec, platform: Platform) -> IrqChip {
    match platform {
        Platform::Tdx => IrqChip::Split,
        Platform::Plain | Platform::Snp => spec.irqchip,
    }
}

/// Sets up a new VM right after `KVM_CREATE_VM`, before any vCPU exists: KVM's TSS at `tss`,
/// then either the in-kernel irqchip and the PIT, or the split irqchip with 24 IOAPIC pins
/// routed by userspace (KVM's PIT needs its PIC, so a split VM has no PIT).
fn platform_setup(vm: &VmFd, tss: usize, chip: IrqChip) -> Result<()> {
    vm.set_tss_address(tss)
        .map_err(kvm_call("KVM_SET_TSS_ADDR"))?;
    match chip {
        IrqChip::Kernel => {
            vm.create_irq_chip()
                .map_err(kvm_call("KVM_CREATE_IRQCHIP"))?;
            let pit = kvm_pit_config {
                flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.create_pit2(pit).map_err(kvm_call("KVM_CREATE_PIT2"))
        }
        IrqChip::Split => {
            let mut cap = kvm_enable_cap {
                cap: KVM_CAP_SPLIT_IRQCHIP,
                ..Default::default()
            };
            cap.args[0] = IOAPIC_PINS as u64;
            vm.enable_cap(&cap)
                .map_err(kvm_call("KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP, 24)"))
        }
    }
}

/// Per-vCPU set-up shared by every boot path: CPUID, MSRs, FPU, LAPIC.
fn setup_vcpu(fd: &kvm_ioctls::VcpuFd, id: u32, supported: &CpuId, count: u32) -> Result<()> {
    fd.set_cpuid2(&cpuid::for_vcpu(supported, id, count))
        .map_err(kvm_call("KVM_SET_CPUID2"))?;
    regs::setup_msrs(fd)?;
    regs::setup_fpu(fd)?;
    regs::setup_lapic(fd)
}

/// Registers guest RAM with KVM, one memslot per region from slot 0.
fn map_ram(vm: &VmFd, mem: &GuestMem) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmmError::Memory(format!("region {slot}: {e}")))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the Vm keeps for as
        // long as the KVM VM exists; slots are distinct and do not overlap.
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm_call("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// How the BSP of a plain VM starts.
enum BspStart {
    Kernel(boot::KernelEntry),
    Igvm(Box<igvm_defs::IgvmNativeVpContextX64>),
}

/// Plain KVM boot: VM, memslots, platform, ACPI, then the kernel or a native IGVM file, then
/// the vCPUs with the BSP's registers.
fn plain_boot(
    kvm: &Kvm,
    spec: &VmSpec,
    mem: &GuestMem,
    supported: &CpuId,
    timeline: &Timeline,
    chip: IrqChip,
) -> Result<(VmFd, Vcpus)> {
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    timeline.mark("kvm_vm_created");
    // Memslots before the irqchip: on PVM hosts a memslot added once the in-kernel irqchip
    // exists costs ~5 ms instead of ~0.2 ms. The split irqchip only needs to precede vCPUs.
    map_ram(&vm, mem)?;
    timeline.mark("memory_mapped");
    platform_setup(&vm, KVM_TSS_ADDR, chip)?;

    // ACPI goes first: an IGVM file's pages may overwrite the BIOS area if it wants to.
    let acpi_platform = acpi::AcpiPlatform::direct().with_split_irqchip(chip == IrqChip::Split);
    let rsdp = acpi::write_tables_for(mem, spec.vcpus, &acpi_platform)?;
    let bsp = match (&spec.igvm, &spec.kernel) {
        (Some(path), _) => {
            let data = std::fs::read(path).map_err(|source| VmmError::ReadFile {
                what: "IGVM file",
                path: path.clone(),
                source,
            })?;
            let params = crate::igvm_boot::NativeParams {
                vcpus: spec.vcpus,
                memory_mib: spec.memory_mib,
                cmdline: &spec.cmdline,
            };
            let name = path.display().to_string();
            let b = crate::igvm_boot::load_native(mem, &name, &data, &params)?;
            BspStart::Igvm(Box::new(b.context))
        }
        (None, Some(kernel)) => {
            let entry = boot::load(
                mem,
                &BootInputs {
                    kernel,
                    initrd: spec.initrd.as_deref(),
                    cmdline: &spec.cmdline,
                    memory_mib: spec.memory_mib,
                    rsdp,
                },
            )?;
            tracing::info!(
                protocol = entry.protocol.name(),
                entry = format!("{:#x}", entry.rip),
                "kernel loaded"
            );
            BspStart::Kernel(entry)
        }
        (None, None) => {
            return Err(VmmError::Input(
                "nothing to boot: give --kernel, --igvm or --firmware".into(),
            ))
        }
    };
    timeline.mark("images_loaded");

    let vcpus = create_vcpus(&vm, spec, supported, |fd| match &bsp {
        BspStart::Kernel(entry) => {
            regs::setup_sregs(mem, fd, entry)?;
            regs::setup_regs(fd, entry)
        }
        BspStart::Igvm(ctx) => crate::igvm_boot::apply_context(fd, ctx),
    })?;
    timeline.mark("vcpus_created");
    Ok((vm, vcpus))
}

/// Creates the spec's vCPUs with the set-up every boot path shares; `bsp` then sets vCPU 0's
/// start state.
fn create_vcpus(
    vm: &VmFd,
    spec: &VmSpec,
    supported: &CpuId,
    bsp: impl FnOnce(&kvm_ioctls::VcpuFd) -> Result<()>,
) -> Result<Vcpus> {
    let mut vcpus = Vec::new();
    let mut bsp = Some(bsp);
    for id in 0..spec.vcpus {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(kvm_call("KVM_CREATE_VCPU"))?;
        setup_vcpu(&fd, id, supported, spec.vcpus)?;
        if let Some(start) = bsp.take() {
            start(&fd)?;
        }
        vcpus.push((id, fd));
    }
    Ok(vcpus)
}

/// What a firmware boot hands to the device stage.
pub(crate) struct FirmwarePlatform {
    units: Vec<FirmwareUnit>,
    fw_cfg: devices::firmware::FwCfg,
    mmio64: Option<(u64, u64)>,
}

/// The guest's physical address width from the CPUID it gets (36 when not reported).
fn phys_bits(cpuid: &CpuId) -> u8 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map_or(36, |e| (e.eax & 0xff) as u8)
}

/// Firmware boot: VM, RAM memslots, the firmware images as read-only memslots ending at
/// 4 GiB, the platform, fw_cfg (memory map, vCPUs, ACPI, kernel), then the vCPUs left in
/// their reset state: the BSP starts at the reset vector, the APs wait for the firmware's
/// INIT-SIPI.
fn boot_firmware(
    kvm: &Kvm,
    spec: &VmSpec,
    mem: &GuestMem,
    supported: &CpuId,
    timeline: &Timeline,
    chip: IrqChip,
) -> Result<(VmFd, Vcpus, FirmwarePlatform)> {
    if !kvm.check_extension(kvm_ioctls::Cap::ReadonlyMem) {
        return Err(VmmError::Kvm(
            "firmware boot needs KVM_CAP_READONLY_MEM (read-only memslots for the firmware)".into(),
        ));
    }
    let mut units = crate::firmware::load_units(spec)?;
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    timeline.mark("kvm_vm_created");
    map_ram(&vm, mem)?;
    for u in &mut units {
        u.map(&vm)?;
    }
    timeline.mark("memory_mapped");
    platform_setup(&vm, crate::firmware::FW_TSS_ADDR, chip)?;
    if kvm.check_extension(kvm_ioctls::Cap::SetIdentityMapAddr) {
        vm.set_identity_map_address(crate::firmware::FW_IDENTITY_MAP_ADDR)
            .map_err(kvm_call("KVM_SET_IDENTITY_MAP_ADDR"))?;
    }
    let platform = firmware_platform(spec, mem, supported, timeline, false, chip, units)?;
    timeline.mark("images_loaded");
    // The BSP keeps the architectural reset state: it starts at the reset vector.
    let vcpus = create_vcpus(&vm, spec, supported, |_| Ok(()))?;
    timeline.mark("vcpus_created");
    Ok((vm, vcpus, platform))
}

/// Whether the guest starts in firmware and so gets the q35-like platform with fw_cfg: a
/// firmware boot, or a confidential launch (whose IGVM file or OVMF image is firmware).
fn runs_firmware(spec: &VmSpec, platform: Platform) -> bool {
    match platform {
        Platform::Plain => spec.firmware.is_some(),
        Platform::Snp | Platform::Tdx => spec.firmware.is_some() || spec.igvm.is_some(),
    }
}

/// The fw_cfg and windows of a firmware platform (the firmware images, if any, are `units`).
fn firmware_platform(
    spec: &VmSpec,
    mem: &GuestMem,
    supported: &CpuId,
    timeline: &Timeline,
    pristine_kernel: bool,
    chip: IrqChip,
    units: Vec<FirmwareUnit>,
) -> Result<FirmwarePlatform> {
    let mmio64 = crate::firmware::mmio64_window(spec.memory_mib, phys_bits(supported));
    let acpi_platform = acpi::AcpiPlatform::q35(mmio64).with_split_irqchip(chip == IrqChip::Split);
    let fw_cfg = crate::firmware::fw_cfg(crate::firmware::FwCfgInputs {
        spec,
        acpi: acpi::firmware_tables(spec.vcpus, &acpi_platform),
        mem: Arc::new(mem.clone()),
        timeline,
        pristine_kernel,
    })?;
    Ok(FirmwarePlatform {
        units,
        fw_cfg,
        mmio64,
    })
}

/// The platform of a confidential launch: fw_cfg without firmware units (the firmware is
/// part of the launched, private image).
pub(crate) fn confidential_firmware_platform(
    spec: &VmSpec,
    mem: &GuestMem,
    supported: &CpuId,
    timeline: &Timeline,
    measured_kernel: bool,
    chip: IrqChip,
) -> Result<FirmwarePlatform> {
    firmware_platform(
        spec,
        mem,
        supported,
        timeline,
        measured_kernel,
        chip,
        Vec::new(),
    )
}

/// Where the firmware's debug console lines go: `--firmware-log FILE`, else debug logs.
fn firmware_log_sink(spec: &VmSpec) -> Result<devices::chipset::debugcon::LineSink> {
    let Some(path) = &spec.firmware_log else {
        return Ok(Box::new(
            |line| tracing::debug!(target: "cvmm::firmware", "{}", String::from_utf8_lossy(line)),
        ));
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| VmmError::Input(format!("--firmware-log '{}': {e}", path.display())))?;
    Ok(Box::new(move |line| {
        use std::io::Write;
        let _ = f.write_all(line).and_then(|()| f.write_all(b"\n"));
    }))
}

fn term_raw(e: &EventFd) -> i32 {
    use std::os::fd::AsRawFd;
    e.as_raw_fd()
}

fn kvm_err(call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |e| {
        if e.errno() == libc::EACCES || e.errno() == libc::ENOENT {
            VmmError::Kvm(format!("{call}: {e}"))
        } else {
            VmmError::KvmCall { call, source: e }
        }
    }
}

fn host_err(what: &'static str) -> impl FnOnce(std::io::Error) -> VmmError {
    move |source| VmmError::Host { what, source }
}

/// Ends the event loop when the VM must stop or the VMM got SIGTERM/SIGINT.
struct StopWatcher {
    stop: EventFd,
    term: EventFd,
    done: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.stop.read();
        let _ = self.term.read();
        self.done.store(true, Ordering::Release);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [&self.stop, &self.term] {
            if let Err(e) = ops.add(Events::new(fd, event_manager::EventSet::IN)) {
                tracing::error!("cannot watch the stop eventfd: {e:?}");
            }
        }
    }
}

/// The SCI of the q35 PM block: IRQ 9, level-triggered, on KVM's irqchip (KVM_IRQ_LINE) or,
/// with the split irqchip, on cvmm's IOAPIC.
fn sci_line(vm: &Arc<VmFd>, ioapic: Option<Arc<Mutex<Ioapic>>>) -> IrqLine {
    match ioapic {
        Some(io) => Box::new(move |level| {
            devices::bus::lock(&io).set_irq(Q35_SCI_IRQ as usize, level);
        }),
        None => {
            let vm = vm.clone();
            Box::new(move |level| {
                if let Err(e) = vm.set_irq_line(Q35_SCI_IRQ, level) {
                    tracing::warn!(level, "SCI: KVM_IRQ_LINE: {e}");
                }
            })
        }
    }
}

/// Builds and runs the VM in `spec`, writing the timeline where the spec says.
pub fn run_spec(spec: &VmSpec, timeline: Timeline) -> Result<VmExit> {
    run_spec_with(spec, timeline, None)
}

/// [`run_spec`] with a power button pressed from outside (the control socket's `powerdown`).
pub fn run_spec_with(
    spec: &VmSpec,
    timeline: Timeline,
    button: Option<PowerButton>,
) -> Result<VmExit> {
    let exit = Vm::build(spec, timeline.clone())?.run_with(button)?;
    if let Some(path) = &spec.timeline {
        if let Err(e) = std::fs::write(path, timeline.to_json(exit.name())) {
            tracing::error!("cannot write the timeline to '{}': {e}", path.display());
        }
    }
    tracing::info!(exit = exit.name(), timeline = %timeline.summary(), "VM stopped");
    Ok(exit)
}
