//! Test support for the TDX modules: synthetic TDVF images, TDX-platform IGVM files, the
//! `igvm` crate's MRTD (oracle O6) and a guest-memory fake for the quote path.

use std::io;
use std::sync::Mutex;

use igvm::{IgvmDirectiveHeader as D, IgvmFile, IgvmPlatformHeader};
use igvm_defs::{
    IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType, IGVM_VHS_SUPPORTED_PLATFORM,
};

use crate::ovmf::{FOOTER_TABLE_GUID, TDX_METADATA_GUID};
use crate::quote::SharedMemory;
use crate::tdvf::Tdvf;

/// Compatibility mask of the TDX platform in generated IGVM files.
pub const TDX_MASK: u32 = 1;

/// One TDVF section record: (data_offset, raw_size, gpa, mem_size, type, attributes).
pub type RawSection = (u32, u32, u64, u64, u32, u32);

/// Builds a `len`-byte image with pseudo-random contents, a "TDVF" descriptor holding
/// `sections` 0x1000 bytes before the end and a footer table pointing at it.
pub fn synth_tdvf(len: usize, sections: &[RawSection]) -> Vec<u8> {
    let mut img: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(2246822519) >> 11) as u8)
        .collect();
    let at = len - 0x1000;
    let mut meta = b"TDVF".to_vec();
    meta.extend_from_slice(&(16 + 32 * sections.len() as u32).to_le_bytes());
    meta.extend_from_slice(&1u32.to_le_bytes());
    meta.extend_from_slice(&(sections.len() as u32).to_le_bytes());
    for &(off, raw, gpa, size, ty, attr) in sections {
        meta.extend_from_slice(&off.to_le_bytes());
        meta.extend_from_slice(&raw.to_le_bytes());
        meta.extend_from_slice(&gpa.to_le_bytes());
        meta.extend_from_slice(&size.to_le_bytes());
        meta.extend_from_slice(&ty.to_le_bytes());
        meta.extend_from_slice(&attr.to_le_bytes());
    }
    img[at..at + meta.len()].copy_from_slice(&meta);
    let mut table = ((len - at) as u32).to_le_bytes().to_vec();
    table.extend_from_slice(&22u16.to_le_bytes());
    table.extend_from_slice(&TDX_METADATA_GUID.0);
    table.extend_from_slice(&((table.len() + 18) as u16).to_le_bytes());
    table.extend_from_slice(&FOOTER_TABLE_GUID.0);
    let end = len - 32;
    img[end - table.len()..end].copy_from_slice(&table);
    img
}

/// A small TDVF: BFV (measured) and CFV in a 256 KiB image at 4 GiB − 256 KiB, a TD_HOB,
/// TEMP_MEM and a PAGE_AUG permanent-memory section in low RAM.
pub fn small_tdvf() -> Vec<u8> {
    let base = (1u64 << 32) - 0x40000;
    synth_tdvf(
        0x40000,
        &[
            (0x10000, 0x30000, base + 0x10000, 0x30000, 0, 1),
            (0, 0x10000, base, 0x10000, 1, 0),
            (0, 0, 0x809000, 0x2000, 2, 0),
            (0, 0, 0x800000, 0x6000, 3, 0),
            (0, 0, 0x900000, 0x4000, 4, 2),
        ],
    )
}

pub fn page(gpa: u64, flags: IgvmPageDataFlags, data: Vec<u8>) -> D {
    D::PageData {
        gpa,
        compatibility_mask: TDX_MASK,
        flags,
        data_type: IgvmPageDataType::NORMAL,
        data,
    }
}

/// Serializes a TDX-platform IGVM file with these directives.
pub fn tdx_igvm(directives: Vec<D>) -> Vec<u8> {
    let platform = IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
        compatibility_mask: TDX_MASK,
        highest_vtl: 0,
        platform_type: IgvmPlatformType::TDX,
        platform_version: 1,
        shared_gpa_boundary: 0,
    });
    let f = IgvmFile::new(igvm::IgvmRevision::V1, vec![platform], vec![], directives)
        .expect("valid TDX test IGVM");
    let mut out = Vec::new();
    f.serialize(&mut out).expect("serializable IGVM");
    out
}

