//! Test support: synthetic OVMF images with a valid footer table and SEV metadata, the Debian
//! OVMF image when installed, and a runner for the `sev-snp-measure` oracle (PyPI).
//!
//! A missing oracle prints one `SKIPPED` line, unless `CVMM_REQUIRE_ORACLES=1`, which makes
//! it a failure naming what is missing (CI sets it once the tools are installed).

use std::path::Path;
use std::process::Command;

use crate::ovmf::{
    Guid, FOOTER_TABLE_GUID, SEV_ES_RESET_BLOCK_GUID, SEV_HASH_TABLE_GUID, SEV_METADATA_GUID,
};

/// Debian's unified OVMF image.
pub const DEBIAN_OVMF: &str = "/usr/share/ovmf/OVMF.fd";
/// SHA-256 of the image the spec's vectors (§9.3) were computed from.
pub const DEBIAN_OVMF_SHA256: &str =
    "7b456907dd0786d415999e801a1ac4637b8ed4d7cf5378cfc6edbe5e574dd773";

/// Reports a missing oracle: a failure when `CVMM_REQUIRE_ORACLES=1`, else one SKIPPED line.
pub fn missing(test: &str, what: &str) {
    if std::env::var("CVMM_REQUIRE_ORACLES").as_deref() == Ok("1") {
        panic!("{test}: oracle missing: {what}");
    }
    println!("SKIPPED {test}: {what}");
}

/// Debian's OVMF.fd, or `None` (after reporting) when not installed.
pub fn debian_ovmf(test: &str) -> Option<Vec<u8>> {
    match std::fs::read(DEBIAN_OVMF) {
        Ok(d) => Some(d),
        Err(e) => {
            missing(test, &format!("{DEBIAN_OVMF}: {e} (apt-get install ovmf)"));
            None
        }
    }
}

/// Runs `sev-snp-measure` with `args` in `dir` and returns its trimmed stdout, or `None` (after
/// reporting) when the tool is not installed. A tool that runs and fails panics with its stderr.
pub fn sev_snp_measure(test: &str, dir: &Path, args: &[&str]) -> Option<String> {
    let out = match Command::new("sev-snp-measure")
        .args(args)
        .current_dir(dir)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            missing(
                test,
                &format!("sev-snp-measure: {e} (pip install sev-snp-measure==0.0.13)"),
            );
            return None;
        }
    };
    assert!(
        out.status.success(),
        "sev-snp-measure {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().to_lowercase())
}

/// Description of a synthetic OVMF image.
pub struct SynthOvmf {
    /// Image length (multiple of 4 KiB).
    pub len: usize,
    /// SEV metadata sections `(gpa, size, raw type)`; `None` = no metadata entry.
    pub sections: Option<Vec<(u32, u32, u32)>>,
    pub reset_eip: Option<u32>,
    pub hashes_table: Option<(u32, u32)>,
}

impl SynthOvmf {
    /// An AmdSev-like image: 64 KiB, sections like Debian's plus SNP_KERNEL_HASHES.
    pub fn amdsev() -> Self {
        SynthOvmf {
            len: 0x10000,
            sections: Some(vec![
                (0x800000, 0x9000, 1),
                (0x80a000, 0x3000, 1),
                (0x80d000, 0x1000, 2),
                (0x80e000, 0x1000, 3),
                (0x80f000, 0x1000, 0x10),
                (0x810000, 0x10000, 1),
            ]),
            reset_eip: Some(0x80b004),
            hashes_table: Some((0x80f400, 0x400)),
        }
    }

    /// Builds the image: pseudo-random contents, "ASEV" metadata 2 KiB before the end, and the
    /// footer table ending 32 bytes before the end.
    pub fn build(&self) -> Vec<u8> {
        let mut img: Vec<u8> = (0..self.len)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut entries: Vec<(Guid, Vec<u8>)> = Vec::new();
        if let Some(sections) = &self.sections {
            let meta_at = self.len - 0x800;
            let mut meta = b"ASEV".to_vec();
            meta.extend_from_slice(&(16 + 12 * sections.len() as u32).to_le_bytes());
            meta.extend_from_slice(&1u32.to_le_bytes());
            meta.extend_from_slice(&(sections.len() as u32).to_le_bytes());
            for (gpa, size, ty) in sections {
                for v in [gpa, size, ty] {
                    meta.extend_from_slice(&v.to_le_bytes());
                }
            }
            img[meta_at..meta_at + meta.len()].copy_from_slice(&meta);
            entries.push((
                SEV_METADATA_GUID,
                ((self.len - meta_at) as u32).to_le_bytes().to_vec(),
            ));
        }
        if let Some(eip) = self.reset_eip {
            entries.push((SEV_ES_RESET_BLOCK_GUID, eip.to_le_bytes().to_vec()));
        }
        if let Some((gpa, size)) = self.hashes_table {
            let mut d = gpa.to_le_bytes().to_vec();
            d.extend_from_slice(&size.to_le_bytes());
            entries.push((SEV_HASH_TABLE_GUID, d));
        }
        let mut table = Vec::new();
        for (guid, data) in &entries {
            table.extend_from_slice(data);
            table.extend_from_slice(&((data.len() + 18) as u16).to_le_bytes());
            table.extend_from_slice(&guid.0);
        }
        table.extend_from_slice(&((table.len() + 18) as u16).to_le_bytes());
        table.extend_from_slice(&FOOTER_TABLE_GUID.0);
        let end = self.len - 32;
        img[end - table.len()..end].copy_from_slice(&table);
        img
    }
}
