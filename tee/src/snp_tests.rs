//! Tests of the SNP launch sequence against the recording fake (oracle O5).

use super::*;
use crate::fake::{RecordingOps, UpdateAnswer};
use crate::measure::{Firmware, MeasureInputs};
use crate::testutil::SynthOvmf;
use zerocopy::FromBytes;

fn plan(vcpus: u32) -> LaunchPlan {
    LaunchPlan::from_inputs(&MeasureInputs {
        firmware: Firmware::Ovmf {
            name: "amdsev.fd".into(),
            data: SynthOvmf::amdsev().build(),
        },
        kernel: Some(b"bzImage".to_vec()),
        initrd: None,
        cmdline: Some("console=ttyS0".into()),
        vcpus,
        vcpu_signature: 0x800f12,
        guest_features: 1,
        ovmf_hash: None,
    })
    .unwrap()
}

fn cfg() -> SnpConfig {
    SnpConfig {
        cbitpos: 51,
        reduced_phys_bits: 1,
        ram: vec![
            RamRegion {
                slot: 0,
                gpa: 0,
                size: 0x8000_0000,
                userspace_addr: 0x7f00_0000_0000,
            },
            RamRegion {
                slot: 1,
                gpa: 0xffff_0000,
                size: 0x10000,
                userspace_addr: 0x7f10_0000_0000,
            },
        ],
    }
}

/// The calls after the capability probes.
fn launch_calls(ops: &RecordingOps) -> Vec<&'static str> {
    ops.names()
        .into_iter()
        .filter(|n| *n != "KVM_CHECK_EXTENSION" && *n != "KVM_GET_DEVICE_ATTR")
        .collect()
}

/// The launch sequence the kernel documents for `vcpus` vCPUs and `updates` LAUNCH_UPDATE
/// ranges (two memslots: below and above the MMIO hole), after the capability probes.
fn expected_launch(vcpus: usize, updates: usize) -> Vec<&'static str> {
    let mut calls = vec![
        "OPEN_SEV",
        "KVM_CREATE_VM",
        "KVM_ENABLE_CAP",
        "SEV_INIT2",
        "KVM_CREATE_GUEST_MEMFD",
        "KVM_SET_USER_MEMORY_REGION2",
        "KVM_SET_MEMORY_ATTRIBUTES",
        "KVM_SET_USER_MEMORY_REGION2",
        "KVM_SET_MEMORY_ATTRIBUTES",
    ];
    for _ in 0..vcpus {
        calls.extend(["KVM_CREATE_VCPU", "KVM_SET_REGS"]);
    }
    calls.push("SNP_LAUNCH_START");
    calls.extend(std::iter::repeat_n("SNP_LAUNCH_UPDATE", updates));
    calls.push("SNP_LAUNCH_FINISH");
    calls
}

fn updates_as_list(ops: &RecordingOps) -> Vec<(u64, u64, u8)> {
    ops.launch_updates()
        .iter()
        .map(|u| (u.gfn_start << 12, u.len, u.type_))
        .collect()
}

