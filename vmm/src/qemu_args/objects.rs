//! `-object` values: memory backends, the SEV-SNP and TDX guest objects (whose settings come
//! back to the caller as [`TeeOptions`]) and `igvm-cfg`.

use super::opts::{decode_base64, parse_bool, parse_number, parse_size, Opts};
use super::QemuArgsError;
use crate::spec::TdReportValue;
use std::path::PathBuf;

/// Settings of the confidential-guest object the machine uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeeOptions {
    /// `-object sev-snp-guest,...`.
    Snp(SnpOptions),
    /// `-object tdx-guest,...` (usually in JSON form).
    Tdx(TdxOptions),
}

/// `sev-snp-guest` properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpOptions {
    /// Object id (what `confidential-guest-support=` names).
    pub id: String,
    /// Position of the C-bit in guest page-table entries (`cbitpos`, 51 on Milan/Genoa).
    pub cbitpos: u32,
    /// Physical address bits lost when SEV is on (`reduced-phys-bits`).
    pub reduced_phys_bits: u32,
    /// 32 bytes placed in the attestation report (`host-data`, base64 in QEMU).
    pub host_data: Option<[u8; 32]>,
    /// `kernel-hashes=on`: measure -kernel/-initrd/-append through OVMF's hashes table.
    pub kernel_hashes: bool,
    /// Guest policy (`policy`), when given.
    pub policy: Option<u64>,
}

/// `tdx-guest` properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdxOptions {
    /// Object id (what `confidential-guest-support=` names).
    pub id: String,
    /// Where GetQuote requests go (the host QGS).
    pub quote_generation_socket: Option<QuoteSocket>,
    /// `mrconfigid`, `mrowner`, `mrownerconfig`: 48 bytes each (base64 in QEMU) that the TD
    /// report carries.
    pub mrconfigid: Option<TdReportValue>,
    pub mrowner: Option<TdReportValue>,
    pub mrownerconfig: Option<TdReportValue>,
}

/// The `quote-generation-socket` address of a `tdx-guest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuoteSocket {
    /// `{"type":"vsock","cid":"2","port":"4050"}`.
    Vsock {
        /// Context id (2 = the host).
        cid: u32,
        /// Port.
        port: u32,
    },
    /// `{"type":"unix","path":"..."}`.
    Unix(PathBuf),
}

/// What one `-object` defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ObjectKind {
    /// `memory-backend-memfd` / `memory-backend-ram` of `size` bytes.
    MemoryBackend {
        qom_type: String,
        size: u64,
    },
    Snp(SnpOptions),
    Tdx(TdxOptions),
    /// `igvm-cfg` with its file.
    Igvm(PathBuf),
}

impl ObjectKind {
    /// The QOM type name, for messages.
    pub(super) fn type_name(&self) -> &str {
        match self {
            Self::MemoryBackend { qom_type, .. } => qom_type,
            Self::Snp(_) => "sev-snp-guest",
            Self::Tdx(_) => "tdx-guest",
            Self::Igvm(_) => "igvm-cfg",
        }
    }
}

/// One parsed `-object`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Object {
    pub id: String,
    pub kind: ObjectKind,
}

/// Parses one `-object` value (key list or JSON).
pub(super) fn parse_object(
    value: &str,
    ignored: &mut Vec<String>,
) -> Result<Object, QemuArgsError> {
    let mut o = Opts::parse_maybe_json("-object", value, "qom-type")?;
    let qom_type = o.require("qom-type")?;
    let id = o.require("id")?;
    let kind = match qom_type.as_str() {
        "memory-backend-memfd" | "memory-backend-ram" => {
            let raw = o.require("size")?;
            let size = parse_size(&raw, 1).map_err(|r| o.bad("size", &raw, r))?;
            if size == 0 {
                return Err(o.bad("size", &raw, "a memory backend cannot be empty"));
            }
            for key in ["share", "prealloc"] {
                if let Some(v) = o.take(key) {
                    parse_bool(&v).ok_or_else(|| o.bad(key, &v, "expected on or off"))?;
                    ignored.push(o.describe(key, &v));
                }
            }
            ObjectKind::MemoryBackend { qom_type, size }
        }
        "sev-snp-guest" => ObjectKind::Snp(parse_snp(&mut o, id.clone())?),
        "tdx-guest" => ObjectKind::Tdx(parse_tdx(&mut o, id.clone())?),
        "igvm-cfg" => {
            let file = o.require("file")?;
            if file.is_empty() {
                return Err(o.bad("file", &file, "empty path"));
            }
            ObjectKind::Igvm(file.into())
        }
        other => return Err(QemuArgsError::Unsupported(format!("-object {other}"))),
    };
    o.finish()?;
    Ok(Object { id, kind })
}

