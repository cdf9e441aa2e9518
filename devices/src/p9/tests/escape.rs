//! Confinement: nothing outside the shared directory is ever reachable, with openat2 and with
//! the per-component openat fallback. Every test also checks that no reply ever carried the
//! content of the files planted outside the share.

use std::os::unix::fs::symlink;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;
use crate::p9::proto::QT_SYMLINK;

const SECRET: &[u8] = b"TOP-SECRET-OUTSIDE";

/// `<tmp>/outside/secret.txt` next to the fixture share, plus escaping symlinks in the share.
fn hostile_fixture(label: &str) -> (TempDir, PathBuf) {
    let (tmp, share) = fixture_dir(label);
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
    std::fs::write(outside.join("inner.txt"), SECRET).unwrap();
    symlink("/etc/passwd", share.join("passwd")).unwrap();
    symlink("/etc", share.join("etc_abs")).unwrap();
    symlink("../..", share.join("up")).unwrap();
    symlink("../outside", share.join("outside_rel")).unwrap();
    symlink(&outside, share.join("outside_abs")).unwrap();
    symlink("/proc/self/root", share.join("proc_root")).unwrap();
    symlink("/proc/self/cwd", share.join("proc_cwd")).unwrap();
    symlink("../../outside", share.join("sub/escape")).unwrap();
    (tmp, share)
}

/// Both resolution strategies over the same directory.
fn shares(dir: &Path) -> [Share; 2] {
    [
        Share::Directory(DirectoryShare::open(dir).unwrap()),
        Share::Directory(DirectoryShare::open(dir).unwrap().without_openat2()),
    ]
}

fn assert_nothing_leaked(c: &Client) {
    let leaked = |needle: &[u8]| c.seen.windows(needle.len()).any(|w| w == needle);
    assert!(!leaked(SECRET), "a reply carried the outside secret");
    assert!(!leaked(b"root:x:0:0"), "a reply carried /etc/passwd");
}

#[test]
fn dotdot_at_root_stays_at_root() {
    let (_tmp, dir) = hostile_fixture("dotdot");
    for share in shares(&dir) {
        let mut c = Client::attached(share);
        let root = c.getattr(ROOT_FID).unwrap().qid;
        let qids = c.walk(ROOT_FID, 1, &["..", "..", "..", "."]).unwrap();
        assert!(
            qids.iter().all(|q| *q == root),
            "every step stays at the root"
        );
        assert_eq!(c.walk(1, 2, &["outside", "secret.txt"]), Err(libc::ENOENT));
        let qids = c
            .walk(ROOT_FID, 2, &["sub", "..", "..", "sub", "nested.txt"])
            .unwrap();
        assert_eq!(qids[2], root);
        c.lopen(1, 0).unwrap();
        let listing = c.readdir_all(1, 4096).unwrap();
        let dotdot = listing.iter().find(|e| e.name == "..").unwrap();
        assert_eq!(dotdot.qid, root, "the root's `..` entry is the root");
        assert!(!listing.iter().any(|e| e.name == "outside"));
        assert_nothing_leaked(&c);
    }
}

#[test]
fn symlinks_pointing_out_are_never_followed() {
    let (_tmp, dir) = hostile_fixture("symlinks");
    let links: [(&str, &[&str]); 7] = [
        ("passwd", &[]),
        ("etc_abs", &["passwd"]),
        ("up", &["etc", "passwd"]),
        ("outside_rel", &["secret.txt"]),
        ("outside_abs", &["secret.txt"]),
        ("proc_root", &["etc", "passwd"]),
        ("proc_cwd", &["secret.txt"]),
    ];
    for share in shares(&dir) {
        let mut c = Client::attached(share);
        for (link, rest) in links {
            let qids = c.walk(ROOT_FID, 1, &[link]).unwrap();
            assert_eq!(qids[0].ty, QT_SYMLINK, "{link} is reported as a symlink");
            assert!(c.lopen(1, 0).is_err(), "{link} cannot be opened");
            assert!(c.read(1, 0, 4096).is_err(), "{link} cannot be read");
            assert_eq!(
                c.walk(1, 2, &["x"]),
                Err(libc::ENOTDIR),
                "no walking below {link}"
            );
            c.clunk(1).unwrap();

            let path = [&[link][..], rest].concat();
            if !rest.is_empty() {
                let qids = c.walk(ROOT_FID, 3, &path).unwrap();
                assert_eq!(qids.len(), 1, "{path:?}: partial walk stops at the symlink");
                assert_eq!(
                    c.getattr(3).map(|_| ()),
                    Err(libc::EBADF),
                    "newfid unbound after a partial walk"
                );
            }
        }
        let qids = c
            .walk(ROOT_FID, 4, &["sub", "escape", "secret.txt"])
            .unwrap();
        assert_eq!(qids.len(), 2, "sub/escape is walked to, never through");
        assert_nothing_leaked(&c);
    }
}

