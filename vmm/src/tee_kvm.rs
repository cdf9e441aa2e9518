//! The real [`TeeOps`]: the SEV-SNP / TDX launch calls of `tee` issued to `/dev/kvm`, the VM and
//! vCPU fds and `/dev/sev` (kernel uAPI numbers in `tee::uapi`, spec tee-launch.md §4), plus the
//! `--tee` decision made before anything is created and the SNP boot step of `Vm::build` (the
//! TDX one is in [`tdx`]). The launch orders themselves live in `tee::snp::SnpLauncher` and
//! `tee::tdx::TdxLauncher` and are tested there with a fake; this file cannot run on a host
//! without SNP/TDX.

use crate::error::{Result, VmmError};
use crate::memory::GuestMem;
use crate::spec::{TeeMode, VmSpec};
use kvm_bindings::{
    kvm_create_guest_memfd, kvm_debugregs, kvm_device_attr, kvm_enable_cap, kvm_fpu, kvm_msr_entry,
    kvm_regs, kvm_segment, kvm_userspace_memory_region2, kvm_xcr, kvm_xcrs, CpuId, Msrs,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
pub use runtime::TeeRuntime;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use tee::detect::{HostPaths, Platform};
use tee::snp::{MemoryOps, RamRegion, TeeOps};
use tee::uapi::{KvmCpuidEntry2, KvmSevCmd, KvmTdxCmd, KVM_MEMORY_ENCRYPT_OP};
use tee::vmsa::{Segment, VcpuRegs};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

#[path = "tee_runtime.rs"]
pub mod runtime;
#[path = "tdx_kvm.rs"]
pub mod tdx;

/// `KVM_GET_DEVICE_ATTR`: `_IOW(KVMIO, 0xe2, struct kvm_device_attr)`.
const KVM_GET_DEVICE_ATTR: u64 = 0x4018_aee2;
const MSR_IA32_CR_PAT: u32 = 0x277;

/// Called once the VM exists (irqchip, TSS, PIT) and once per new vCPU (CPUID, MSRs, LAPIC).
pub type VmHook<'a> = Box<dyn FnMut(&VmFd) -> Result<()> + 'a>;
pub type VcpuHook<'a> = Box<dyn FnMut(u32, &VcpuFd) -> Result<()> + 'a>;

/// A launched VM: its fd, its vCPUs (BSP first) and what must outlive them.
pub type LaunchedVm = (VmFd, Vec<(u32, VcpuFd)>, TeeResources);

/// What the launch leaves that must live as long as the VM.
#[derive(Default)]
pub struct TeeResources {
    _sev: Option<File>,
    _memfds: Vec<OwnedFd>,
    _firmware: Option<GuestMem>,
    runtime: Option<Arc<TeeRuntime>>,
}

impl TeeResources {
    /// The run-time exit handler of the launched guest, for every vCPU thread (see
    /// [`TeeRuntime`]); `None` until the launch has finished.
    pub fn runtime(&self) -> Option<Arc<TeeRuntime>> {
        self.runtime.clone()
    }
}

/// [`TeeOps`] over kvm-ioctls and raw ioctls.
pub struct KvmTeeOps<'a> {
    kvm: std::result::Result<Kvm, i32>,
    sev: Option<File>,
    vm: Option<VmFd>,
    vcpus: Vec<(u32, VcpuFd)>,
    memfds: Vec<OwnedFd>,
    /// Shared mappings given to memslots: (userspace address, size).
    shared: Vec<(u64, u64)>,
    on_vm: Option<VmHook<'a>>,
    on_vcpu: Option<VcpuHook<'a>>,
}

