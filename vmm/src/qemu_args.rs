//! QEMU command-line compatibility: when cvmm runs as `qemu-system-x86_64` (or `cvmm qemu`),
//! [`parse_qemu_args`] maps the arguments the Cocos manager builds (plain, SEV-SNP and TDX
//! hosts) onto the same [`VmSpec`] as `cvmm run`. Options without meaning for cvmm are
//! accepted and listed in [`QemuInvocation::ignored`]; anything else fails before a VM starts.

mod objects;
mod options;
mod opts;
#[cfg(test)]
mod tests;

pub use objects::{QuoteSocket, SnpOptions, TdxOptions, TeeOptions};
pub(crate) use opts::decode_base64;

use crate::spec::{SerialSpec, ShareSource, ShareSpec, TeeMode, VmSpec};
use objects::ObjectKind;
use options::Collected;
use std::path::PathBuf;

/// QEMU's default guest memory when `-m` is absent.
const DEFAULT_MEMORY_MIB: u64 = 128;

/// Why a QEMU command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QemuArgsError {
    /// An option, device, backend or property cvmm does not implement (exit status 1).
    #[error("unsupported QEMU option '{0}'")]
    Unsupported(String),
    /// The last option on the line lacks its argument.
    #[error("option '{0}' needs an argument")]
    MissingValue(String),
    /// A value that does not parse or is out of range.
    #[error("bad value '{value}' for {option}: {reason}")]
    BadValue {
        /// Option and key, e.g. `-smp cpus`.
        option: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A required key is absent.
    #[error("{option} needs {key}=")]
    Missing {
        /// Option (and type), e.g. `-netdev user`.
        option: String,
        /// The missing key.
        key: String,
    },
    /// A reference to an id nothing defines.
    #[error("{option} {key}='{id}': no {expected} has id '{id}'")]
    Unresolved {
        /// The referring option, e.g. `-device virtio-9p-pci`.
        option: String,
        /// The referring key, e.g. `fsdev`.
        key: String,
        /// The dangling id.
        id: String,
        /// Which option should define it, e.g. `-fsdev`.
        expected: &'static str,
    },
    /// A reference to an object of the wrong type.
    #[error("-machine {key}='{id}' names a {found} object; expected {expected}")]
    WrongKind {
        /// The machine property.
        key: String,
        /// The object id.
        id: String,
        /// Its actual type.
        found: String,
        /// Acceptable types.
        expected: &'static str,
    },
    /// Two definitions with the same id.
    #[error("{option}: id '{id}' is defined twice")]
    DuplicateId {
        /// `-object`, `-netdev` or `-fsdev`.
        option: String,
        /// The repeated id.
        id: String,
    },
    /// Options that are individually fine but do not fit together.
    #[error("{0}")]
    Conflict(String),
}

impl QemuArgsError {
    /// Whether this is the "cvmm does not support it" case.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Self::Unsupported(_))
    }

    /// Suggested exit status: 1 for unsupported options (as QEMU), 2 (bad input) otherwise.
    pub fn exit_status(&self) -> u8 {
        if self.is_unsupported() {
            1
        } else {
            2
        }
    }

    /// The line to print on stderr: `cvmm: unsupported QEMU option '-vnc'`, or
    /// `cvmm: error: ...` for the other errors.
    pub fn report_line(&self) -> String {
        if self.is_unsupported() {
            format!("cvmm: {self}")
        } else {
            format!("cvmm: error: {self}")
        }
    }
}

/// The UEFI variable store (`-drive if=pflash,unit=1,...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareVars {
    /// Image file (the manager gives each VM its own copy).
    pub path: PathBuf,
    /// `readonly=on` was given.
    pub readonly: bool,
}

/// A parsed QEMU command line.
#[derive(Debug, Clone, PartialEq)]
pub struct QemuInvocation {
    /// The VM to run.
    pub spec: VmSpec,
    /// Accepted options that cvmm does not act on, as `-smp maxcpus=64`; each listed once.
    pub ignored: Vec<String>,
    /// Settings of the confidential-guest object (`spec.tee` says which kind).
    pub tee: Option<TeeOptions>,
    /// UEFI variable store (pflash unit 1); `spec.firmware` holds the code (unit 0).
    pub firmware_vars: Option<FirmwareVars>,
    /// `-no-reboot`: a guest reset ends the VM instead of restarting it. cvmm always does
    /// that (see [`QemuInvocation::reset_note`]).
    pub no_reboot: bool,
    /// `-name`.
    pub name: Option<String>,
}