#[test]
fn o5_sequence_matches_the_plan() {
    let plan = plan(2);
    let mut ops = RecordingOps::snp_host();
    SnpLauncher::new(&mut ops).launch(&plan, &cfg()).unwrap();
    assert_eq!(launch_calls(&ops), expected_launch(2, plan.ranges.len()));

    let create_vm = ops
        .calls
        .iter()
        .find(|c| c.ioctl == "KVM_CREATE_VM")
        .unwrap();
    assert_eq!(create_vm.bytes, 4u64.to_le_bytes());
    // Every SEV command carries the /dev/sev fd.
    for c in ops.calls.iter().filter(|c| c.cmd.is_some()) {
        assert_eq!(c.cmd.unwrap().sev_fd, 9, "{}", c.ioctl);
    }
    let init = ops.calls.iter().find(|c| c.ioctl == "SEV_INIT2").unwrap();
    let init = KvmSevInit::read_from_bytes(&init.bytes).unwrap();
    assert_eq!(
        init.vmsa_features & 1,
        0,
        "SNP_ACTIVE is never passed to INIT2"
    );
    let start = ops
        .calls
        .iter()
        .find(|c| c.ioctl == "SNP_LAUNCH_START")
        .unwrap();
    assert_eq!(
        KvmSevSnpLaunchStart::read_from_bytes(&start.bytes)
            .unwrap()
            .policy,
        0x30000
    );

    // The LAUNCH_UPDATE list equals the list that produced the offline digest.
    let want: Vec<_> = plan
        .update_list()
        .into_iter()
        .map(|(g, l, t)| (g, l, t as u8))
        .collect();
    assert_eq!(updates_as_list(&ops), want);
    for (u, r) in ops.launch_updates().iter().zip(&plan.ranges) {
        let expected_uaddr = if r.page_type == PageType::Zero {
            0
        } else {
            r.data.as_bytes().as_ptr() as u64
        };
        assert_eq!(u.uaddr, expected_uaddr);
        assert_eq!(u.uaddr % 4096, 0);
    }
    // The registers set on each vCPU yield the VMSAs the digest used.
    let regs: Vec<_> = ops
        .calls
        .iter()
        .filter(|c| c.ioctl == "KVM_SET_REGS")
        .collect();
    for (c, v) in regs.iter().zip(&plan.vcpus) {
        assert_eq!(&c.bytes[..], &v.vmsa[..]);
    }
    // Memory: one guest_memfd sized for all RAM, memslots flagged GUEST_MEMFD, all private.
    let memfd = ops
        .calls
        .iter()
        .find(|c| c.ioctl == "KVM_CREATE_GUEST_MEMFD")
        .unwrap();
    assert_eq!(
        KvmCreateGuestMemfd::read_from_bytes(&memfd.bytes)
            .unwrap()
            .size,
        0x8001_0000
    );
    let slots: Vec<_> = ops
        .calls
        .iter()
        .filter(|c| c.ioctl == "KVM_SET_USER_MEMORY_REGION2")
        .map(|c| KvmUserspaceMemoryRegion2::read_from_bytes(&c.bytes).unwrap())
        .collect();
    assert_eq!(slots[1].guest_memfd_offset, 0x8000_0000);
    assert!(slots
        .iter()
        .all(|s| s.flags == KVM_MEM_GUEST_MEMFD && s.guest_memfd == 20));
    let attrs: Vec<_> = ops
        .calls
        .iter()
        .filter(|c| c.ioctl == "KVM_SET_MEMORY_ATTRIBUTES")
        .map(|c| KvmMemoryAttributes::read_from_bytes(&c.bytes).unwrap())
        .collect();
    assert!(attrs
        .iter()
        .all(|a| a.attributes == KVM_MEMORY_ATTRIBUTE_PRIVATE));
    let hc = ops
        .calls
        .iter()
        .find(|c| c.ioctl == "KVM_ENABLE_CAP")
        .unwrap();
    assert_eq!(&hc.bytes[4..], &(1u64 << 12).to_le_bytes());
}

#[test]
fn update_loop_follows_partial_progress_and_eagain() {
    let plan = plan(1);
    let mut ops = RecordingOps::snp_host();
    ops.updates = [
        UpdateAnswer::Partial(3),
        UpdateAnswer::Again,
        UpdateAnswer::Partial(1),
    ]
    .into();
    SnpLauncher::new(&mut ops).launch(&plan, &cfg()).unwrap();
    let ups = ops.launch_updates();
    let fw = &plan.ranges[0];
    let base = fw.data.as_bytes().as_ptr() as u64;
    // First call: the whole firmware; then the remainder after 3 pages, twice (EAGAIN), then
    // after 4 pages until done.
    assert_eq!((ups[0].gfn_start << 12, ups[0].len), (fw.gpa, fw.len));
    assert_eq!(
        (ups[1].gfn_start << 12, ups[1].len, ups[1].uaddr),
        (fw.gpa + 0x3000, fw.len - 0x3000, base + 0x3000)
    );
    assert_eq!(ups[2], ups[1]);
    assert_eq!(
        (ups[3].gfn_start << 12, ups[3].len),
        (fw.gpa + 0x4000, fw.len - 0x4000)
    );
    assert_eq!(ups.len(), plan.ranges.len() + 3);
}

