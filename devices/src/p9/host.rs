//! [`DirectoryShare`]: a host directory served read-only, confined beneath it.
//!
//! Confinement never relies on string prefixes. Each node remembers its path below the share
//! root as normalised components (no `.`/`..`, no `/`), and every lookup resolves that path
//! again from the root directory fd with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS |
//! RESOLVE_NO_SYMLINKS)` and `O_NOFOLLOW`: a symlink (even one swapped in since the last walk)
//! can be walked *to* but never *through*, `..` is a pop of the remembered path (at the root it
//! stays at the root) and a directory moved out of the share is no longer reachable by path.
//! Without openat2 (ENOSYS) the same walk is done one component at a time with
//! `openat(O_PATH | O_NOFOLLOW)`, intermediate components with `O_DIRECTORY`. Walked fids hold
//! an `O_PATH` fd; Tlopen re-resolves the path with real read flags and checks that it is still
//! the same inode (ESTALE otherwise). Only directories and regular files can be opened.

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::proto::{Qid, QT_DIR, QT_FILE, QT_SYMLINK};
use super::share::{Attr, DirEntry, Errno, ShareError, StatFs};
use super::sys;

const RESOLVE: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_SYMLINKS;
const PATH_FLAGS: i32 = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
const DIRENT_BUF: usize = 16 * 1024;

/// A host directory served read-only.
pub struct DirectoryShare {
    root: Arc<OwnedFd>,
    root_id: (u64, u64),
    root_qid: Qid,
    host_path: PathBuf,
    use_openat2: bool,
}

/// A walked file of a directory share.
#[derive(Clone)]
pub struct HostNode {
    fd: Arc<OwnedFd>,
    path: Vec<Vec<u8>>,
    id: (u64, u64),
    file_type: u32,
    qid: Qid,
}

/// A node opened for reading (its own fd, so directory positions are per fid).
pub struct HostOpen {
    fd: OwnedFd,
    is_dir: bool,
}

fn qid_of(st: &libc::stat) -> Qid {
    let ty = match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => QT_DIR,
        libc::S_IFLNK => QT_SYMLINK,
        _ => QT_FILE,
    };
    Qid {
        ty,
        version: 0,
        path: st.st_ino,
    }
}

fn qid_type_of_dtype(dtype: u8) -> u8 {
    match dtype {
        libc::DT_DIR => QT_DIR,
        libc::DT_LNK => QT_SYMLINK,
        _ => QT_FILE,
    }
}

fn time(sec: i64, nsec: i64) -> (u64, u64) {
    (sec as u64, nsec as u64)
}

