//! The SEV-SNP launch sequence on upstream KVM (Linux ≥ 6.11, spec §5), written against
//! [`TeeOps`], the one trait every KVM and `/dev/sev` call goes through. The real implementation
//! (kvm-ioctls) lives in the VMM; tests use [`crate::fake::RecordingOps`].
//!
//! Order: capability checks, open `/dev/sev`, `KVM_CREATE_VM(SNP)`, `KVM_CAP_EXIT_HYPERCALL`,
//! `KVM_SEV_INIT2`, guest_memfd + memslots + PRIVATE attributes, vCPUs with their registers,
//! `SNP_LAUNCH_START`, one `SNP_LAUNCH_UPDATE` loop per plan range, `SNP_LAUNCH_FINISH`.

use std::io;

use zerocopy::IntoBytes;

use crate::measure::PageType;
use crate::plan::{LaunchPlan, SEV_FEATURE_SNP_ACTIVE};
pub use crate::runtime::MemoryOps;
use crate::uapi::*;
use crate::vmsa::VcpuRegs;
use crate::TeeError;

/// Every KVM and `/dev/sev` call of the TEE launch paths. The memory calls that also serve the
/// run-time page-state changes are in the supertrait [`MemoryOps`].
pub trait TeeOps: MemoryOps {
    /// `KVM_CHECK_EXTENSION` on `/dev/kvm`.
    fn check_extension(&mut self, cap: u32) -> io::Result<u64>;
    /// `KVM_GET_DEVICE_ATTR` on `/dev/kvm`.
    fn get_device_attr(&mut self, group: u32, attr: u64) -> io::Result<u64>;
    /// Opens `/dev/sev` read-write and returns its fd.
    fn open_sev(&mut self) -> io::Result<u32>;
    /// `KVM_CREATE_VM(vm_type)`.
    fn create_vm(&mut self, vm_type: u64) -> io::Result<()>;
    /// `KVM_ENABLE_CAP` on the VM.
    fn enable_cap(&mut self, cap: u32, arg0: u64) -> io::Result<()>;
    /// `KVM_MEMORY_ENCRYPT_OP` on the VM: `cmd.data` is set to point at `data`, which the
    /// kernel may update; `cmd.error` receives the PSP status.
    fn sev_op(&mut self, cmd: &mut KvmSevCmd, data: &mut [u8]) -> io::Result<()>;
    /// `KVM_CREATE_GUEST_MEMFD`; returns the fd.
    fn create_guest_memfd(&mut self, args: &KvmCreateGuestMemfd) -> io::Result<u32>;
    /// `KVM_SET_USER_MEMORY_REGION2`.
    fn set_user_memory_region2(&mut self, region: &KvmUserspaceMemoryRegion2) -> io::Result<()>;
    /// `KVM_CREATE_VCPU(id)`.
    fn create_vcpu(&mut self, id: u32) -> io::Result<()>;
    /// `KVM_SET_REGS/SREGS/FPU/XCRS/DEBUGREGS/MSRS(PAT)` for vCPU `id`.
    fn set_vcpu_regs(&mut self, id: u32, regs: &VcpuRegs) -> io::Result<()>;

    /// TDX: `KVM_MEMORY_ENCRYPT_OP` with a `kvm_tdx_cmd` on the VM fd. With `data`, the
    /// implementation points `cmd.data` at it (the kernel may update it); without, `cmd.data`
    /// is passed as is. `cmd.hw_error` receives the TDX module status.
    fn tdx_vm_op(&mut self, cmd: &mut KvmTdxCmd, data: Option<&mut [u8]>) -> io::Result<()> {
        let _ = (cmd, data);
        Err(io::Error::from_raw_os_error(libc::ENOTTY))
    }
    /// TDX: the same on vCPU `id`'s fd (`INIT_VCPU`, `INIT_MEM_REGION`, `GET_CPUID`).
    fn tdx_vcpu_op(
        &mut self,
        id: u32,
        cmd: &mut KvmTdxCmd,
        data: Option<&mut [u8]>,
    ) -> io::Result<()> {
        let _ = (id, cmd, data);
        Err(io::Error::from_raw_os_error(libc::ENOTTY))
    }
    /// `KVM_SET_CPUID2` on vCPU `id`.
    fn set_cpuid2(&mut self, id: u32, entries: &[KvmCpuidEntry2]) -> io::Result<()> {
        let _ = (id, entries);
        Err(io::Error::from_raw_os_error(libc::ENOTTY))
    }
}

/// One RAM region of the guest: its slot, guest range and shared (host) mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    pub slot: u32,
    pub gpa: u64,
    pub size: u64,
    pub userspace_addr: u64,
}

