//! The allow-lists, one per thread kind. Found with `strace -f` on probe and Linux guests
//! (net, 9p, serial, shutdown) plus what glibc and std do in any thread (allocator, futexes,
//! signals, thread exit, logging to stderr).

use crate::ThreadKind;
use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use std::collections::BTreeMap;

/// When an allowed syscall is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// Always.
    Always,
    /// `ioctl` with a KVM request (type byte 0xAE) on any fd, except
    /// `KVM_MEMORY_ENCRYPT_OP`: the SEV-SNP/TDX launch commands run before filters exist.
    IoctlKvm,
    /// `ioctl` with one of these requests.
    IoctlIn(&'static [u64]),
    /// The first argument is one of these values (e.g. `prctl` options, `fcntl` commands on
    /// the second argument are listed with `Arg1In`).
    Arg0In(&'static [u64]),
    /// The second argument is one of these values.
    Arg1In(&'static [u64]),
    /// The third argument is one of these values.
    Arg2In(&'static [u64]),
}

impl Cond {
    /// The seccompiler rules of this condition (none for `Always`: unconditional).
    pub(crate) fn rules(self) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
        let eq = |arg: u8, v: u64| {
            SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
        };
        let one_of = |arg: u8, vs: &[u64]| -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
            vs.iter()
                .map(|&v| SeccompRule::new(vec![eq(arg, v)?]))
                .collect()
        };
        match self {
            Cond::Always => Ok(Vec::new()),
            // Any KVM request but the SEV/TDX launch command (issued before any filter).
            Cond::IoctlKvm => Ok(vec![SeccompRule::new(vec![
                SeccompCondition::new(
                    1,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(0xff00),
                    0xae00,
                )?,
                SeccompCondition::new(
                    1,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Ne,
                    KVM_MEMORY_ENCRYPT_OP,
                )?,
            ])?]),
            Cond::IoctlIn(vs) | Cond::Arg1In(vs) => one_of(1, vs),
            Cond::Arg0In(vs) => one_of(0, vs),
            Cond::Arg2In(vs) => one_of(2, vs),
        }
    }
}

/// `KVM_MEMORY_ENCRYPT_OP` = `_IOWR(KVMIO, 0xba, unsigned long)`.
pub const KVM_MEMORY_ENCRYPT_OP: u64 = 0xc008_aeba;
const FIONBIO: u64 = 0x5421;
const FIONREAD: u64 = 0x541b;
const TCGETS: u64 = 0x5401;
const TCSETS: u64 = 0x5402;
const TIOCGWINSZ: u64 = 0x5413;
const PR_SET_NAME: u64 = 15;
const PR_GET_NAME: u64 = 16;
const PR_SET_NO_NEW_PRIVS: u64 = 38;

/// `O_RDONLY | O_CLOEXEC`: how glibc opens its own `/proc` and `/sys` files on demand (e.g.
/// `/proc/sys/vm/overcommit_memory` the first time a thread's malloc arena shrinks). Allowed
/// in every thread with exactly these flags; which files can be opened at all is Landlock's
/// business (the VM's own files, `/proc`, `/sys`).
const GLIBC_OPEN_FLAGS: u64 = 0x80000;

/// What every thread does: allocate, wait on futexes, take signals, log, exit.
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_getrandom,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
];

/// Waiting on and reading event fds.
const POLLING: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_read,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// The main thread after set-up: the event loop (stdin console, stop/term eventfds), vCPU kicks,
/// joins, and writing the timeline and serial files at the end (with mincore for the guest's
/// resident pages).
const MAIN: &[i64] = &[
    libc::SYS_mincore,
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fcntl,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_rt_sigaction,
    libc::SYS_prlimit64,
];

/// vCPU threads: KVM_RUN and the device registers they emulate, which activate devices (new
/// eventfds and an epoll set handed to the spawner), convert SNP memory (fallocate) and write
/// firmware variables through to the flash file (pwrite64; the memslot toggles of the flash
/// are KVM ioctls).
const VCPU: &[i64] = &[
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_fcntl,
    libc::SYS_read,
    libc::SYS_fallocate,
    libc::SYS_pwrite64,
];

/// The NAT: host sockets for outbound TCP/UDP and forwarded connections.
const NET: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_fcntl,
];

/// A TDX GetQuote worker: a client socket to the QGS (vsock, unix or tcp) with timeouts.
const QUOTE: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_fcntl,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// The 9p server: read-only access below the share's root fd.
const NINEP: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_getdents64,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_readlinkat,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_fgetxattr,
    libc::SYS_flistxattr,
];

/// The control socket: accept a manager connection, read one line, answer, and (on a stop
/// request) signal the own process with SIGTERM.
const CONTROL: &[i64] = &[
    libc::SYS_accept4,
    libc::SYS_accept,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_setsockopt,
    libc::SYS_getpid,
    libc::SYS_fcntl,
];

