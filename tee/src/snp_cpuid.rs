//! The SEV-SNP CPUID page (SNP firmware ABI, `SNP_LAUNCH_UPDATE` page type CPUID): a table of
//! up to 64 CPUID functions the guest trusts instead of executing CPUID, which the PSP checks
//! against the host's CPU at launch. cvmm builds it from the CPUID it gives its vCPUs (the BSP's
//! list, as `KVM_SET_CPUID2` receives it), for the OVMF CPUID section and for IGVM
//! `CPUID_DATA`/`CPUID_XF` pages alike; the page's contents do not enter the launch digest.

use std::mem::{offset_of, size_of};

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::ovmf::PAGE_SIZE;
use crate::uapi::{KvmCpuidEntry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use crate::TeeError;

/// Entries the CPUID page holds.
pub const SNP_CPUID_MAX_ENTRIES: usize = 64;
/// CPUID function of the XSAVE state components.
const LEAF_XSAVE: u32 = 0xd;
/// XCR0 with only x87 state enabled: what the XSAVE size outputs in the table are given for.
const XCR0_X87: u64 = 1;
/// XSAVE area size (legacy region + header) for XCR0 = x87 and XSS = 0.
const XSAVE_LEGACY_SIZE: u32 = 0x240;

/// One CPUID function of the table (inputs, then outputs).
#[repr(C)]
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct SnpCpuidFunction {
    pub eax_in: u32,
    pub ecx_in: u32,
    pub xcr0_in: u64,
    pub xss_in: u64,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
    pub reserved: u64,
}

/// The CPUID table at the start of the CPUID page (the rest of the page is zero).
#[repr(C)]
#[derive(Debug, Clone, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct SnpCpuidTable {
    pub count: u32,
    pub reserved1: u32,
    pub reserved2: u64,
    pub functions: [SnpCpuidFunction; SNP_CPUID_MAX_ENTRIES],
}

const _: () = {
    assert!(size_of::<SnpCpuidFunction>() == 0x30);
    assert!(offset_of!(SnpCpuidFunction, ecx_in) == 0x04);
    assert!(offset_of!(SnpCpuidFunction, xcr0_in) == 0x08);
    assert!(offset_of!(SnpCpuidFunction, xss_in) == 0x10);
    assert!(offset_of!(SnpCpuidFunction, eax) == 0x18);
    assert!(offset_of!(SnpCpuidFunction, ebx) == 0x1c);
    assert!(offset_of!(SnpCpuidFunction, ecx) == 0x20);
    assert!(offset_of!(SnpCpuidFunction, edx) == 0x24);
    assert!(offset_of!(SnpCpuidFunction, reserved) == 0x28);
    assert!(offset_of!(SnpCpuidTable, reserved1) == 0x04);
    assert!(offset_of!(SnpCpuidTable, reserved2) == 0x08);
    assert!(offset_of!(SnpCpuidTable, functions) == 0x10);
    assert!(size_of::<SnpCpuidTable>() == 0x10 + 64 * 0x30);
    assert!(size_of::<SnpCpuidTable>() <= PAGE_SIZE);
};

