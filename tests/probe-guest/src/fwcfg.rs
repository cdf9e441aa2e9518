//! QEMU fw_cfg data formats for the FW protocol, as pure code (host-tested): the file directory
//! (item 0x19), RAM ranges of `etc/e820`, and an interpreter of the `etc/table-loader` script
//! (the "linker/loader" that places and patches the ACPI tables) that works on a byte buffer
//! standing for guest RAM. The port and DMA access is in `fw.rs`.

use crate::phys::{u32_at, u64_at, u8_at};

/// Length of a file name in the directory and in loader commands (NUL-padded).
pub const NAME_LEN: usize = 56;
/// Directory entries kept (QEMU offers at most 32 files by default).
pub const MAX_FILES: usize = 64;
/// Bytes of one directory entry: BE32 size, BE16 key, BE16 reserved, name.
pub const DIR_ENTRY_LEN: usize = 64;
/// Bytes of one table-loader command.
pub const CMD_LEN: usize = 128;
/// Blobs (ALLOCATE commands) the interpreter tracks.
pub const MAX_BLOBS: usize = 32;
/// Allocation granularity of loader blobs: pages, as OVMF allocates them.
pub const BLOB_ALIGN: u64 = 4096;

const CMD_ALLOCATE: u32 = 1;
const CMD_ADD_POINTER: u32 = 2;
const CMD_ADD_CHECKSUM: u32 = 3;
const ZONE_HIGH: u8 = 1;
const ZONE_FSEG: u8 = 2;
const E820_RAM: u32 = 1;

fn be32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

/// The name part of a NUL-padded field (up to the first NUL).
pub fn trim_name(field: &[u8]) -> &[u8] {
    let len = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    &field[..len]
}

/// One fw_cfg file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct File {
    name: [u8; NAME_LEN],
    /// Size in bytes.
    pub size: u32,
    /// Item selector.
    pub key: u16,
}

impl File {
    /// The file name without its NUL padding.
    pub fn name(&self) -> &[u8] {
        trim_name(&self.name)
    }
}

const NO_FILE: File = File {
    name: [0; NAME_LEN],
    size: 0,
    key: 0,
};

/// The fw_cfg file directory.
pub struct Dir {
    /// The entry count the directory announces.
    pub count: u32,
    files: [File; MAX_FILES],
    len: usize,
}

impl Dir {
    /// A directory without files.
    pub const fn empty() -> Self {
        Dir {
            count: 0,
            files: [NO_FILE; MAX_FILES],
            len: 0,
        }
    }

    /// The entries read (at most `MAX_FILES`, and only whole ones).
    pub fn files(&self) -> &[File] {
        &self.files[..self.len]
    }

    /// The file called `name` (compared without NUL padding).
    pub fn find(&self, name: &[u8]) -> Option<&File> {
        let name = trim_name(name);
        self.files().iter().find(|f| f.name() == name)
    }
}

/// Parses a directory (item 0x19): BE32 count, then `count` 64-byte entries. Entries beyond
/// `MAX_FILES` or beyond the end of `buf` are left out; `count` keeps the announced number.
pub fn parse_dir(buf: &[u8]) -> Dir {
    let mut d = Dir::empty();
    let Some(count) = be32(buf, 0) else {
        return d;
    };
    d.count = count;
    let entries = buf.get(4..).unwrap_or(&[]).chunks_exact(DIR_ENTRY_LEN);
    for e in entries.take(count.min(MAX_FILES as u32) as usize) {
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&e[8..]);
        d.files[d.len] = File {
            name,
            size: be32(e, 0).unwrap_or(0),
            key: be16(e, 4).unwrap_or(0),
        };
        d.len += 1;
    }
    d
}

/// Bytes to read for a directory announcing `count` files (capped at `MAX_FILES`).
pub const fn dir_len(count: u32) -> usize {
    let n = if count > MAX_FILES as u32 {
        MAX_FILES
    } else {
        count as usize
    };
    4 + n * DIR_ENTRY_LEN
}

