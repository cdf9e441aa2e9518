//! Tests of the run-time conversions against the recording fake: the calls each conversion
//! records, retries and failures, every kind of bad range, and SEV_TERM decoding.

use zerocopy::FromBytes;

use super::*;
use crate::fake::{FdKind, RecordingOps};

const LOW_UA: u64 = 0x7f00_0000_0000;
const HIGH_UA: u64 = 0x7f80_0000_0000;
const G: u64 = 1 << 30;
const MEMFD: u32 = 20;
const EINVAL_RET: u64 = (-libc::EINVAL as i64) as u64;

/// 2 GiB below the hole, 1 GiB at 4 GiB, given high region first so the guest_memfd layout
/// (high at offset 0, low at 1 GiB) differs from gpa order.
fn psc() -> PageStateChanges {
    let ram = [
        RamRegion {
            slot: 1,
            gpa: 4 * G,
            size: G,
            userspace_addr: HIGH_UA,
        },
        RamRegion {
            slot: 0,
            gpa: 0,
            size: 2 * G,
            userspace_addr: LOW_UA,
        },
    ];
    PageStateChanges::new(&ram, MEMFD)
}

fn attrs(ops: &RecordingOps) -> Vec<(u64, u64, u64)> {
    ops.calls
        .iter()
        .filter(|c| c.ioctl == "KVM_SET_MEMORY_ATTRIBUTES")
        .map(|c| KvmMemoryAttributes::read_from_bytes(&c.bytes).unwrap())
        .map(|a| (a.address, a.size, a.attributes))
        .collect()
}

/// `(call, fd, first u64, second u64)` of the discard calls.
fn discards(ops: &RecordingOps) -> Vec<(&'static str, FdKind, u64, u64)> {
    ops.calls
        .iter()
        .filter(|c| c.ioctl != "KVM_SET_MEMORY_ATTRIBUTES")
        .map(|c| {
            let a = u64::from_le_bytes(c.bytes[0..8].try_into().unwrap());
            let b = u64::from_le_bytes(c.bytes[8..16].try_into().unwrap());
            (c.ioctl, c.fd, a, b)
        })
        .collect()
}

#[test]
fn map_gpa_range_to_private_sets_the_attribute_and_drops_the_shared_pages() {
    let mut ops = RecordingOps::default();
    let args = [
        0x10_0000,
        16,
        KVM_MAP_GPA_RANGE_ENCRYPTED | KVM_MAP_GPA_RANGE_PAGE_SZ_2M,
        0,
        0,
        0,
    ];
    assert_eq!(psc().on_hypercall(&mut ops, 12, &args), Some(0));
    assert_eq!(
        attrs(&ops),
        [(0x10_0000, 0x10000, KVM_MEMORY_ATTRIBUTE_PRIVATE)]
    );
    assert_eq!(
        discards(&ops),
        [(
            "MADV_DONTNEED",
            FdKind::Process,
            LOW_UA + 0x10_0000,
            0x10000
        )]
    );
    assert_eq!(ops.calls[0].ioctl, "KVM_SET_MEMORY_ATTRIBUTES");
}

#[test]
fn map_gpa_range_to_shared_clears_the_attribute_and_punches_the_guest_memfd() {
    let mut ops = RecordingOps::default();
    // Low RAM sits after the 1 GiB high region in the guest_memfd.
    assert_eq!(
        psc().on_hypercall(&mut ops, 12, &[0x2000, 1, KVM_MAP_GPA_RANGE_DECRYPTED]),
        Some(0)
    );
    assert_eq!(attrs(&ops), [(0x2000, 0x1000, 0)]);
    assert_eq!(
        discards(&ops),
        [(
            "FALLOCATE_PUNCH_HOLE",
            FdKind::Memfd(MEMFD),
            G + 0x2000,
            0x1000
        )]
    );
    let mut ops = RecordingOps::default();
    let c = psc().map_gpa_range(&mut ops, 4 * G + 0x5000, 2, 0).unwrap();
    assert_eq!(
        c,
        Conversion {
            gpa: 4 * G + 0x5000,
            size: 0x2000,
            private: false
        }
    );
    assert_eq!(
        discards(&ops),
        [("FALLOCATE_PUNCH_HOLE", FdKind::Memfd(MEMFD), 0x5000, 0x2000)]
    );
}

