//! `ManagerConfig`: the manager's settings from the same environment variables as the Go
//! cocos-manager (spec §2.4 and §5.3), with their defaults. Bad values stop start-up with an
//! error naming the variable; QEMU-only variables are collected so `serve` can log them once.

use crate::duration::parse_go_duration;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A configuration variable with a value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration {var}={value:?}: {reason}")]
pub struct ConfigError {
    /// The variable name.
    pub var: String,
    /// Its value.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Which confidential-computing launch path VMs take (`MANAGER_VMM_TEE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeeChoice {
    /// Detected from the host once at start-up (spec §5.1).
    Auto,
    /// Plain KVM guests.
    None,
    /// AMD SEV-SNP with an IGVM file.
    Snp,
    /// Intel TDX with a TDVF firmware.
    Tdx,
}

/// How plain (non-TEE) VMs boot (`MANAGER_VMM_PLAIN_BOOT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainBoot {
    /// The kernel directly (default: no firmware to wait for).
    Direct,
    /// Through UEFI: `OVMF_CODE_FILE` as read-only flash, a per-VM copy of `OVMF_VARS_FILE`
    /// as the variable store, the kernel handed over by fw_cfg (what the Go manager's QEMU
    /// line does).
    Uefi,
}

/// Server TLS material; client certificates are required when `client_ca` is non-empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// `MANAGER_GRPC_SERVER_CERT`.
    pub cert: PathBuf,
    /// `MANAGER_GRPC_SERVER_KEY`.
    pub key: PathBuf,
    /// `MANAGER_GRPC_SERVER_CA_CERTS` and/or `MANAGER_GRPC_CLIENT_CA_CERTS` (mTLS).
    pub client_ca: Vec<PathBuf>,
}

/// Settings that shape each VM (the kept `MANAGER_QEMU_*` variables).
#[derive(Debug, Clone, PartialEq)]
pub struct VmDefaults {
    /// `CPU`: CPU model, also `CVMInfo.cpu_type`.
    pub cpu: String,
    /// `SMP_COUNT`: vCPUs, also `CVMInfo.cpu_num`.
    pub smp_count: u32,
    /// `MEMORY_SIZE` in MiB.
    pub memory_mib: u64,
    /// `OVMF_VERSION` (CVMInfo only).
    pub ovmf_version: String,
    /// `GUEST_FWD_AGENT`: guest TCP port the host port forwards to.
    pub guest_fwd_port: u16,
    /// `DISK_IMG_KERNEL_FILE`.
    pub kernel: PathBuf,
    /// `DISK_IMG_ROOTFS_FILE`.
    pub initrd: PathBuf,
    /// `KERNEL_CMDLINE`.
    pub kernel_cmdline: String,
    /// `OVMF_FILE`: TDX firmware.
    pub ovmf_file: PathBuf,
    /// `OVMF_CODE_FILE`: firmware code for plain VMs booted through UEFI.
    pub ovmf_code_file: PathBuf,
    /// `OVMF_VARS_FILE`: the variable-store template each UEFI-booted plain VM gets a copy of.
    pub ovmf_vars_file: PathBuf,
    /// `IGVM_FILE`: SNP launch image.
    pub igvm_file: PathBuf,
    /// `SEV_SNP_CBIT_POS` (or the documented spelling `SEV_SNP_CBITPOS`).
    pub sev_snp_cbit_pos: u32,
    /// `SEV_SNP_REDUCED_PHYS_BITS`.
    pub sev_snp_reduced_phys_bits: u32,
    /// `ENABLE_HOST_DATA`: SNP VMs launch with [`SNP_HOST_DATA`] and AttestationPolicy
    /// includes it (spec §4.1 step 7, §4.4). `HOST_DATA` itself is overwritten per VM upstream,
    /// so it is ignored.
    pub enable_host_data: bool,
    /// `QUOTE_GENERATION_PORT`: host QGS vsock port for TDX quotes.
    pub quote_generation_port: u32,
    /// `HOST_FWD_RANGE`, inclusive.
    pub host_fwd_range: (u16, u16),
}

