//! One timed run of a VMM: wall time to exit, time to a console marker, peak RSS (wait4), and
//! for cvmm its timeline. A non-zero exit, a timeout or a missing marker is an error.

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What a run left besides its times.
#[derive(Debug)]
pub enum Outcome {
    /// cvmm's timeline.
    Timeline(TimelineDoc),
    /// Another VMM: no timeline.
    Plain,
}

/// The parts of a `cvmm run --timeline` file the report uses.
#[derive(Debug, Default)]
pub struct TimelineDoc {
    /// (phase, microseconds since process start), in the order recorded.
    pub events: Vec<(String, u64)>,
    /// The named numbers beside the events (`vmm_hwm_kib`, `vmm_overhead_kib`, ...).
    pub metrics: Vec<(String, u64)>,
    /// The boot stage of each debug-port event name (`port80:0x40` → `kernel`), from the
    /// timeline's `stage` field.
    pub stages: Vec<(String, String)>,
}

/// One finished run.
#[derive(Debug)]
pub struct OneRun {
    /// Spawn to exit, ms.
    pub exit_ms: f64,
    /// Spawn to the marker line, ms.
    pub ready_ms: Option<f64>,
    /// Peak RSS of the process, KiB.
    pub maxrss_kib: u64,
    /// The timeline, for cvmm.
    pub outcome: Outcome,
}

/// Runs `cvmm run ARGS --timeline TMP`.
pub fn cvmm(
    exe: &Path,
    args: &[String],
    marker: Option<&str>,
    limit: Duration,
) -> anyhow::Result<OneRun> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tl = std::env::temp_dir().join(format!("cvmm-bench-{}-{n}.json", std::process::id()));
    let mut cmd = Command::new(exe);
    cmd.arg("run").args(args).arg("--timeline").arg(&tl);
    let result = timed(cmd, marker, limit);
    let events = std::fs::read_to_string(&tl);
    let _ = std::fs::remove_file(&tl);
    let mut run = result?;
    let text = events.with_context(|| format!("cvmm wrote no timeline '{}'", tl.display()))?;
    run.outcome = Outcome::Timeline(parse_timeline(&text)?);
    Ok(run)
}

/// Runs `sh -c COMMAND`.
pub fn other(command: &str, marker: Option<&str>, limit: Duration) -> anyhow::Result<OneRun> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command);
    timed(cmd, marker, limit)
}

/// The events of a `cvmm run --timeline` file, named for the report, and its metrics.
pub fn parse_timeline(text: &str) -> anyhow::Result<TimelineDoc> {
    let doc: serde_json::Value = serde_json::from_str(text).context("timeline is not JSON")?;
    let events = doc["events"].as_array().context("timeline has no events")?;
    let metrics = doc["metrics"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let mut stages: Vec<(String, String)> = Vec::new();
    let events = events
        .iter()
        .map(|e| {
            let phase = e["phase"].as_str().context("event without a phase")?;
            let us = e["us"].as_u64().context("event without a time")?;
            let name = match (e["code"].as_u64(), e["vcpu"].as_u64()) {
                (Some(code), _) => format!("port80:{code:#04x}"),
                (None, Some(v)) => format!("{phase}[vcpu{v}]"),
                (None, None) => phase.to_string(),
            };
            if let Some(stage) = e["stage"].as_str() {
                if !stages.iter().any(|(n, _)| *n == name) {
                    stages.push((name.clone(), stage.to_string()));
                }
            }
            Ok((name, us))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(TimelineDoc {
        events,
        metrics,
        stages,
    })
}

fn timed(mut cmd: Command, marker: Option<&str>, limit: Duration) -> anyhow::Result<OneRun> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the VMM")?;
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    let marker_owned = marker.map(str::to_string);
    let stdout = child.stdout.take().context("no stdout")?;
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if marker_owned.as_deref().is_some_and(|m| line.contains(m)) {
                let _ = tx.send(start.elapsed());
            }
        }
    });
    let mut stderr = child.stderr.take().context("no stderr")?;
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = loop {
        // SAFETY: wait4 on our own child with pointers to locals.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break true;
        }
        if r < 0 || start.elapsed() > limit {
            let _ = child.kill();
            // SAFETY: as above, blocking this time to reap the killed child.
            unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
            break false;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let exit = start.elapsed();
    std::mem::forget(child); // reaped by wait4
    let _ = reader.join();
    let stderr = err_reader.join().unwrap_or_default();
    let mut tail: String = stderr.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
    if tail.is_empty() {
        tail = "(empty)".into();
    }
    if !waited {
        bail!("no exit within {limit:?} (killed); stderr: {tail}");
    }
    if libc::WIFSIGNALED(status) {
        bail!(
            "killed by signal {} (not a clean exit 0); stderr: {tail}",
            libc::WTERMSIG(status)
        );
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!(
            "exit status {} (not a clean exit 0); stderr: {tail}",
            libc::WEXITSTATUS(status)
        );
    }
    // A line read after the exit was seen still happened before it.
    let ready = rx.try_iter().next().map(|r| r.min(exit));
    if marker.is_some() && ready.is_none() {
        bail!(
            "the marker {:?} never appeared on the console",
            marker.unwrap_or("")
        );
    }
    Ok(OneRun {
        exit_ms: exit.as_secs_f64() * 1000.0,
        ready_ms: ready.map(|d| d.as_secs_f64() * 1000.0),
        maxrss_kib: ru.ru_maxrss.max(0) as u64,
        outcome: Outcome::Plain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_events_get_report_names() {
        let text = r#"{"events":[{"phase":"process_start","us":0},{"phase":"kvm_vm_created","us":900},
            {"phase":"first_kvm_run","us":2000,"vcpu":0},{"phase":"port80","us":2100,"code":64,"stage":"kernel"},
            {"phase":"debug_port","us":2200,"code":200}],
            "metrics":{"vmm_hwm_kib":5120,"bogus":"x"}}"#;
        let doc = parse_timeline(text).unwrap();
        assert_eq!(doc.metrics, [("vmm_hwm_kib".to_string(), 5120)]);
        let ev = doc.events;
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "process_start",
                "kvm_vm_created",
                "first_kvm_run[vcpu0]",
                "port80:0x40",
                "port80:0xc8"
            ]
        );
        assert_eq!(
            doc.stages,
            [("port80:0x40".to_string(), "kernel".to_string())],
            "a stage where the timeline gives one, none for 0xc8"
        );
        assert_eq!(ev[2].1, 2000);
        assert!(parse_timeline("{}").is_err());
        assert!(parse_timeline("not json").is_err());
        assert!(parse_timeline(r#"{"events":[{"phase":"x"}]}"#).is_err());
    }

    #[test]
    fn a_failing_or_silent_command_is_an_error() {
        let e = other("exit 3", None, Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(e.contains("exit status 3"), "{e}");
        let e = other("kill -9 $$", None, Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(e.contains("killed by signal 9"), "{e}");
        let e = other("echo hello", Some("ready"), Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(e.contains("never appeared"), "{e}");
        let ok = other(
            "echo x; echo ready now",
            Some("ready"),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(ok.ready_ms.is_some() && ok.exit_ms >= ok.ready_ms.unwrap());
        let e = other("sleep 5", None, Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(e.contains("killed"), "{e}");
    }
}
