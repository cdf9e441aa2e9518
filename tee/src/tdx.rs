//! The Intel TDX launch sequence on upstream KVM (Linux ≥ 6.16, spec §6), written against
//! [`TeeOps`] like the SNP one. Order: capability checks, `KVM_CREATE_VM(TDX)`,
//! `KVM_TDX_CAPABILITIES` (grown on `-E2BIG`), split irqchip, `KVM_CAP_EXIT_HYPERCALL` and the
//! 25 MHz APIC bus (`KVM_CAP_X86_APIC_BUS_CYCLES_NS`), `KVM_TDX_INIT_VM` (before any vCPU), guest_memfd + memslots + PRIVATE, vCPUs with CPUID,
//! the TD HOB, `KVM_TDX_INIT_VCPU(RCX = HOB)` for every vCPU, `KVM_TDX_INIT_MEM_REGION` per
//! plan range on vCPU 0, `KVM_TDX_FINALIZE_VM`. The plan is the one [`TdxPlan::mrtd`] hashes.

use std::io;

use zerocopy::{FromBytes, FromZeros, IntoBytes};

use crate::plan::MAX_VCPUS;
use crate::snp::{RamRegion, TeeOps};
use crate::tdhob::{build_td_hob, ram_entries};
use crate::tdx_plan::{RegionOrigin, TdxPlan};
use crate::uapi::*;
use crate::TeeError;

/// Launch settings that do not come from the firmware.
#[derive(Debug, Clone)]
pub struct TdxConfig {
    pub vcpus: u32,
    /// TD attributes (e.g. bit 28 SEPT_VE_DISABLE); must be within `supported_attrs`.
    pub attributes: u64,
    /// Extended features (XCR0 | IA32_XSS bits) the TD must have; must be within
    /// `supported_xfam`.
    pub xfam: u64,
    /// Extended features the TD gets if KVM reports them in `supported_xfam` (e.g. what the
    /// host CPUID offers); the others are left out.
    pub xfam_optional: u64,
    /// 48-byte values that land verbatim in the TD report.
    pub mrconfigid: [u8; 48],
    pub mrowner: [u8; 48],
    pub mrownerconfig: [u8; 48],
    /// The CPUID the VMM would give the guest; cut down to the configurable bits.
    pub cpuid: Vec<KvmCpuidEntry2>,
    /// Memslots; together they must cover every plan range (the firmware included).
    pub ram: Vec<RamRegion>,
    /// Guest system RAM `(gpa, size)` as the E820 map reports it, for the TD HOB.
    pub system_ram: Vec<(u64, u64)>,
}

/// What `KVM_TDX_CAPABILITIES` reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxCapabilities {
    pub supported_attrs: u64,
    pub supported_xfam: u64,
    /// GetTdVmCallInfo leaf 1 bits KVM handles (`kernel_*`) and may forward (`user_*`).
    pub kernel_tdvmcallinfo_1_r11: u64,
    pub user_tdvmcallinfo_1_r11: u64,
    pub kernel_tdvmcallinfo_1_r12: u64,
    pub user_tdvmcallinfo_1_r12: u64,
    /// The configurable CPUID bits.
    pub cpuid: Vec<KvmCpuidEntry2>,
}

/// What the launcher reports as it goes (for boot timelines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TdxProgress {
    /// `KVM_TDX_INIT_VM` done: the TD exists with its attributes, XFAM and CPUID.
    Started,
    /// One `KVM_TDX_INIT_MEM_REGION` range done: where, how many 4 KiB pages, whether its
    /// contents were measured (MR.EXTEND), where it came from, and how long it took.
    Region {
        gpa: u64,
        pages: u64,
        measured: bool,
        origin: RegionOrigin,
        micros: u64,
    },
    /// `KVM_TDX_FINALIZE_VM` done: MRTD is final.
    Finished,
}

