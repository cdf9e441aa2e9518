//! ACPI tables for firmware boot: packs FACS, DSDT, FADT and further tables into
//! `etc/acpi/tables`, builds the XSDT and the RSDP (`etc/acpi/rsdp`), and writes the
//! `etc/table-loader` script that links them once the firmware has placed them: FADT→FACS,
//! FADT→DSDT, XSDT→each table, RSDP→XSDT, then every checksum. OVMF installs exactly the
//! tables that some ADD_POINTER reaches, so every table is referenced once.

use super::fw_cfg::{FwCfg, FwCfgError};
use super::loader::{encode_script, LoaderCommand, Zone};

/// fw_cfg file holding the tables.
pub const ACPI_TABLES_FILE: &str = "etc/acpi/tables";
/// fw_cfg file holding the RSDP.
pub const ACPI_RSDP_FILE: &str = "etc/acpi/rsdp";
/// fw_cfg file holding the loader script.
pub const TABLE_LOADER_FILE: &str = "etc/table-loader";

const HEADER_LEN: usize = 36;
const FACS_MIN: usize = 64;
const FADT_FIRMWARE_CTRL: usize = 36;
const FADT_DSDT: usize = 40;
const FADT_X_FIRMWARE_CTRL: usize = 132;
const FADT_X_DSDT: usize = 140;
const RSDP_LEN: usize = 36;

/// Errors in the tables the VMM hands over.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    /// A table is shorter than its header (or the FADT than its DSDT field).
    #[error("ACPI table {sig} is {len} bytes, shorter than {min}")]
    TooShort { sig: String, len: usize, min: usize },
    /// The header's length field disagrees with the bytes given.
    #[error("ACPI table {sig} says it is {field} bytes but {len} were given")]
    LengthMismatch { sig: String, field: u32, len: usize },
    /// A table passed in a named slot has another signature.
    #[error("expected an ACPI {expected} table, got {found:?}")]
    WrongSignature {
        expected: &'static str,
        found: String,
    },
    /// The packed tables exceed 4 GiB.
    #[error("ACPI tables total {0} bytes, more than the loader can address")]
    TooLarge(usize),
}

/// The tables to publish. Their checksum fields are recomputed by the loader.
pub struct AcpiTables {
    /// The FACS (optional: hardware-reduced platforms may have none).
    pub facs: Option<Vec<u8>>,
    pub dsdt: Vec<u8>,
    /// The FADT. Its DSDT link goes into X_DSDT when the table has that field (≥ 148 bytes),
    /// else into the 32-bit DSDT field; the FACS link goes into FIRMWARE_CTRL.
    pub fadt: Vec<u8>,
    /// Further tables (MADT, MCFG, HPET, ...), listed in the XSDT after the FADT.
    pub others: Vec<Vec<u8>>,
    /// OEMID of the XSDT and RSDP.
    pub oem_id: [u8; 6],
    /// OEM table id of the XSDT.
    pub oem_table_id: [u8; 8],
}

/// The three fw_cfg files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiFiles {
    pub tables: Vec<u8>,
    pub rsdp: Vec<u8>,
    pub loader: Vec<u8>,
}

impl AcpiFiles {
    /// Adds the files to `fw` under their QEMU names.
    pub fn install(self, fw: &mut FwCfg) -> Result<(), FwCfgError> {
        fw.add_file(ACPI_TABLES_FILE, self.tables)?;
        fw.add_file(ACPI_RSDP_FILE, self.rsdp)?;
        fw.add_file(TABLE_LOADER_FILE, self.loader)
    }
}

fn sig_of(t: &[u8]) -> String {
    String::from_utf8_lossy(&t[..t.len().min(4)]).into_owned()
}

fn check_table(t: &[u8], expected: Option<&'static str>, min: usize) -> Result<(), AcpiError> {
    if t.len() < min.max(8) {
        return Err(AcpiError::TooShort {
            sig: sig_of(t),
            len: t.len(),
            min: min.max(8),
        });
    }
    if let Some(exp) = expected {
        if &t[..4] != exp.as_bytes() {
            return Err(AcpiError::WrongSignature {
                expected: exp,
                found: sig_of(t),
            });
        }
    }
    let field = u32::from_le_bytes([t[4], t[5], t[6], t[7]]);
    if field as usize != t.len() {
        return Err(AcpiError::LengthMismatch {
            sig: sig_of(t),
            field,
            len: t.len(),
        });
    }
    Ok(())
}

struct Packer {
    buf: Vec<u8>,
    checksums: Vec<(u32, u32)>,
}

impl Packer {
    /// Appends a table at an `align`-aligned offset; SDTs get their checksum zeroed and noted.
    fn push(&mut self, t: &[u8], align: usize, sdt: bool) -> usize {
        let at = self.buf.len().next_multiple_of(align);
        self.buf.resize(at, 0);
        self.buf.extend_from_slice(t);
        if sdt {
            self.buf[at + 9] = 0;
            self.checksums.push((at as u32, t.len() as u32));
        }
        at
    }
}

