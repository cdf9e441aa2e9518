//! Test-side 9P client: builds request messages, drives a [`NinePServer`] and decodes replies.
//! Also a self-deleting temp directory and the fixture shares the tests run against.

mod bad_input;
mod escape;
mod session;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::proto::{msg, Qid, Reader};
use super::{DirectoryShare, MemoryShare, NinePConfig, NinePServer, Share};

pub const ROOT_FID: u32 = 0;
pub const ENV_TEXT: &[u8] = b"AGENT_LOG_LEVEL=info\nAGENT_CVM_GRPC_URL=10.0.2.2:7001\n";

/// A request body under construction.
#[derive(Default)]
pub struct Body(pub Vec<u8>);

impl Body {
    pub fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn str(self, s: &[u8]) -> Self {
        let mut b = self.u16(s.len() as u16);
        b.0.extend_from_slice(s);
        b
    }
}

/// A whole message: size[4] type[1] tag[2] body.
pub fn message(ty: u8, tag: u16, body: &Body) -> Vec<u8> {
    let len = (7 + body.0.len()) as u32;
    let mut m = len.to_le_bytes().to_vec();
    m.push(ty);
    m.extend_from_slice(&tag.to_le_bytes());
    m.extend_from_slice(&body.0);
    m
}

/// A decoded reply.
#[derive(Debug)]
pub struct Reply {
    pub ty: u8,
    pub tag: u16,
    pub body: Vec<u8>,
}

impl Reply {
    /// The errno if this is Rlerror.
    pub fn errno(&self) -> Option<i32> {
        (self.ty == msg::RLERROR)
            .then(|| Reader::new(&self.body, self.ty).u32("ecode").unwrap() as i32)
    }
    pub fn reader(&self) -> Reader<'_> {
        Reader::new(&self.body, self.ty)
    }
    /// `Ok(self)` when the reply has type `ty`, the errno when it is Rlerror.
    pub fn expect(self, ty: u8) -> Result<Reply, i32> {
        if let Some(errno) = self.errno() {
            return Err(errno);
        }
        assert_eq!(self.ty, ty, "unexpected reply type");
        Ok(self)
    }
}

