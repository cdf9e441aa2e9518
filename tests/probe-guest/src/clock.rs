//! Time from the TSC: frequency from CPUID (hypervisor leaf 0x40000010, leaf 0x15, leaf 0x16),
//! else measured against the PIT, else an assumed 2 GHz. Only used to bound waits and to give
//! smoltcp a clock, so a rough frequency is good enough.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::serial::{inb, outb};

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

const SOURCES: [&[u8]; 6] = [
    b"none",
    b"cpuid-hv",
    b"cpuid15",
    b"cpuid16",
    b"pit",
    b"assumed",
];
static SOURCE: AtomicUsize = AtomicUsize::new(0);

/// Where the TSC frequency came from (`cpuid-hv`, `cpuid15`, `cpuid16`, `pit`, `assumed`).
pub fn tsc_source() -> &'static [u8] {
    SOURCES
        .get(SOURCE.load(Ordering::Relaxed))
        .copied()
        .unwrap_or(b"none")
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the counter.
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn cpuid(leaf: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    // SAFETY: cpuid only reads CPU identification; rbx is saved because LLVM reserves it.
    unsafe {
        core::arch::asm!("mov {t:r}, rbx", "cpuid", "xchg {t:r}, rbx", t = out(reg) b,
            inout("eax") leaf => a, inout("ecx") 0 => c, out("edx") d, options(nostack))
    };
    [a, b, c, d]
}

/// TSC frequency in kHz from CPUID, with its source name.
fn khz_from_cpuid() -> Option<(u64, usize)> {
    let hv = cpuid(0x4000_0000);
    if hv[0] >= 0x4000_0010 {
        let khz = u64::from(cpuid(0x4000_0010)[0]);
        if khz != 0 {
            return Some((khz, 1));
        }
    }
    let max = cpuid(0)[0];
    if max >= 0x15 {
        let [den, num, crystal, _] = cpuid(0x15);
        if den != 0 && num != 0 && crystal != 0 {
            return Some((
                u64::from(crystal) * u64::from(num) / u64::from(den) / 1000,
                2,
            ));
        }
    }
    if max >= 0x16 {
        let mhz = u64::from(cpuid(0x16)[0] & 0xffff);
        if mhz != 0 {
            return Some((mhz * 1000, 3));
        }
    }
    None
}

/// Measures the TSC over 10 ms of PIT channel 2 (one-shot, gated by port 0x61). `None` if the
/// PIT output never rises (no PIT).
fn khz_from_pit() -> Option<u64> {
    const TICKS: u16 = 11932; // 10 ms at 1.193182 MHz
    let gate = inb(0x61);
    outb(0x61, (gate & !0x02) | 0x01);
    outb(0x43, 0xb0); // channel 2, lobyte/hibyte, mode 0
    outb(0x42, TICKS as u8);
    outb(0x42, (TICKS >> 8) as u8);
    // Mode 0 starts with OUT low; a port that already reads high is no PIT.
    if inb(0x61) & 0x20 != 0 {
        outb(0x61, gate);
        return None;
    }
    let start = rdtsc();
    let mut done = false;
    for _ in 0..2_000_000 {
        if inb(0x61) & 0x20 != 0 {
            done = true;
            break;
        }
    }
    let khz = rdtsc().wrapping_sub(start) / 10;
    outb(0x61, gate);
    // Believe only 100 MHz .. 20 GHz.
    (done && (100_000..20_000_000).contains(&khz)).then_some(khz)
}

/// TSC kHz (computed once).
pub fn tsc_khz() -> u64 {
    let cached = TSC_KHZ.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let (khz, src) = match khz_from_cpuid() {
        Some(x) => x,
        None => match khz_from_pit() {
            Some(k) => (k, 4),
            None => (2_000_000, 5),
        },
    };
    let khz = khz.max(1000);
    TSC_KHZ.store(khz, Ordering::Relaxed);
    SOURCE.store(src, Ordering::Relaxed);
    khz
}

/// Milliseconds since the TSC was reset (boot).
pub fn now_ms() -> u64 {
    rdtsc() / tsc_khz()
}

/// A point in time after which a wait gives up.
#[derive(Clone, Copy)]
pub struct Deadline(u64);

impl Deadline {
    /// `ms` milliseconds from now.
    pub fn after_ms(ms: u64) -> Self {
        Deadline(now_ms().saturating_add(ms))
    }

    /// True once the deadline has passed.
    pub fn expired(self) -> bool {
        now_ms() >= self.0
    }
}
