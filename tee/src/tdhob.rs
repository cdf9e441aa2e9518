//! The TD HOB (spec §6.1): the UEFI hand-off block list TDVF reads at start-up from the TD_HOB
//! section (GPA in RCX). cvmm writes a PHIT, one resource descriptor per RAM range (memory the
//! launch added and so accepted: SYSTEM_MEMORY; the rest: MEMORY_UNACCEPTED, which the guest
//! accepts itself) and the end-of-list HOB, as QEMU's TDVF support does.

use std::mem::size_of;

use zerocopy::{Immutable, IntoBytes, KnownLayout};

use crate::TeeError;

pub const EFI_HOB_TYPE_HANDOFF: u16 = 0x0001;
pub const EFI_HOB_TYPE_RESOURCE_DESCRIPTOR: u16 = 0x0003;
pub const EFI_HOB_TYPE_END_OF_HOB_LIST: u16 = 0xffff;
/// `EFI_HOB_HANDOFF_TABLE_VERSION`.
pub const EFI_HOB_HANDOFF_TABLE_VERSION: u32 = 9;
pub const EFI_RESOURCE_SYSTEM_MEMORY: u32 = 0;
pub const EFI_RESOURCE_MEMORY_UNACCEPTED: u32 = 7;
/// PRESENT | INITIALIZED | TESTED: the attributes TDVF expects on both kinds of RAM.
pub const EFI_RESOURCE_ATTRIBUTE_TDVF: u32 = 0x1 | 0x2 | 0x4;

/// `EFI_HOB_GENERIC_HEADER`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, IntoBytes, Immutable, KnownLayout)]
pub struct HobHeader {
    pub hob_type: u16,
    pub length: u16,
    pub reserved: u32,
}

/// `EFI_HOB_HANDOFF_INFO_TABLE` (PHIT).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, IntoBytes, Immutable, KnownLayout)]
pub struct HobHandoff {
    pub header: HobHeader,
    pub version: u32,
    pub boot_mode: u32,
    pub memory_top: u64,
    pub memory_bottom: u64,
    pub free_memory_top: u64,
    pub free_memory_bottom: u64,
    pub end_of_hob_list: u64,
}

/// `EFI_HOB_RESOURCE_DESCRIPTOR`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, IntoBytes, Immutable, KnownLayout)]
pub struct HobResource {
    pub header: HobHeader,
    pub owner: [u8; 16],
    pub resource_type: u32,
    pub attributes: u32,
    pub start: u64,
    pub length: u64,
}

const _: () = {
    assert!(size_of::<HobHeader>() == 8);
    assert!(size_of::<HobHandoff>() == 56);
    assert!(std::mem::offset_of!(HobHandoff, end_of_hob_list) == 48);
    assert!(size_of::<HobResource>() == 48);
    assert!(std::mem::offset_of!(HobResource, resource_type) == 24);
    assert!(std::mem::offset_of!(HobResource, start) == 32);
};

/// One RAM range of the HOB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamEntry {
    pub gpa: u64,
    pub size: u64,
    /// Added (and so accepted) by the launch.
    pub accepted: bool,
}