impl DirectoryShare {
    /// Opens `path` (which must be a directory) to be served read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ShareError> {
        let path = path.as_ref();
        let open_err = |source| ShareError::Open {
            path: path.to_owned(),
            source,
        };
        let fd: OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOTDIR) => ShareError::NotDirectory {
                    path: path.to_owned(),
                },
                _ => open_err(e),
            })?
            .into();
        let st = sys::fstat(fd.as_fd())
            .map_err(|Errno(e)| open_err(std::io::Error::from_raw_os_error(e)))?;
        let use_openat2 = !matches!(
            sys::openat2(fd.as_fd(), c".", PATH_FLAGS, RESOLVE),
            Err(Errno(libc::ENOSYS))
        );
        if !use_openat2 {
            tracing::warn!(path = %path.display(), "openat2 unavailable; 9p walks use openat per component");
        }
        Ok(Self {
            root: Arc::new(fd),
            root_id: (st.st_dev, st.st_ino),
            root_qid: qid_of(&st),
            host_path: path.to_owned(),
            use_openat2,
        })
    }

    /// The host directory this share serves.
    pub fn host_path(&self) -> &Path {
        &self.host_path
    }

    /// Test hook: walk with the openat fallback even where openat2 exists.
    #[cfg(test)]
    pub(crate) fn without_openat2(mut self) -> Self {
        self.use_openat2 = false;
        self
    }

    /// Opens the path `comps` below the root with `flags` (O_NOFOLLOW and O_CLOEXEC added).
    fn resolve(&self, comps: &[Vec<u8>], flags: i32) -> Result<OwnedFd, Errno> {
        let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        if comps.is_empty() {
            return sys::openat(self.root.as_fd(), c".", flags);
        }
        if self.use_openat2 {
            let path = CString::new(comps.join(&b'/')).map_err(|_| Errno(libc::EINVAL))?;
            match sys::openat2(self.root.as_fd(), &path, flags, RESOLVE) {
                Err(Errno(libc::ENOSYS)) => {}
                other => return other,
            }
        }
        let mut dir: Option<OwnedFd> = None;
        for (i, comp) in comps.iter().enumerate() {
            let name = CString::new(comp.as_slice()).map_err(|_| Errno(libc::EINVAL))?;
            let last = i + 1 == comps.len();
            let step = if last {
                flags
            } else {
                PATH_FLAGS | libc::O_DIRECTORY
            };
            let from = dir.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
            let fd = sys::openat(from, &name, step)?;
            dir = Some(fd);
        }
        dir.ok_or(Errno(libc::EIO))
    }

    fn node_at(&self, path: Vec<Vec<u8>>) -> Result<HostNode, Errno> {
        let fd = if path.is_empty() {
            self.root.clone()
        } else {
            Arc::new(self.resolve(&path, libc::O_PATH)?)
        };
        let st = sys::fstat(fd.as_fd())?;
        Ok(HostNode {
            fd,
            path,
            id: (st.st_dev, st.st_ino),
            file_type: st.st_mode & libc::S_IFMT,
            qid: qid_of(&st),
        })
    }

    pub fn root(&self) -> Result<HostNode, Errno> {
        self.node_at(Vec::new())
    }

    pub fn walk(&self, from: &HostNode, name: &[u8]) -> Result<HostNode, Errno> {
        if from.file_type != libc::S_IFDIR {
            return Err(Errno(libc::ENOTDIR));
        }
        let mut path = from.path.clone();
        match name {
            b"." => return Ok(from.clone()),
            b".." => {
                path.pop();
            }
            _ => path.push(name.to_vec()),
        }
        self.node_at(path)
    }

    pub fn getattr(&self, node: &HostNode) -> Result<Attr, Errno> {
        let st = sys::fstat(node.fd.as_fd())?;
        Ok(Attr {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            nlink: st.st_nlink,
            rdev: st.st_rdev,
            size: st.st_size as u64,
            blksize: st.st_blksize as u64,
            blocks: st.st_blocks as u64,
            atime: time(st.st_atime, st.st_atime_nsec),
            mtime: time(st.st_mtime, st.st_mtime_nsec),
            ctime: time(st.st_ctime, st.st_ctime_nsec),
        })
    }

    pub fn open_node(&self, node: &HostNode) -> Result<HostOpen, Errno> {
        let (flags, is_dir) = match node.file_type {
            libc::S_IFDIR => (libc::O_RDONLY | libc::O_DIRECTORY, true),
            libc::S_IFREG => (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY, false),
            libc::S_IFLNK => return Err(Errno(libc::ELOOP)),
            _ => return Err(Errno(libc::EACCES)),
        };
        let fd = self.resolve(&node.path, flags)?;
        let st = sys::fstat(fd.as_fd())?;
        if (st.st_dev, st.st_ino) != node.id {
            tracing::debug!(path = ?String::from_utf8_lossy(&node.path.join(&b'/')), "9p: file replaced since walk");
            return Err(Errno(libc::ESTALE));
        }
        Ok(HostOpen { fd, is_dir })
    }

    pub fn readdir(
        &self,
        node: &HostNode,
        open: &HostOpen,
        offset: u64,
        emit: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<(), Errno> {
        if !open.is_dir {
            return Err(Errno(libc::ENOTDIR));
        }
        sys::seek_to(open.fd.as_fd(), offset)?;
        let mut buf = vec![0u8; DIRENT_BUF];
        loop {
            let filled = sys::getdents64(open.fd.as_fd(), &mut buf)?;
            if filled == 0 {
                return Ok(());
            }
            for entry in (Dirents {
                buf: &buf[..filled],
            }) {
                let entry = entry?;
                let qid = if entry.name == b".." && node.path.is_empty() {
                    self.root_qid
                } else {
                    Qid {
                        ty: qid_type_of_dtype(entry.dtype),
                        version: 0,
                        path: entry.ino,
                    }
                };
                let entry = DirEntry {
                    qid,
                    offset: entry.off,
                    dtype: entry.dtype,
                    name: entry.name.to_vec(),
                };
                if !emit(entry) {
                    return Ok(());
                }
            }
        }
    }

    pub fn readlink(&self, node: &HostNode) -> Result<Vec<u8>, Errno> {
        if node.file_type != libc::S_IFLNK {
            return Err(Errno(libc::EINVAL));
        }
        sys::readlink_fd(node.fd.as_fd())
    }

    pub fn statfs(&self, node: &HostNode) -> Result<StatFs, Errno> {
        let st = sys::fstatfs(node.fd.as_fd())?;
        Ok(StatFs {
            fs_type: st.f_type as u32,
            bsize: st.f_bsize as u32,
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            fsid: self.root_id.0,
            namelen: st.f_namelen as u32,
        })
    }
}

impl HostNode {
    pub fn qid(&self) -> Qid {
        self.qid
    }
}

impl HostOpen {
    /// Appends up to `count` bytes read at `offset` to `out`.
    pub fn read(&self, offset: u64, count: u32, out: &mut Vec<u8>) -> Result<(), Errno> {
        if self.is_dir {
            return Err(Errno(libc::EISDIR));
        }
        let start = out.len();
        out.resize(start + count as usize, 0);
        let mut done = 0usize;
        while done < count as usize {
            match sys::pread(
                self.fd.as_fd(),
                &mut out[start + done..],
                offset.saturating_add(done as u64),
            ) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) => {
                    out.truncate(start);
                    return Err(e);
                }
            }
        }
        out.truncate(start + done);
        Ok(())
    }
}

/// One raw `linux_dirent64` record.
struct RawDirent<'a> {
    ino: u64,
    off: u64,
    dtype: u8,
    name: &'a [u8],
}

/// Iterator over the records getdents64 filled in; a malformed record ends it with EIO.
struct Dirents<'a> {
    buf: &'a [u8],
}

impl<'a> Iterator for Dirents<'a> {
    type Item = Result<RawDirent<'a>, Errno>;

    fn next(&mut self) -> Option<Self::Item> {
        const FIXED: usize = 19; // ino[8] off[8] reclen[2] type[1]
        if self.buf.is_empty() {
            return None;
        }
        let u64_at = |b: &[u8], at: usize| {
            b.get(at..at + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_ne_bytes)
        };
        let reclen = self
            .buf
            .get(16..18)
            .map(|s| usize::from(u16::from_ne_bytes([s[0], s[1]])));
        let record = match reclen {
            Some(len) if len > FIXED && len <= self.buf.len() => &self.buf[..len],
            _ => {
                self.buf = &[];
                return Some(Err(Errno(libc::EIO)));
            }
        };
        self.buf = &self.buf[record.len()..];
        let name = &record[FIXED..];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        Some(Ok(RawDirent {
            ino: u64_at(record, 0).unwrap_or(0),
            off: u64_at(record, 8).unwrap_or(0),
            dtype: record[18],
            name,
        }))
    }
}
