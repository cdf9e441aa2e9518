//! Host TEE detection (spec §3, §5 step 0, §1 requirement 5): plain KVM, SEV-SNP or TDX, from
//! `/proc/cpuinfo` flags, the kvm_amd / kvm_intel module parameters, `/dev/sev` and the KVM
//! capabilities. Paths are parameters so tests run on temp files; KVM goes through [`TeeOps`].

use std::path::{Path, PathBuf};

use crate::snp::TeeOps;
use crate::uapi::{KVM_CAP_VM_TYPES, KVM_X86_SNP_VM, KVM_X86_TDX_VM};
use crate::TeeError;

/// What the host can launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Plain,
    Snp,
    Tdx,
}

/// Where detection looks.
#[derive(Debug, Clone)]
pub struct HostPaths {
    pub cpuinfo: PathBuf,
    pub kvm_amd_sev_snp: PathBuf,
    pub kvm_intel_tdx: PathBuf,
    pub dev_sev: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            cpuinfo: "/proc/cpuinfo".into(),
            kvm_amd_sev_snp: "/sys/module/kvm_amd/parameters/sev_snp".into(),
            kvm_intel_tdx: "/sys/module/kvm_intel/parameters/tdx".into(),
            dev_sev: "/dev/sev".into(),
        }
    }
}

/// Reads the first CPU's `flags` line.
fn cpu_flags(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default())
}

/// Checks a module parameter reads Y or 1.
fn param_enabled(path: &Path) -> Result<(), String> {
    let v = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    match v.trim() {
        "Y" | "y" | "1" => Ok(()),
        other => Err(format!("{} = {other:?}, not Y", path.display())),
    }
}

/// The first missing SNP prerequisite, or `None` when the host has them all.
pub fn snp_missing(paths: &HostPaths, kvm: &mut dyn TeeOps) -> Option<String> {
    let flags = match cpu_flags(&paths.cpuinfo) {
        Ok(f) => f,
        Err(e) => return Some(e),
    };
    if !flags.iter().any(|f| f == "sev_snp") {
        return Some(format!("{} has no sev_snp flag", paths.cpuinfo.display()));
    }
    if let Err(e) = param_enabled(&paths.kvm_amd_sev_snp) {
        return Some(e);
    }
    if let Err(e) = std::fs::metadata(&paths.dev_sev) {
        return Some(format!("{}: {e}", paths.dev_sev.display()));
    }
    vm_type_missing(kvm, KVM_X86_SNP_VM, "KVM_X86_SNP_VM")
}

/// The first missing TDX prerequisite, or `None`.
pub fn tdx_missing(paths: &HostPaths, kvm: &mut dyn TeeOps) -> Option<String> {
    let flags = match cpu_flags(&paths.cpuinfo) {
        Ok(f) => f,
        Err(e) => return Some(e),
    };
    if !flags.iter().any(|f| f == "tdx_host_platform") {
        return Some(format!(
            "{} has no tdx_host_platform flag",
            paths.cpuinfo.display()
        ));
    }
    if let Err(e) = param_enabled(&paths.kvm_intel_tdx) {
        return Some(e);
    }
    vm_type_missing(kvm, KVM_X86_TDX_VM, "KVM_X86_TDX_VM")
}

fn vm_type_missing(kvm: &mut dyn TeeOps, vm_type: u64, name: &str) -> Option<String> {
    let types = match kvm.check_extension(KVM_CAP_VM_TYPES) {
        Ok(t) => t,
        Err(e) => return Some(format!("KVM_CHECK_EXTENSION(KVM_CAP_VM_TYPES): {e}")),
    };
    (types & (1 << vm_type) == 0)
        .then(|| format!("KVM_CAP_VM_TYPES = {types:#x} lacks {name} (bit {vm_type})"))
}

/// The strongest platform the host supports (SNP, then TDX, else plain).
pub fn detect(paths: &HostPaths, kvm: &mut dyn TeeOps) -> Platform {
    let platform = if snp_missing(paths, kvm).is_none() {
        Platform::Snp
    } else if tdx_missing(paths, kvm).is_none() {
        Platform::Tdx
    } else {
        Platform::Plain
    };
    tracing::info!(?platform, "host TEE detection");
    platform
}