#[test]
fn a_range_across_adjacent_regions_is_discarded_per_region() {
    let ram = [
        RamRegion {
            slot: 0,
            gpa: 0,
            size: 0x10000,
            userspace_addr: LOW_UA,
        },
        RamRegion {
            slot: 1,
            gpa: 0x10000,
            size: 0x10000,
            userspace_addr: HIGH_UA,
        },
    ];
    let mut ops = RecordingOps::default();
    PageStateChanges::new(&ram, 7)
        .map_gpa_range(&mut ops, 0xe000, 4, 0)
        .unwrap();
    assert_eq!(attrs(&ops), [(0xe000, 0x4000, 0)]);
    assert_eq!(
        discards(&ops),
        [
            ("FALLOCATE_PUNCH_HOLE", FdKind::Memfd(7), 0xe000, 0x2000),
            ("FALLOCATE_PUNCH_HOLE", FdKind::Memfd(7), 0x10000, 0x2000),
        ]
    );
}

#[test]
fn every_bad_range_is_refused_with_einval_and_nothing_is_called() {
    let cases: [(&str, [u64; 3]); 7] = [
        ("unaligned gpa", [0x1001, 1, 0]),
        ("no pages", [0x1000, 0, 0]),
        ("page count overflows", [0x1000, u64::MAX, 0]),
        ("end overflows", [u64::MAX - 0xfff, 2, 0]),
        ("in the hole below 4 GiB", [3 * G, 1, 0]),
        ("straddles the end of low RAM", [2 * G - 0x1000, 2, 0]),
        (
            "beyond the last region",
            [5 * G, 1, KVM_MAP_GPA_RANGE_ENCRYPTED],
        ),
    ];
    for (what, args) in cases {
        let mut ops = RecordingOps::default();
        assert_eq!(
            psc().on_hypercall(&mut ops, KVM_HC_MAP_GPA_RANGE, &args),
            Some(EINVAL_RET),
            "{what}"
        );
        assert!(ops.calls.is_empty(), "{what}: {:?}", ops.names());
        let e = psc()
            .map_gpa_range(&mut ops, args[0], args[1], args[2])
            .unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "{what}");
        assert!(
            e.to_string().contains("KVM_HC_MAP_GPA_RANGE"),
            "{what}: {e}"
        );
    }
    // Missing arguments read as zero: an empty range.
    let mut ops = RecordingOps::default();
    assert_eq!(
        psc().on_hypercall(&mut ops, 12, &[0x1000]),
        Some(EINVAL_RET)
    );
    assert!(ops.calls.is_empty());
}

#[test]
fn other_hypercalls_are_left_to_the_caller() {
    let mut ops = RecordingOps::default();
    assert_eq!(psc().on_hypercall(&mut ops, 11, &[0x1000, 1, 0]), None);
    assert!(ops.calls.is_empty());
}

#[test]
fn eagain_and_eintr_are_retried_then_reported() {
    let mut ops = RecordingOps {
        attr_errors: [libc::EAGAIN, libc::EINTR].into(),
        ..Default::default()
    };
    assert_eq!(psc().on_hypercall(&mut ops, 12, &[0x3000, 1, 0]), Some(0));
    assert_eq!(attrs(&ops).len(), 3);
    assert_eq!(discards(&ops).len(), 1);

    let mut ops = RecordingOps {
        attr_errors: std::iter::repeat_n(libc::EAGAIN, 100).collect(),
        ..Default::default()
    };
    let ret = psc().on_hypercall(&mut ops, 12, &[0x3000, 1, 0]);
    assert_eq!(ret, Some((-libc::EAGAIN as i64) as u64));
    assert_eq!(attrs(&ops).len(), MAX_RETRIES as usize + 1);
    assert!(
        discards(&ops).is_empty(),
        "nothing discarded after a failure"
    );

    let mut ops = RecordingOps {
        attr_errors: [libc::EFAULT].into(),
        ..Default::default()
    };
    let e = psc().map_gpa_range(&mut ops, 0x3000, 1, 0).unwrap_err();
    assert_eq!(e.errno(), libc::EFAULT);
    assert!(e.to_string().contains("KVM_SET_MEMORY_ATTRIBUTES"), "{e}");
    assert_eq!(attrs(&ops).len(), 1, "other errors are not retried");
}

#[test]
fn a_failed_discard_is_reported_after_the_attribute_change() {
    let mut ops = RecordingOps {
        discard_errors: [libc::EOPNOTSUPP].into(),
        ..Default::default()
    };
    let e = psc().map_gpa_range(&mut ops, 0x3000, 1, 0).unwrap_err();
    assert_eq!(e.errno(), libc::EOPNOTSUPP);
    assert!(e.to_string().contains("PUNCH_HOLE"), "{e}");
    assert_eq!(
        ops.names(),
        ["KVM_SET_MEMORY_ATTRIBUTES", "FALLOCATE_PUNCH_HOLE"]
    );

    let mut ops = RecordingOps {
        discard_errors: [libc::ENOMEM].into(),
        ..Default::default()
    };
    let ret = psc().on_hypercall(&mut ops, 12, &[0x3000, 1, KVM_MAP_GPA_RANGE_ENCRYPTED]);
    assert_eq!(ret, Some((-libc::ENOMEM as i64) as u64));
}

