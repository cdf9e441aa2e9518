//! Each filter, installed in a forked child in kill mode, lets an allowed syscall through and
//! kills the child with SIGSYS on one its kind does not allow. The program is compiled in the
//! parent; the child only calls prctl/seccomp and the probe syscalls (fork-safe).

use super::*;
use std::os::unix::ffi::OsStringExt;

/// Runs `probe` in a child under `kind`'s filter; returns the child's wait status.
fn in_filtered_child(kind: ThreadKind, mode: Mode, probe: impl FnOnce()) -> i32 {
    let prog = program(kind, mode).unwrap().unwrap();
    // SAFETY: fork in a test; the child only makes raw syscalls and _exit()s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        if apply(kind, &prog).is_err() {
            // SAFETY: ending the child without running the parent's destructors.
            unsafe { libc::_exit(3) };
        }
        probe();
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
    status
}

fn killed_by_sigsys(status: i32) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
}

fn exited_ok(status: i32) -> bool {
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

/// A syscall each kind must not be allowed, besides the common probe.
fn forbidden_for(kind: ThreadKind) -> i64 {
    match kind {
        ThreadKind::Net => libc::SYS_openat, // no file access from the NAT
        ThreadKind::NineP | ThreadKind::Vcpu => libc::SYS_socket, // no network
        ThreadKind::Main => libc::SYS_socket,
        ThreadKind::Spawner => libc::SYS_execve,
        ThreadKind::Control => libc::SYS_socket, // it only serves its bound socket
        ThreadKind::Quote => libc::SYS_bind,     // a client only
        ThreadKind::Manager => libc::SYS_execve, // VMs are forked by the launcher
    }
}

#[test]
fn every_kind_allows_its_basics() {
    for kind in ThreadKind::ALL {
        let st = in_filtered_child(kind, Mode::Kill, || {
            // SAFETY: argument-free syscalls.
            unsafe {
                libc::syscall(libc::SYS_getpid);
                libc::syscall(libc::SYS_gettid);
            }
        });
        assert!(exited_ok(st), "{}: status {st:#x}", kind.name());
    }
}

#[test]
fn every_kind_kills_on_a_forbidden_syscall() {
    for kind in ThreadKind::ALL {
        for nr in [FORBIDDEN_PROBE, forbidden_for(kind)] {
            let st = in_filtered_child(kind, Mode::Kill, || {
                // SAFETY: the syscall is refused before it runs (arguments are never read).
                unsafe { libc::syscall(nr, 0, 0, 0) };
            });
            assert!(
                killed_by_sigsys(st),
                "{} syscall {nr}: status {st:#x}",
                kind.name()
            );
        }
    }
}

#[test]
fn log_mode_lets_the_forbidden_syscall_through() {
    let st = in_filtered_child(ThreadKind::Vcpu, Mode::Log, || {
        // SAFETY: getppid has no arguments.
        unsafe { libc::syscall(FORBIDDEN_PROBE) };
    });
    assert!(exited_ok(st), "status {st:#x}");
}

#[test]
fn vcpu_ioctls_are_limited_to_kvm_requests() {
    let kvm_run = 0xae80u64;
    let st = in_filtered_child(ThreadKind::Vcpu, Mode::Kill, || {
        // SAFETY: ioctl on an invalid fd fails with EBADF once the filter lets it through.
        unsafe { libc::ioctl(-1, kvm_run as _) };
    });
    assert!(exited_ok(st), "KVM_RUN allowed: {st:#x}");
    let st = in_filtered_child(ThreadKind::Vcpu, Mode::Kill, || {
        // SAFETY: as above; TCSETS is not a KVM request.
        unsafe { libc::ioctl(-1, 0x5402 as _) };
    });
    assert!(killed_by_sigsys(st), "TCSETS refused: {st:#x}");
}

#[test]
fn the_spawner_holds_the_union_of_its_children() {
    let spawner = allowed(ThreadKind::Spawner);
    for child in [ThreadKind::Net, ThreadKind::NineP, ThreadKind::Quote] {
        for nr in allowed(child).keys() {
            assert!(spawner.contains_key(nr), "{} syscall {nr}", child.name());
        }
    }
    assert!(spawner.contains_key(&libc::SYS_clone3));
    assert!(!allowed(ThreadKind::Vcpu).contains_key(&libc::SYS_clone3));
}

#[test]
fn the_manager_may_stop_its_vms_but_not_debug_or_remount_anything() {
    let signal = |sig: i32| {
        in_filtered_child(ThreadKind::Manager, Mode::Kill, move || {
            // SAFETY: kill of a pid that cannot exist fails with ESRCH once allowed.
            unsafe { libc::syscall(libc::SYS_kill, i32::MAX, sig) };
        })
    };
    for sig in [0, libc::SIGTERM, libc::SIGKILL] {
        assert!(exited_ok(signal(sig)), "signal {sig} allowed");
    }
    assert!(killed_by_sigsys(signal(libc::SIGSTOP)), "SIGSTOP refused");
    for nr in [
        libc::SYS_ptrace,
        libc::SYS_mount,
        libc::SYS_setns,
        libc::SYS_bpf,
    ] {
        let st = in_filtered_child(ThreadKind::Manager, Mode::Kill, || {
            // SAFETY: refused before it runs.
            unsafe { libc::syscall(nr, 0, 0, 0) };
        });
        assert!(killed_by_sigsys(st), "syscall {nr}: status {st:#x}");
    }
}

#[test]
fn the_manager_may_manage_its_state_directory() {
    // What std::fs does for a VM directory on x86_64: mkdir, create and write a file, rename
    // it over another, chmod, stat, unlink, rmdir (through glibc, as the manager does).
    let dir = std::env::temp_dir().join(format!("cvmm-seccomp-mgr-fs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let c = |p: std::path::PathBuf| std::ffi::CString::new(p.into_os_string().into_vec()).unwrap();
    let (d, tmp, rec) = (
        c(dir.clone()),
        c(dir.join("vm.json.tmp")),
        c(dir.join("vm.json")),
    );
    let st = in_filtered_child(ThreadKind::Manager, Mode::Kill, || {
        // SAFETY: libc calls with valid C strings prepared before the fork; the child _exit()s.
        unsafe {
            let ok = libc::mkdir(d.as_ptr(), 0o700) == 0
                && {
                    let fd = libc::open(
                        tmp.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                        0o600,
                    );
                    fd >= 0
                        && libc::write(fd, b"{}".as_ptr().cast(), 2) == 2
                        && libc::fsync(fd) == 0
                        && libc::close(fd) == 0
                }
                && libc::rename(tmp.as_ptr(), rec.as_ptr()) == 0
                && libc::chmod(rec.as_ptr(), 0o600) == 0
                && libc::access(rec.as_ptr(), libc::R_OK) == 0
                && libc::unlink(rec.as_ptr()) == 0
                && libc::rmdir(d.as_ptr()) == 0;
            if !ok {
                libc::_exit(4);
            }
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    assert!(exited_ok(st), "status {st:#x}");
}

#[test]
fn modes_parse_and_bad_ones_are_named() {
    assert_eq!("kill".parse::<Mode>().unwrap(), Mode::Kill);
    assert_eq!("log".parse::<Mode>().unwrap(), Mode::Log);
    assert_eq!("off".parse::<Mode>().unwrap(), Mode::Off);
    let e = "strict".parse::<Mode>().unwrap_err().to_string();
    assert!(e.contains("'strict'"), "{e}");
    assert!(program(ThreadKind::Main, Mode::Off).unwrap().is_none());
}

#[test]
fn kill_mode_names_the_thread_and_the_syscall_before_dying() {
    let prog = program(ThreadKind::Net, Mode::Kill).unwrap().unwrap();
    let mut fds = [0; 2];
    // SAFETY: creating a pipe into a local array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fork in a test; the child only makes raw syscalls and _exit()s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: redirecting the child's stderr into the pipe, naming the thread, installing
        // the reporter and the filter, then the forbidden call.
        unsafe {
            libc::dup2(fds[1], 2);
            libc::prctl(libc::PR_SET_NAME, c"virtio-net".as_ptr());
            if sigsys::install_reporter().is_err() || apply(ThreadKind::Net, &prog).is_err() {
                libc::_exit(3);
            }
            libc::syscall(FORBIDDEN_PROBE);
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end, reading the child's stderr, reaping it.
    let (status, text) = unsafe {
        libc::close(fds[1]);
        let mut buf = [0u8; 512];
        let mut len = 0;
        while len < buf.len() {
            let n = libc::read(fds[0], buf[len..].as_mut_ptr().cast(), buf.len() - len);
            if n <= 0 {
                break;
            }
            len += n as usize;
        }
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
        libc::close(fds[0]);
        (st, String::from_utf8_lossy(&buf[..len]).into_owned())
    };
    assert!(killed_by_sigsys(status), "status {status:#x}");
    assert_eq!(
        text,
        format!(
            "cvmm: seccomp: thread 'virtio-net' made forbidden syscall {FORBIDDEN_PROBE} \
             (rerun with --seccomp log to audit-log instead)\n"
        )
    );
}

#[test]
fn glibc_style_read_only_opens_pass_and_others_do_not() {
    for kind in ThreadKind::ALL {
        let st = in_filtered_child(kind, Mode::Kill, || {
            // SAFETY: openat with a valid C string; the fd is closed by _exit.
            unsafe {
                libc::syscall(
                    libc::SYS_openat,
                    libc::AT_FDCWD,
                    c"/proc/sys/vm/overcommit_memory".as_ptr(),
                    libc::O_RDONLY | libc::O_CLOEXEC,
                )
            };
        });
        assert!(exited_ok(st), "{}: status {st:#x}", kind.name());
    }
    let st = in_filtered_child(ThreadKind::Net, Mode::Kill, || {
        // SAFETY: as above; O_WRONLY|O_CREAT is refused before the path is read.
        unsafe {
            libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                c"/tmp/x".as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                0o600,
            )
        };
    });
    assert!(killed_by_sigsys(st), "status {st:#x}");
}

#[test]
fn tee_launch_commands_are_refused_once_filters_are_on() {
    for kind in [ThreadKind::Main, ThreadKind::Vcpu] {
        let st = in_filtered_child(kind, Mode::Kill, || {
            // SAFETY: the filter refuses the call before the (null) argument is read.
            unsafe { libc::ioctl(-1, lists::KVM_MEMORY_ENCRYPT_OP as _, 0) };
        });
        assert!(killed_by_sigsys(st), "{}: status {st:#x}", kind.name());
    }
}

#[test]
fn quote_workers_reach_a_qgs_and_signal_msis_but_nothing_else() {
    // A vsock client socket and a (failing) KVM_SIGNAL_MSI are allowed.
    let st = in_filtered_child(ThreadKind::Quote, Mode::Kill, || {
        // SAFETY: socket(2) with constant arguments; the fd is closed by _exit.
        unsafe { libc::syscall(libc::SYS_socket, libc::AF_VSOCK, libc::SOCK_STREAM, 0) };
        // SAFETY: KVM_SIGNAL_MSI (_IOW(0xAE, 0xa5, 32 bytes)) on an invalid fd: EBADF.
        unsafe { libc::ioctl(-1, 0x4020_aea5u64 as _, 0) };
    });
    assert!(exited_ok(st), "status {st:#x}");
    // Not a server, and no launch commands.
    for nr in [libc::SYS_bind, libc::SYS_listen, libc::SYS_accept4] {
        let st = in_filtered_child(ThreadKind::Quote, Mode::Kill, || {
            // SAFETY: refused before the (invalid) arguments are read.
            unsafe { libc::syscall(nr, -1, 0, 0) };
        });
        assert!(killed_by_sigsys(st), "syscall {nr}: status {st:#x}");
    }
    let st = in_filtered_child(ThreadKind::Quote, Mode::Kill, || {
        // SAFETY: refused before the (null) argument is read.
        unsafe { libc::ioctl(-1, lists::KVM_MEMORY_ENCRYPT_OP as _, 0) };
    });
    assert!(killed_by_sigsys(st), "status {st:#x}");
}

/// The quote worker's bounded connect (tee::quote): a socket made non-blocking with fcntl,
/// connect, poll for the time left, SO_ERROR, a short sleep between tries, blocking again.
#[test]
fn quote_workers_connect_under_a_deadline() {
    let st = in_filtered_child(ThreadKind::Quote, Mode::Kill, || {
        // SAFETY: raw syscalls on a socket this child owns, with valid local arguments; the
        // connect to 127.0.0.1:1 may fail (refused); only whether the calls are allowed matters.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_port = 1u16.to_be();
            sa.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
            libc::connect(
                fd,
                &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN | libc::POLLOUT,
                revents: 0,
            };
            libc::poll(&mut p, 1, 1);
            let mut err: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            );
            let ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            };
            libc::nanosleep(&ts, std::ptr::null_mut());
            libc::fcntl(fd, libc::F_SETFL, flags);
            libc::close(fd);
        }
    });
    assert!(exited_ok(st), "status {st:#x}");
}
