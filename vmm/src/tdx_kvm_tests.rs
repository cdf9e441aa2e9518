//! Tests of the TDX boot and run-time pieces that need no TDX host: the `kvm_run.tdx` read and
//! write-back against a synthetic `kvm_run`, a GetQuote round trip through the vCPU-side
//! handler to a fake QGS on a unix socket (with the completion MSI), fatal errors, XFAM from
//! CPUID, the firmware window, the launch's timeline phases, and the TD report values of a
//! VmSpec reaching `KVM_TDX_INIT_VM` through the recording fake.

use super::*;
use crate::tee_kvm::runtime::TeeRuntime;
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::sync::mpsc;
use std::sync::Mutex;
use tee::fake::RecordingOps;
use tee::quote::{GET_QUOTE_IN_FLIGHT, GET_QUOTE_SUCCESS};
use tee::runtime::PageStateChanges;
use tee::uapi::{
    TdxGetQuoteHeader, KVM_SYSTEM_EVENT_TDX_FATAL, TDVMCALL_GET_QUOTE,
    TDVMCALL_GET_TD_VM_CALL_INFO, TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT,
    TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED, TDVMCALL_STATUS_SUCCESS,
};
use vm_memory::GuestMemoryMmap;
use zerocopy::{FromBytes, IntoBytes};

