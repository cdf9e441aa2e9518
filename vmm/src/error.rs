//! Errors of the vmm crate. Each one names the input it is about.

use std::path::PathBuf;

/// Why building or running a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// Bad user input (a flag's value, a file's contents): exit status 2.
    #[error("{0}")]
    Input(String),
    /// A file could not be read.
    #[error("cannot read {what} '{}': {source}", path.display())]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// `/dev/kvm` missing, not accessible, or lacking a capability.
    #[error("KVM: {0}")]
    Kvm(String),
    /// A KVM call failed while building or running the VM.
    #[error("KVM call {call} failed: {source}")]
    KvmCall {
        call: &'static str,
        source: kvm_ioctls::Error,
    },
    /// A host resource (memory, thread, eventfd) could not be had.
    #[error("{what}: {source}")]
    Host {
        what: &'static str,
        source: std::io::Error,
    },
    /// Guest memory access during setup failed.
    #[error("guest memory: {0}")]
    Memory(String),
}

impl VmmError {
    /// Whether the error comes from the user's input (exit status 2) rather than the host.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            VmmError::Input(_) | VmmError::ReadFile { .. } | VmmError::Kvm(_)
        )
    }
}

/// Helper to map a KVM ioctl error.
pub(crate) fn kvm_call(call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::KvmCall { call, source }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, VmmError>;
