//! virtio-9p (device 0x1049) driver and a minimal 9P2000.L client: version, attach, then per
//! file walk + lopen(O_RDONLY) + read loop + clunk. One request in flight; every reply waits at
//! most a few seconds.

use crate::clock::Deadline;
use crate::p9::{self, Error, Msg};
use crate::virtio::{self, Device};
use crate::virtq::{Queue, F_NEXT, F_WRITE};

/// msize the probe asks for.
pub const MSIZE: u32 = 8192 + 4096;
/// Longest mount tag kept.
pub const TAG_MAX: usize = 64;
const ROOT_FID: u32 = 0;
const REPLY_MS: u64 = 5000;

/// One 9p share.
pub struct Share {
    dev: Device,
    q: Queue,
    tag: [u8; TAG_MAX],
    tag_len: usize,
    msize: u32,
    next_tag: u16,
    t: &'static mut [u8],
    r: &'static mut [u8],
    dead: bool,
}

impl Share {
    /// Brings up the device (queue 0) and reads its mount tag.
    pub fn new(mut dev: Device) -> Result<Self, virtio::Error> {
        dev.negotiate(1)?; // VIRTIO_9P_MOUNT_TAG
        let q = dev.queue(0, 8)?;
        let t = crate::arena::alloc(MSIZE as usize, 64).ok_or(virtio::Error::Queue(0))?;
        let r = crate::arena::alloc(MSIZE as usize, 64).ok_or(virtio::Error::Queue(0))?;
        dev.driver_ok()?;
        let mut tag = [0u8; TAG_MAX];
        let n = usize::from(dev.cfg.r16(0)).min(TAG_MAX);
        for (i, b) in tag.iter_mut().take(n).enumerate() {
            *b = dev.cfg.r8(2 + i as u64);
        }
        let tag_len = tag[..n].iter().position(|&c| c == 0).unwrap_or(n);
        Ok(Share {
            dev,
            q,
            tag,
            tag_len,
            msize: MSIZE,
            next_tag: 1,
            t,
            r,
            dead: false,
        })
    }

    /// The mount tag.
    pub fn tag(&self) -> &[u8] {
        &self.tag[..self.tag_len]
    }

    /// Sends the T-message of `tlen` bytes in `self.t`, waits for the reply in `self.r`.
    fn rpc(&mut self, tlen: usize) -> Result<usize, Error> {
        if self.dead {
            return Err(Error::Transport);
        }
        let (t, r) = (self.t.as_ptr() as u64, self.r.as_ptr() as u64);
        self.q.set_desc(0, t, tlen as u32, F_NEXT, 1);
        self.q.set_desc(1, r, self.msize, F_WRITE, 0);
        self.q.push(0);
        self.q.notify();
        let d = Deadline::after_ms(REPLY_MS);
        loop {
            if let Some((id, len)) = self.q.pop() {
                if id != 0 {
                    self.dead = true;
                    return Err(Error::Transport);
                }
                return Ok((len as usize).min(self.r.len()));
            }
            if d.expired() {
                // The device may still own the buffers: never reuse them.
                self.dead = true;
                self.dev.fail();
                return Err(Error::Transport);
            }
        }
    }

    fn tag_next(&mut self) -> u16 {
        self.next_tag = self.next_tag.wrapping_add(1).max(1) % p9::NOTAG;
        self.next_tag
    }

    /// Sends a request built by `build` (given the buffer and tag); returns the reply body range.
    fn call(&mut self, ty: u8, build: impl FnOnce(&mut Msg)) -> Result<(usize, usize), Error> {
        let tag = if ty == p9::TVERSION {
            p9::NOTAG
        } else {
            self.tag_next()
        };
        let mut m = Msg::new(self.t, ty, tag);
        build(&mut m);
        let tlen = m.finish()?;
        let rlen = self.rpc(tlen)?;
        let body = p9::check(self.r, rlen, ty, tag)?;
        let start = body.as_ptr() as usize - self.r.as_ptr() as usize;
        Ok((start, start + body.len()))
    }

    /// Tversion + Tattach (fid 0 = share root).
    pub fn mount(&mut self) -> Result<(), Error> {
        let ms = self.msize;
        let (a, b) = self.call(p9::TVERSION, |m| {
            m.u32(ms).str(b"9P2000.L");
        })?;
        let body = self.r.get(a..b).ok_or(Error::Protocol)?;
        let srv = crate::phys::u32_at(body, 0).ok_or(Error::Protocol)?;
        if body.get(4..) != Some(&b"\x08\x009P2000.L"[..]) || srv < 4096 {
            return Err(Error::Protocol);
        }
        self.msize = srv.min(MSIZE);
        self.call(p9::TATTACH, |m| {
            m.u32(ROOT_FID).u32(p9::NOFID).str(b"root").str(b"").u32(0);
        })?;
        Ok(())
    }

    /// Walks to `path` and opens it read-only as `fid` (not 0, which is the root).
    pub fn open(&mut self, fid: u32, path: &[u8]) -> Result<(), Error> {
        let (names, n) = p9::split_path(path)?;
        let (a, b) = self.call(p9::TWALK, |m| {
            m.u32(ROOT_FID).u32(fid).u16(n as u16);
            for name in &names[..n] {
                m.str(name);
            }
        })?;
        let nwqid = self.r.get(a..b).and_then(|x| crate::phys::u16_at(x, 0));
        if nwqid != Some(n as u16) {
            // A partial walk creates no fid; ENOENT for the name that was missing.
            return Err(Error::Errno(2));
        }
        if let Err(e) = self.call(p9::TLOPEN, |m| {
            m.u32(fid).u32(0);
        }) {
            let _ = self.close(fid);
            return Err(e);
        }
        Ok(())
    }

    /// Reads up to `max` bytes of the file open as `fid` at `offset`; returns the data (empty
    /// at EOF).
    pub fn read(&mut self, fid: u32, offset: u64, max: u32) -> Result<&[u8], Error> {
        let count = max.min(self.msize - 11);
        let (a, b) = self.call(p9::TREAD, |m| {
            m.u32(fid).u64(offset).u32(count);
        })?;
        let body = self.r.get(a..b).ok_or(Error::Protocol)?;
        let n = crate::phys::u32_at(body, 0).ok_or(Error::Protocol)?;
        if n > count {
            return Err(Error::Protocol);
        }
        body.get(4..4 + n as usize).ok_or(Error::Protocol)
    }

    /// Clunks `fid`.
    pub fn close(&mut self, fid: u32) -> Result<(), Error> {
        self.call(p9::TCLUNK, |m| {
            m.u32(fid);
        })
        .map(|_| ())
    }
}
