//! What a 9p share serves: the [`Share`] enum over the two backends, the per-fid node and open
//! state they hand out, and the attribute records the server encodes.

use super::host::{DirectoryShare, HostNode, HostOpen};
use super::memory::{MemoryNode, MemoryShare};
use super::proto::Qid;

/// Why a share could not be set up (host side; never caused by the guest).
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("cannot open share directory {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("share path {path} is not a directory")]
    NotDirectory { path: std::path::PathBuf },
    #[error("invalid file name {name:?} for a memory share: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("file name {name:?} given twice to a memory share")]
    DuplicateName { name: String },
}

/// A Linux errno value answered in Rlerror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The errno of an I/O error, EIO if it carries none.
    pub fn from_io(err: &std::io::Error) -> Self {
        Errno(err.raw_os_error().unwrap_or(libc::EIO))
    }
    /// The errno left by the last failed libc call.
    pub fn last() -> Self {
        Self::from_io(&std::io::Error::last_os_error())
    }
}

/// The content served by one server.
pub enum Share {
    /// A host directory, served read-only and confined beneath it.
    Directory(DirectoryShare),
    /// A flat directory of files held in memory.
    Memory(MemoryShare),
}

/// Attributes answered by Tgetattr (the "basic" set of 9P2000.L).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attr {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub rdev: u64,
    pub size: u64,
    pub blksize: u64,
    pub blocks: u64,
    pub atime: (u64, u64),
    pub mtime: (u64, u64),
    pub ctime: (u64, u64),
}

/// Answer to Tstatfs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatFs {
    pub fs_type: u32,
    pub bsize: u32,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub fsid: u64,
    pub namelen: u32,
}

/// One directory entry for Rreaddir; `offset` resumes the listing after this entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub qid: Qid,
    pub offset: u64,
    pub dtype: u8,
    pub name: Vec<u8>,
}

/// A file a fid points at.
pub enum Node {
    Host(HostNode),
    Memory(MemoryNode),
}

/// The state of a fid after Tlopen.
pub enum Opened {
    Host(HostOpen),
    Memory,
}

/// Answered when a node from one backend reaches the other (a server bug, never guest input).
const MISMATCH: Errno = Errno(libc::EIO);

impl Share {
    /// The root of the share (Tattach).
    pub fn root(&self) -> Result<Node, Errno> {
        match self {
            Share::Directory(d) => d.root().map(Node::Host),
            Share::Memory(m) => Ok(Node::Memory(m.root())),
        }
    }

    /// Looks up one walk name below `from`. `name` is already checked: not empty, no `/` or
    /// NUL, at most 255 bytes; it may be `.` or `..`.
    pub fn walk(&self, from: &Node, name: &[u8]) -> Result<Node, Errno> {
        match (self, from) {
            (Share::Directory(d), Node::Host(n)) => d.walk(n, name).map(Node::Host),
            (Share::Memory(m), Node::Memory(n)) => m.walk(*n, name).map(Node::Memory),
            _ => Err(MISMATCH),
        }
    }

    /// A second, independent handle on the same node (Twalk with no names).
    pub fn clone_node(&self, node: &Node) -> Node {
        match node {
            Node::Host(n) => Node::Host(n.clone()),
            Node::Memory(n) => Node::Memory(*n),
        }
    }

    pub fn qid(&self, node: &Node) -> Qid {
        match node {
            Node::Host(n) => n.qid(),
            Node::Memory(n) => n.qid(),
        }
    }

    pub fn getattr(&self, node: &Node) -> Result<Attr, Errno> {
        match (self, node) {
            (Share::Directory(d), Node::Host(n)) => d.getattr(n),
            (Share::Memory(m), Node::Memory(n)) => Ok(m.getattr(*n)),
            _ => Err(MISMATCH),
        }
    }

    /// Opens `node` for reading; the caller has already refused write/create/trunc flags.
    pub fn open(&self, node: &Node) -> Result<Opened, Errno> {
        match (self, node) {
            (Share::Directory(d), Node::Host(n)) => d.open_node(n).map(Opened::Host),
            (Share::Memory(m), Node::Memory(n)) => m.open_node(*n).map(|()| Opened::Memory),
            _ => Err(MISMATCH),
        }
    }

    /// Appends up to `count` bytes of file data at `offset` to `out`.
    pub fn read(
        &self,
        node: &Node,
        open: &Opened,
        offset: u64,
        count: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), Errno> {
        match (self, node, open) {
            (Share::Directory(_), Node::Host(_), Opened::Host(o)) => o.read(offset, count, out),
            (Share::Memory(m), Node::Memory(n), Opened::Memory) => m.read(*n, offset, count, out),
            _ => Err(MISMATCH),
        }
    }

    /// Calls `emit` for directory entries from `offset` on until it returns `false`.
    pub fn readdir(
        &self,
        node: &Node,
        open: &Opened,
        offset: u64,
        emit: &mut dyn FnMut(DirEntry) -> bool,
    ) -> Result<(), Errno> {
        match (self, node, open) {
            (Share::Directory(d), Node::Host(n), Opened::Host(o)) => d.readdir(n, o, offset, emit),
            (Share::Memory(m), Node::Memory(n), Opened::Memory) => m.readdir(*n, offset, emit),
            _ => Err(MISMATCH),
        }
    }

    pub fn readlink(&self, node: &Node) -> Result<Vec<u8>, Errno> {
        match (self, node) {
            (Share::Directory(d), Node::Host(n)) => d.readlink(n),
            (Share::Memory(_), Node::Memory(_)) => Err(Errno(libc::EINVAL)),
            _ => Err(MISMATCH),
        }
    }

    pub fn statfs(&self, node: &Node) -> Result<StatFs, Errno> {
        match (self, node) {
            (Share::Directory(d), Node::Host(n)) => d.statfs(n),
            (Share::Memory(m), Node::Memory(_)) => Ok(m.statfs()),
            _ => Err(MISMATCH),
        }
    }
}
