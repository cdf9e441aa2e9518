//! Tests of the TDX launch sequence against the recording fake (oracle O6): the ioctl order,
//! the INIT_VM / INIT_VCPU / INIT_MEM_REGION contents, the -E2BIG / -EAGAIN / -EINTR loops,
//! TDX-module errors, and refusal before anything is created.

use zerocopy::FromBytes;

use super::*;
use crate::fake::{FdKind, RecordingOps};
use crate::fake_tdx::MemRegionAnswer;
use crate::measure::Firmware;
use crate::mrtd::{tdx_mrtd, Mrtd};
use crate::tdx_testutil::small_tdvf;

const FW_BASE: u64 = (1 << 32) - 0x40000;

fn config(vcpus: u32) -> TdxConfig {
    TdxConfig {
        vcpus,
        attributes: 0x1000_0000,
        xfam: 0x6_00e7,
        xfam_optional: 0,
        mrconfigid: [0x11; 48],
        mrowner: [0x22; 48],
        mrownerconfig: [0x33; 48],
        cpuid: vec![
            KvmCpuidEntry2 {
                function: 1,
                ecx: 0xffff_ffff,
                edx: 0xffff_ffff,
                eax: 0x806f8,
                ..Default::default()
            },
            KvmCpuidEntry2 {
                function: 7,
                index: 0,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ebx: 0xffff_ffff,
                ..Default::default()
            },
            // Not configurable: dropped.
            KvmCpuidEntry2 {
                function: 0x4000_0000,
                eax: 1,
                ..Default::default()
            },
        ],
        ram: vec![
            RamRegion {
                slot: 0,
                gpa: 0,
                size: 0x8000_0000,
                userspace_addr: 0x7f00_0000_0000,
            },
            RamRegion {
                slot: 1,
                gpa: FW_BASE,
                size: 0x40000,
                userspace_addr: 0x7f80_0000_0000,
            },
        ],
        system_ram: vec![(0, 0x8000_0000)],
    }
}

fn plan() -> TdxPlan {
    TdxPlan::from_tdvf("small.fd", &small_tdvf()).unwrap()
}

fn launch(
    ops: &mut RecordingOps,
    plan: &mut TdxPlan,
    cfg: &TdxConfig,
) -> Result<TdxCapabilities, TeeError> {
    TdxLauncher::new(ops).launch(plan, cfg)
}

fn pos(names: &[&str], name: &str) -> usize {
    names
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("{name} not issued"))
}

#[test]
fn sequence_is_in_spec_order() {
    let mut ops = RecordingOps::tdx_host();
    let mut p = plan();
    launch(&mut ops, &mut p, &config(2)).unwrap();
    let names: Vec<_> = ops
        .names()
        .into_iter()
        .filter(|n| *n != "KVM_CHECK_EXTENSION")
        .collect();
    assert_eq!(
        names,
        [
            "KVM_CREATE_VM",
            "TDX_CAPABILITIES",
            "KVM_ENABLE_CAP",
            "KVM_ENABLE_CAP",
            "KVM_ENABLE_CAP",
            "TDX_INIT_VM",
            "KVM_CREATE_GUEST_MEMFD",
            "KVM_SET_USER_MEMORY_REGION2",
            "KVM_SET_MEMORY_ATTRIBUTES",
            "KVM_SET_USER_MEMORY_REGION2",
            "KVM_SET_MEMORY_ATTRIBUTES",
            "KVM_CREATE_VCPU",
            "KVM_SET_CPUID2",
            "KVM_CREATE_VCPU",
            "KVM_SET_CPUID2",
            "TDX_INIT_VCPU",
            "TDX_INIT_VCPU",
            "TDX_INIT_MEM_REGION",
            "TDX_INIT_MEM_REGION",
            "TDX_INIT_MEM_REGION",
            "TDX_INIT_MEM_REGION",
            "TDX_FINALIZE_VM",
        ]
    );
    assert!(pos(&names, "TDX_INIT_VM") < pos(&names, "KVM_CREATE_VCPU"));
    let vm = &ops.calls[ops
        .names()
        .iter()
        .position(|n| *n == "KVM_CREATE_VM")
        .unwrap()];
    assert_eq!(vm.bytes, 5u64.to_le_bytes());
}