fn errno(e: kvm_ioctls::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

fn hook_err(e: VmmError) -> io::Error {
    io::Error::other(e.to_string())
}

fn no_vm() -> io::Error {
    io::Error::other("no VM created yet")
}

impl<'a> KvmTeeOps<'a> {
    /// Ops over `/dev/kvm` (opened here; a failure is reported by the first call).
    pub fn open() -> Self {
        Self::with_kvm(Kvm::new().map_err(|e| e.errno()))
    }

    fn with_kvm(kvm: std::result::Result<Kvm, i32>) -> Self {
        KvmTeeOps {
            kvm,
            sev: None,
            vm: None,
            vcpus: Vec::new(),
            memfds: Vec::new(),
            shared: Vec::new(),
            on_vm: None,
            on_vcpu: None,
        }
    }

    /// Sets the VMM's per-VM and per-vCPU set-up, run right after each is created.
    pub fn with_hooks(mut self, on_vm: VmHook<'a>, on_vcpu: VcpuHook<'a>) -> Self {
        self.on_vm = Some(on_vm);
        self.on_vcpu = Some(on_vcpu);
        self
    }

    fn kvm(&self) -> io::Result<&Kvm> {
        self.kvm
            .as_ref()
            .map_err(|e| io::Error::from_raw_os_error(*e))
    }

    fn vm(&self) -> io::Result<&VmFd> {
        self.vm.as_ref().ok_or_else(no_vm)
    }

    fn vcpu(&self, id: u32) -> io::Result<&VcpuFd> {
        self.vcpus
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, fd)| fd)
            .ok_or_else(|| io::Error::other(format!("no vCPU {id}")))
    }

    /// The VM, its vCPUs and what must outlive them.
    pub fn into_parts(self) -> io::Result<LaunchedVm> {
        let vm = self.vm.ok_or_else(no_vm)?;
        let keep = TeeResources {
            _sev: self.sev,
            _memfds: self.memfds,
            _firmware: None,
            runtime: None,
        };
        Ok((vm, self.vcpus, keep))
    }
}

fn kvm_seg(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present,
        dpl: s.dpl,
        db: s.db,
        s: s.s,
        l: s.l,
        g: s.g,
        avl: s.avl,
        unusable: u8::from(s.present == 0),
        padding: 0,
    }
}

/// `KVM_MEMORY_ENCRYPT_OP` on any fd, with `cmd` as the argument.
fn encrypt_op<T>(fd: &impl AsRawFd, cmd: &mut T) -> io::Result<()> {
    // SAFETY: `cmd` is a live, exclusively borrowed #[repr(C)] command struct of the layout
    // the kernel expects for this fd (kvm_sev_cmd / kvm_tdx_cmd, size-asserted in tee::uapi);
    // any buffer its `data` field points at is borrowed by the caller for this call.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            KVM_MEMORY_ENCRYPT_OP as _,
            cmd as *mut T as *mut libc::c_void,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl MemoryOps for KvmTeeOps<'_> {
    fn set_memory_attributes(&mut self, a: &tee::uapi::KvmMemoryAttributes) -> io::Result<()> {
        runtime::set_attributes(self.vm()?, a)
    }

    fn punch_hole(&mut self, memfd: u32, offset: u64, len: u64) -> io::Result<()> {
        runtime::punch_hole(&self.memfds, memfd, offset, len)
    }

    fn discard_shared(&mut self, userspace_addr: u64, len: u64) -> io::Result<()> {
        runtime::discard_shared(&self.shared, userspace_addr, len)
    }
}