/// The host data of every SEV-SNP VM when `ENABLE_HOST_DATA` is set: SHA3-256 of the ASCII
/// text `TODO`, which the Go manager puts there (base64 on QEMU's command line) in place of a
/// computation hash (spec §4.1 step 7).
pub const SNP_HOST_DATA: [u8; 32] = [
    0xb4, 0x32, 0xd9, 0x45, 0xa0, 0x40, 0x87, 0x27, 0x3f, 0x48, 0xcc, 0x9e, 0x69, 0x32, 0x99, 0xa3,
    0xfd, 0x62, 0xb8, 0x67, 0x5d, 0x5e, 0x20, 0x3b, 0xee, 0xe1, 0xa0, 0x3c, 0x7d, 0xea, 0xf8, 0xc8,
];

impl VmDefaults {
    /// The SNP host data VMs launch with: [`SNP_HOST_DATA`] when `ENABLE_HOST_DATA` is set.
    pub fn snp_host_data(&self) -> Option<[u8; 32]> {
        self.enable_host_data.then_some(SNP_HOST_DATA)
    }
}

/// Everything `cvmm manager` is configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct ManagerConfig {
    /// `MANAGER_LOG_LEVEL`.
    pub log_level: String,
    /// `MANAGER_INSTANCE_ID` (random uuid when unset).
    pub instance_id: String,
    /// `MANAGER_GRPC_HOST` (default `0.0.0.0`).
    pub grpc_host: String,
    /// `MANAGER_GRPC_PORT` (default 7001).
    pub grpc_port: u16,
    /// gRPC TLS, when `MANAGER_GRPC_SERVER_CERT`/`_KEY` are set.
    pub grpc_tls: Option<TlsConfig>,
    /// `MANAGER_HTTP_HOST` (default `0.0.0.0`).
    pub http_host: String,
    /// `MANAGER_HTTP_PORT` (default 7003).
    pub http_port: u16,
    /// `MANAGER_ATTESTATION_POLICY_BINARY_PATH`: directory holding `igvmmeasure`.
    pub attestation_policy_binary_path: PathBuf,
    /// `MANAGER_EOS_VERSION`.
    pub eos_version: String,
    /// `MANAGER_MAX_VMS`; 0 means unlimited.
    pub max_vms: usize,
    /// `MANAGER_CORIM_SIGNING_KEY`.
    pub corim_signing_key: Option<PathBuf>,
    /// `COCOS_JAEGER_URL`.
    pub jaeger_url: String,
    /// `COCOS_JAEGER_TRACE_RATIO` in [0, 1].
    pub jaeger_trace_ratio: f64,
    /// The kept `MANAGER_QEMU_*` settings.
    pub vm: VmDefaults,
    /// `MANAGER_VMM_TEE`: auto|none|snp|tdx.
    pub tee: TeeChoice,
    /// `MANAGER_VMM_EXE`: the program run as `<exe> vm --spec FILE` (default `/proc/self/exe`).
    pub vmm_exe: PathBuf,
    /// `MANAGER_STATE_DIR`: per-VM records, specs and console logs (default `/run/cvmm`).
    pub state_dir: PathBuf,
    /// `MANAGER_VMM_HOST_FWD_ADDR`: address the forwarded ports are bound on (default all).
    pub host_fwd_addr: IpAddr,
    /// `MANAGER_VMM_PLAIN_BOOT`: direct (default) or uefi.
    pub plain_boot: PlainBoot,
    /// `MANAGER_VMM_STOP_TIMEOUT`: SIGTERM to SIGKILL delay on RemoveVm (default 30s).
    pub stop_timeout: Duration,
    /// `MANAGER_VMM_SECCOMP`: the filter of the manager's own threads, kill (default), log or
    /// off. Each VM process installs its own filters regardless.
    pub seccomp: seccomp::Mode,
    /// Variables that were set but have no meaning here (logged once by `serve`).
    pub ignored_vars: Vec<String>,
}

