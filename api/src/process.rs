//! VM processes: spawn `<exe> vm --spec FILE [--control SOCKET]` with the forwarded port's listening socket as
//! fd 3, open a pidfd to watch and signal it (no PID-reuse races), and read a process's start
//! time and arguments so a re-adopted PID is known to be that VM's process; find and kill VM
//! processes that a manager killed mid-CreateVm left without a record.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The fd number the VM process finds its listening socket at.
pub const LISTEN_FD: RawFd = 3;

/// Starts the VM program, with its control socket at `control` when given. Its stdout and
/// stderr go to `log`; it gets its own session so a terminal's Ctrl-C to the manager does not
/// reach it; only `listener` is inherited (as fd 3). An error is the program's start failing.
pub fn spawn_vm(
    exe: &Path,
    spec: &Path,
    log: File,
    listener: &impl AsRawFd,
    control: Option<&Path>,
) -> io::Result<Child> {
    let out = log;
    let err = out.try_clone()?;
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.arg("vm").arg("--spec").arg(spec);
    if let Some(c) = control {
        cmd.arg("--control").arg(c);
    }
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (dup2, fcntl, setsid) on fds the parent keeps open until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if fd == LISTEN_FD {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(fd, LISTEN_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Forked by the launcher thread, outside the manager's own seccomp filter (which the VM
    // process would otherwise inherit through execve).
    seccomp::run_unfiltered(move || cmd.spawn())?
}

/// Opens a pidfd for `pid` (Linux 5.3+).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` through a pidfd; a process that has already exited is not an error.
pub fn pidfd_signal(pidfd: &impl AsRawFd, signal: i32) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we own; the siginfo pointer may be null.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<u8>(),
            0,
        )
    };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err);
        }
    }
    Ok(())
}

/// Pids of the processes whose arguments hold `vm --spec <spec>`, as [`spawn_vm`] gives a VM.
pub fn vm_processes(spec: &Path) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| runs_vm_spec(*pid, spec))
        .collect()
}

/// Whether process `pid`'s arguments hold `vm --spec <spec>`: it is the VM process
/// [`spawn_vm`] started for that spec, not some other process that got its pid.
pub fn runs_vm_spec(pid: i32, spec: &Path) -> bool {
    let want: [&[u8]; 3] = [b"vm", b"--spec", spec.as_os_str().as_encoded_bytes()];
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(3).any(|w| w == want)
}

/// Sends SIGKILL to `pid` through a pidfd and waits up to `limit` for it to exit. Returns
/// whether it is gone (a process that already left counts as gone).
pub fn kill_and_wait(pid: i32, limit: Duration) -> io::Result<bool> {
    let fd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(true),
        Err(e) => return Err(e),
    };
    pidfd_signal(&fd, libc::SIGKILL)?;
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n > 0)
}

/// The process start time (clock ticks since boot, field 22 of `/proc/PID/stat`).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable_and_stable() {
        let me = std::process::id() as i32;
        let t = start_time(me).expect("own /proc stat");
        assert_eq!(start_time(me), Some(t));
        assert_eq!(start_time(-5), None);
    }

    #[test]
    fn a_vm_process_is_found_by_its_spec_and_killed() {
        let spec = std::env::temp_dir().join(format!("cvmm-proc-test-{}.json", std::process::id()));
        // `sh -c SCRIPT vm --spec SPEC` carries the arguments a VM process has.
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30; exit 0", "vm", "--spec"])
            .arg(&spec)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // While `sh` forks `sleep`, the child briefly carries the same arguments: wait for
        // the steady state (bounded), in which only `sh` has them.
        let mut found = Vec::new();
        for _ in 0..100 {
            found = vm_processes(&spec);
            if found == [pid] {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(found, [pid]);
        assert!(runs_vm_spec(pid, &spec));
        assert!(!runs_vm_spec(pid, &spec.with_extension("other")));
        assert!(!runs_vm_spec(std::process::id() as i32, &spec));
        assert!(vm_processes(&spec.with_extension("other")).is_empty());
        assert!(kill_and_wait(pid, Duration::from_secs(10)).unwrap());
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(kill_and_wait(pid, Duration::from_secs(1)).unwrap());
    }

    #[test]
    fn pidfd_of_a_missing_process_fails() {
        assert!(pidfd_open(i32::MAX).is_err());
    }
}
