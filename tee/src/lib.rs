//! Confidential-VM support for cvmm: host TEE detection, the SEV-SNP and TDX launch sequences
//! through KVM ioctls, the IGVM loader and the launch measurement (SNP digest, TDX MRTD).
//!
//! Everything that can be computed without TEE hardware is computed here and tested offline.