/// What cvmm does on a guest reset where QEMU, without `-no-reboot`, would restart the guest.
pub const RESET_ENDS_THE_VM: &str = "without -no-reboot QEMU would restart the guest on a reset; \
     cvmm does not reboot guests: a guest reset ends the VM (exit status 3)";

impl QemuInvocation {
    /// The line to log once before the VM starts when the command line expects QEMU's reboot
    /// on a guest reset, which cvmm does not do (it cannot rebuild a VM in a process whose
    /// seccomp filters forbid creating one). `None` with `-no-reboot`: that asks for exactly
    /// what cvmm does.
    pub fn reset_note(&self) -> Option<&'static str> {
        (!self.no_reboot).then_some(RESET_ENDS_THE_VM)
    }
}

/// Parses QEMU arguments (without the program name) into a [`QemuInvocation`].
///
/// Options may be written `-opt` or `--opt`; values follow as the next argument. Key lists
/// use QEMU's syntax (`a=1,b=2`, `,,` for a literal comma, an implied first key such as
/// `-machine q35` = `type=q35`), and `-object`/`-device`/`-netdev` also accept JSON.
pub fn parse_qemu_args<I: IntoIterator<Item = String>>(
    args: I,
) -> Result<QemuInvocation, QemuArgsError> {
    let mut c = Collected::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let name = match arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) {
            Some(n) if !n.is_empty() => n,
            // A bare word is a disk image for QEMU (`-hda`).
            _ => return Err(QemuArgsError::Unsupported(arg)),
        };
        match name {
            "enable-kvm" | "nographic" => {}
            "nodefaults" => c.nodefaults = true,
            "no-reboot" => c.no_reboot = true,
            "machine" | "M" | "accel" | "cpu" | "smp" | "m" | "drive" | "bios" | "netdev"
            | "device" | "fsdev" | "object" | "kernel" | "initrd" | "append" | "monitor"
            | "serial" | "name" => {
                let value = args
                    .next()
                    .ok_or_else(|| QemuArgsError::MissingValue(format!("-{name}")))?;
                c.apply(name, &value)?;
            }
            _ => return Err(QemuArgsError::Unsupported(arg)),
        }
    }
    let inv = resolve(c)?;
    tracing::debug!(
        vcpus = inv.spec.vcpus,
        memory_mib = inv.spec.memory_mib,
        tee = ?inv.spec.tee,
        ignored = inv.ignored.len(),
        "parsed QEMU command line"
    );
    Ok(inv)
}

fn unresolved(option: &str, key: &str, id: &str, expected: &'static str) -> QemuArgsError {
    QemuArgsError::Unresolved {
        option: option.into(),
        key: key.into(),
        id: id.into(),
        expected,
    }
}

