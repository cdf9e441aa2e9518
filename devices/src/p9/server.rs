//! [`NinePServer`]: one 9P2000.L session over a [`Share`]: msize negotiation, the fid table and
//! the dispatch of each request to the share. Errors become Rlerror; nothing panics.

use std::collections::HashMap;

use super::memory::NAME_MAX;
use super::proto::{self, msg, Message, ProtoError, Request, Writer, IOHDRSZ, NOFID, NOTAG};
use super::share::{Errno, Node, Opened, Share};

/// Smallest msize a client may negotiate (room for a PATH_MAX readlink and a useful read).
pub const MIN_MSIZE: u32 = 8192;
/// `valid` bits of Rgetattr: the basic set (mode..blocks, atime, mtime, ctime).
const GETATTR_BASIC: u64 = 0x7ff;
/// Rgetlock type meaning "no conflicting lock".
const LOCK_TYPE_UNLCK: u8 = 2;
/// Size of the fixed part of an Rreaddir entry: qid[13] offset[8] type[1] name-length[2].
const DIRENT_FIXED: usize = 24;
/// Offset of the `count` field in Rread/Rreaddir, just after the header.
const COUNT_AT: usize = proto::HEADER_LEN;

/// Limits of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NinePConfig {
    /// Largest message size offered in Rversion (the client may ask for less).
    pub max_msize: u32,
    /// Most fids the client may hold at once; more get EMFILE.
    pub max_fids: usize,
}

impl Default for NinePConfig {
    fn default() -> Self {
        Self {
            max_msize: 512 * 1024,
            max_fids: 4096,
        }
    }
}

enum Fid {
    Node {
        node: Node,
        open: Option<Opened>,
    },
    /// The result of listing xattrs (Txattrwalk with an empty name): always empty.
    XattrList,
}

/// A read-only 9P2000.L server for one share and one client session.
pub struct NinePServer {
    share: Share,
    config: NinePConfig,
    msize: u32,
    versioned: bool,
    fids: HashMap<u32, Fid>,
}

fn proto_errno(err: &ProtoError) -> Errno {
    match err {
        ProtoError::TooManyNames { .. } => Errno(libc::E2BIG),
        _ => Errno(libc::EINVAL),
    }
}

fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return Err(Errno(libc::EINVAL));
    }
    if name.len() > NAME_MAX {
        return Err(Errno(libc::ENAMETOOLONG));
    }
    Ok(())
}

impl NinePServer {
    pub fn new(share: Share, config: NinePConfig) -> Self {
        let config = NinePConfig {
            max_msize: config.max_msize.max(MIN_MSIZE),
            ..config
        };
        Self {
            share,
            msize: config.max_msize,
            config,
            versioned: false,
            fids: HashMap::new(),
        }
    }

    /// The negotiated message size (the configured maximum before Tversion).
    pub fn msize(&self) -> u32 {
        self.msize
    }

    /// How many fids the client holds.
    pub fn fid_count(&self) -> usize {
        self.fids.len()
    }

    /// Handles one whole request message and writes the reply into `out` (cleared first).
    /// Malformed or refused requests get Rlerror; the session keeps serving.
    pub fn handle(&mut self, request: &[u8], out: &mut Vec<u8>) {
        let tag = proto::peek_tag(request).unwrap_or(NOTAG);
        let ty = request.get(4).copied().unwrap_or(0);
        let result = if request.len() > self.msize as usize {
            Err(Errno(libc::EMSGSIZE))
        } else {
            match proto::parse_request(request) {
                Ok(message) => self.dispatch(message, out),
                Err(err) => {
                    tracing::debug!(%err, "9p: malformed request");
                    Err(proto_errno(&err))
                }
            }
        };
        let result = result.and_then(|()| {
            let fits = out.len() <= self.msize as usize;
            fits.then_some(()).ok_or(Errno(libc::EMSGSIZE))
        });
        if let Err(Errno(errno)) = result {
            tracing::debug!(ty, tag, errno, "9p: request failed");
            proto::write_lerror(out, tag, errno);
        }
    }

