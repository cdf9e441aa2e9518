//! Contents of the named fw_cfg files a VMM adds besides the ACPI ones, encoded as QEMU does:
//! the `etc/e820` memory map, `bootorder`, `etc/boot-fail-wait`, `etc/system-states` and
//! `-fw_cfg name=opt/...,string=...` strings.

/// The memory map file (OVMF's PlatformInitLib sizes RAM from it).
pub const E820_FILE: &str = "etc/e820";
/// Boot order: OpenFirmware device paths.
pub const BOOTORDER_FILE: &str = "bootorder";
/// Seconds to wait before rebooting after a failed boot, LE32 (-1: never).
pub const BOOT_FAIL_WAIT_FILE: &str = "etc/boot-fail-wait";
/// Which sleep states the machine supports (6 bytes, S0..S5).
pub const SYSTEM_STATES_FILE: &str = "etc/system-states";

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;
/// e820 type: ACPI reclaimable.
pub const E820_ACPI: u32 = 3;
/// e820 type: ACPI NVS.
pub const E820_NVS: u32 = 4;
/// e820 type: unusable.
pub const E820_UNUSABLE: u32 = 5;

/// Bytes of one `etc/e820` entry.
pub const E820_ENTRY_SIZE: usize = 20;

/// One memory-map entry (QEMU `struct e820_entry`, packed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

impl E820Entry {
    /// address LE64, length LE64, type LE32.
    pub fn to_bytes(&self) -> [u8; E820_ENTRY_SIZE] {
        let mut b = [0u8; E820_ENTRY_SIZE];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..20].copy_from_slice(&self.kind.to_le_bytes());
        b
    }

    /// Parses one entry.
    pub fn from_bytes(b: &[u8; E820_ENTRY_SIZE]) -> Self {
        let u64_at = |at: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(v)
        };
        Self {
            addr: u64_at(0),
            size: u64_at(8),
            kind: u32::from_le_bytes([b[16], b[17], b[18], b[19]]),
        }
    }
}

/// The `etc/e820` file: the entries back to back.
pub fn e820_file(entries: &[E820Entry]) -> Vec<u8> {
    entries.iter().flat_map(E820Entry::to_bytes).collect()
}

/// The `bootorder` file: paths separated by newlines, the last one NUL-terminated; empty
/// when there are none (QEMU still lists the file, with size 0, and OVMF then keeps its own
/// `BootOrder` variable).
pub fn bootorder_file(paths: &[&str]) -> Vec<u8> {
    if paths.is_empty() {
        return Vec::new();
    }
    let mut out = paths.join("\n").into_bytes();
    out.push(0);
    out
}

/// The `etc/boot-fail-wait` file: `None` means "never reboot" (-1).
pub fn boot_fail_wait_file(seconds: Option<u16>) -> Vec<u8> {
    seconds.map_or(u32::MAX, u32::from).to_le_bytes().to_vec()
}

/// The `etc/system-states` file: byte N is S<N>'s SLP_TYP value, bit 7 set when the state is
/// available. S0 and S5 always are; S3 and S4 as asked (QEMU's `disable_s3/4`).
pub fn system_states_file(s3: bool, s4: bool) -> Vec<u8> {
    let on = |b: bool| if b { 0x80 } else { 0 };
    vec![0x80, 0, 0, 1 | on(s3), 2 | on(s4), 0x80]
}

/// A `-fw_cfg name=...,string=...` item: the bytes without a NUL, as QEMU stores it.
pub fn string_file(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}