#[test]
fn split_irqchip_and_map_gpa_exits_are_enabled() {
    let mut ops = RecordingOps::tdx_host();
    launch(&mut ops, &mut plan(), &config(1)).unwrap();
    let caps: Vec<_> = ops
        .calls
        .iter()
        .filter(|c| c.ioctl == "KVM_ENABLE_CAP")
        .map(|c| {
            let cap = u32::from_le_bytes(c.bytes[..4].try_into().unwrap());
            (cap, u64::from_le_bytes(c.bytes[4..].try_into().unwrap()))
        })
        .collect();
    assert_eq!(caps, [(121, 24), (201, 1 << 12), (237, 40)]);
}

#[test]
fn init_vm_carries_config_and_filtered_cpuid() {
    let mut ops = RecordingOps::tdx_host();
    let cfg = config(1);
    launch(&mut ops, &mut plan(), &cfg).unwrap();
    let call = ops.calls.iter().find(|c| c.ioctl == "TDX_INIT_VM").unwrap();
    assert_eq!(call.fd, FdKind::Vm);
    let (head, rest) = KvmTdxInitVm::read_from_prefix(&call.bytes).unwrap();
    assert_eq!((head.attributes, head.xfam), (cfg.attributes, cfg.xfam));
    assert_eq!(&call.bytes[16..64], &[0x11; 48]);
    assert_eq!(&call.bytes[64..112], &[0x22; 48]);
    assert_eq!(&call.bytes[112..160], &[0x33; 48]);
    assert_eq!(head.nent, 2);
    let leaf1 = KvmCpuidEntry2::read_from_bytes(&rest[..40]).unwrap();
    let leaf7 = KvmCpuidEntry2::read_from_bytes(&rest[40..80]).unwrap();
    // Only the configurable bits of the fake host survive.
    assert_eq!((leaf1.eax, leaf1.ecx, leaf1.edx), (0, 0xffff, 0xffff_0000));
    assert_eq!((leaf7.function, leaf7.ebx), (7, 0x00ff_00ff));
    // KVM_SET_CPUID2 gets the same entries.
    let set = ops
        .calls
        .iter()
        .find(|c| c.ioctl == "KVM_SET_CPUID2")
        .unwrap();
    assert_eq!(set.bytes, rest);
}

#[test]
fn capabilities_grow_on_e2big() {
    let mut ops = RecordingOps::tdx_host();
    let extra = KvmCpuidEntry2 {
        function: 0xd,
        ..Default::default()
    };
    ops.tdx.cpuid.extend(std::iter::repeat_n(extra, 20));
    let caps = launch(&mut ops, &mut plan(), &config(1)).unwrap();
    let nents: Vec<u32> = ops
        .calls
        .iter()
        .filter(|c| c.ioctl == "TDX_CAPABILITIES")
        .map(|c| u32::from_le_bytes(c.bytes[2048..2052].try_into().unwrap()))
        .collect();
    assert_eq!(nents, [6, 12, 24]);
    assert_eq!(caps.cpuid.len(), 22);
    assert_eq!(caps.supported_xfam, 0x6_02ff);
}

#[test]
fn every_vcpu_gets_init_vcpu_with_the_hob_gpa() {
    let mut ops = RecordingOps::tdx_host();
    let mut p = plan();
    launch(&mut ops, &mut p, &config(3)).unwrap();
    let inits: Vec<_> = ops
        .calls
        .iter()
        .filter(|c| c.ioctl == "TDX_INIT_VCPU")
        .map(|c| (c.fd, c.tdx_cmd.unwrap().data))
        .collect();
    assert_eq!(
        inits,
        [
            (FdKind::Vcpu(0), 0x809000),
            (FdKind::Vcpu(1), 0x809000),
            (FdKind::Vcpu(2), 0x809000)
        ]
    );
}

#[test]
fn td_hob_is_written_into_the_plan() {
    let mut p = plan();
    launch(&mut RecordingOps::tdx_host(), &mut p, &config(1)).unwrap();
    let hob = p.regions[p.hob.unwrap()].data.as_bytes();
    assert_eq!(u16::from_le_bytes([hob[0], hob[1]]), 1); // PHIT
                                                         // Low RAM split: [0,0x800000) unaccepted, TEMP_MEM accepted, ..., TD_HOB accepted.
    let rd = |i: usize| {
        let at = 56 + i * 48;
        let t = u32::from_le_bytes(hob[at + 24..at + 28].try_into().unwrap());
        let s = u64::from_le_bytes(hob[at + 32..at + 40].try_into().unwrap());
        let l = u64::from_le_bytes(hob[at + 40..at + 48].try_into().unwrap());
        (t, s, l)
    };
    assert_eq!(rd(0), (7, 0, 0x800000));
    assert_eq!(rd(1), (0, 0x800000, 0x6000));
    assert_eq!(rd(2), (7, 0x806000, 0x3000));
    assert_eq!(rd(3), (0, 0x809000, 0x2000));
    assert_eq!(rd(4), (7, 0x80b000, 0x8000_0000 - 0x80b000));
}

