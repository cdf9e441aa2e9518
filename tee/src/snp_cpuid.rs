//! The SEV-SNP CPUID page (SNP firmware ABI, `SNP_LAUNCH_UPDATE` page type CPUID): a table of
//! up to 64 CPUID functions the guest trusts instead of executing CPUID, which the PSP checks
//! against the host's CPU at launch. cvmm builds it from the CPUID it gives its vCPUs (the BSP's
//! list, as `KVM_SET_CPUID2` receives it). An IGVM `CPUID_DATA`/`CPUID_XF` page that carries a
//! template (the functions its guest wants, outputs zero) keeps its inputs and gets its outputs
//! from that list; an empty one (and the OVMF CPUID section) gets one function per entry. The
//! page's contents do not enter the launch digest.

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

/// The CPUID page for an IGVM `CPUID_DATA`/`CPUID_XF` page whose file contents are `template`
/// (one page). A template lists functions by their inputs (`eax_in`, `ecx_in`, `xcr0_in`,
/// `xss_in`); each keeps its inputs and gets its outputs from `entries`, the vCPU's CPUID: the
/// entry with that function (and subleaf, where KVM marks it significant). XSAVE leaf 0xD
/// subleaves 0 and 1 report the area size for the template's `xcr0_in` (and `xss_in`), from the
/// per-component subleaves. A function the vCPU does not have keeps zero outputs, as CPUID
/// returns for it. A template with no functions (an empty IGVM page) becomes
/// [`cpuid_page`]`(entries)`; one claiming more than 64 is an error naming the count.
pub fn fill_template(
    template: &[u8],
    entries: &[KvmCpuidEntry2],
) -> Result<Box<[u8; PAGE_SIZE]>, TeeError> {
    let Ok((mut table, _)) = SnpCpuidTable::read_from_prefix(template) else {
        return cpuid_page(entries);
    };
    let count = table.count as usize;
    if count == 0 {
        return cpuid_page(entries);
    }
    if count > SNP_CPUID_MAX_ENTRIES {
        return Err(TeeError::input(
            "CPUID",
            format!(
                "the IGVM CPUID template claims {count} functions; the SEV-SNP CPUID page \
                 holds at most {SNP_CPUID_MAX_ENTRIES}"
            ),
        ));
    }
    for f in &mut table.functions[..count] {
        let (eax, ebx, ecx, edx) = match find(entries, f.eax_in, f.ecx_in) {
            Some(e) => (e.eax, e.ebx, e.ecx, e.edx),
            None => {
                tracing::debug!(
                    function = format_args!("{:#x}", f.eax_in),
                    subleaf = f.ecx_in,
                    "IGVM CPUID template function not in the vCPU's CPUID; outputs left zero"
                );
                (0, 0, 0, 0)
            }
        };
        (f.eax, f.ebx, f.ecx, f.edx, f.reserved) = (eax, ebx, ecx, edx, 0);
        if f.eax_in == LEAF_XSAVE && f.ecx_in <= 1 {
            f.ebx = xsave_size(entries, f.xcr0_in | f.xss_in, f.ecx_in == 1);
        }
    }
    // Whatever follows the functions in use is not part of the table.
    table.functions[count..].fill(SnpCpuidFunction::default());
    (table.reserved1, table.reserved2) = (0, 0);
    let mut page = Box::new([0u8; PAGE_SIZE]);
    page[..size_of::<SnpCpuidTable>()].copy_from_slice(table.as_bytes());
    Ok(page)
}

/// The vCPU's entry for `function`, matching `subleaf` where KVM marks the index significant.
fn find(entries: &[KvmCpuidEntry2], function: u32, subleaf: u32) -> Option<&KvmCpuidEntry2> {
    entries.iter().find(|e| {
        e.function == function
            && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == subleaf)
    })
}

