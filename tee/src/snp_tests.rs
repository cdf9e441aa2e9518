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
    let mut expected = vec![
        "OPEN_SEV",
        "KVM_CREATE_VM",
        "KVM_ENABLE_CAP",
        "SEV_INIT2",
        "KVM_CREATE_GUEST_MEMFD",
        "KVM_SET_USER_MEMORY_REGION2",
        "KVM_SET_MEMORY_ATTRIBUTES",
        "KVM_SET_USER_MEMORY_REGION2",
        "KVM_SET_MEMORY_ATTRIBUTES",
        "KVM_CREATE_VCPU",
        "KVM_SET_REGS",
        "KVM_CREATE_VCPU",
        "KVM_SET_REGS",
        "SNP_LAUNCH_START",
    ];
    expected.extend(std::iter::repeat_n("SNP_LAUNCH_UPDATE", plan.ranges.len()));
    expected.push("SNP_LAUNCH_FINISH");
    assert_eq!(launch_calls(&ops), expected);

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
