//! One handler per supported QEMU option. Each checks its own value and records it in
//! [`Collected`]; references between options are resolved afterwards, once all are seen.

use super::objects::{parse_object, Object};
use super::opts::{parse_bool, parse_number, parse_size, Opts};
use super::QemuArgsError;
use crate::spec::{ForwardSpec, SerialSpec};
use std::path::PathBuf;

const MIB: u64 = 1 << 20;

/// A `-drive if=pflash` image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pflash {
    pub file: PathBuf,
    pub readonly: bool,
}

/// A `-netdev user`.
#[derive(Debug)]
pub(super) struct Netdev {
    pub id: String,
    pub forwards: Vec<ForwardSpec>,
}

/// A `-fsdev local`.
#[derive(Debug)]
pub(super) struct Fsdev {
    pub id: String,
    pub path: PathBuf,
}

/// A `-device virtio-9p-pci`.
#[derive(Debug)]
pub(super) struct NinePDevice {
    pub fsdev: String,
    pub tag: String,
}

/// Everything the options said, before cross-references are checked.
#[derive(Debug, Default)]
pub(super) struct Collected {
    pub cgs: Option<String>,
    pub memory_backend: Option<String>,
    pub igvm_cfg: Option<String>,
    pub cpu: Option<String>,
    pub vcpus: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub pflash: [Option<Pflash>; 2],
    pub bios: Option<PathBuf>,
    pub netdevs: Vec<Netdev>,
    /// Netdev ids of the `virtio-net-pci` devices, in order.
    pub nics: Vec<String>,
    pub fsdevs: Vec<Fsdev>,
    pub ninep: Vec<NinePDevice>,
    pub objects: Vec<Object>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: Option<String>,
    pub serial: Option<SerialSpec>,
    pub nodefaults: bool,
    pub no_reboot: bool,
    pub name: Option<String>,
    /// `-machine kernel-irqchip=on|split`.
    pub irqchip: Option<crate::spec::IrqChip>,
    pub ignored: Vec<String>,
}

/// Device properties that only place or tune a PCI device in QEMU; cvmm accepts and reports them.
const PCI_IGNORED: [&str; 5] = ["disable-legacy", "iommu_platform", "addr", "romfile", "bus"];

fn nonempty_path(option: &str, v: &str) -> Result<PathBuf, QemuArgsError> {
    if v.is_empty() {
        return Err(QemuArgsError::BadValue {
            option: option.into(),
            value: String::new(),
            reason: "empty path".into(),
        });
    }
    Ok(v.into())
}

fn positive(o: &Opts, key: &str, raw: &str) -> Result<u32, QemuArgsError> {
    match raw.parse::<u32>() {
        Ok(n) if n > 0 && !raw.starts_with('+') => Ok(n),
        _ => Err(o.bad(key, raw, "expected a whole number of at least 1")),
    }
}

impl Collected {
    /// Applies one option that takes a value (`name` without its dashes).
    pub(super) fn apply(&mut self, name: &str, value: &str) -> Result<(), QemuArgsError> {
        match name {
            "machine" | "M" => self.machine(value),
            "accel" => self.accel(value),
            "cpu" => {
                if value.is_empty() {
                    return Err(QemuArgsError::BadValue {
                        option: "-cpu".into(),
                        value: String::new(),
                        reason: "empty CPU model".into(),
                    });
                }
                self.cpu = Some(value.to_string());
                Ok(())
            }
            "smp" => self.smp(value),
            "m" => self.memory(value),
            "drive" => self.drive(value),
            "bios" => {
                self.bios = Some(nonempty_path("-bios", value)?);
                Ok(())
            }
            "netdev" => self.netdev(value),
            "device" => self.device(value),
            "fsdev" => self.fsdev(value),
            "object" => {
                let obj = parse_object(value, &mut self.ignored)?;
                if self.objects.iter().any(|o| o.id == obj.id) {
                    return Err(QemuArgsError::DuplicateId {
                        option: "-object".into(),
                        id: obj.id,
                    });
                }
                self.objects.push(obj);
                Ok(())
            }
            "kernel" => {
                self.kernel = Some(nonempty_path("-kernel", value)?);
                Ok(())
            }
            "initrd" => {
                self.initrd = Some(nonempty_path("-initrd", value)?);
                Ok(())
            }
            "append" => {
                self.append = Some(value.to_string());
                Ok(())
            }
            "monitor" => {
                // cvmm has no monitor; the manager's `-monitor pty` is never used.
                self.ignored.push(format!("-monitor {value}"));
                Ok(())
            }
            "serial" => self.serial(value),
            "name" => self.name(value),
            _ => Err(QemuArgsError::Unsupported(format!("-{name}"))),
        }
    }

