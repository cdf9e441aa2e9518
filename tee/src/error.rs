//! The crate's error type. Every variant names the input that was wrong and the value seen, so a
//! caller (the `cvmm measure` CLI, the launch path, the manager's API) can report it unchanged.

use thiserror::Error;

/// Errors of the TEE crate: malformed firmware or IGVM input, unsupported inputs, and failures of
/// the launch ioctls.
#[derive(Debug, Error)]
pub enum TeeError {
    /// The firmware image (OVMF) is malformed or lacks something the request needs.
    #[error("OVMF image {input}: {reason}")]
    Ovmf { input: String, reason: String },

    /// The IGVM file could not be parsed or breaks a rule cvmm enforces (spec §7.2).
    #[error("IGVM file {input}: {reason}")]
    Igvm { input: String, reason: String },

    /// A measurement input (vCPU count, type, features, kernel/initrd/cmdline) is invalid.
    #[error("measurement input {input}: {reason}")]
    Input { input: String, reason: String },

    /// Reading an input file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// The host lacks a prerequisite for the requested TEE (names the first one missing).
    #[error("host does not support {platform}: {missing}")]
    HostUnsupported {
        platform: &'static str,
        missing: String,
    },

    /// A KVM or /dev/sev call failed.
    #[error("{call} failed: {detail}: {errno}")]
    Ioctl {
        call: &'static str,
        detail: String,
        errno: std::io::Error,
    },

    /// SNP_LAUNCH_UPDATE failed on a range, with the PSP status the kernel reported.
    #[error(
        "SNP_LAUNCH_UPDATE of gpa {gpa:#x}..{end:#x} (type {page_type:?}) failed: \
         PSP status {psp_error:#x}: {errno}"
    )]
    LaunchUpdate {
        gpa: u64,
        end: u64,
        page_type: crate::measure::PageType,
        psp_error: u32,
        errno: std::io::Error,
    },
}

impl TeeError {
    pub(crate) fn ovmf(input: &str, reason: impl Into<String>) -> Self {
        TeeError::Ovmf {
            input: input.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn igvm(input: &str, reason: impl Into<String>) -> Self {
        TeeError::Igvm {
            input: input.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn input(input: &str, reason: impl Into<String>) -> Self {
        TeeError::Input {
            input: input.to_string(),
            reason: reason.into(),
        }
    }
}
