//! Tests of the GetQuote path: QGS address parsing, the QGS message framing, forwarding to a
//! fake QGS over unix and tcp, and the guest-buffer protocol (statuses, in-flight marker,
//! quote written back) of [`QuoteService`].

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::thread;

use zerocopy::FromBytes;

use super::*;
use crate::tdx_testutil::{fake_qgs_serve, fake_quote, qgs_response, VecMem};

const T: Duration = Duration::from_secs(30);

#[test]
fn qgs_addresses_parse() {
    assert_eq!(QgsAddr::default(), QgsAddr::Vsock { cid: 2, port: 4050 });
    assert_eq!(
        "vsock:2:4050".parse::<QgsAddr>().unwrap(),
        QgsAddr::default()
    );
    assert_eq!(
        "vsock:4051".parse::<QgsAddr>().unwrap(),
        QgsAddr::Vsock { cid: 2, port: 4051 }
    );
    assert_eq!(
        "unix:/run/qgs.sock".parse::<QgsAddr>().unwrap(),
        QgsAddr::Unix("/run/qgs.sock".into())
    );
    assert_eq!(
        "tcp:127.0.0.1:4050".parse::<QgsAddr>().unwrap(),
        QgsAddr::Tcp("127.0.0.1:4050".into())
    );
    assert_eq!(
        "tcp:[::1]:9".parse::<QgsAddr>().unwrap().to_string(),
        "tcp:[::1]:9"
    );
    for bad in [
        "",
        "vsock:x:1",
        "tcp:host",
        "tcp::80",
        "tcp:h:99999",
        "unix:",
        "http://x",
    ] {
        let e = bad.parse::<QgsAddr>().unwrap_err().to_string();
        assert!(
            e.contains("QGS address") && e.contains(&format!("{bad:?}")),
            "{e}"
        );
    }
}

#[test]
fn request_framing_is_length_prefixed_qgs_message() {
    let m = encode_request(&[0xaa; 1024]);
    assert_eq!(&m[..4], &(24u32 + 1024).to_be_bytes());
    assert_eq!(&m[4..8], &[1, 0, 1, 0]);
    assert_eq!(&m[8..12], &0u32.to_le_bytes());
    assert_eq!(&m[12..16], &1048u32.to_le_bytes());
    assert_eq!(&m[20..24], &1024u32.to_le_bytes());
    assert_eq!(&m[24..28], &0u32.to_le_bytes());
    assert_eq!(m.len(), 4 + 24 + 1024);
}

#[test]
fn responses_are_checked() {
    let ok = qgs_response(b"quote!");
    assert_eq!(decode_response(&ok[4..]).unwrap(), b"quote!");
    let patch = |at: usize, v: u8| {
        let mut m = ok[4..].to_vec();
        m[at] = v;
        decode_response(&m).unwrap_err()
    };
    assert!(patch(0, 2).contains("version 2.1"));
    assert!(patch(4, 0).contains("message type 0"));
    assert!(patch(12, 5).contains("error code 0x5"));
    assert!(patch(20, 99).contains("sizes disagree"));
    assert!(patch(16, 1).contains("sizes disagree"));
    assert!(decode_response(&ok[4..20]).unwrap_err().contains("shorter"));
}

#[test]
fn quote_over_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qgs.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    let server = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        fake_qgs_serve(s, tx, None, |r| qgs_response(&fake_quote(r)));
    });
    let report: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
    let q = request_quote(&QgsAddr::Unix(path), &report, 8192, T).unwrap();
    assert_eq!(q, fake_quote(&report));
    assert_eq!(rx.recv().unwrap(), report);
    server.join().unwrap();
}

#[test]
fn quote_over_tcp() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = QgsAddr::Tcp(listener.local_addr().unwrap().to_string());
    let (tx, _rx) = mpsc::channel();
    let server = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        fake_qgs_serve(s, tx, None, |r| qgs_response(&fake_quote(r)));
    });
    assert_eq!(
        request_quote(&addr, b"rep", 100, T).unwrap(),
        fake_quote(b"rep")
    );
    server.join().unwrap();
}