    fn machine(&mut self, value: &str) -> Result<(), QemuArgsError> {
        let mut o = Opts::parse("-machine", value, Some("type"));
        if let Some(t) = o.take("type") {
            if t != "q35" && !t.starts_with("pc-q35-") {
                return Err(QemuArgsError::Unsupported(format!("-machine {t}")));
            }
        }
        for (key, slot) in [
            ("confidential-guest-support", &mut self.cgs),
            ("memory-backend", &mut self.memory_backend),
            ("igvm-cfg", &mut self.igvm_cfg),
        ] {
            if let Some(id) = o.take(key) {
                if id.is_empty() {
                    return Err(o.bad(key, &id, "empty object id"));
                }
                *slot = Some(id);
            }
        }
        if let Some(v) = o.take("hpet") {
            match parse_bool(&v) {
                // cvmm has no HPET, so only "on" is not honoured.
                Some(false) => {}
                Some(true) => self.ignored.push(o.describe("hpet", &v)),
                None => return Err(o.bad("hpet", &v, "expected on or off")),
            }
        }
        if let Some(v) = o.take("accel") {
            if v != "kvm" {
                return Err(QemuArgsError::Unsupported(o.describe("accel", &v)));
            }
        }
        for key in ["kernel-irqchip", "kernel_irqchip"] {
            if let Some(v) = o.take(key) {
                self.irqchip = Some(match v.as_str() {
                    "split" => crate::spec::IrqChip::Split,
                    v if parse_bool(v) == Some(true) => crate::spec::IrqChip::Kernel,
                    // QEMU's userspace PIC/IOAPIC/PIT without any KVM irqchip: not in cvmm.
                    v if parse_bool(v) == Some(false) => {
                        return Err(QemuArgsError::Unsupported(o.describe(key, v)))
                    }
                    _ => return Err(o.bad(key, &v, "expected on, off or split")),
                });
            }
        }
        o.finish()
    }

    fn accel(&mut self, value: &str) -> Result<(), QemuArgsError> {
        let mut o = Opts::parse("-accel", value, Some("accel"));
        let a = o.require("accel")?;
        if a != "kvm" {
            return Err(QemuArgsError::Unsupported(format!("-accel {a}")));
        }
        o.finish()
    }

    fn smp(&mut self, value: &str) -> Result<(), QemuArgsError> {
        let mut o = Opts::parse("-smp", value, Some("cpus"));
        let cpus = match o.take("cpus") {
            Some(v) => Some(positive(&o, "cpus", &v)?),
            None => None,
        };
        // cvmm presents a flat topology; the counts only matter when cpus= is absent.
        let mut product: Option<u32> = None;
        for key in ["sockets", "dies", "clusters", "cores", "threads"] {
            if let Some(v) = o.take(key) {
                let n = positive(&o, key, &v)?;
                product = Some(product.unwrap_or(1).saturating_mul(n));
                self.ignored.push(o.describe(key, &v));
            }
        }
        let maxcpus = match o.take("maxcpus") {
            Some(v) => {
                let n = positive(&o, "maxcpus", &v)?;
                self.ignored.push(o.describe("maxcpus", &v));
                Some((n, v))
            }
            None => None,
        };
        let cpus = cpus
            .or(product)
            .or(maxcpus.as_ref().map(|m| m.0))
            .unwrap_or(1);
        if let Some((max, raw)) = &maxcpus {
            if *max < cpus {
                return Err(o.bad("maxcpus", raw, format!("below the {cpus} boot vCPUs")));
            }
        }
        o.finish()?;
        self.vcpus = Some(cpus);
        Ok(())
    }

