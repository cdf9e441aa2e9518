//! Subcommands and their flags. Exit statuses of `cvmm run`: 0 guest powered off, 1 VMM
//! failure, 2 bad input, 3 guest reset, 4 triple fault, 5 guest panic, 6 KVM could not run the
//! guest, 128+N stopped by signal N.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vmm::spec::{ForwardSpec, SerialSpec, ShareSpec, TeeMode, VmSpec};
use vmm::timeline::Timeline;

/// Exit status for bad input.
const EXIT_INPUT: u8 = 2;
/// Exit status for a VMM failure.
const EXIT_FAILURE: u8 = 1;

#[derive(Parser)]
#[command(name = "cvmm", version, about = "A QEMU-free VMM for confidential VMs")]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot one VM in the foreground.
    Run(Box<RunArgs>),
    /// Serve the Cocos manager gRPC API (configured by MANAGER_* variables) and run its VMs.
    Manager,
    /// Print the expected launch measurement (SNP digest or TDX MRTD) offline, in hex or base64.
    Measure(MeasureArgs),
    /// Boot-latency benchmark: N runs of `cvmm run ARGS` (and `--vs` another VMM), phase by
    /// phase, as a table, JSON, Markdown and a PNG.
    Bench(crate::bench::BenchArgs),
    /// Talk to a running VM's control socket (`cvmm run --control PATH`): status (one JSON
    /// line: name, pid, state, boot phases), powerdown (press its ACPI power button) or stop.
    Ctl {
        /// The control socket.
        socket: PathBuf,
        /// What to ask.
        #[arg(value_enum)]
        op: CtlOp,
        /// powerdown: wait up to SECS seconds for the guest to power off (exit 1 if it has
        /// not, unless --force).
        #[arg(long, value_name = "SECS")]
        wait: Option<u64>,
        /// powerdown --wait: stop the VM if the guest has not powered off in time.
        #[arg(long, requires = "wait")]
        force: bool,
    },
    /// (internal) Run one VM described by a JSON VmSpec; used by `cvmm manager`.
    Vm {
        /// Path of the VmSpec JSON file.
        #[arg(long)]
        spec: PathBuf,
        /// Seccomp filters: kill (default), log or off.
        #[arg(long, default_value = "kill")]
        seccomp: String,
        /// Serve the control socket (status, powerdown, stop) at this path.
        #[arg(long)]
        control: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CtlOp {
    Status,
    Powerdown,
    Stop,
}

#[derive(Args)]
struct RunArgs {
    /// Kernel: a bzImage, or an ELF vmlinux with a PVH note. With firmware, a bzImage handed
    /// over through fw_cfg.
    #[arg(
        long,
        required_unless_present_any = ["igvm", "firmware", "firmware_code", "dump_acpi"],
        conflicts_with = "igvm"
    )]
    kernel: Option<PathBuf>,
    /// IGVM file to boot instead of a kernel (native platform on plain KVM; SNP with --tee).
    #[arg(long)]
    igvm: Option<PathBuf>,
    /// UEFI firmware image (a unified OVMF.fd) mapped as a ROM ending at 4 GiB; the guest
    /// starts at its reset vector on a q35-like platform (QEMU's -bios).
    #[arg(long, conflicts_with_all = ["igvm", "firmware_code"])]
    firmware: Option<PathBuf>,
    /// Firmware code (OVMF_CODE.fd) as read-only CFI flash ending at 4 GiB (pflash unit 0).
    #[arg(
        long = "firmware-code",
        requires = "firmware_vars",
        conflicts_with = "igvm"
    )]
    firmware_code: Option<PathBuf>,
    /// The firmware's variable store (a per-VM copy of OVMF_VARS.fd) as writable CFI flash
    /// below the code (pflash unit 1); variable writes persist in the file.
    #[arg(long = "firmware-vars", requires = "firmware_code")]
    firmware_vars: Option<PathBuf>,
    /// Append the firmware's debug console (port 0x402) to this file.
    #[arg(long = "firmware-log")]
    firmware_log: Option<PathBuf>,
    /// An fw_cfg file for the firmware: opt/NAME=STRING (QEMU's -fw_cfg name=..,string=..).
    #[arg(long = "fw-cfg")]
    fw_cfg: Vec<String>,
    /// Write the ACPI tables this VM would get into DIR (one file per table, e.g. DSDT.dat,
    /// for `iasl -d`) and exit without starting it.
    #[arg(long = "dump-acpi")]
    dump_acpi: Option<PathBuf>,
    /// Launch path: none (plain KVM), auto (the strongest the host supports), snp or tdx.
    #[arg(long, default_value = "none")]
    tee: String,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    append: String,
    /// Number of vCPUs.
    #[arg(long, default_value = "1")]
    smp: String,
    /// Guest memory, QEMU syntax: 512M, 2G; a bare number is MiB.
    #[arg(long, default_value = "512M")]
    memory: String,
    /// CPU model and feature edits: host, EPYC, EPYC-v4, with ,+feat / ,-feat.
    #[arg(long, default_value = "host")]
    cpu: String,
    /// Guest console: stdio, none or file:PATH.
    #[arg(long, default_value = "stdio")]
    serial: String,
    /// Write the boot timeline as JSON to this file.
    #[arg(long)]
    timeline: Option<PathBuf>,
    /// Seccomp filters of the VM's threads: kill (default), log (allow and audit-log what is
    /// not on a list) or off.
    #[arg(long, default_value = "kill")]
    seccomp: String,
    /// Serve a control socket at this path (status, powerdown, stop; see `cvmm ctl`).
    #[arg(long)]
    control: Option<PathBuf>,
    /// Forward a host TCP port to the guest, QEMU hostfwd syntax:
    /// tcp:[HOSTADDR]:HOSTPORT-:GUESTPORT (repeatable).
    #[arg(long = "forward")]
    forwards: Vec<String>,
    /// Forward connections accepted on an inherited listening socket: FD:GUESTPORT.
    #[arg(long = "forward-fd")]
    forward_fds: Vec<String>,
    /// Share a host directory read-only over virtio-9p: TAG=DIR (repeatable).
    #[arg(long = "share")]
    shares: Vec<String>,
    /// Guest network: user (virtio-net with the built-in NAT) or none.
    #[arg(long, default_value = "user")]
    net: String,
    /// Interrupt controllers: kernel (KVM's PIC, IOAPIC and PIT) or split (local APICs in
    /// KVM, cvmm's IOAPIC, no PIC and no PIT). TDX guests always use split.
    #[arg(long, default_value = "kernel")]
    irqchip: String,
    /// TDX: MRCONFIGID of the TD report, 96 hex digits or base64 of 48 bytes (QEMU's
    /// tdx-guest mrconfigid); zero when not given.
    #[arg(long = "tdx-mrconfigid")]
    tdx_mrconfigid: Option<String>,
    /// TDX: MROWNER of the TD report, as --tdx-mrconfigid.
    #[arg(long = "tdx-mrowner")]
    tdx_mrowner: Option<String>,
    /// TDX: MROWNERCONFIG of the TD report, as --tdx-mrconfigid.
    #[arg(long = "tdx-mrownerconfig")]
    tdx_mrownerconfig: Option<String>,
}

