//! Per-thread seccomp filters of cvmm, one declarative list per thread kind (main event loop,
//! vCPU, network worker, 9p worker, thread spawner, control socket, TDX quote worker, and the
//! manager's server threads), compiled with seccompiler and installed by each thread right
//! before it touches guest data (or, in the manager, client requests).
//!
//! Filters stack: a thread inherits the filter of the thread that creates it. Device workers
//! are started while the guest runs, so they are created by a dedicated spawner thread (started
//! before any filter) whose filter is the union of its children's lists; each child then
//! narrows itself to its own list. vCPU threads never create threads themselves: a TD's GetQuote
//! worker is started by the spawner too. The manager's threads are filtered too; the VM
//! processes it starts are forked by an unfiltered launcher thread ([`run_unfiltered`]).
//!
//! The mode is process-wide ([`set_mode`]); until it is set nothing is filtered (unit tests of
//! other crates spawn workers freely). `CVMM_SECCOMP_SELFTEST=<kind>` makes the thread of that
//! kind issue a forbidden syscall right after installing its filter (for the tests that check
//! each filter kills the process).

mod launcher;
mod lists;
mod sigsys;
mod spawner;

pub use launcher::run_unfiltered;
pub use lists::{allowed, Cond};
pub use spawner::spawn;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};

/// The threads cvmm runs, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The VMM's main thread once set-up is done: the device event loop and shutdown.
    Main,
    /// A vCPU thread: KVM_RUN and the port/MMIO handlers it calls.
    Vcpu,
    /// The virtio-net worker: the NAT and its host sockets.
    Net,
    /// A virtio-9p worker: read-only file access below its share.
    NineP,
    /// The thread that starts device workers while the guest runs.
    Spawner,
    /// The VM process's control socket (status and stop requests from the manager).
    Control,
    /// A TDX GetQuote worker: one client connection to the host's Quote Generation Service,
    /// the guest buffer by copies, and `KVM_SIGNAL_MSI` for the completion interrupt.
    Quote,
    /// A thread of `cvmm manager`: the gRPC and HTTP servers (tokio workers and blocking
    /// threads), VM supervision through pidfds, and the state directory. VM processes are
    /// forked by the unfiltered launcher thread instead.
    Manager,
}

impl ThreadKind {
    /// Every kind, for tests and docs.
    pub const ALL: [ThreadKind; 8] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Net,
        ThreadKind::NineP,
        ThreadKind::Spawner,
        ThreadKind::Control,
        ThreadKind::Quote,
        ThreadKind::Manager,
    ];

    /// The name used in logs and by `CVMM_SECCOMP_SELFTEST`.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Net => "net",
            ThreadKind::NineP => "9p",
            ThreadKind::Spawner => "spawner",
            ThreadKind::Control => "control",
            ThreadKind::Quote => "quote",
            ThreadKind::Manager => "manager",
        }
    }
}

/// What a filter does with a syscall that is not on its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No filters.
    Off,
    /// Allow it, but have the kernel log it (audit log): for finding missing entries.
    Log,
    /// Kill the whole process with SIGSYS (the default), after printing the thread and the
    /// syscall number to stderr.
    Kill,
}

impl std::str::FromStr for Mode {
    type Err = SeccompError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Mode::Off),
            "log" => Ok(Mode::Log),
            "kill" => Ok(Mode::Kill),
            _ => Err(SeccompError::Mode(s.to_string())),
        }
    }
}