impl TeeOps for KvmTeeOps<'_> {
    fn check_extension(&mut self, cap: u32) -> io::Result<u64> {
        let v = self.kvm()?.check_extension_raw(cap.into());
        Ok(v.max(0) as u64)
    }

    fn get_device_attr(&mut self, group: u32, attr: u64) -> io::Result<u64> {
        let mut value = 0u64;
        let mut a = kvm_device_attr {
            flags: 0,
            group,
            attr,
            addr: &mut value as *mut u64 as u64,
        };
        let kvm = self.kvm()?;
        // SAFETY: `a` is a valid kvm_device_attr whose `addr` points at `value`, a live u64
        // the kernel writes; both outlive the call.
        let r = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_DEVICE_ATTR as _, &mut a) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(value)
    }

    fn open_sev(&mut self) -> io::Result<u32> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/sev")?;
        let fd = f.as_raw_fd() as u32;
        self.sev = Some(f);
        Ok(fd)
    }

    fn create_vm(&mut self, vm_type: u64) -> io::Result<()> {
        let vm = self.kvm()?.create_vm_with_type(vm_type).map_err(errno)?;
        if let Some(hook) = self.on_vm.as_mut() {
            hook(&vm).map_err(hook_err)?;
        }
        self.vm = Some(vm);
        Ok(())
    }

    fn enable_cap(&mut self, cap: u32, arg0: u64) -> io::Result<()> {
        let mut c = kvm_enable_cap {
            cap,
            ..Default::default()
        };
        c.args[0] = arg0;
        self.vm()?.enable_cap(&c).map_err(errno)
    }

    fn sev_op(&mut self, cmd: &mut KvmSevCmd, data: &mut [u8]) -> io::Result<()> {
        cmd.data = data.as_mut_ptr() as u64;
        encrypt_op(self.vm()?, cmd)
    }

    fn create_guest_memfd(&mut self, args: &tee::uapi::KvmCreateGuestMemfd) -> io::Result<u32> {
        let g = kvm_create_guest_memfd {
            size: args.size,
            flags: args.flags,
            reserved: args.reserved,
        };
        let fd = self.vm()?.create_guest_memfd(g).map_err(errno)?;
        // SAFETY: KVM_CREATE_GUEST_MEMFD returned a new fd that nothing else owns.
        self.memfds.push(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(fd as u32)
    }

    fn set_user_memory_region2(
        &mut self,
        r: &tee::uapi::KvmUserspaceMemoryRegion2,
    ) -> io::Result<()> {
        let region = kvm_userspace_memory_region2 {
            slot: r.slot,
            flags: r.flags,
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.memory_size,
            userspace_addr: r.userspace_addr,
            guest_memfd_offset: r.guest_memfd_offset,
            guest_memfd: r.guest_memfd,
            pad1: 0,
            pad2: [0; 14],
        };
        // SAFETY: the regions come from `ram_regions`, i.e. live mappings owned by the VM's
        // guest memory (or TeeResources), which outlive the VM fd; slots do not overlap.
        unsafe { self.vm()?.set_user_memory_region2(region) }.map_err(errno)?;
        self.shared.push((r.userspace_addr, r.memory_size));
        Ok(())
    }

    fn create_vcpu(&mut self, id: u32) -> io::Result<()> {
        let fd = self.vm()?.create_vcpu(id.into()).map_err(errno)?;
        if let Some(hook) = self.on_vcpu.as_mut() {
            hook(id, &fd).map_err(hook_err)?;
        }
        self.vcpus.push((id, fd));
        Ok(())
    }

    fn set_vcpu_regs(&mut self, id: u32, v: &VcpuRegs) -> io::Result<()> {
        let fd = self.vcpu(id)?;
        let g = v.gprs;
        let regs = kvm_regs {
            rax: g[0],
            rbx: g[1],
            rcx: g[2],
            rdx: g[3],
            rsi: g[4],
            rdi: g[5],
            rsp: g[6],
            rbp: g[7],
            r8: g[8],
            r9: g[9],
            r10: g[10],
            r11: g[11],
            r12: g[12],
            r13: g[13],
            r14: g[14],
            r15: g[15],
            rip: v.rip,
            rflags: v.rflags,
        };
        fd.set_regs(&regs).map_err(errno)?;
        let mut s = fd.get_sregs().map_err(errno)?;
        (s.cs, s.ds, s.es) = (kvm_seg(&v.cs), kvm_seg(&v.ds), kvm_seg(&v.es));
        (s.fs, s.gs, s.ss) = (kvm_seg(&v.fs), kvm_seg(&v.gs), kvm_seg(&v.ss));
        (s.tr, s.ldt) = (kvm_seg(&v.tr), kvm_seg(&v.ldt));
        (s.gdt.base, s.gdt.limit) = (v.gdt.base, v.gdt.limit);
        (s.idt.base, s.idt.limit) = (v.idt.base, v.idt.limit);
        (s.cr0, s.cr2, s.cr3, s.cr4, s.efer) = (v.cr0, v.cr2, v.cr3, v.cr4, v.efer);
        fd.set_sregs(&s).map_err(errno)?;
        let fpu = kvm_fpu {
            fcw: v.fcw,
            mxcsr: v.mxcsr,
            ..Default::default()
        };
        fd.set_fpu(&fpu).map_err(errno)?;
        let mut xcrs = kvm_xcrs {
            nr_xcrs: 1,
            ..Default::default()
        };
        xcrs.xcrs[0] = kvm_xcr {
            xcr: 0,
            reserved: 0,
            value: v.xcr0,
        };
        fd.set_xcrs(&xcrs).map_err(errno)?;
        let dr = kvm_debugregs {
            dr6: v.dr6,
            dr7: v.dr7,
            ..Default::default()
        };
        fd.set_debug_regs(&dr).map_err(errno)?;
        let pat = Msrs::from_entries(&[kvm_msr_entry {
            index: MSR_IA32_CR_PAT,
            data: v.pat,
            ..Default::default()
        }])
        .map_err(|e| io::Error::other(format!("MSR list: {e:?}")))?;
        match fd.set_msrs(&pat).map_err(errno)? {
            1 => Ok(()),
            _ => Err(io::Error::other("KVM did not accept IA32_PAT")),
        }
    }

    fn tdx_vm_op(&mut self, cmd: &mut KvmTdxCmd, data: Option<&mut [u8]>) -> io::Result<()> {
        if let Some(d) = data {
            cmd.data = d.as_mut_ptr() as u64;
        }
        encrypt_op(self.vm()?, cmd)
    }

    fn tdx_vcpu_op(
        &mut self,
        id: u32,
        cmd: &mut KvmTdxCmd,
        data: Option<&mut [u8]>,
    ) -> io::Result<()> {
        if let Some(d) = data {
            cmd.data = d.as_mut_ptr() as u64;
        }
        encrypt_op(self.vcpu(id)?, cmd)
    }

    fn set_cpuid2(&mut self, id: u32, entries: &[KvmCpuidEntry2]) -> io::Result<()> {
        let list: Vec<kvm_bindings::kvm_cpuid_entry2> = entries
            .iter()
            .map(|e| kvm_bindings::kvm_cpuid_entry2 {
                function: e.function,
                index: e.index,
                flags: e.flags,
                eax: e.eax,
                ebx: e.ebx,
                ecx: e.ecx,
                edx: e.edx,
                padding: [0; 3],
            })
            .collect();
        let cpuid = CpuId::from_entries(&list)
            .map_err(|e| io::Error::other(format!("CPUID list: {e:?}")))?;
        self.vcpu(id)?.set_cpuid2(&cpuid).map_err(errno)
    }
}

