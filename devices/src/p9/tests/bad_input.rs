//! Hostile and malformed input: every case gets Rlerror (or a correct empty reply), nothing
//! panics, and the server keeps serving afterwards.

use super::*;
use crate::p9::proto::{parse_request, ProtoError, NOTAG};

/// One well-formed request body per parsed type, all naming fid 1 / newfid 2.
fn valid_bodies() -> Vec<(u8, Body)> {
    vec![
        (msg::TVERSION, Body::default().u32(8192).str(b"9P2000.L")),
        (
            msg::TATTACH,
            Body::default().u32(1).u32(!0).str(b"u").str(b"").u32(0),
        ),
        (
            msg::TWALK,
            Body::default().u32(1).u32(2).u16(1).str(b"environment"),
        ),
        (msg::TGETATTR, Body::default().u32(1).u64(0x7ff)),
        (msg::TLOPEN, Body::default().u32(1).u32(0)),
        (msg::TREAD, Body::default().u32(1).u64(0).u32(100)),
        (msg::TREADDIR, Body::default().u32(1).u64(0).u32(100)),
        (msg::TREADLINK, Body::default().u32(1)),
        (msg::TSTATFS, Body::default().u32(1)),
        (
            msg::TXATTRWALK,
            Body::default().u32(1).u32(2).str(b"user.x"),
        ),
        (msg::TFSYNC, Body::default().u32(1).u32(0)),
        (
            msg::TLOCK,
            Body::default()
                .u32(1)
                .u8(0)
                .u32(0)
                .u64(0)
                .u64(0)
                .u32(1)
                .str(b"c"),
        ),
        (
            msg::TGETLOCK,
            Body::default().u32(1).u8(0).u64(0).u64(0).u32(1).str(b"c"),
        ),
        (msg::TFLUSH, Body::default().u16(3)),
        (msg::TCLUNK, Body::default().u32(1)),
        (msg::TREMOVE, Body::default().u32(1)),
    ]
}

fn still_serving(c: &mut Client) {
    c.walk(ROOT_FID, 77, &["environment"]).unwrap();
    c.lopen(77, 0).unwrap();
    assert_eq!(c.read_all(77, 4096).unwrap(), ENV_TEXT);
    c.clunk(77).unwrap();
}

#[test]
fn short_messages_and_bad_size_fields() {
    let mut c = Client::attached(memory_share());
    for len in 0..7 {
        let r = c.raw(&[5u8; 7][..len]);
        assert_eq!(r.errno(), Some(libc::EINVAL), "{len}-byte message");
        if len < 7 {
            assert_eq!(r.tag, NOTAG, "no tag to echo in a {len}-byte message");
        }
    }
    let good = message(msg::TGETATTR, 9, &Body::default().u32(ROOT_FID).u64(0));
    for size in [
        0u32,
        7,
        good.len() as u32 - 1,
        good.len() as u32 + 1,
        u32::MAX,
    ] {
        let mut m = good.clone();
        m[..4].copy_from_slice(&size.to_le_bytes());
        let r = c.raw(&m);
        assert_eq!(
            (r.errno(), r.tag),
            (Some(libc::EINVAL), 9),
            "size field {size}"
        );
    }
    let mut oversized = message(msg::TCLUNK, 4, &Body(vec![0; 64 * 1024]));
    assert_eq!(c.raw(&oversized).errno(), Some(libc::EMSGSIZE));
    oversized.truncate(20);
    assert_eq!(
        c.raw(&oversized).errno(),
        Some(libc::EINVAL),
        "size field now disagrees"
    );
    still_serving(&mut c);
}

#[test]
fn truncated_and_padded_bodies_are_rejected() {
    let mut c = Client::attached(memory_share());
    for (ty, body) in valid_bodies() {
        let full = message(ty, 5, &body);
        assert!(parse_request(&full).is_ok(), "type {ty} body is valid");
        for cut in 1..=body.0.len() {
            let short = message(ty, 5, &Body(body.0[..body.0.len() - cut].to_vec()));
            assert!(
                matches!(parse_request(&short), Err(ProtoError::Truncated { .. })),
                "type {ty} cut by {cut}"
            );
            assert_eq!(
                c.raw(&short).errno(),
                Some(libc::EINVAL),
                "type {ty} cut by {cut}"
            );
        }
        let mut padded = body.0.clone();
        padded.push(0);
        let padded = message(ty, 5, &Body(padded));
        assert_eq!(
            parse_request(&padded),
            Err(ProtoError::TrailingBytes { ty, extra: 1 })
        );
        assert_eq!(c.raw(&padded).errno(), Some(libc::EINVAL));
    }
    still_serving(&mut c);
}

#[test]
fn walk_name_count_limit() {
    let mut c = Client::attached(memory_share());
    let sixteen = [".."; 16];
    assert_eq!(c.walk(ROOT_FID, 1, &sixteen).unwrap().len(), 16);
    let seventeen = [".."; 17];
    assert_eq!(c.walk(ROOT_FID, 2, &seventeen), Err(libc::E2BIG));
    let lying = Body::default().u32(ROOT_FID).u32(3).u16(u16::MAX).str(b"a");
    assert_eq!(c.call(msg::TWALK, lying).errno(), Some(libc::E2BIG));
    let short = Body::default().u32(ROOT_FID).u32(3).u16(3).str(b"a");
    assert_eq!(
        c.call(msg::TWALK, short).errno(),
        Some(libc::EINVAL),
        "fewer names than nwname"
    );
    still_serving(&mut c);
}