#[test]
fn walk_names_with_separators_or_nul_are_rejected() {
    let (_tmp, dir) = hostile_fixture("names");
    for share in shares(&dir) {
        let mut c = Client::attached(share);
        let bad: [&[u8]; 7] = [
            b"../outside/secret.txt",
            b"sub/../../outside",
            b"/etc/passwd",
            b"outside_rel/secret.txt",
            b"environment\0",
            b"",
            &[b'a'; 256],
        ];
        for name in bad {
            assert!(
                c.walk_bytes(ROOT_FID, 1, &[name]).is_err(),
                "{:?}",
                String::from_utf8_lossy(name)
            );
            let qids = c.walk_bytes(ROOT_FID, 1, &[b"sub", name]).unwrap();
            assert_eq!(qids.len(), 1, "a bad later name ends the walk");
        }
        assert_eq!(c.server.fid_count(), 1, "no fid was bound by a failed walk");
        assert_nothing_leaked(&c);
    }
}

/// Atomically exchanges two directory entries (renameat2 RENAME_EXCHANGE).
fn exchange(a: &Path, b: &Path) {
    let a = std::ffi::CString::new(a.as_os_str().as_encoded_bytes()).unwrap();
    let b = std::ffi::CString::new(b.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: both paths are NUL-terminated and only read during the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(ret, 0, "renameat2: {}", std::io::Error::last_os_error());
}

#[test]
fn directory_swapped_for_symlink_between_walks() {
    for fallback in [false, true] {
        let (tmp, dir) = hostile_fixture("swap");
        let share = DirectoryShare::open(&dir).unwrap();
        let share = if fallback {
            share.without_openat2()
        } else {
            share
        };
        let mut c = Client::attached(Share::Directory(share));
        c.walk(ROOT_FID, 1, &["sub"]).unwrap();
        std::fs::write(tmp.path().join("outside/nested.txt"), SECRET).unwrap();
        // Move the real directory out of the share and put a symlink to the outside there.
        std::fs::rename(dir.join("sub"), tmp.path().join("moved")).unwrap();
        std::fs::write(tmp.path().join("moved/nested.txt"), SECRET).unwrap();
        symlink(tmp.path().join("outside"), dir.join("sub")).unwrap();

        assert!(
            c.walk(1, 2, &["nested.txt"]).is_err(),
            "the old fid's path now crosses a symlink"
        );
        assert!(c.walk(1, 2, &["secret.txt"]).is_err());
        assert!(
            c.lopen(1, 0).is_err(),
            "the walked directory is no longer at its path"
        );
        let qids = c.walk(ROOT_FID, 3, &["sub", "secret.txt"]).unwrap();
        assert_eq!(qids.len(), 1);
        let qids = c.walk(1, 4, &["..", "sub", "nested.txt"]).unwrap();
        assert_eq!(
            qids.len(),
            2,
            "`..` of the old fid is the share root, then stops at the link"
        );
        assert_nothing_leaked(&c);
    }
}

/// A thread exchanging two entries until dropped (stopped and joined even if a test panics, so
/// the temp dir can be removed).
struct Swapper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Swapper {
    fn start(a: PathBuf, b: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                exchange(&a, &b);
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn concurrent_swapping_never_exposes_outside_content() {
    let (tmp, dir) = hostile_fixture("race");
    std::fs::create_dir(dir.join("flip")).unwrap();
    std::fs::write(dir.join("flip/inner.txt"), b"inside").unwrap();
    symlink(tmp.path().join("outside"), dir.join("flip_link")).unwrap();
    for share in shares(&dir) {
        let swapper = Swapper::start(dir.join("flip"), dir.join("flip_link"));
        let mut c = Client::attached(share);
        for _ in 0..1500 {
            if let Ok(data) = c.cat(1, &["flip", "inner.txt"]) {
                assert_eq!(data, b"inside");
            }
            // Walk in two steps so the swap can land between them.
            if c.walk(ROOT_FID, 2, &["flip"]).is_ok() {
                if c.walk(2, 4, &["inner.txt"]).is_ok() {
                    if let Ok(data) = c.lopen(4, 0).and_then(|_| c.read_all(4, 4096)) {
                        assert_eq!(data, b"inside");
                    }
                    c.clunk(4).unwrap();
                }
                c.clunk(2).unwrap();
            }
        }
        drop(swapper);
        assert_nothing_leaked(&c);
    }
}