impl AcpiTables {
    /// Packs the tables and writes the loader script.
    pub fn build(&self) -> Result<AcpiFiles, AcpiError> {
        if let Some(f) = &self.facs {
            check_table(f, Some("FACS"), FACS_MIN)?;
        }
        check_table(&self.dsdt, Some("DSDT"), HEADER_LEN)?;
        check_table(&self.fadt, Some("FACP"), FADT_DSDT + 4)?;
        for t in &self.others {
            check_table(t, None, HEADER_LEN)?;
        }
        let total = self.facs.as_ref().map_or(0, Vec::len)
            + self.dsdt.len()
            + self.fadt.len()
            + self.others.iter().map(Vec::len).sum::<usize>()
            + HEADER_LEN
            + 8 * (1 + self.others.len())
            + 64 * (4 + self.others.len());
        if u32::try_from(total).is_err() {
            return Err(AcpiError::TooLarge(total));
        }

        let mut p = Packer {
            buf: Vec::with_capacity(total),
            checksums: Vec::new(),
        };
        let facs = self.facs.as_ref().map(|f| p.push(f, 64, false));
        let dsdt = p.push(&self.dsdt, 8, true);
        let fadt = p.push(&self.fadt, 8, true);
        let others: Vec<usize> = self.others.iter().map(|t| p.push(t, 8, true)).collect();

        let mut cmds = vec![
            LoaderCommand::Allocate {
                file: ACPI_TABLES_FILE.into(),
                align: 64,
                zone: Zone::High,
            },
            LoaderCommand::Allocate {
                file: ACPI_RSDP_FILE.into(),
                align: 16,
                zone: Zone::FSeg,
            },
        ];
        let ptr = |pointer: &str, at: usize, size: u8| LoaderCommand::AddPointer {
            pointer: pointer.into(),
            pointee: ACPI_TABLES_FILE.into(),
            offset: at as u32,
            size,
        };

        // FADT links: each field holds the pointee's offset until the loader relocates it.
        let put = |p: &mut Packer, at: usize, v: u64, size: usize| {
            p.buf[at..at + size].copy_from_slice(&v.to_le_bytes()[..size]);
        };
        put(&mut p, fadt + FADT_FIRMWARE_CTRL, 0, 4);
        if self.fadt.len() >= FADT_X_FIRMWARE_CTRL + 8 {
            put(&mut p, fadt + FADT_X_FIRMWARE_CTRL, 0, 8);
        }
        if let Some(f) = facs {
            put(&mut p, fadt + FADT_FIRMWARE_CTRL, f as u64, 4);
            cmds.push(ptr(ACPI_TABLES_FILE, fadt + FADT_FIRMWARE_CTRL, 4));
        }
        put(&mut p, fadt + FADT_DSDT, 0, 4);
        if self.fadt.len() >= FADT_X_DSDT + 8 {
            put(&mut p, fadt + FADT_X_DSDT, dsdt as u64, 8);
            cmds.push(ptr(ACPI_TABLES_FILE, fadt + FADT_X_DSDT, 8));
        } else {
            put(&mut p, fadt + FADT_DSDT, dsdt as u64, 4);
            cmds.push(ptr(ACPI_TABLES_FILE, fadt + FADT_DSDT, 4));
        }

        // XSDT: the FADT, then the others.
        let entries: Vec<usize> = std::iter::once(fadt)
            .chain(others.iter().copied())
            .collect();
        let mut xsdt = Vec::with_capacity(HEADER_LEN + 8 * entries.len());
        xsdt.extend_from_slice(b"XSDT");
        xsdt.extend_from_slice(&((HEADER_LEN + 8 * entries.len()) as u32).to_le_bytes());
        xsdt.push(1); // revision
        xsdt.push(0); // checksum, filled by the loader
        xsdt.extend_from_slice(&self.oem_id);
        xsdt.extend_from_slice(&self.oem_table_id);
        xsdt.extend_from_slice(&1u32.to_le_bytes()); // OEM revision
        xsdt.extend_from_slice(b"CVMM");
        xsdt.extend_from_slice(&1u32.to_le_bytes()); // creator revision
        for e in &entries {
            xsdt.extend_from_slice(&(*e as u64).to_le_bytes());
        }
        let xsdt_at = p.push(&xsdt, 8, true);
        for i in 0..entries.len() {
            cmds.push(ptr(ACPI_TABLES_FILE, xsdt_at + HEADER_LEN + 8 * i, 8));
        }

        // RSDP (ACPI 2.0+): XSDT address relative to the tables file, checksums by the loader.
        let mut rsdp = vec![0u8; RSDP_LEN];
        rsdp[0..8].copy_from_slice(b"RSD PTR ");
        rsdp[9..15].copy_from_slice(&self.oem_id);
        rsdp[15] = 2;
        rsdp[20..24].copy_from_slice(&(RSDP_LEN as u32).to_le_bytes());
        rsdp[24..32].copy_from_slice(&(xsdt_at as u64).to_le_bytes());
        cmds.push(ptr(ACPI_RSDP_FILE, 24, 8));

        for &(start, length) in &p.checksums {
            cmds.push(LoaderCommand::AddChecksum {
                file: ACPI_TABLES_FILE.into(),
                result: start + 9,
                start,
                length,
            });
        }
        for (result, length) in [(8, 20), (32, RSDP_LEN as u32)] {
            cmds.push(LoaderCommand::AddChecksum {
                file: ACPI_RSDP_FILE.into(),
                result,
                start: 0,
                length,
            });
        }
        tracing::debug!(
            tables = p.buf.len(),
            commands = cmds.len(),
            "ACPI fw_cfg files built"
        );
        Ok(AcpiFiles {
            tables: p.buf,
            rsdp,
            loader: encode_script(&cmds),
        })
    }
}