#[derive(Args)]
struct MeasureArgs {
    /// Platform: snp (launch digest) or tdx (MRTD).
    #[arg(long, default_value = "snp")]
    mode: String,
    /// Unified OVMF image.
    #[arg(long, conflicts_with = "igvm")]
    ovmf: Option<PathBuf>,
    /// IGVM file (e.g. COCONUT-SVSM + OVMF).
    #[arg(long)]
    igvm: Option<PathBuf>,
    /// Kernel measured through the SEV hashes table (OVMF built with them).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initrd measured with the kernel.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Command line measured with the kernel.
    #[arg(long)]
    append: Option<String>,
    /// Number of vCPUs at launch.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// vCPU model whose CPUID signature goes into the VMSA (EPYC, EPYC-v4, EPYC-Milan, ...).
    #[arg(long = "vcpu-type", default_value = "EPYC-v4")]
    vcpu_type: String,
    /// VMSA SEV features (hex or decimal).
    #[arg(long = "guest-features", default_value = "0x1")]
    guest_features: String,
    /// Precomputed OVMF hash (96 hex digits) to start from.
    #[arg(long = "snp-ovmf-hash")]
    ovmf_hash: Option<String>,
    /// How the measurement is printed: hex (lower case) or base64.
    #[arg(long = "output-format", default_value = "hex")]
    output_format: String,
    /// Before the measurement, explain the launch plan (pages by type, bytes hashed) and
    /// predict the launch time.
    #[arg(long)]
    explain: bool,
}

