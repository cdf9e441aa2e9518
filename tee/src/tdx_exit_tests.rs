//! Tests of the `KVM_EXIT_TDX` answers, the event-notify MSI, TDX fatal-error decoding and a
//! GetQuote end to end through a fake QGS.

use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::time::Duration;

use super::*;
use crate::quote::{QgsAddr, GET_QUOTE_SUCCESS};
use crate::tdx_testutil::{fake_qgs_serve, fake_quote, qgs_response, VecMem};

fn caps() -> TdxCapabilities {
    TdxCapabilities {
        supported_attrs: 0,
        supported_xfam: 0,
        kernel_tdvmcallinfo_1_r11: 1 << 5,
        user_tdvmcallinfo_1_r11: (1 << 1) | (1 << 0),
        kernel_tdvmcallinfo_1_r12: 1 << 3,
        user_tdvmcallinfo_1_r12: 1 << 4,
        cpuid: vec![],
    }
}

fn exits(qgs: Option<QgsAddr>, notifier: Notifier) -> TdxExits {
    TdxExits::new(
        &caps(),
        QuoteService::new(qgs, Duration::from_secs(30)),
        notifier,
    )
}

fn run(nr: u64, args: [u64; 5]) -> KvmRunTdx {
    KvmRunTdx {
        flags: 0,
        nr,
        ret: 0xdead,
        args,
    }
}

fn mem() -> Arc<dyn SharedMemory> {
    Arc::new(VecMem::new(0, 0x1000))
}

#[test]
fn exits_decode_by_leaf() {
    assert_eq!(
        decode(&run(0x10002, [0x1000, 0x2000, 0, 0, 0])),
        TdxVmcall::GetQuote {
            gpa: 0x1000,
            size: 0x2000
        }
    );
    assert_eq!(
        decode(&run(0x10004, [0x40, 0, 0, 0, 0])),
        TdxVmcall::SetupEventNotify { vector: 0x40 }
    );
    assert_eq!(
        decode(&run(0x10000, [1, 0, 0, 0, 0])),
        TdxVmcall::GetTdVmCallInfo { leaf: 1 }
    );
    assert_eq!(
        decode(&run(0x10005, [0; 5])),
        TdxVmcall::Unknown { nr: 0x10005 }
    );
}

#[test]
fn unknown_subcalls_get_subfunc_unsupported() {
    let x = exits(None, Arc::new(|_| ()));
    let mut r = run(0x10007, [1, 2, 3, 4, 5]);
    x.handle(&mut r, 0, &mem());
    assert_eq!(r.ret, 0x8000_0000_0000_0003);
    assert_eq!(r.args, [1, 2, 3, 4, 5]);
}

#[test]
fn get_tdvmcall_info_reports_userspace_and_kernel_bits() {
    let x = exits(None, Arc::new(|_| ()));
    let mut r = run(0x10000, [1, 9, 9, 9, 9]);
    x.handle(&mut r, 0, &mem());
    assert_eq!(r.ret, TDVMCALL_STATUS_SUCCESS);
    // R11: SetupEventNotify (bit 1) from userspace, bit 5 from KVM; R12: KVM's only.
    assert_eq!(r.args, [1, (1 << 1) | (1 << 5), 1 << 3, 0, 0]);
    let mut r = run(0x10000, [2, 0, 0, 0, 0]);
    x.handle(&mut r, 0, &mem());
    assert_eq!(r.ret, TDVMCALL_STATUS_INVALID_OPERAND);
}

#[test]
fn setup_event_notify_accepts_vectors_32_to_255() {
    let x = exits(None, Arc::new(|_| ()));
    for bad in [0, 31, 256, u64::MAX] {
        let mut r = run(0x10004, [bad, 0, 0, 0, 0]);
        x.handle(&mut r, 3, &mem());
        assert_eq!(r.ret, TDVMCALL_STATUS_INVALID_OPERAND, "vector {bad}");
    }
    assert_eq!(x.event_notify(), None);
    let mut r = run(0x10004, [0xf3, 0, 0, 0, 0]);
    x.handle(&mut r, 0x1_02, &mem());
    assert_eq!(r.ret, TDVMCALL_STATUS_SUCCESS);
    let n = x.event_notify().unwrap();
    assert_eq!(
        n,
        EventNotify {
            vector: 0xf3,
            apic_id: 0x102
        }
    );
    assert_eq!(n.msi(), (0xfee0_2000 | (0x100u64 << 32), 0xf3));
}

#[test]
fn get_quote_end_to_end_injects_the_notify_vector() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qgs.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (got_tx, _got_rx) = mpsc::channel();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        fake_qgs_serve(s, got_tx, None, |r| qgs_response(&fake_quote(r)));
    });
    let (tx, rx) = mpsc::channel();
    let x = exits(
        Some(QgsAddr::Unix(path)),
        Arc::new(move |n| tx.send(n).unwrap()),
    );
    let guest = Arc::new(VecMem::new(0x10_0000, 0x2000));
    let mut hdr = [0u8; 24];
    hdr[0] = 1;
    hdr[16..20].copy_from_slice(&16u32.to_le_bytes());
    guest.write(0x10_0000, &hdr).unwrap();
    guest.write(0x10_0000 + 24, b"0123456789abcdef").unwrap();
    let m: Arc<dyn SharedMemory> = guest.clone();
    let mut r = run(0x10004, [0x40, 0, 0, 0, 0]);
    x.handle(&mut r, 1, &m);
    let mut r = run(0x10002, [0x10_0000, 0x2000, 0, 0, 0]);
    x.handle(&mut r, 0, &m);
    assert_eq!(r.ret, TDVMCALL_STATUS_SUCCESS);
    let notified = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(
        notified,
        Some(EventNotify {
            vector: 0x40,
            apic_id: 1
        })
    );
    let h = guest.bytes(0x10_0000, 24);
    assert_eq!(
        u64::from_le_bytes(h[8..16].try_into().unwrap()),
        GET_QUOTE_SUCCESS
    );
    let q = fake_quote(b"0123456789abcdef");
    assert_eq!(
        u32::from_le_bytes(h[20..24].try_into().unwrap()) as usize,
        q.len()
    );
    assert_eq!(guest.bytes(0x10_0000 + 24, q.len()), q);
    server.join().unwrap();
}

#[test]
fn fatal_error_message_and_gpa_are_decoded() {
    let mut data = [0u64; 16];
    data[12] = (1 << 63) | 0x1_0000; // error code, GPA valid
    data[13] = 0xabc000;
    data[1] = (1 << 14) | (1 << 15) | (1 << 3); // R14, R15, RBX carry the message
    data[14] = u64::from_le_bytes(*b"TD panic");
    data[15] = u64::from_le_bytes(*b": out of");
    data[3] = u64::from_le_bytes(*b" memory\0");
    let f = system_event(KVM_SYSTEM_EVENT_TDX_FATAL, &data).unwrap();
    assert_eq!(f.message, "TD panic: out of memory");
    assert_eq!(
        (f.error_code, f.gpa),
        ((1 << 63) | 0x1_0000, Some(0xabc000))
    );
    assert_eq!(system_event(KVM_SYSTEM_EVENT_SEV_TERM, &data), None);
    // Short or empty data never panics.
    let f = system_event(KVM_SYSTEM_EVENT_TDX_FATAL, &[]).unwrap();
    assert_eq!((f.error_code, f.message.as_str(), f.gpa), (0, "", None));
}
