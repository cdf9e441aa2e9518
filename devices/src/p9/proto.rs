//! 9P2000.L wire format: bounds-checked [`Reader`]/[`Writer`] over byte slices, message type
//! numbers, and [`parse_request`], which turns one whole request message into a [`Request`].
//!
//! Nothing here touches the share or any server state, so this file can be fuzzed on its own.
//! Every read is bounds-checked; malformed input yields a [`ProtoError`], never a panic.

use thiserror::Error;

/// Size of the `size[4] type[1] tag[2]` header every message starts with.
pub const HEADER_LEN: usize = 7;
/// Room kept for the header of an I/O reply (Rread/Rreaddir), as the Linux client counts it.
pub const IOHDRSZ: u32 = 24;
/// Most names one Twalk may carry.
pub const MAX_WALK_NAMES: usize = 16;
/// The "no tag" value of Tversion and of replies to messages too short to carry a tag.
pub const NOTAG: u16 = 0xffff;
/// The "no fid" value (`afid` of an unauthenticated Tattach).
pub const NOFID: u32 = 0xffff_ffff;
/// The one protocol version this server speaks.
pub const VERSION_9P2000_L: &[u8] = b"9P2000.L";

/// Qid type bits.
pub const QT_DIR: u8 = 0x80;
pub const QT_SYMLINK: u8 = 0x02;
pub const QT_FILE: u8 = 0x00;

/// Message type numbers (T = request, R = reply; R is always T + 1).
pub mod msg {
    pub const RLERROR: u8 = 7;
    pub const TSTATFS: u8 = 8;
    pub const TLOPEN: u8 = 12;
    pub const TLCREATE: u8 = 14;
    pub const TSYMLINK: u8 = 16;
    pub const TMKNOD: u8 = 18;
    pub const TRENAME: u8 = 20;
    pub const TREADLINK: u8 = 22;
    pub const TGETATTR: u8 = 24;
    pub const TSETATTR: u8 = 26;
    pub const TXATTRWALK: u8 = 30;
    pub const TXATTRCREATE: u8 = 32;
    pub const TREADDIR: u8 = 40;
    pub const TFSYNC: u8 = 50;
    pub const TLOCK: u8 = 52;
    pub const TGETLOCK: u8 = 54;
    pub const TLINK: u8 = 70;
    pub const TMKDIR: u8 = 72;
    pub const TRENAMEAT: u8 = 74;
    pub const TUNLINKAT: u8 = 76;
    pub const TVERSION: u8 = 100;
    pub const TATTACH: u8 = 104;
    pub const TFLUSH: u8 = 108;
    pub const TWALK: u8 = 110;
    pub const TCREATE: u8 = 114;
    pub const TREAD: u8 = 116;
    pub const TWRITE: u8 = 118;
    pub const TCLUNK: u8 = 120;
    pub const TREMOVE: u8 = 122;
    pub const TWSTAT: u8 = 126;
}

/// Why a request message could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("message of {len} bytes is shorter than the 7-byte header")]
    Short { len: usize },
    #[error("size field {size} disagrees with the {len}-byte message")]
    SizeMismatch { size: u32, len: usize },
    #[error("type {ty}: field `{field}` runs past the end of the message")]
    Truncated { ty: u8, field: &'static str },
    #[error("type {ty}: {extra} unexpected bytes after the body")]
    TrailingBytes { ty: u8, extra: usize },
    #[error("Twalk with {count} names (at most 16 allowed)")]
    TooManyNames { count: u16 },
}

/// Bounds-checked little-endian reader over one message.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    ty: u8,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; `ty` only labels errors.
    pub fn new(buf: &'a [u8], ty: u8) -> Self {
        Self { buf, pos: 0, ty }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ProtoError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(ProtoError::Truncated { ty: self.ty, field })?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtoError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, ProtoError> {
        Ok(self.array::<1>(field)?[0])
    }
    pub fn u16(&mut self, field: &'static str) -> Result<u16, ProtoError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }
    pub fn u32(&mut self, field: &'static str) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    pub fn u64(&mut self, field: &'static str) -> Result<u64, ProtoError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    /// A 9P string: `len[2]` then that many bytes (not checked for UTF-8 here).
    pub fn str(&mut self, field: &'static str) -> Result<&'a [u8], ProtoError> {
        let len = self.u16(field)?;
        self.take(usize::from(len), field)
    }
    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), ProtoError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            extra => Err(ProtoError::TrailingBytes { ty: self.ty, extra }),
        }
    }
}

