//! Small text helpers for the device tests: FNV-1a, marker-safe escaping, number and address
//! parsing, and the request line protocol of the probe's TCP server. Pure code, host-tested.

/// 32-bit FNV-1a offset basis.
pub const FNV_INIT: u32 = 0x811c_9dc5;

/// Continues a 32-bit FNV-1a hash over `data`.
pub fn fnv1a(mut h: u32, data: &[u8]) -> u32 {
    for &b in data {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Calls `out` with the escaped form of `data`: printable ASCII as is (`\` doubled), `\n`,
/// `\r`, `\t`, everything else `\xHH`.
pub fn escape(data: &[u8], mut out: impl FnMut(&[u8])) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in data {
        match b {
            b'\\' => out(b"\\\\"),
            b'\n' => out(b"\\n"),
            b'\r' => out(b"\\r"),
            b'\t' => out(b"\\t"),
            0x20..=0x7e => out(&[b]),
            _ => out(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]),
        }
    }
}

/// Parses a decimal number (no sign, fits in u64).
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u64::from(c - b'0'))
    })
}

/// Parses `a.b.c.d`.
pub fn parse_ipv4(s: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split(|&c| c == b'.');
    for o in &mut out {
        *o = u8::try_from(parse_u64(parts.next()?)?).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Parses `a.b.c.d:port`.
pub fn parse_endpoint(s: &[u8]) -> Option<([u8; 4], u16)> {
    let colon = s.iter().rposition(|&c| c == b':')?;
    let ip = parse_ipv4(s.get(..colon)?)?;
    let port = u16::try_from(parse_u64(s.get(colon + 1..)?)?).ok()?;
    (port != 0).then_some((ip, port))
}

/// Splits `tag/file` at the first slash; both parts non-empty.
pub fn split_tag(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let slash = s.iter().position(|&c| c == b'/')?;
    let (tag, file) = (s.get(..slash)?, s.get(slash + 1..)?);
    (!tag.is_empty() && !file.is_empty()).then_some((tag, file))
}

/// One request line of the probe's TCP server.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `ECHO <text>`: answer `<text>\n`.
    Echo(&'a [u8]),
    /// `GET <tag>/<file>`: answer the file's bytes, then close.
    Get(&'a [u8], &'a [u8]),
    /// `PIPE`: echo every byte that follows until the client closes its side.
    Pipe,
    /// `SINK`: read and drop every byte that follows; when the client closes its side, answer
    /// the byte count as a decimal line.
    Sink,
    /// `SOURCE <n>`: send `n` bytes of a fixed pattern, then close.
    Source(u64),
    /// Anything else: answer `ERR\n`.
    Bad,
}

/// Parses a request line (without its `\n`; a trailing `\r` is dropped).
pub fn parse_request(line: &[u8]) -> Request<'_> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(text) = line.strip_prefix(b"ECHO ") {
        return Request::Echo(text);
    }
    if line == b"PIPE" {
        return Request::Pipe;
    }
    if line == b"SINK" {
        return Request::Sink;
    }
    if let Some(n) = line.strip_prefix(b"SOURCE ") {
        return parse_u64(n).map_or(Request::Bad, Request::Source);
    }
    match line.strip_prefix(b"GET ").and_then(split_tag) {
        Some((tag, file)) => Request::Get(tag, file),
        None => Request::Bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_known_values() {
        assert_eq!(fnv1a(FNV_INIT, b""), 0x811c_9dc5);
        assert_eq!(fnv1a(FNV_INIT, b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(FNV_INIT, b"foobar"), 0xbf9c_f968);
        assert_eq!(fnv1a(fnv1a(FNV_INIT, b"foo"), b"bar"), 0xbf9c_f968);
    }

    #[test]
    fn escape_keeps_printables_and_hexes_the_rest() {
        let mut s = Vec::new();
        escape(b"a b\\\n\r\t\x00\xff~", |b| s.extend_from_slice(b));
        assert_eq!(s, b"a b\\\\\\n\\r\\t\\x00\\xff~");
    }

    #[test]
    fn numbers_and_addresses() {
        assert_eq!(parse_u64(b"7002"), Some(7002));
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"1x"), None);
        assert_eq!(parse_u64(b"99999999999999999999"), None);
        assert_eq!(parse_ipv4(b"10.0.2.2"), Some([10, 0, 2, 2]));
        assert_eq!(parse_ipv4(b"10.0.2"), None);
        assert_eq!(parse_ipv4(b"10.0.2.256"), None);
        assert_eq!(parse_ipv4(b"1.2.3.4.5"), None);
        assert_eq!(
            parse_endpoint(b"10.0.2.2:5555"),
            Some(([10, 0, 2, 2], 5555))
        );
        assert_eq!(parse_endpoint(b"10.0.2.2:0"), None);
        assert_eq!(parse_endpoint(b"10.0.2.2"), None);
        assert_eq!(parse_endpoint(b"10.0.2.2:70000"), None);
    }

    #[test]
    fn request_lines() {
        assert_eq!(parse_request(b"ECHO hi there"), Request::Echo(b"hi there"));
        assert_eq!(parse_request(b"ECHO x\r"), Request::Echo(b"x"));
        assert_eq!(parse_request(b"ECHO "), Request::Echo(b""));
        assert_eq!(parse_request(b"PIPE"), Request::Pipe);
        assert_eq!(parse_request(b"PIPE\r"), Request::Pipe);
        assert_eq!(parse_request(b"PIPE x"), Request::Bad);
        assert_eq!(parse_request(b"SINK"), Request::Sink);
        assert_eq!(parse_request(b"SOURCE 1048576"), Request::Source(1 << 20));
        assert_eq!(parse_request(b"SOURCE"), Request::Bad);
        assert_eq!(parse_request(b"SOURCE -1"), Request::Bad);
        assert_eq!(
            parse_request(b"GET env_share/a/b.txt"),
            Request::Get(b"env_share", b"a/b.txt")
        );
        assert_eq!(parse_request(b"GET env_share/"), Request::Bad);
        assert_eq!(parse_request(b"GET /x"), Request::Bad);
        assert_eq!(parse_request(b"echo x"), Request::Bad);
        assert_eq!(parse_request(b""), Request::Bad);
    }

    #[test]
    fn split_tag_needs_both_parts() {
        assert_eq!(split_tag(b"t/f"), Some((&b"t"[..], &b"f"[..])));
        assert_eq!(split_tag(b"tf"), None);
    }
}