#[test]
fn psp_error_names_range_type_and_status() {
    let plan = plan(1);
    let mut ops = RecordingOps::snp_host();
    ops.updates = [
        UpdateAnswer::Done,
        UpdateAnswer::Done,
        UpdateAnswer::Done,
        UpdateAnswer::Fail(libc::EIO, 0x16),
    ]
    .into();
    let e = SnpLauncher::new(&mut ops)
        .launch(&plan, &cfg())
        .unwrap_err()
        .to_string();
    let r = &plan.ranges[3];
    assert!(e.contains(&format!("{:#x}", r.gpa)), "{e}");
    assert!(
        e.contains(&format!("{:?}", r.page_type)) && e.contains("PSP status 0x16"),
        "{e}"
    );
    assert!(!ops.names().contains(&"SNP_LAUNCH_FINISH"));
}

#[test]
fn update_without_progress_is_an_error() {
    let plan = plan(1);
    let mut ops = RecordingOps::snp_host();
    ops.updates = [UpdateAnswer::Partial(0)].into();
    let e = SnpLauncher::new(&mut ops)
        .launch(&plan, &cfg())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no progress"), "{e}");
}

#[test]
fn missing_prerequisites_fail_before_anything_is_created() {
    let plan = plan(1);
    let mut ops = RecordingOps::snp_host();
    ops.caps.insert(KVM_CAP_VM_TYPES, 0x1);
    let e = SnpLauncher::new(&mut ops)
        .launch(&plan, &cfg())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("KVM_CAP_VM_TYPES = 0x1 lacks KVM_X86_SNP_VM (bit 4)"),
        "{e}"
    );
    assert!(launch_calls(&ops).is_empty(), "{:?}", ops.names());

    let mut ops = RecordingOps::snp_host();
    ops.caps.remove(&KVM_CAP_GUEST_MEMFD);
    let e = SnpLauncher::new(&mut ops)
        .launch(&plan, &cfg())
        .unwrap_err()
        .to_string();
    assert!(e.contains("KVM_CAP_GUEST_MEMFD = 0x0"), "{e}");

    let mut ops = RecordingOps::snp_host();
    ops.sev = Err(libc::ENOENT);
    let e = SnpLauncher::new(&mut ops)
        .launch(&plan, &cfg())
        .unwrap_err()
        .to_string();
    assert!(e.contains("/dev/sev: No such file or directory"), "{e}");
    assert_eq!(launch_calls(&ops), ["OPEN_SEV"]);

    let mut ops = RecordingOps::snp_host();
    ops.vmsa_features = Some(0);
    let mut p = plan.clone();
    p.sev_features = 0x21;
    let e = SnpLauncher::new(&mut ops)
        .launch(&p, &cfg())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("vmsa_features 0x20 not within supported 0x0"),
        "{e}"
    );
}

#[test]
fn bad_config_is_rejected() {
    let plan = plan(1);
    let mut ops = RecordingOps::snp_host();
    let mut c = cfg();
    c.cbitpos = 7;
    let e = SnpLauncher::new(&mut ops)
        .launch(&plan, &c)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cbitpos 7"), "{e}");
    let mut c = cfg();
    c.ram.pop();
    let e = SnpLauncher::new(&mut ops)
        .launch(&plan, &c)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("outside guest RAM") && e.contains("0xffff0000"),
        "{e}"
    );
}