    fn memory(&mut self, value: &str) -> Result<(), QemuArgsError> {
        let mut o = Opts::parse("-m", value, Some("size"));
        if let Some(raw) = o.take("size") {
            let bytes = parse_size(&raw, MIB).map_err(|r| o.bad("size", &raw, r))?;
            if bytes == 0 || !bytes.is_multiple_of(MIB) {
                return Err(o.bad("size", &raw, "must be a whole number of MiB, at least 1M"));
            }
            self.memory_bytes = Some(bytes);
        }
        if let Some(raw) = o.take("slots") {
            parse_number(&raw).ok_or_else(|| o.bad("slots", &raw, "not a number"))?;
            self.ignored.push(o.describe("slots", &raw));
        }
        if let Some(raw) = o.take("maxmem") {
            let max = parse_size(&raw, MIB).map_err(|r| o.bad("maxmem", &raw, r))?;
            if self.memory_bytes.is_some_and(|m| max < m) {
                return Err(o.bad("maxmem", &raw, "below the memory size"));
            }
            self.ignored.push(o.describe("maxmem", &raw));
        }
        o.finish()
    }

    fn drive(&mut self, value: &str) -> Result<(), QemuArgsError> {
        let mut o = Opts::parse("-drive", value, None);
        let iface = o.take("if").unwrap_or_else(|| "ide".into());
        if iface != "pflash" {
            return Err(QemuArgsError::Unsupported(format!("-drive if={iface}")));
        }
        if let Some(f) = o.take("format") {
            if f != "raw" {
                return Err(QemuArgsError::Unsupported(format!("-drive format={f}")));
            }
        }
        let file = o.require("file")?;
        if file.is_empty() {
            return Err(o.bad("file", &file, "empty path"));
        }
        let unit = match o.take("unit") {
            Some(raw) => match parse_number(&raw) {
                Some(n @ 0..=1) => n as usize,
                _ => return Err(o.bad("unit", &raw, "pflash units are 0 (code) and 1 (vars)")),
            },
            None => match self.pflash.iter().position(Option::is_none) {
                Some(free) => free,
                None => return Err(o.bad("if", "pflash", "a third pflash drive")),
            },
        };
        let readonly = match o.take("readonly") {
            Some(v) => parse_bool(&v).ok_or_else(|| o.bad("readonly", &v, "expected on or off"))?,
            None => false,
        };
        o.take("id");
        o.finish()?;
        if self.pflash[unit].is_some() {
            return Err(QemuArgsError::Conflict(format!(
                "-drive if=pflash: unit {unit} given twice"
            )));
        }
        self.pflash[unit] = Some(Pflash {
            file: file.into(),
            readonly,
        });
        Ok(())
    }

    fn netdev(&mut self, value: &str) -> Result<(), QemuArgsError> {
        let mut o = Opts::parse_maybe_json("-netdev", value, "type")?;
        let kind = o.require("type")?;
        if kind != "user" {
            return Err(QemuArgsError::Unsupported(format!("-netdev {kind}")));
        }
        let id = o.require("id")?;
        if self.netdevs.iter().any(|n| n.id == id) {
            return Err(QemuArgsError::DuplicateId {
                option: "-netdev".into(),
                id,
            });
        }
        let mut forwards = Vec::new();
        for rule in o.take_all("hostfwd") {
            let (host_addr, host_port, guest_port) =
                devices::net::parse_hostfwd(&rule).map_err(|e| match e {
                    devices::net::NetError::BadHostFwd { reason, .. } => {
                        o.bad("hostfwd", &rule, reason)
                    }
                    other => o.bad("hostfwd", &rule, other.to_string()),
                })?;
            forwards.push(ForwardSpec {
                host_addr,
                host_port,
                listen_fd: None,
                guest_port,
            });
        }
        o.finish()?;
        self.netdevs.push(Netdev { id, forwards });
        Ok(())
    }