/// Checks the references between options and builds the result.
fn resolve(mut c: Collected) -> Result<QemuInvocation, QemuArgsError> {
    let mut used_objects: Vec<String> = Vec::new();
    let mut lookup = |key: &str, id: &str| -> Result<ObjectKind, QemuArgsError> {
        let obj = c
            .objects
            .iter()
            .find(|o| o.id == id)
            .ok_or_else(|| unresolved("-machine", key, id, "-object"))?;
        used_objects.push(id.to_string());
        Ok(obj.kind.clone())
    };
    let wrong = |key: &str, id: &str, found: &ObjectKind, expected| QemuArgsError::WrongKind {
        key: key.into(),
        id: id.into(),
        found: found.type_name().into(),
        expected,
    };

    let (tee_mode, tee) = match &c.cgs {
        None => (TeeMode::None, None),
        Some(id) => match lookup("confidential-guest-support", id)? {
            ObjectKind::Snp(s) => (TeeMode::Snp, Some(TeeOptions::Snp(s))),
            ObjectKind::Tdx(t) => (TeeMode::Tdx, Some(TeeOptions::Tdx(t))),
            other => {
                let e = wrong(
                    "confidential-guest-support",
                    id,
                    &other,
                    "sev-snp-guest or tdx-guest",
                );
                return Err(e);
            }
        },
    };
    let igvm = match &c.igvm_cfg {
        None => None,
        Some(id) => match lookup("igvm-cfg", id)? {
            ObjectKind::Igvm(path) => Some(path),
            other => return Err(wrong("igvm-cfg", id, &other, "igvm-cfg")),
        },
    };
    let mut memory_bytes = c.memory_bytes;
    if let Some(id) = &c.memory_backend {
        match lookup("memory-backend", id)? {
            ObjectKind::MemoryBackend { size, .. } => match memory_bytes {
                Some(m) if m != size => {
                    return Err(QemuArgsError::Conflict(format!(
                    "-m gives {} MiB but memory backend '{id}' has {size} bytes; they must match",
                    m >> 20
                )))
                }
                Some(_) => {}
                None if size.is_multiple_of(1 << 20) => memory_bytes = Some(size),
                None => {
                    return Err(QemuArgsError::Conflict(format!(
                        "memory backend '{id}' has {size} bytes, not a whole number of MiB"
                    )))
                }
            },
            other => return Err(wrong("memory-backend", id, &other, "memory-backend-memfd")),
        }
    }
    for o in &c.objects {
        if !used_objects.contains(&o.id) {
            let t = o.kind.type_name();
            c.ignored
                .push(format!("-object {t},id={} (nothing uses it)", o.id));
        }
    }

    let firmware = firmware(&mut c)?;
    let (net, forwards) = network(&mut c)?;
    let shares = shares(&mut c)?;
    if c.kernel.is_none() {
        if c.initrd.is_some() {
            return Err(QemuArgsError::Conflict("-initrd needs -kernel".into()));
        }
        if c.append.is_some() {
            return Err(QemuArgsError::Conflict("-append needs -kernel".into()));
        }
        if firmware.0.is_none() && igvm.is_none() {
            return Err(QemuArgsError::Conflict(
                "nothing to boot: give -kernel, -bios, a pflash drive or an igvm-cfg".into(),
            ));
        }
    }
    // Without -serial, QEMU puts the console on stdio (-nographic) unless -nodefaults
    // removed the serial port altogether.
    let serial = c.serial.take().unwrap_or(if c.nodefaults {
        SerialSpec::None
    } else {
        SerialSpec::Stdio
    });

    let mut spec = VmSpec {
        name: c.name.clone().unwrap_or_default(),
        kernel: c.kernel,
        initrd: c.initrd,
        cmdline: c.append.unwrap_or_default(),
        vcpus: c.vcpus.unwrap_or(1),
        memory_mib: memory_bytes.map_or(DEFAULT_MEMORY_MIB, |b| b >> 20),
        serial,
        forwards,
        shares,
        firmware: firmware.0,
        // A read-only variable store cannot be cvmm's write-through flash: the firmware then
        // runs from the code alone, with volatile variables (noted in `ignored`).
        firmware_vars: firmware
            .1
            .as_ref()
            .filter(|v| !v.readonly)
            .map(|v| v.path.clone()),
        igvm,
        tee: tee_mode,
        net,
        ..Default::default()
    };
    if let Some(cpu) = c.cpu {
        spec.cpu = cpu;
    }
    if let Some(chip) = c.irqchip {
        spec.irqchip = chip;
    }
    match &tee {
        Some(TeeOptions::Snp(o)) => {
            spec.snp = crate::spec::SnpSettings {
                cbitpos: u8::try_from(o.cbitpos).ok(),
                reduced_phys_bits: u8::try_from(o.reduced_phys_bits).ok(),
                host_data: o.host_data,
                policy: o.policy,
                kernel_hashes: o.kernel_hashes,
            }
        }
        Some(TeeOptions::Tdx(o)) => {
            spec.tdx = crate::spec::TdxSettings {
                quote_generation: o.quote_generation_socket.as_ref().map(|q| match q {
                    QuoteSocket::Vsock { cid, port } => format!("vsock:{cid}:{port}"),
                    QuoteSocket::Unix(p) => format!("unix:{}", p.display()),
                }),
                mrconfigid: o.mrconfigid,
                mrowner: o.mrowner,
                mrownerconfig: o.mrownerconfig,
            }
        }
        None => {}
    }
    let mut ignored = Vec::new();
    for item in c.ignored {
        if !ignored.contains(&item) {
            ignored.push(item);
        }
    }
    Ok(QemuInvocation {
        spec,
        ignored,
        tee,
        firmware_vars: firmware.1,
        no_reboot: c.no_reboot,
        name: c.name,
    })
}