#[test]
fn finish_carries_id_block_and_host_data() {
    let mut p = plan(1);
    p.host_data = [0xab; 32];
    p.id_block = Some(crate::plan::IdBlock {
        block: [1; 96],
        auth: Box::new([2; 4096]),
        author_key_enabled: true,
    });
    let mut ops = RecordingOps::snp_host();
    SnpLauncher::new(&mut ops).launch(&p, &cfg()).unwrap();
    let fin = ops
        .calls
        .iter()
        .find(|c| c.ioctl == "SNP_LAUNCH_FINISH")
        .unwrap();
    assert_eq!(fin.bytes.len(), 88);
    assert_eq!(&fin.bytes[19..51], &[0xab; 32]);
    let f = KvmSevSnpLaunchFinish::read_from_bytes(&fin.bytes).unwrap();
    let ib = p.id_block.as_ref().unwrap();
    assert_eq!(f.id_block_uaddr, ib.block.as_ptr() as u64);
    assert_eq!(f.id_auth_uaddr, ib.auth.as_ptr() as u64);
    assert_eq!((f.id_block_en, f.auth_key_en, f.vcek_disabled), (1, 1, 0));
}

#[test]
fn progress_reports_start_every_range_and_finish_in_order() {
    let plan = plan(2);
    let mut ops = RecordingOps::snp_host();
    let mut seen = Vec::new();
    SnpLauncher::new(&mut ops)
        .with_progress(|p| seen.push(p))
        .launch(&plan, &cfg())
        .unwrap();
    assert_eq!(seen.first(), Some(&LaunchProgress::Started));
    assert_eq!(seen.last(), Some(&LaunchProgress::Finished));
    let ranges: Vec<(u64, u64, crate::measure::PageType, bool)> = seen
        .iter()
        .filter_map(|p| match *p {
            LaunchProgress::Range {
                gpa,
                pages,
                page_type,
                measured,
                ..
            } => Some((gpa, pages, page_type, measured)),
            _ => None,
        })
        .collect();
    let want: Vec<_> = plan
        .update_list()
        .into_iter()
        .map(|(gpa, len, t)| (gpa, len.div_ceil(4096), t, t.is_measured()))
        .collect();
    assert_eq!(
        ranges, want,
        "one report per LAUNCH_UPDATE range, in plan order"
    );
    assert_eq!(seen.len(), want.len() + 2);
}

#[test]
fn a_failed_launch_does_not_report_finished() {
    let plan = plan(1);
    let mut ops = RecordingOps::snp_host();
    ops.updates.push_back(UpdateAnswer::Fail(libc::EIO, 0x7));
    let mut seen = Vec::new();
    let r = SnpLauncher::new(&mut ops)
        .with_progress(|p| seen.push(p))
        .launch(&plan, &cfg());
    assert!(r.is_err());
    assert_eq!(seen, [LaunchProgress::Started], "no range done, no finish");
}

/// The launch digest of what the launcher issued: every recorded LAUNCH_UPDATE (its source
/// bytes found through `uaddr` among the plan's buffers), then one VMSA per `KVM_SET_REGS` (the
/// fake records the VMSA the registers yield). Needs one call per range (no partial progress).
fn digest_of_recorded(ops: &RecordingOps, plan: &LaunchPlan) -> [u8; 48] {
    let mut ld = crate::measure::LaunchDigest::default();
    for u in ops.launch_updates() {
        let page_type = plan
            .ranges
            .iter()
            .map(|r| r.page_type)
            .find(|t| *t as u8 == u.type_)
            .expect("a page type of the plan");
        let data = if page_type == PageType::Zero {
            &[][..]
        } else {
            plan.ranges
                .iter()
                .find(|r| r.data.as_bytes().as_ptr() as u64 == u.uaddr)
                .expect("uaddr points at a plan buffer")
                .data
                .as_bytes()
        };
        ld.update_range(page_type, u.gfn_start << 12, u.len, data);
    }
    for c in ops.calls.iter().filter(|c| c.ioctl == "KVM_SET_REGS") {
        ld.update_page(PageType::Vmsa, crate::measure::VMSA_GPA, &c.bytes);
    }
    ld.value()
}

fn plan_update_list(plan: &LaunchPlan) -> Vec<(u64, u64, u8)> {
    plan.update_list()
        .into_iter()
        .map(|(g, l, t)| (g, l, t as u8))
        .collect()
}