#[test]
fn unreachable_qgs_is_unavailable_and_oversized_quote_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = request_quote(&QgsAddr::Unix(dir.path().join("none")), b"r", 100, T).unwrap_err();
    assert_eq!(e.status(), GET_QUOTE_QGS_UNAVAILABLE);
    assert!(e.to_string().contains("none"), "{e}");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = QgsAddr::Tcp(listener.local_addr().unwrap().to_string());
    let (tx, _rx) = mpsc::channel();
    let server = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        fake_qgs_serve(s, tx, None, |_| qgs_response(&[0; 200]));
    });
    let e = request_quote(&addr, b"r", 100, T).unwrap_err();
    assert_eq!(e.status(), GET_QUOTE_ERROR);
    assert!(e.to_string().contains("length prefix 224"), "{e}");
    server.join().unwrap();
}

const BUF: u64 = 0x7000_0000;

fn guest_buffer(mem: &VecMem, version: u64, report: &[u8]) {
    let h = TdxGetQuoteHeader {
        structure_version: version,
        error_code: 0,
        in_len: report.len() as u32,
        out_len: 0,
    };
    mem.write(BUF, h.as_bytes()).unwrap();
    mem.write(BUF + 24, report).unwrap();
}

fn header(mem: &VecMem) -> TdxGetQuoteHeader {
    TdxGetQuoteHeader::read_from_bytes(&mem.bytes(BUF, 24)).unwrap()
}

#[test]
fn bad_requests_get_the_right_tdvmcall_status() {
    let mem: Arc<dyn SharedMemory> = Arc::new(VecMem::new(BUF, 0x4000));
    let svc = QuoteService::new(None, T);
    let call = |gpa, size| svc.get_quote(mem.clone(), gpa, size, Box::new(|| ()));
    assert_eq!(call(BUF, 0), TDVMCALL_STATUS_INVALID_OPERAND);
    assert_eq!(call(BUF + 8, 0x1000), TDVMCALL_STATUS_ALIGN_ERROR);
    assert_eq!(call(BUF, 0x1800), TDVMCALL_STATUS_ALIGN_ERROR);
    assert_eq!(call(BUF, 0x40000), TDVMCALL_STATUS_INVALID_OPERAND);
    assert_eq!(call(BUF + 0x10000, 0x1000), TDVMCALL_STATUS_INVALID_OPERAND); // unreadable
    let vm = VecMem::new(BUF, 0x1000);
    guest_buffer(&vm, 2, &[1; 16]);
    let vm: Arc<dyn SharedMemory> = Arc::new(vm);
    assert_eq!(
        svc.get_quote(vm.clone(), BUF, 0x1000, Box::new(|| ())),
        TDVMCALL_STATUS_INVALID_OPERAND
    );
    assert_eq!(
        parse_get_quote(BUF, &{
            let mut b = vec![0u8; 0x1000];
            b[0] = 1;
            b[16..20].copy_from_slice(&0x1000u32.to_le_bytes()); // in_len > capacity
            b
        }),
        Err(TDVMCALL_STATUS_INVALID_OPERAND)
    );
}

#[test]
fn without_a_qgs_the_buffer_says_unavailable() {
    let mem = Arc::new(VecMem::new(BUF, 0x1000));
    guest_buffer(&mem, 1, &[9; 64]);
    let svc = QuoteService::new(None, T);
    let ret = svc.get_quote(
        mem.clone(),
        BUF,
        0x1000,
        Box::new(|| panic!("no completion")),
    );
    assert_eq!(ret, TDVMCALL_STATUS_SUCCESS);
    assert_eq!(header(&mem).error_code, GET_QUOTE_QGS_UNAVAILABLE);
}

