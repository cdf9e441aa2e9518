//! The `etc/table-loader` script of QEMU's BIOS linker/loader, as OVMF's AcpiPlatformDxe (and
//! SeaBIOS) execute it: 128-byte commands that download fw_cfg files into guest memory
//! (ALLOCATE), turn file-relative pointers into addresses (ADD_POINTER) and fix up checksums
//! (ADD_CHECKSUM). Multi-byte fields are little-endian.

use super::fw_cfg::FILE_NAME_SIZE;

/// Bytes of one loader command.
pub const LOADER_ENTRY_SIZE: usize = 128;

const CMD_ALLOCATE: u32 = 1;
const CMD_ADD_POINTER: u32 = 2;
const CMD_ADD_CHECKSUM: u32 = 3;

/// Where ALLOCATE places a file (OVMF treats both alike: anywhere below 4 GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// Anywhere in high memory (the ACPI tables).
    High = 1,
    /// The 0xE0000..0xFFFFF BIOS segment (the RSDP, for SeaBIOS).
    FSeg = 2,
}

/// One loader command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoaderCommand {
    /// Download `file` to memory aligned to `align` (a power of two, at most 4096 for OVMF).
    Allocate {
        file: String,
        align: u32,
        zone: Zone,
    },
    /// Add the address of `pointee` to the `size`-byte value at `offset` in `pointer`.
    AddPointer {
        pointer: String,
        pointee: String,
        offset: u32,
        size: u8,
    },
    /// Store at `result` the byte that makes `[start, start + length)` of `file` sum to zero.
    AddChecksum {
        file: String,
        result: u32,
        start: u32,
        length: u32,
    },
}

fn put_name(e: &mut [u8], at: usize, name: &str) {
    let n = name.len().min(FILE_NAME_SIZE - 1);
    e[at..at + n].copy_from_slice(&name.as_bytes()[..n]);
}

fn get_name(e: &[u8], at: usize) -> Option<String> {
    let raw = &e[at..at + FILE_NAME_SIZE];
    let end = raw.iter().position(|&b| b == 0)?;
    String::from_utf8(raw[..end].to_vec()).ok()
}

fn get32(e: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([e[at], e[at + 1], e[at + 2], e[at + 3]])
}

impl LoaderCommand {
    /// The 128-byte wire form. Names longer than 55 bytes are cut (the builder rejects them).
    pub fn encode(&self) -> [u8; LOADER_ENTRY_SIZE] {
        let mut e = [0u8; LOADER_ENTRY_SIZE];
        match self {
            Self::Allocate { file, align, zone } => {
                e[0..4].copy_from_slice(&CMD_ALLOCATE.to_le_bytes());
                put_name(&mut e, 4, file);
                e[60..64].copy_from_slice(&align.to_le_bytes());
                e[64] = *zone as u8;
            }
            Self::AddPointer {
                pointer,
                pointee,
                offset,
                size,
            } => {
                e[0..4].copy_from_slice(&CMD_ADD_POINTER.to_le_bytes());
                put_name(&mut e, 4, pointer);
                put_name(&mut e, 60, pointee);
                e[116..120].copy_from_slice(&offset.to_le_bytes());
                e[120] = *size;
            }
            Self::AddChecksum {
                file,
                result,
                start,
                length,
            } => {
                e[0..4].copy_from_slice(&CMD_ADD_CHECKSUM.to_le_bytes());
                put_name(&mut e, 4, file);
                e[60..64].copy_from_slice(&result.to_le_bytes());
                e[64..68].copy_from_slice(&start.to_le_bytes());
                e[68..72].copy_from_slice(&length.to_le_bytes());
            }
        }
        e
    }

    /// Parses one command; `None` for unknown types, unterminated names or bad zones
    /// (the firmware skips unknown types and fails on bad names).
    pub fn decode(e: &[u8; LOADER_ENTRY_SIZE]) -> Option<Self> {
        match get32(e, 0) {
            CMD_ALLOCATE => Some(Self::Allocate {
                file: get_name(e, 4)?,
                align: get32(e, 60),
                zone: match e[64] {
                    1 => Zone::High,
                    2 => Zone::FSeg,
                    _ => return None,
                },
            }),
            CMD_ADD_POINTER => Some(Self::AddPointer {
                pointer: get_name(e, 4)?,
                pointee: get_name(e, 60)?,
                offset: get32(e, 116),
                size: e[120],
            }),
            CMD_ADD_CHECKSUM => Some(Self::AddChecksum {
                file: get_name(e, 4)?,
                result: get32(e, 60),
                start: get32(e, 64),
                length: get32(e, 68),
            }),
            _ => None,
        }
    }
}

/// Encodes a script: the content of `etc/table-loader`.
pub fn encode_script(cmds: &[LoaderCommand]) -> Vec<u8> {
    cmds.iter().flat_map(|c| c.encode()).collect()
}

/// Decodes a script; `None` if its size is not a multiple of 128 or a command is malformed.
pub fn decode_script(bytes: &[u8]) -> Option<Vec<LoaderCommand>> {
    if !bytes.len().is_multiple_of(LOADER_ENTRY_SIZE) {
        return None;
    }
    bytes
        .chunks_exact(LOADER_ENTRY_SIZE)
        .map(|c| LoaderCommand::decode(c.try_into().ok()?))
        .collect()
}