/// O5 for firmware alone (no kernel, so the hashes section is ZERO pages): the calls in the
/// documented order, the LAUNCH_UPDATE list equal to the plan's, and the digest of what was
/// issued equal to the digest `cvmm measure` predicts.
#[test]
fn o5_ovmf_only_sequence_matches_the_plan_and_its_digest() {
    let plan = LaunchPlan::from_inputs(&MeasureInputs {
        firmware: Firmware::Ovmf {
            name: "amdsev.fd".into(),
            data: SynthOvmf::amdsev().build(),
        },
        kernel: None,
        initrd: None,
        cmdline: None,
        vcpus: 3,
        vcpu_signature: 0x800f12,
        guest_features: 1,
        ovmf_hash: None,
    })
    .unwrap();
    assert!(
        plan.ranges.iter().any(|r| r.page_type == PageType::Zero),
        "the hashes section is launched as ZERO without a kernel"
    );
    let mut ops = RecordingOps::snp_host();
    SnpLauncher::new(&mut ops).launch(&plan, &cfg()).unwrap();
    assert_eq!(launch_calls(&ops), expected_launch(3, plan.ranges.len()));
    assert_eq!(updates_as_list(&ops), plan_update_list(&plan));
    assert_eq!(digest_of_recorded(&ops, &plan), plan.digest());
    let fin = ops
        .calls
        .iter()
        .find(|c| c.ioctl == "SNP_LAUNCH_FINISH")
        .unwrap();
    assert_eq!(
        KvmSevSnpLaunchFinish::read_from_bytes(&fin.bytes)
            .unwrap()
            .id_block_en,
        0
    );
}

/// An IGVM file generated with the igvm crate: data, CPUID, unmeasured and ZERO-less pages, a
/// parameter area, REQUIRED_MEMORY, an ID block and the VMSA. The launch issues exactly the
/// plan's LAUNCH_UPDATE list, the digest of what it issued is the igvm crate's measurement,
/// the REQUIRED_MEMORY range is private, and LAUNCH_FINISH carries the ID block.
#[test]
fn o5_igvm_sequence_matches_the_plan_and_the_igvm_crate_digest() {
    use crate::igvm::tests::{
        file, id_block, inputs, oracle, page_with, param_area, vmsa_last, MASK,
    };
    use igvm::IgvmDirectiveHeader as D;
    use igvm_defs::{IgvmPageDataFlags as Flags, IgvmPageDataType as Type};
    let none = Flags::new();
    let mut directives = vec![
        page_with(0x10000, none, Type::NORMAL, vec![0x90; 4096]),
        page_with(0x11000, none, Type::NORMAL, vec![0xcc; 100]),
        page_with(0x12000, none, Type::CPUID_DATA, vec![]),
        page_with(
            0x13000,
            none.with_unmeasured(true),
            Type::NORMAL,
            vec![7; 64],
        ),
        page_with(0x14000, none, Type::SECRETS, vec![]),
    ];
    directives.extend(param_area(0x1000, 0x20000));
    directives.extend([
        D::RequiredMemory {
            gpa: 0x100_0000,
            compatibility_mask: MASK,
            number_of_bytes: 0x20_0000,
            vtl2_protectable: false,
        },
        id_block(2),
        vmsa_last(),
    ]);
    let bytes = file(directives);
    let oracle = oracle(&bytes);

    let mut plan = LaunchPlan::from_inputs(&inputs(bytes, 1)).unwrap();
    assert_eq!(plan.private_ranges, [(0x100_0000, 0x20_0000)]);
    // The VMM fills the CPUID page before the launch; the digest stays the igvm crate's.
    assert_eq!(plan.fill_cpuid_pages(&cpuid_entries()).unwrap(), 1);
    assert_eq!(crate::measure::hex(&plan.digest()), oracle);

    let mut ops = RecordingOps::snp_host();
    SnpLauncher::new(&mut ops).launch(&plan, &cfg()).unwrap();
    assert_eq!(launch_calls(&ops), expected_launch(1, plan.ranges.len()));
    assert_eq!(
        updates_as_list(&ops),
        [
            (0x10000, 0x2000, PageType::Normal as u8),
            (0x12000, 0x1000, PageType::Cpuid as u8),
            (0x13000, 0x1000, PageType::Unmeasured as u8),
            (0x14000, 0x1000, PageType::Secrets as u8),
            (0x20000, 0x1000, PageType::Unmeasured as u8),
        ]
    );
    assert_eq!(updates_as_list(&ops), plan_update_list(&plan));
    assert_eq!(
        crate::measure::hex(&digest_of_recorded(&ops, &plan)),
        oracle
    );
    // REQUIRED_MEMORY gets no LAUNCH_UPDATE but lies in memory made private.
    let private = ops
        .calls
        .iter()
        .filter(|c| c.ioctl == "KVM_SET_MEMORY_ATTRIBUTES")
        .map(|c| KvmMemoryAttributes::read_from_bytes(&c.bytes).unwrap())
        .any(|a| {
            a.attributes == KVM_MEMORY_ATTRIBUTE_PRIVATE
                && a.address <= 0x100_0000
                && a.address + a.size >= 0x120_0000
        });
    assert!(private, "REQUIRED_MEMORY range is private");
    let fin = ops
        .calls
        .iter()
        .find(|c| c.ioctl == "SNP_LAUNCH_FINISH")
        .unwrap();
    let f = KvmSevSnpLaunchFinish::read_from_bytes(&fin.bytes).unwrap();
    let ib = plan.id_block.as_ref().expect("ID block");
    assert_eq!((f.id_block_en, f.auth_key_en), (1, 0));
    assert_eq!(f.id_block_uaddr, ib.block.as_ptr() as u64);
    assert_eq!(&ib.block[..48], &[0x55; 48]);
    assert_eq!(&ib.block[88..96], &0x30000u64.to_le_bytes());
}

