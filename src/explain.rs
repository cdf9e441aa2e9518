//! `cvmm measure --explain`: what the launch of a TEE guest will measure, and a prediction of how
//! long the launch takes, before any hardware run. The prediction adds two parts: the SHA-384
//! work of the plan's digest, timed on this host in-process, and the secure processor's (PSP or
//! TDX module) per-page and per-call costs, named constants below. Both parts are estimates and
//! printed as such; `cvmm bench` on the real host gives the measured launch phases.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Instant;
use tee::measure::PageType;
use tee::plan::LaunchPlan;
use tee::tdx_plan::TdxPlan;

// Where the device costs come from: AMD and Intel publish no per-page latencies for launch
// commands. SEVeriFast (Holmes, Waterman, Williams, ASPLOS 2024, doi:10.1145/3620665.3640424)
// shows that measurement dominates SNP cold start and grows with the pages measured, which is
// the shape this model has. The figures themselves are assumed orders of magnitude, chosen
// for comparing plans with each other, not measured on SNP/TDX hardware: calibrate them with
// the TEE launch phases of `cvmm run --timeline` (each LAUNCH_UPDATE range with pages and
// time) on the real host.

/// Assumed PSP time per 4 KiB page of SNP_LAUNCH_UPDATE (encrypt in place, RMP update), µs.
/// An estimate, not a measured or published figure (see above).
const SNP_PSP_US_PER_PAGE: f64 = 6.0;
/// Assumed PSP time per SNP_LAUNCH_UPDATE command (mailbox round trip), µs. An estimate.
const SNP_PSP_US_PER_CALL: f64 = 30.0;
/// Assumed TDX module time per 4 KiB page added (TDH.MEM.PAGE.ADD), µs. An estimate.
const TDX_US_PER_PAGE_ADD: f64 = 2.0;
/// Assumed TDX module time per 256-byte TDH.MR.EXTEND chunk, µs. An estimate.
const TDX_US_PER_EXTEND: f64 = 0.6;

/// Milliseconds one call of `f` takes on this host (the best of three, to skip cold caches).
fn time_ms(mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .fold(f64::INFINITY, f64::min)
}

fn name(t: PageType) -> &'static str {
    match t {
        PageType::Normal => "normal (measured)",
        PageType::Vmsa => "vmsa",
        PageType::Zero => "zero",
        PageType::Unmeasured => "unmeasured",
        PageType::Secrets => "secrets",
        PageType::Cpuid => "cpuid",
    }
}

/// The explanation of an SNP launch plan.
pub fn snp(plan: &LaunchPlan) -> String {
    let mut per_type: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    let mut pages = 0u64;
    for (_, len, t) in plan.update_list() {
        let p = len.div_ceil(4096);
        let e = per_type.entry(name(t)).or_default();
        e.0 += 1;
        e.1 += p;
        pages += p;
    }
    let measured: u64 = plan
        .update_list()
        .iter()
        .filter(|(_, _, t)| t.is_measured())
        .map(|(_, len, _)| len.div_ceil(4096))
        .sum::<u64>()
        + plan.vcpus.len() as u64;
    let calls = plan.ranges.len() as u64;
    let hash_ms = time_ms(|| {
        std::hint::black_box(plan.digest());
    });
    let psp_ms = (pages as f64 * SNP_PSP_US_PER_PAGE + calls as f64 * SNP_PSP_US_PER_CALL) / 1000.0;
    let mut out = String::from("SNP launch plan\n");
    let _ = writeln!(
        out,
        "  LAUNCH_UPDATE ranges: {calls}, pages: {pages} ({} KiB)",
        pages * 4
    );
    for (n, (ranges, p)) in &per_type {
        let _ = writeln!(out, "    {n:<18} {ranges:>4} ranges {p:>7} pages");
    }
    let _ = writeln!(
        out,
        "  vCPUs (VMSA pages at LAUNCH_FINISH): {}",
        plan.vcpus.len()
    );
    let _ = writeln!(
        out,
        "  pages whose contents are hashed: {measured}, bytes hashed: {}",
        measured * 4096
    );
    let _ = writeln!(out, "predicted launch (estimate)");
    let _ = writeln!(
        out,
        "  hashing: the plan's SHA-384 digest takes {hash_ms:.2} ms on this host (measured now)"
    );
    let _ = writeln!(
        out,
        "  PSP: {pages} pages x {SNP_PSP_US_PER_PAGE} us + {calls} calls x {SNP_PSP_US_PER_CALL} us = {psp_ms:.1} ms (assumed costs)"
    );
    let _ = writeln!(out, "  predicted launch phase: ~{:.1} ms", hash_ms + psp_ms);
    out
}

/// The explanation of a TDX launch plan.
pub fn tdx(plan: &TdxPlan) -> String {
    let pages: u64 = plan.regions.iter().map(|r| r.pages()).sum();
    let measured: u64 = plan
        .regions
        .iter()
        .filter(|r| r.measure)
        .map(|r| r.pages())
        .sum();
    let extends = measured * 16;
    let aug: u64 = plan.augmented.iter().map(|(_, s)| s / 4096).sum();
    let hash_ms = time_ms(|| {
        std::hint::black_box(plan.mrtd());
    });
    let module_ms =
        (pages as f64 * TDX_US_PER_PAGE_ADD + extends as f64 * TDX_US_PER_EXTEND) / 1000.0;
    let mut out = String::from("TDX launch plan\n");
    let _ = writeln!(
        out,
        "  KVM_TDX_INIT_MEM_REGION ranges: {}, pages added: {pages} ({} KiB)",
        plan.regions.len(),
        pages * 4
    );
    let _ = writeln!(
        out,
        "  measured pages: {measured} ({extends} TDH.MR.EXTEND chunks), bytes hashed: {}",
        measured * 4096
    );
    let _ = writeln!(out, "  PAGE_AUG (accepted by the guest later): {aug} pages");
    let _ = writeln!(out, "predicted launch (estimate)");
    let _ = writeln!(
        out,
        "  hashing: the MRTD's SHA-384 takes {hash_ms:.2} ms on this host (measured now)"
    );
    let _ = writeln!(
        out,
        "  TDX module: {pages} PAGE.ADD x {TDX_US_PER_PAGE_ADD} us + {extends} MR.EXTEND x {TDX_US_PER_EXTEND} us = {module_ms:.1} ms (assumed costs)"
    );
    let _ = writeln!(
        out,
        "  predicted launch phase: ~{:.1} ms",
        hash_ms + module_ms
    );
    out
}