/// Decides the launch path before anything is created: `none` is plain, `auto` the strongest
/// the host has, `snp`/`tdx` fail naming the first missing prerequisite (an input error).
pub fn resolve(mode: TeeMode) -> Result<Platform> {
    let wanted = match mode {
        TeeMode::None => return Ok(Platform::Plain),
        TeeMode::Auto => {
            let mut ops = KvmTeeOps::open();
            return Ok(tee::detect::detect(&HostPaths::default(), &mut ops));
        }
        TeeMode::Snp => Platform::Snp,
        TeeMode::Tdx => Platform::Tdx,
    };
    let mut ops = KvmTeeOps::open();
    tee::detect::require(&HostPaths::default(), &mut ops, wanted)
        .map_err(|e| VmmError::Input(format!("--tee {}: {e}", mode_name(mode))))?;
    Ok(wanted)
}

fn mode_name(mode: TeeMode) -> &'static str {
    match mode {
        TeeMode::Auto => "auto",
        TeeMode::None => "none",
        TeeMode::Snp => "snp",
        TeeMode::Tdx => "tdx",
    }
}

/// The guest RAM regions as launch memslots (slot = region index).
pub fn ram_regions(mem: &GuestMem) -> Result<Vec<RamRegion>> {
    mem.iter()
        .enumerate()
        .map(|(slot, r)| {
            let host = r
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| VmmError::Memory(format!("region {slot}: {e}")))?;
            Ok(RamRegion {
                slot: slot as u32,
                gpa: r.start_addr().raw_value(),
                size: r.len(),
                userspace_addr: host as u64,
            })
        })
        .collect()
}

/// Maps `size` bytes at guest-physical `gpa` for firmware the launch copies in (private
/// memory like RAM: the launch fills it) and appends it to `ram` as the next memslot.
pub(crate) fn firmware_memslot(
    ram: &mut Vec<RamRegion>,
    gpa: u64,
    size: u64,
    what: &str,
) -> Result<GuestMem> {
    let fw = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(gpa), size as usize)])
        .map_err(|e| VmmError::Memory(format!("{what} mapping at {gpa:#x}: {e}")))?;
    let slot = ram.len() as u32;
    ram.extend(
        ram_regions(&fw)?
            .into_iter()
            .map(|r| RamRegion { slot, ..r }),
    );
    Ok(fw)
}