/// Splits guest RAM `(gpa, size)` into accepted parts (covered by `added`, the ranges the
/// launch `INIT_MEM_REGION`s) and unaccepted parts, sorted by address. Parts of `added` outside
/// RAM (the firmware volumes) are not RAM and are left out.
pub fn ram_entries(ram: &[(u64, u64)], added: &[(u64, u64)]) -> Vec<RamEntry> {
    let mut ram: Vec<_> = ram.iter().copied().filter(|r| r.1 > 0).collect();
    ram.sort_unstable();
    let mut out: Vec<RamEntry> = Vec::new();
    for (start, size) in ram {
        let end = start.saturating_add(size);
        let mut cuts = vec![start, end];
        for &(a, len) in added {
            for p in [a, a.saturating_add(len)] {
                if p > start && p < end {
                    cuts.push(p);
                }
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        for w in cuts.windows(2) {
            let (lo, hi) = (w[0], w[1]);
            let accepted = added
                .iter()
                .any(|&(a, len)| a <= lo && hi <= a.saturating_add(len));
            match out.last_mut() {
                Some(last) if last.accepted == accepted && last.gpa + last.size == lo => {
                    last.size += hi - lo;
                }
                _ => out.push(RamEntry {
                    gpa: lo,
                    size: hi - lo,
                    accepted,
                }),
            }
        }
    }
    out
}

/// Builds the TD HOB for a section at `hob_gpa` of `capacity` bytes.
pub fn build_td_hob(
    hob_gpa: u64,
    capacity: usize,
    entries: &[RamEntry],
) -> Result<Vec<u8>, TeeError> {
    let len = size_of::<HobHandoff>() + entries.len() * size_of::<HobResource>() + 8;
    if len > capacity {
        return Err(TeeError::input(
            "TD HOB",
            format!(
                "{} RAM ranges need {len:#x} bytes, the TD_HOB section at {hob_gpa:#x} has {capacity:#x}",
                entries.len()
            ),
        ));
    }
    let header = |hob_type, length: usize| HobHeader {
        hob_type,
        length: length as u16,
        reserved: 0,
    };
    let mut out = Vec::with_capacity(len);
    let phit = HobHandoff {
        header: header(EFI_HOB_TYPE_HANDOFF, size_of::<HobHandoff>()),
        version: EFI_HOB_HANDOFF_TABLE_VERSION,
        // As QEMU: the end of the list is the address just past the end-of-list HOB.
        end_of_hob_list: hob_gpa + len as u64,
        ..Default::default()
    };
    out.extend_from_slice(phit.as_bytes());
    for e in entries {
        let r = HobResource {
            header: header(EFI_HOB_TYPE_RESOURCE_DESCRIPTOR, size_of::<HobResource>()),
            owner: [0; 16],
            resource_type: if e.accepted {
                EFI_RESOURCE_SYSTEM_MEMORY
            } else {
                EFI_RESOURCE_MEMORY_UNACCEPTED
            },
            attributes: EFI_RESOURCE_ATTRIBUTE_TDVF,
            start: e.gpa,
            length: e.size,
        };
        out.extend_from_slice(r.as_bytes());
    }
    out.extend_from_slice(header(EFI_HOB_TYPE_END_OF_HOB_LIST, 8).as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// Debian OVMF's TD_HOB/TEMP_MEM sections inside 2 GiB of low RAM, BFV/CFV in flash.
    fn debian_added() -> Vec<(u64, u64)> {
        vec![
            (0xffe20000, 0x1e0000),
            (0xffe00000, 0x20000),
            (0x810000, 0x10000),
            (0x80b000, 0x2000),
            (0x809000, 0x2000),
            (0x800000, 0x6000),
        ]
    }

    #[test]
    fn ram_is_split_into_accepted_and_unaccepted_parts() {
        let e = ram_entries(&[(0, 0x8000_0000)], &debian_added());
        let got: Vec<_> = e.iter().map(|e| (e.gpa, e.size, e.accepted)).collect();
        assert_eq!(
            got,
            [
                (0, 0x800000, false),
                (0x800000, 0x6000, true),
                (0x806000, 0x3000, false),
                (0x809000, 0x4000, true), // TD_HOB + TEMP_MEM are adjacent: one entry
                (0x80d000, 0x3000, false),
                (0x810000, 0x10000, true),
                (0x820000, 0x8000_0000 - 0x820000, false),
            ]
        );
    }

    #[test]
    fn ram_above_4g_and_unsorted_input_come_out_sorted() {
        let e = ram_entries(&[(1 << 32, 1 << 30), (0, 0x1000)], &[(0, 0x1000)]);
        assert_eq!(
            e,
            [
                RamEntry {
                    gpa: 0,
                    size: 0x1000,
                    accepted: true
                },
                RamEntry {
                    gpa: 1 << 32,
                    size: 1 << 30,
                    accepted: false
                }
            ]
        );
    }

    #[test]
    fn hob_layout_matches_the_pi_structures() {
        let entries = ram_entries(&[(0, 0x100000)], &[(0x80000, 0x1000)]);
        let hob = build_td_hob(0x809000, 0x2000, &entries).unwrap();
        assert_eq!(hob.len(), 56 + 3 * 48 + 8);
        // PHIT.
        assert_eq!((u16_at(&hob, 0), u16_at(&hob, 2)), (1, 56));
        assert_eq!(u32_at(&hob, 8), 9);
        assert_eq!(u64_at(&hob, 48), 0x809000 + hob.len() as u64);
        // Resource descriptors: type, attributes, start, length.
        let rd = |i: usize| {
            let at = 56 + i * 48;
            (
                u16_at(&hob, at),
                u16_at(&hob, at + 2),
                u32_at(&hob, at + 24),
                u32_at(&hob, at + 28),
                u64_at(&hob, at + 32),
                u64_at(&hob, at + 40),
            )
        };
        assert_eq!(rd(0), (3, 48, 7, 7, 0, 0x80000));
        assert_eq!(rd(1), (3, 48, 0, 7, 0x80000, 0x1000));
        assert_eq!(rd(2), (3, 48, 7, 7, 0x81000, 0x7f000));
        // End of list.
        assert_eq!(&hob[hob.len() - 8..], &[0xff, 0xff, 8, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn hob_larger_than_its_section_is_an_error() {
        let entries: Vec<_> = (0..200)
            .map(|i| RamEntry {
                gpa: i << 20,
                size: 0x1000,
                accepted: i % 2 == 0,
            })
            .collect();
        let e = build_td_hob(0x809000, 0x2000, &entries)
            .unwrap_err()
            .to_string();
        assert!(e.contains("TD HOB") && e.contains("200 RAM ranges"), "{e}");
    }
}