/// An IGVM CPUID page with a template (COCONUT's igvmbuilder writes the functions its guest
/// wants, outputs zero) reaches LAUNCH_UPDATE with those functions filled from the vCPU's
/// CPUID, the digest stays the igvm crate's; a template claiming 65 functions stops the launch
/// before any ioctl with an error naming the page's gpa and the count.
#[test]
fn an_igvm_cpuid_template_is_filled_from_the_vcpu_cpuid() {
    use crate::igvm::tests::{file, inputs, oracle, page_with, vmsa_last};
    use crate::snp_cpuid::{SnpCpuidFunction, SnpCpuidTable};
    use igvm_defs::{IgvmPageDataFlags as Flags, IgvmPageDataType as Type};
    use zerocopy::{FromZeros, IntoBytes};
    let template = |functions: &[(u32, u32)]| {
        let mut t = SnpCpuidTable::new_zeroed();
        t.count = functions.len() as u32;
        for (f, &(eax_in, ecx_in)) in t.functions.iter_mut().zip(functions) {
            *f = SnpCpuidFunction {
                eax_in,
                ecx_in,
                ..Default::default()
            };
        }
        t.as_bytes().to_vec()
    };
    let with = |cpuid_page: Vec<u8>| {
        file(vec![
            page_with(0x10000, Flags::new(), Type::NORMAL, vec![0x90; 4096]),
            page_with(0x11000, Flags::new(), Type::CPUID_DATA, cpuid_page),
            vmsa_last(),
        ])
    };
    let bytes = with(template(&[(0x8000_001f, 0), (1, 0)]));
    let mut plan = LaunchPlan::from_inputs(&inputs(bytes.clone(), 1)).unwrap();
    assert_eq!(plan.fill_cpuid_pages(&cpuid_entries()).unwrap(), 1);
    assert_eq!(crate::measure::hex(&plan.digest()), oracle(&bytes));
    let r = plan
        .ranges
        .iter()
        .find(|r| r.page_type == PageType::Cpuid)
        .unwrap();
    let table = SnpCpuidTable::read_from_prefix(r.data.as_bytes())
        .unwrap()
        .0;
    assert_eq!(table.count, 2);
    let got: Vec<_> = table.functions[..2]
        .iter()
        .map(|f| (f.eax_in, f.eax, f.ebx, f.ecx, f.edx))
        .collect();
    assert_eq!(
        got,
        [
            (0x8000_001f, 0x1_0003, 0x5_0173, 0x1234, 0x5678),
            (1, 0x00a0_0f11, 0x0800, 0x1234, 0x5678)
        ]
    );
    let u = launched_cpuid_update(&plan);
    assert_eq!(
        (u.gfn_start << 12, u.uaddr),
        (0x11000, r.data.as_bytes().as_ptr() as u64)
    );

    let mut bad = template(&[(0, 0)]);
    bad[..4].copy_from_slice(&65u32.to_le_bytes());
    let mut plan = LaunchPlan::from_inputs(&inputs(with(bad), 1)).unwrap();
    let e = plan
        .fill_cpuid_pages(&cpuid_entries())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("CPUID page at gpa 0x11000") && e.contains("claims 65 functions"),
        "{e}"
    );
}