/// True if one RAM (type 1) entry of an `etc/e820` table (20-byte entries: LE64 address, LE64
/// size, LE32 type) covers all of `[start, end)`.
pub fn ram_covers(table: &[u8], start: u64, end: u64) -> bool {
    table.chunks_exact(20).any(|e| {
        let (Some(addr), Some(size), Some(ty)) = (u64_at(e, 0), u64_at(e, 8), u32_at(e, 16)) else {
            return false;
        };
        ty == E820_RAM && addr <= start && addr.checked_add(size).is_some_and(|top| top >= end)
    })
}

/// Why a table-loader script was rejected (marker spelling from `name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoaderError {
    /// The script is not a whole number of 128-byte commands.
    BadSize,
    /// A file name has no NUL in its 56 bytes.
    BadName,
    /// ALLOCATE names a file the directory does not have.
    NoFile,
    /// A second ALLOCATE of the same file.
    Duplicate,
    /// ALLOCATE alignment is not a power of two up to 4096.
    BadAlign,
    /// ALLOCATE zone is neither 1 (high) nor 2 (FSEG).
    BadZone,
    /// The blob does not fit in the loader memory.
    NoMemory,
    /// More than `MAX_BLOBS` ALLOCATE commands.
    TooManyBlobs,
    /// Reading the file from fw_cfg failed.
    ReadFailed,
    /// ADD_POINTER / ADD_CHECKSUM names a file no ALLOCATE placed.
    UnknownBlob,
    /// ADD_POINTER size other than 1, 2, 4, 8.
    BadPointerSize,
    /// ADD_POINTER field lies outside the pointer blob.
    PointerOutOfBounds,
    /// The pointer's initial value is not an offset inside the pointee blob.
    PointerValue,
    /// The relocated pointer does not fit in the field.
    PointerOverflow,
    /// ADD_CHECKSUM result or range outside the blob.
    ChecksumOutOfBounds,
}

impl LoaderError {
    /// Marker spelling (`fwcfg-error loader <name>`).
    pub fn name(self) -> &'static [u8] {
        match self {
            LoaderError::BadSize => b"bad-size",
            LoaderError::BadName => b"bad-name",
            LoaderError::NoFile => b"no-file",
            LoaderError::Duplicate => b"duplicate",
            LoaderError::BadAlign => b"bad-align",
            LoaderError::BadZone => b"bad-zone",
            LoaderError::NoMemory => b"no-memory",
            LoaderError::TooManyBlobs => b"too-many-blobs",
            LoaderError::ReadFailed => b"read-failed",
            LoaderError::UnknownBlob => b"unknown-blob",
            LoaderError::BadPointerSize => b"bad-pointer-size",
            LoaderError::PointerOutOfBounds => b"pointer-out-of-bounds",
            LoaderError::PointerValue => b"pointer-value",
            LoaderError::PointerOverflow => b"pointer-overflow",
            LoaderError::ChecksumOutOfBounds => b"checksum-out-of-bounds",
        }
    }
}

/// A file the loader placed in memory.
#[derive(Clone, Copy, Debug)]
struct Blob {
    name: [u8; NAME_LEN],
    /// Offset in the loader memory.
    off: usize,
    size: usize,
}

const NO_BLOB: Blob = Blob {
    name: [0; NAME_LEN],
    off: 0,
    size: 0,
};

/// The result of a table-loader run.
pub struct Loaded {
    /// Commands in the script.
    pub commands: u32,
    /// Commands of other types (WRITE_POINTER, unknown), not executed.
    pub skipped: u32,
    /// Bytes of loader memory used (pages).
    pub used: usize,
    base: u64,
    blobs: [Blob; MAX_BLOBS],
    nblobs: usize,
}

impl Loaded {
    fn blob(&self, name: &[u8]) -> Option<&Blob> {
        let name = trim_name(name);
        self.blobs[..self.nblobs]
            .iter()
            .find(|b| trim_name(&b.name) == name)
    }

    /// Guest-physical address of the blob made from file `name`.
    pub fn addr(&self, name: &[u8]) -> Option<u64> {
        self.blob(name).map(|b| self.base + b.off as u64)
    }

    /// Size of the blob made from file `name`.
    #[cfg(test)]
    pub fn size(&self, name: &[u8]) -> Option<usize> {
        self.blob(name).map(|b| b.size)
    }
}