#[test]
fn quote_is_written_back_after_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qgs.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (got_tx, got_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let server = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        fake_qgs_serve(s, got_tx, Some(release_rx), |r| {
            qgs_response(&fake_quote(r))
        });
    });
    let mem = Arc::new(VecMem::new(BUF, 0x2000));
    let report: Vec<u8> = (0..1024u32).map(|i| (i * 3) as u8).collect();
    guest_buffer(&mem, 1, &report);
    let svc = QuoteService::new(Some(QgsAddr::Unix(path)), T);
    let (done_tx, done_rx) = mpsc::channel();
    let ret = svc.get_quote(
        mem.clone(),
        BUF,
        0x2000,
        Box::new(move || done_tx.send(()).unwrap()),
    );
    assert_eq!(ret, TDVMCALL_STATUS_SUCCESS);
    assert_eq!(got_rx.recv().unwrap(), report);
    // The QGS has the report but has not answered: the guest sees IN_FLIGHT.
    assert_eq!(header(&mem).error_code, GET_QUOTE_IN_FLIGHT);
    release_tx.send(()).unwrap();
    done_rx.recv_timeout(T).unwrap();
    let h = header(&mem);
    let quote = fake_quote(&report);
    assert_eq!(
        (h.error_code, h.out_len as usize, h.in_len),
        (GET_QUOTE_SUCCESS, quote.len(), 1024)
    );
    assert_eq!(mem.bytes(BUF + 24, quote.len()), quote);
    server.join().unwrap();
}

#[test]
fn qgs_that_hangs_up_gives_error_status() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = QgsAddr::Tcp(listener.local_addr().unwrap().to_string());
    let server = thread::spawn(move || drop(listener.accept().unwrap()));
    let mem = Arc::new(VecMem::new(BUF, 0x1000));
    guest_buffer(&mem, 1, &[5; 32]);
    let (done_tx, done_rx) = mpsc::channel();
    let svc = QuoteService::new(Some(addr), T);
    let ret = svc.get_quote(
        mem.clone(),
        BUF,
        0x1000,
        Box::new(move || done_tx.send(()).unwrap()),
    );
    assert_eq!(ret, TDVMCALL_STATUS_SUCCESS);
    done_rx.recv_timeout(T).unwrap();
    assert_eq!(
        (header(&mem).error_code, header(&mem).out_len),
        (GET_QUOTE_ERROR, 0)
    );
    server.join().unwrap();
}

#[test]
fn workers_start_through_the_given_spawner() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qgs.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (tx, _rx) = mpsc::channel();
    let server = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        fake_qgs_serve(s, tx, None, |r| qgs_response(&fake_quote(r)));
    });
    let names = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = names.clone();
    let spawner: Spawner = Arc::new(move |name, body| {
        seen.lock().unwrap().push(name.to_string());
        thread::spawn(body);
        Ok(())
    });
    let svc = QuoteService::new(Some(QgsAddr::Unix(path)), T).with_spawner(spawner);
    let mem = Arc::new(VecMem::new(BUF, 0x1000));
    guest_buffer(&mem, 1, &[7; 48]);
    let (done_tx, done_rx) = mpsc::channel();
    let ret = svc.get_quote(
        mem.clone(),
        BUF,
        0x1000,
        Box::new(move || done_tx.send(()).unwrap()),
    );
    assert_eq!(ret, TDVMCALL_STATUS_SUCCESS);
    done_rx.recv_timeout(T).unwrap();
    assert_eq!(*names.lock().unwrap(), ["tdx-quote"]);
    assert_eq!(header(&mem).error_code, GET_QUOTE_SUCCESS);
    server.join().unwrap();

    // A spawner that cannot start the worker: the guest is told to retry, nothing stays in
    // flight (the next request gets the same answer, not a full queue).
    let failing: Spawner = Arc::new(|_, _| Err(io::Error::from_raw_os_error(libc::EAGAIN)));
    let svc = QuoteService::new(Some(QgsAddr::Unix(dir.path().join("x"))), T).with_spawner(failing);
    for _ in 0..(MAX_QUOTES_IN_FLIGHT + 2) {
        let ret = svc.get_quote(mem.clone(), BUF, 0x1000, Box::new(|| ()));
        assert_eq!(ret, TDVMCALL_STATUS_RETRY);
    }
    assert!(format!("{svc:?}").contains("in_flight: 0"), "{svc:?}");
}

