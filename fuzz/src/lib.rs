//! Helpers shared by the cvmm fuzz targets and the seed generator: splitting one fuzz input into
//! a sequence of records, building 9P messages, and making guest Ethernet frames safe (IPv4
//! destinations confined to the guest subnet or loopback) and checksum-valid.

pub mod machine;
pub mod q35;
pub mod virtq;

/// Splits `data` into records `[flags: u8][len: u16 LE][len bytes]`; a short tail becomes the
/// last record as is. Yields `(flags, bytes)`.
pub fn records(mut data: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        let flags = data[0];
        if data.len() < 3 {
            let rest = &data[1..];
            data = &[];
            return Some((flags, rest));
        }
        let len = usize::from(u16::from_le_bytes([data[1], data[2]]));
        let body = &data[3..];
        let take = len.min(body.len());
        let (rec, rest) = body.split_at(take);
        data = rest;
        Some((flags, rec))
    })
}

/// The first `width` bytes of an access's value (zero-padded), as a vCPU exit carries it.
pub fn access_value(width: usize, bytes: &[u8]) -> [u8; 8] {
    let mut v = [0u8; 8];
    let n = bytes.len().min(width).min(8);
    v[..n].copy_from_slice(&bytes[..n]);
    v
}

/// The little-endian u32 at `at` in `b` (missing bytes read as zero).
pub fn le32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    for (i, x) in v.iter_mut().enumerate() {
        *x = b.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(v)
}

/// Encodes records in the format [`records`] reads (for seeds).
pub fn encode_records(recs: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (flags, body) in recs {
        out.push(*flags);
        out.extend_from_slice(&(body.len() as u16).to_le_bytes());
        out.extend_from_slice(body);
    }
    out
}

/// 9P message builders (little-endian, `size[4] type[1] tag[2] body`).
pub mod p9 {
    /// Tversion.
    pub const TVERSION: u8 = 100;
    /// Tattach.
    pub const TATTACH: u8 = 104;
    /// Twalk.
    pub const TWALK: u8 = 110;
    /// Tlopen.
    pub const TLOPEN: u8 = 12;
    /// Tread.
    pub const TREAD: u8 = 116;
    /// Treaddir.
    pub const TREADDIR: u8 = 40;
    /// Tgetattr.
    pub const TGETATTR: u8 = 24;
    /// Tclunk.
    pub const TCLUNK: u8 = 120;
    /// Tstatfs.
    pub const TSTATFS: u8 = 8;
    /// Txattrwalk.
    pub const TXATTRWALK: u8 = 30;
    /// No fid.
    pub const NOFID: u32 = u32::MAX;

    /// A message body under construction.
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
        pub fn str(mut self, s: &[u8]) -> Self {
            self.0.extend_from_slice(&(s.len() as u16).to_le_bytes());
            self.0.extend_from_slice(s);
            self
        }
    }

    /// `type tag body` without the size field.
    pub fn unsized_msg(ty: u8, tag: u16, body: Body) -> Vec<u8> {
        let mut m = vec![ty];
        m.extend_from_slice(&tag.to_le_bytes());
        m.extend_from_slice(&body.0);
        m
    }

    /// Prepends the size field to `type tag body`.
    pub fn with_size(unsized_msg: &[u8]) -> Vec<u8> {
        let size = (unsized_msg.len() + 4) as u32;
        let mut m = size.to_le_bytes().to_vec();
        m.extend_from_slice(unsized_msg);
        m
    }

    /// A whole message.
    pub fn msg(ty: u8, tag: u16, body: Body) -> Vec<u8> {
        with_size(&unsized_msg(ty, tag, body))
    }

    /// Tversion for 9P2000.L.
    pub fn tversion(msize: u32) -> Vec<u8> {
        msg(
            TVERSION,
            u16::MAX,
            Body::default().u32(msize).str(b"9P2000.L"),
        )
    }

    /// Tattach of `fid` to the share root.
    pub fn tattach(fid: u32) -> Vec<u8> {
        msg(
            TATTACH,
            1,
            Body::default()
                .u32(fid)
                .u32(NOFID)
                .str(b"root")
                .str(b"")
                .u32(0),
        )
    }

    /// Checks that `reply` is a well-formed 9P reply no longer than `msize`: size field equal
    /// to the length, an odd (R-message) type. Returns a description of the defect.
    pub fn check_reply(reply: &[u8], msize: u32) -> Result<(), String> {
        if reply.len() < 7 {
            return Err(format!(
                "reply of {} bytes is shorter than a header",
                reply.len()
            ));
        }
        let size = u32::from_le_bytes([reply[0], reply[1], reply[2], reply[3]]);
        if size as usize != reply.len() {
            return Err(format!("size field {size} but {} bytes", reply.len()));
        }
        if size > msize {
            return Err(format!("reply of {size} bytes exceeds msize {msize}"));
        }
        if reply[4].is_multiple_of(2) {
            return Err(format!("reply type {} is not an R-message", reply[4]));
        }
        Ok(())
    }
}

