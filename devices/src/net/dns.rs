//! Local answers for the guest's DNS server 10.0.2.3: names in the host's `/etc/hosts` resolve
//! as they do on the host (as slirp does through the host resolver), everything else is relayed
//! upstream. Only A queries for known names are answered here; AAAA for a known name gets an
//! empty NOERROR so the guest does not wait for an upstream that may not know it.

use std::net::Ipv4Addr;
use std::path::Path;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const MAX_NAME: usize = 255;

/// Names and IPv4 addresses from a hosts file.
#[derive(Debug, Default, Clone)]
pub struct HostsTable {
    entries: Vec<(String, Ipv4Addr)>,
}

impl HostsTable {
    /// Reads `path`; a missing or unreadable file gives an empty table.
    pub fn load(path: &Path) -> Self {
        std::fs::read_to_string(path)
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }

    /// Parses hosts-file text (`ADDR NAME [ALIAS...]`, `#` comments); IPv6 lines are skipped.
    pub fn parse(text: &str) -> Self {
        let mut entries = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(Ok(addr)) = words.next().map(str::parse::<Ipv4Addr>) else {
                continue;
            };
            for name in words {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if !name.is_empty() && !entries.iter().any(|(n, _)| *n == name) {
                    entries.push((name, addr));
                }
            }
        }
        Self { entries }
    }

    fn lookup(&self, name: &str) -> Option<Ipv4Addr> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// The reply to `query` when the table knows the name; `None` means relay upstream.
    pub fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        if query.len() < 12 || self.entries.is_empty() {
            return None;
        }
        let flags = u16::from_be_bytes([query[2], query[3]]);
        let qdcount = u16::from_be_bytes([query[4], query[5]]);
        if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 || qdcount != 1 {
            return None; // a response, not a standard query, or several questions
        }
        let (name, end) = read_name(query, 12)?;
        let qtype = u16::from_be_bytes([*query.get(end)?, *query.get(end + 1)?]);
        let qclass = u16::from_be_bytes([*query.get(end + 2)?, *query.get(end + 3)?]);
        let addr = self.lookup(&name)?;
        if qclass != CLASS_IN || (qtype != TYPE_A && qtype != TYPE_AAAA) {
            return None;
        }
        let question = &query[12..end + 4];
        let mut r = Vec::with_capacity(question.len() + 32);
        r.extend_from_slice(&query[0..2]);
        let rd = flags & 0x0100;
        r.extend_from_slice(&(0x8480 | rd).to_be_bytes()); // QR, AA, RD copied, RA
        r.extend_from_slice(&1u16.to_be_bytes());
        let an: u16 = (qtype == TYPE_A).into();
        r.extend_from_slice(&an.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0]);
        r.extend_from_slice(question);
        if qtype == TYPE_A {
            r.extend_from_slice(&[0xc0, 0x0c]); // the name in the question
            r.extend_from_slice(&TYPE_A.to_be_bytes());
            r.extend_from_slice(&CLASS_IN.to_be_bytes());
            r.extend_from_slice(&60u32.to_be_bytes());
            r.extend_from_slice(&4u16.to_be_bytes());
            r.extend_from_slice(&addr.octets());
        }
        Some(r)
    }
}

/// A SERVFAIL reply to `query` (header and question echoed), for when no upstream resolver is
/// configured: the guest's resolver fails at once instead of waiting for its timeout.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    let end = if qdcount == 1 {
        read_name(query, 12)
            .map(|(_, e)| e + 4)
            .filter(|&e| e <= query.len())?
    } else {
        12
    };
    let mut r = query[..end].to_vec();
    r[2] = 0x80 | (query[2] & 0x01); // QR, RD copied
    r[3] = 0x80 | 2; // RA, RCODE = SERVFAIL
    r[4..6].copy_from_slice(&u16::from(end > 12).to_be_bytes());
    r[6..12].fill(0);
    Some(r)
}

/// Reads an uncompressed name starting at `at`; returns it lower-cased and the offset after it.
fn read_name(msg: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    loop {
        let len = *msg.get(at)? as usize;
        at += 1;
        if len == 0 {
            return Some((name, at));
        }
        if len > 63 {
            return None; // compression pointers do not occur in questions
        }
        let label = msg.get(at..at + len)?;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&String::from_utf8_lossy(label).to_ascii_lowercase());
        if name.len() > MAX_NAME {
            return None;
        }
        at += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    fn table() -> HostsTable {
        HostsTable::parse(
            "# comment\n127.0.0.1 localhost\n10.1.2.3  cvms.example cvms # alias\n::1 ip6-localhost\n",
        )
    }

    #[test]
    fn known_names_get_a_records() {
        let r = table().answer(&query("CVMS.example", TYPE_A)).unwrap();
        assert_eq!(&r[0..2], &[0x12, 0x34]);
        assert_eq!(r[3] & 0x0f, 0, "NOERROR");
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 1, "one answer");
        assert_eq!(&r[r.len() - 4..], &[10, 1, 2, 3]);
        let alias = table().answer(&query("cvms", TYPE_A)).unwrap();
        assert_eq!(&alias[alias.len() - 4..], &[10, 1, 2, 3]);
    }

    #[test]
    fn aaaa_for_known_names_is_empty_and_unknown_names_are_relayed() {
        let r = table().answer(&query("cvms", TYPE_AAAA)).unwrap();
        assert_eq!(u16::from_be_bytes([r[6], r[7]]), 0);
        assert!(table().answer(&query("example.org", TYPE_A)).is_none());
        assert!(table().answer(&query("ip6-localhost", TYPE_A)).is_none());
    }

    #[test]
    fn servfail_echoes_id_and_question() {
        let q = query("example.org", TYPE_A);
        let r = servfail(&q).unwrap();
        assert_eq!(&r[0..2], &q[0..2]);
        assert_eq!(r[3] & 0x0f, 2, "SERVFAIL");
        assert_ne!(r[2] & 0x80, 0, "a response");
        assert_eq!(&r[12..], &q[12..]);
        for cut in 0..12 {
            assert!(servfail(&q[..cut]).is_none());
        }
    }

    #[test]
    fn malformed_queries_are_not_answered() {
        let t = table();
        let good = query("cvms", TYPE_A);
        for cut in 0..good.len() {
            assert!(t.answer(&good[..cut]).is_none(), "cut at {cut}");
        }
        let mut resp = good.clone();
        resp[2] |= 0x80;
        assert!(t.answer(&resp).is_none());
        let mut ptr = good.clone();
        ptr[12] = 0xc0;
        assert!(t.answer(&ptr).is_none());
        assert!(HostsTable::default().answer(&good).is_none());
    }
}