/// Fails, naming the first missing prerequisite, unless the host supports `wanted`.
pub fn require(paths: &HostPaths, kvm: &mut dyn TeeOps, wanted: Platform) -> Result<(), TeeError> {
    let (platform, missing) = match wanted {
        Platform::Plain => return Ok(()),
        Platform::Snp => ("SEV-SNP", snp_missing(paths, kvm)),
        Platform::Tdx => ("TDX", tdx_missing(paths, kvm)),
    };
    match missing {
        None => Ok(()),
        Some(missing) => Err(TeeError::HostUnsupported { platform, missing }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::RecordingOps;

    struct Host {
        _dir: tempfile::TempDir,
        paths: HostPaths,
    }

    fn host(flags: &str, snp_param: Option<&str>, tdx_param: Option<&str>, dev_sev: bool) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(
            p("cpuinfo"),
            format!("processor\t: 0\nflags\t\t: fpu {flags} sse\n\nprocessor\t: 1\n"),
        )
        .unwrap();
        if let Some(v) = snp_param {
            std::fs::write(p("sev_snp"), v).unwrap();
        }
        if let Some(v) = tdx_param {
            std::fs::write(p("tdx"), v).unwrap();
        }
        if dev_sev {
            std::fs::write(p("sev"), "").unwrap();
        }
        let paths = HostPaths {
            cpuinfo: p("cpuinfo"),
            kvm_amd_sev_snp: p("sev_snp"),
            kvm_intel_tdx: p("tdx"),
            dev_sev: p("sev"),
        };
        Host { _dir: dir, paths }
    }

    fn kvm(vm_types: u64) -> RecordingOps {
        let mut ops = RecordingOps::default();
        ops.caps.insert(KVM_CAP_VM_TYPES, vm_types);
        ops
    }

    #[test]
    fn snp_host_is_detected() {
        let h = host("sev sev_es sev_snp", Some("Y\n"), None, true);
        assert_eq!(detect(&h.paths, &mut kvm(0x13)), Platform::Snp);
        require(&h.paths, &mut kvm(0x13), Platform::Snp).unwrap();
    }

    #[test]
    fn tdx_host_is_detected() {
        let h = host("tdx_host_platform", None, Some("Y"), false);
        assert_eq!(detect(&h.paths, &mut kvm(0x21)), Platform::Tdx);
        let e = require(&h.paths, &mut kvm(0x21), Platform::Snp)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SEV-SNP") && e.contains("no sev_snp flag"),
            "{e}"
        );
    }

    #[test]
    fn each_missing_snp_prerequisite_is_named() {
        let h = host("sev", Some("Y"), None, true);
        assert_eq!(detect(&h.paths, &mut kvm(0x13)), Platform::Plain);

        let h = host("sev_snp", Some("N"), None, true);
        let e = require(&h.paths, &mut kvm(0x13), Platform::Snp)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sev_snp = \"N\", not Y"), "{e}");

        let h = host("sev_snp", None, None, true);
        let e = require(&h.paths, &mut kvm(0x13), Platform::Snp)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sev_snp: No such file or directory"), "{e}");

        let h = host("sev_snp", Some("1"), None, false);
        let e = require(&h.paths, &mut kvm(0x13), Platform::Snp)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/sev: No such file or directory"), "{e}");

        let h = host("sev_snp", Some("Y"), None, true);
        let e = require(&h.paths, &mut kvm(0x1), Platform::Snp)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("KVM_CAP_VM_TYPES = 0x1 lacks KVM_X86_SNP_VM (bit 4)"),
            "{e}"
        );
    }

    #[test]
    fn missing_cpuinfo_is_named() {
        let mut h = host("", None, None, false);
        h.paths.cpuinfo = h.paths.cpuinfo.with_file_name("nope");
        let e = require(&h.paths, &mut kvm(0), Platform::Tdx)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope: No such file or directory"), "{e}");
        assert_eq!(detect(&h.paths, &mut kvm(0)), Platform::Plain);
    }

    /// The real host paths: this build host has no SNP/TDX, so detection must say plain and
    /// asking for SNP names a missing prerequisite (checked without /dev/kvm: VM types 0x1).
    #[test]
    fn build_host_is_plain() {
        let paths = HostPaths::default();
        if std::fs::read_to_string(&paths.cpuinfo)
            .is_ok_and(|c| c.contains("sev_snp") || c.contains("tdx_host_platform"))
        {
            println!("SKIPPED build_host_is_plain: this host advertises SNP or TDX");
            return;
        }
        assert_eq!(detect(&paths, &mut kvm(0x1)), Platform::Plain);
        assert!(require(&paths, &mut kvm(0x1), Platform::Snp).is_err());
        require(&paths, &mut kvm(0x1), Platform::Plain).unwrap();
    }
}