    fn dispatch(&mut self, message: Message<'_>, out: &mut Vec<u8>) -> Result<(), Errno> {
        let Message { tag, request } = message;
        if !self.versioned && !matches!(request, Request::Version { .. }) {
            return Err(Errno(libc::EPROTO));
        }
        match request {
            Request::Version { msize, version } => self.version(tag, msize, version, out),
            Request::Attach { fid, afid, .. } => self.attach(tag, fid, afid, out),
            Request::Walk { fid, newfid, names } => self.walk(tag, fid, newfid, &names, out),
            Request::Getattr { fid, .. } => self.getattr(tag, fid, out),
            Request::Lopen { fid, flags } => self.lopen(tag, fid, flags, out),
            Request::Read { fid, offset, count } => self.read(tag, fid, offset, count, out),
            Request::Readdir { fid, offset, count } => self.readdir(tag, fid, offset, count, out),
            Request::Readlink { fid } => {
                let target = self.share.readlink(self.node(fid)?)?;
                Writer::new(out, msg::TREADLINK + 1, tag)
                    .str(&target)
                    .finish();
                Ok(())
            }
            Request::Statfs { fid } => self.statfs(tag, fid, out),
            Request::Xattrwalk { fid, newfid, name } => self.xattrwalk(tag, fid, newfid, name, out),
            Request::Fsync { fid } => {
                self.fid(fid)?;
                Writer::new(out, msg::TFSYNC + 1, tag).finish();
                Ok(())
            }
            Request::Lock { fid } => {
                self.fid(fid)?;
                // P9_LOCK_SUCCESS: locks on a read-only share conflict with nothing here.
                Writer::new(out, msg::TLOCK + 1, tag).u8(0).finish();
                Ok(())
            }
            Request::Getlock {
                fid,
                start,
                length,
                proc_id,
                client_id,
                ..
            } => {
                self.fid(fid)?;
                let mut w = Writer::new(out, msg::TGETLOCK + 1, tag);
                w.u8(LOCK_TYPE_UNLCK)
                    .u64(start)
                    .u64(length)
                    .u32(proc_id)
                    .str(client_id);
                w.finish();
                Ok(())
            }
            Request::Flush { .. } => {
                Writer::new(out, msg::TFLUSH + 1, tag).finish();
                Ok(())
            }
            Request::Clunk { fid } => {
                self.fids.remove(&fid).ok_or(Errno(libc::EBADF))?;
                Writer::new(out, msg::TCLUNK + 1, tag).finish();
                Ok(())
            }
            Request::Remove { fid } => {
                self.fids.remove(&fid).ok_or(Errno(libc::EBADF))?;
                Err(Errno(libc::EROFS))
            }
            Request::Mutating { .. } => Err(Errno(libc::EROFS)),
            Request::Unknown { .. } => Err(Errno(libc::EOPNOTSUPP)),
        }
    }

    fn fid(&self, fid: u32) -> Result<&Fid, Errno> {
        self.fids.get(&fid).ok_or(Errno(libc::EBADF))
    }

    fn node(&self, fid: u32) -> Result<&Node, Errno> {
        match self.fid(fid)? {
            Fid::Node { node, .. } => Ok(node),
            Fid::XattrList => Err(Errno(libc::EBADF)),
        }
    }

    /// Checks that `newfid` may be bound (free or replacing `fid`, and under the cap).
    fn check_newfid(&self, fid: u32, newfid: u32) -> Result<(), Errno> {
        if newfid == fid {
            return Ok(());
        }
        if self.fids.contains_key(&newfid) {
            return Err(Errno(libc::EEXIST));
        }
        if newfid == NOFID || self.fids.len() >= self.config.max_fids {
            return Err(Errno(if newfid == NOFID {
                libc::EINVAL
            } else {
                libc::EMFILE
            }));
        }
        Ok(())
    }