/// The BSP's CPUID (vCPU 0 of `vcpus`, as `KVM_SET_CPUID2` gets it) in the launch structs'
/// layout, for the SEV-SNP CPUID page.
pub(crate) fn bsp_cpuid_entries(cpuid: &CpuId, vcpus: u32) -> Vec<KvmCpuidEntry2> {
    crate::cpuid::for_vcpu(cpuid, 0, vcpus)
        .as_slice()
        .iter()
        .map(|e| KvmCpuidEntry2 {
            function: e.function,
            index: e.index,
            flags: e.flags,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
            padding: [0; 3],
        })
        .collect()
}

/// C-bit position and reduced physical address bits from CPUID 0x8000001F EBX (51 and 1, the
/// usual values, when the leaf is absent).
fn cbit(cpuid: &CpuId) -> (u8, u8) {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_001f)
        .map(|e| ((e.ebx & 0x3f) as u8, ((e.ebx >> 6) & 0x3f) as u8))
        .filter(|(c, r)| *c != 0 && *r != 0)
        .unwrap_or((51, 1))
}

fn read(what: &'static str, p: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|source| VmmError::ReadFile {
        what,
        path: p.to_path_buf(),
        source,
    })
}

fn tee_err(e: tee::TeeError) -> VmmError {
    match e {
        tee::TeeError::Ioctl { .. } | tee::TeeError::LaunchUpdate { .. } => VmmError::Host {
            what: "SEV-SNP launch",
            source: io::Error::other(e.to_string()),
        },
        other => VmmError::Input(other.to_string()),
    }
}

