//! Thin safe wrappers over the few syscalls the directory share needs (openat2/openat, fstat,
//! pread, lseek, getdents64, readlinkat, fstatfs). All `unsafe` of the 9p module lives here.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::share::Errno;

/// `struct open_how` of openat2(2) (libc's is `#[non_exhaustive]`, so it cannot be built here).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// openat2(2) with the given flags and RESOLVE_* bits. `Err(ENOSYS)` means the kernel (or a
/// seccomp filter) lacks it.
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    resolve: u64,
) -> Result<OwnedFd, Errno> {
    let how = OpenHow {
        flags: flags as u32 as u64,
        mode: 0,
        resolve,
    };
    let mut retries = 8;
    loop {
        // SAFETY: `path` is NUL-terminated, `how` is a valid open_how of the size passed, and
        // the kernel only reads both during the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        match ret {
            // SAFETY: a non-negative return is a new fd that nothing else owns.
            fd if fd >= 0 => return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
            _ => match Errno::last() {
                Errno(libc::EINTR) | Errno(libc::EAGAIN) if retries > 0 => retries -= 1,
                e => return Err(e),
            },
        }
    }
}

/// openat(2) of one name relative to `dir`.
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> Result<OwnedFd, Errno> {
    loop {
        // SAFETY: `name` is NUL-terminated and only read during the call.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: a non-negative return is a new fd that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        match Errno::last() {
            Errno(libc::EINTR) => continue,
            e => return Err(e),
        }
    }
}

pub fn fstat(fd: BorrowedFd<'_>) -> Result<libc::stat, Errno> {
    let mut st = MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: `st` is a writable stat buffer; fstat fills it on success.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fstat succeeded, so the buffer is initialised (it was zeroed anyway).
    Ok(unsafe { st.assume_init() })
}

pub fn fstatfs(fd: BorrowedFd<'_>) -> Result<libc::statfs, Errno> {
    let mut st = MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `st` is a writable statfs buffer; fstatfs fills it on success.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) } < 0 {
        return Err(Errno::last());
    }
    // SAFETY: fstatfs succeeded, so the buffer is initialised (it was zeroed anyway).
    Ok(unsafe { st.assume_init() })
}

/// pread(2) into `buf`, retried on EINTR; returns the byte count (0 at end of file).
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
    let offset = i64::try_from(offset).map_err(|_| Errno(libc::EINVAL))?;
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
        let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset) };
        if n >= 0 {
            return Ok(n as usize);
        }
        match Errno::last() {
            Errno(libc::EINTR) => continue,
            e => return Err(e),
        }
    }
}

/// lseek(2) to an absolute position (a directory cookie for directories).
pub fn seek_to(fd: BorrowedFd<'_>, offset: u64) -> Result<(), Errno> {
    let offset = i64::try_from(offset).map_err(|_| Errno(libc::EINVAL))?;
    // SAFETY: lseek takes no pointers.
    if unsafe { libc::lseek(fd.as_raw_fd(), offset, libc::SEEK_SET) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// getdents64(2) into `buf`; returns the bytes filled (0 at the end of the directory).
pub fn getdents64(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call.
    let n = unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            fd.as_raw_fd(),
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(Errno::last());
    }
    Ok(n as usize)
}

/// readlinkat(fd, "") of a symlink opened with O_PATH|O_NOFOLLOW.
pub fn readlink_fd(fd: BorrowedFd<'_>) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: the empty path is NUL-terminated and `buf` is writable for `buf.len()` bytes.
    let n = unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(Errno::last());
    }
    buf.truncate(n as usize);
    Ok(buf)
}
