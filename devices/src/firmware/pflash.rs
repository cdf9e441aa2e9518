//! A CFI parallel flash with the Intel/Sharp command set, byte-wide, 4 KiB sectors, all-zero
//! ids — what QEMU's pc/q35 machines give OVMF as `pflash_cfi01` for OVMF_CODE (read-only)
//! and OVMF_VARS. Programs and erases are written through to the backing file (the per-VM
//! VARS copy); on a read-only flash they fail with the status error bits.
//!
//! In read-array mode the contents can be mapped read-only into the guest (QEMU's "romd"
//! mode) with only writes trapping; [`Pflash::read_array_mode`] tells when that holds.

use crate::bus::MmioDevice;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Sector (erase block) size of QEMU's x86 system flash.
pub const PFLASH_SECTOR_SIZE: u64 = 4096;

/// Commands (the first byte written).
pub mod cmd {
    /// QEMU's historic alias of read-array.
    pub const READ_ARRAY_ALT: u8 = 0x00;
    pub const PROGRAM: u8 = 0x10;
    pub const BLOCK_ERASE: u8 = 0x20;
    pub const PROGRAM_ALT: u8 = 0x40;
    pub const CLEAR_STATUS: u8 = 0x50;
    pub const LOCK_SETUP: u8 = 0x60;
    pub const READ_STATUS: u8 = 0x70;
    pub const READ_ID: u8 = 0x90;
    pub const CFI_QUERY: u8 = 0x98;
    pub const CONFIRM: u8 = 0xd0;
    pub const AMD_PROBE: u8 = 0xf0;
    pub const READ_ARRAY: u8 = 0xff;
}

/// Status register bits.
pub mod status {
    /// Write state machine ready.
    pub const READY: u8 = 0x80;
    /// Erase failed (or, with PROGRAM_ERROR, a bad command sequence).
    pub const ERASE_ERROR: u8 = 0x20;
    /// Program failed.
    pub const PROGRAM_ERROR: u8 = 0x10;
}

/// The array a flash reads and programs: a plain buffer, or memory the VMM also maps into the
/// guest read-only so that reads in read-array mode never leave the guest.
pub trait FlashArray: Send {
    /// Bytes in the array.
    fn len(&self) -> usize;
    /// True for an empty array (never, once a flash is built).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies `buf.len()` bytes at `offset` (in range: the flash checks) into `buf`.
    fn read(&self, offset: usize, buf: &mut [u8]);
    /// Stores `data` at `offset` (in range).
    fn write(&mut self, offset: usize, data: &[u8]);
}

impl FlashArray for Vec<u8> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self[offset..offset + buf.len()]);
    }
    fn write(&mut self, offset: usize, data: &[u8]) {
        self[offset..offset + data.len()].copy_from_slice(data);
    }
}

/// Errors opening a flash image.
#[derive(Debug, thiserror::Error)]
pub enum PflashError {
    /// The image could not be read or opened.
    #[error("pflash image {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The image is empty or not a whole number of sectors.
    #[error("pflash image of {0} bytes is not a non-zero multiple of 4096")]
    BadSize(u64),
    /// The VMM could not place the image (e.g. map it into the guest).
    #[error("pflash image {path}: {reason}")]
    Place { path: String, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ReadArray,
    Status,
    Id,
    Cfi,
    ProgramSetup,
    EraseSetup,
    LockSetup,
}

/// One flash device.
pub struct Pflash {
    data: Box<dyn FlashArray>,
    file: Option<File>,
    read_only: bool,
    mode: Mode,
    status: u8,
    cfi: [u8; 0x52],
}

impl Pflash {
    /// Opens an image file; a writable flash writes every change back to it.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, PflashError> {
        Self::open_with(path, read_only, |data| {
            Ok(Box::new(data) as Box<dyn FlashArray>)
        })
    }