/// The manager: tokio's event loop and threads, the gRPC/HTTP servers and their clients (TLS,
/// OTLP export), held forward ports, the state directory (records, specs, VARS copies, removal
/// of whole VM directories) and VM supervision (pidfds, waitid, signals). No execve: VM
/// processes are forked by the unfiltered launcher thread.
const MANAGER: &[i64] = &[
    libc::SYS_epoll_create1,
    libc::SYS_eventfd2,
    libc::SYS_pipe2,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_recvmmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_sendmmsg,
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_readv,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_getdents64,
    // std on x86_64 calls the path-based forms (mkdir, rename, unlink, ...) as well as the
    // *at ones (remove_dir_all).
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rmdir,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_chmod,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_access,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_getcwd,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    libc::SYS_uname,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_prlimit64,
    libc::SYS_sched_setaffinity,
    libc::SYS_set_tid_address,
    libc::SYS_rt_sigaction,
    libc::SYS_pidfd_open,
    libc::SYS_pidfd_send_signal,
    libc::SYS_waitid,
    libc::SYS_wait4,
    libc::SYS_membarrier,
];

/// Starting threads: what `std::thread::spawn` does in the parent, and what each new thread
/// does to install its own filter (which it inherits from the spawner's).
const SPAWN: &[i64] = &[libc::SYS_clone, libc::SYS_clone3, libc::SYS_seccomp];

fn add(map: &mut BTreeMap<i64, Vec<Cond>>, nrs: &[i64]) {
    for &nr in nrs {
        map.insert(nr, vec![Cond::Always]);
    }
}

fn add_cond(map: &mut BTreeMap<i64, Vec<Cond>>, nr: i64, c: Cond) {
    if c == Cond::Always {
        map.insert(nr, vec![Cond::Always]);
        return;
    }
    let e = map.entry(nr).or_default();
    if !e.contains(&Cond::Always) {
        e.push(c);
    }
}

/// The allow-list of `kind`: syscall number → the conditions under which it is allowed (an
/// `Always` entry stands alone).
pub fn allowed(kind: ThreadKind) -> BTreeMap<i64, Vec<Cond>> {
    let mut m = BTreeMap::new();
    add(&mut m, COMMON);
    add_cond(
        &mut m,
        libc::SYS_prctl,
        Cond::Arg0In(&[PR_SET_NAME, PR_GET_NAME]),
    );
    add_cond(&mut m, libc::SYS_openat, Cond::Arg2In(&[GLIBC_OPEN_FLAGS]));
    add_cond(&mut m, libc::SYS_read, Cond::Always);
    match kind {
        ThreadKind::Main => {
            add(&mut m, POLLING);
            add(&mut m, MAIN);
            add_cond(&mut m, libc::SYS_ioctl, Cond::IoctlKvm);
            add_cond(
                &mut m,
                libc::SYS_ioctl,
                Cond::IoctlIn(&[TCGETS, TCSETS, TIOCGWINSZ, FIONBIO]),
            );
        }
        ThreadKind::Vcpu => {
            add(&mut m, VCPU);
            add_cond(&mut m, libc::SYS_ioctl, Cond::IoctlKvm);
        }
        ThreadKind::Net => {
            add(&mut m, POLLING);
            add(&mut m, NET);
            add_cond(&mut m, libc::SYS_ioctl, Cond::IoctlIn(&[FIONBIO, FIONREAD]));
        }
        ThreadKind::NineP => {
            add(&mut m, POLLING);
            add(&mut m, NINEP);
            add_cond(&mut m, libc::SYS_ioctl, Cond::IoctlIn(&[FIONBIO]));
        }
        ThreadKind::Control => {
            add(&mut m, CONTROL);
            add_cond(
                &mut m,
                libc::SYS_kill,
                Cond::Arg1In(&[libc::SIGTERM as u64]),
            );
        }
        ThreadKind::Quote => {
            add(&mut m, QUOTE);
            // KVM_SIGNAL_MSI: the completion interrupt the guest registered.
            add_cond(&mut m, libc::SYS_ioctl, Cond::IoctlKvm);
        }
        ThreadKind::Manager => {
            add(&mut m, POLLING);
            add(&mut m, MANAGER);
            add(&mut m, SPAWN);
            add_cond(
                &mut m,
                libc::SYS_prctl,
                Cond::Arg0In(&[PR_SET_NO_NEW_PRIVS]),
            );
            add_cond(
                &mut m,
                libc::SYS_ioctl,
                Cond::IoctlIn(&[FIONBIO, FIONREAD, TCGETS, TIOCGWINSZ]),
            );
            // Stopping its VMs (SIGTERM, then SIGKILL) and checking a recorded pid (signal 0).
            add_cond(
                &mut m,
                libc::SYS_kill,
                Cond::Arg1In(&[0, libc::SIGTERM as u64, libc::SIGKILL as u64]),
            );
        }
        ThreadKind::Spawner => {
            // The union of the children it starts, plus thread creation.
            for child in [ThreadKind::Net, ThreadKind::NineP, ThreadKind::Quote] {
                for (nr, conds) in allowed(child) {
                    for c in conds {
                        if c == Cond::Always {
                            m.insert(nr, vec![Cond::Always]);
                        } else {
                            add_cond(&mut m, nr, c);
                        }
                    }
                }
            }
            add(&mut m, SPAWN);
            add_cond(
                &mut m,
                libc::SYS_prctl,
                Cond::Arg0In(&[PR_SET_NO_NEW_PRIVS]),
            );
        }
    }
    m
}