/// Launch settings that do not come from the plan.
#[derive(Debug, Clone)]
pub struct SnpConfig {
    /// C-bit position (usually 51) and reduced physical address bits (usually 1), as the
    /// guest's CPUID 0x8000001F will report them.
    pub cbitpos: u8,
    pub reduced_phys_bits: u8,
    pub ram: Vec<RamRegion>,
}

/// Bound on `-EAGAIN` retries of one LAUNCH_UPDATE range.
const MAX_EAGAIN: u32 = 10_000;

fn ioctl_err(call: &'static str, detail: impl Into<String>, errno: io::Error) -> TeeError {
    TeeError::Ioctl {
        call,
        detail: detail.into(),
        errno,
    }
}

/// What the launcher reports as it goes (for boot timelines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchProgress {
    /// SNP_LAUNCH_START done; the LAUNCH_UPDATEs begin.
    Started,
    /// One LAUNCH_UPDATE range done: where, how many 4 KiB pages, its type, whether its
    /// contents were measured, and how long it took.
    Range {
        gpa: u64,
        pages: u64,
        page_type: crate::measure::PageType,
        measured: bool,
        micros: u64,
    },
    /// SNP_LAUNCH_FINISH done.
    Finished,
}

/// Runs the SNP launch of a plan.
pub struct SnpLauncher<'a, O: TeeOps> {
    ops: &'a mut O,
    sev_fd: u32,
    progress: Option<Box<dyn FnMut(LaunchProgress) + 'a>>,
}

impl<'a, O: TeeOps> SnpLauncher<'a, O> {
    pub fn new(ops: &'a mut O) -> Self {
        SnpLauncher {
            ops,
            sev_fd: 0,
            progress: None,
        }
    }

    /// Reports the launch's progress to `f`.
    pub fn with_progress(mut self, f: impl FnMut(LaunchProgress) + 'a) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    fn report(&mut self, p: LaunchProgress) {
        if let Some(f) = self.progress.as_mut() {
            f(p);
        }
    }

    /// Issues the whole launch. Nothing is created when a prerequisite is missing.
    pub fn launch(&mut self, plan: &LaunchPlan, cfg: &SnpConfig) -> Result<(), TeeError> {
        if !(32..=63).contains(&cfg.cbitpos)
            || cfg.reduced_phys_bits == 0
            || cfg.reduced_phys_bits > 63
        {
            return Err(TeeError::input(
                "snp config",
                format!(
                    "cbitpos {} / reduced-phys-bits {} out of range (32..=63 / 1..=63)",
                    cfg.cbitpos, cfg.reduced_phys_bits
                ),
            ));
        }
        let vmsa_features = self.check_caps(plan)?;
        self.sev_fd = self.ops.open_sev().map_err(|e| TeeError::HostUnsupported {
            platform: "SEV-SNP",
            missing: format!("/dev/sev: {e}"),
        })?;
        self.ops
            .create_vm(KVM_X86_SNP_VM)
            .map_err(|e| ioctl_err("KVM_CREATE_VM", "type KVM_X86_SNP_VM (4)", e))?;
        self.ops
            .enable_cap(KVM_CAP_EXIT_HYPERCALL, 1 << KVM_HC_MAP_GPA_RANGE)
            .map_err(|e| ioctl_err("KVM_ENABLE_CAP", "KVM_CAP_EXIT_HYPERCALL(1 << 12)", e))?;
        let mut init = KvmSevInit {
            vmsa_features,
            ..Default::default()
        };
        self.cmd(KVM_SEV_INIT2, init.as_mut_bytes())
            .map_err(|(e, psp)| {
                ioctl_err(
                    "KVM_SEV_INIT2",
                    format!("vmsa_features {vmsa_features:#x}, PSP status {psp:#x}"),
                    e,
                )
            })?;
        self.memory(plan, cfg)?;
        for (id, v) in plan.vcpus.iter().enumerate() {
            let id = id as u32;
            self.ops
                .create_vcpu(id)
                .map_err(|e| ioctl_err("KVM_CREATE_VCPU", format!("vcpu {id}"), e))?;
            self.ops
                .set_vcpu_regs(id, &v.regs)
                .map_err(|e| ioctl_err("KVM_SET_REGS", format!("vcpu {id}"), e))?;
        }
        let mut start = KvmSevSnpLaunchStart {
            policy: plan.policy,
            ..Default::default()
        };
        self.cmd(KVM_SEV_SNP_LAUNCH_START, start.as_mut_bytes())
            .map_err(|(e, psp)| {
                ioctl_err(
                    "SNP_LAUNCH_START",
                    format!("policy {:#x}, PSP status {psp:#x}", plan.policy),
                    e,
                )
            })?;
        self.report(LaunchProgress::Started);
        for r in &plan.ranges {
            let t = std::time::Instant::now();
            self.update_range(r.gpa, r.len, r.page_type, r.data.as_bytes())?;
            self.report(LaunchProgress::Range {
                gpa: r.gpa,
                pages: r.len.div_ceil(4096),
                page_type: r.page_type,
                measured: r.page_type.is_measured(),
                micros: t.elapsed().as_micros() as u64,
            });
        }
        self.finish(plan)?;
        self.report(LaunchProgress::Finished);
        Ok(())
    }