/// Guest Ethernet frame fix-ups for the `net_frames` target.
pub mod frame {
    const ETH_LEN: usize = 14;
    const PROTO_TCP: u8 = 6;
    const PROTO_UDP: u8 = 17;

    /// If `frame` is IPv4 carrying TCP or UDP, rewrites its destination into 10.0.2.0/24
    /// (`0x00..=0x7f` of the original last octet) or 127.0.0.0/8 (the rest), so the NAT never
    /// connects beyond this host. Returns whether the frame is IPv4 TCP/UDP.
    pub fn confine_destination(frame: &mut [u8]) -> bool {
        if ipv4_tcp_udp(frame).is_none() {
            return false;
        }
        let dst = &mut frame[ETH_LEN + 16..ETH_LEN + 20];
        let last = dst[3];
        if last < 0x80 {
            dst.copy_from_slice(&[10, 0, 2, last]);
        } else {
            dst.copy_from_slice(&[127, dst[1], dst[2], last]);
        }
        true
    }

    /// Header length and protocol of an IPv4 TCP/UDP frame with a complete IPv4 header.
    fn ipv4_tcp_udp(frame: &[u8]) -> Option<(usize, u8)> {
        if frame.len() < ETH_LEN + 20 || frame[12..14] != [0x08, 0x00] {
            return None;
        }
        let proto = frame[ETH_LEN + 9];
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return None;
        }
        let ihl = usize::from(frame[ETH_LEN] & 0x0f) * 4;
        Some((ihl, proto))
    }

    /// Recomputes the IPv4 header checksum and the TCP/UDP checksum of an IPv4 TCP/UDP frame
    /// where the lengths allow; other frames are left alone.
    pub fn fix_checksums(frame: &mut [u8]) {
        let Some((ihl, proto)) = ipv4_tcp_udp(frame) else {
            return;
        };
        if ihl < 20 || frame.len() < ETH_LEN + ihl {
            return;
        }
        let ip = ETH_LEN;
        frame[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
        let c = !fold(sum(&frame[ip..ip + ihl]));
        frame[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());

        let total = usize::from(u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]));
        if total < ihl || frame.len() < ip + total {
            return;
        }
        let l4 = &mut frame[ip..ip + total];
        let at = if proto == PROTO_TCP { 16 } else { 6 };
        if total - ihl < at + 2 {
            return;
        }
        let len = (total - ihl) as u32;
        let mut pseudo = sum(&l4[12..20]) + u32::from(proto) + len;
        l4[ihl + at..ihl + at + 2].copy_from_slice(&[0, 0]);
        pseudo += sum(&l4[ihl..]);
        let mut c = !fold(pseudo);
        if proto == PROTO_UDP && c == 0 {
            c = 0xffff;
        }
        l4[ihl + at..ihl + at + 2].copy_from_slice(&c.to_be_bytes());
    }

    fn sum(bytes: &[u8]) -> u32 {
        bytes
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum()
    }

    fn fold(mut s: u32) -> u16 {
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }
}

