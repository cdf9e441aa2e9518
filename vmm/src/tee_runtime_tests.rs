//! Tests of the run-time handler: the discard calls on a real memfd and a real anonymous
//! mapping (these syscalls work without SNP), their bounds checks, and the vCPU-loop API over
//! the recording fake.

use super::*;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;
use tee::fake::RecordingOps;
use tee::uapi::{KVM_MEMORY_EXIT_FLAG_PRIVATE, KVM_SYSTEM_EVENT_SEV_TERM};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

fn memfd() -> OwnedFd {
    // SAFETY: memfd_create with a NUL-terminated name; a non-negative result is a new fd.
    let fd = unsafe { libc::memfd_create(c"cvmm-test".as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

#[test]
fn punch_hole_zeroes_the_range_and_keeps_the_size() {
    let fd = memfd();
    let mut f = std::fs::File::from(fd.try_clone().unwrap());
    f.write_all(&[0xaa; 3 * 4096]).unwrap();
    let n = fd.as_raw_fd() as u32;
    punch_hole(std::slice::from_ref(&fd), n, 4096, 4096).unwrap();
    let mut back = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), 3 * 4096);
    assert!(back[..4096].iter().all(|&b| b == 0xaa));
    assert!(back[4096..8192].iter().all(|&b| b == 0));
    assert!(back[8192..].iter().all(|&b| b == 0xaa));

    let e = punch_hole(std::slice::from_ref(&fd), n + 1000, 0, 4096).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    let e = punch_hole(std::slice::from_ref(&fd), n, u64::MAX, 4096).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
}

#[test]
fn discard_shared_drops_only_guest_pages_inside_the_mapping() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 * 4096)]).unwrap();
    mem.write_slice(&[0x55; 4 * 4096], GuestAddress(0)).unwrap();
    let region = mem.iter().next().unwrap();
    let host = region.get_host_address(MemoryRegionAddress(0)).unwrap() as u64;
    let shared = [(host, 4 * 4096)];
    discard_shared(&shared, host + 4096, 2 * 4096).unwrap();
    let mut back = [0u8; 4 * 4096];
    mem.read_slice(&mut back, GuestAddress(0)).unwrap();
    assert!(back[..4096].iter().all(|&b| b == 0x55));
    assert!(back[4096..3 * 4096].iter().all(|&b| b == 0));
    assert!(back[3 * 4096..].iter().all(|&b| b == 0x55));

    for (addr, len) in [
        (host + 3 * 4096, 2 * 4096),
        (host - 4096, 4096),
        (u64::MAX - 4095, 8192),
        (host, 0),
    ] {
        let e = discard_shared(&shared, addr, len).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EFAULT), "{addr:#x}+{len:#x}");
    }
    mem.read_slice(&mut back, GuestAddress(0)).unwrap();
    assert!(
        back[..4096].iter().all(|&b| b == 0x55),
        "refused calls touch nothing"
    );
}

fn runtime() -> TeeRuntime<RecordingOps> {
    let ram = [RamRegion {
        slot: 0,
        gpa: 0,
        size: 1 << 30,
        userspace_addr: 0x7f00_0000_0000,
    }];
    TeeRuntime::new(RecordingOps::default(), PageStateChanges::new(&ram, 20))
}

#[test]
fn vcpu_loop_api_answers_hypercalls_faults_and_termination() {
    let rt = runtime();
    assert_eq!(rt.on_hypercall(12, &[0x1000, 2, 1 << 4, 0, 0, 0]), Some(0));
    assert_eq!(rt.on_hypercall(9, &[0x1000, 2, 0]), None);
    let einval = (-libc::EINVAL as i64) as u64;
    assert_eq!(rt.on_hypercall(12, &[0x1000, 0, 0]), Some(einval));
    rt.on_memory_fault(KVM_MEMORY_EXIT_FLAG_PRIVATE, 0x4000, 0x1000)
        .unwrap();
    assert_eq!(rt.conversions(), 2);
    let e = rt
        .on_memory_fault(KVM_MEMORY_EXIT_FLAG_PRIVATE, 2 << 30, 0x1000)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("KVM_EXIT_MEMORY_FAULT") && e.contains("0x80000000"),
        "{e}"
    );
    assert_eq!(rt.conversions(), 2);
    let names = rt.lock().names();
    assert_eq!(
        names,
        [
            "KVM_SET_MEMORY_ATTRIBUTES",
            "MADV_DONTNEED",
            "KVM_SET_MEMORY_ATTRIBUTES",
            "MADV_DONTNEED"
        ]
    );

    let msr = 0x100 | (3 << 16);
    let t = rt
        .on_system_event(KVM_SYSTEM_EVENT_SEV_TERM, &[msr])
        .unwrap();
    assert_eq!(t.reason.map(|r| (r.set, r.code)), Some((0, 3)));
    assert!(rt.on_system_event(5, &[0]).is_none());
}
