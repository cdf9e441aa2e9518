//! 9P2000.L messages the probe needs (version, attach, walk, lopen, read, clunk): builders
//! that write a T-message into a buffer and a checker for R-messages. Pure code, host-tested.

use crate::phys::{u16_at, u32_at};

/// Tag used for Tversion.
pub const NOTAG: u16 = 0xffff;
/// "No fid" (afid of Tattach).
pub const NOFID: u32 = 0xffff_ffff;
/// Rlerror message type.
pub const RLERROR: u8 = 7;
/// Tlopen.
pub const TLOPEN: u8 = 12;
/// Tversion.
pub const TVERSION: u8 = 100;
/// Tattach.
pub const TATTACH: u8 = 104;
/// Twalk.
pub const TWALK: u8 = 110;
/// Tread.
pub const TREAD: u8 = 116;
/// Tclunk.
pub const TCLUNK: u8 = 120;
/// Largest number of names in one Twalk.
pub const MAXWELEM: usize = 16;

/// Why a 9P exchange failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The server answered Rlerror with this errno.
    Errno(u32),
    /// The reply was malformed (wrong type, tag or size).
    Protocol,
    /// The request did not fit the buffer (or too many path elements).
    TooBig,
    /// The transport failed or timed out.
    Transport,
}

/// Writes T-messages into a buffer.
pub struct Msg<'a> {
    buf: &'a mut [u8],
    len: usize,
    ok: bool,
}

impl<'a> Msg<'a> {
    /// Starts message `ty` with `tag`.
    pub fn new(buf: &'a mut [u8], ty: u8, tag: u16) -> Self {
        let mut m = Msg {
            buf,
            len: 0,
            ok: true,
        };
        m.u32(0).u8(ty).u16(tag);
        m
    }

    fn put(&mut self, b: &[u8]) -> &mut Self {
        match self.buf.get_mut(self.len..self.len + b.len()) {
            Some(d) => {
                d.copy_from_slice(b);
                self.len += b.len();
            }
            None => self.ok = false,
        }
        self
    }

    /// Appends a u8.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.put(&[v])
    }

    /// Appends a little-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.put(&v.to_le_bytes())
    }

    /// Appends a little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.put(&v.to_le_bytes())
    }

    /// Appends a little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.put(&v.to_le_bytes())
    }

    /// Appends a string (u16 length + bytes).
    pub fn str(&mut self, s: &[u8]) -> &mut Self {
        match u16::try_from(s.len()) {
            Ok(n) => self.u16(n).put(s),
            Err(_) => {
                self.ok = false;
                self
            }
        }
    }

    /// Fills in the size field; the message length, or `TooBig`.
    pub fn finish(&mut self) -> Result<usize, Error> {
        if !self.ok {
            return Err(Error::TooBig);
        }
        let n = u32::try_from(self.len).map_err(|_| Error::TooBig)?;
        self.buf[..4].copy_from_slice(&n.to_le_bytes());
        Ok(self.len)
    }
}

/// Checks an R-message of `len` bytes in `buf` against the request (type `ty`, tag `tag`);
/// returns its body (after size[4] type[1] tag[2]).
pub fn check(buf: &[u8], len: usize, ty: u8, tag: u16) -> Result<&[u8], Error> {
    let m = buf.get(..len).ok_or(Error::Protocol)?;
    let size = u32_at(m, 0).ok_or(Error::Protocol)? as usize;
    if size < 7 || size > m.len() {
        return Err(Error::Protocol);
    }
    let body = m.get(7..size).ok_or(Error::Protocol)?;
    if u16_at(m, 5) != Some(tag) {
        return Err(Error::Protocol);
    }
    match m.get(4).copied() {
        Some(RLERROR) => Err(Error::Errno(u32_at(body, 0).ok_or(Error::Protocol)?)),
        Some(t) if t == ty + 1 => Ok(body),
        _ => Err(Error::Protocol),
    }
}

/// The walk names of `path` (empty components and "." dropped), at most MAXWELEM.
pub fn split_path(path: &[u8]) -> Result<([&[u8]; MAXWELEM], usize), Error> {
    let mut names: [&[u8]; MAXWELEM] = [&[]; MAXWELEM];
    let mut n = 0;
    for c in path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
    {
        *names.get_mut(n).ok_or(Error::TooBig)? = c;
        n += 1;
    }
    Ok((names, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tversion_bytes() {
        let mut b = [0u8; 64];
        let n = Msg::new(&mut b, TVERSION, NOTAG)
            .u32(8192)
            .str(b"9P2000.L")
            .finish()
            .unwrap();
        assert_eq!(n, 4 + 1 + 2 + 4 + 2 + 8);
        assert_eq!(&b[..7], &[21, 0, 0, 0, 100, 0xff, 0xff]);
        assert_eq!(&b[7..11], &8192u32.to_le_bytes());
        assert_eq!(&b[11..21], b"\x08\x009P2000.L");
    }

    #[test]
    fn msg_overflow_is_an_error() {
        let mut b = [0u8; 10];
        assert_eq!(
            Msg::new(&mut b, TWALK, 1).u32(1).u32(2).finish(),
            Err(Error::TooBig)
        );
    }

    #[test]
    fn check_accepts_reply_and_maps_lerror() {
        let ok = [11, 0, 0, 0, TREAD + 1, 3, 0, 0xaa, 0xbb, 0xcc, 0xdd];
        assert_eq!(check(&ok, 11, TREAD, 3), Ok(&ok[7..11]));
        assert_eq!(check(&ok, 11, TREAD, 4), Err(Error::Protocol));
        assert_eq!(check(&ok, 11, TWALK, 3), Err(Error::Protocol));
        assert_eq!(check(&ok, 9, TREAD, 3), Err(Error::Protocol)); // size beyond data
        let err = [11, 0, 0, 0, RLERROR, 3, 0, 2, 0, 0, 0];
        assert_eq!(check(&err, 11, TREAD, 3), Err(Error::Errno(2)));
        assert_eq!(
            check(&[1, 0, 0, 0, 0, 0, 0], 7, TREAD, 0),
            Err(Error::Protocol)
        );
    }

    #[test]
    fn split_path_drops_empty_and_dot() {
        let (n, k) = split_path(b"/a//./b/c").unwrap();
        assert_eq!(&n[..k], &[&b"a"[..], b"b", b"c"]);
        assert_eq!(split_path(b"").unwrap().1, 0);
        let long = b"a/".repeat(17);
        assert_eq!(split_path(&long).err(), Some(Error::TooBig));
    }
}