/// Firmware code (from `-bios` or pflash unit 0) and the variable store (pflash unit 1).
fn firmware(c: &mut Collected) -> Result<(Option<PathBuf>, Option<FirmwareVars>), QemuArgsError> {
    let [code, vars] = std::mem::take(&mut c.pflash);
    if code.is_some() && c.bios.is_some() {
        return Err(QemuArgsError::Conflict(
            "-bios and a pflash code drive (unit 0) both give the firmware; use one".into(),
        ));
    }
    if vars.is_some() && code.is_none() {
        return Err(QemuArgsError::Conflict(
            "pflash unit 1 (variables) needs pflash unit 0 (firmware code)".into(),
        ));
    }
    if let Some(code) = &code {
        if !code.readonly {
            c.ignored
                .push("-drive if=pflash,unit=0,readonly=off (firmware code is read-only)".into());
        }
    }
    if vars.as_ref().is_some_and(|v| v.readonly) {
        c.ignored.push(
            "-drive if=pflash,unit=1,readonly=on (variables stay volatile: the store is not mapped)"
                .into(),
        );
    }
    let vars = vars.map(|v| FirmwareVars {
        path: v.file,
        readonly: v.readonly,
    });
    Ok((code.map(|p| p.file).or(c.bios.take()), vars))
}

/// The guest NIC: the netdev of the single `virtio-net-pci`, and its port forwards.
fn network(c: &mut Collected) -> Result<(bool, Vec<crate::spec::ForwardSpec>), QemuArgsError> {
    if let Some(extra) = c.nics.get(1) {
        return Err(QemuArgsError::Unsupported(format!(
            "-device virtio-net-pci,netdev={extra} (cvmm gives the guest one NIC)"
        )));
    }
    let mut forwards = Vec::new();
    if let Some(id) = c.nics.first() {
        let nd = c
            .netdevs
            .iter_mut()
            .find(|n| &n.id == id)
            .ok_or_else(|| unresolved("-device virtio-net-pci", "netdev", id, "-netdev"))?;
        forwards = std::mem::take(&mut nd.forwards);
    }
    for nd in &c.netdevs {
        if c.nics.first() != Some(&nd.id) {
            c.ignored
                .push(format!("-netdev user,id={} (no device uses it)", nd.id));
        }
    }
    Ok((!c.nics.is_empty(), forwards))
}

/// 9p shares: each `virtio-9p-pci` joined with its `-fsdev`.
fn shares(c: &mut Collected) -> Result<Vec<ShareSpec>, QemuArgsError> {
    let mut out: Vec<ShareSpec> = Vec::new();
    for (i, dev) in c.ninep.iter().enumerate() {
        let fs =
            c.fsdevs.iter().find(|f| f.id == dev.fsdev).ok_or_else(|| {
                unresolved("-device virtio-9p-pci", "fsdev", &dev.fsdev, "-fsdev")
            })?;
        if c.ninep[..i].iter().any(|d| d.fsdev == dev.fsdev) {
            return Err(QemuArgsError::Conflict(format!(
                "-fsdev '{}' is used by two virtio-9p-pci devices",
                dev.fsdev
            )));
        }
        if out.iter().any(|s| s.tag == dev.tag) {
            return Err(QemuArgsError::Conflict(format!(
                "mount_tag '{}' is used twice",
                dev.tag
            )));
        }
        out.push(ShareSpec {
            tag: dev.tag.clone(),
            source: ShareSource::Directory(fs.path.clone()),
        });
    }
    for fs in &c.fsdevs {
        if !c.ninep.iter().any(|d| d.fsdev == fs.id) {
            c.ignored
                .push(format!("-fsdev local,id={} (no device uses it)", fs.id));
        }
    }
    Ok(out)
}