/// A NUL-terminated 56-byte name field at `off` of a command.
fn name_field(cmd: &[u8], off: usize) -> Result<[u8; NAME_LEN], LoaderError> {
    let f = cmd.get(off..off + NAME_LEN).ok_or(LoaderError::BadSize)?;
    if f[NAME_LEN - 1] != 0 {
        return Err(LoaderError::BadName);
    }
    let mut n = [0u8; NAME_LEN];
    n.copy_from_slice(f);
    Ok(n)
}

fn le32(cmd: &[u8], off: usize) -> u32 {
    u32_at(cmd, off).unwrap_or(0)
}

/// Runs a table-loader `script` the way OVMF's AcpiPlatformDxe does. ALLOCATE (1) reads the
/// whole file (`read(key, dst)`) into `mem` (guest RAM at `base`), page-aligned, the rest of the
/// last page zeroed; ADD_POINTER (2) adds the pointee blob's address to the little-endian field
/// of the pointer blob; ADD_CHECKSUM (3) sets the result byte so the range sums to 0 (the byte
/// is zeroed first). Other command types are counted as skipped. Every offset and size is
/// checked; the first bad command ends the run with its error.
pub fn run_loader(
    script: &[u8],
    dir: &Dir,
    mem: &mut [u8],
    base: u64,
    mut read: impl FnMut(u16, &mut [u8]) -> bool,
) -> Result<Loaded, LoaderError> {
    if !script.len().is_multiple_of(CMD_LEN) {
        return Err(LoaderError::BadSize);
    }
    let mut l = Loaded {
        commands: (script.len() / CMD_LEN) as u32,
        skipped: 0,
        used: 0,
        base,
        blobs: [NO_BLOB; MAX_BLOBS],
        nblobs: 0,
    };
    for cmd in script.chunks_exact(CMD_LEN) {
        match le32(cmd, 0) {
            CMD_ALLOCATE => allocate(&mut l, cmd, dir, mem, &mut read)?,
            CMD_ADD_POINTER => add_pointer(&l, cmd, mem)?,
            CMD_ADD_CHECKSUM => add_checksum(&l, cmd, mem)?,
            _ => l.skipped += 1,
        }
    }
    Ok(l)
}

fn allocate(
    l: &mut Loaded,
    cmd: &[u8],
    dir: &Dir,
    mem: &mut [u8],
    read: &mut impl FnMut(u16, &mut [u8]) -> bool,
) -> Result<(), LoaderError> {
    let name = name_field(cmd, 4)?;
    let align = le32(cmd, 60).max(1);
    if !align.is_power_of_two() || u64::from(align) > BLOB_ALIGN {
        return Err(LoaderError::BadAlign);
    }
    if !matches!(u8_at(cmd, 64), Some(ZONE_HIGH | ZONE_FSEG)) {
        return Err(LoaderError::BadZone);
    }
    let file = *dir.find(&name).ok_or(LoaderError::NoFile)?;
    if l.blob(&name).is_some() {
        return Err(LoaderError::Duplicate);
    }
    if l.nblobs == MAX_BLOBS {
        return Err(LoaderError::TooManyBlobs);
    }
    let size = file.size as usize;
    // A page-aligned guest address, as a page allocator would give; the rest of the last page
    // is zeroed.
    let page = BLOB_ALIGN as usize;
    let start = l
        .base
        .checked_add(l.used as u64)
        .and_then(|a| a.checked_add(BLOB_ALIGN - 1))
        .map(|a| ((a & !(BLOB_ALIGN - 1)) - l.base) as usize)
        .ok_or(LoaderError::NoMemory)?;
    let end = size
        .checked_add(page - 1)
        .map(|s| s & !(page - 1))
        .and_then(|s| s.checked_add(start))
        .filter(|&e| e <= mem.len())
        .ok_or(LoaderError::NoMemory)?;
    let area = &mut mem[start..end];
    let (data, tail) = area.split_at_mut(size);
    if size != 0 && !read(file.key, data) {
        return Err(LoaderError::ReadFailed);
    }
    tail.fill(0);
    l.blobs[l.nblobs] = Blob {
        name,
        off: start,
        size,
    };
    l.nblobs += 1;
    l.used = end;
    Ok(())
}