#[test]
fn fid_reuse_and_unknown_fids() {
    let mut c = Client::attached(memory_share());
    assert_eq!(c.attach(ROOT_FID), Err(libc::EEXIST));
    c.walk(ROOT_FID, 1, &[]).unwrap();
    assert_eq!(c.walk(ROOT_FID, 1, &["environment"]), Err(libc::EEXIST));
    assert_eq!(
        c.walk(ROOT_FID, !0, &[]),
        Err(libc::EINVAL),
        "NOFID cannot be bound"
    );
    // newfid == fid walks the fid itself.
    c.walk(1, 1, &["environment"]).unwrap();
    assert_eq!(c.getattr(1).unwrap().size, ENV_TEXT.len() as u64);
    let afid = Body::default().u32(9).u32(1).str(b"u").str(b"").u32(0);
    assert_eq!(
        c.call(msg::TATTACH, afid).errno(),
        Some(libc::EINVAL),
        "no auth fids"
    );

    let bad = 99;
    assert_eq!(c.walk(bad, 2, &[]), Err(libc::EBADF));
    assert_eq!(c.getattr(bad).map(|_| ()), Err(libc::EBADF));
    assert_eq!(c.lopen(bad, 0).map(|_| ()), Err(libc::EBADF));
    assert_eq!(c.read(bad, 0, 1), Err(libc::EBADF));
    assert_eq!(c.readdir(bad, 0, 100), Err(libc::EBADF));
    assert_eq!(c.readlink(bad), Err(libc::EBADF));
    assert_eq!(c.clunk(bad), Err(libc::EBADF));
    for (ty, body) in valid_bodies()
        .into_iter()
        .filter(|(ty, _)| ![msg::TVERSION, msg::TATTACH, msg::TFLUSH].contains(ty))
    {
        let body = Body([&bad.to_le_bytes()[..], &body.0[4..]].concat());
        let r = c.call(ty, body);
        assert_eq!(
            r.errno(),
            Some(libc::EBADF),
            "type {ty} with an unknown fid"
        );
    }
    still_serving(&mut c);
}

#[test]
fn io_on_wrong_fid_states() {
    let (_tmp, dir) = fixture_dir("states");
    let mut c = Client::attached(directory_share(&dir));
    c.walk(ROOT_FID, 1, &["environment"]).unwrap();
    assert_eq!(c.read(1, 0, 10), Err(libc::EBADF), "read before lopen");
    c.lopen(1, 0).unwrap();
    assert_eq!(c.lopen(1, 0).map(|_| ()), Err(libc::EINVAL), "second lopen");
    assert_eq!(c.readdir(1, 0, 100), Err(libc::ENOTDIR));
    assert_eq!(c.read(1, 1 << 40, u32::MAX).unwrap(), b"", "far past EOF");
    assert_eq!(
        c.read(1, u64::MAX, 10),
        Err(libc::EINVAL),
        "offset beyond off_t"
    );
    c.walk(ROOT_FID, 2, &[]).unwrap();
    c.lopen(2, 0).unwrap();
    assert_eq!(c.read(2, 0, 10), Err(libc::EISDIR));
    assert_eq!(
        c.readdir(2, u64::MAX, 100),
        Err(libc::EINVAL),
        "offset beyond off_t"
    );
    still_serving(&mut c);
}

#[test]
fn fid_table_is_capped() {
    let config = NinePConfig {
        max_fids: 8,
        ..NinePConfig::default()
    };
    let mut c = Client::with_config(memory_share(), config);
    c.version(8192, b"9P2000.L")
        .expect(msg::TVERSION + 1)
        .unwrap();
    c.attach(ROOT_FID).unwrap();
    for fid in 1..8 {
        c.walk(ROOT_FID, fid, &["environment"]).unwrap();
    }
    assert_eq!(c.walk(ROOT_FID, 8, &[]), Err(libc::EMFILE));
    assert_eq!(c.attach(9), Err(libc::EMFILE));
    let xattr = Body::default().u32(ROOT_FID).u32(10).str(b"");
    assert_eq!(c.call(msg::TXATTRWALK, xattr).errno(), Some(libc::EMFILE));
    c.walk(3, 3, &[]).unwrap();
    assert_eq!(
        c.server.fid_count(),
        8,
        "rebinding a fid in place needs no new slot"
    );
    c.clunk(7).unwrap();
    c.walk(ROOT_FID, 8, &[]).unwrap();
}

/// A small deterministic generator (xorshift64*) for the mutation loop below.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mutated_messages_never_break_the_server() {
    let (_tmp, dir) = fixture_dir("mutate");
    for share in [directory_share(&dir), memory_share()] {
        let mut c = Client::attached(share);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let seeds: Vec<Vec<u8>> = valid_bodies()
            .iter()
            .map(|(ty, b)| message(*ty, 1, b))
            .collect();
        for _ in 0..4000 {
            let mut m = seeds[rng.below(seeds.len())].clone();
            for _ in 0..1 + rng.below(4) {
                match rng.below(4) {
                    0 => m.truncate(rng.below(m.len() + 1)),
                    1 => m.push(rng.next() as u8),
                    _ if !m.is_empty() => {
                        let at = rng.below(m.len());
                        m[at] = rng.next() as u8;
                    }
                    _ => {}
                }
            }
            if rng.below(2) == 0 && m.len() >= 4 {
                let len = m.len() as u32;
                m[..4].copy_from_slice(&len.to_le_bytes());
            }
            c.raw(&m); // checks the reply is well-formed and within msize
        }
        // Whatever state the noise left, a new session works.
        c.version(64 * 1024, b"9P2000.L")
            .expect(msg::TVERSION + 1)
            .unwrap();
        c.attach(ROOT_FID).unwrap();
        still_serving(&mut c);
    }
}