/// A fake QGS that accepts and reads the request, then either stays silent or answers one
/// byte at a time (a length prefix announcing a 4 KiB quote, then a byte every 20 ms: about
/// 80 s in all). Either way the guest must get GET_QUOTE_ERROR once the deadline has passed.
#[test]
fn silent_or_trickling_qgs_ends_in_an_error_status_by_the_deadline() {
    const DEADLINE: Duration = Duration::from_millis(300);
    for trickle in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qgs.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (got_tx, got_rx) = mpsc::channel();
        let server = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut len = [0u8; 4];
            s.read_exact(&mut len).unwrap();
            let mut msg = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut msg).unwrap();
            got_tx.send(()).unwrap();
            if trickle {
                let mut answer = ((QGS_MSG_LEN + 4096) as u32).to_be_bytes().to_vec();
                answer.resize(4 + QGS_MSG_LEN + 4096, 0x5a);
                for b in answer {
                    if s.write_all(&[b]).is_err() {
                        return; // the client gave up
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            } else {
                // Silent until the client hangs up.
                let _ = s.read(&mut [0u8; 1]);
            }
        });
        let mem = Arc::new(VecMem::new(BUF, 0x2000));
        guest_buffer(&mem, 1, &[3; 64]);
        let svc = QuoteService::new(Some(QgsAddr::Unix(path)), DEADLINE);
        let (done_tx, done_rx) = mpsc::channel();
        let t0 = std::time::Instant::now();
        let ret = svc.get_quote(
            mem.clone(),
            BUF,
            0x2000,
            Box::new(move || done_tx.send(()).unwrap()),
        );
        // The vCPU side returns at once; the worker waits for the QGS.
        assert_eq!(ret, TDVMCALL_STATUS_SUCCESS);
        got_rx.recv_timeout(T).unwrap();
        done_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("trickle={trickle}: no completion within 5 s"));
        let took = t0.elapsed();
        assert!(
            took >= DEADLINE && took < DEADLINE * 4,
            "trickle={trickle}: completed after {took:?}"
        );
        assert_eq!(
            (header(&mem).error_code, header(&mem).out_len),
            (GET_QUOTE_ERROR, 0),
            "trickle={trickle}"
        );
        assert!(format!("{svc:?}").contains("in_flight: 0"), "{svc:?}");
        server.join().unwrap();
    }
}

#[test]
fn the_deadline_error_names_the_qgs_and_the_deadline() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = QgsAddr::Tcp(listener.local_addr().unwrap().to_string());
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        // Half a length prefix, then nothing.
        s.write_all(&[0, 0]).unwrap();
        let _ = s.read(&mut [0u8; 4096]);
        let _ = s.read(&mut [0u8; 1]);
    });
    let e = request_quote(&addr, b"report", 100, Duration::from_millis(100)).unwrap_err();
    assert!(matches!(e, QuoteError::Timeout { .. }), "{e:?}");
    assert_eq!(e.status(), GET_QUOTE_ERROR);
    let text = e.to_string();
    assert!(
        text.contains(&addr.to_string()) && text.contains("100ms"),
        "{text}"
    );
    server.join().unwrap();
}

/// A QGS whose listen queue is full (backlog 0, one connection already waiting, nothing
/// accepted): a blocking connect would wait forever. The connect is under the deadline too,
/// so the request ends in a timeout naming the QGS.
#[test]
fn a_qgs_that_accepts_nothing_times_out_at_the_connect() {
    use socket2::{Domain, SockAddr, Socket, Type};
    const DEADLINE: Duration = Duration::from_millis(300);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qgs.sock");
    let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    listener.bind(&SockAddr::unix(&path).unwrap()).unwrap();
    listener.listen(0).unwrap();
    let _queued = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let addr = QgsAddr::Unix(path);
    let (tx, rx) = mpsc::channel();
    let t0 = std::time::Instant::now();
    thread::spawn(move || {
        let _ = tx.send(request_quote(&addr, b"report", 100, DEADLINE));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the connect to a QGS that accepts nothing is not bounded");
    let took = t0.elapsed();
    let e = r.unwrap_err();
    assert!(matches!(e, QuoteError::Timeout { .. }), "{e:?}");
    assert_eq!(e.status(), GET_QUOTE_ERROR);
    assert!(e.to_string().contains("qgs.sock"), "{e}");
    assert!(took >= DEADLINE, "gave up after {took:?}");
    drop(listener);
}
