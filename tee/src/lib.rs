//! Confidential-VM support for cvmm: host TEE detection, the SEV-SNP and TDX launch sequences
//! through KVM ioctls, the IGVM loader and the launch measurement (SNP digest, TDX MRTD).
//!
//! Everything that can be computed without TEE hardware is computed here and tested offline.
//! The SNP path is built around one [`plan::LaunchPlan`]: `cvmm measure` hashes it
//! ([`measure::snp_digest`]) and [`snp::SnpLauncher`] issues it through [`snp::TeeOps`].

pub mod detect;
pub mod error;
pub mod fake;
pub mod igvm;
pub mod measure;
pub mod ovmf;
pub mod plan;
pub mod snp;
pub mod uapi;
pub mod vmsa;

pub use error::TeeError;
pub use measure::{snp_digest, Firmware, MeasureInputs};

#[cfg(test)]
mod testutil;
