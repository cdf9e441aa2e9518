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

impl ForwardSpec {
    /// Parses QEMU's hostfwd syntax: `tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`
    /// (`tcp::7020-:7002`, `tcp:127.0.0.1:7020-:7002`; the guest address, if given, must be
    /// the guest's 10.0.2.15).
    pub fn parse_hostfwd(s: &str) -> Result<Self, String> {
        let (host_addr, host_port, guest_port) =
            devices::net::parse_hostfwd(s).map_err(|e| format!("--forward '{s}': {e}"))?;
        Ok(Self {
            host_addr,
            host_port,
            listen_fd: None,
            guest_port,
        })
    }

    /// Parses `FD:GUESTPORT`: an inherited, already listening socket.
    pub fn parse_fd(s: &str) -> Result<Self, String> {
        let bad = || format!("--forward-fd '{s}': expected FD:GUESTPORT");
        let (fd, gport) = s.split_once(':').ok_or_else(bad)?;
        let fd: i32 = fd.parse().map_err(|_| bad())?;
        let guest_port: u16 = gport.parse().map_err(|_| bad())?;
        if fd < 3 || guest_port == 0 {
            return Err(bad());
        }
        Ok(Self {
            host_addr: None,
            host_port: 0,
            listen_fd: Some(fd),
            guest_port,
        })
    }
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

impl ShareSpec {
    /// Parses `TAG=DIR`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (tag, dir) = s
            .split_once('=')
            .ok_or_else(|| format!("--share '{s}': expected TAG=DIR"))?;
        if tag.is_empty() || tag.len() > 255 || tag.contains(['\0', '/']) {
            return Err(format!("--share '{s}': bad mount tag '{tag}'"));
        }
        if dir.is_empty() {
            return Err(format!("--share '{s}': empty directory"));
        }
        Ok(Self {
            tag: tag.to_string(),
            source: ShareSource::Directory(dir.into()),
        })
    }
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

/// Where the interrupt controllers live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IrqChip {
    /// KVM's PIC, IOAPIC and PIT (`KVM_CREATE_IRQCHIP`, `KVM_CREATE_PIT2`).
    #[default]
    Kernel,
    /// `KVM_CAP_SPLIT_IRQCHIP`: local APICs in KVM, cvmm's IOAPIC in userspace, no PIC and no
    /// PIT (KVM's PIT needs its PIC). TDX guests always get this.
    Split,
}

impl IrqChip {
    /// Parses `kernel` or `split`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "kernel" => Ok(IrqChip::Kernel),
            "split" => Ok(IrqChip::Split),
            _ => Err(format!("--irqchip '{s}': expected kernel or split")),
        }
    }

    /// The name `--irqchip` takes.
    pub fn name(self) -> &'static str {
        match self {
            IrqChip::Kernel => "kernel",
            IrqChip::Split => "split",
        }
    }
}

/// SEV-SNP launch settings (QEMU's `sev-snp-guest` properties, the manager's
/// `MANAGER_QEMU_SEV_SNP_*`); unset values come from the host's CPUID or the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SnpSettings {
    /// C-bit position in guest page-table entries.
    #[serde(default)]
    pub cbitpos: Option<u8>,
    /// Physical address bits lost when memory encryption is on.
    #[serde(default)]
    pub reduced_phys_bits: Option<u8>,
    /// 32 bytes the attestation report carries (`SNP_LAUNCH_FINISH` host data).
    #[serde(default)]
    pub host_data: Option<[u8; 32]>,
    /// Guest policy (default: SMT allowed, bit 17).
    #[serde(default)]
    pub policy: Option<u64>,
    /// Measure `--kernel/--initrd/--append` through OVMF's SEV hashes table
    /// (QEMU `kernel-hashes=on`); otherwise the kernel reaches the firmware unmeasured.
    #[serde(default)]
    pub kernel_hashes: bool,
}