pub fn read_qid(r: &mut Reader<'_>) -> Qid {
    Qid {
        ty: r.u8("ty").unwrap(),
        version: r.u32("v").unwrap(),
        path: r.u64("path").unwrap(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub qid: Qid,
    pub offset: u64,
    pub dtype: u8,
    pub name: String,
}

#[derive(Debug)]
pub struct GetAttr {
    pub valid: u64,
    pub qid: Qid,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: u64,
}

/// Plays the guest's 9p client against a server; every reply's bytes are kept in `seen`.
pub struct Client {
    pub server: NinePServer,
    tag: u16,
    pub seen: Vec<u8>,
}

impl Client {
    pub fn new(share: Share) -> Self {
        Self::with_config(share, NinePConfig::default())
    }

    pub fn with_config(share: Share, config: NinePConfig) -> Self {
        Self {
            server: NinePServer::new(share, config),
            tag: 0,
            seen: Vec::new(),
        }
    }

    /// A client that already did Tversion (msize 64 KiB) and attached fid 0 at the root.
    pub fn attached(share: Share) -> Self {
        let mut c = Self::new(share);
        c.version(64 * 1024, b"9P2000.L")
            .expect(msg::TVERSION + 1)
            .unwrap();
        c.attach(ROOT_FID).unwrap();
        c
    }

    /// Sends raw bytes; checks the reply is a well-formed message within msize.
    pub fn raw(&mut self, request: &[u8]) -> Reply {
        let mut out = vec![0xAA; 3]; // stale content must be cleared by the server
        self.server.handle(request, &mut out);
        assert!(out.len() >= 7, "reply shorter than a header: {out:?}");
        assert!(
            out.len() <= self.server.msize() as usize,
            "reply of {} bytes exceeds msize",
            out.len()
        );
        let size = u32::from_le_bytes(out[..4].try_into().unwrap());
        assert_eq!(
            size as usize,
            out.len(),
            "reply size field disagrees with its length"
        );
        self.seen.extend_from_slice(&out);
        Reply {
            ty: out[4],
            tag: u16::from_le_bytes([out[5], out[6]]),
            body: out[7..].to_vec(),
        }
    }

    pub fn call(&mut self, ty: u8, body: Body) -> Reply {
        self.tag = self.tag.wrapping_add(1) % 0xfff0;
        let tag = self.tag;
        let reply = self.raw(&message(ty, tag, &body));
        assert_eq!(reply.tag, tag, "reply tag must echo the request tag");
        reply
    }

    pub fn version(&mut self, msize: u32, version: &[u8]) -> Reply {
        self.call(msg::TVERSION, Body::default().u32(msize).str(version))
    }

    pub fn attach(&mut self, fid: u32) -> Result<Qid, i32> {
        let body = Body::default()
            .u32(fid)
            .u32(!0)
            .str(b"root")
            .str(b"")
            .u32(0);
        let reply = self.call(msg::TATTACH, body).expect(msg::TATTACH + 1)?;
        Ok(read_qid(&mut reply.reader()))
    }

    pub fn walk_bytes(&mut self, fid: u32, newfid: u32, names: &[&[u8]]) -> Result<Vec<Qid>, i32> {
        let mut body = Body::default().u32(fid).u32(newfid).u16(names.len() as u16);
        for name in names {
            body = body.str(name);
        }
        let reply = self.call(msg::TWALK, body).expect(msg::TWALK + 1)?;
        let mut r = reply.reader();
        let n = r.u16("nwqid").unwrap();
        let qids = (0..n).map(|_| read_qid(&mut r)).collect();
        r.finish().unwrap();
        Ok(qids)
    }

    pub fn walk(&mut self, fid: u32, newfid: u32, names: &[&str]) -> Result<Vec<Qid>, i32> {
        let names: Vec<&[u8]> = names.iter().map(|n| n.as_bytes()).collect();
        self.walk_bytes(fid, newfid, &names)
    }

    pub fn getattr(&mut self, fid: u32) -> Result<GetAttr, i32> {
        let reply = self
            .call(msg::TGETATTR, Body::default().u32(fid).u64(0x3fff))
            .expect(msg::TGETATTR + 1)?;
        let mut r = reply.reader();
        let valid = r.u64("valid").unwrap();
        let qid = read_qid(&mut r);
        let (mode, uid, gid) = (r.u32("").unwrap(), r.u32("").unwrap(), r.u32("").unwrap());
        let nlink = r.u64("").unwrap();
        let _rdev = r.u64("").unwrap();
        let size = r.u64("").unwrap();
        for _ in 0..12 {
            r.u64("rest").unwrap();
        }
        r.finish().unwrap();
        Ok(GetAttr {
            valid,
            qid,
            mode,
            uid,
            gid,
            nlink,
            size,
        })
    }

    pub fn lopen(&mut self, fid: u32, flags: u32) -> Result<(Qid, u32), i32> {
        let reply = self
            .call(msg::TLOPEN, Body::default().u32(fid).u32(flags))
            .expect(msg::TLOPEN + 1)?;
        let mut r = reply.reader();
        Ok((read_qid(&mut r), r.u32("iounit").unwrap()))
    }

    pub fn read(&mut self, fid: u32, offset: u64, count: u32) -> Result<Vec<u8>, i32> {
        let body = Body::default().u32(fid).u64(offset).u32(count);
        let reply = self.call(msg::TREAD, body).expect(msg::TREAD + 1)?;
        let mut r = reply.reader();
        let n = r.u32("count").unwrap();
        let data = reply.body[4..].to_vec();
        assert_eq!(
            n as usize,
            data.len(),
            "Rread count disagrees with its data"
        );
        Ok(data)
    }

    /// Reads a whole opened file in `chunk`-byte reads.
    pub fn read_all(&mut self, fid: u32, chunk: u32) -> Result<Vec<u8>, i32> {
        let mut data = Vec::new();
        loop {
            let part = self.read(fid, data.len() as u64, chunk)?;
            if part.is_empty() {
                return Ok(data);
            }
            data.extend_from_slice(&part);
        }
    }

    pub fn readdir(&mut self, fid: u32, offset: u64, count: u32) -> Result<Vec<Entry>, i32> {
        let body = Body::default().u32(fid).u64(offset).u32(count);
        let reply = self.call(msg::TREADDIR, body).expect(msg::TREADDIR + 1)?;
        let mut r = reply.reader();
        let n = r.u32("count").unwrap();
        assert_eq!(
            n as usize,
            reply.body.len() - 4,
            "Rreaddir count disagrees with its data"
        );
        assert!(
            n <= count,
            "Rreaddir returned {n} bytes for a count of {count}"
        );
        let mut entries = Vec::new();
        while r.finish().is_err() {
            let qid = read_qid(&mut r);
            let offset = r.u64("offset").unwrap();
            let dtype = r.u8("type").unwrap();
            let name = String::from_utf8(r.str("name").unwrap().to_vec()).unwrap();
            entries.push(Entry {
                qid,
                offset,
                dtype,
                name,
            });
        }
        Ok(entries)
    }

    /// Lists an opened directory with `count`-byte Treaddirs, resuming from each last offset.
    pub fn readdir_all(&mut self, fid: u32, count: u32) -> Result<Vec<Entry>, i32> {
        let mut all: Vec<Entry> = Vec::new();
        loop {
            let offset = all.last().map_or(0, |e| e.offset);
            let part = self.readdir(fid, offset, count)?;
            if part.is_empty() {
                return Ok(all);
            }
            all.extend(part);
        }
    }

    pub fn clunk(&mut self, fid: u32) -> Result<(), i32> {
        self.call(msg::TCLUNK, Body::default().u32(fid))
            .expect(msg::TCLUNK + 1)
            .map(|_| ())
    }

    pub fn readlink(&mut self, fid: u32) -> Result<Vec<u8>, i32> {
        let reply = self
            .call(msg::TREADLINK, Body::default().u32(fid))
            .expect(msg::TREADLINK + 1)?;
        Ok(reply.reader().str("target").unwrap().to_vec())
    }

    /// Walks `path` from the root into `fid`, opens it read-only and reads it all; a partial walk
    /// is reported as ENOENT.
    pub fn cat(&mut self, fid: u32, path: &[&str]) -> Result<Vec<u8>, i32> {
        if self.walk(ROOT_FID, fid, path)?.len() != path.len() {
            return Err(libc::ENOENT); // partial walk: `fid` was not bound
        }
        let result = self.lopen(fid, 0).and_then(|_| self.read_all(fid, 4096));
        self.clunk(fid).unwrap();
        result
    }
}

/// A directory under the system temp dir, removed (recursively) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("cvmm-p9-{}-{label}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `<tmp>/share` with `environment`, `cert.pem`, an empty file and `sub/nested.txt`.
pub fn fixture_dir(label: &str) -> (TempDir, PathBuf) {
    let tmp = TempDir::new(label);
    let share = tmp.path().join("share");
    std::fs::create_dir_all(share.join("sub")).unwrap();
    std::fs::write(share.join("environment"), ENV_TEXT).unwrap();
    std::fs::write(share.join("cert.pem"), b"-----BEGIN CERTIFICATE-----\n").unwrap();
    std::fs::write(share.join("empty"), b"").unwrap();
    std::fs::write(share.join("sub/nested.txt"), b"nested").unwrap();
    (tmp, share)
}

pub fn directory_share(path: &Path) -> Share {
    Share::Directory(DirectoryShare::open(path).unwrap())
}

pub fn memory_share() -> Share {
    let share = MemoryShare::new()
        .with_file("environment", ENV_TEXT.to_vec(), 0o644)
        .and_then(|s| s.with_file("cert.pem", b"-----BEGIN CERTIFICATE-----\n".to_vec(), 0o444))
        .and_then(|s| s.with_file("empty", Vec::new(), 0o444))
        .unwrap();
    Share::Memory(share)
}