    fn version(
        &mut self,
        tag: u16,
        msize: u32,
        version: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Errno> {
        if msize < MIN_MSIZE {
            return Err(Errno(libc::EINVAL));
        }
        self.fids.clear();
        let ours = version == proto::VERSION_9P2000_L || version.starts_with(b"9P2000.L.");
        self.versioned = ours;
        self.msize = msize.min(self.config.max_msize);
        let reply: &[u8] = if ours {
            proto::VERSION_9P2000_L
        } else {
            b"unknown"
        };
        Writer::new(out, msg::TVERSION + 1, tag)
            .u32(self.msize)
            .str(reply)
            .finish();
        Ok(())
    }

    fn attach(&mut self, tag: u16, fid: u32, afid: u32, out: &mut Vec<u8>) -> Result<(), Errno> {
        if afid != NOFID {
            return Err(Errno(libc::EINVAL));
        }
        self.check_newfid(NOFID, fid)?;
        let node = self.share.root()?;
        Writer::new(out, msg::TATTACH + 1, tag)
            .qid(&self.share.qid(&node))
            .finish();
        self.fids.insert(fid, Fid::Node { node, open: None });
        Ok(())
    }

    fn walk(
        &mut self,
        tag: u16,
        fid: u32,
        newfid: u32,
        names: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<(), Errno> {
        let from = self.node(fid)?;
        self.check_newfid(fid, newfid)?;
        let mut qids = Vec::with_capacity(names.len());
        let mut cur: Option<Node> = None;
        for (i, name) in names.iter().enumerate() {
            let base = cur.as_ref().unwrap_or(from);
            match check_name(name).and_then(|()| self.share.walk(base, name)) {
                Ok(node) => {
                    qids.push(self.share.qid(&node));
                    cur = Some(node);
                }
                Err(e) if i == 0 => return Err(e),
                Err(_) => break,
            }
        }
        if qids.len() == names.len() {
            let node = cur.unwrap_or_else(|| self.share.clone_node(from));
            self.fids.insert(newfid, Fid::Node { node, open: None });
        }
        let mut w = Writer::new(out, msg::TWALK + 1, tag);
        w.u16(qids.len() as u16);
        qids.iter().for_each(|q| {
            w.qid(q);
        });
        w.finish();
        Ok(())
    }

    fn getattr(&self, tag: u16, fid: u32, out: &mut Vec<u8>) -> Result<(), Errno> {
        let node = self.node(fid)?;
        let a = self.share.getattr(node)?;
        let mut w = Writer::new(out, msg::TGETATTR + 1, tag);
        w.u64(GETATTR_BASIC)
            .qid(&self.share.qid(node))
            .u32(a.mode)
            .u32(a.uid)
            .u32(a.gid);
        w.u64(a.nlink)
            .u64(a.rdev)
            .u64(a.size)
            .u64(a.blksize)
            .u64(a.blocks);
        for (sec, nsec) in [a.atime, a.mtime, a.ctime, (0, 0)] {
            w.u64(sec).u64(nsec);
        }
        w.u64(0).u64(0); // gen, data_version
        w.finish();
        Ok(())
    }

    fn lopen(&mut self, tag: u16, fid: u32, flags: u32, out: &mut Vec<u8>) -> Result<(), Errno> {
        let (node, open) = match self.fids.get_mut(&fid) {
            Some(Fid::Node { node, open }) => (node, open),
            _ => return Err(Errno(libc::EBADF)),
        };
        if open.is_some() {
            return Err(Errno(libc::EINVAL));
        }
        let writing = flags & libc::O_ACCMODE as u32 != 0;
        if writing || flags & (libc::O_CREAT | libc::O_TRUNC) as u32 != 0 {
            return Err(Errno(libc::EROFS));
        }
        *open = Some(self.share.open(node)?);
        let qid = self.share.qid(node);
        Writer::new(out, msg::TLOPEN + 1, tag)
            .qid(&qid)
            .u32(self.msize - IOHDRSZ)
            .finish();
        Ok(())
    }

    fn opened(&self, fid: u32) -> Result<(&Node, &Opened), Errno> {
        match self.fid(fid)? {
            Fid::Node {
                node,
                open: Some(open),
            } => Ok((node, open)),
            _ => Err(Errno(libc::EBADF)),
        }
    }

    fn read(
        &self,
        tag: u16,
        fid: u32,
        offset: u64,
        count: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), Errno> {
        let count = count.min(self.msize - IOHDRSZ);
        let mut w = Writer::new(out, msg::TREAD + 1, tag);
        w.u32(0);
        match self.fid(fid)? {
            Fid::XattrList => {}
            Fid::Node { .. } => {
                let (node, open) = self.opened(fid)?;
                self.share.read(node, open, offset, count, w.buf())?;
            }
        }
        patch_count(w.buf());
        w.finish();
        Ok(())
    }

    fn readdir(
        &self,
        tag: u16,
        fid: u32,
        offset: u64,
        count: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), Errno> {
        let (node, open) = self.opened(fid)?;
        let limit = COUNT_AT + 4 + count.min(self.msize - IOHDRSZ) as usize;
        let mut w = Writer::new(out, msg::TREADDIR + 1, tag);
        w.u32(0);
        self.share.readdir(node, open, offset, &mut |e| {
            if w.written() + DIRENT_FIXED + e.name.len() > limit {
                return false;
            }
            w.qid(&e.qid).u64(e.offset).u8(e.dtype).str(&e.name);
            true
        })?;
        patch_count(w.buf());
        w.finish();
        Ok(())
    }

    fn statfs(&self, tag: u16, fid: u32, out: &mut Vec<u8>) -> Result<(), Errno> {
        let s = self.share.statfs(self.node(fid)?)?;
        let mut w = Writer::new(out, msg::TSTATFS + 1, tag);
        w.u32(s.fs_type)
            .u32(s.bsize)
            .u64(s.blocks)
            .u64(s.bfree)
            .u64(s.bavail);
        w.u64(s.files).u64(s.ffree).u64(s.fsid).u32(s.namelen);
        w.finish();
        Ok(())
    }

    /// Named attributes do not exist (ENODATA); the attribute list is empty (size 0).
    fn xattrwalk(
        &mut self,
        tag: u16,
        fid: u32,
        newfid: u32,
        name: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Errno> {
        self.node(fid)?;
        if !name.is_empty() {
            return Err(Errno(libc::ENODATA));
        }
        self.check_newfid(fid, newfid)?;
        self.fids.insert(newfid, Fid::XattrList);
        Writer::new(out, msg::TXATTRWALK + 1, tag).u64(0).finish();
        Ok(())
    }
}

/// Fills the `count` field of Rread/Rreaddir with the payload length after it.
fn patch_count(out: &mut [u8]) {
    let payload = out.len().saturating_sub(COUNT_AT + 4) as u32;
    if let Some(field) = out.get_mut(COUNT_AT..COUNT_AT + 4) {
        field.copy_from_slice(&payload.to_le_bytes());
    }
}
