//! What a VM process gives up before it builds the VM: file descriptors it inherited (other
//! than stdio and the listening sockets handed to it for port forwards), with
//! `PR_SET_NO_NEW_PRIVS` the ability to gain privileges through exec, and with Landlock (where
//! the kernel has it) access to every file but its own images, shares, outputs, `/dev/kvm`
//! and the few system files set-up reads.

use anyhow::Context;
use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};
use std::collections::HashSet;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use vmm::spec::{SerialSpec, ShareSource, VmSpec};

/// System paths set-up reads (missing ones are skipped): resolver and hosts file for the
/// guest's DNS, /proc for CPU flags and memory figures, /sys for TEE detection.
const SYSTEM_READ: [&str; 4] = ["/etc/hosts", "/etc/resolv.conf", "/proc", "/sys"];
/// Devices the VMM opens read-write.
const DEVICES: [&str; 2] = ["/dev/kvm", "/dev/sev"];

/// The files `spec` reads and writes. Output files are created here (empty, not truncated)
/// so the rule can name the file rather than its whole directory.
pub fn spec_paths(spec: &VmSpec) -> anyhow::Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut read: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
    // Symlinked system files (resolv.conf under /run) are read through their targets.
    for p in ["/etc/hosts", "/etc/resolv.conf"] {
        if let Ok(real) = std::fs::canonicalize(p) {
            read.push(real);
        }
    }
    read.extend(
        [&spec.kernel, &spec.initrd, &spec.igvm, &spec.firmware]
            .into_iter()
            .flatten()
            .cloned(),
    );
    for s in &spec.shares {
        if let ShareSource::Directory(d) = &s.source {
            read.push(d.clone());
        }
    }
    let mut write: Vec<PathBuf> = DEVICES.iter().map(PathBuf::from).collect();
    let outputs = [
        match &spec.serial {
            SerialSpec::File(p) => Some(p),
            _ => None,
        },
        spec.timeline.as_ref(),
        spec.firmware_log.as_ref(),
    ];
    for p in outputs.into_iter().flatten() {
        touch(p)?;
        write.push(p.clone());
    }
    // The variable store is written through; it must exist already (its size is checked).
    if let Some(vars) = spec.firmware_vars.as_ref().filter(|p| p.exists()) {
        write.push(vars.clone());
    }
    Ok((read, write))
}

fn touch(p: &Path) -> anyhow::Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .with_context(|| format!("cannot create '{}'", p.display()))?;
    Ok(())
}

/// Limits this thread and every thread it starts later to reading `read` and reading and
/// writing `read_write` (each a file or a directory tree). Returns how much the kernel
/// enforces (nothing on kernels without Landlock).
pub fn restrict_files(read: &[PathBuf], read_write: &[PathBuf]) -> anyhow::Result<RulesetStatus> {
    let abi = ABI::V5;
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(read, AccessFs::from_read(abi)))?
        .add_rules(path_beneath_rules(read_write, AccessFs::from_all(abi)))?
        .restrict_self()
        .context("landlock_restrict_self")?;
    Ok(status.ruleset)
}

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
    fn landlock_leaves_only_the_named_files() {
        let base = std::env::temp_dir().join(format!("cvmm-landlock-{}", std::process::id()));
        let (allowed, other) = (base.join("share"), base.join("elsewhere"));
        for d in [&allowed, &other] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("f"), b"x").unwrap();
        }
        let out = base.join("timeline.json");
        let spec = VmSpec {
            timeline: Some(out.clone()),
            shares: vec![vmm::spec::ShareSpec {
                tag: "t".into(),
                source: ShareSource::Directory(allowed.clone()),
            }],
            ..VmSpec::default()
        };
        let (read, write) = spec_paths(&spec).unwrap();
        assert!(out.exists(), "output files are created up front");
        // SAFETY: fork in a test; the child restricts itself and reports through its status.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match restrict_files(&read, &write) {
                Ok(RulesetStatus::NotEnforced) => 10,
                Err(_) => 11,
                Ok(_) => {
                    let share_ok = std::fs::read(allowed.join("f")).is_ok();
                    let other_denied = std::fs::read(other.join("f")).is_err();
                    let write_ok = std::fs::write(&out, b"{}").is_ok();
                    let write_share_denied = std::fs::write(allowed.join("g"), b"x").is_err();
                    if share_ok && other_denied && write_ok && write_share_denied {
                        0
                    } else {
                        1
                    }
                }
            };
            // SAFETY: ending the child.
            unsafe { libc::_exit(code) };
        }
        let mut st = 0;
        // SAFETY: waiting for our child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        let _ = std::fs::remove_dir_all(&base);
        assert!(libc::WIFEXITED(st), "status {st:#x}");
        match libc::WEXITSTATUS(st) {
            0 => {}
            10 => println!("SKIPPED: landlock: this kernel does not enforce Landlock"),
            c => panic!("child exit {c}"),
        }
    }

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
