//! [`MemoryShare`]: a flat, read-only directory of files held in memory (for example
//! `environment` or `cert.pem`), so the manager needs no temporary directory on the host.
//!
//! Everything is root-owned; the directory is mode 0555, files keep the mode they were added
//! with (permission bits only). Qid paths: 1 for the root, 2 + index for the files.

use std::time::{SystemTime, UNIX_EPOCH};

use super::proto::{Qid, QT_DIR, QT_FILE};
use super::share::{Attr, DirEntry, Errno, ShareError, StatFs};

/// Longest file name accepted (Linux NAME_MAX).
pub const NAME_MAX: usize = 255;
const BLOCK: u64 = 4096;
const V9FS_MAGIC: u32 = 0x0102_1997;

struct MemoryFile {
    name: Vec<u8>,
    data: Vec<u8>,
    mode: u32,
}

/// Files given as name → bytes, served as one flat directory.
pub struct MemoryShare {
    files: Vec<MemoryFile>,
    mtime: (u64, u64),
}

/// A node of a memory share: the root directory or the file at an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryNode {
    Root,
    File(usize),
}

impl MemoryNode {
    pub fn qid(self) -> Qid {
        match self {
            MemoryNode::Root => Qid {
                ty: QT_DIR,
                version: 0,
                path: 1,
            },
            MemoryNode::File(i) => Qid {
                ty: QT_FILE,
                version: 0,
                path: 2 + i as u64,
            },
        }
    }
}

impl Default for MemoryShare {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryShare {
    /// An empty share; all timestamps are the time of this call.
    pub fn new() -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            files: Vec::new(),
            mtime: (now.as_secs(), u64::from(now.subsec_nanos())),
        }
    }

    /// Adds a file. `mode` keeps only its permission bits (use 0o444 or 0o644). The name must
    /// be a single path component: not empty, not `.`/`..`, no `/` or NUL, at most 255 bytes.
    pub fn add_file(&mut self, name: &str, data: Vec<u8>, mode: u32) -> Result<(), ShareError> {
        let bad = |reason| ShareError::BadName {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() || name == "." || name == ".." {
            return Err(bad("empty, `.` or `..`"));
        }
        if name.contains(['/', '\0']) {
            return Err(bad("contains `/` or NUL"));
        }
        if name.len() > NAME_MAX {
            return Err(bad("longer than 255 bytes"));
        }
        if self.files.iter().any(|f| f.name == name.as_bytes()) {
            return Err(ShareError::DuplicateName {
                name: name.to_owned(),
            });
        }
        self.files.push(MemoryFile {
            name: name.as_bytes().to_vec(),
            data,
            mode: mode & 0o777,
        });
        Ok(())
    }

    /// Builder form of [`MemoryShare::add_file`].
    pub fn with_file(mut self, name: &str, data: Vec<u8>, mode: u32) -> Result<Self, ShareError> {
        self.add_file(name, data, mode)?;
        Ok(self)
    }

    pub fn root(&self) -> MemoryNode {
        MemoryNode::Root
    }

    fn file(&self, node: MemoryNode) -> Result<&MemoryFile, Errno> {
        match node {
            MemoryNode::Root => Err(Errno(libc::EISDIR)),
            MemoryNode::File(i) => self.files.get(i).ok_or(Errno(libc::ESTALE)),
        }
    }

    pub fn walk(&self, from: MemoryNode, name: &[u8]) -> Result<MemoryNode, Errno> {
        if from != MemoryNode::Root {
            return Err(Errno(libc::ENOTDIR));
        }
        if name == b"." || name == b".." {
            return Ok(MemoryNode::Root);
        }
        let index = self.files.iter().position(|f| f.name == name);
        index.map(MemoryNode::File).ok_or(Errno(libc::ENOENT))
    }

    pub fn getattr(&self, node: MemoryNode) -> Attr {
        let (mode, nlink, size) = match self.file(node) {
            Ok(f) => (libc::S_IFREG | f.mode, 1, f.data.len() as u64),
            Err(_) => (libc::S_IFDIR | 0o555, 2, BLOCK),
        };
        Attr {
            mode,
            nlink,
            size,
            blksize: BLOCK,
            blocks: size.div_ceil(512),
            atime: self.mtime,
            mtime: self.mtime,
            ctime: self.mtime,
            ..Attr::default()
        }
    }

    pub fn open_node(&self, node: MemoryNode) -> Result<(), Errno> {
        match node {
            MemoryNode::Root => Ok(()),
            MemoryNode::File(_) => self.file(node).map(|_| ()),
        }
    }

    pub fn read(
        &self,
        node: MemoryNode,
        offset: u64,
        count: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), Errno> {
        let data = &self.file(node)?.data;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(count as usize).min(data.len());
        out.extend_from_slice(&data[start..end]);
        Ok(())
    }

    /// Entry `i` (0 = `.`, 1 = `..`, then the files) carries offset `i + 1`.
    pub fn readdir(
        &self,
        node: MemoryNode,
        offset: u64,
        emit: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<(), Errno> {
        if node != MemoryNode::Root {
            return Err(Errno(libc::ENOTDIR));
        }
        let dots = [b".".as_slice(), b"..".as_slice()].map(|n| (MemoryNode::Root, n));
        let files = self
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| (MemoryNode::File(i), &f.name[..]));
        let all = dots.into_iter().chain(files).enumerate();
        for (i, (node, name)) in all.skip(usize::try_from(offset).unwrap_or(usize::MAX)) {
            let dtype = if node == MemoryNode::Root {
                libc::DT_DIR
            } else {
                libc::DT_REG
            };
            let entry = DirEntry {
                qid: node.qid(),
                offset: i as u64 + 1,
                dtype,
                name: name.to_vec(),
            };
            if !emit(entry) {
                break;
            }
        }
        Ok(())
    }

    pub fn statfs(&self) -> StatFs {
        let bytes: u64 = self.files.iter().map(|f| f.data.len() as u64).sum();
        StatFs {
            fs_type: V9FS_MAGIC,
            bsize: BLOCK as u32,
            blocks: bytes.div_ceil(BLOCK),
            files: self.files.len() as u64 + 1,
            namelen: NAME_MAX as u32,
            ..StatFs::default()
        }
    }
}