/// Launches `plan` on the recording fake; returns its (one) CPUID LAUNCH_UPDATE.
fn launched_cpuid_update(plan: &LaunchPlan) -> KvmSevSnpLaunchUpdate {
    let mut ops = RecordingOps::snp_host();
    SnpLauncher::new(&mut ops).launch(plan, &cfg()).unwrap();
    let ups = ops.launch_updates();
    let mut cpuid = ups.iter().filter(|u| u.type_ == PageType::Cpuid as u8);
    let u = *cpuid.next().expect("a CPUID LAUNCH_UPDATE");
    assert!(cpuid.next().is_none(), "one CPUID LAUNCH_UPDATE");
    u
}

/// A small vCPU CPUID list (vendor, features, XSAVE).
fn cpuid_entries() -> Vec<KvmCpuidEntry2> {
    let e = |function, index, flags, eax, ebx| KvmCpuidEntry2 {
        function,
        index,
        flags,
        eax,
        ebx,
        ecx: 0x1234,
        edx: 0x5678,
        ..Default::default()
    };
    vec![
        e(0, 0, 0, 0x10, 0x6874_7541),
        e(1, 0, 0, 0x00a0_0f11, 0x0800),
        e(0xd, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0x7, 0x988),
        e(0x8000_001f, 0, 0, 0x1_0003, 0x5_0173),
    ]
}

/// The OVMF CPUID section goes to LAUNCH_UPDATE as type CPUID with the page built from the
/// vCPU's CPUID (not zeros), and filling it leaves the digest unchanged (CPUID pages enter the
/// digest by type and GPA only; the unfilled plan's digest is the one the sev-snp-measure and
/// `sev` crate tests check).
#[test]
fn cpuid_page_reaches_launch_update_filled_and_the_digest_is_unchanged() {
    let mut plan = plan(2);
    let before = plan.digest();
    let cpuid = plan
        .ranges
        .iter()
        .position(|r| r.page_type == PageType::Cpuid)
        .expect("a CPUID section");
    assert!(plan.ranges[cpuid].data.as_bytes().iter().all(|b| *b == 0));
    assert_eq!(plan.fill_cpuid_pages(&cpuid_entries()).unwrap(), 1);
    assert_eq!(plan.digest(), before);
    let want = crate::snp_cpuid::cpuid_page(&cpuid_entries()).unwrap();
    assert_eq!(plan.ranges[cpuid].data.as_bytes(), &want[..]);
    assert_eq!(&want[..4], &4u32.to_le_bytes());

    let u = launched_cpuid_update(&plan);
    let r = &plan.ranges[cpuid];
    assert_eq!((u.gfn_start << 12, u.len), (r.gpa, 0x1000));
    assert_eq!(u.uaddr, r.data.as_bytes().as_ptr() as u64);
    let mut ops = RecordingOps::snp_host();
    SnpLauncher::new(&mut ops).launch(&plan, &cfg()).unwrap();
    assert_eq!(digest_of_recorded(&ops, &plan), before);

    // Too many entries: an error naming the count, nothing launched.
    let mut plan = self::plan(2);
    let many: Vec<_> = (0..70)
        .map(|i| KvmCpuidEntry2 {
            function: i,
            ..Default::default()
        })
        .collect();
    let e = plan.fill_cpuid_pages(&many).unwrap_err().to_string();
    assert!(e.contains("70 CPUID entries"), "{e}");
}
