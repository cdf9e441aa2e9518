//! Prometheus metrics in the text exposition format, kept by hand (no metrics crate):
//! request counts and latency summaries per API method (the Go manager's names), VMs running,
//! VM exits, and a histogram per boot phase read from each VM's timeline.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default, Clone, Copy)]
struct Sum {
    count: u64,
    total: f64,
}

/// Upper bounds (seconds) of the boot-phase histogram buckets.
const PHASE_BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Default, Clone, Copy)]
struct Hist {
    count: u64,
    total: f64,
    /// Per bucket (not cumulative) counts; samples above the last bound only in `count`.
    buckets: [u64; PHASE_BUCKETS.len()],
}

/// The manager's counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<&'static str, Sum>>,
    phases: Mutex<BTreeMap<String, Hist>>,
    exits: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Metrics {
    /// Counts one API call of `method` ("Run", "Stop", ...) that took `took`.
    pub fn request(&self, method: &'static str, took: Duration) {
        let mut r = lock(&self.requests);
        let s = r.entry(method).or_default();
        s.count += 1;
        s.total += took.as_nanos() as f64 / 1000.0;
    }

    /// Counts a VM process exit.
    pub fn vm_exit(&self) {
        *lock(&self.exits) += 1;
    }

    /// Adds one boot phase time (seconds since the VM process started).
    pub fn boot_phase(&self, phase: &str, secs: f64) {
        let mut p = lock(&self.phases);
        let h = p.entry(phase.to_string()).or_default();
        h.count += 1;
        h.total += secs;
        if let Some(i) = PHASE_BUCKETS.iter().position(|b| secs <= *b) {
            h.buckets[i] += 1;
        }
    }

    /// The exposition text; `running` is the current number of running VMs.
    pub fn render(&self, running: usize) -> String {
        let mut out = String::new();
        let requests = lock(&self.requests).clone();
        out.push_str("# HELP manager_api_request_count Number of requests received.\n");
        out.push_str("# TYPE manager_api_request_count counter\n");
        for (m, s) in &requests {
            let _ = writeln!(
                out,
                "manager_api_request_count{{method=\"{m}\"}} {}",
                s.count
            );
        }
        out.push_str("# HELP manager_api_request_latency_microseconds Total duration of requests in microseconds.\n");
        out.push_str("# TYPE manager_api_request_latency_microseconds summary\n");
        for (m, s) in &requests {
            let _ = writeln!(
                out,
                "manager_api_request_latency_microseconds_sum{{method=\"{m}\"}} {}",
                s.total
            );
            let _ = writeln!(
                out,
                "manager_api_request_latency_microseconds_count{{method=\"{m}\"}} {}",
                s.count
            );
        }
        out.push_str("# HELP manager_vms_running VM processes currently running.\n");
        out.push_str("# TYPE manager_vms_running gauge\n");
        let _ = writeln!(out, "manager_vms_running {running}");
        out.push_str("# HELP manager_vm_exits_total VM processes that have exited.\n");
        out.push_str("# TYPE manager_vm_exits_total counter\n");
        let _ = writeln!(out, "manager_vm_exits_total {}", *lock(&self.exits));
        out.push_str(
            "# HELP manager_vm_boot_phase_seconds Time from VM process start to each boot phase.\n",
        );
        out.push_str("# TYPE manager_vm_boot_phase_seconds histogram\n");
        for (p, s) in lock(&self.phases).iter() {
            let p = p.replace(['"', '\\', '\n'], "_");
            let mut cumulative = 0;
            for (bound, n) in PHASE_BUCKETS.iter().zip(s.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "manager_vm_boot_phase_seconds_bucket{{phase=\"{p}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "manager_vm_boot_phase_seconds_bucket{{phase=\"{p}\",le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "manager_vm_boot_phase_seconds_sum{{phase=\"{p}\"}} {}",
                s.total
            );
            let _ = writeln!(
                out,
                "manager_vm_boot_phase_seconds_count{{phase=\"{p}\"}} {}",
                s.count
            );
        }
        out
    }

    /// Adds boot phases (name, microseconds since the VM process started) to the histograms.
    /// Debug-port codes and per-range TEE launch phases stay in the VM's timeline (one
    /// histogram per code or per GPA would be noise); launch start and finish are kept.
    pub fn add_phases<'a>(&self, phases: impl Iterator<Item = (&'a str, u64)>) {
        for (phase, us) in phases.take(256) {
            if !phase.starts_with("debug_port")
                && phase.len() <= 64
                && !phase.starts_with("tee_update[")
            {
                self.boot_phase(phase, us as f64 / 1e6);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_counts_latencies_and_phases() {
        let m = Metrics::default();
        m.request("Run", Duration::from_micros(10));
        m.request("Run", Duration::from_micros(30));
        m.vm_exit();
        m.add_phases(
            [
                ("first_kvm_run", 2_500_000),
                ("debug_port:0x01", 1),
                ("tee_update[0x1000+1p:Normal]", 3),
            ]
            .into_iter(),
        );
        let text = m.render(3);
        assert!(
            text.contains("manager_api_request_count{method=\"Run\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("manager_api_request_latency_microseconds_sum{method=\"Run\"} 40\n"),
            "{text}"
        );
        assert!(text.contains("manager_vms_running 3\n"));
        assert!(text.contains("manager_vm_exits_total 1\n"));
        assert!(
            text.contains("manager_vm_boot_phase_seconds_sum{phase=\"first_kvm_run\"} 2.5\n"),
            "{text}"
        );
        assert!(!text.contains("debug_port"));
        assert!(!text.contains("tee_update"));
        assert!(text.contains("# TYPE manager_vm_boot_phase_seconds histogram\n"));
        assert!(
            text.contains(
                "manager_vm_boot_phase_seconds_bucket{phase=\"first_kvm_run\",le=\"2\"} 0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "manager_vm_boot_phase_seconds_bucket{phase=\"first_kvm_run\",le=\"5\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "manager_vm_boot_phase_seconds_bucket{phase=\"first_kvm_run\",le=\"+Inf\"} 1\n"
            ),
            "{text}"
        );
        // A second sample below the first bucket counts in every cumulative bucket.
        m.boot_phase("first_kvm_run", 0.0005);
        let text = m.render(0);
        assert!(
            text.contains(
                "manager_vm_boot_phase_seconds_bucket{phase=\"first_kvm_run\",le=\"0.001\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "manager_vm_boot_phase_seconds_bucket{phase=\"first_kvm_run\",le=\"5\"} 2\n"
            ),
            "{text}"
        );
    }
}