/// Initial CPUID array size of `KVM_TDX_CAPABILITIES` (doubled on `-E2BIG`), and its cap.
const CAPS_NENT_START: u32 = 6;
const CAPS_NENT_MAX: u32 = 4096;
/// Bound on `-EAGAIN` retries (QEMU uses the same for INIT_VM).
const MAX_RETRIES: u32 = 10_000;

fn ioctl_err(call: &'static str, detail: impl Into<String>, errno: io::Error) -> TeeError {
    TeeError::Ioctl {
        call,
        detail: detail.into(),
        errno,
    }
}

fn is(e: &io::Error, code: i32) -> bool {
    e.raw_os_error() == Some(code)
}

/// Keeps the entries (and bits) of `cpuid` that TDX lets the VMM configure.
pub fn filter_cpuid(cpuid: &[KvmCpuidEntry2], config: &[KvmCpuidEntry2]) -> Vec<KvmCpuidEntry2> {
    cpuid
        .iter()
        .filter_map(|e| {
            let c = config.iter().find(|c| {
                c.function == e.function
                    && (c.index == e.index || c.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0)
            })?;
            Some(KvmCpuidEntry2 {
                eax: e.eax & c.eax,
                ebx: e.ebx & c.ebx,
                ecx: e.ecx & c.ecx,
                edx: e.edx & c.edx,
                ..*e
            })
        })
        .collect()
}

/// Runs the TDX launch of a plan.
pub struct TdxLauncher<'a, O: TeeOps> {
    ops: &'a mut O,
    progress: Option<Box<dyn FnMut(TdxProgress) + 'a>>,
}

impl<'a, O: TeeOps> TdxLauncher<'a, O> {
    pub fn new(ops: &'a mut O) -> Self {
        TdxLauncher {
            ops,
            progress: None,
        }
    }

    /// Reports the launch's progress to `f`.
    pub fn with_progress(mut self, f: impl FnMut(TdxProgress) + 'a) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    fn report(&mut self, p: TdxProgress) {
        if let Some(f) = self.progress.as_mut() {
            f(p);
        }
    }