fn read_input(what: &str, p: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {what} '{}'", p.display()))
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn measure(a: MeasureArgs) -> anyhow::Result<String> {
    let format: fn(&[u8]) -> String = match a.output_format.as_str() {
        "hex" => tee::measure::hex,
        "base64" => base64,
        other => anyhow::bail!("--output-format '{other}': supported: hex, base64"),
    };
    Ok(format(&measure_bytes(a)?))
}

fn measure_bytes(a: MeasureArgs) -> anyhow::Result<Vec<u8>> {
    if a.mode != "snp" && a.mode != "tdx" {
        anyhow::bail!("--mode '{}': supported: snp, tdx", a.mode);
    }
    let firmware = match (&a.ovmf, &a.igvm) {
        (Some(p), None) => tee::Firmware::Ovmf {
            name: p.display().to_string(),
            data: read_input("OVMF image", p)?,
        },
        (None, Some(p)) => tee::Firmware::Igvm {
            name: p.display().to_string(),
            data: read_input("IGVM file", p)?,
        },
        _ => anyhow::bail!("give one of --ovmf PATH or --igvm PATH"),
    };
    if a.mode == "tdx" {
        if a.kernel.is_some() || a.ovmf_hash.is_some() {
            anyhow::bail!("--mode tdx measures the firmware (TDVF or IGVM) only");
        }
        if a.explain {
            let plan = match &firmware {
                tee::Firmware::Ovmf { name, data } => {
                    tee::tdx_plan::TdxPlan::from_tdvf(name, data)?
                }
                tee::Firmware::Igvm { name, data } => {
                    tee::tdx_plan::TdxPlan::from_igvm(name, data)?
                }
            };
            stdout_text(&crate::explain::tdx(&plan));
        }
        return Ok(tee::tdx_mrtd(&firmware)?.to_vec());
    }
    let ovmf_hash = match &a.ovmf_hash {
        None => None,
        Some(h) => {
            let bytes: Option<Vec<u8>> = (0..h.len())
                .step_by(2)
                .map(|i| h.get(i..i + 2).and_then(|x| u8::from_str_radix(x, 16).ok()))
                .collect();
            match bytes.and_then(|b| <[u8; 48]>::try_from(b).ok()) {
                Some(b) => Some(b),
                None => anyhow::bail!("--snp-ovmf-hash '{h}': expected 96 hex digits"),
            }
        }
    };
    let inputs = tee::MeasureInputs {
        firmware,
        kernel: a
            .kernel
            .as_deref()
            .map(|p| read_input("kernel", p))
            .transpose()?,
        initrd: a
            .initrd
            .as_deref()
            .map(|p| read_input("initrd", p))
            .transpose()?,
        cmdline: a.append.clone(),
        vcpus: a.vcpus,
        vcpu_signature: tee::measure::vcpu_signature(&a.vcpu_type)?,
        guest_features: parse_u64(&a.guest_features)
            .with_context(|| format!("--guest-features '{}': not a number", a.guest_features))?,
        ovmf_hash,
    };
    if a.explain {
        stdout_text(&crate::explain::snp(&tee::plan::LaunchPlan::from_inputs(
            &inputs,
        )?));
    }
    Ok(tee::snp_digest(&inputs)?.to_vec())
}

/// Parses a QEMU-style size into MiB: `512M`, `2G`, `1T`, `524288K`, `1.5G`; bare = MiB.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let mult: f64 = match suffix
        .trim_end_matches(['B', 'b'])
        .to_ascii_uppercase()
        .as_str()
    {
        "" | "M" => 1.0,
        "K" => 1.0 / 1024.0,
        "G" => 1024.0,
        "T" => 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "--memory '{s}': unknown size suffix '{other}' (use K, M, G or T)"
            ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("--memory '{s}': '{num}' is not a number"))?;
    let mib = n * mult;
    if !mib.is_finite() || mib < 1.0 || mib.fract() != 0.0 {
        return Err(format!(
            "--memory '{s}': must be a whole number of MiB, at least 1M"
        ));
    }
    Ok(mib as u64)
}