fn add_pointer(l: &Loaded, cmd: &[u8], mem: &mut [u8]) -> Result<(), LoaderError> {
    let ptr_name = name_field(cmd, 4)?;
    let pointee_name = name_field(cmd, 60)?;
    let ptr = *l.blob(&ptr_name).ok_or(LoaderError::UnknownBlob)?;
    let pointee = *l.blob(&pointee_name).ok_or(LoaderError::UnknownBlob)?;
    let offset = le32(cmd, 116) as usize;
    let size = usize::from(u8_at(cmd, 120).unwrap_or(0));
    if !matches!(size, 1 | 2 | 4 | 8) {
        return Err(LoaderError::BadPointerSize);
    }
    if ptr.size < size || ptr.size - size < offset {
        return Err(LoaderError::PointerOutOfBounds);
    }
    let at = ptr.off + offset;
    let field = mem
        .get_mut(at..at + size)
        .ok_or(LoaderError::PointerOutOfBounds)?;
    let mut raw = [0u8; 8];
    raw[..size].copy_from_slice(field);
    let value = u64::from_le_bytes(raw);
    if value >= pointee.size as u64 {
        return Err(LoaderError::PointerValue);
    }
    let value = value + l.base + pointee.off as u64;
    if size < 8 && value >> (size * 8) != 0 {
        return Err(LoaderError::PointerOverflow);
    }
    field.copy_from_slice(&value.to_le_bytes()[..size]);
    Ok(())
}