/// TDX launch settings (QEMU's `tdx-guest` properties).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TdxSettings {
    /// Where GetQuote requests go: `vsock:CID:PORT` (default vsock:2:4050), `unix:PATH`
    /// or `tcp:HOST:PORT`.
    #[serde(default)]
    pub quote_generation: Option<String>,
    /// MRCONFIGID of the TD report (`KVM_TDX_INIT_VM`); zero when unset.
    #[serde(default)]
    pub mrconfigid: Option<TdReportValue>,
    /// MROWNER of the TD report; zero when unset.
    #[serde(default)]
    pub mrowner: Option<TdReportValue>,
    /// MROWNERCONFIG of the TD report; zero when unset.
    #[serde(default)]
    pub mrownerconfig: Option<TdReportValue>,
}

/// A 48-byte value the host sets at TD creation and the TD report carries verbatim
/// (MRCONFIGID, MROWNER, MROWNERCONFIG). 96 hex digits in the VmSpec JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TdReportValue(pub [u8; 48]);

impl TdReportValue {
    /// Parses 96 hex digits or the base64 of 48 bytes (QEMU's form); errors name `field`.
    pub fn parse(field: &str, text: &str) -> Result<Self, String> {
        let bytes = if text.len() == 96 {
            from_hex(text)
                .ok_or_else(|| format!("{field} '{text}': 96 characters but not hex digits"))?
        } else {
            crate::qemu_args::decode_base64(text).ok_or_else(|| {
                format!("{field} '{text}': expected 96 hex digits or base64 of 48 bytes")
            })?
        };
        let len = bytes.len();
        <[u8; 48]>::try_from(bytes)
            .map(Self)
            .map_err(|_| format!("{field} '{text}': decodes to {len} bytes, expected 48"))
    }
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

impl std::fmt::Debug for TdReportValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&tee::measure::hex(&self.0))
    }
}

impl Serialize for TdReportValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&tee::measure::hex(&self.0))
    }
}

impl<'de> Deserialize<'de> for TdReportValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        from_hex(&text)
            .and_then(|b| <[u8; 48]>::try_from(b).ok())
            .map(Self)
            .ok_or_else(|| serde::de::Error::custom(format!("'{text}': expected 96 hex digits")))
    }
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
    /// Firmware image, mapped so that it ends at 4 GiB: a ROM (unified OVMF.fd, QEMU's
    /// `-bios`), or with `firmware_vars` the read-only code flash (pflash unit 0).
    #[serde(default)]
    pub firmware: Option<PathBuf>,
    /// The firmware's variable store (pflash unit 1, below the code), written through.
    #[serde(default)]
    pub firmware_vars: Option<PathBuf>,
    /// Where the firmware's debug console (port 0x402) goes; without it, debug-level logs.
    #[serde(default)]
    pub firmware_log: Option<PathBuf>,
    /// Extra fw_cfg files for the firmware: (`opt/...` name, string contents).
    #[serde(default)]
    pub fw_cfg: Vec<(String, String)>,
    /// IGVM file (e.g. COCONUT-SVSM + OVMF).
    #[serde(default)]
    pub igvm: Option<PathBuf>,
    /// Launch path.
    #[serde(default)]
    pub tee: TeeMode,
    /// SEV-SNP settings (used with `tee` = snp).
    #[serde(default)]
    pub snp: SnpSettings,
    /// TDX settings (used with `tee` = tdx).
    #[serde(default)]
    pub tdx: TdxSettings,
    /// Whether the VM gets its virtio-net NIC with the user-mode network.
    #[serde(default = "default_true")]
    pub net: bool,
    /// Interrupt controllers: in KVM, or split (IOAPIC in cvmm). Ignored for TDX (split).
    #[serde(default)]
    pub irqchip: IrqChip,
}