/// `MANAGER_QEMU_*` names (after the prefix) that only make sense for QEMU.
const QEMU_IGNORED: &[&str] = &[
    "BIN_PATH",
    "USE_SUDO",
    "ENABLE_KVM",
    "MACHINE",
    "SMP_MAXCPUS",
    "MEM_ID",
    "MEMORY_SLOTS",
    "MAX_MEMORY",
    "OVMF_CODE_IF",
    "OVMF_CODE_FORMAT",
    "OVMF_CODE_UNIT",
    "OVMF_CODE_READONLY",
    "OVMF_VARS_IF",
    "OVMF_VARS_FORMAT",
    "OVMF_VARS_UNIT",
    "NETDEV_ID",
    "HOST_FWD_AGENT",
    "VIRTIO_NET_PCI_DISABLE_LEGACY",
    "VIRTIO_NET_PCI_IOMMU_PLATFORM",
    "VIRTIO_NET_PCI_ADDR",
    "VIRTIO_NET_PCI_ROMFILE",
    "SRC_DISK_FILE",
    "DST_DISK_FILE",
    "DISK_ID",
    "DISK_FORMAT",
    "DISK_SCSI_ID",
    "SEV_SNP_ID",
    // Overwritten per VM upstream; the host data comes from `ENABLE_HOST_DATA`.
    "HOST_DATA",
    "TDX_ID",
    "IGVM_ID",
    "GPU_PCIE_ROOT_PORT",
    "GPU_PCIE_BUS",
    "GPU_FW_CFG_MMIO_MB",
    "NO_GRAPHIC",
    "MONITOR",
    "CERTS_MOUNT",
    "ENV_MOUNT",
    "ENABLE_SEV_SNP",
    "ENABLE_TDX",
    "KERNEL_HASH",
];

/// `MANAGER_QEMU_*` names (after the prefix) that cvmm reads.
const QEMU_KEPT: &[&str] = &[
    "CPU",
    "SMP_COUNT",
    "MEMORY_SIZE",
    "OVMF_VERSION",
    "GUEST_FWD_AGENT",
    "DISK_IMG_KERNEL_FILE",
    "DISK_IMG_ROOTFS_FILE",
    "KERNEL_CMDLINE",
    "ENABLE_DISK",
    "OVMF_FILE",
    "OVMF_CODE_FILE",
    "OVMF_VARS_FILE",
    "IGVM_FILE",
    "SEV_SNP_CBIT_POS",
    "SEV_SNP_CBITPOS",
    "SEV_SNP_REDUCED_PHYS_BITS",
    "ENABLE_HOST_DATA",
    "QUOTE_GENERATION_PORT",
    "GPU_BDF",
    "HOST_FWD_RANGE",
];

/// Other variables from the shipped env file that the Go server never read.
const OTHER_IGNORED: &[&str] = &[
    "MANAGER_ATTESTATION_POLICY_BINARY",
    "MANAGER_IGVMMEASURE_BINARY",
    "MANAGER_GRPC_TIMEOUT",
    "MANAGER_GRPC_URL",
    "MANAGER_PCR_VALUES",
];

/// The variables, and the names looked up (for [`ManagerConfig::variables_read`]).
struct Vars(HashMap<String, String>, RefCell<BTreeSet<String>>);

impl Vars {
    /// The value if set and non-empty (the Go env library treats empty as unset).
    fn get(&self, var: &str) -> Option<&str> {
        self.1.borrow_mut().insert(var.to_string());
        self.0
            .get(var)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn string(&self, var: &str, default: &str) -> String {
        self.get(var).unwrap_or(default).to_string()
    }

    fn parse<T: std::str::FromStr>(
        &self,
        var: &str,
        default: T,
        what: &str,
    ) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|_| invalid(var, v, what)),
        }
    }

    fn bool(&self, var: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(v) => Err(invalid(var, v, "expected true or false")),
        }
    }
}