    fn cmd(&mut self, id: u32, data: &mut [u8]) -> Result<(), (io::Error, u32)> {
        let mut cmd = KvmSevCmd {
            id,
            sev_fd: self.sev_fd,
            ..Default::default()
        };
        self.ops.sev_op(&mut cmd, data).map_err(|e| (e, cmd.error))
    }

    /// Checks the KVM capabilities of spec §5 step 0; returns the INIT2 `vmsa_features`.
    fn check_caps(&mut self, plan: &LaunchPlan) -> Result<u64, TeeError> {
        let missing = |m: String| TeeError::HostUnsupported {
            platform: "SEV-SNP",
            missing: m,
        };
        let types = self.ops.check_extension(KVM_CAP_VM_TYPES).unwrap_or(0);
        if types & (1 << KVM_X86_SNP_VM) == 0 {
            return Err(missing(format!(
                "KVM_CAP_VM_TYPES = {types:#x} lacks KVM_X86_SNP_VM (bit 4)"
            )));
        }
        let needs = [
            (KVM_CAP_GUEST_MEMFD, "KVM_CAP_GUEST_MEMFD", 1),
            (KVM_CAP_USER_MEMORY2, "KVM_CAP_USER_MEMORY2", 1),
            (
                KVM_CAP_MEMORY_ATTRIBUTES,
                "KVM_CAP_MEMORY_ATTRIBUTES",
                KVM_MEMORY_ATTRIBUTE_PRIVATE,
            ),
            (KVM_CAP_MEMORY_FAULT_INFO, "KVM_CAP_MEMORY_FAULT_INFO", 1),
            (
                KVM_CAP_EXIT_HYPERCALL,
                "KVM_CAP_EXIT_HYPERCALL",
                1 << KVM_HC_MAP_GPA_RANGE,
            ),
        ];
        for (cap, name, mask) in needs {
            let v = self.ops.check_extension(cap).unwrap_or(0);
            if v & mask == 0 {
                return Err(missing(format!("{name} = {v:#x} lacks {mask:#x}")));
            }
        }
        let supported = self
            .ops
            .get_device_attr(KVM_X86_GRP_SEV, KVM_X86_SEV_VMSA_FEATURES)
            .map_err(|e| missing(format!("KVM_X86_SEV_VMSA_FEATURES attribute: {e}")))?;
        let wanted = plan.sev_features & !SEV_FEATURE_SNP_ACTIVE;
        if wanted & !supported != 0 {
            return Err(missing(format!(
                "vmsa_features {wanted:#x} not within supported {supported:#x}"
            )));
        }
        Ok(wanted)
    }

    /// One guest_memfd for all RAM, one memslot per region, everything private.
    fn memory(&mut self, plan: &LaunchPlan, cfg: &SnpConfig) -> Result<(), TeeError> {
        for r in &plan.ranges {
            let covered = cfg
                .ram
                .iter()
                .any(|m| r.gpa >= m.gpa && r.gpa + r.len <= m.gpa + m.size);
            if !covered {
                return Err(TeeError::input(
                    "snp config",
                    format!(
                        "launch range {:#x}+{:#x} is outside guest RAM",
                        r.gpa, r.len
                    ),
                ));
            }
        }
        map_private_ram(self.ops, &cfg.ram)
    }