    fn device(&mut self, value: &str) -> Result<(), QemuArgsError> {
        let mut o = Opts::parse_maybe_json("-device", value, "driver")?;
        let driver = o.require("driver")?;
        match driver.as_str() {
            "virtio-net-pci" => {
                let netdev = o.require("netdev")?;
                self.nics.push(netdev);
            }
            "virtio-9p-pci" => {
                let fsdev = o.require("fsdev")?;
                let tag = o.require("mount_tag")?;
                if tag.is_empty() || tag.len() > 255 || tag.contains(['\0', '/']) {
                    return Err(o.bad("mount_tag", &tag, "1 to 255 bytes, no '/'"));
                }
                self.ninep.push(NinePDevice { fsdev, tag });
            }
            other => return Err(QemuArgsError::Unsupported(format!("-device {other}"))),
        }
        for key in PCI_IGNORED {
            o.ignore(key, &mut self.ignored);
        }
        o.take("id");
        o.finish()
    }

    fn fsdev(&mut self, value: &str) -> Result<(), QemuArgsError> {
        let mut o = Opts::parse("-fsdev", value, Some("fsdriver"));
        let driver = o.require("fsdriver")?;
        if driver != "local" {
            return Err(QemuArgsError::Unsupported(format!("-fsdev {driver}")));
        }
        let id = o.require("id")?;
        if self.fsdevs.iter().any(|f| f.id == id) {
            return Err(QemuArgsError::DuplicateId {
                option: "-fsdev".into(),
                id,
            });
        }
        let path = o.require("path")?;
        if path.is_empty() {
            return Err(o.bad("path", &path, "empty path"));
        }
        let model = o.require("security_model")?;
        if ![
            "mapped",
            "mapped-xattr",
            "mapped-file",
            "passthrough",
            "none",
        ]
        .contains(&model.as_str())
        {
            return Err(o.bad(
                "security_model",
                &model,
                "expected mapped, mapped-xattr, mapped-file, passthrough or none",
            ));
        }
        // cvmm serves shares read-only and reports the host files' own owner and mode.
        self.ignored.push(o.describe("security_model", &model));
        if let Some(v) = o.take("readonly") {
            match parse_bool(&v) {
                Some(true) => {}
                Some(false) => self.ignored.push(o.describe("readonly", &v)),
                None => return Err(o.bad("readonly", &v, "expected on or off")),
            }
        }
        o.finish()?;
        self.fsdevs.push(Fsdev {
            id,
            path: path.into(),
        });
        Ok(())
    }

    fn serial(&mut self, value: &str) -> Result<(), QemuArgsError> {
        let spec = match value {
            "stdio" | "mon:stdio" => SerialSpec::Stdio,
            "none" | "null" => SerialSpec::None,
            _ => match value.strip_prefix("file:") {
                Some(p) => SerialSpec::File(nonempty_path("-serial file:", p)?),
                None => return Err(QemuArgsError::Unsupported(format!("-serial {value}"))),
            },
        };
        if self.serial.is_some() {
            return Err(QemuArgsError::Unsupported(format!(
                "-serial {value} (a second serial port)"
            )));
        }
        self.serial = Some(spec);
        Ok(())
    }

    fn name(&mut self, value: &str) -> Result<(), QemuArgsError> {
        let mut o = Opts::parse("-name", value, Some("guest"));
        let guest = o.take("guest");
        for key in ["debug-threads", "process"] {
            o.ignore(key, &mut self.ignored);
        }
        o.finish()?;
        if let Some(g) = guest {
            self.name = Some(g);
        }
        Ok(())
    }
}