/// The INIT_MEM_REGION list is the list that produced the offline MRTD: rebuilding the MRTD
/// from the recorded (gpa, nr_pages, flags) and the plan's bytes gives `tdx_mrtd`.
#[test]
fn init_mem_regions_reproduce_the_offline_mrtd() {
    let mut ops = RecordingOps::tdx_host();
    let mut p = plan();
    launch(&mut ops, &mut p, &config(1)).unwrap();
    let calls: Vec<_> = ops
        .calls
        .iter()
        .filter(|c| c.ioctl == "TDX_INIT_MEM_REGION")
        .collect();
    assert!(calls.iter().all(|c| c.fd == FdKind::Vcpu(0)));
    let issued: Vec<_> = calls
        .iter()
        .map(|c| {
            let r = KvmTdxInitMemRegion::read_from_bytes(&c.bytes).unwrap();
            (r.gpa, r.nr_pages, c.tdx_cmd.unwrap().flags)
        })
        .collect();
    assert_eq!(
        issued,
        [
            (FW_BASE + 0x10000, 0x30, KVM_TDX_MEASURE_MEMORY_REGION),
            (FW_BASE, 0x10, 0),
            (0x809000, 2, 0),
            (0x800000, 6, 0),
        ]
    );
    let mut m = Mrtd::new();
    for (gpa, pages, flags) in issued {
        let r = p.regions.iter().find(|r| r.gpa == gpa).unwrap();
        m.add_range(gpa, pages, r.data.as_bytes(), flags != 0);
    }
    let offline = tdx_mrtd(&Firmware::Ovmf {
        name: "small.fd".into(),
        data: small_tdvf(),
    })
    .unwrap();
    assert_eq!(m.value(), offline);
}

#[test]
fn init_mem_region_follows_progress_through_eintr_and_eagain() {
    let mut ops = RecordingOps::tdx_host();
    ops.tdx.mem_region = [
        MemRegionAnswer::Interrupted(0x10),
        MemRegionAnswer::Again,
        MemRegionAnswer::Interrupted(0x8),
    ]
    .into();
    let mut p = plan();
    launch(&mut ops, &mut p, &config(1)).unwrap();
    let bfv: Vec<_> = ops
        .init_mem_regions()
        .into_iter()
        .take(4)
        .map(|r| (r.gpa - FW_BASE, r.nr_pages))
        .collect();
    assert_eq!(
        bfv,
        [
            (0x10000, 0x30),
            (0x20000, 0x20),
            (0x20000, 0x20),
            (0x28000, 0x18)
        ]
    );
    let src: Vec<_> = ops
        .init_mem_regions()
        .iter()
        .map(|r| r.source_addr)
        .collect();
    assert_eq!(src[1] - src[0], 0x10000);
    assert_eq!(src[0], p.regions[0].data.as_bytes().as_ptr() as u64);
}

