use crate::bus::MmioDevice;
use crate::firmware::pflash::{cmd, status, Pflash, PflashError, PFLASH_SECTOR_SIZE};
use std::path::PathBuf;

const LEN: usize = 4 * PFLASH_SECTOR_SIZE as usize;

fn image() -> Vec<u8> {
    (0..LEN).map(|i| (i % 200) as u8 + 1).collect()
}

/// A scratch image file, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str, data: &[u8]) -> Self {
        let p = std::env::temp_dir().join(format!("cvmm-pflash-{}-{tag}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn rd(f: &mut Pflash, at: u64) -> u8 {
    let mut b = [0u8];
    f.read(at, &mut b);
    b[0]
}

#[test]
fn ovmf_detection_sees_a_flash() {
    // QemuFlashDetected: probe a byte that is not 0x50/0x70/0x00, write CLEAR_STATUS, expect
    // array data back; write READ_STATUS, expect 0x00 (cleared status) => flash.
    let mut f = Pflash::new(image(), false).unwrap();
    let probe = (0..LEN as u64)
        .find(|&o| ![0x50, 0x70, 0x00].contains(&rd(&mut f, o)))
        .unwrap();
    let orig = rd(&mut f, probe);
    f.write(probe, &[cmd::CLEAR_STATUS]);
    assert_eq!(rd(&mut f, probe), orig);
    f.write(probe, &[cmd::READ_STATUS]);
    assert_eq!(rd(&mut f, probe), 0x00);
    assert!(!f.read_array_mode());
    f.write(probe, &[cmd::READ_ARRAY]);
    assert!(f.read_array_mode());
    assert_eq!(f.contents(), image());
}

#[test]
fn program_updates_the_array_and_the_file() {
    let s = Scratch::new("prog", &image());
    let mut f = Pflash::open(&s.0, false).unwrap();
    // QemuFlashWrite: 0x10 + byte per byte, then READ_ARRAY at the last one.
    for (i, b) in b"VARS".iter().enumerate() {
        f.write(0x100 + i as u64, &[cmd::PROGRAM]);
        assert_eq!(rd(&mut f, 0x100 + i as u64), status::READY);
        f.write(0x100 + i as u64, &[*b]);
        assert_eq!(rd(&mut f, 0), status::READY); // status mode after a program
    }
    f.write(0x103, &[cmd::READ_ARRAY]);
    let mut got = [0u8; 4];
    f.read(0x100, &mut got);
    assert_eq!(&got, b"VARS");
    // 0x40 works too, and a 4-byte program writes all four bytes.
    f.write(0x200, &[cmd::PROGRAM_ALT]);
    f.write(0x200, &[1, 2, 3, 4]);
    f.write(0x200, &[cmd::READ_ARRAY]);
    let disk = std::fs::read(&s.0).unwrap();
    assert_eq!(&disk[0x100..0x104], b"VARS");
    assert_eq!(&disk[0x200..0x204], &[1, 2, 3, 4]);
    assert_eq!(disk, f.contents());
    f.sync().unwrap();
    // Reopening sees the change.
    let g = Pflash::open(&s.0, false).unwrap();
    assert_eq!(&g.contents()[0x100..0x104], b"VARS");
}

#[test]
fn block_erase_clears_exactly_one_sector() {
    let s = Scratch::new("erase", &image());
    let mut f = Pflash::open(&s.0, false).unwrap();
    let sector = PFLASH_SECTOR_SIZE;
    f.write(2 * sector + 123, &[cmd::BLOCK_ERASE]);
    f.write(2 * sector + 123, &[cmd::CONFIRM]);
    assert_eq!(rd(&mut f, 0), status::READY);
    f.write(0, &[cmd::READ_ARRAY]);
    let want: Vec<u8> = image()
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (2 * LEN / 4..3 * LEN / 4).contains(&i) {
                0xff
            } else {
                b
            }
        })
        .collect();
    assert_eq!(f.contents(), want);
    assert_eq!(std::fs::read(&s.0).unwrap(), want);
    // A wrong confirm is a sequence error and erases nothing.
    f.write(0, &[cmd::BLOCK_ERASE]);
    f.write(0, &[0x42]);
    assert_eq!(
        rd(&mut f, 0),
        status::READY | status::ERASE_ERROR | status::PROGRAM_ERROR
    );
    f.write(0, &[cmd::CLEAR_STATUS]);
    assert_eq!(f.contents(), want);
    f.write(0, &[cmd::READ_STATUS]);
    assert_eq!(rd(&mut f, 0), 0);
}