fn invalid(var: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError {
        var: var.into(),
        value: value.into(),
        reason: reason.into(),
    }
}

/// Parses QEMU's size syntax (`2048M`, `2G`, `1.5G`, bare number = MiB) into whole MiB.
pub fn parse_memory_mib(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last()? {
        (i, 'K' | 'k') => (&t[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&t[..i], 1 << 20),
        (i, 'G' | 'g') => (&t[..i], 1 << 30),
        (i, 'T' | 't') => (&t[..i], 1 << 40),
        _ => (t, 1 << 20),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut bytes = int.parse::<u64>().ok()?.checked_mul(mult)?;
    if !frac.is_empty() {
        let den = 10u64.checked_pow(u32::try_from(frac.len()).ok()?)?;
        let part = frac.parse::<u64>().ok()?.checked_mul(mult)?;
        if part % den != 0 {
            return None;
        }
        bytes = bytes.checked_add(part / den)?;
    }
    (bytes % (1 << 20) == 0 && bytes > 0).then_some(bytes >> 20)
}

fn parse_range(var: &str, text: &str) -> Result<(u16, u16), ConfigError> {
    let (a, b) = text
        .trim()
        .split_once('-')
        .ok_or_else(|| invalid(var, text, "invalid input format, expected START-END"))?;
    let port = |s: &str| s.trim().parse::<u16>().ok().filter(|p| *p != 0);
    match (port(a), port(b)) {
        (Some(a), Some(b)) if a <= b => Ok((a, b)),
        (Some(_), Some(_)) => Err(invalid(var, text, "invalid range: start is after end")),
        _ => Err(invalid(
            var,
            text,
            "invalid input format, ports must be 1-65535",
        )),
    }
}

impl ManagerConfig {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads the configuration from `(name, value)` pairs (tests use this).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self::read(&Vars(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            RefCell::default(),
        ))
    }

    /// Every variable name the configuration looks up (with none set, every lookup happens),
    /// sorted; `deploy/manager.env.example` is checked against it.
    pub fn variables_read() -> Vec<String> {
        let v = Vars(HashMap::new(), RefCell::default());
        // The defaults are valid, so this cannot fail; the names are recorded either way.
        let _ = Self::read(&v);
        v.1.into_inner().into_iter().collect()
    }

    fn read(v: &Vars) -> Result<Self, ConfigError> {
        let q = |name: &str| format!("MANAGER_QEMU_{name}");

        let mem_var = q("MEMORY_SIZE");
        let memory_mib = match v.get(&mem_var) {
            None => 2048,
            Some(s) => parse_memory_mib(s).ok_or_else(|| {
                invalid(
                    &mem_var,
                    s,
                    "expected a size such as 2048M or 4G (whole MiB)",
                )
            })?,
        };
        let smp_count: u32 = v.parse(&q("SMP_COUNT"), 4, "expected a vCPU count")?;
        if !(1..=255).contains(&smp_count) {
            return Err(invalid(
                &q("SMP_COUNT"),
                &smp_count.to_string(),
                "vCPU count must be 1-255",
            ));
        }
        let range_var = q("HOST_FWD_RANGE");
        let host_fwd_range = parse_range(&range_var, v.get(&range_var).unwrap_or("6100-6200"))?;
        let cbit_var =
            if v.get(&q("SEV_SNP_CBIT_POS")).is_none() && v.get(&q("SEV_SNP_CBITPOS")).is_some() {
                q("SEV_SNP_CBITPOS")
            } else {
                q("SEV_SNP_CBIT_POS")
            };
        if v.bool(&q("ENABLE_DISK"), false)? {
            return Err(invalid(
                &q("ENABLE_DISK"),
                "true",
                "disk (FDE image) boot is not supported yet",
            ));
        }
        if let Some(bdf) = v.get(&q("GPU_BDF")) {
            return Err(invalid(
                &q("GPU_BDF"),
                bdf,
                "GPU passthrough is not supported yet",
            ));
        }
        let vm = VmDefaults {
            cpu: v.string(&q("CPU"), "EPYC"),
            smp_count,
            memory_mib,
            ovmf_version: v.string(&q("OVMF_VERSION"), ""),
            guest_fwd_port: v.parse(&q("GUEST_FWD_AGENT"), 7002, "expected a TCP port")?,
            kernel: v.string(&q("DISK_IMG_KERNEL_FILE"), "img/bzImage").into(),
            initrd: v
                .string(&q("DISK_IMG_ROOTFS_FILE"), "img/rootfs.cpio.gz")
                .into(),
            kernel_cmdline: v.string(&q("KERNEL_CMDLINE"), "quiet console=null"),
            ovmf_file: v.string(&q("OVMF_FILE"), "/usr/share/ovmf/OVMF.fd").into(),
            ovmf_code_file: v
                .string(&q("OVMF_CODE_FILE"), "/usr/share/OVMF/OVMF_CODE.fd")
                .into(),
            ovmf_vars_file: v
                .string(&q("OVMF_VARS_FILE"), "/usr/share/OVMF/OVMF_VARS.fd")
                .into(),
            igvm_file: v.string(&q("IGVM_FILE"), "/root/coconut-qemu.igvm").into(),
            sev_snp_cbit_pos: v.parse(&cbit_var, 51, "expected a bit position")?,
            sev_snp_reduced_phys_bits: v.parse(
                &q("SEV_SNP_REDUCED_PHYS_BITS"),
                1,
                "expected a bit count",
            )?,
            enable_host_data: v.bool(&q("ENABLE_HOST_DATA"), false)?,
            quote_generation_port: v.parse(
                &q("QUOTE_GENERATION_PORT"),
                4050,
                "expected a vsock port",
            )?,
            host_fwd_range,
        };

        let grpc_tls = tls_config(v)?;
        for var in ["MANAGER_HTTP_SERVER_CERT", "MANAGER_HTTP_SERVER_KEY"] {
            if let Some(val) = v.get(var) {
                return Err(invalid(
                    var,
                    val,
                    "TLS on the HTTP side server is not supported",
                ));
            }
        }
        let max_vms: i64 = v.parse("MANAGER_MAX_VMS", 10, "expected an integer")?;
        let ratio: f64 = v.parse("COCOS_JAEGER_TRACE_RATIO", 1.0, "expected a number")?;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(invalid(
                "COCOS_JAEGER_TRACE_RATIO",
                &ratio.to_string(),
                "must be between 0 and 1",
            ));
        }
        let tee = match v.get("MANAGER_VMM_TEE").unwrap_or("auto") {
            "auto" => TeeChoice::Auto,
            "none" => TeeChoice::None,
            "snp" => TeeChoice::Snp,
            "tdx" => TeeChoice::Tdx,
            other => {
                return Err(invalid(
                    "MANAGER_VMM_TEE",
                    other,
                    "expected auto, none, snp or tdx",
                ))
            }
        };
        let plain_boot = match v.get("MANAGER_VMM_PLAIN_BOOT").unwrap_or("direct") {
            "direct" => PlainBoot::Direct,
            "uefi" => PlainBoot::Uefi,
            other => {
                return Err(invalid(
                    "MANAGER_VMM_PLAIN_BOOT",
                    other,
                    "expected direct or uefi",
                ))
            }
        };
        let stop_timeout = match v.get("MANAGER_VMM_STOP_TIMEOUT") {
            None => Duration::from_secs(30),
            Some(s) => {
                parse_go_duration(s).map_err(|e| invalid("MANAGER_VMM_STOP_TIMEOUT", s, &e))?
            }
        };
        let seccomp = match v.get("MANAGER_VMM_SECCOMP") {
            None => seccomp::Mode::Kill,
            Some(s) => s
                .parse()
                .map_err(|_| invalid("MANAGER_VMM_SECCOMP", s, "expected kill, log or off"))?,
        };

        let mut ignored_vars: Vec<String> =
            v.0.iter()
                .filter(|(k, val)| !val.is_empty() && is_ignored(k))
                .map(|(k, _)| k.clone())
                .collect();
        ignored_vars.sort();

        Ok(Self {
            log_level: v.string("MANAGER_LOG_LEVEL", "info"),
            instance_id: v
                .get("MANAGER_INSTANCE_ID")
                .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string),
            grpc_host: v.string("MANAGER_GRPC_HOST", "0.0.0.0"),
            grpc_port: v.parse("MANAGER_GRPC_PORT", 7001, "expected a TCP port")?,
            grpc_tls,
            http_host: v.string("MANAGER_HTTP_HOST", "0.0.0.0"),
            http_port: v.parse("MANAGER_HTTP_PORT", 7003, "expected a TCP port")?,
            attestation_policy_binary_path: v
                .string("MANAGER_ATTESTATION_POLICY_BINARY_PATH", "../../build")
                .into(),
            eos_version: v.string("MANAGER_EOS_VERSION", ""),
            max_vms: usize::try_from(max_vms.max(0)).unwrap_or(usize::MAX),
            corim_signing_key: v.get("MANAGER_CORIM_SIGNING_KEY").map(PathBuf::from),
            jaeger_url: v.string("COCOS_JAEGER_URL", "http://localhost:4318"),
            jaeger_trace_ratio: ratio,
            vm,
            tee,
            vmm_exe: v.string("MANAGER_VMM_EXE", "/proc/self/exe").into(),
            state_dir: v.string("MANAGER_STATE_DIR", "/run/cvmm").into(),
            host_fwd_addr: v.parse(
                "MANAGER_VMM_HOST_FWD_ADDR",
                IpAddr::from([0, 0, 0, 0]),
                "expected an IP address",
            )?,
            plain_boot,
            stop_timeout,
            seccomp,
            ignored_vars,
        })
    }

    /// Ports that both a server and the forward range use (the shipped env file does this).
    pub fn range_overlaps(&self) -> Vec<u16> {
        let (lo, hi) = self.vm.host_fwd_range;
        [self.grpc_port, self.http_port]
            .into_iter()
            .filter(|p| (lo..=hi).contains(p))
            .collect()
    }
}