    /// LAUNCH_UPDATE of one range, following partial progress and retrying `-EAGAIN`.
    fn update_range(
        &mut self,
        gpa: u64,
        len: u64,
        page_type: PageType,
        data: &[u8],
    ) -> Result<(), TeeError> {
        let uaddr = if page_type == PageType::Zero {
            0
        } else {
            data.as_ptr() as u64
        };
        let mut upd = KvmSevSnpLaunchUpdate {
            gfn_start: gpa >> 12,
            uaddr,
            len,
            type_: page_type as u8,
            ..Default::default()
        };
        let mut eagain = 0;
        while upd.len > 0 {
            let before = upd.len;
            match self.cmd(KVM_SEV_SNP_LAUNCH_UPDATE, upd.as_mut_bytes()) {
                Ok(()) if upd.len < before => {}
                Ok(()) => {
                    return Err(ioctl_err(
                        "SNP_LAUNCH_UPDATE",
                        format!(
                            "gpa {gpa:#x}+{len:#x} ({page_type:?}): no progress, {:#x} bytes left",
                            upd.len
                        ),
                        io::Error::from_raw_os_error(libc::EIO),
                    ))
                }
                Err((e, _)) if e.raw_os_error() == Some(libc::EAGAIN) && eagain < MAX_EAGAIN => {
                    eagain += 1;
                }
                Err((errno, psp_error)) => {
                    let at = upd.gfn_start << 12;
                    return Err(TeeError::LaunchUpdate {
                        gpa: at,
                        end: at + upd.len,
                        page_type,
                        psp_error,
                        errno,
                    });
                }
            }
        }
        tracing::debug!(gpa, len, ?page_type, eagain, "SNP_LAUNCH_UPDATE done");
        Ok(())
    }

    fn finish(&mut self, plan: &LaunchPlan) -> Result<(), TeeError> {
        let mut fin = KvmSevSnpLaunchFinish {
            host_data: plan.host_data,
            ..Default::default()
        };
        if let Some(ib) = &plan.id_block {
            fin.id_block_uaddr = ib.block.as_ptr() as u64;
            fin.id_auth_uaddr = ib.auth.as_ptr() as u64;
            fin.id_block_en = 1;
            fin.auth_key_en = ib.author_key_enabled as u8;
        }
        self.cmd(KVM_SEV_SNP_LAUNCH_FINISH, fin.as_mut_bytes())
            .map_err(|(e, psp)| ioctl_err("SNP_LAUNCH_FINISH", format!("PSP status {psp:#x}"), e))
    }
}

/// Backs all of `ram` with one guest_memfd, one memslot per region, every page private
/// (shared by the SNP and TDX launches).
pub(crate) fn map_private_ram<O: TeeOps + ?Sized>(
    ops: &mut O,
    ram: &[RamRegion],
) -> Result<(), TeeError> {
    let total: u64 = ram.iter().map(|r| r.size).sum();
    let memfd = ops
        .create_guest_memfd(&KvmCreateGuestMemfd {
            size: total,
            ..Default::default()
        })
        .map_err(|e| ioctl_err("KVM_CREATE_GUEST_MEMFD", format!("size {total:#x}"), e))?;
    for (m, offset) in memfd_layout(ram) {
        let region = KvmUserspaceMemoryRegion2 {
            slot: m.slot,
            flags: KVM_MEM_GUEST_MEMFD,
            guest_phys_addr: m.gpa,
            memory_size: m.size,
            userspace_addr: m.userspace_addr,
            guest_memfd_offset: offset,
            guest_memfd: memfd,
            pad1: 0,
            pad2: [0; 14],
        };
        ops.set_user_memory_region2(&region).map_err(|e| {
            ioctl_err(
                "KVM_SET_USER_MEMORY_REGION2",
                format!("slot {} gpa {:#x}", m.slot, m.gpa),
                e,
            )
        })?;
        set_private(ops, m.gpa, m.size, true)?;
    }
    Ok(())
}

/// Each RAM region with its offset in the one guest_memfd [`map_private_ram`] creates: the
/// regions are laid out back to back in the order given.
pub fn memfd_layout(ram: &[RamRegion]) -> impl Iterator<Item = (&RamRegion, u64)> {
    ram.iter().scan(0u64, |offset, m| {
        let at = *offset;
        *offset = offset.saturating_add(m.size);
        Some((m, at))
    })
}

fn set_private<O: TeeOps + ?Sized>(
    ops: &mut O,
    gpa: u64,
    size: u64,
    private: bool,
) -> Result<(), TeeError> {
    let attributes = if private {
        KVM_MEMORY_ATTRIBUTE_PRIVATE
    } else {
        0
    };
    ops.set_memory_attributes(&KvmMemoryAttributes {
        address: gpa,
        size,
        attributes,
        flags: 0,
    })
    .map_err(|e| {
        ioctl_err(
            "KVM_SET_MEMORY_ATTRIBUTES",
            format!("gpa {gpa:#x}+{size:#x} private={private}"),
            e,
        )
    })
}

#[cfg(test)]
#[path = "snp_tests.rs"]
mod tests;