#[test]
fn read_only_flash_refuses_changes() {
    let s = Scratch::new("ro", &image());
    let mut f = Pflash::open(&s.0, true).unwrap();
    assert!(f.read_only());
    f.write(5, &[cmd::PROGRAM]);
    f.write(5, &[0]);
    assert_eq!(rd(&mut f, 5), status::READY | status::PROGRAM_ERROR);
    f.write(5, &[cmd::BLOCK_ERASE]);
    f.write(5, &[cmd::CONFIRM]);
    assert_eq!(rd(&mut f, 5) & status::ERASE_ERROR, status::ERASE_ERROR);
    f.write(5, &[cmd::READ_ARRAY]);
    assert_eq!(f.contents(), image());
    assert_eq!(std::fs::read(&s.0).unwrap(), image());
}

#[test]
fn out_of_range_accesses_are_harmless() {
    let mut f = Pflash::new(image(), false).unwrap();
    let end = LEN as u64;
    let mut b = [0u8; 4];
    f.read(end - 2, &mut b);
    assert_eq!(b, [image()[LEN - 2], image()[LEN - 1], 0xff, 0xff]);
    f.read(u64::MAX - 1, &mut b);
    assert_eq!(b, [0xff; 4]);
    // A program straddling the end changes nothing and reports an error.
    f.write(end - 1, &[cmd::PROGRAM]);
    f.write(end - 1, &[9, 9]);
    assert_eq!(rd(&mut f, 0) & status::PROGRAM_ERROR, status::PROGRAM_ERROR);
    f.write(0, &[cmd::CLEAR_STATUS]);
    f.write(u64::MAX, &[cmd::PROGRAM]);
    f.write(u64::MAX, &[9]);
    f.write(end + 10 * PFLASH_SECTOR_SIZE, &[cmd::BLOCK_ERASE]);
    f.write(end + 10 * PFLASH_SECTOR_SIZE, &[cmd::CONFIRM]);
    assert_eq!(
        rd(&mut f, 0),
        status::READY | status::PROGRAM_ERROR | status::ERASE_ERROR
    );
    f.write(0, &[]);
    f.write(0, &[cmd::READ_ARRAY]);
    assert_eq!(f.contents(), image());
}

#[test]
fn cfi_query_and_ids() {
    let mut f = Pflash::new(image(), false).unwrap();
    f.write(0x55, &[cmd::CFI_QUERY]);
    let mut q = [0u8; 3];
    f.read(0x10, &mut q);
    assert_eq!(&q, b"QRY");
    assert_eq!(rd(&mut f, 0x13), 0x01); // Intel command set
    assert_eq!(rd(&mut f, 0x27), 14); // 16 KiB
    assert_eq!(rd(&mut f, 0x2d), 3); // 4 blocks
    assert_eq!((rd(&mut f, 0x2f), rd(&mut f, 0x30)), (0x10, 0x00)); // 4096 bytes
    assert_eq!(rd(&mut f, 0x200), 0);
    f.write(0, &[cmd::READ_ID]);
    assert_eq!((rd(&mut f, 0), rd(&mut f, 1)), (0, 0));
    f.write(0, &[0x00]); // QEMU's read-array alias
    assert_eq!(rd(&mut f, 0), image()[0]);
    // Lock commands are accepted without effect.
    f.write(0, &[cmd::LOCK_SETUP]);
    f.write(0, &[cmd::CONFIRM]);
    assert_eq!(rd(&mut f, 0), status::READY);
}

#[test]
fn bad_images_are_rejected() {
    assert!(matches!(
        Pflash::new(vec![0; 1000], false),
        Err(PflashError::BadSize(1000))
    ));
    assert!(matches!(
        Pflash::new(vec![], true),
        Err(PflashError::BadSize(0))
    ));
    let missing = std::env::temp_dir().join("cvmm-pflash-does-not-exist");
    assert!(matches!(
        Pflash::open(&missing, true),
        Err(PflashError::Io { .. })
    ));
}
