//! The SIGSYS reporter of kill mode: a forbidden syscall traps (SECCOMP_RET_TRAP) into this
//! handler, which writes `cvmm: seccomp: thread 'NAME' made forbidden syscall N` to stderr with
//! async-signal-safe calls only, then re-raises SIGSYS with the default action (the handler is
//! one-shot), so the process still dies of SIGSYS.

use crate::SeccompError;

/// Offset of `si_syscall` in `siginfo_t` on x86-64 (after signo, errno, code, padding and the
/// `si_call_addr` pointer).
const SI_SYSCALL_OFFSET: usize = 24;

/// Installs the handler for the whole process.
pub(crate) fn install_reporter() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is a valid starting value; the fields are then set.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigsys as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_ONSTACK;
    // SAFETY: installing a handler with a valid sigaction; the old one is not needed.
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(SeccompError::Install {
            kind: "process",
            reason: format!("SIGSYS handler: {}", std::io::Error::last_os_error()),
        });
    }
    Ok(())
}

/// Writes `n` in decimal into `buf` from the end; returns where the digits start.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> usize {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            return i;
        }
    }
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let mut name = [0u8; 16];
    let mut digits = [0u8; 20];
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers; si_syscall is an
    // int at a fixed offset for SIGSYS. prctl(PR_GET_NAME) fills at most 16 bytes. write(2),
    // getpid, gettid and tgkill are async-signal-safe and allowed by every filter.
    unsafe {
        let nr = info
            .cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<libc::c_int>()
            .read_unaligned();
        libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr());
        let name_len = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let start = decimal(nr.max(0) as u64, &mut digits);
        let parts: [&[u8]; 5] = [
            b"cvmm: seccomp: thread '",
            &name[..name_len],
            b"' made forbidden syscall ",
            &digits[start..],
            b" (rerun with --seccomp log to audit-log instead)\n",
        ];
        for p in parts {
            libc::write(2, p.as_ptr().cast(), p.len());
        }
        // SA_RESETHAND restored the default action: this SIGSYS ends the process.
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::syscall(libc::SYS_gettid),
            libc::SIGSYS,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_digits() {
        let mut b = [0u8; 20];
        let s = decimal(110, &mut b);
        assert_eq!(&b[s..], b"110");
        let s = decimal(0, &mut b);
        assert_eq!(&b[s..], b"0");
        let s = decimal(u64::MAX, &mut b);
        assert_eq!(&b[s..], b"18446744073709551615");
    }
}