/// The SEV-SNP boot step: builds the launch plan from the IGVM file or OVMF image (the same
/// plan `cvmm measure` hashes), maps OVMF just below 4 GiB, and runs the launch; the VM and
/// vCPUs come back created, private, measured and finished.
pub fn snp_boot<'a>(
    spec: &VmSpec,
    mem: &GuestMem,
    cpuid: &CpuId,
    on_vm: VmHook<'a>,
    on_vcpu: VcpuHook<'a>,
    timeline: &crate::timeline::Timeline,
) -> Result<LaunchedVm> {
    // The kernel reaches the firmware through fw_cfg (the device stage adds it); with kernel
    // hashes it is also measured through OVMF's hashes table, as QEMU's kernel-hashes=on.
    let hashed = spec.snp.kernel_hashes;
    if hashed && (spec.kernel.is_none() || spec.igvm.is_some()) {
        return Err(VmmError::Input(
            "--tee snp with kernel hashes needs --kernel and an OVMF image with an \
             SNP_KERNEL_HASHES section (not an IGVM file)"
                .into(),
        ));
    }
    if spec.kernel.is_some() && !hashed {
        tracing::warn!(
            "the kernel, initrd and command line reach the SEV-SNP guest unmeasured \
             (no kernel hashes): only the firmware is in the launch digest"
        );
    }
    let (firmware, ovmf_len) = match (&spec.igvm, &spec.firmware) {
        (Some(p), _) => (
            tee::Firmware::Igvm {
                name: p.display().to_string(),
                data: read("IGVM file", p)?,
            },
            None,
        ),
        (None, Some(p)) => {
            let data = read("firmware", p)?;
            let len = data.len() as u64;
            let name = p.display().to_string();
            (tee::Firmware::Ovmf { name, data }, Some(len))
        }
        (None, None) => {
            return Err(VmmError::Input(
                "--tee snp needs --igvm FILE (or a firmware image)".into(),
            ))
        }
    };
    let signature = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 1)
        .map(|e| e.eax)
        .unwrap_or(0);
    let measured = |what, p: &Option<std::path::PathBuf>| -> Result<Option<Vec<u8>>> {
        match p {
            Some(p) if hashed => read(what, p).map(Some),
            _ => Ok(None),
        }
    };
    let inputs = tee::MeasureInputs {
        firmware,
        kernel: measured("kernel", &spec.kernel)?,
        initrd: measured("initrd", &spec.initrd)?,
        cmdline: hashed.then(|| spec.cmdline.clone()),
        vcpus: spec.vcpus,
        vcpu_signature: signature,
        guest_features: tee::plan::SEV_FEATURE_SNP_ACTIVE,
        ovmf_hash: None,
    };
    // IGVM parameter areas get what the native IGVM boot gives: command line, E820-derived
    // memory map, vCPU count, environment info.
    let igvm_params = tee::igvm::IgvmParams {
        cmdline: spec.cmdline.clone(),
        memory: crate::igvm_boot::memory_ranges(spec.memory_mib),
    };
    let mut plan =
        tee::plan::LaunchPlan::from_inputs_with(&inputs, &igvm_params).map_err(tee_err)?;
    // Neither is part of the launch digest; both reach LAUNCH_START / LAUNCH_FINISH.
    if let Some(policy) = spec.snp.policy {
        plan.policy = policy;
    }
    if let Some(data) = spec.snp.host_data {
        plan.host_data = data;
    }
    // The PSP checks the CPUID page against the host CPU: it carries the CPUID the vCPUs get
    // (the BSP's), not the zeros or the IGVM file's template the plan starts with.
    let cpuid_pages = plan
        .fill_cpuid_pages(&bsp_cpuid_entries(cpuid, spec.vcpus))
        .map_err(tee_err)?;
    tracing::info!(
        digest = %tee::measure::hex(&plan.digest()),
        ranges = plan.ranges.len(),
        cpuid_pages,
        "SEV-SNP launch plan built"
    );
    let mut ram = ram_regions(mem)?;
    let firmware = match ovmf_len {
        Some(len) => {
            let size = len.next_multiple_of(4096);
            Some(firmware_memslot(
                &mut ram,
                (1u64 << 32) - size,
                size,
                "firmware",
            )?)
        }
        None => None,
    };
    let (cpuid_cbit, cpuid_reduced) = cbit(cpuid);
    let cbitpos = spec.snp.cbitpos.unwrap_or(cpuid_cbit);
    let reduced_phys_bits = spec.snp.reduced_phys_bits.unwrap_or(cpuid_reduced);
    let cfg = tee::snp::SnpConfig {
        cbitpos,
        reduced_phys_bits,
        ram,
    };
    let mut ops = KvmTeeOps::open().with_hooks(on_vm, on_vcpu);
    let mut measured_pages = 0u64;
    let mut pages = 0u64;
    tee::snp::SnpLauncher::new(&mut ops)
        .with_progress(|p| launch_phase(timeline, p, &mut pages, &mut measured_pages))
        .launch(&plan, &cfg)
        .map_err(tee_err)?;
    timeline.set_metric("tee_pages", pages);
    timeline.set_metric("tee_measured_pages", measured_pages);
    let (vm, vcpus, mut keep) = ops.into_parts().map_err(|source| VmmError::Host {
        what: "SEV-SNP launch",
        source,
    })?;
    keep._firmware = firmware;
    let runtime =
        TeeRuntime::for_vm(&vm, &keep._memfds, &cfg.ram).map_err(|source| VmmError::Host {
            what: "SEV-SNP run-time handler",
            source,
        })?;
    keep.runtime = Some(Arc::new(runtime));
    Ok((vm, vcpus, keep))
}