/// Failures of building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Not one of off, log, kill.
    #[error("--seccomp '{0}': expected off, log or kill")]
    Mode(String),
    /// seccompiler refused the rules (a bug in the lists).
    #[error("seccomp filter for {kind} threads: {reason}")]
    Build { kind: &'static str, reason: String },
    /// The kernel refused the filter.
    #[error("installing the seccomp filter of a {kind} thread: {reason}")]
    Install { kind: &'static str, reason: String },
}

const MODE_UNSET: u8 = 0;
static MODE: AtomicU8 = AtomicU8::new(MODE_UNSET);

fn encode(m: Mode) -> u8 {
    match m {
        Mode::Off => 1,
        Mode::Log => 2,
        Mode::Kill => 3,
    }
}

/// Sets the process-wide mode once, early (before any thread that must be filtered starts);
/// with log or kill it also starts the worker spawner.
pub fn set_mode(m: Mode) -> Result<(), SeccompError> {
    set_mode_only(m)?;
    if m != Mode::Off {
        spawner::start()?;
    }
    Ok(())
}

/// [`set_mode`] for `cvmm manager`: with log or kill it starts the launcher that forks VM
/// processes outside the filters instead of the worker spawner.
pub fn set_manager_mode(m: Mode) -> Result<(), SeccompError> {
    set_mode_only(m)?;
    if m != Mode::Off {
        launcher::start()?;
    }
    Ok(())
}

fn set_mode_only(m: Mode) -> Result<(), SeccompError> {
    MODE.store(encode(m), Ordering::SeqCst);
    if m != Mode::Off {
        // glibc shrinks a thread's malloc heap when its top exceeds the trim threshold and
        // then reads /proc/sys/vm/overcommit_memory (once); never trimming keeps that (and
        // the page-table churn) out of the filtered threads.
        // SAFETY: mallopt with a documented parameter and a valid value.
        unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) };
    }
    if m == Mode::Kill {
        sigsys::install_reporter()?;
    }
    Ok(())
}

/// The process-wide mode; `Off` until [`set_mode`].
pub fn mode() -> Mode {
    match MODE.load(Ordering::SeqCst) {
        2 => Mode::Log,
        3 => Mode::Kill,
        _ => Mode::Off,
    }
}

/// The compiled filter of `kind` in `mode` (`None` for `Mode::Off`).
pub fn program(kind: ThreadKind, mode: Mode) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        Mode::Off => return Ok(None),
        Mode::Log => SeccompAction::Log,
        // Trap: the SIGSYS reporter names the syscall, then the process dies of SIGSYS.
        Mode::Kill => SeccompAction::Trap,
    };
    let build = |reason: String| SeccompError::Build {
        kind: kind.name(),
        reason,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, conds) in allowed(kind) {
        let mut list = Vec::new();
        for c in conds {
            list.extend(c.rules().map_err(|e| build(e.to_string()))?);
        }
        rules.insert(nr, list);
    }
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| build(e.to_string()))?;
    BpfProgram::try_from(filter)
        .map(Some)
        .map_err(|e| build(e.to_string()))
}

/// Installs `prog` on the calling thread.
pub fn apply(kind: ThreadKind, prog: &BpfProgram) -> Result<(), SeccompError> {
    seccompiler::apply_filter(prog).map_err(|e| SeccompError::Install {
        kind: kind.name(),
        reason: e.to_string(),
    })
}

/// Installs the filter of `kind` on the calling thread in the process-wide mode.
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(prog) = program(kind, mode())? else {
        return Ok(());
    };
    apply(kind, &prog)?;
    tracing::debug!(kind = kind.name(), "seccomp filter installed");
    selftest(kind);
    Ok(())
}

/// The syscall no filter allows, used by the self-test hook and the tests.
pub const FORBIDDEN_PROBE: i64 = libc::SYS_getppid;

fn selftest(kind: ThreadKind) {
    if std::env::var("CVMM_SECCOMP_SELFTEST").is_ok_and(|k| k == kind.name()) {
        tracing::warn!(
            kind = kind.name(),
            "seccomp self-test: making a forbidden syscall"
        );
        // SAFETY: getppid takes no arguments and has no side effects; the filter decides.
        unsafe { libc::syscall(FORBIDDEN_PROBE) };
    }
}

#[cfg(test)]
mod tests;
