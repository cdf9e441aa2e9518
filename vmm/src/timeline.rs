//! The boot timeline: microseconds since process start (taken as `main` entry) for each phase
//! cvmm sees, and every guest write to the debug port 0x80 with the boot stage its code stands
//! for (`firmware`, `boot_loader`, `kernel`, `user_space`), written as JSON at exit.

use serde::Serialize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

static PROCESS_START: OnceLock<Instant> = OnceLock::new();

/// Fixes the time origin; call first thing in `main`. Later calls change nothing.
pub fn mark_process_start() -> Instant {
    *PROCESS_START.get_or_init(Instant::now)
}

/// One timeline entry.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TimelineEvent {
    /// Phase name (`kvm_vm_created`, `first_kvm_run`, `debug_port`, ...).
    pub phase: String,
    /// Microseconds since process start.
    pub us: u64,
    /// The value written to port 0x80, for `debug_port` entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
    /// The boot stage of a `debug_port` code (see
    /// [`devices::legacy::debug_code_stage`]); absent for codes from 0x80 up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<&'static str>,
    /// The vCPU, for per-vCPU entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpu: Option<u32>,
}

/// A shared, append-only timeline.
#[derive(Clone)]
pub struct Timeline {
    start: Instant,
    events: Arc<Mutex<Vec<TimelineEvent>>>,
    metrics: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeline {
    /// A timeline measured from process start.
    pub fn new() -> Self {
        Self {
            start: mark_process_start(),
            events: Arc::new(Mutex::new(vec![TimelineEvent {
                phase: "process_start".into(),
                us: 0,
                code: None,
                stage: None,
                vcpu: None,
            }])),
            metrics: Arc::default(),
        }
    }

    /// Records a named number (memory use, counts) reported beside the events.
    pub fn set_metric(&self, name: &str, value: u64) {
        let mut m = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(name.to_string(), value);
    }

    /// The metrics recorded so far.
    pub fn metrics(&self) -> std::collections::BTreeMap<String, u64> {
        self.metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn push(&self, phase: &str, at: Instant, code: Option<u8>, vcpu: Option<u32>) {
        let us = at.saturating_duration_since(self.start).as_micros() as u64;
        let mut ev = self.events.lock().unwrap_or_else(|p| p.into_inner());
        ev.push(TimelineEvent {
            phase: phase.to_string(),
            us,
            code,
            stage: code.and_then(devices::legacy::debug_code_stage),
            vcpu,
        });
        tracing::debug!(phase, us, ?code, ?vcpu, "boot phase");
    }

    /// Records `phase` now.
    pub fn mark(&self, phase: &str) {
        self.push(phase, Instant::now(), None, None);
    }

    /// Records a per-vCPU phase now.
    pub fn mark_vcpu(&self, phase: &str, vcpu: u32) {
        self.push(phase, Instant::now(), None, Some(vcpu));
    }

    /// Records a debug-port write that happened at `at`.
    pub fn debug_code(&self, code: u8, at: Instant) {
        self.push("debug_port", at, Some(code), None);
    }

    /// A copy of the events so far, in the order recorded.
    pub fn events(&self) -> Vec<TimelineEvent> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The timeline as JSON, with the VM's exit reason.
    pub fn to_json(&self, exit: &str) -> String {
        #[derive(Serialize)]
        struct Doc<'a> {
            clock: &'static str,
            exit: &'a str,
            events: Vec<TimelineEvent>,
            metrics: std::collections::BTreeMap<String, u64>,
        }
        serde_json::to_string_pretty(&Doc {
            clock: "monotonic microseconds since process start",
            exit,
            events: self.events(),
            metrics: self.metrics(),
        })
        .unwrap_or_default()
    }

    /// One log-friendly line: `phase=us` pairs.
    pub fn summary(&self) -> String {
        self.events()
            .iter()
            .map(|e| match e.code {
                Some(c) => format!("port80:{c:#04x}={}us", e.us),
                None => format!("{}={}us", e.phase, e.us),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_monotonic_and_serialised() {
        let t = Timeline::new();
        t.mark("args_parsed");
        t.debug_code(0x40, Instant::now());
        t.mark_vcpu("first_kvm_run", 1);
        let ev = t.events();
        assert_eq!(ev[0].phase, "process_start");
        assert!(ev.windows(2).all(|w| w[0].us <= w[1].us));
        let json: serde_json::Value = serde_json::from_str(&t.to_json("poweroff")).unwrap();
        assert_eq!(json["exit"], "poweroff");
        assert_eq!(json["events"][2]["code"], 0x40);
        assert_eq!(json["events"][2]["phase"], "debug_port", "names kept");
        assert_eq!(json["events"][2]["stage"], "kernel");
        assert!(json["events"][1].get("stage").is_none(), "only for codes");
        assert_eq!(json["events"][3]["vcpu"], 1);
        assert!(t.summary().contains("port80:0x40="));
        for (code, stage) in [
            (0x01, Some("firmware")),
            (0x2a, Some("boot_loader")),
            (0x60, Some("user_space")),
            (0x80, None),
        ] {
            t.debug_code(code, Instant::now());
            let ev = t.events().pop().unwrap();
            assert_eq!((ev.code, ev.stage), (Some(code), stage), "{code:#04x}");
        }
        let json: serde_json::Value = serde_json::from_str(&t.to_json("x")).unwrap();
        let last = json["events"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["code"], 0x80);
        assert!(last.get("stage").is_none(), "0x80: no stage field");
        t.set_metric("vmm_hwm_kib", 2048);
        let json: serde_json::Value = serde_json::from_str(&t.to_json("x")).unwrap();
        assert_eq!(json["metrics"]["vmm_hwm_kib"], 2048);
    }
}