#[test]
fn init_mem_region_failure_names_range_and_hw_error() {
    let mut ops = RecordingOps::tdx_host();
    ops.tdx.mem_region = [
        MemRegionAnswer::Done,
        MemRegionAnswer::Fail(libc::EIO, 0xc000_0100_0000_0000),
    ]
    .into();
    let e = launch(&mut ops, &mut plan(), &config(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("KVM_TDX_INIT_MEM_REGION"), "{e}");
    assert!(e.contains(&format!("gpa {FW_BASE:#x}+0x10000")), "{e}");
    assert!(e.contains("hw_error 0xc000010000000000"), "{e}");
    assert!(!ops.names().contains(&"TDX_FINALIZE_VM"));
}

#[test]
fn init_vm_is_retried_on_eagain() {
    let mut ops = RecordingOps::tdx_host();
    ops.tdx.init_vm_again = 3;
    launch(&mut ops, &mut plan(), &config(1)).unwrap();
    let n = ops.names().iter().filter(|n| **n == "TDX_INIT_VM").count();
    assert_eq!(n, 4);
}

#[test]
fn host_without_tdx_fails_before_creating_anything() {
    let mut ops = RecordingOps::tdx_host();
    ops.caps.insert(KVM_CAP_VM_TYPES, 0x13);
    let e = launch(&mut ops, &mut plan(), &config(1))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("KVM_CAP_VM_TYPES = 0x13 lacks KVM_X86_TDX_VM (bit 5)"),
        "{e}"
    );
    assert!(ops.names().iter().all(|n| *n == "KVM_CHECK_EXTENSION"));

    let mut ops = RecordingOps::tdx_host();
    ops.caps.remove(&KVM_CAP_SPLIT_IRQCHIP);
    let e = launch(&mut ops, &mut plan(), &config(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("KVM_CAP_SPLIT_IRQCHIP"), "{e}");

    let mut ops = RecordingOps::tdx_host();
    ops.caps.remove(&KVM_CAP_X86_APIC_BUS_CYCLES_NS);
    let e = launch(&mut ops, &mut plan(), &config(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("KVM_CAP_X86_APIC_BUS_CYCLES_NS = 0x0"), "{e}");
    assert!(ops.names().iter().all(|n| *n == "KVM_CHECK_EXTENSION"));
}

#[test]
fn optional_xfam_bits_are_kept_only_where_kvm_supports_them() {
    let mut ops = RecordingOps::tdx_host();
    let mut cfg = config(1);
    // Required x87|SSE; optional AVX (2), PKRU (9), AMX (17, 18) and bit 20, which the fake
    // host's supported_xfam (0x602ff) lacks.
    cfg.xfam = 0x3;
    cfg.xfam_optional = 0x4 | 0x200 | 0x6_0000 | 1 << 20;
    launch(&mut ops, &mut plan(), &cfg).unwrap();
    let call = ops.calls.iter().find(|c| c.ioctl == "TDX_INIT_VM").unwrap();
    let (head, _) = KvmTdxInitVm::read_from_prefix(&call.bytes).unwrap();
    assert_eq!(head.xfam, 0x6_0207);
}

#[test]
fn progress_reports_start_every_region_and_finish() {
    let mut ops = RecordingOps::tdx_host();
    let mut p = plan();
    let mut seen = Vec::new();
    TdxLauncher::new(&mut ops)
        .with_progress(|e| seen.push(e))
        .launch(&mut p, &config(1))
        .unwrap();
    assert_eq!(seen.first(), Some(&TdxProgress::Started));
    assert_eq!(seen.last(), Some(&TdxProgress::Finished));
    let regions: Vec<(u64, u64, bool, RegionOrigin)> = seen[1..seen.len() - 1]
        .iter()
        .map(|e| match *e {
            TdxProgress::Region {
                gpa,
                pages,
                measured,
                origin,
                ..
            } => (gpa, pages, measured, origin),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let want: Vec<_> = p
        .regions
        .iter()
        .map(|r| (r.gpa, r.pages(), r.measure, r.origin))
        .collect();
    assert_eq!(regions, want);
    assert_eq!(regions.len(), 4);
}

#[test]
fn unsupported_attributes_or_xfam_stop_before_init_vm() {
    let mut ops = RecordingOps::tdx_host();
    let mut cfg = config(1);
    cfg.attributes |= 1 << 40;
    let e = launch(&mut ops, &mut plan(), &cfg).unwrap_err().to_string();
    assert!(
        e.contains("attributes") && e.contains("extra bits 0x10000000000"),
        "{e}"
    );
    assert!(!ops.names().contains(&"TDX_INIT_VM"));
    let mut cfg = config(1);
    cfg.xfam = 1 << 20;
    let e = launch(&mut RecordingOps::tdx_host(), &mut plan(), &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("xfam 0x100000"), "{e}");
}

#[test]
fn bad_config_is_rejected_before_any_call() {
    let mut ops = RecordingOps::tdx_host();
    let mut cfg = config(1);
    cfg.ram.truncate(1); // the firmware is no longer in a memslot
    let e = launch(&mut ops, &mut plan(), &cfg).unwrap_err().to_string();
    assert!(
        e.contains("outside the memslots") && e.contains("Bfv"),
        "{e}"
    );
    let e = launch(&mut ops, &mut plan(), &config(0))
        .unwrap_err()
        .to_string();
    assert!(e.contains("vcpus 0"), "{e}");
    assert!(ops.calls.is_empty());
}

#[test]
fn hob_too_small_for_the_ram_map_is_an_error() {
    let mut cfg = config(1);
    cfg.system_ram = (0..200).map(|i| ((i as u64) << 24, 0x1000)).collect();
    let e = launch(&mut RecordingOps::tdx_host(), &mut plan(), &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("TD HOB"), "{e}");
}