/// A parsed request header plus body.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub tag: u16,
    pub request: Request<'a>,
}

/// The requests this server understands. Strings borrow from the message.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Version {
        msize: u32,
        version: &'a [u8],
    },
    Attach {
        fid: u32,
        afid: u32,
        uname: &'a [u8],
        aname: &'a [u8],
        n_uname: u32,
    },
    Walk {
        fid: u32,
        newfid: u32,
        names: Vec<&'a [u8]>,
    },
    Getattr {
        fid: u32,
        mask: u64,
    },
    Lopen {
        fid: u32,
        flags: u32,
    },
    Read {
        fid: u32,
        offset: u64,
        count: u32,
    },
    Readdir {
        fid: u32,
        offset: u64,
        count: u32,
    },
    Readlink {
        fid: u32,
    },
    Statfs {
        fid: u32,
    },
    Xattrwalk {
        fid: u32,
        newfid: u32,
        name: &'a [u8],
    },
    Fsync {
        fid: u32,
    },
    Lock {
        fid: u32,
    },
    Getlock {
        fid: u32,
        lock_type: u8,
        start: u64,
        length: u64,
        proc_id: u32,
        client_id: &'a [u8],
    },
    Flush {
        oldtag: u16,
    },
    Clunk {
        fid: u32,
    },
    /// Tremove: always refused, but the fid is clunked as 9P requires.
    Remove {
        fid: u32,
    },
    /// A request that would change the share (body not parsed): answered with EROFS.
    Mutating {
        ty: u8,
    },
    /// Any other type: answered with EOPNOTSUPP.
    Unknown {
        ty: u8,
    },
}

/// Reads the `tag` of a message whose header is at least present, for error replies.
pub fn peek_tag(buf: &[u8]) -> Option<u16> {
    let bytes = buf.get(5..7)?;
    Some(u16::from_le_bytes([bytes[0], bytes[1]]))
}

/// Parses one whole request (`size[4] type[1] tag[2] body`). The size field must equal
/// `buf.len()`; the caller enforces msize.
pub fn parse_request(buf: &[u8]) -> Result<Message<'_>, ProtoError> {
    if buf.len() < HEADER_LEN {
        return Err(ProtoError::Short { len: buf.len() });
    }
    let mut header = Reader::new(buf, 0);
    let size = header.u32("size")?;
    if usize::try_from(size).ok() != Some(buf.len()) {
        return Err(ProtoError::SizeMismatch {
            size,
            len: buf.len(),
        });
    }
    let ty = header.u8("type")?;
    let tag = header.u16("tag")?;
    let mut r = Reader::new(&buf[HEADER_LEN..], ty);
    let request = parse_body(ty, &mut r)?;
    if !matches!(request, Request::Mutating { .. } | Request::Unknown { .. }) {
        r.finish()?;
    }
    Ok(Message { tag, request })
}