    /// Opens an image file and lets `place` decide where its contents live (the VMM copies
    /// them into memory it maps into the guest); programs and erases go to both.
    pub fn open_with(
        path: &Path,
        read_only: bool,
        place: impl FnOnce(Vec<u8>) -> Result<Box<dyn FlashArray>, String>,
    ) -> Result<Self, PflashError> {
        let io = |source| PflashError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        check_size(len)?;
        let mut data = vec![0u8; len as usize];
        file.read_exact_at(&mut data, 0).map_err(io)?;
        let array = place(data).map_err(|reason| PflashError::Place {
            path: path.display().to_string(),
            reason,
        })?;
        let mut f = Self::with_array(array, read_only)?;
        f.file = (!read_only).then_some(file);
        Ok(f)
    }

    /// A flash over `data` with no backing file.
    pub fn new(data: Vec<u8>, read_only: bool) -> Result<Self, PflashError> {
        Self::with_array(Box::new(data), read_only)
    }

    /// A flash over `data`, wherever it lives, with no backing file.
    pub fn with_array(data: Box<dyn FlashArray>, read_only: bool) -> Result<Self, PflashError> {
        check_size(data.len() as u64)?;
        let cfi = cfi_table(data.len() as u64);
        Ok(Self {
            data,
            file: None,
            read_only,
            mode: Mode::ReadArray,
            status: status::READY,
            cfi,
        })
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.data.len() as u64
    }

    /// Never true: construction rejects empty images.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// True when reads return the array contents (the VMM may then map them read-only).
    pub fn read_array_mode(&self) -> bool {
        self.mode == Mode::ReadArray
    }

    /// A copy of the current contents.
    pub fn contents(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.data.len()];
        self.data.read(0, &mut v);
        v
    }

    /// Whether programs and erases are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Flushes the backing file to stable storage.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.as_ref().map_or(Ok(()), File::sync_data)
    }

    fn persist(&mut self, start: usize, end: usize) -> bool {
        let Some(f) = &self.file else { return true };
        let mut chunk = vec![0u8; end - start];
        self.data.read(start, &mut chunk);
        match f.write_all_at(&chunk, start as u64) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(start, end, "pflash write-through failed: {e}");
                false
            }
        }
    }

    fn program(&mut self, offset: u64, bytes: &[u8]) {
        let start = offset as usize;
        let end = start
            .checked_add(bytes.len())
            .filter(|&e| e <= self.data.len());
        match end {
            Some(end) if !self.read_only => {
                self.data.write(start, bytes);
                if !self.persist(start, end) {
                    self.status |= status::PROGRAM_ERROR;
                }
            }
            _ => {
                tracing::debug!(offset, ro = self.read_only, "pflash program refused");
                self.status |= status::PROGRAM_ERROR;
            }
        }
        self.status |= status::READY;
    }

    fn erase(&mut self, offset: u64) {
        let start = (offset & !(PFLASH_SECTOR_SIZE - 1)) as usize;
        let end = start + PFLASH_SECTOR_SIZE as usize;
        if self.read_only || end > self.data.len() {
            tracing::debug!(offset, ro = self.read_only, "pflash erase refused");
            self.status |= status::ERASE_ERROR;
        } else {
            self.data.write(start, &[0xff; PFLASH_SECTOR_SIZE as usize]);
            if !self.persist(start, end) {
                self.status |= status::ERASE_ERROR;
            }
        }
        self.status |= status::READY;
    }

    /// A write outside a multi-cycle sequence: a new command.
    fn command(&mut self, offset: u64, c: u8) {
        self.mode = match c {
            cmd::READ_ARRAY | cmd::READ_ARRAY_ALT | cmd::AMD_PROBE => Mode::ReadArray,
            cmd::PROGRAM | cmd::PROGRAM_ALT => Mode::ProgramSetup,
            cmd::BLOCK_ERASE => Mode::EraseSetup,
            cmd::CLEAR_STATUS => {
                self.status = 0;
                Mode::ReadArray
            }
            cmd::LOCK_SETUP => Mode::LockSetup,
            cmd::READ_STATUS => Mode::Status,
            cmd::READ_ID => Mode::Id,
            cmd::CFI_QUERY => Mode::Cfi,
            _ => {
                tracing::debug!(offset, cmd = c, "pflash: unknown command");
                Mode::ReadArray
            }
        };
    }
}