/// The XSAVE area size with the state components of `mask` enabled: standard format (the end
/// of the highest component, CPUID 0xD subleaf 0) or compacted (the components packed after
/// the legacy region and header, 64-byte aligned where subleaf i's ECX bit 1 says so; subleaf
/// 1). Components 0 and 1 live in the legacy region; components the vCPU lacks add nothing.
fn xsave_size(entries: &[KvmCpuidEntry2], mask: u64, compacted: bool) -> u32 {
    let mut size = XSAVE_LEGACY_SIZE;
    for i in (2..64).filter(|i| mask & (1 << i) != 0) {
        let Some(c) = find(entries, LEAF_XSAVE, i) else {
            continue;
        };
        if compacted {
            if c.ecx & 2 != 0 {
                size = size.next_multiple_of(64);
            }
            size = size.saturating_add(c.eax);
        } else {
            size = size.max(c.ebx.saturating_add(c.eax));
        }
    }
    size
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
            assert_eq!(function_at(&page[..], i), *w, "function {i}");
        }
        assert!(page[0x10 + 6 * 0x30..].iter().all(|b| *b == 0));
    }

    /// A template of `(eax_in, ecx_in, xcr0_in, xss_in)` functions; outputs and the rest of
    /// the page set to junk the fill must not keep.
    fn template(functions: &[(u32, u32, u64, u64)]) -> Vec<u8> {
        let mut t = SnpCpuidTable::new_zeroed();
        t.count = functions.len() as u32;
        t.reserved1 = 0xdead;
        for (f, &(eax_in, ecx_in, xcr0_in, xss_in)) in t.functions.iter_mut().zip(functions) {
            *f = SnpCpuidFunction {
                eax_in,
                ecx_in,
                xcr0_in,
                xss_in,
                eax: 0xeeee,
                reserved: 0x77,
                ..Default::default()
            };
        }
        t.functions[functions.len()].eax_in = 0x4242;
        let mut page = vec![0u8; PAGE_SIZE];
        page[..size_of::<SnpCpuidTable>()].copy_from_slice(t.as_bytes());
        page
    }

    /// Function `i` of the table in `page` at the firmware ABI's offsets: `(eax_in, ecx_in,
    /// xcr0_in, xss_in, eax, ebx, ecx, edx)`; its reserved field must be zero.
    fn function_at(page: &[u8], i: usize) -> (u32, u32, u64, u64, u32, u32, u32, u32) {
        let f = &page[0x10 + i * 0x30..0x10 + (i + 1) * 0x30];
        assert_eq!(u64_at(f, 0x28), 0, "function {i} reserved");
        (
            u32_at(f, 0),
            u32_at(f, 4),
            u64_at(f, 8),
            u64_at(f, 0x10),
            u32_at(f, 0x18),
            u32_at(f, 0x1c),
            u32_at(f, 0x20),
            u32_at(f, 0x24),
        )
    }

    /// An IGVM template keeps its functions, in its order, with its inputs; each gets the
    /// vCPU's outputs for that function and subleaf; a function the vCPU lacks gets zeros; the
    /// XSAVE sizes follow the template's XCR0/XSS (standard and compacted, with the 64-byte
    /// alignment a component asks for); nothing of the template beyond its count survives.
    #[test]
    fn an_igvm_template_keeps_its_functions_and_gets_the_vcpus_outputs() {
        let sig = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        let entries = [
            entry(0, 0, 0, [0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
            entry(1, 0, 0, [0x00a0_0f11, 0x0800, 0xfef8_3203, 0x178b_fbff]),
            entry(7, 0, sig, [0, 0x219c_95a9, 0x0040_069c, 0x10]),
            entry(7, 1, sig, [0x1, 0, 0, 0]),
            entry(0xd, 0, sig, [0x207, 0x988, 0x988, 0]),
            entry(0xd, 1, sig, [0xf, 0x348, 0x1800, 0]),
            // AVX: 0x100 bytes at 0x240; PKRU: 8 bytes at 0xa80; CET_U (supervisor, aligned).
            entry(0xd, 2, sig, [0x100, 0x240, 0, 0]),
            entry(0xd, 9, sig, [0x8, 0xa80, 0, 0]),
            entry(0xd, 11, sig, [0x10, 0, 0b11, 0]),
        ];
        let t = template(&[
            (7, 1, 0, 0),
            (0, 0, 0, 0),
            (0xd, 0, 0x207, 0),
            (0xd, 1, 0x207, 0x800),
            (0x8000_0008, 0, 0, 0),
            (1, 0, 0, 0),
            (0xd, 0, 1, 0),
        ]);
        let page = fill_template(&t, &entries).unwrap();
        assert_eq!(u32_at(&page[..], 0), 7, "count");
        assert_eq!(&page[4..16], &[0; 12], "reserved");
        let want = [
            (7, 1, 0, 0, 0x1, 0, 0, 0),
            (0, 0, 0, 0, 0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65),
            // Standard format: the end of PKRU (0xa80 + 8).
            (0xd, 0, 0x207, 0, 0x207, 0xa88, 0x988, 0),
            // Compacted: 0x240 + AVX 0x100 + PKRU 8 = 0x348, aligned to 0x380 for CET_U + 0x10.
            (0xd, 1, 0x207, 0x800, 0xf, 0x390, 0x1800, 0),
            (0x8000_0008, 0, 0, 0, 0, 0, 0, 0),
            (1, 0, 0, 0, 0x00a0_0f11, 0x0800, 0xfef8_3203, 0x178b_fbff),
            // Linux's table lookup uses the XCR0 = x87 entry: the legacy size.
            (0xd, 0, 1, 0, 0x207, 0x240, 0x988, 0),
        ];
        for (i, w) in want.iter().enumerate() {
            assert_eq!(function_at(&page[..], i), *w, "function {i}");
        }
        assert!(page[0x10 + 7 * 0x30..].iter().all(|b| *b == 0));
    }

    /// An empty IGVM page has no template: the page lists the vCPU's CPUID; a template
    /// claiming more than 64 functions is an error naming its count; a short buffer is no
    /// template either.
    #[test]
    fn an_empty_template_gets_every_entry_and_a_bad_count_is_an_error() {
        let entries = [entry(0, 0, 0, [1, 2, 3, 4]), entry(1, 0, 0, [5, 6, 7, 8])];
        let full = cpuid_page(&entries).unwrap();
        assert_eq!(fill_template(&[0u8; PAGE_SIZE], &entries).unwrap(), full);
        assert_eq!(fill_template(&[], &entries).unwrap(), full);
        let mut t = template(&[(0, 0, 0, 0)]);
        t[..4].copy_from_slice(&65u32.to_le_bytes());
        let e = fill_template(&t, &entries).unwrap_err().to_string();
        assert!(
            e.contains("claims 65 functions") && e.contains("at most 64"),
            "{e}"
        );
        t[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(fill_template(&t, &entries).is_err());
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