fn parse_serial(s: &str) -> Result<SerialSpec, String> {
    match s {
        "stdio" => Ok(SerialSpec::Stdio),
        "none" => Ok(SerialSpec::None),
        _ => match s.strip_prefix("file:") {
            Some(p) if !p.is_empty() => Ok(SerialSpec::File(p.into())),
            _ => Err(format!("--serial '{s}': expected stdio, none or file:PATH")),
        },
    }
}

fn parse_tee(s: &str) -> Result<TeeMode, String> {
    match s {
        "none" => Ok(TeeMode::None),
        "auto" => Ok(TeeMode::Auto),
        "snp" => Ok(TeeMode::Snp),
        "tdx" => Ok(TeeMode::Tdx),
        _ => Err(format!("--tee '{s}': expected auto, none, snp or tdx")),
    }
}

fn parse_smp(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("--smp '{s}': not a number of vCPUs"))?;
    if n == 0 {
        return Err("--smp 0: a VM needs at least one vCPU".into());
    }
    Ok(n)
}

/// `opt/NAME=STRING`: a firmware configuration string, as QEMU names them.
fn parse_fw_cfg(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("--fw-cfg '{s}': expected opt/NAME=STRING"))?;
    if !name.starts_with("opt/") || name.len() <= 4 || name.len() > 55 || name.contains('\0') {
        return Err(format!(
            "--fw-cfg '{s}': the name must start with opt/ and be at most 55 bytes"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

impl RunArgs {
    fn into_spec(self) -> Result<VmSpec, String> {
        let mut forwards = Vec::new();
        for f in &self.forwards {
            forwards.push(ForwardSpec::parse_hostfwd(f)?);
        }
        for f in &self.forward_fds {
            forwards.push(ForwardSpec::parse_fd(f)?);
        }
        let shares = self
            .shares
            .iter()
            .map(|s| ShareSpec::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        let net = match self.net.as_str() {
            "user" => true,
            "none" => false,
            other => return Err(format!("--net '{other}': expected user or none")),
        };
        if !net && !forwards.is_empty() {
            return Err("--forward needs the guest network (--net user)".into());
        }
        let fw_cfg = self
            .fw_cfg
            .iter()
            .map(|f| parse_fw_cfg(f))
            .collect::<Result<Vec<_>, _>>()?;
        if !fw_cfg.is_empty() && self.firmware.is_none() && self.firmware_code.is_none() {
            return Err("--fw-cfg is for the firmware: give --firmware or --firmware-code".into());
        }
        let tee = parse_tee(&self.tee)?;
        let mut tdx = vmm::spec::TdxSettings::default();
        for (flag, text, slot) in [
            (
                "--tdx-mrconfigid",
                &self.tdx_mrconfigid,
                &mut tdx.mrconfigid,
            ),
            ("--tdx-mrowner", &self.tdx_mrowner, &mut tdx.mrowner),
            (
                "--tdx-mrownerconfig",
                &self.tdx_mrownerconfig,
                &mut tdx.mrownerconfig,
            ),
        ] {
            let Some(text) = text else { continue };
            if matches!(tee, TeeMode::None | TeeMode::Snp) {
                return Err(format!(
                    "{flag} sets a TD report value: it needs --tee tdx (or auto)"
                ));
            }
            *slot = Some(vmm::spec::TdReportValue::parse(flag, text)?);
        }
        Ok(VmSpec {
            forwards,
            shares,
            net,
            kernel: self.kernel,
            igvm: self.igvm,
            firmware: self.firmware.or(self.firmware_code),
            firmware_vars: self.firmware_vars,
            firmware_log: self.firmware_log,
            fw_cfg,
            tee,
            tdx,
            initrd: self.initrd,
            cmdline: self.append,
            vcpus: parse_smp(&self.smp)?,
            memory_mib: parse_memory(&self.memory)?,
            cpu: self.cpu,
            serial: parse_serial(&self.serial)?,
            timeline: self.timeline,
            irqchip: vmm::spec::IrqChip::parse(&self.irqchip)?,
            ..Default::default()
        })
    }
}

fn init_logging() {
    let default = std::env::var("MANAGER_LOG_LEVEL").unwrap_or_else(|_| "info".into());
    let filter = tracing_subscriber::EnvFilter::try_from_env("CVMM_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// `cvmm run --dump-acpi DIR`: the tables the VM would get, one `SIG.dat` file each.
fn dump_acpi(spec: &VmSpec, dir: &std::path::Path) -> ExitCode {
    let tables = vmm::acpi::tables_for_spec(spec);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        for (sig, bytes) in &tables {
            std::fs::write(dir.join(format!("{sig}.dat")), bytes)?;
        }
        Ok(())
    };
    match write() {
        Ok(()) => {
            let names: Vec<_> = tables.iter().map(|(s, _)| *s).collect();
            eprintln!("cvmm: wrote {} to '{}'", names.join(", "), dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cvmm: error: --dump-acpi '{}': {e}", dir.display());
            ExitCode::from(EXIT_INPUT)
        }
    }
}

/// Raises SIGTERM in this process: a stop requested on the control socket takes the same
/// clean path as a signal from outside.
fn stop_self() {
    // SAFETY: kill(2) on our own pid with a signal whose handler the VM installed.
    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
}

fn run_vm(spec: VmSpec, timeline: Timeline, seccomp: &str) -> ExitCode {
    run_vm_with_control(spec, timeline, seccomp, None)
}

fn run_vm_with_control(
    spec: VmSpec,
    timeline: Timeline,
    seccomp: &str,
    control: Option<&std::path::Path>,
) -> ExitCode {
    let mode = match seccomp.parse::<seccomp::Mode>() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("cvmm: error: {e}");
            return ExitCode::from(EXIT_INPUT);
        }
    };
    // Nothing inherited but stdio and the forward sockets; no privilege gain through exec.
    let keep: Vec<i32> = spec.forwards.iter().filter_map(|f| f.listen_fd).collect();
    match crate::confine::close_inherited_fds(&keep) {
        Ok(n) if n > 0 => tracing::info!(closed = n, "closed inherited file descriptors"),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot close inherited file descriptors: {e:#}"),
    }
    if let Err(e) = crate::confine::no_new_privs() {
        eprintln!("cvmm: VMM failure: {e:#}");
        return ExitCode::from(EXIT_FAILURE);
    }
    // The control socket is bound before Landlock (which then need not allow it); its thread
    // starts after Landlock and the seccomp mode, so it inherits the one and installs the other.
    let bound = match control.map(vmm::control::bind).transpose() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("cvmm: VMM failure: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    // Landlock before any thread starts, so every thread inherits it.
    match crate::confine::spec_paths(&spec)
        .and_then(|(read, write)| crate::confine::restrict_files(&read, &write))
    {
        Ok(status) => tracing::info!(
            ?status,
            "file access limited to the VM's own files (Landlock)"
        ),
        Err(e) => tracing::warn!("Landlock not applied: {e:#}"),
    }
    // Before any thread starts: the device-worker spawner must exist unfiltered first.
    if let Err(e) = seccomp::set_mode(mode) {
        eprintln!("cvmm: VMM failure: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    // `powerdown` on the control socket presses the VM's ACPI power button.
    let button = match bound
        .as_ref()
        .map(|_| vmm::power_button::PowerButton::new())
    {
        Some(Err(e)) => {
            eprintln!("cvmm: VMM failure: power button eventfd: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
        b => b.and_then(Result::ok),
    };
    let hooks = vmm::control::ControlHooks {
        on_stop: Box::new(stop_self),
        on_powerdown: button
            .clone()
            .map(|b| Box::new(move || b.press()) as vmm::control::PowerdownHook),
    };
    let _control = match bound.map(|b| b.serve_with(spec.name.clone(), timeline.clone(), hooks)) {
        Some(Err(e)) => {
            eprintln!("cvmm: VMM failure: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
        served => served.and_then(Result::ok),
    };
    match vmm::run_spec_with(&spec, timeline, button) {
        Ok(exit) => {
            eprintln!("cvmm: {}", exit.reason());
            ExitCode::from(exit.exit_code().clamp(0, 255) as u8)
        }
        Err(e) if e.is_input() => {
            eprintln!("cvmm: error: {e}");
            ExitCode::from(EXIT_INPUT)
        }
        Err(e) => {
            eprintln!("cvmm: VMM failure: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `cvmm ctl SOCKET OP`: one request on a VM's control socket; `powerdown --wait SECS
/// [--force]` then waits for the VM to end (and stops it if forced).
fn ctl(socket: &std::path::Path, op: CtlOp, wait: Option<u64>, force: bool) -> ExitCode {
    if wait.is_some() && !matches!(op, CtlOp::Powerdown) {
        eprintln!("cvmm: error: --wait only goes with powerdown");
        return ExitCode::from(EXIT_INPUT);
    }
    let done = match (op, wait) {
        (CtlOp::Status, _) => vmm::control::status(socket).map(|s| {
            let line = serde_json::to_string(&s).unwrap_or_default();
            stdout_text(&format!("{line}\n"));
        }),
        (CtlOp::Powerdown, None) => vmm::control::powerdown(socket),
        (CtlOp::Powerdown, Some(secs)) => {
            let wait = std::time::Duration::from_secs(secs);
            vmm::control::powerdown_and_wait(socket, wait, force).map(|outcome| match outcome {
                vmm::control::PowerdownOutcome::PoweredOff(after) => {
                    eprintln!("cvmm: the guest powered off {} ms after the press", after.as_millis());
                }
                vmm::control::PowerdownOutcome::Stopped => {
                    eprintln!("cvmm: warning: the guest did not power off within {secs} s; the VM was stopped");
                }
            })
        }
        (CtlOp::Stop, _) => vmm::control::stop(socket),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cvmm: error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn manager() -> ExitCode {
    let config = match api::ManagerConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cvmm: error: {e}");
            return ExitCode::from(EXIT_INPUT);
        }
    };
    // The launcher thread that forks VM processes starts before any filter; every other
    // thread of the manager (this one, tokio's workers and blocking threads) runs filtered.
    if let Err(e) = seccomp::set_manager_mode(config.seccomp) {
        eprintln!("cvmm: VMM failure: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(|| {
            if let Err(e) = seccomp::install(seccomp::ThreadKind::Manager) {
                // Never serve clients unfiltered.
                eprintln!("cvmm: VMM failure: {e}");
                std::process::abort();
            }
        })
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cvmm: VMM failure: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    if let Err(e) = seccomp::install(seccomp::ThreadKind::Manager) {
        eprintln!("cvmm: VMM failure: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    let result = rt.block_on(async {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending::<()>().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("manager shutting down; VMs keep running");
        };
        api::serve(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cvmm: manager failed: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn load_spec(path: &std::path::Path) -> anyhow::Result<VmSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read VM spec '{}'", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("bad VM spec '{}'", path.display()))
}

/// The QEMU personality: `qemu-system-x86_64 ARGS` (through a symlink) or `cvmm qemu ARGS`.
fn qemu_personality() -> Option<Vec<String>> {
    let mut args = std::env::args();
    let argv0 = args.next()?;
    let name = std::path::Path::new(&argv0)
        .file_name()?
        .to_string_lossy()
        .into_owned();
    if name == "qemu-system-x86_64" {
        return Some(args.collect());
    }
    let rest: Vec<String> = args.collect();
    (rest.first().map(String::as_str) == Some("qemu")).then(|| rest[1..].to_vec())
}

fn run_qemu(args: Vec<String>, timeline: Timeline) -> ExitCode {
    match vmm::qemu_args::parse_qemu_args(args) {
        Ok(inv) => {
            for opt in &inv.ignored {
                tracing::info!(option = %opt, "QEMU option has no meaning for cvmm; ignored");
            }
            if let Some(note) = inv.reset_note() {
                tracing::info!("{note}");
            }
            timeline.mark("args_parsed");
            run_vm(inv.spec, timeline, "kill")
        }
        Err(e) => {
            eprintln!("{}", e.report_line());
            ExitCode::from(e.exit_status())
        }
    }
}

/// Writes `text` to stdout; a reader that went away (`cvmm measure | head -c 8`) is not an
/// error worth a panic, so a broken pipe is ignored.
pub fn stdout_text(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    if let Some(args) = qemu_personality() {
        init_logging();
        return run_qemu(args, Timeline::new());
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_INPUT } else { 0 });
        }
    };
    init_logging();
    let timeline = Timeline::new();
    match cli.cmd {
        Command::Run(args) => {
            let seccomp = args.seccomp.clone();
            let dump = args.dump_acpi.clone();
            let control = args.control.clone();
            match args.into_spec() {
                Ok(spec) => match &dump {
                    Some(dir) => dump_acpi(&spec, dir),
                    None => {
                        timeline.mark("args_parsed");
                        run_vm_with_control(spec, timeline, &seccomp, control.as_deref())
                    }
                },
                Err(msg) => {
                    eprintln!("cvmm: error: {msg}");
                    ExitCode::from(EXIT_INPUT)
                }
            }
        }
        Command::Manager => manager(),
        Command::Bench(args) => match crate::bench::bench(args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(EXIT_FAILURE),
            Err(e) => {
                eprintln!("cvmm: error: {e:#}");
                ExitCode::from(EXIT_INPUT)
            }
        },
        Command::Measure(args) => match measure(args) {
            Ok(hex) => {
                stdout_text(&format!("{hex}\n"));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cvmm: error: {e:#}");
                ExitCode::from(EXIT_INPUT)
            }
        },
        Command::Ctl {
            socket,
            op,
            wait,
            force,
        } => ctl(&socket, op, wait, force),
        Command::Vm {
            spec,
            seccomp,
            control,
        } => match load_spec(&spec) {
            Ok(spec) => {
                timeline.mark("args_parsed");
                run_vm_with_control(spec, timeline, &seccomp, control.as_deref())
            }
            Err(e) => {
                eprintln!("cvmm: error: {e:#}");
                ExitCode::from(EXIT_INPUT)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_follow_qemu_syntax() {
        assert_eq!(parse_memory("512"), Ok(512));
        assert_eq!(parse_memory("512M"), Ok(512));
        assert_eq!(parse_memory("2G"), Ok(2048));
        assert_eq!(parse_memory("1.5G"), Ok(1536));
        assert_eq!(parse_memory("524288K"), Ok(512));
        assert_eq!(parse_memory("1T"), Ok(1 << 20));
        assert_eq!(parse_memory("2gb"), Ok(2048));
        let e = parse_memory("12Q").unwrap_err();
        assert!(e.contains("'12Q'") && e.contains("'Q'"), "{e}");
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("0").is_err());
        assert!(parse_memory("100K").is_err());
        assert!(parse_memory("").is_err());
    }

    #[test]
    fn serial_and_smp_values() {
        assert_eq!(parse_serial("none"), Ok(SerialSpec::None));
        assert_eq!(
            parse_serial("file:/tmp/x"),
            Ok(SerialSpec::File("/tmp/x".into()))
        );
        assert!(parse_serial("file:").is_err());
        assert!(parse_serial("pty").is_err());
        assert_eq!(parse_smp("4"), Ok(4));
        assert!(parse_smp("0").unwrap_err().contains("--smp 0"));
        assert!(parse_smp("-1").is_err());
    }

    #[test]
    fn tee_values() {
        assert_eq!(parse_tee("none"), Ok(TeeMode::None));
        assert_eq!(parse_tee("auto"), Ok(TeeMode::Auto));
        assert_eq!(parse_tee("snp"), Ok(TeeMode::Snp));
        assert_eq!(parse_tee("tdx"), Ok(TeeMode::Tdx));
        assert!(parse_tee("sev").unwrap_err().contains("'sev'"));
    }

    fn run_spec(extra: &[&str]) -> Result<VmSpec, String> {
        let args = ["cvmm", "run", "--kernel", "/k"].iter().chain(extra);
        match Cli::try_parse_from(args).map_err(|e| e.to_string())?.cmd {
            Command::Run(a) => a.into_spec(),
            _ => unreachable!("parsed as run"),
        }
    }

    #[test]
    fn tdx_report_value_flags_take_hex_or_base64_and_need_tdx() {
        use vmm::spec::TdReportValue;
        let hex = "5a".repeat(48);
        let b64 = base64(&[0xa5; 48]);
        let spec = run_spec(&[
            "--tee",
            "tdx",
            "--tdx-mrconfigid",
            &hex,
            "--tdx-mrownerconfig",
            &b64,
        ])
        .unwrap();
        assert_eq!(spec.tdx.mrconfigid, Some(TdReportValue([0x5a; 48])));
        assert_eq!(spec.tdx.mrowner, None);
        assert_eq!(spec.tdx.mrownerconfig, Some(TdReportValue([0xa5; 48])));
        let e = run_spec(&["--tee", "tdx", "--tdx-mrowner", "abcd"]).unwrap_err();
        assert!(e.starts_with("--tdx-mrowner 'abcd'"), "{e}");
        let e = run_spec(&["--tee", "tdx", "--tdx-mrowner", &base64(&[1; 32])]).unwrap_err();
        assert!(e.contains("--tdx-mrowner") && e.contains("32 bytes"), "{e}");
        for tee in ["none", "snp"] {
            let e = run_spec(&["--tee", tee, "--tdx-mrconfigid", &hex]).unwrap_err();
            assert!(
                e.contains("--tdx-mrconfigid") && e.contains("--tee tdx"),
                "{e}"
            );
        }
        assert!(run_spec(&["--tee", "auto", "--tdx-mrowner", &hex]).is_ok());
    }

    #[test]
    fn base64_follows_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, want) in cases {
            assert_eq!(base64(plain.as_bytes()), want, "{plain:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff, 0xbf]), "+/+/");
        assert_eq!(base64(&[0u8; 48]).len(), 64);
    }
}