fn parse_bits(o: &mut Opts, key: &str, min: u64) -> Result<u32, QemuArgsError> {
    let raw = o.require(key)?;
    match parse_number(&raw) {
        Some(n) if (min..64).contains(&n) => Ok(n as u32),
        _ => Err(o.bad(key, &raw, format!("expected a bit count in {min}..=63"))),
    }
}

fn parse_snp(o: &mut Opts, id: String) -> Result<SnpOptions, QemuArgsError> {
    let cbitpos = parse_bits(o, "cbitpos", 32)?;
    let reduced_phys_bits = parse_bits(o, "reduced-phys-bits", 1)?;
    let host_data = match o.take("host-data") {
        None => None,
        Some(raw) => {
            let bytes =
                decode_base64(&raw).ok_or_else(|| o.bad("host-data", &raw, "not valid base64"))?;
            let len = bytes.len();
            Some(<[u8; 32]>::try_from(bytes).map_err(|_| {
                o.bad(
                    "host-data",
                    &raw,
                    format!("decodes to {len} bytes, expected 32"),
                )
            })?)
        }
    };
    let kernel_hashes = match o.take("kernel-hashes") {
        None => false,
        Some(v) => {
            parse_bool(&v).ok_or_else(|| o.bad("kernel-hashes", &v, "expected on or off"))?
        }
    };
    let policy = match o.take("policy") {
        None => None,
        Some(v) => Some(parse_number(&v).ok_or_else(|| o.bad("policy", &v, "not a number"))?),
    };
    Ok(SnpOptions {
        id,
        cbitpos,
        reduced_phys_bits,
        host_data,
        kernel_hashes,
        policy,
    })
}

fn parse_tdx(o: &mut Opts, id: String) -> Result<TdxOptions, QemuArgsError> {
    const QGS: &str = "quote-generation-socket";
    let socket = match o.take(&format!("{QGS}.type")) {
        None => None,
        Some(t) if t == "vsock" => {
            let mut num = |key: &str| -> Result<u32, QemuArgsError> {
                let full = format!("{QGS}.{key}");
                let raw = o.require(&full)?;
                parse_number(&raw)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| o.bad(&full, &raw, "not a 32-bit number"))
            };
            let cid = num("cid")?;
            let port = num("port")?;
            Some(QuoteSocket::Vsock { cid, port })
        }
        Some(t) if t == "unix" => {
            let path = o.require(&format!("{QGS}.path"))?;
            if path.is_empty() {
                return Err(o.bad(&format!("{QGS}.path"), &path, "empty path"));
            }
            Some(QuoteSocket::Unix(path.into()))
        }
        Some(t) => {
            return Err(o.bad(
                &format!("{QGS}.type"),
                &t,
                "supported socket types: vsock, unix",
            ))
        }
    };
    let mut report_value = |key: &str| -> Result<Option<TdReportValue>, QemuArgsError> {
        let Some(raw) = o.take(key) else {
            return Ok(None);
        };
        let bytes = decode_base64(&raw).ok_or_else(|| o.bad(key, &raw, "not valid base64"))?;
        let len = bytes.len();
        <[u8; 48]>::try_from(bytes)
            .map(|b| Some(TdReportValue(b)))
            .map_err(|_| o.bad(key, &raw, format!("decodes to {len} bytes, expected 48")))
    };
    Ok(TdxOptions {
        id,
        quote_generation_socket: socket,
        mrconfigid: report_value("mrconfigid")?,
        mrowner: report_value("mrowner")?,
        mrownerconfig: report_value("mrownerconfig")?,
    })
}
