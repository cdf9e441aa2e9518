//! `VmSpec`: everything needed to build and boot one VM, from `cvmm run` flags or from the
//! manager (which writes it as JSON for `cvmm vm --spec FILE`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SerialSpec {
    /// The VMM's stdin/stdout.
    #[default]
    Stdio,
    /// Discarded.
    None,
    /// Appended to a file.
    File(PathBuf),
}

/// A host TCP port forwarded to a guest TCP port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardSpec {
    /// Host address to listen on (`None`: all addresses), when the VMM binds the port itself.
    pub host_addr: Option<std::net::IpAddr>,
    /// Host port to listen on; ignored when `listen_fd` is set.
    pub host_port: u16,
    /// An already-bound listening socket inherited from the parent process.
    pub listen_fd: Option<i32>,
    /// Guest TCP port the connections go to.
    pub guest_port: u16,
}

/// What a 9p share serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareSource {
    /// A host directory, served read-only.
    Directory(PathBuf),
    /// Files held in memory (name -> contents), so no temporary directory is needed.
    Memory(Vec<(String, Vec<u8>)>),
}

/// A read-only virtio-9p share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareSpec {
    /// Mount tag the guest uses (`env_share`, `certs_share`).
    pub tag: String,
    /// What is served.
    pub source: ShareSource,
}

/// Which launch path a VM takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TeeMode {
    /// Chosen from the host's capabilities.
    Auto,
    /// A plain KVM guest.
    #[default]
    None,
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
}

/// One VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// Name used in logs (the manager's cvm_id).
    #[serde(default)]
    pub name: String,
    /// Kernel image: bzImage, or an ELF vmlinux with a PVH note.
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// Number of vCPUs (>= 1).
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// CPU model with feature edits, QEMU style: `host`, `EPYC-v4,+avx2,-svm`.
    #[serde(default = "default_cpu")]
    pub cpu: String,
    /// Serial console destination.
    #[serde(default)]
    pub serial: SerialSpec,
    /// Where to write the boot timeline as JSON.
    #[serde(default)]
    pub timeline: Option<PathBuf>,
    /// Port forwards (host -> guest).
    #[serde(default)]
    pub forwards: Vec<ForwardSpec>,
    /// Read-only 9p shares.
    #[serde(default)]
    pub shares: Vec<ShareSpec>,
    /// Firmware image (unified OVMF), mapped below 4 GiB.
    #[serde(default)]
    pub firmware: Option<PathBuf>,
    /// IGVM file (e.g. COCONUT-SVSM + OVMF).
    #[serde(default)]
    pub igvm: Option<PathBuf>,
    /// Launch path.
    #[serde(default)]
    pub tee: TeeMode,
}

fn default_cpu() -> String {
    "host".to_string()
}

impl Default for VmSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            vcpus: 1,
            memory_mib: 512,
            cpu: default_cpu(),
            serial: SerialSpec::Stdio,
            timeline: None,
            forwards: Vec::new(),
            shares: Vec::new(),
            firmware: None,
            igvm: None,
            tee: TeeMode::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_every_field() {
        let spec = VmSpec {
            name: "vm1".into(),
            kernel: Some("/k".into()),
            cmdline: "quiet".into(),
            vcpus: 2,
            forwards: vec![ForwardSpec {
                host_addr: None,
                host_port: 0,
                listen_fd: Some(5),
                guest_port: 7002,
            }],
            shares: vec![ShareSpec {
                tag: "env_share".into(),
                source: ShareSource::Memory(vec![("environment".into(), b"A=1\n".to_vec())]),
            }],
            ..Default::default()
        };
        let text = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<VmSpec>(&text).unwrap(), spec);
    }

    #[test]
    fn minimal_json_gets_defaults() {
        let spec: VmSpec =
            serde_json::from_str(r#"{"kernel":"/k","vcpus":1,"memory_mib":64}"#).unwrap();
        assert_eq!(spec.cpu, "host");
        assert_eq!(spec.serial, SerialSpec::Stdio);
        assert!(spec.forwards.is_empty());
    }
}
