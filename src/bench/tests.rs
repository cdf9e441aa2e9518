//! Unit tests of `cvmm bench`: argument checks and the report built from runs.

use super::run::{OneRun, Outcome, TimelineDoc};
use super::{build_report, validate, BenchArgs};
use clap::Parser;

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    bench: BenchArgs,
}

fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
    Wrap::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|w| w.bench)
}

fn cvmm_run(exit_ms: f64, events: &[(&str, u64)], hwm: u64) -> OneRun {
    OneRun {
        exit_ms,
        ready_ms: Some(exit_ms / 2.0),
        maxrss_kib: hwm + 100,
        outcome: Outcome::Timeline(TimelineDoc {
            events: events.iter().map(|(n, us)| (n.to_string(), *us)).collect(),
            metrics: vec![("vmm_hwm_kib".into(), hwm)],
            stages: Vec::new(),
        }),
    }
}

fn plain_run(exit_ms: f64) -> OneRun {
    OneRun {
        exit_ms,
        ready_ms: Some(exit_ms / 2.0),
        maxrss_kib: 40_000,
        outcome: Outcome::Plain,
    }
}

#[test]
fn arguments_that_cannot_give_a_benchmark_are_refused() {
    let ok = parse(&["--runs", "3", "--", "--kernel", "k"]).unwrap();
    assert_eq!(ok.run_args, ["--kernel", "k"]);
    assert!(validate(&ok).is_ok());

    let zero = parse(&["--runs", "0", "--", "--kernel", "k"]).unwrap();
    let e = validate(&zero).unwrap_err().to_string();
    assert!(e.contains("--runs 0"), "{e}");

    // The `cvmm run` arguments come after `--`; without them there is nothing to run.
    assert!(parse(&["--runs", "3"]).is_err());
    assert!(parse(&["--runs", "3", "--kernel", "k"]).is_err());
    assert!(parse(&["--runs", "many", "--", "--kernel", "k"]).is_err());

    for bad in [
        &["--", "--kernel", "k", "--timeline", "t.json"][..],
        &["--", "--kernel", "k", "--timeline=t.json"],
        &["--vs", " ", "--", "--kernel", "k"],
        &["--ready-marker", "", "--", "--kernel", "k"],
        &["--timeout", "0", "--", "--kernel", "k"],
    ] {
        let a = parse(bad).unwrap();
        assert!(validate(&a).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn report_keeps_boot_order_and_gives_ratios_of_medians() {
    let args = parse(&["--runs", "3", "--vs", "other-vmm", "--", "--kernel", "k"]).unwrap();
    let ev = |vm: u64, run: u64| {
        vec![
            ("process_start", 0),
            ("kvm_vm_created", vm),
            ("first_kvm_run[vcpu0]", run),
        ]
    };
    let cvmm = [
        cvmm_run(10.0, &ev(900, 2000), 5000),
        cvmm_run(30.0, &ev(1100, 3000), 5200),
        cvmm_run(20.0, &ev(1000, 4000), 5100),
    ];
    let other = [plain_run(40.0), plain_run(80.0), plain_run(60.0)];
    let r = build_report(&args, &cvmm, &other, Vec::new());
    let names: Vec<&str> = r.phases.iter().map(|p| p.phase.as_str()).collect();
    assert_eq!(
        names,
        ["process_start", "kvm_vm_created", "first_kvm_run[vcpu0]"]
    );
    assert_eq!(r.phases[1].ms.median, 1.0);
    let share = r.vmm_share_ms.unwrap();
    assert_eq!((share.min, share.median, share.max), (2.0, 3.0, 4.0));
    assert_eq!(r.cvmm_exit_ms.unwrap().median, 20.0);
    assert_eq!(r.cvmm_rss_kib.unwrap().median, 5200.0);
    assert_eq!(r.cvmm_metrics["vmm_hwm_kib"].max, 5200.0);
    let o = r.other.as_ref().unwrap();
    assert_eq!(o.exit_ms.unwrap().median, 60.0);
    assert_eq!(o.exit_ratio, Some(20.0 / 60.0));
    assert_eq!(o.ready_ratio, Some(10.0 / 30.0));
    let md = super::markdown::render(&r);
    assert!(
        md.contains("| kvm_vm_created | 0.90 | 1.00 | 1.10 | 1.10 |"),
        "{md}"
    );
    assert!(md.contains("ready 0.33, exit 0.33"), "{md}");
}

#[test]
fn failed_runs_leave_no_numbers_and_are_listed() {
    let args = parse(&["--runs", "1", "--vs", "false", "--", "--kernel", "k"]).unwrap();
    let cvmm = [cvmm_run(10.0, &[("process_start", 0)], 5000)];
    let failures = vec!["--vs run 1: exit status 1".to_string()];
    let r = build_report(&args, &cvmm, &[], failures);
    let o = r.other.as_ref().unwrap();
    assert!(o.exit_ms.is_none() && o.ready_ms.is_none() && o.rss_kib.is_none());
    assert!(o.exit_ratio.is_none() && o.ready_ratio.is_none());
    assert!(r.vmm_share_ms.is_none(), "no first_kvm_run in the timeline");
    let md = super::markdown::render(&r);
    assert!(
        md.contains("FAILED runs: 1\n- --vs run 1: exit status 1"),
        "{md}"
    );
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["other"]["exit_ms"].is_null());
    assert_eq!(json["failures"][0], "--vs run 1: exit status 1");
}

#[test]
fn the_plot_is_a_png_with_or_without_a_font() {
    let args = parse(&[
        "--runs",
        "1",
        "--vs",
        "qemu -M microvm",
        "--",
        "--kernel",
        "k",
    ])
    .unwrap();
    let cvmm = [cvmm_run(
        10.0,
        &[("process_start", 0), ("first_kvm_run[vcpu0]", 3000)],
        5000,
    )];
    let r = build_report(&args, &cvmm, &[plain_run(50.0)], Vec::new());
    for text in [false, true] {
        let path =
            std::env::temp_dir().join(format!("cvmm-bench-unit-{}-{text}.png", std::process::id()));
        if text {
            // Labelled when a system font is installed, plain otherwise.
            super::plot::draw(&r, &path).unwrap();
        } else {
            super::plot::render(&r, &path, false).unwrap();
        }
        let png = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert!(png.len() > 1000, "{} bytes", png.len());
    }
}

#[test]
fn debug_port_codes_carry_their_stage_into_json_markdown_and_the_legend() {
    let args = parse(&["--runs", "2", "--", "--kernel", "k"]).unwrap();
    let run = |exit_ms: f64, shift: u64| OneRun {
        exit_ms,
        ready_ms: None,
        maxrss_kib: 1000,
        outcome: Outcome::Timeline(TimelineDoc {
            events: vec![
                ("process_start".into(), 0),
                ("first_kvm_run[vcpu0]".into(), 2000 + shift),
                ("port80:0x40".into(), 3000 + shift),
                ("port80:0x60".into(), 4000 + shift),
                ("port80:0xc8".into(), 4500 + shift),
            ],
            metrics: Vec::new(),
            stages: vec![
                ("port80:0x40".into(), "kernel".into()),
                ("port80:0x60".into(), "user_space".into()),
            ],
        }),
    };
    let r = build_report(&args, &[run(10.0, 0), run(12.0, 100)], &[], Vec::new());
    // JSON: names unchanged, the stage beside them; none for 0xc8 or non-port phases.
    let json = serde_json::to_value(&r).unwrap();
    let phase = |name: &str| {
        json["phases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["phase"] == name)
            .unwrap_or_else(|| panic!("no {name}: {json}"))
            .clone()
    };
    assert_eq!(phase("port80:0x40")["stage"], "kernel");
    assert_eq!(phase("port80:0x60")["stage"], "user_space");
    assert!(phase("port80:0xc8").get("stage").is_none());
    assert!(phase("first_kvm_run[vcpu0]").get("stage").is_none());
    // Markdown: the row says which stage the code is.
    let md = super::markdown::render(&r);
    assert!(
        md.contains("| port80:0x40 (kernel) | 3.00 | 3.10 |"),
        "{md}"
    );
    assert!(md.contains("| port80:0x60 (user_space) |"), "{md}");
    assert!(md.contains("| port80:0xc8 | "), "{md}");
    // The plot's legend names the stage too.
    let legend = super::plot::legend_of(&r);
    assert!(
        legend.iter().any(|l| l == "port80:0x40 (kernel)"),
        "{legend:?}"
    );
    assert!(legend.iter().any(|l| l == "port80:0xc8"), "{legend:?}");
}