    /// Issues the whole launch; writes the TD HOB into the plan's TD_HOB range. Returns the
    /// capabilities the run loop needs (GetTdVmCallInfo).
    pub fn launch(
        &mut self,
        plan: &mut TdxPlan,
        cfg: &TdxConfig,
    ) -> Result<TdxCapabilities, TeeError> {
        check_config(plan, cfg)?;
        self.check_caps()?;
        self.ops
            .create_vm(KVM_X86_TDX_VM)
            .map_err(|e| ioctl_err("KVM_CREATE_VM", "type KVM_X86_TDX_VM (5)", e))?;
        let caps = self.capabilities()?;
        check_within("attributes", cfg.attributes, caps.supported_attrs)?;
        check_within("xfam", cfg.xfam, caps.supported_xfam)?;
        let xfam = cfg.xfam | (cfg.xfam_optional & caps.supported_xfam);
        self.ops
            .enable_cap(KVM_CAP_SPLIT_IRQCHIP, SPLIT_IRQCHIP_IOAPIC_PINS)
            .map_err(|e| ioctl_err("KVM_ENABLE_CAP", "KVM_CAP_SPLIT_IRQCHIP(24)", e))?;
        self.ops
            .enable_cap(KVM_CAP_EXIT_HYPERCALL, 1 << KVM_HC_MAP_GPA_RANGE)
            .map_err(|e| ioctl_err("KVM_ENABLE_CAP", "KVM_CAP_EXIT_HYPERCALL(1 << 12)", e))?;
        // The local APIC timer counts at the 25 MHz the TDX module reports in CPUID 0x15.
        self.ops
            .enable_cap(KVM_CAP_X86_APIC_BUS_CYCLES_NS, TDX_APIC_BUS_CYCLES_NS)
            .map_err(|e| {
                ioctl_err(
                    "KVM_ENABLE_CAP",
                    "KVM_CAP_X86_APIC_BUS_CYCLES_NS(40): 25 MHz APIC bus",
                    e,
                )
            })?;
        let cpuid = filter_cpuid(&cfg.cpuid, &caps.cpuid);
        self.init_vm(cfg, xfam, &cpuid)?;
        self.report(TdxProgress::Started);
        self.memory(cfg)?;
        for id in 0..cfg.vcpus {
            self.ops
                .create_vcpu(id)
                .map_err(|e| ioctl_err("KVM_CREATE_VCPU", format!("vcpu {id}"), e))?;
            self.ops
                .set_cpuid2(id, &cpuid)
                .map_err(|e| ioctl_err("KVM_SET_CPUID2", format!("vcpu {id}"), e))?;
        }
        write_hob(plan, cfg)?;
        let hob_gpa = plan.hob_gpa();
        for id in 0..cfg.vcpus {
            let mut cmd = KvmTdxCmd {
                id: KVM_TDX_INIT_VCPU,
                data: hob_gpa,
                ..Default::default()
            };
            self.ops.tdx_vcpu_op(id, &mut cmd, None).map_err(|e| {
                ioctl_err(
                    "KVM_TDX_INIT_VCPU",
                    format!("vcpu {id} rcx {hob_gpa:#x}, hw_error {:#x}", cmd.hw_error),
                    e,
                )
            })?;
        }
        for r in &plan.regions {
            let t0 = std::time::Instant::now();
            self.init_mem_region(r.gpa, r.data.as_bytes(), r.measure)?;
            self.report(TdxProgress::Region {
                gpa: r.gpa,
                pages: r.pages(),
                measured: r.measure,
                origin: r.origin,
                micros: t0.elapsed().as_micros() as u64,
            });
        }
        let mut cmd = KvmTdxCmd {
            id: KVM_TDX_FINALIZE_VM,
            ..Default::default()
        };
        self.ops.tdx_vm_op(&mut cmd, None).map_err(|e| {
            ioctl_err(
                "KVM_TDX_FINALIZE_VM",
                format!("hw_error {:#x}", cmd.hw_error),
                e,
            )
        })?;
        self.report(TdxProgress::Finished);
        tracing::info!(
            vcpus = cfg.vcpus,
            regions = plan.regions.len(),
            xfam = format!("{xfam:#x}"),
            "TDX launch finalized"
        );
        Ok(caps)
    }

