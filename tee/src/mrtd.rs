//! TDX MRTD (spec §8.4): SHA-384 over the records the TDX module hashes while KVM runs
//! `KVM_TDX_INIT_MEM_REGION`. Per 4 KiB page, in issue order: one 128-byte `MEM.PAGE.ADD`
//! record, then, for measured pages, sixteen `MR.EXTEND` records each followed by its 256 data
//! bytes. Single pass, page by page. Pure functions; nothing here touches KVM.

use sha2::{Digest, Sha384};

use crate::measure::Firmware;
use crate::tdx_plan::TdxPlan;
use crate::TeeError;

/// Length of a `MEM.PAGE.ADD` / `MR.EXTEND` record header.
pub const RECORD_LEN: usize = 128;
/// Bytes measured per `TDH.MR.EXTEND`.
pub const EXTEND_CHUNK: usize = 256;
const PAGE: usize = 4096;

fn record(op: &[u8], gpa: u64) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[..op.len()].copy_from_slice(op);
    r[16..24].copy_from_slice(&gpa.to_le_bytes());
    r
}

/// The record hashed for `TDH.MEM.PAGE.ADD` of the page at `gpa`.
pub fn page_add_record(gpa: u64) -> [u8; RECORD_LEN] {
    record(b"MEM.PAGE.ADD", gpa)
}

/// The record hashed before the 256 bytes of `TDH.MR.EXTEND` at `gpa`.
pub fn mr_extend_record(gpa: u64) -> [u8; RECORD_LEN] {
    record(b"MR.EXTEND", gpa)
}

/// The running MRTD hash.
#[derive(Clone, Default)]
pub struct Mrtd(Sha384);

impl Mrtd {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one 4 KiB page at `gpa`; `contents` (zero-padded to 4 KiB when shorter) are
    /// extended when given, so `Some(&[])` measures a zero page and `None` only adds it.
    pub fn add_page(&mut self, gpa: u64, contents: Option<&[u8]>) {
        self.0.update(page_add_record(gpa));
        if let Some(data) = contents {
            let mut page = [0u8; PAGE];
            let n = data.len().min(PAGE);
            page[..n].copy_from_slice(&data[..n]);
            for (i, chunk) in page.chunks(EXTEND_CHUNK).enumerate() {
                self.0
                    .update(mr_extend_record(gpa + (i * EXTEND_CHUNK) as u64));
                self.0.update(chunk);
            }
        }
    }

    /// Adds every page of a range; `data` covers the range (shorter = zero-padded).
    pub fn add_range(&mut self, gpa: u64, pages: u64, data: &[u8], measure: bool) {
        for i in 0..pages {
            let at = (i as usize).saturating_mul(PAGE);
            let page = data.get(at..).map(|d| &d[..d.len().min(PAGE)]);
            self.add_page(
                gpa + i * PAGE as u64,
                measure.then_some(page.unwrap_or(&[])),
            );
        }
    }

    /// The final MRTD.
    pub fn value(self) -> [u8; 48] {
        self.0.finalize().into()
    }
}

/// The MRTD of a TDX launch from a TDVF image or a TDX-platform IGVM file: the value the TD
/// report's MRTD holds when KVM issues the same plan (`cvmm measure --mode tdx`).
pub fn tdx_mrtd(firmware: &Firmware) -> Result<[u8; 48], TeeError> {
    let plan = match firmware {
        Firmware::Ovmf { name, data } => TdxPlan::from_tdvf(name, data)?,
        Firmware::Igvm { name, data } => TdxPlan::from_igvm(name, data)?,
    };
    Ok(plan.mrtd())
}

#[cfg(test)]
#[path = "mrtd_tests.rs"]
mod tests;