fn default_true() -> bool {
    true
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
            firmware_vars: None,
            firmware_log: None,
            fw_cfg: Vec::new(),
            igvm: None,
            tee: TeeMode::None,
            snp: SnpSettings::default(),
            tdx: TdxSettings::default(),
            net: true,
            irqchip: IrqChip::Kernel,
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
    fn td_report_values_parse_from_hex_or_base64_and_are_hex_in_json() {
        let hex = "ab".repeat(48);
        let want = TdReportValue([0xab; 48]);
        assert_eq!(TdReportValue::parse("--tdx-mrowner", &hex), Ok(want));
        assert_eq!(
            TdReportValue::parse("--tdx-mrowner", &hex.to_uppercase()),
            Ok(want)
        );
        // base64 of 48 bytes of 0xab.
        let b64 = "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6ur";
        assert_eq!(TdReportValue::parse("--tdx-mrowner", b64), Ok(want));
        for bad in ["", "abcd", &"zz".repeat(48), "AAAA", "not base64!"] {
            let e = TdReportValue::parse("--tdx-mrconfigid", bad).unwrap_err();
            assert!(e.starts_with(&format!("--tdx-mrconfigid '{bad}'")), "{e}");
        }
        let tdx = TdxSettings {
            mrconfigid: Some(want),
            ..Default::default()
        };
        let json = serde_json::to_value(&tdx).unwrap();
        assert_eq!(json["mrconfigid"], serde_json::Value::String(hex.clone()));
        assert_eq!(json["mrowner"], serde_json::Value::Null);
        assert_eq!(serde_json::from_value::<TdxSettings>(json).unwrap(), tdx);
        let short = serde_json::json!({ "mrowner": "abcd" });
        let e = serde_json::from_value::<TdxSettings>(short).unwrap_err();
        assert!(e.to_string().contains("'abcd'"), "{e}");
    }

    #[test]
    fn hostfwd_syntax() {
        let f = ForwardSpec::parse_hostfwd("tcp::7020-:7002").unwrap();
        assert_eq!((f.host_addr, f.host_port, f.guest_port), (None, 7020, 7002));
        let f = ForwardSpec::parse_hostfwd("tcp:127.0.0.1:0-10.0.2.15:22").unwrap();
        assert_eq!(f.host_addr, Some("127.0.0.1".parse().unwrap()));
        assert_eq!((f.host_port, f.guest_port), (0, 22));
        for bad in [
            "udp::1-:2",
            "tcp:1-:2",
            "tcp::1:2",
            "tcp::70000-:2",
            "tcp::1-:0",
            "tcp:nohost:1-:2",
            "tcp::1-10.0.2.99:2",
            "",
        ] {
            let e = ForwardSpec::parse_hostfwd(bad).unwrap_err();
            assert!(e.contains(&format!("'{bad}'")), "{e}");
        }
        assert_eq!(ForwardSpec::parse_fd("5:7002").unwrap().listen_fd, Some(5));
        assert!(ForwardSpec::parse_fd("1:7002").is_err());
        assert!(ForwardSpec::parse_fd("x").is_err());
    }

    #[test]
    fn share_syntax() {
        let s = ShareSpec::parse("env_share=/tmp/x").unwrap();
        assert_eq!(s.tag, "env_share");
        assert_eq!(s.source, ShareSource::Directory("/tmp/x".into()));
        assert!(ShareSpec::parse("noequals").is_err());
        assert!(ShareSpec::parse("=/tmp").is_err());
        assert!(ShareSpec::parse("a/b=/tmp").is_err());
        assert!(ShareSpec::parse("tag=").is_err());
    }

    #[test]
    fn minimal_json_gets_defaults() {
        let spec: VmSpec =
            serde_json::from_str(r#"{"kernel":"/k","vcpus":1,"memory_mib":64}"#).unwrap();
        assert_eq!(spec.cpu, "host");
        assert_eq!(spec.serial, SerialSpec::Stdio);
        assert!(spec.forwards.is_empty());
        assert_eq!(spec.irqchip, IrqChip::Kernel);
    }

    #[test]
    fn irqchip_parses_and_round_trips() {
        assert_eq!(IrqChip::parse("kernel").unwrap(), IrqChip::Kernel);
        assert_eq!(IrqChip::parse("split").unwrap(), IrqChip::Split);
        let e = IrqChip::parse("userspace").unwrap_err();
        assert!(e.contains("'userspace'"), "{e}");
        let spec = VmSpec {
            irqchip: IrqChip::Split,
            ..Default::default()
        };
        let text = serde_json::to_string(&spec).unwrap();
        assert!(text.contains(r#""irqchip":"split""#), "{text}");
        assert_eq!(serde_json::from_str::<VmSpec>(&text).unwrap(), spec);
        for chip in [IrqChip::Kernel, IrqChip::Split] {
            assert_eq!(IrqChip::parse(chip.name()).unwrap(), chip);
        }
    }
}