/// A `kvm_run` as KVM leaves it after a `KVM_EXIT_TDX`: the exit reason, and the TDX member
/// written byte by byte at offset 32 of the struct (through the union's raw `padding` view, so
/// the layout under test is the documented one, not the helper's).
fn synthetic_run(nr: u64, args: [u64; 5]) -> kvm_run {
    let mut run = kvm_run {
        exit_reason: KVM_EXIT_TDX,
        ..Default::default()
    };
    let mut member = [0u8; 256];
    let words = [0u64, nr, 0xdead_beef]
        .into_iter()
        .chain(args)
        .collect::<Vec<u64>>();
    for (i, w) in words.iter().enumerate() {
        member[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    run.__bindgen_anon_1.padding = member.map(|b| b as std::os::raw::c_char);
    run
}

/// The u64 words of the exit union as the kernel would read them back.
fn union_words(run: &kvm_run) -> [u64; 8] {
    // SAFETY: `padding` is the union's raw 256-byte view; every byte pattern is a valid
    // c_char array, so reading it is sound whatever member was written.
    let raw = unsafe { run.__bindgen_anon_1.padding };
    let mut w = [0u64; 8];
    for (i, v) in w.iter_mut().enumerate() {
        let b: Vec<u8> = raw[i * 8..i * 8 + 8].iter().map(|&c| c as u8).collect();
        *v = u64::from_le_bytes(b.try_into().unwrap());
    }
    w
}

fn caps() -> TdxCapabilities {
    TdxCapabilities {
        supported_attrs: TDX_ATTR_SEPT_VE_DISABLE,
        supported_xfam: 0x6_02ff,
        kernel_tdvmcallinfo_1_r11: 0,
        user_tdvmcallinfo_1_r11: 1 << 1,
        kernel_tdvmcallinfo_1_r12: 0,
        user_tdvmcallinfo_1_r12: 0,
        cpuid: vec![],
    }
}

#[test]
fn tdx_exit_is_read_at_offset_32_and_the_answer_written_back() {
    let mut run = synthetic_run(TDVMCALL_GET_TD_VM_CALL_INFO, [1, 0, 0, 0, 0]);
    let seen = answer_tdx_exit(&mut run, |t| {
        assert_eq!(
            (t.flags, t.nr, t.ret),
            (0, TDVMCALL_GET_TD_VM_CALL_INFO, 0xdead_beef)
        );
        assert_eq!(t.args, [1, 0, 0, 0, 0]);
        t.ret = TDVMCALL_STATUS_SUCCESS;
        t.args[1..5].copy_from_slice(&[0x11, 0x22, 0x33, 0x44]);
    })
    .unwrap();
    assert_eq!(seen.ret, TDVMCALL_STATUS_SUCCESS);
    assert_eq!(
        union_words(&run),
        [
            0,
            TDVMCALL_GET_TD_VM_CALL_INFO,
            0,
            1,
            0x11,
            0x22,
            0x33,
            0x44
        ]
    );
    // The rest of kvm_run is untouched.
    assert_eq!(run.exit_reason, KVM_EXIT_TDX);
    assert_eq!((run.cr8, run.apic_base, run.kvm_valid_regs), (0, 0, 0));
}

#[test]
fn flags_and_nr_are_never_written_back() {
    let mut run = synthetic_run(0x1234, [0; 5]);
    answer_tdx_exit(&mut run, |t| {
        t.flags = 0xff;
        t.nr = 0;
        t.ret = 7;
    })
    .unwrap();
    assert_eq!(union_words(&run)[..3], [0, 0x1234, 7]);
}

#[test]
fn another_exit_reason_is_refused_untouched() {
    let mut run = synthetic_run(TDVMCALL_GET_QUOTE, [0x1000, 0x1000, 0, 0, 0]);
    run.exit_reason = 2; // KVM_EXIT_IO
    let before = union_words(&run);
    let e = answer_tdx_exit(&mut run, |_| panic!("must not be called")).unwrap_err();
    assert!(e.contains("exit reason 2"), "{e}");
    assert_eq!(union_words(&run), before);
}

/// Guest RAM of 1 MiB at 0 with a GetQuote buffer at `BUF`.
const BUF: u64 = 0x4_0000;

fn guest() -> GuestMem {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

fn header(mem: &GuestMem) -> TdxGetQuoteHeader {
    let mut b = [0u8; 24];
    mem.read_slice(&mut b, GuestAddress(BUF)).unwrap();
    TdxGetQuoteHeader::read_from_bytes(&b).unwrap()
}

/// A fake QGS for one request: checks the GET_QUOTE_REQ framing, reports the TDREPORT it got
/// and answers GET_QUOTE_RESP with the report reversed after "Q:".
fn fake_qgs(listener: UnixListener, got: mpsc::Sender<Vec<u8>>) {
    let (mut s, _) = listener.accept().unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut msg = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut msg).unwrap();
    let le = |at: usize| u32::from_le_bytes(msg[at..at + 4].try_into().unwrap());
    assert_eq!(&msg[..4], &[1, 0, 1, 0], "version 1.1");
    assert_eq!(le(4), 0, "GET_QUOTE_REQ");
    assert_eq!(le(8) as usize, msg.len());
    assert_eq!(le(16) as usize, msg.len() - 24, "report size");
    let report = msg[24..].to_vec();
    let mut quote = b"Q:".to_vec();
    quote.extend(report.iter().rev());
    got.send(report).unwrap();
    let size = 24 + quote.len() as u32;
    let mut resp = size.to_be_bytes().to_vec();
    resp.extend_from_slice(&[1, 0, 1, 0]);
    for v in [1u32, size, 0, 0, quote.len() as u32] {
        resp.extend_from_slice(&v.to_le_bytes());
    }
    resp.extend_from_slice(&quote);
    s.write_all(&resp).unwrap();
}

fn runtime_for(mem: &GuestMem, qgs: QgsAddr, notified: Notifier) -> TeeRuntime<RecordingOps> {
    let ram = [RamRegion {
        slot: 0,
        gpa: 0,
        size: 1 << 20,
        userspace_addr: 0x7f00_0000_0000,
    }];
    let tdx = TdxRuntime::new(
        &caps(),
        QuoteService::new(Some(qgs), Duration::from_secs(30)),
        Arc::new(GuestShared(mem.clone())),
        notified,
    );
    TeeRuntime::new(RecordingOps::default(), PageStateChanges::new(&ram, 20)).with_tdx(tdx)
}

#[test]
fn get_quote_round_trip_through_the_vcpu_side_handler() {
    let dir = std::env::temp_dir().join(format!("cvmm-qgs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("qgs.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let (got_tx, got_rx) = mpsc::channel();
    let server = std::thread::spawn(move || fake_qgs(listener, got_tx));

    let mem = guest();
    let (note_tx, note_rx) = mpsc::channel();
    let note_tx = Mutex::new(note_tx);
    let notifier: Notifier = Arc::new(move |n| {
        let _ = note_tx.lock().unwrap().send(n);
    });
    let rt = runtime_for(&mem, QgsAddr::Unix(path.clone()), notifier);
    assert!(rt.is_tdx());

    // vCPU 1 registers vector 0x52 for completions.
    let mut run = synthetic_run(TDVMCALL_SETUP_EVENT_NOTIFY_INTERRUPT, [0x52, 0, 0, 0, 0]);
    let call = rt.on_tdx_exit(&mut run, 1).unwrap();
    assert_eq!(call, TdxVmcall::SetupEventNotify { vector: 0x52 });
    assert_eq!(union_words(&run)[2], TDVMCALL_STATUS_SUCCESS);

    // The guest's shared buffer: header (version 1, in_len) and a 1 KiB TDREPORT.
    let report: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    let h = TdxGetQuoteHeader {
        structure_version: 1,
        error_code: 0,
        in_len: report.len() as u32,
        out_len: 0,
    };
    mem.write_slice(h.as_bytes(), GuestAddress(BUF)).unwrap();
    mem.write_slice(&report, GuestAddress(BUF + 24)).unwrap();
    let mut run = synthetic_run(TDVMCALL_GET_QUOTE, [BUF, 0x2000, 0, 0, 0]);
    let call = rt.on_tdx_exit(&mut run, 0).unwrap();
    assert_eq!(
        call,
        TdxVmcall::GetQuote {
            gpa: BUF,
            size: 0x2000
        }
    );
    assert_eq!(union_words(&run)[2], TDVMCALL_STATUS_SUCCESS, "queued");

    assert_eq!(
        got_rx.recv_timeout(Duration::from_secs(30)).unwrap(),
        report
    );
    let n = note_rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("the registered notify interrupt");
    assert_eq!((n.vector, n.apic_id), (0x52, 1));
    assert_eq!(n.msi(), (0xfee0_1000, 0x52));
    let h = header(&mem);
    let mut quote = b"Q:".to_vec();
    quote.extend(report.iter().rev());
    assert_ne!(h.error_code, GET_QUOTE_IN_FLIGHT);
    assert_eq!(
        (h.error_code, h.out_len as usize, h.in_len),
        (GET_QUOTE_SUCCESS, quote.len(), 1024)
    );
    let mut back = vec![0u8; quote.len()];
    mem.read_slice(&mut back, GuestAddress(BUF + 24)).unwrap();
    assert_eq!(back, quote);
    server.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_sub_calls_get_subfunc_unsupported() {
    let mem = guest();
    let rt = runtime_for(&mem, QgsAddr::Unix("/nonexistent".into()), Arc::new(|_| ()));
    let mut run = synthetic_run(0x1_0005, [0; 5]);
    assert_eq!(
        rt.on_tdx_exit(&mut run, 0).unwrap(),
        TdxVmcall::Unknown { nr: 0x1_0005 }
    );
    assert_eq!(union_words(&run)[2], TDVMCALL_STATUS_SUBFUNC_UNSUPPORTED);
}

#[test]
fn tdx_exits_and_fatal_errors_need_a_td() {
    let ram = [RamRegion {
        slot: 0,
        gpa: 0,
        size: 1 << 20,
        userspace_addr: 0x7f00_0000_0000,
    }];
    let snp = TeeRuntime::new(RecordingOps::default(), PageStateChanges::new(&ram, 20));
    assert!(!snp.is_tdx());
    let mut run = synthetic_run(TDVMCALL_GET_TD_VM_CALL_INFO, [1, 0, 0, 0, 0]);
    let e = snp.on_tdx_exit(&mut run, 0).unwrap_err().to_string();
    assert!(e.contains("not a TD"), "{e}");
    assert_eq!(snp.on_tdx_fatal(KVM_SYSTEM_EVENT_TDX_FATAL, &[0; 16]), None);
}

#[test]
fn fatal_error_ends_the_vm_naming_the_guests_code() {
    let mem = guest();
    let rt = runtime_for(&mem, QgsAddr::Unix("/nonexistent".into()), Arc::new(|_| ()));
    // GPRs in x86 order: RCX (1) holds the register mask of the message, R12 (12) the code,
    // R13 (13) the GPA, R14 (14) and R15 (15) the first 16 message bytes.
    let mut data = [0u64; 16];
    data[12] = 0x8000_0000_0000_0042;
    data[13] = 0xdead_0000;
    data[1] = (1 << 14) | (1 << 15);
    data[14] = u64::from_le_bytes(*b"TDVF: ou");
    data[15] = u64::from_le_bytes(*b"t of mem");
    let f = rt.on_tdx_fatal(KVM_SYSTEM_EVENT_TDX_FATAL, &data).unwrap();
    let reason = fatal_reason(&f);
    assert!(reason.contains("error code 0x8000000000000042"), "{reason}");
    assert!(reason.contains("\"TDVF: out of mem\""), "{reason}");
    assert!(reason.contains("GPA 0xdead0000"), "{reason}");
    // Other system events are not fatal errors.
    assert_eq!(rt.on_tdx_fatal(1, &data), None);
    let plain = fatal_reason(&TdxFatal {
        error_code: 5,
        message: String::new(),
        gpa: None,
    });
    assert_eq!(plain, "the TD reported a fatal error, error code 0x5");
}

#[test]
fn xfam_comes_from_cpuid_leaf_0xd() {
    let entries = [
        kvm_bindings::kvm_cpuid_entry2 {
            function: 0xd,
            index: 0,
            eax: 0x2e7,
            edx: 0,
            ..Default::default()
        },
        kvm_bindings::kvm_cpuid_entry2 {
            function: 0xd,
            index: 1,
            eax: 0xf, // XSAVEOPT.. flags, not state components
            ecx: 0x1800,
            edx: 0,
            ..Default::default()
        },
        kvm_bindings::kvm_cpuid_entry2 {
            function: 0xd,
            index: 2,
            eax: 0x100,
            ..Default::default()
        },
    ];
    let c = CpuId::from_entries(&entries).unwrap();
    assert_eq!(xfam_from_cpuid(&c), 0x2e7 | 0x1800);
    let none = CpuId::from_entries(&[]).unwrap();
    assert_eq!(xfam_from_cpuid(&none), TDX_XFAM_REQUIRED);
}

fn ram(size: u64) -> Vec<RamRegion> {
    vec![RamRegion {
        slot: 0,
        gpa: 0,
        size,
        userspace_addr: 0x7f00_0000_0000,
    }]
}

#[test]
fn firmware_window_covers_what_ram_does_not() {
    let ovmf = std::path::Path::new("/usr/share/ovmf/OVMF.fd");
    if let Ok(image) = std::fs::read(ovmf) {
        let plan = TdxPlan::from_tdvf("OVMF.fd", &image).unwrap();
        // BFV and CFV: the top 2 MiB below 4 GiB; TD_HOB and TEMP_MEM sit in low RAM.
        assert_eq!(
            firmware_window(&plan, &ram(256 << 20)).unwrap(),
            Some((0xffe0_0000, 0x20_0000))
        );
    } else {
        println!("SKIPPED: OVMF firmware window: no {}", ovmf.display());
    }
    let region = |gpa: u64, pages: usize| tee::tdx_plan::TdxRegion {
        gpa,
        data: tee::plan::PageBuf::zeroed(pages),
        measure: false,
        origin: tee::tdx_plan::RegionOrigin::IgvmPage,
    };
    let plan = TdxPlan {
        regions: vec![
            region(0x1000, 2),
            region(0xfff0_0000, 1),
            region(0xffff_f000, 1),
        ],
        ..Default::default()
    };
    assert_eq!(
        firmware_window(&plan, &ram(1 << 20)).unwrap(),
        Some((0xfff0_0000, 0x10_0000))
    );
    let inside = TdxPlan {
        regions: vec![region(0x1000, 2)],
        ..Default::default()
    };
    assert_eq!(firmware_window(&inside, &ram(1 << 20)).unwrap(), None);
    // A range that straddles the end of RAM cannot get a window of its own.
    let straddle = TdxPlan {
        regions: vec![region(0xf_f000, 2)],
        ..Default::default()
    };
    let e = firmware_window(&straddle, &ram(1 << 20))
        .unwrap_err()
        .to_string();
    assert!(e.contains("0xff000..0x101000"), "{e}");
    let above = TdxPlan {
        regions: vec![region(1 << 32, 1)],
        ..Default::default()
    };
    assert!(firmware_window(&above, &ram(1 << 20)).is_err());
}

#[test]
fn quote_address_defaults_to_vsock_2_4050_and_bad_ones_are_named() {
    let mut spec = VmSpec::default();
    assert_eq!(
        quote_address(&spec).unwrap(),
        QgsAddr::Vsock { cid: 2, port: 4050 }
    );
    spec.tdx.quote_generation = Some("unix:/run/qgs.sock".into());
    assert_eq!(
        quote_address(&spec).unwrap(),
        QgsAddr::Unix("/run/qgs.sock".into())
    );
    spec.tdx.quote_generation = Some("vsock:two:4050".into());
    let e = quote_address(&spec).unwrap_err();
    assert!(e.is_input());
    assert!(e.to_string().contains("'vsock:two:4050'"), "{e}");
}

#[test]
fn launch_progress_becomes_timeline_phases_and_page_counts() {
    use tee::tdvf::TdvfSectionKind;
    use tee::tdx_plan::RegionOrigin;
    let tl = crate::timeline::Timeline::new();
    let (mut pages, mut measured) = (0, 0);
    for p in [
        TdxProgress::Started,
        TdxProgress::Region {
            gpa: 0xffe2_0000,
            pages: 480,
            measured: true,
            origin: RegionOrigin::Tdvf(TdvfSectionKind::Bfv),
            micros: 5000,
        },
        TdxProgress::Region {
            gpa: 0x80_9000,
            pages: 2,
            measured: false,
            origin: RegionOrigin::Tdvf(TdvfSectionKind::TdHob),
            micros: 30,
        },
        TdxProgress::Finished,
    ] {
        launch_phase(&tl, p, &mut pages, &mut measured);
    }
    let names: Vec<String> = tl.events().into_iter().map(|e| e.phase).collect();
    assert_eq!(
        names[1..],
        [
            "tee_launch_start",
            "tee_init_mem[0xffe20000+480p:Bfv:measured]",
            "tee_init_mem[0x809000+2p:TdHob]",
            "tee_launch_finish"
        ]
    );
    assert_eq!((pages, measured), (482, 480));
}

/// The spec's MRCONFIGID / MROWNER / MROWNERCONFIG become the launch settings and land in the
/// recorded `KVM_TDX_INIT_VM` at their uAPI offsets; unset ones are zero.
#[test]
fn td_report_values_of_the_spec_reach_init_vm() {
    use crate::spec::{TdReportValue, TdxSettings};
    let init_vm_of = |tdx: TdxSettings| -> Vec<u8> {
        let spec = VmSpec {
            tee: crate::spec::TeeMode::Tdx,
            vcpus: 2,
            memory_mib: 64,
            tdx,
            ..Default::default()
        };
        let cpuid = CpuId::from_entries(&[]).unwrap();
        let cfg = tdx_config(&spec, &cpuid, ram(64 << 20));
        let mut ops = RecordingOps::tdx_host();
        TdxLauncher::new(&mut ops)
            .launch(&mut TdxPlan::default(), &cfg)
            .unwrap();
        let init = ops.calls.iter().find(|c| c.ioctl == "TDX_INIT_VM").unwrap();
        init.bytes.clone()
    };
    let set = init_vm_of(TdxSettings {
        mrconfigid: Some(TdReportValue([0x11; 48])),
        mrowner: Some(TdReportValue([0xa2; 48])),
        mrownerconfig: Some(TdReportValue([0xff; 48])),
        ..Default::default()
    });
    assert_eq!(&set[16..64], &[0x11; 48]);
    assert_eq!(&set[64..112], &[0xa2; 48]);
    assert_eq!(&set[112..160], &[0xff; 48]);
    let partly = init_vm_of(TdxSettings {
        mrowner: Some(TdReportValue([0x42; 48])),
        ..Default::default()
    });
    assert_eq!(&partly[16..64], &[0; 48]);
    assert_eq!(&partly[64..112], &[0x42; 48]);
    assert_eq!(&partly[112..160], &[0; 48]);
}