fn parse_body<'a>(ty: u8, r: &mut Reader<'a>) -> Result<Request<'a>, ProtoError> {
    use msg::*;
    Ok(match ty {
        TVERSION => Request::Version {
            msize: r.u32("msize")?,
            version: r.str("version")?,
        },
        TATTACH => Request::Attach {
            fid: r.u32("fid")?,
            afid: r.u32("afid")?,
            uname: r.str("uname")?,
            aname: r.str("aname")?,
            n_uname: r.u32("n_uname")?,
        },
        TWALK => {
            let fid = r.u32("fid")?;
            let newfid = r.u32("newfid")?;
            let count = r.u16("nwname")?;
            if usize::from(count) > MAX_WALK_NAMES {
                return Err(ProtoError::TooManyNames { count });
            }
            let names = (0..count)
                .map(|_| r.str("wname"))
                .collect::<Result<_, _>>()?;
            Request::Walk { fid, newfid, names }
        }
        TGETATTR => Request::Getattr {
            fid: r.u32("fid")?,
            mask: r.u64("request_mask")?,
        },
        TLOPEN => Request::Lopen {
            fid: r.u32("fid")?,
            flags: r.u32("flags")?,
        },
        TREAD => Request::Read {
            fid: r.u32("fid")?,
            offset: r.u64("offset")?,
            count: r.u32("count")?,
        },
        TREADDIR => Request::Readdir {
            fid: r.u32("fid")?,
            offset: r.u64("offset")?,
            count: r.u32("count")?,
        },
        TREADLINK => Request::Readlink { fid: r.u32("fid")? },
        TSTATFS => Request::Statfs { fid: r.u32("fid")? },
        TXATTRWALK => Request::Xattrwalk {
            fid: r.u32("fid")?,
            newfid: r.u32("newfid")?,
            name: r.str("name")?,
        },
        TFSYNC => {
            let fid = r.u32("fid")?;
            r.u32("datasync")?;
            Request::Fsync { fid }
        }
        TLOCK => {
            let fid = r.u32("fid")?;
            r.u8("type")?;
            r.u32("flags")?;
            r.u64("start")?;
            r.u64("length")?;
            r.u32("proc_id")?;
            r.str("client_id")?;
            Request::Lock { fid }
        }
        TGETLOCK => Request::Getlock {
            fid: r.u32("fid")?,
            lock_type: r.u8("type")?,
            start: r.u64("start")?,
            length: r.u64("length")?,
            proc_id: r.u32("proc_id")?,
            client_id: r.str("client_id")?,
        },
        TFLUSH => Request::Flush {
            oldtag: r.u16("oldtag")?,
        },
        TCLUNK => Request::Clunk { fid: r.u32("fid")? },
        TREMOVE => Request::Remove { fid: r.u32("fid")? },
        TLCREATE | TSYMLINK | TMKNOD | TRENAME | TSETATTR | TXATTRCREATE | TLINK | TMKDIR
        | TRENAMEAT | TUNLINKAT | TWRITE | TCREATE | TWSTAT => Request::Mutating { ty },
        _ => Request::Unknown { ty },
    })
}

/// A qid: the server's unique identity of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Qid {
    pub ty: u8,
    pub version: u32,
    pub path: u64,
}

/// Builds one reply message in a caller-owned buffer; [`Writer::finish`] patches the size.
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    /// Clears `out` and writes the header of reply type `ty` (size patched by `finish`).
    pub fn new(out: &'a mut Vec<u8>, ty: u8, tag: u16) -> Self {
        out.clear();
        out.extend_from_slice(&[0; 4]);
        out.push(ty);
        out.extend_from_slice(&tag.to_le_bytes());
        Self { out }
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.out.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// A 9P string; the caller guarantees `s.len() <= u16::MAX` (names are at most 255 bytes,
    /// longer input is cut rather than producing a bad length).
    pub fn str(&mut self, s: &[u8]) -> &mut Self {
        let s = &s[..s.len().min(usize::from(u16::MAX))];
        self.u16(s.len() as u16);
        self.out.extend_from_slice(s);
        self
    }
    pub fn qid(&mut self, q: &Qid) -> &mut Self {
        self.u8(q.ty).u32(q.version).u64(q.path)
    }
    /// The bytes written so far, header included.
    pub fn written(&self) -> usize {
        self.out.len()
    }
    /// Direct access for bulk payloads (Rread data).
    pub fn buf(&mut self) -> &mut Vec<u8> {
        self.out
    }
    /// Writes the final length into the size field.
    pub fn finish(&mut self) {
        let len = u32::try_from(self.out.len()).unwrap_or(u32::MAX);
        self.out[..4].copy_from_slice(&len.to_le_bytes());
    }
}

/// Writes a complete Rlerror reply.
pub fn write_lerror(out: &mut Vec<u8>, tag: u16, errno: i32) {
    let mut w = Writer::new(out, msg::RLERROR, tag);
    w.u32(errno.unsigned_abs());
    w.finish();
}