fn add_checksum(l: &Loaded, cmd: &[u8], mem: &mut [u8]) -> Result<(), LoaderError> {
    let name = name_field(cmd, 4)?;
    let blob = *l.blob(&name).ok_or(LoaderError::UnknownBlob)?;
    let result = le32(cmd, 60) as usize;
    let start = le32(cmd, 64) as usize;
    let len = le32(cmd, 68) as usize;
    if result >= blob.size || len > blob.size || blob.size - len < start {
        return Err(LoaderError::ChecksumOutOfBounds);
    }
    let data = mem
        .get_mut(blob.off..blob.off + blob.size)
        .ok_or(LoaderError::ChecksumOutOfBounds)?;
    data[result] = 0;
    let sum = data[start..start + len]
        .iter()
        .fold(0u8, |a, &b| a.wrapping_add(b));
    data[result] = sum.wrapping_neg();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::{fnv1a, FNV_INIT};

    fn dir_bytes(files: &[(&str, u32, u16)]) -> Vec<u8> {
        let mut b = (files.len() as u32).to_be_bytes().to_vec();
        for (name, size, key) in files {
            b.extend_from_slice(&size.to_be_bytes());
            b.extend_from_slice(&key.to_be_bytes());
            b.extend_from_slice(&[0, 0]);
            let mut n = name.as_bytes().to_vec();
            n.resize(NAME_LEN, 0);
            b.extend_from_slice(&n);
        }
        b
    }

    #[test]
    fn directory_entries_are_big_endian() {
        let b = dir_bytes(&[
            ("etc/table-loader", 0x1080, 0x27),
            ("etc/acpi/rsdp", 20, 0x28),
        ]);
        assert_eq!(b.len(), dir_len(2));
        let d = parse_dir(&b);
        assert_eq!(d.count, 2);
        assert_eq!(d.files().len(), 2);
        assert_eq!(d.files()[0].name(), b"etc/table-loader");
        assert_eq!((d.files()[0].size, d.files()[0].key), (0x1080, 0x27));
        let f = d.find(b"etc/acpi/rsdp\0\0").unwrap();
        assert_eq!((f.size, f.key), (20, 0x28));
        assert!(d.find(b"etc/acpi").is_none());
    }

    #[test]
    fn directory_truncated_or_oversized() {
        let mut b = dir_bytes(&[("a", 1, 0x20), ("b", 2, 0x21)]);
        b.truncate(b.len() - 1);
        let d = parse_dir(&b);
        assert_eq!((d.count, d.files().len()), (2, 1));
        assert_eq!(parse_dir(&[0, 0]).files().len(), 0);
        let mut big = (1000u32).to_be_bytes().to_vec();
        big.resize(dir_len(1000), 0);
        assert_eq!(dir_len(1000), 4 + MAX_FILES * DIR_ENTRY_LEN);
        let d = parse_dir(&big);
        assert_eq!((d.count, d.files().len()), (1000, MAX_FILES));
    }

    fn e820(entries: &[(u64, u64, u32)]) -> Vec<u8> {
        let mut t = Vec::new();
        for (a, s, ty) in entries {
            t.extend_from_slice(&a.to_le_bytes());
            t.extend_from_slice(&s.to_le_bytes());
            t.extend_from_slice(&ty.to_le_bytes());
        }
        t
    }

    #[test]
    fn e820_file_sum_and_cover() {
        // QEMU q35, -m 256M: RAM below 4 GiB and the KVM identity-map reservation.
        let t = e820(&[(0, 256 << 20, 1), (0xfeff_c000, 0x4000, 2)]);
        assert_eq!(crate::bootinfo::ram_total(&t, 20), 256 << 20);
        assert!(ram_covers(&t, 8 << 20, 17 << 20));
        assert!(!ram_covers(&t, 8 << 20, 257 << 20));
        let split = e820(&[(0, 12 << 20, 1), (12 << 20, 64 << 20, 1)]);
        assert!(!ram_covers(&split, 8 << 20, 17 << 20));
        assert!(!ram_covers(&e820(&[(0, u64::MAX, 2)]), 0, 1));
        assert!(!ram_covers(&e820(&[(1, u64::MAX, 1)]), 8, 9));
    }

    #[test]
    fn fnv_chunks_match_whole() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let whole = fnv1a(FNV_INIT, &data);
        let chunked = data.chunks(4096).fold(FNV_INIT, fnv1a);
        assert_eq!(whole, chunked);
        assert_eq!(fnv1a(FNV_INIT, b"cvmm"), 0x51fa_041a);
    }

    // ---- table loader ----

    const BASE: u64 = 0x80_0000;

    fn name(s: &str) -> [u8; NAME_LEN] {
        let mut n = [0u8; NAME_LEN];
        n[..s.len()].copy_from_slice(s.as_bytes());
        n
    }

    fn cmd(ty: u32) -> Vec<u8> {
        let mut c = vec![0u8; CMD_LEN];
        c[..4].copy_from_slice(&ty.to_le_bytes());
        c
    }

    fn alloc(file: &str, align: u32, zone: u8) -> Vec<u8> {
        let mut c = cmd(1);
        c[4..60].copy_from_slice(&name(file));
        c[60..64].copy_from_slice(&align.to_le_bytes());
        c[64] = zone;
        c
    }

    fn pointer(ptr: &str, pointee: &str, off: u32, size: u8) -> Vec<u8> {
        let mut c = cmd(2);
        c[4..60].copy_from_slice(&name(ptr));
        c[60..116].copy_from_slice(&name(pointee));
        c[116..120].copy_from_slice(&off.to_le_bytes());
        c[120] = size;
        c
    }

    fn checksum(file: &str, result: u32, start: u32, len: u32) -> Vec<u8> {
        let mut c = cmd(3);
        c[4..60].copy_from_slice(&name(file));
        c[60..64].copy_from_slice(&result.to_le_bytes());
        c[64..68].copy_from_slice(&start.to_le_bytes());
        c[68..72].copy_from_slice(&len.to_le_bytes());
        c
    }

    /// fw_cfg files of a small QEMU-like ACPI set: "tables" holds an RSDT at 0 pointing to a
    /// table at 64 (offset, to be relocated); "rsdp" is a v1 RSDP whose RSDT field is 0.
    struct Fixture {
        dir: Dir,
        tables: Vec<u8>,
        rsdp: Vec<u8>,
    }

    fn fixture() -> Fixture {
        let mut tables = vec![0u8; 100];
        tables[..4].copy_from_slice(b"RSDT");
        tables[4..8].copy_from_slice(&40u32.to_le_bytes());
        tables[36..40].copy_from_slice(&64u32.to_le_bytes());
        tables[64..68].copy_from_slice(b"FACP");
        tables[68..72].copy_from_slice(&36u32.to_le_bytes());
        tables[9] = 0x5a; // stale checksum: the loader must recompute it
        let mut rsdp = vec![0u8; 20];
        rsdp[..8].copy_from_slice(b"RSD PTR ");
        let dir = parse_dir(&dir_bytes(&[
            ("etc/acpi/tables", 100, 0x21),
            ("etc/acpi/rsdp", 20, 0x22),
            ("etc/tpm/log", 0, 0x23),
        ]));
        Fixture { dir, tables, rsdp }
    }

    fn run(f: &Fixture, script: &[Vec<u8>], mem: &mut [u8]) -> Result<Loaded, LoaderError> {
        let s: Vec<u8> = script.concat();
        run_loader(&s, &f.dir, mem, BASE, |key, dst| {
            let src = match key {
                0x21 => &f.tables,
                0x22 => &f.rsdp,
                _ => return false,
            };
            dst.copy_from_slice(&src[..dst.len()]);
            true
        })
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    fn good_script() -> Vec<Vec<u8>> {
        vec![
            alloc("etc/acpi/rsdp", 16, 2),
            alloc("etc/acpi/tables", 64, 1),
            cmd(4), // WRITE_POINTER: skipped
            pointer("etc/acpi/tables", "etc/acpi/tables", 36, 4),
            checksum("etc/acpi/tables", 73, 64, 36),
            checksum("etc/acpi/tables", 9, 0, 40),
            pointer("etc/acpi/rsdp", "etc/acpi/tables", 16, 4),
            checksum("etc/acpi/rsdp", 8, 0, 20),
            cmd(0x77), // unknown: skipped
        ]
    }

    #[test]
    fn loader_allocates_patches_and_checksums() {
        let f = fixture();
        let mut mem = vec![0xaau8; 64 << 10];
        let l = run(&f, &good_script(), &mut mem).unwrap();
        assert_eq!((l.commands, l.skipped), (9, 2));
        let rsdp = l.addr(b"etc/acpi/rsdp").unwrap();
        let tables = l.addr(b"etc/acpi/tables").unwrap();
        assert_eq!((rsdp, tables), (BASE, BASE + 4096));
        assert_eq!(l.used, 8192);
        assert_eq!(l.size(b"etc/acpi/tables"), Some(100));
        let r = &mem[..20];
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(
            u32::from_le_bytes(r[16..20].try_into().unwrap()) as u64,
            tables
        );
        assert_eq!(sum(r), 0);
        assert!(mem[20..4096].iter().all(|&b| b == 0), "page tail zeroed");
        let t = &mem[4096..4096 + 100];
        assert_eq!(
            u32::from_le_bytes(t[36..40].try_into().unwrap()) as u64,
            tables + 64
        );
        assert_eq!(sum(&t[..40]), 0);
        assert_eq!(sum(&t[64..100]), 0);
        assert!(mem[4196..8192].iter().all(|&b| b == 0));
        assert!(
            mem[8192..].iter().all(|&b| b == 0xaa),
            "nothing written past the blobs"
        );
    }

    #[test]
    fn loader_pointer_sizes_and_unaligned_base() {
        let f = fixture();
        let mut mem = vec![0u8; 64 << 10];
        let script = [
            alloc("etc/acpi/tables", 1, 1),
            pointer("etc/acpi/tables", "etc/acpi/tables", 40, 8),
            pointer("etc/acpi/tables", "etc/acpi/tables", 48, 2),
        ]
        .concat();
        let base = BASE + 0x10; // blobs still land on page boundaries
        let l = run_loader(&script, &f.dir, &mut mem, base, |_, dst| {
            dst.copy_from_slice(&f.tables[..dst.len()]);
            true
        });
        // A 2-byte field cannot hold an address of 0x80xxxx; the field is left alone.
        assert_eq!(l.err(), Some(LoaderError::PointerOverflow));
        let t = BASE + 4096;
        let off = (t - base) as usize;
        assert_eq!(
            u64::from_le_bytes(mem[off + 40..off + 48].try_into().unwrap()),
            t
        );
        assert_eq!(
            u16::from_le_bytes(mem[off + 48..off + 50].try_into().unwrap()),
            0
        );
    }

    #[test]
    fn loader_zero_size_file_and_empty_script() {
        let f = fixture();
        let mut mem = vec![0u8; 8192];
        let l = run(&f, &[alloc("etc/tpm/log", 4096, 1)], &mut mem).unwrap();
        assert_eq!(l.size(b"etc/tpm/log"), Some(0));
        let l = run(&f, &[], &mut mem).unwrap();
        assert_eq!((l.commands, l.skipped), (0, 0));
        assert!(l.addr(b"etc/acpi/rsdp").is_none());
    }

    #[test]
    fn loader_rejects_bad_commands() {
        let f = fixture();
        let a = || alloc("etc/acpi/tables", 64, 1);
        let t = "etc/acpi/tables";
        let mut long = alloc("etc/acpi/tables", 64, 1);
        long[4..60].fill(b'x');
        let cases: Vec<(Vec<Vec<u8>>, LoaderError)> = vec![
            (vec![alloc("etc/nope", 64, 1)], LoaderError::NoFile),
            (vec![a(), a()], LoaderError::Duplicate),
            (vec![alloc(t, 8192, 1)], LoaderError::BadAlign),
            (vec![alloc(t, 3, 1)], LoaderError::BadAlign),
            (vec![alloc(t, 64, 3)], LoaderError::BadZone),
            (vec![long], LoaderError::BadName),
            (
                vec![a(), pointer(t, "etc/acpi/rsdp", 0, 4)],
                LoaderError::UnknownBlob,
            ),
            (vec![a(), pointer(t, t, 0, 3)], LoaderError::BadPointerSize),
            (
                vec![a(), pointer(t, t, 97, 4)],
                LoaderError::PointerOutOfBounds,
            ),
            (
                vec![a(), pointer(t, t, u32::MAX, 8)],
                LoaderError::PointerOutOfBounds,
            ),
            // the value at 0 is "RSDT" = 0x54445352, far beyond the pointee's 100 bytes
            (vec![a(), pointer(t, t, 0, 4)], LoaderError::PointerValue),
            (
                vec![a(), checksum(t, 100, 0, 10)],
                LoaderError::ChecksumOutOfBounds,
            ),
            (
                vec![a(), checksum(t, 0, 90, 11)],
                LoaderError::ChecksumOutOfBounds,
            ),
            (
                vec![a(), checksum(t, 0, u32::MAX, 2)],
                LoaderError::ChecksumOutOfBounds,
            ),
            (
                vec![a(), checksum(t, 0, 0, 101)],
                LoaderError::ChecksumOutOfBounds,
            ),
            (vec![checksum(t, 0, 0, 1)], LoaderError::UnknownBlob),
        ];
        for (script, want) in cases {
            let mut mem = vec![0u8; 64 << 10];
            assert_eq!(run(&f, &script, &mut mem).err(), Some(want), "{want:?}");
        }
        let mut mem = vec![0u8; 64 << 10];
        let mut s = good_script().concat();
        s.pop();
        assert_eq!(
            run_loader(&s, &f.dir, &mut mem, BASE, |_, _| true).err(),
            Some(LoaderError::BadSize)
        );
        // Out of memory: two pages needed, one available.
        let mut small = vec![0u8; 4096];
        assert_eq!(
            run(&f, &good_script(), &mut small).err(),
            Some(LoaderError::NoMemory)
        );
        // A failed fw_cfg read.
        let mut mem = vec![0u8; 8192];
        let s = alloc("etc/acpi/rsdp", 16, 2);
        assert_eq!(
            run_loader(&s, &f.dir, &mut mem, BASE, |_, _| false).err(),
            Some(LoaderError::ReadFailed)
        );
    }

    #[test]
    fn loader_blob_limit() {
        let files: Vec<(String, u32, u16)> = (0..=MAX_BLOBS)
            .map(|i| (format!("f{i}"), 1, 0x20 + i as u16))
            .collect();
        let refs: Vec<(&str, u32, u16)> =
            files.iter().map(|(n, s, k)| (n.as_str(), *s, *k)).collect();
        let dir = parse_dir(&dir_bytes(&refs));
        let script: Vec<u8> = files.iter().flat_map(|(n, _, _)| alloc(n, 1, 1)).collect();
        let mut mem = vec![0u8; (MAX_BLOBS + 1) * 4096];
        let r = run_loader(&script, &dir, &mut mem, BASE, |_, d| {
            d.fill(7);
            true
        });
        assert_eq!(r.err(), Some(LoaderError::TooManyBlobs));
        let ok = run_loader(
            &script[..MAX_BLOBS * CMD_LEN],
            &dir,
            &mut mem,
            BASE,
            |_, d| {
                d.fill(7);
                true
            },
        )
        .unwrap();
        assert_eq!(ok.addr(b"f31"), Some(BASE + 31 * 4096));
    }
}