    /// Spec §6 step 1 and §5 step 0 capabilities, plus the split irqchip.
    fn check_caps(&mut self) -> Result<(), TeeError> {
        let missing = |m: String| TeeError::HostUnsupported {
            platform: "TDX",
            missing: m,
        };
        let types = self.ops.check_extension(KVM_CAP_VM_TYPES).unwrap_or(0);
        if types & (1 << KVM_X86_TDX_VM) == 0 {
            return Err(missing(format!(
                "KVM_CAP_VM_TYPES = {types:#x} lacks KVM_X86_TDX_VM (bit 5)"
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
            (KVM_CAP_SPLIT_IRQCHIP, "KVM_CAP_SPLIT_IRQCHIP", 1),
            (
                KVM_CAP_X86_APIC_BUS_CYCLES_NS,
                "KVM_CAP_X86_APIC_BUS_CYCLES_NS",
                1,
            ),
        ];
        for (cap, name, mask) in needs {
            let v = self.ops.check_extension(cap).unwrap_or(0);
            if v & mask == 0 {
                return Err(missing(format!("{name} = {v:#x} lacks {mask:#x}")));
            }
        }
        Ok(())
    }

    /// `KVM_TDX_CAPABILITIES`, doubling the CPUID array while the kernel says `-E2BIG`.
    fn capabilities(&mut self) -> Result<TdxCapabilities, TeeError> {
        let head = std::mem::size_of::<KvmTdxCapabilities>();
        let mut nent = CAPS_NENT_START;
        loop {
            let mut buf = vec![0u8; head + nent as usize * std::mem::size_of::<KvmCpuidEntry2>()];
            buf[2048..2052].copy_from_slice(&nent.to_le_bytes());
            let mut cmd = KvmTdxCmd {
                id: KVM_TDX_CAPABILITIES,
                ..Default::default()
            };
            match self.ops.tdx_vm_op(&mut cmd, Some(&mut buf)) {
                Ok(()) => return parse_caps(&buf, nent),
                Err(e) if is(&e, libc::E2BIG) && nent < CAPS_NENT_MAX => nent *= 2,
                Err(e) => {
                    return Err(ioctl_err(
                        "KVM_TDX_CAPABILITIES",
                        format!("cpuid nent {nent}, hw_error {:#x}", cmd.hw_error),
                        e,
                    ))
                }
            }
        }
    }

    fn init_vm(
        &mut self,
        cfg: &TdxConfig,
        xfam: u64,
        cpuid: &[KvmCpuidEntry2],
    ) -> Result<(), TeeError> {
        let mut head = KvmTdxInitVm::new_zeroed();
        head.attributes = cfg.attributes;
        head.xfam = xfam;
        head.mrconfigid = cfg.mrconfigid;
        head.mrowner = cfg.mrowner;
        head.mrownerconfig = cfg.mrownerconfig;
        head.nent = cpuid.len() as u32;
        let mut buf = head.as_bytes().to_vec();
        buf.extend_from_slice(cpuid.as_bytes());
        let mut retries = 0;
        loop {
            let mut cmd = KvmTdxCmd {
                id: KVM_TDX_INIT_VM,
                ..Default::default()
            };
            match self.ops.tdx_vm_op(&mut cmd, Some(&mut buf)) {
                Ok(()) => return Ok(()),
                Err(e) if is(&e, libc::EAGAIN) && retries < MAX_RETRIES => retries += 1,
                Err(e) => {
                    return Err(ioctl_err(
                        "KVM_TDX_INIT_VM",
                        format!(
                            "attributes {:#x} xfam {:#x} {} cpuid entries, {retries} retries, \
                             hw_error {:#x}",
                            cfg.attributes,
                            xfam,
                            cpuid.len(),
                            cmd.hw_error
                        ),
                        e,
                    ))
                }
            }
        }
    }

    /// One guest_memfd for all RAM, one memslot per region, everything private.
    fn memory(&mut self, cfg: &TdxConfig) -> Result<(), TeeError> {
        crate::snp::map_private_ram(self.ops, &cfg.ram)
    }

    /// `INIT_MEM_REGION` of one range on vCPU 0, following progress through `-EINTR` and
    /// retrying `-EAGAIN`.
    fn init_mem_region(&mut self, gpa: u64, data: &[u8], measure: bool) -> Result<(), TeeError> {
        let pages = data.len() as u64 / 4096;
        let mut region = KvmTdxInitMemRegion {
            source_addr: data.as_ptr() as u64,
            gpa,
            nr_pages: pages,
        };
        let flags = if measure {
            KVM_TDX_MEASURE_MEMORY_REGION
        } else {
            0
        };
        let mut retries = 0;
        while region.nr_pages > 0 {
            let mut cmd = KvmTdxCmd {
                id: KVM_TDX_INIT_MEM_REGION,
                flags,
                ..Default::default()
            };
            let before = region.nr_pages;
            match self
                .ops
                .tdx_vcpu_op(0, &mut cmd, Some(region.as_mut_bytes()))
            {
                Ok(()) if region.nr_pages < before => {}
                Err(e)
                    if (is(&e, libc::EAGAIN) || is(&e, libc::EINTR)) && retries < MAX_RETRIES =>
                {
                    retries += 1;
                }
                res => {
                    let errno = res
                        .err()
                        .unwrap_or_else(|| io::Error::from_raw_os_error(libc::EIO));
                    return Err(ioctl_err(
                        "KVM_TDX_INIT_MEM_REGION",
                        format!(
                            "gpa {gpa:#x}+{:#x} (measure {measure}): stopped at {:#x} with {} pages \
                             left, hw_error {:#x}",
                            pages * 4096,
                            region.gpa,
                            region.nr_pages,
                            cmd.hw_error
                        ),
                        errno,
                    ));
                }
            }
        }
        tracing::debug!(gpa, pages, measure, retries, "KVM_TDX_INIT_MEM_REGION done");
        Ok(())
    }
}

fn parse_caps(buf: &[u8], nent: u32) -> Result<TdxCapabilities, TeeError> {
    let bad = |n: u32| {
        ioctl_err(
            "KVM_TDX_CAPABILITIES",
            format!("kernel reported {n} cpuid entries for an array of {nent}"),
            io::Error::from_raw_os_error(libc::EINVAL),
        )
    };
    let (head, rest) = KvmTdxCapabilities::read_from_prefix(buf).map_err(|_| bad(0))?;
    if head.nent > nent {
        return Err(bad(head.nent));
    }
    let entry = std::mem::size_of::<KvmCpuidEntry2>();
    if rest.len() < head.nent as usize * entry {
        return Err(bad(head.nent));
    }
    let cpuid = rest
        .chunks_exact(entry)
        .take(head.nent as usize)
        .filter_map(|c| KvmCpuidEntry2::read_from_bytes(c).ok())
        .collect();
    Ok(TdxCapabilities {
        supported_attrs: head.supported_attrs,
        supported_xfam: head.supported_xfam,
        kernel_tdvmcallinfo_1_r11: head.kernel_tdvmcallinfo_1_r11,
        user_tdvmcallinfo_1_r11: head.user_tdvmcallinfo_1_r11,
        kernel_tdvmcallinfo_1_r12: head.kernel_tdvmcallinfo_1_r12,
        user_tdvmcallinfo_1_r12: head.user_tdvmcallinfo_1_r12,
        cpuid,
    })
}

fn check_within(what: &str, value: u64, supported: u64) -> Result<(), TeeError> {
    if value & !supported != 0 {
        return Err(TeeError::HostUnsupported {
            platform: "TDX",
            missing: format!(
                "{what} {value:#x} not within supported {supported:#x} (extra bits {:#x})",
                value & !supported
            ),
        });
    }
    Ok(())
}

fn check_config(plan: &TdxPlan, cfg: &TdxConfig) -> Result<(), TeeError> {
    if cfg.vcpus == 0 || cfg.vcpus > MAX_VCPUS {
        return Err(TeeError::input(
            "tdx config",
            format!("vcpus {} not in 1..={MAX_VCPUS}", cfg.vcpus),
        ));
    }
    for r in &plan.regions {
        let covered = cfg
            .ram
            .iter()
            .any(|m| r.gpa >= m.gpa && r.end() <= m.gpa.saturating_add(m.size));
        if !covered {
            return Err(TeeError::input(
                "tdx config",
                format!(
                    "launch range {:#x}+{:#x} ({:?}) is outside the memslots",
                    r.gpa,
                    r.data.len(),
                    r.origin
                ),
            ));
        }
    }
    Ok(())
}

/// Builds the TD HOB from the system RAM and the ranges the launch adds, and writes it into the
/// plan's TD_HOB range (a no-op for plans without one, e.g. IGVM).
fn write_hob(plan: &mut TdxPlan, cfg: &TdxConfig) -> Result<(), TeeError> {
    let Some(i) = plan.hob else {
        return Ok(());
    };
    let entries = ram_entries(&cfg.system_ram, &plan.added_ranges());
    let region = &mut plan.regions[i];
    let hob = build_td_hob(region.gpa, region.data.len(), &entries)?;
    region.data.as_mut_bytes()[..hob.len()].copy_from_slice(&hob);
    Ok(())
}

#[cfg(test)]
#[path = "tdx_tests.rs"]
mod tests;
