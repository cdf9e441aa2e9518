//! What a VM process gives up before it builds the VM: file descriptors it inherited (other
//! than stdio and the listening sockets handed to it for port forwards) and, with
//! `PR_SET_NO_NEW_PRIVS`, the ability to gain privileges through exec.

use anyhow::Context;
use std::collections::HashSet;
use std::os::fd::RawFd;

/// Closes every inherited fd above 2 that is not in `keep`; returns how many were closed.
pub fn close_inherited_fds(keep: &[RawFd]) -> anyhow::Result<usize> {
    let keep: HashSet<RawFd> = keep.iter().copied().collect();
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").context("listing /proc/self/fd")? {
        let name = entry.context("reading /proc/self/fd")?.file_name();
        if let Some(fd) = name.to_str().and_then(|n| n.parse::<RawFd>().ok()) {
            fds.push(fd);
        }
    }
    // The directory handle used for the listing is in `fds` too; it is closed by now, and
    // closing a number that is no longer open is harmless (EBADF).
    let mut closed = 0;
    for fd in fds.into_iter().filter(|fd| *fd > 2 && !keep.contains(fd)) {
        // SAFETY: closing an fd this process inherited and never wrapped in an owner.
        if unsafe { libc::close(fd) } == 0 {
            closed += 1;
        }
    }
    Ok(closed)
}

/// Sets `PR_SET_NO_NEW_PRIVS` for this thread and every thread it creates later.
pub fn no_new_privs() -> anyhow::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("PR_SET_NO_NEW_PRIVS");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn only_kept_fds_survive() {
        let a = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        let b = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        // Run in a child so the test harness's own fds are not touched.
        // SAFETY: fork in a test; the child only makes syscalls and _exit()s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = close_inherited_fds(&[b]).is_ok()
                // SAFETY: probing fds with F_GETFD.
                && unsafe { libc::fcntl(a, libc::F_GETFD) } == -1
                && unsafe { libc::fcntl(b, libc::F_GETFD) } >= 0
                && unsafe { libc::fcntl(2, libc::F_GETFD) } >= 0;
            // SAFETY: ending the child.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut st = 0;
        // SAFETY: waiting for our child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "status {st:#x}"
        );
        // SAFETY: closing the test's own fds.
        unsafe {
            libc::close(a);
            libc::close(b);
        }
    }
}
