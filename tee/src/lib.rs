//! Confidential-VM support for cvmm: host TEE detection, the SEV-SNP and TDX launch sequences
//! through KVM ioctls, the IGVM loader and the launch measurement (SNP digest, TDX MRTD).
//!
//! Everything that can be computed without TEE hardware is computed here and tested offline.
//! The SNP path is built around one [`plan::LaunchPlan`]: `cvmm measure` hashes it
//! ([`measure::snp_digest`]) and [`snp::SnpLauncher`] issues it through [`snp::TeeOps`].
//! The TDX path mirrors it: [`tdx_plan::TdxPlan`] (TDVF or IGVM) is hashed by [`tdx_mrtd`]
//! and issued by [`tdx::TdxLauncher`]; [`tdx_exit`] and [`quote`] serve the TD at run time.

pub mod detect;
pub mod error;
pub mod fake;
pub mod fake_tdx;
pub mod igvm;
pub mod igvm_params;
pub mod measure;
pub mod mrtd;
pub mod ovmf;
pub mod plan;
pub mod quote;
pub mod runtime;
pub mod snp;
pub mod snp_cpuid;
pub mod tdhob;
pub mod tdvf;
pub mod tdx;
pub mod tdx_exit;
pub mod tdx_plan;
pub mod uapi;
pub mod vmsa;

pub use error::TeeError;
pub use measure::{snp_digest, Firmware, MeasureInputs};
pub use mrtd::tdx_mrtd;

#[cfg(test)]
mod tdx_testutil;
#[cfg(any(test, feature = "test-support"))]
pub mod testutil;