/// The CPUID page for a vCPU whose CPUID is `entries`: one table function per entry, in order.
/// The subleaf is an input only where KVM marks it significant. XSAVE leaf 0xD subleaves 0 and
/// 1 report sizes for XCR0 = x87 and XSS = 0 (their inputs say so), as the guest derives the
/// sizes for the state it enables from the per-component subleaves. More than 64 entries is an
/// error naming the count.
pub fn cpuid_page(entries: &[KvmCpuidEntry2]) -> Result<Box<[u8; PAGE_SIZE]>, TeeError> {
    if entries.len() > SNP_CPUID_MAX_ENTRIES {
        return Err(TeeError::input(
            "CPUID",
            format!(
                "the vCPU has {} CPUID entries; the SEV-SNP CPUID page holds at most \
                 {SNP_CPUID_MAX_ENTRIES}",
                entries.len()
            ),
        ));
    }
    let mut table = SnpCpuidTable::new_zeroed();
    table.count = entries.len() as u32;
    for (f, e) in table.functions.iter_mut().zip(entries) {
        let indexed = e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0;
        *f = SnpCpuidFunction {
            eax_in: e.function,
            ecx_in: if indexed { e.index } else { 0 },
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
            ..Default::default()
        };
        if e.function == LEAF_XSAVE && f.ecx_in <= 1 {
            f.xcr0_in = XCR0_X87;
            f.xss_in = 0;
            f.ebx = XSAVE_LEGACY_SIZE;
        }
    }
    let mut page = Box::new([0u8; PAGE_SIZE]);
    page[..size_of::<SnpCpuidTable>()].copy_from_slice(table.as_bytes());
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, flags: u32, regs: [u32; 4]) -> KvmCpuidEntry2 {
        KvmCpuidEntry2 {
            function,
            index,
            flags,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// The page bytes for a known list, read back at the firmware ABI's offsets.
    #[test]
    fn page_bytes_follow_the_firmware_abi_layout() {
        let entries = [
            entry(0, 0, 0, [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
            entry(
                7,
                0,
                KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                [0, 0x219c_95a9, 0x0040_069c, 0x10],
            ),
            // The index is ignored unless KVM says it is significant.
            entry(
                0x8000_0001,
                5,
                0,
                [0x00a0_0f11, 0, 0x75c2_37ff, 0x2fd3_fbff],
            ),
            entry(
                0xd,
                0,
                KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                [0x2e7, 0x988, 0x988, 0],
            ),
            entry(
                0xd,
                1,
                KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                [0xf, 0x348, 0x1800, 0],
            ),
            entry(
                0xd,
                2,
                KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                [0x100, 0x240, 0, 0],
            ),
        ];
        let page = cpuid_page(&entries).unwrap();
        assert_eq!(u32_at(&page[..], 0), 6, "count");
        assert_eq!(&page[4..16], &[0; 12], "reserved");
        // (eax_in, ecx_in, xcr0_in, xss_in, eax, ebx, ecx, edx) of each function.
        type Function = (u32, u32, u64, u64, u32, u32, u32, u32);
        let want: [Function; 6] = [
            (0, 0, 0, 0, 0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65),
            (7, 0, 0, 0, 0, 0x219c_95a9, 0x0040_069c, 0x10),
            (
                0x8000_0001,
                0,
                0,
                0,
                0x00a0_0f11,
                0,
                0x75c2_37ff,
                0x2fd3_fbff,
            ),
            (0xd, 0, 1, 0, 0x2e7, 0x240, 0x988, 0),
            (0xd, 1, 1, 0, 0xf, 0x240, 0x1800, 0),
            (0xd, 2, 0, 0, 0x100, 0x240, 0, 0),
        ];
        for (i, w) in want.iter().enumerate() {
            let f = &page[0x10 + i * 0x30..0x10 + (i + 1) * 0x30];
            let got = (
                u32_at(f, 0),
                u32_at(f, 4),
                u64_at(f, 8),
                u64_at(f, 0x10),
                u32_at(f, 0x18),
                u32_at(f, 0x1c),
                u32_at(f, 0x20),
                u32_at(f, 0x24),
            );
            assert_eq!(got, *w, "function {i}");
            assert_eq!(u64_at(f, 0x28), 0, "function {i} reserved");
        }
        assert!(page[0x10 + 6 * 0x30..].iter().all(|b| *b == 0));
    }

    #[test]
    fn sixty_four_entries_fit_and_more_are_an_error_naming_the_count() {
        let list: Vec<_> = (0..65).map(|i| entry(i, 0, 0, [i, 0, 0, 0])).collect();
        let page = cpuid_page(&list[..64]).unwrap();
        assert_eq!(u32_at(&page[..], 0), 64);
        assert_eq!(u32_at(&page[..], 0x10 + 63 * 0x30), 63);
        let e = cpuid_page(&list).unwrap_err().to_string();
        assert!(
            e.contains("65 CPUID entries") && e.contains("at most 64"),
            "{e}"
        );
    }
}