#[test]
fn memory_faults_convert_to_the_access_kind() {
    let mut ops = RecordingOps::default();
    let c = psc()
        .on_memory_fault(&mut ops, KVM_MEMORY_EXIT_FLAG_PRIVATE, 0x1000, 0x1000)
        .unwrap();
    assert!(c.private);
    let c = psc().on_memory_fault(&mut ops, 0, 0x1000, 0x1000).unwrap();
    assert!(!c.private);
    assert_eq!(
        attrs(&ops),
        [
            (0x1000, 0x1000, KVM_MEMORY_ATTRIBUTE_PRIVATE),
            (0x1000, 0x1000, 0)
        ]
    );
    let names: Vec<_> = discards(&ops).into_iter().map(|d| d.0).collect();
    assert_eq!(names, ["MADV_DONTNEED", "FALLOCATE_PUNCH_HOLE"]);

    let mut ops = RecordingOps::default();
    for (gpa, size) in [
        (3 * G, 0x1000),
        (0x1800, 0x1000),
        (0x1000, 0),
        (!0xfff, 0x2000),
    ] {
        let e = psc()
            .on_memory_fault(&mut ops, KVM_MEMORY_EXIT_FLAG_PRIVATE, gpa, size)
            .unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL, "{gpa:#x}+{size:#x}");
        assert!(e.to_string().contains("KVM_EXIT_MEMORY_FAULT"), "{e}");
    }
    assert!(ops.calls.is_empty());
}

#[test]
fn hostile_arguments_never_reach_outside_guest_ram() {
    // A fixed pseudo-random sweep: every accepted range lies inside one of the regions and
    // every discard stays inside that region's mapping.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let p = psc();
    for i in 0..20_000 {
        let gpa = match i % 3 {
            0 => next(),
            1 => (next() % (6 * G)) & !0xfff,
            _ => next() % (6 * G),
        };
        let npages = if i % 2 == 0 { next() } else { next() % 0x80000 };
        let mut ops = RecordingOps::default();
        let ret = p
            .on_hypercall(&mut ops, 12, &[gpa, npages, next()])
            .unwrap();
        if ret != 0 {
            assert!(ops.calls.is_empty());
            continue;
        }
        let end = gpa + npages * 4096;
        assert!(
            end <= 2 * G || (gpa >= 4 * G && end <= 5 * G),
            "{gpa:#x}+{npages:#x}"
        );
        for (call, _, a, len) in discards(&ops) {
            let (lo, hi) = match call {
                "MADV_DONTNEED" if a >= HIGH_UA => (HIGH_UA, HIGH_UA + G),
                "MADV_DONTNEED" => (LOW_UA, LOW_UA + 2 * G),
                _ => (0, 3 * G),
            };
            assert!(a >= lo && a + len <= hi, "{call} {a:#x}+{len:#x}");
        }
    }
}

#[test]
fn sev_term_carries_the_ghcb_reason() {
    // MSR protocol: code 0x100, reason set 1 (Linux) in 15:12, reason code 3 in 23:16.
    let msr = 0x100 | (1 << 12) | (3 << 16);
    let t = sev_termination(KVM_SYSTEM_EVENT_SEV_TERM, &[msr]).unwrap();
    assert_eq!(t.reason, Some(TermReason { set: 1, code: 3 }));
    assert_eq!(t.ghcb_msr, msr);
    assert!(t.to_string().contains("reason set 1 code 0x3"), "{t}");

    // Full GHCB protocol: data[0] is the GHCB GPA; the reason is not in the exit.
    let t = sev_termination(KVM_SYSTEM_EVENT_SEV_TERM, &[0x8_1234_5000]).unwrap();
    assert_eq!(t.reason, None);
    assert!(t.to_string().contains("0x812345000"), "{t}");

    let t = sev_termination(KVM_SYSTEM_EVENT_SEV_TERM, &[]).unwrap();
    assert_eq!((t.ghcb_msr, t.reason), (0, None));
    assert_eq!(sev_termination(KVM_SYSTEM_EVENT_TDX_FATAL, &[msr]), None);
    assert_eq!(sev_termination(1, &[msr]), None);
}