/// The IGVM file O6 asks for: one 4 KiB PageData per TDVF page in metadata order, MR_EXTEND
/// sections as measured data, the others `unmeasured`, PAGE_AUG sections omitted.
pub fn igvm_from_tdvf(name: &str, image: &[u8]) -> Vec<u8> {
    let tdvf = Tdvf::parse(name, image).unwrap();
    let mut dirs = Vec::new();
    for s in tdvf.sections().iter().filter(|s| !s.page_aug()) {
        let data = tdvf.section_data(s);
        for (i, chunk) in data.as_bytes().chunks(4096).enumerate() {
            let gpa = s.gpa + i as u64 * 4096;
            if s.mr_extend() {
                dirs.push(page(gpa, IgvmPageDataFlags::new(), chunk.to_vec()));
            } else {
                dirs.push(page(
                    gpa,
                    IgvmPageDataFlags::new().with_unmeasured(true),
                    vec![],
                ));
            }
        }
    }
    tdx_igvm(dirs)
}

/// The `igvm` crate's MRTD of an IGVM file (oracle).
pub fn igvm_crate_mrtd(bytes: &[u8]) -> [u8; 48] {
    let f = IgvmFile::new_from_binary(bytes, Some(igvm::IsolationType::Tdx)).unwrap();
    igvm::measurement::generate_tdx_measurement(f.directives(), TDX_MASK).unwrap()
}

/// Guest memory backed by a vector starting at `base`.
pub struct VecMem {
    pub base: u64,
    pub data: Mutex<Vec<u8>>,
}

impl VecMem {
    pub fn new(base: u64, len: usize) -> Self {
        VecMem {
            base,
            data: Mutex::new(vec![0; len]),
        }
    }

    fn range(&self, gpa: u64, len: usize) -> io::Result<std::ops::Range<usize>> {
        let start =
            gpa.checked_sub(self.base)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::EFAULT))? as usize;
        let n = self.data.lock().unwrap().len();
        if start + len > n {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        Ok(start..start + len)
    }

    pub fn bytes(&self, gpa: u64, len: usize) -> Vec<u8> {
        let r = self.range(gpa, len).unwrap();
        self.data.lock().unwrap()[r].to_vec()
    }
}

impl SharedMemory for VecMem {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
        let r = self.range(gpa, buf.len())?;
        buf.copy_from_slice(&self.data.lock().unwrap()[r]);
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> io::Result<()> {
        let r = self.range(gpa, data.len())?;
        self.data.lock().unwrap()[r].copy_from_slice(data);
        Ok(())
    }
}

/// A fake QGS: serves one connection, checks the GET_QUOTE_REQ framing strictly, sends the
/// report it got on `got`, waits for `release` (if given), then answers with `reply(report)`.
pub fn fake_qgs_serve<S: io::Read + io::Write>(
    mut s: S,
    got: std::sync::mpsc::Sender<Vec<u8>>,
    release: Option<std::sync::mpsc::Receiver<()>>,
    reply: impl FnOnce(&[u8]) -> Vec<u8>,
) {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let len = u32::from_be_bytes(len) as usize;
    let mut msg = vec![0u8; len];
    s.read_exact(&mut msg).unwrap();
    let u32_at = |at: usize| u32::from_le_bytes(msg[at..at + 4].try_into().unwrap());
    assert_eq!(&msg[..4], &[1, 0, 1, 0], "QGS version 1.1");
    assert_eq!(u32_at(4), 0, "GET_QUOTE_REQ");
    assert_eq!(u32_at(8) as usize, len, "header size = message size");
    assert_eq!(u32_at(12), 0, "error_code");
    assert_eq!(u32_at(16) as usize, len - 24, "report_size");
    assert_eq!(u32_at(20), 0, "id_list_size");
    let report = msg[24..].to_vec();
    got.send(report.clone()).unwrap();
    if let Some(r) = release {
        r.recv().unwrap();
    }
    let _ = s.write_all(&reply(&report));
}

/// A framed GET_QUOTE_RESP carrying `quote`.
pub fn qgs_response(quote: &[u8]) -> Vec<u8> {
    let size = (24 + quote.len()) as u32;
    let mut m = size.to_be_bytes().to_vec();
    for v in [1u16, 1] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    for v in [1u32, size, 0, 0, quote.len() as u32] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(quote);
    m
}

/// The fake quote for a report: a marker and the report reversed.
pub fn fake_quote(report: &[u8]) -> Vec<u8> {
    let mut q = b"QUOTE".to_vec();
    q.extend(report.iter().rev());
    q
}