/// Timeline phases of an SNP launch: start, each LAUNCH_UPDATE range (named by its GPA, page
/// count and type), finish; page totals as metrics.
fn launch_phase(
    timeline: &crate::timeline::Timeline,
    p: tee::snp::LaunchProgress,
    pages: &mut u64,
    measured_pages: &mut u64,
) {
    use tee::snp::LaunchProgress;
    match p {
        LaunchProgress::Started => timeline.mark("tee_launch_start"),
        LaunchProgress::Range {
            gpa,
            pages: n,
            page_type,
            measured,
            ..
        } => {
            *pages += n;
            if measured {
                *measured_pages += n;
            }
            timeline.mark(&format!("tee_update[{gpa:#x}+{n}p:{page_type:?}]"));
        }
        LaunchProgress::Finished => timeline.mark("tee_launch_finish"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tee::uapi::{KVM_SEV_SNP_LAUNCH_UPDATE, KVM_X86_SNP_VM};

    #[test]
    fn launch_progress_becomes_timeline_phases_and_page_counts() {
        use tee::measure::PageType;
        use tee::snp::LaunchProgress;
        let tl = crate::timeline::Timeline::new();
        let (mut pages, mut measured) = (0, 0);
        for p in [
            LaunchProgress::Started,
            LaunchProgress::Range {
                gpa: 0x80_0000,
                pages: 512,
                page_type: PageType::Normal,
                measured: true,
                micros: 900,
            },
            LaunchProgress::Range {
                gpa: 0x9000,
                pages: 1,
                page_type: PageType::Cpuid,
                measured: false,
                micros: 40,
            },
            LaunchProgress::Finished,
        ] {
            launch_phase(&tl, p, &mut pages, &mut measured);
        }
        let names: Vec<String> = tl.events().into_iter().map(|e| e.phase).collect();
        assert_eq!(
            names[1..],
            [
                "tee_launch_start",
                "tee_update[0x800000+512p:Normal]",
                "tee_update[0x9000+1p:Cpuid]",
                "tee_launch_finish"
            ]
        );
        assert_eq!((pages, measured), (513, 512));
    }

    #[test]
    fn get_device_attr_number_matches_the_iow_encoding() {
        // _IOW = dir 1 << 30 | size << 16 | 'KVMIO' 0xAE << 8 | nr.
        let size = std::mem::size_of::<kvm_device_attr>() as u64;
        assert_eq!(
            KVM_GET_DEVICE_ATTR,
            (1 << 30) | (size << 16) | (0xae << 8) | 0xe2
        );
    }

    #[test]
    fn ops_without_a_vm_report_it_instead_of_calling_kvm() {
        let mut ops = KvmTeeOps::with_kvm(Err(libc::ENOENT));
        let e = ops.check_extension(235).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let mut cmd = KvmSevCmd {
            id: KVM_SEV_SNP_LAUNCH_UPDATE,
            ..Default::default()
        };
        let e = ops.sev_op(&mut cmd, &mut [0u8; 64]).unwrap_err();
        assert!(e.to_string().contains("no VM"), "{e}");
        assert!(ops.create_vm(KVM_X86_SNP_VM).is_err());
        assert!(ops.into_parts().is_err());
    }

    #[test]
    fn none_is_plain_and_asking_for_snp_here_names_what_is_missing() {
        assert_eq!(resolve(TeeMode::None).unwrap(), Platform::Plain);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if cpuinfo.contains("sev_snp") || cpuinfo.contains("tdx_host_platform") {
            println!("SKIPPED: this host advertises SNP or TDX");
            return;
        }
        assert_eq!(resolve(TeeMode::Auto).unwrap(), Platform::Plain);
        for mode in [TeeMode::Snp, TeeMode::Tdx] {
            let e = resolve(mode).unwrap_err();
            assert!(e.is_input(), "{e}");
            let e = e.to_string();
            assert!(e.contains("host does not support"), "{e}");
            assert!(e.contains("/proc/cpuinfo has no"), "{e}");
        }
    }

    #[test]
    fn cbit_comes_from_cpuid_or_defaults() {
        let mut e = kvm_bindings::kvm_cpuid_entry2 {
            function: 0x8000_001f,
            ebx: 47 | (5 << 6),
            ..Default::default()
        };
        assert_eq!(cbit(&CpuId::from_entries(&[e]).unwrap()), (47, 5));
        e.function = 0x8000_0001;
        assert_eq!(cbit(&CpuId::from_entries(&[e]).unwrap()), (51, 1));
    }

    /// The SEV-SNP CPUID page is built from the BSP's CPUID: vCPU 0's topology (APIC id 0, the
    /// VM's vCPU count), with KVM's subleaf flags kept.
    #[test]
    fn snp_cpuid_page_entries_are_the_bsps_cpuid() {
        let leaf = |function, index, flags| kvm_bindings::kvm_cpuid_entry2 {
            function,
            index,
            flags,
            ebx: 0xff00_0000,
            ..Default::default()
        };
        let supported = CpuId::from_entries(&[leaf(1, 0, 0), leaf(0xd, 1, 1)]).unwrap();
        let entries = bsp_cpuid_entries(&supported, 4);
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].function, entries[0].ebx >> 16), (1, 4));
        assert_eq!(
            (entries[1].function, entries[1].index, entries[1].flags),
            (0xd, 1, 1)
        );
        let page = tee::snp_cpuid::cpuid_page(&entries).unwrap();
        assert_eq!(&page[..4], &2u32.to_le_bytes());
    }
}