/// IGVM header fix-ups for the `igvm_parse` target.
pub mod igvm {
    /// `IGVM` little-endian.
    const MAGIC: u32 = 0x4d56_4749;
    const FIXED_V1: usize = 24;

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// For input with an IGVM v1 fixed header, sets `total_file_size` to the real length and,
    /// when the variable-header range lies inside the input, the CRC32 checksum, so mutations
    /// reach the variable headers instead of failing at the checksum.
    pub fn fix_header(file: &mut [u8]) {
        if file.len() < FIXED_V1 || u32_at(file, 0) != MAGIC || u32_at(file, 4) != 1 {
            return;
        }
        let total = u32::try_from(file.len()).unwrap_or(u32::MAX);
        file[16..20].copy_from_slice(&total.to_le_bytes());
        let (off, size) = (u32_at(file, 8) as usize, u32_at(file, 12) as usize);
        let Some(end) = off.checked_add(size).filter(|&e| e <= file.len()) else {
            return;
        };
        file[20..24].copy_from_slice(&[0; 4]);
        let crc = crc32(&[&file[..FIXED_V1], &file[off..end]]);
        file[20..24].copy_from_slice(&crc.to_le_bytes());
    }

    /// Whether `file` would hit a panic already known in igvm 0.5.0, so the target skips it and
    /// keeps looking for new bugs. Known (inputs in `fuzz/artifacts-found/igvm_parse/`):
    /// - a RELOCATABLE_REGION initialization header with `relocation_alignment` 0: remainder by
    ///   zero (igvm src/lib.rs:503), which panics in release builds too;
    ///
    /// and integer overflows, which panic with overflow checks (debug builds) and wrap, then get
    /// rejected, in release builds:
    /// - `file_offset - file_data_start` (u32, igvm src/lib.rs:2060) for a directive whose
    ///   nonzero file offset points before the file data (found by this target), and
    ///   `header.file_offset - file_data_start` (src/lib.rs:2199) for an SNP VP context whose
    ///   file offset (even 0) points before the file data (found by this target);
    /// - by reading the code next to it: `start + size` (usize, src/lib.rs:2061) for a parameter
    ///   area of near-2^64 bytes, and `variable_header_offset + variable_header_size` (u32) in
    ///   `IgvmFile::new_from_binary`.
    ///
    /// Headers are walked as igvm does: an 8-byte type/length, then `length` bytes (VP context:
    /// rounded up to 8).
    pub fn known_igvm_crate_panic(file: &[u8]) -> bool {
        if file.len() < FIXED_V1 || u32_at(file, 0) != MAGIC {
            return false;
        }
        let (off, size) = (u32_at(file, 8), u32_at(file, 12));
        let Some(data_start) = off.checked_add(size) else {
            return true;
        };
        let end = (data_start as usize).min(file.len());
        let mut at = off as usize;
        while at + 8 <= end {
            let (typ, len) = (u32_at(file, at), u32_at(file, at + 4) as usize);
            let body = at + 8;
            let file_offset = (body + 16 <= end).then(|| u32_at(file, body + 12));
            match (typ, file_offset) {
                // RELOCATABLE_REGION: mask u32, vp u16, vtl u8, flags u8, alignment u64, ...
                (0x102, _) if body + 16 <= end && file[body + 8..body + 16] == [0; 8] => {
                    return true;
                }
                // PARAMETER_AREA: number_of_bytes u64, index u32, file_offset u32.
                (0x301, Some(fo)) if fo != 0 => {
                    let bytes =
                        u64::from_le_bytes(file[body..body + 8].try_into().unwrap_or([0; 8]));
                    if fo < data_start || bytes > u64::from(u32::MAX) << 8 {
                        return true;
                    }
                }
                // PAGE_DATA and VP_CONTEXT: gpa u64, mask u32, file_offset u32. An SNP VP
                // context subtracts even a zero offset.
                (0x302, Some(fo)) if fo != 0 && fo < data_start => return true,
                (0x304, Some(fo)) if fo < data_start => return true,
                _ => {}
            }
            let step = if typ == 0x304 {
                len.div_ceil(8) * 8
            } else {
                len
            };
            at = match body.checked_add(step) {
                Some(next) => next,
                None => break,
            };
        }
        false
    }

    /// CRC-32 (IEEE 802.3, reflected) over the concatenation of `parts`.
    pub fn crc32(parts: &[&[u8]]) -> u32 {
        let mut crc = !0u32;
        for b in parts.iter().flat_map(|p| p.iter()) {
            crc ^= u32::from(*b);
            for _ in 0..8 {
                let mask = (crc & 1).wrapping_neg();
                crc = (crc >> 1) ^ (0xedb8_8320 & mask);
            }
        }
        !crc
    }
}