fn is_ignored(name: &str) -> bool {
    if OTHER_IGNORED.contains(&name) {
        return true;
    }
    // Unknown `MANAGER_QEMU_*` names (typos, newer QEMU options) are reported too.
    name.strip_prefix("MANAGER_QEMU_")
        .is_some_and(|rest| QEMU_IGNORED.contains(&rest) || !QEMU_KEPT.contains(&rest))
}

fn tls_config(v: &Vars) -> Result<Option<TlsConfig>, ConfigError> {
    let cert = v.get("MANAGER_GRPC_SERVER_CERT");
    let key = v.get("MANAGER_GRPC_SERVER_KEY");
    let client_ca: Vec<PathBuf> = [
        "MANAGER_GRPC_SERVER_CA_CERTS",
        "MANAGER_GRPC_CLIENT_CA_CERTS",
    ]
    .iter()
    .filter_map(|var| v.get(var))
    .map(PathBuf::from)
    .collect();
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsConfig {
            cert: cert.into(),
            key: key.into(),
            client_ca,
        })),
        (Some(c), None) => Err(invalid(
            "MANAGER_GRPC_SERVER_KEY",
            "",
            &format!("must be set with MANAGER_GRPC_SERVER_CERT={c}"),
        )),
        (None, Some(k)) => Err(invalid(
            "MANAGER_GRPC_SERVER_CERT",
            "",
            &format!("must be set with MANAGER_GRPC_SERVER_KEY={k}"),
        )),
        (None, None) if !client_ca.is_empty() => Err(invalid(
            "MANAGER_GRPC_CLIENT_CA_CERTS",
            &client_ca[0].display().to_string(),
            "client CA certificates need MANAGER_GRPC_SERVER_CERT and _KEY",
        )),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests;
