//! The manager's view of each VM's boot while it runs. A task per VM asks the VM's control
//! socket for the boot phases until the guest is up (its first network frame — a Cocos
//! guest's agent needs the network — a user-space code on the debug port, or a stop), then
//! logs one line with every phase so far and adds them to the `/metrics` histograms. A VM
//! that exits before that is reported from the timeline it leaves at exit instead; either
//! way once per VM ([`BootReport`]).

use crate::metrics::Metrics;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use vmm::control::Phase;

/// Time between two status requests.
const POLL: Duration = Duration::from_millis(100);
/// A guest not up after this long is reported as it stands.
const LIMIT: Duration = Duration::from_secs(300);

/// Whether a VM's boot phases were reported (log line and histograms); shared by the watcher
/// and the exit path so that exactly one of them reports.
#[derive(Debug, Default, Clone)]
pub struct BootReport(Arc<AtomicBool>);

impl BootReport {
    /// True for the first caller only.
    pub fn claim(&self) -> bool {
        !self.0.swap(true, Ordering::SeqCst)
    }
}

/// The guest is up: it sent its first network frame, wrote a user-space code (0x60–0x7f) to
/// the debug port, or stopped.
pub fn guest_is_up(phases: &[Phase]) -> bool {
    phases.iter().any(|p| {
        p.phase == "net_first_guest_frame"
            || p.phase == "guest_stop"
            || p.phase
                .strip_prefix("debug_port:0x")
                .and_then(|c| u8::from_str_radix(c, 16).ok())
                .is_some_and(|c| (0x60..=0x7f).contains(&c))
    })
}

/// One log-friendly line: `phase=ms` pairs in order.
pub fn summary(phases: &[Phase]) -> String {
    phases
        .iter()
        .map(|p| format!("{}={:.1}ms", p.phase, p.us as f64 / 1000.0))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Adds the phases to the histograms, per-vCPU phases under their common name (as in the
/// timeline a VM leaves at exit).
pub fn record(metrics: &Metrics, phases: &[Phase]) {
    metrics.add_phases(phases.iter().map(|p| {
        let name = match p.phase.find("[vcpu") {
            Some(i) if p.phase.ends_with(']') => &p.phase[..i],
            _ => p.phase.as_str(),
        };
        (name, p.us)
    }));
}

/// Asks a VM's control socket for its boot phases until the guest is up (`Some((true, ..))`)
/// or [`LIMIT`] passes (`Some((false, ..))` with the phases so far); `None` when the VM exits
/// first (`exited` turns true) or never answered.
pub async fn wait_until_up(
    control: PathBuf,
    mut exited: watch::Receiver<bool>,
) -> Option<(bool, Vec<Phase>)> {
    let started = tokio::time::Instant::now();
    let mut last = None;
    while started.elapsed() < LIMIT {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = exited.wait_for(|e| *e) => return None,
        }
        let path = control.clone();
        // Not listening yet (early boot) or busy with another client: ask again.
        if let Ok(Ok(status)) =
            tokio::task::spawn_blocking(move || vmm::control::status(&path)).await
        {
            if guest_is_up(&status.phases) {
                return Some((true, status.phases));
            }
            last = Some(status.phases);
        }
    }
    last.map(|p| (false, p))
}

/// The phases of the timeline a VM process writes at exit (`{"events":[{"phase","us",
/// "vcpu"?,"code"?}]}`), named as its control socket names them; empty when unreadable.
pub fn phases_of_timeline(json: &[u8]) -> Vec<Phase> {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let Some(events) = doc.get("events").and_then(|e| e.as_array()) else {
        return Vec::new();
    };
    events
        .iter()
        .filter_map(|e| {
            let name = e.get("phase")?.as_str()?;
            let phase = match (
                e.get("vcpu").and_then(|v| v.as_u64()),
                e.get("code").and_then(|c| c.as_u64()),
            ) {
                (Some(v), _) => format!("{name}[vcpu{v}]"),
                (None, Some(c)) => format!("{name}:{c:#04x}"),
                (None, None) => name.to_string(),
            };
            Some(Phase {
                phase,
                us: e.get("us")?.as_u64()?,
            })
        })
        .collect()
}

/// Reports a VM's boot phases once: the log line and the histograms.
pub fn report(id: &str, up: bool, phases: &[Phase], metrics: &Metrics, once: &BootReport) {
    if once.claim() {
        record(metrics, phases);
        tracing::info!(cvm_id = %id, up, phases = %summary(phases), "VM boot phases");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phases(list: &[(&str, u64)]) -> Vec<Phase> {
        list.iter()
            .map(|(p, us)| Phase {
                phase: p.to_string(),
                us: *us,
            })
            .collect()
    }

    #[test]
    fn up_means_network_user_space_code_or_stop() {
        let early = phases(&[("kvm_vm_created", 500), ("debug_port:0x40", 900)]);
        assert!(!guest_is_up(&early));
        for last in [
            "net_first_guest_frame",
            "debug_port:0x60",
            "debug_port:0x7f",
            "guest_stop",
        ] {
            let mut p = early.clone();
            p.extend(phases(&[(last, 1000)]));
            assert!(guest_is_up(&p), "{last}");
        }
        assert!(!guest_is_up(&phases(&[("debug_port:0x80", 1)])));
        assert!(!guest_is_up(&phases(&[("debug_port:0xzz", 1)])));
    }

    #[test]
    fn summary_lists_phases_in_milliseconds() {
        let p = phases(&[("args_parsed", 210), ("first_kvm_run[vcpu0]", 3400)]);
        assert_eq!(summary(&p), "args_parsed=0.2ms first_kvm_run[vcpu0]=3.4ms");
    }

    #[test]
    fn exit_timelines_are_named_like_status_phases() {
        let json = br#"{"events":[{"phase":"first_kvm_run","us":2500,"vcpu":1},{"phase":"debug_port","us":2600,"code":64},{"phase":"guest_stop","us":9000}]}"#;
        assert_eq!(
            phases_of_timeline(json),
            phases(&[
                ("first_kvm_run[vcpu1]", 2500),
                ("debug_port:0x40", 2600),
                ("guest_stop", 9000)
            ])
        );
        assert!(phases_of_timeline(b"not json").is_empty());
        assert!(phases_of_timeline(br#"{"events":[{"phase":1}]}"#).is_empty());
    }

    #[test]
    fn a_report_is_claimed_once() {
        let r = BootReport::default();
        let other = r.clone();
        assert!(r.claim());
        assert!(!other.claim());
        assert!(!r.claim());
    }

    #[test]
    fn per_vcpu_phases_share_one_histogram() {
        let m = Metrics::default();
        record(
            &m,
            &phases(&[
                ("first_kvm_run[vcpu0]", 3_000),
                ("first_kvm_run[vcpu1]", 4_000),
                ("debug_port:0x60", 5_000),
                ("tee_update[0x1000+1p:Normal]", 6_000),
            ]),
        );
        let text = m.render(1);
        assert!(
            text.contains("manager_vm_boot_phase_seconds_count{phase=\"first_kvm_run\"} 2\n"),
            "{text}"
        );
        assert!(!text.contains("debug_port"), "{text}");
        assert!(!text.contains("tee_update"), "{text}");
    }
}