fn check_size(len: u64) -> Result<(), PflashError> {
    if len == 0 || !len.is_multiple_of(PFLASH_SECTOR_SIZE) || usize::try_from(len).is_err() {
        return Err(PflashError::BadSize(len));
    }
    Ok(())
}

/// The CFI query table of a byte-wide Intel-command-set part with uniform 4 KiB sectors.
fn cfi_table(len: u64) -> [u8; 0x52] {
    let mut t = [0u8; 0x52];
    t[0x10..0x13].copy_from_slice(b"QRY");
    t[0x13] = 0x01; // primary command set: Intel/Sharp extended
    t[0x15] = 0x31; // primary extended table at 0x31
    t[0x1b] = 0x45; // Vcc min 4.5 V
    t[0x1c] = 0x55; // Vcc max 5.5 V
    t[0x1f] = 0x07; // typical byte program time 2^7 us
    t[0x20] = 0x07; // typical buffer write time
    t[0x21] = 0x0a; // typical block erase 2^10 ms
    t[0x23] = 0x04; // max timeouts: 2^4 times typical
    t[0x24] = 0x04;
    t[0x25] = 0x04;
    t[0x27] = len.next_power_of_two().trailing_zeros() as u8; // device size 2^n bytes
    t[0x28] = 0x02; // x8/x16 interface
    t[0x2a] = 0x08; // max buffer write 2^8 bytes
    t[0x2c] = 0x01; // one erase block region
    let blocks = (len / PFLASH_SECTOR_SIZE).saturating_sub(1);
    t[0x2d] = blocks as u8;
    t[0x2e] = (blocks >> 8) as u8;
    t[0x2f] = (PFLASH_SECTOR_SIZE >> 8) as u8;
    t[0x30] = (PFLASH_SECTOR_SIZE >> 16) as u8;
    t[0x31..0x36].copy_from_slice(b"PRI10");
    t[0x3f] = 0x01; // protection fields
    t
}

impl MmioDevice for Pflash {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.mode {
            Mode::ReadArray => {
                let len = self.data.len();
                match usize::try_from(offset) {
                    Ok(at) if at.checked_add(data.len()).is_some_and(|e| e <= len) => {
                        self.data.read(at, data)
                    }
                    // Past the end (a straddling access): what exists, then 0xff.
                    Ok(at) if at < len => {
                        let n = len - at;
                        self.data.read(at, &mut data[..n]);
                        data[n..].fill(0xff);
                    }
                    _ => data.fill(0xff),
                }
            }
            Mode::Cfi => {
                for (i, b) in data.iter_mut().enumerate() {
                    let at = (offset.wrapping_add(i as u64) & 0xff) as usize;
                    *b = self.cfi.get(at).copied().unwrap_or(0);
                }
            }
            // Manufacturer and device id are both 0 on QEMU's x86 flash.
            Mode::Id => data.fill(0),
            _ => data.fill(self.status),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&c) = data.first() else { return };
        match self.mode {
            Mode::ProgramSetup => {
                self.program(offset, data);
                self.mode = Mode::Status;
            }
            Mode::EraseSetup => match c {
                cmd::CONFIRM => {
                    self.erase(offset);
                    self.mode = Mode::Status;
                }
                cmd::READ_ARRAY => self.mode = Mode::ReadArray,
                _ => {
                    tracing::debug!(offset, cmd = c, "pflash: bad erase confirm");
                    self.status |= status::ERASE_ERROR | status::PROGRAM_ERROR;
                    self.mode = Mode::Status;
                }
            },
            Mode::LockSetup => {
                // Locking is not emulated: confirm or unlock just reports ready.
                self.status |= status::READY;
                self.mode = if c == cmd::READ_ARRAY {
                    Mode::ReadArray
                } else {
                    Mode::Status
                };
            }
            _ => self.command(offset, c),
        }
    }
}
