//! Whole sessions against both share kinds, plus msize negotiation and the read-only answers.

use super::*;
use crate::p9::proto::{NOTAG, QT_DIR, QT_FILE};
use crate::p9::server::MIN_MSIZE;

/// version → attach → walk → getattr → lopen → read → readdir → clunk, on either share.
fn full_session(share: Share, expect_names: &[&str]) {
    let mut c = Client::new(share);
    let r = c
        .version(1 << 20, b"9P2000.L")
        .expect(msg::TVERSION + 1)
        .unwrap();
    let mut rd = r.reader();
    assert_eq!(
        rd.u32("msize").unwrap(),
        512 * 1024,
        "msize = min(client, ours)"
    );
    assert_eq!(rd.str("version").unwrap(), b"9P2000.L");

    let root = c.attach(ROOT_FID).unwrap();
    assert_eq!(root.ty, QT_DIR);

    let qids = c.walk(ROOT_FID, 1, &["environment"]).unwrap();
    assert_eq!(qids.len(), 1);
    assert_eq!(qids[0].ty, QT_FILE);
    let attr = c.getattr(1).unwrap();
    assert_eq!(attr.qid, qids[0]);
    assert_eq!(attr.size, ENV_TEXT.len() as u64);
    assert_eq!(attr.mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(attr.valid & 0x7ff, 0x7ff, "basic attributes are valid");

    let (qid, iounit) = c.lopen(1, libc::O_RDONLY as u32).unwrap();
    assert_eq!(qid, qids[0]);
    assert_eq!(iounit, 512 * 1024 - 24);
    assert_eq!(c.read_all(1, 7).unwrap(), ENV_TEXT, "read in 7-byte pieces");
    assert_eq!(c.read(1, 1000, 100).unwrap(), b"", "read past EOF is empty");
    c.clunk(1).unwrap();
    assert_eq!(c.read(1, 0, 10), Err(libc::EBADF), "clunked fid is gone");

    c.walk(ROOT_FID, 2, &[]).unwrap();
    c.lopen(2, (libc::O_RDONLY | libc::O_DIRECTORY) as u32)
        .unwrap();
    let entries = c.readdir_all(2, 4096).unwrap();
    let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    names.sort_unstable();
    let mut want = [&[".", ".."], expect_names].concat();
    want.sort_unstable();
    assert_eq!(names, want);
    let dot = entries.iter().find(|e| e.name == ".").unwrap();
    assert_eq!(dot.qid.path, root.path, "`.` is the root itself");
    let env = entries.iter().find(|e| e.name == "environment").unwrap();
    assert_eq!(
        env.qid.path, qids[0].path,
        "readdir and walk agree on qid paths"
    );
    assert_eq!(env.dtype, libc::DT_REG);
    c.clunk(2).unwrap();
    c.clunk(ROOT_FID).unwrap();
    assert_eq!(c.server.fid_count(), 0);
}

#[test]
fn full_session_directory_share() {
    let (_tmp, dir) = fixture_dir("session");
    full_session(
        directory_share(&dir),
        &["cert.pem", "empty", "environment", "sub"],
    );
}

#[test]
fn full_session_memory_share() {
    full_session(memory_share(), &["cert.pem", "empty", "environment"]);
}

#[test]
fn nested_walk_and_dotdot_within_share() {
    let (_tmp, dir) = fixture_dir("nested");
    let mut c = Client::attached(directory_share(&dir));
    assert_eq!(c.cat(5, &["sub", "nested.txt"]).unwrap(), b"nested");
    assert_eq!(
        c.cat(5, &["sub", "..", "sub", ".", "nested.txt"]).unwrap(),
        b"nested"
    );
    let qids = c.walk(ROOT_FID, 6, &["sub", ".."]).unwrap();
    assert_eq!(
        qids[1],
        c.getattr(ROOT_FID).unwrap().qid,
        "sub/.. is the root"
    );
}

#[test]
fn readdir_resumes_from_returned_offsets_with_small_counts() {
    let (_tmp, dir) = fixture_dir("resume");
    for i in 0..40 {
        std::fs::write(dir.join(format!("file-{i:02}")), b"x").unwrap();
    }
    for share in [directory_share(&dir), memory_share()] {
        let mut c = Client::attached(share);
        c.walk(ROOT_FID, 1, &[]).unwrap();
        c.lopen(1, 0).unwrap();
        let whole = c.readdir_all(1, 64 * 1024).unwrap();
        // 40 bytes fit exactly one entry with a name of up to 16 bytes.
        let piecewise = c.readdir_all(1, 40).unwrap();
        assert_eq!(
            piecewise, whole,
            "resuming one entry at a time yields the same listing"
        );
        assert_eq!(
            c.readdir(1, 0, 10).unwrap(),
            vec![],
            "a count too small for one entry"
        );
        let last = whole.last().unwrap().offset;
        assert_eq!(
            c.readdir(1, last, 4096).unwrap(),
            vec![],
            "the last offset is the end"
        );
    }
}

#[test]
fn memory_share_attributes_and_statfs() {
    let mut c = Client::attached(memory_share());
    let root = c.getattr(ROOT_FID).unwrap();
    assert_eq!(root.mode, libc::S_IFDIR | 0o555);
    assert_eq!((root.uid, root.gid), (0, 0));
    c.walk(ROOT_FID, 1, &["cert.pem"]).unwrap();
    let cert = c.getattr(1).unwrap();
    assert_eq!(cert.mode, libc::S_IFREG | 0o444);
    assert_eq!((cert.uid, cert.gid, cert.nlink), (0, 0, 1));
    c.walk(ROOT_FID, 2, &["environment"]).unwrap();
    assert_eq!(c.getattr(2).unwrap().mode, libc::S_IFREG | 0o644);
    let reply = c
        .call(msg::TSTATFS, Body::default().u32(ROOT_FID))
        .expect(msg::TSTATFS + 1)
        .unwrap();
    let mut r = reply.reader();
    assert_eq!(r.u32("type").unwrap(), 0x0102_1997);
    assert_eq!(r.u32("bsize").unwrap(), 4096);
    assert_eq!(reply.body.len(), 4 + 4 + 8 * 6 + 4);
    assert_eq!(
        c.walk(1, 3, &["x"]),
        Err(libc::ENOTDIR),
        "a file has no children"
    );
    assert_eq!(c.readlink(1), Err(libc::EINVAL));
}

#[test]
fn directory_share_statfs_readlink_and_symlink_qid() {
    let (_tmp, dir) = fixture_dir("statfs");
    std::os::unix::fs::symlink("environment", dir.join("link")).unwrap();
    let mut c = Client::attached(directory_share(&dir));
    let reply = c
        .call(msg::TSTATFS, Body::default().u32(ROOT_FID))
        .expect(msg::TSTATFS + 1)
        .unwrap();
    assert!(reply.reader().u32("type").is_ok());
    let qids = c.walk(ROOT_FID, 1, &["link"]).unwrap();
    assert_eq!(
        qids[0].ty,
        crate::p9::proto::QT_SYMLINK,
        "symlinks are reported, not followed"
    );
    assert_eq!(c.readlink(1).unwrap(), b"environment");
    assert_eq!(c.getattr(1).unwrap().mode & libc::S_IFMT, libc::S_IFLNK);
    assert!(c.lopen(1, 0).is_err(), "a symlink cannot be opened");
    assert_eq!(
        c.readlink(ROOT_FID),
        Err(libc::EINVAL),
        "readlink of a directory"
    );
}

#[test]
fn msize_negotiation_and_read_clamp() {
    let mut c = Client::new(memory_share());
    let r = c
        .version(MIN_MSIZE, b"9P2000.L")
        .expect(msg::TVERSION + 1)
        .unwrap();
    assert_eq!(
        r.reader().u32("msize").unwrap(),
        MIN_MSIZE,
        "client's smaller msize wins"
    );
    assert_eq!(c.server.msize(), MIN_MSIZE);
    assert_eq!(
        c.version(MIN_MSIZE - 1, b"9P2000.L").errno(),
        Some(libc::EINVAL)
    );

    let big = vec![b'z'; 3 * MIN_MSIZE as usize];
    let share = MemoryShare::new()
        .with_file("big", big.clone(), 0o444)
        .unwrap();
    let mut c = Client::new(Share::Memory(share));
    c.version(MIN_MSIZE, b"9P2000.L")
        .expect(msg::TVERSION + 1)
        .unwrap();
    c.attach(ROOT_FID).unwrap();
    c.walk(ROOT_FID, 1, &["big"]).unwrap();
    c.lopen(1, 0).unwrap();
    let data = c.read(1, 0, u32::MAX).unwrap();
    assert_eq!(
        data.len(),
        (MIN_MSIZE - 24) as usize,
        "count clamped to msize - 24"
    );
    assert_eq!(c.read_all(1, u32::MAX).unwrap(), big);
    assert_eq!(
        c.read(1, u64::MAX, u32::MAX).unwrap(),
        b"",
        "huge offset reads nothing"
    );
}

#[test]
fn oversized_message_is_rejected_and_session_continues() {
    let mut c = Client::attached(memory_share());
    c.version(MIN_MSIZE, b"9P2000.L")
        .expect(msg::TVERSION + 1)
        .unwrap();
    c.attach(ROOT_FID).unwrap();
    let name = vec![b'a'; MIN_MSIZE as usize];
    let body = Body::default().u32(ROOT_FID).u32(1).u16(1).str(&name);
    assert_eq!(c.call(msg::TWALK, body).errno(), Some(libc::EMSGSIZE));
    assert!(c.getattr(ROOT_FID).is_ok());
}

#[test]
fn version_resets_fids_and_unknown_version_is_refused() {
    let mut c = Client::attached(memory_share());
    c.walk(ROOT_FID, 1, &["environment"]).unwrap();
    assert_eq!(c.server.fid_count(), 2);
    let r = c
        .version(MIN_MSIZE, b"9P2000.u")
        .expect(msg::TVERSION + 1)
        .unwrap();
    let mut rd = r.reader();
    rd.u32("msize").unwrap();
    assert_eq!(rd.str("version").unwrap(), b"unknown");
    assert_eq!(c.server.fid_count(), 0, "Tversion drops every fid");
    assert_eq!(
        c.attach(ROOT_FID),
        Err(libc::EPROTO),
        "no session after an unknown version"
    );
    c.version(MIN_MSIZE, b"9P2000.L")
        .expect(msg::TVERSION + 1)
        .unwrap();
    c.attach(ROOT_FID).unwrap();
}

#[test]
fn requests_before_version_are_refused() {
    let mut c = Client::new(memory_share());
    assert_eq!(c.attach(ROOT_FID), Err(libc::EPROTO));
}

#[test]
fn mutating_requests_get_erofs() {
    let (_tmp, dir) = fixture_dir("erofs");
    let mut c = Client::attached(directory_share(&dir));
    c.walk(ROOT_FID, 1, &["environment"]).unwrap();
    let mutating = [
        msg::TLCREATE,
        msg::TSYMLINK,
        msg::TMKNOD,
        msg::TRENAME,
        msg::TSETATTR,
        msg::TXATTRCREATE,
        msg::TLINK,
        msg::TMKDIR,
        msg::TRENAMEAT,
        msg::TUNLINKAT,
        msg::TWRITE,
        msg::TCREATE,
        msg::TWSTAT,
    ];
    for ty in mutating {
        let body = Body::default().u32(1).str(b"x").u32(0o644).u32(0);
        assert_eq!(c.call(ty, body).errno(), Some(libc::EROFS), "type {ty}");
    }
    for flags in [
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_CREAT,
        libc::O_TRUNC,
        libc::O_RDONLY | libc::O_TRUNC,
    ] {
        assert_eq!(
            c.lopen(1, flags as u32),
            Err(libc::EROFS),
            "flags {flags:#o}"
        );
    }
    assert_eq!(
        std::fs::read(dir.join("environment")).unwrap(),
        ENV_TEXT,
        "file untouched"
    );
    assert_eq!(
        c.call(msg::TREMOVE, Body::default().u32(1)).errno(),
        Some(libc::EROFS)
    );
    assert_eq!(
        c.getattr(1).map(|_| ()),
        Err(libc::EBADF),
        "Tremove clunks even when it fails"
    );
    assert!(dir.join("environment").exists());
}

#[test]
fn unknown_types_get_eopnotsupp() {
    let mut c = Client::attached(memory_share());
    for ty in [0u8, 6, 10, 102, 106, 112, 124, 200, 255] {
        assert_eq!(
            c.call(ty, Body::default().u32(0)).errno(),
            Some(libc::EOPNOTSUPP),
            "type {ty}"
        );
    }
}

#[test]
fn xattrs_flush_fsync_and_locks() {
    let mut c = Client::attached(memory_share());
    let named = Body::default()
        .u32(ROOT_FID)
        .u32(1)
        .str(b"security.selinux");
    assert_eq!(c.call(msg::TXATTRWALK, named).errno(), Some(libc::ENODATA));
    let list = Body::default().u32(ROOT_FID).u32(1).str(b"");
    let r = c
        .call(msg::TXATTRWALK, list)
        .expect(msg::TXATTRWALK + 1)
        .unwrap();
    assert_eq!(
        r.reader().u64("size").unwrap(),
        0,
        "the attribute list is empty"
    );
    assert_eq!(c.read(1, 0, 100).unwrap(), b"");
    c.clunk(1).unwrap();

    let r = c.call(msg::TFLUSH, Body::default().u16(7));
    assert_eq!((r.ty, r.body.len()), (msg::TFLUSH + 1, 0));
    let r = c.call(msg::TFSYNC, Body::default().u32(ROOT_FID).u32(0));
    assert_eq!(r.ty, msg::TFSYNC + 1);
    let lock = Body::default()
        .u32(ROOT_FID)
        .u8(0)
        .u32(0)
        .u64(0)
        .u64(10)
        .u32(42)
        .str(b"guest");
    let r = c.call(msg::TLOCK, lock).expect(msg::TLOCK + 1).unwrap();
    assert_eq!(r.body, [0], "lock succeeds");
    let getlock = Body::default()
        .u32(ROOT_FID)
        .u8(1)
        .u64(5)
        .u64(10)
        .u32(42)
        .str(b"guest");
    let r = c
        .call(msg::TGETLOCK, getlock)
        .expect(msg::TGETLOCK + 1)
        .unwrap();
    assert_eq!(
        r.reader().u8("type").unwrap(),
        2,
        "no conflicting lock (F_UNLCK)"
    );
    let fsync_bad = Body::default().u32(99).u32(0);
    assert_eq!(c.call(msg::TFSYNC, fsync_bad).errno(), Some(libc::EBADF));
}

#[test]
fn server_can_move_to_a_device_thread() {
    fn assert_send<T: Send + 'static>(_: &T) {}
    let (_tmp, dir) = fixture_dir("send");
    let server = NinePServer::new(directory_share(&dir), NinePConfig::default());
    assert_send(&server);
    let handle = std::thread::spawn(move || {
        let mut server = server;
        let mut out = Vec::new();
        let version = message(
            msg::TVERSION,
            NOTAG,
            &Body::default().u32(8192).str(b"9P2000.L"),
        );
        server.handle(&version, &mut out);
        out[4]
    });
    assert_eq!(handle.join().unwrap(), msg::TVERSION + 1);
}
