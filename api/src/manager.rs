//! The VM registry and lifecycle: CreateVm (validate, cap, reserve a port by holding its
//! listening socket, check the boot files, write the spec, spawn the VM process), exit
//! detection through a pidfd, RemoveVm (SIGTERM, SIGKILL after a bound, reap), TTLs, and
//! re-adoption of the VMs recorded in the state directory by an earlier manager (only processes
//! that are those VMs; stopping VMs it left without a record).

use crate::boot_watch::{self, BootReport};
use crate::config::{ManagerConfig, PlainBoot};
use crate::metrics::Metrics;
use crate::pb::CreateReq;
use crate::process::{
    kill_and_wait, pidfd_open, pidfd_signal, runs_vm_spec, spawn_vm, start_time, vm_processes,
    LISTEN_FD,
};
use crate::request::{validate, RequestError, VmRequest};
use crate::state::{self, go_error_text, FsError, VmDir, VmRecord};
use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use vmm::spec::{ForwardSpec, SerialSpec, ShareSource, ShareSpec, TeeMode, VmSpec};

/// How long to wait for a VM to exit after SIGKILL before giving up.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Why a VM operation failed; the texts are the Go manager's where it had one (spec §4.8).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A request field is unusable.
    #[error(transparent)]
    Invalid(#[from] RequestError),
    /// `MANAGER_MAX_VMS` VMs are running.
    #[error("maximum number of VMs exceeded")]
    MaxVms,
    /// Every port of the range is taken.
    #[error("failed to allocate free port on host : failed to find free port in range {0}-{1}")]
    NoPort(u16, u16),
    /// Unknown cvm_id in RemoveVm.
    #[error("entity not found")]
    NotFound,
    /// Unknown id in AttestationPolicy.
    #[error("computationId {0} not found")]
    PolicyNotFound(String),
    /// The VM's files could not be written (Go: the OS error text).
    #[error(transparent)]
    Files(#[from] FsError),
    /// The kernel or initrd path is empty (Go's boot-config check).
    #[error("kernel boot enabled but {0} is not set")]
    BootFileNotSet(&'static str),
    /// A boot file the configuration names cannot be read (the Go manager started QEMU
    /// regardless and the VM died; cvmm refuses before anything starts).
    #[error("{what} {} ({var}) cannot be read: {}", path.display(), go_error_text(source))]
    BootFile {
        /// What the file is (`kernel image`, `OVMF code file`, ...).
        what: &'static str,
        /// The variable configuring it.
        var: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The VM program could not be started (Go's `exec` texts).
    #[error("{}", exec_error_text(exe, source))]
    Spawn {
        /// The program.
        exe: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The started VM process could not be watched.
    #[error("pidfd_open {pid}: {}", go_error_text(source))]
    Watch {
        /// The VM process.
        pid: i32,
        /// The OS error.
        source: io::Error,
    },
    /// SIGTERM could not be sent.
    #[error("failed to send SIGTERM: {}", go_error_text(.0))]
    Signal(io::Error),
    /// The process outlived SIGKILL.
    #[error("failed to kill process: VM {0} did not exit after SIGKILL")]
    Kill(String),
}

/// How Go's `exec.Cmd.Start` words a start failure: a bare program name not found on `PATH`
/// gives `exec: "<name>": executable file not found in $PATH`, anything else
/// `fork/exec <path>: <OS error text>`.
fn exec_error_text(exe: &std::path::Path, e: &io::Error) -> String {
    let bare_name = !exe.as_os_str().as_encoded_bytes().contains(&b'/');
    if bare_name && e.kind() == io::ErrorKind::NotFound {
        format!(
            "exec: {:?}: executable file not found in $PATH",
            exe.display().to_string()
        )
    } else {
        format!("fork/exec {}: {}", exe.display(), go_error_text(e))
    }
}

/// Opens `path` for reading and checks it is not a directory.
fn check_readable_file(path: &std::path::Path) -> io::Result<()> {
    let meta = std::fs::File::open(path)?.metadata()?;
    if meta.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::EISDIR));
    }
    Ok(())
}

struct Entry {
    port: u16,
    running: bool,
    pidfd: Option<Arc<OwnedFd>>,
    exited: watch::Receiver<bool>,
    ttl: Option<AbortHandle>,
    monitor: Option<AbortHandle>,
    dir: VmDir,
    /// Whether the boot phases were reported (by the boot watcher or at exit).
    boot: BootReport,
}

/// The VMs this manager supervises.
pub struct Manager {
    cfg: ManagerConfig,
    tee: TeeMode,
    vms: Mutex<HashMap<String, Entry>>,
    create_lock: tokio::sync::Mutex<()>,
    /// Counters served on `/metrics`.
    pub metrics: Metrics,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Manager {
    /// A manager with no VMs; `tee` is the resolved launch mode.
    pub fn new(cfg: ManagerConfig, tee: TeeMode) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            tee,
            vms: Mutex::default(),
            create_lock: tokio::sync::Mutex::const_new(()),
            metrics: Metrics::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ManagerConfig {
        &self.cfg
    }

    fn vms(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.vms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Number of running VMs.
    pub fn running(&self) -> usize {
        self.vms().values().filter(|e| e.running).count()
    }

    /// Whether `id` is a running VM.
    pub fn is_running(&self, id: &str) -> bool {
        self.vms().get(id).is_some_and(|e| e.running)
    }

    /// CreateVm: returns `(port, cvm_id)`.
    pub async fn create(self: &Arc<Self>, req: &CreateReq) -> Result<(u16, String), VmError> {
        let id = uuid::Uuid::new_v4().to_string();
        let vm_req = validate(req, &id, &self.cfg.vm.kernel_cmdline)?;
        let _serial = self.create_lock.lock().await;
        if self.cfg.max_vms > 0 && self.running() >= self.cfg.max_vms {
            return Err(VmError::MaxVms);
        }
        let (listener, port) = self.reserve_port()?;
        let dir = state::create_vm_dir(&self.cfg.state_dir, &id)?;
        let (child, pidfd) = match self.launch(&id, &dir, &vm_req, port, &listener) {
            Ok(v) => v,
            Err(e) => {
                let _ = state::remove_vm_dir(&dir);
                return Err(e);
            }
        };
        let pid = child.id() as i32;
        let record = VmRecord {
            id: id.clone(),
            pid,
            start_time: start_time(pid).unwrap_or(0),
            port,
            ttl_deadline_ms: vm_req
                .ttl
                .map(|t| now_ms().saturating_add(t.as_millis() as u64)),
        };
        // Without its record a VM could not be re-adopted after a manager restart, so a VM
        // whose record cannot be written (disk full) is stopped and CreateVm fails.
        let encoded = serde_json::to_vec(&record)
            .map_err(|e| FsError::new("write", &dir.record(), io::Error::other(e)));
        if let Err(e) = encoded.and_then(|b| state::write_private(&dir.record(), &b)) {
            tracing::warn!(cvm_id = %id, pid, error = %e, "could not persist the VM record, stopping the VM");
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            let _ = state::remove_vm_dir(&dir);
            return Err(e.into());
        }
        // The VM process now holds the port; the manager's copy of the socket is not needed.
        drop(listener);
        self.track(&id, port, dir, pidfd, Some(child), vm_req.ttl);
        tracing::info!(cvm_id = %id, pid, port, "VM started");
        Ok((port, id))
    }

    /// Binds the first free port of the range that no running VM owns, and keeps it bound.
    fn reserve_port(&self) -> Result<(TcpListener, u16), VmError> {
        let (lo, hi) = self.cfg.vm.host_fwd_range;
        let used: Vec<u16> = self
            .vms()
            .values()
            .filter(|e| e.running)
            .map(|e| e.port)
            .collect();
        (lo..=hi)
            .filter(|p| !used.contains(p))
            .find_map(|p| Some((TcpListener::bind((self.cfg.host_fwd_addr, p)).ok()?, p)))
            .ok_or(VmError::NoPort(lo, hi))
    }

    fn launch(
        &self,
        id: &str,
        dir: &VmDir,
        req: &VmRequest,
        port: u16,
        listener: &TcpListener,
    ) -> Result<(Child, OwnedFd), VmError> {
        let spec = self.vm_spec(id, dir, req, port);
        self.check_boot_files(&spec)?;
        if let Some(vars) = &spec.firmware_vars {
            // The VM's own variable store, removed with its directory.
            copy_file(&self.cfg.vm.ovmf_vars_file, vars)?;
        }
        let json = serde_json::to_vec_pretty(&spec)
            .map_err(|e| FsError::new("write", &dir.spec(), io::Error::other(e)))?;
        state::write_private(&dir.spec(), &json)?;
        let console = dir.console();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&console)
            .map_err(|e| FsError::new("open", &console, e))?;
        let exe = &self.cfg.vmm_exe;
        let control = dir.control();
        if control.is_none() {
            tracing::warn!(cvm_id = %id, dir = %dir.0.display(), "state directory too deep for a control socket; the VM is stopped by signal");
        }
        let mut child =
            spawn_vm(exe, &dir.spec(), log, listener, control.as_deref()).map_err(|source| {
                VmError::Spawn {
                    exe: exe.clone(),
                    source,
                }
            })?;
        let pid = child.id() as i32;
        match pidfd_open(pid) {
            Ok(fd) => Ok((child, fd)),
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(VmError::Watch { pid, source })
            }
        }
    }

    /// Checks that every file `spec` boots from (and the UEFI variable template it copies)
    /// can be read, so a VM is not started to die at once.
    fn check_boot_files(&self, spec: &VmSpec) -> Result<(), VmError> {
        let firmware_var = if self.tee == TeeMode::Tdx {
            "MANAGER_QEMU_OVMF_FILE"
        } else {
            "MANAGER_QEMU_OVMF_CODE_FILE"
        };
        let files = [
            (
                "kernel image",
                "MANAGER_QEMU_DISK_IMG_KERNEL_FILE",
                spec.kernel.clone(),
            ),
            (
                "initramfs image",
                "MANAGER_QEMU_DISK_IMG_ROOTFS_FILE",
                spec.initrd.clone(),
            ),
            ("OVMF file", firmware_var, spec.firmware.clone()),
            (
                "OVMF variables template",
                "MANAGER_QEMU_OVMF_VARS_FILE",
                spec.firmware_vars
                    .as_ref()
                    .map(|_| self.cfg.vm.ovmf_vars_file.clone()),
            ),
            ("IGVM file", "MANAGER_QEMU_IGVM_FILE", spec.igvm.clone()),
        ];
        for (what, var, path) in files {
            let Some(path) = path else { continue };
            if path.as_os_str().is_empty() && matches!(what, "kernel image" | "initramfs image") {
                return Err(VmError::BootFileNotSet(what));
            }
            check_readable_file(&path).map_err(|source| VmError::BootFile {
                what,
                var,
                path,
                source,
            })?;
        }
        Ok(())
    }

    /// The VmSpec of one VM: config defaults plus the request's command line and shares.
    fn vm_spec(&self, id: &str, dir: &VmDir, req: &VmRequest, port: u16) -> VmSpec {
        let vm = &self.cfg.vm;
        let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
        // Plain VMs boot through OVMF (code as flash, their own variable store) when configured.
        let uefi = self.tee == TeeMode::None && self.cfg.plain_boot == PlainBoot::Uefi;
        VmSpec {
            name: id.to_string(),
            kernel: Some(abs(&vm.kernel)),
            initrd: Some(abs(&vm.initrd)),
            cmdline: req.cmdline.clone(),
            vcpus: vm.smp_count,
            memory_mib: vm.memory_mib,
            cpu: vm.cpu.clone(),
            serial: SerialSpec::Stdio,
            timeline: Some(dir.timeline()),
            forwards: vec![ForwardSpec {
                host_addr: Some(self.cfg.host_fwd_addr),
                host_port: port,
                listen_fd: Some(LISTEN_FD),
                guest_port: vm.guest_fwd_port,
            }],
            shares: vec![
                ShareSpec {
                    tag: "certs_share".into(),
                    source: ShareSource::Memory(req.certs.clone()),
                },
                ShareSpec {
                    tag: "env_share".into(),
                    source: ShareSource::Memory(vec![(
                        "environment".into(),
                        req.environment.clone(),
                    )]),
                },
            ],
            firmware: match self.tee {
                TeeMode::Tdx => Some(abs(&vm.ovmf_file)),
                TeeMode::None if uefi => Some(abs(&vm.ovmf_code_file)),
                _ => None,
            },
            firmware_vars: uefi.then(|| dir.ovmf_vars()),
            igvm: (self.tee == TeeMode::Snp).then(|| abs(&vm.igvm_file)),
            tee: self.tee,
            snp: vmm::spec::SnpSettings {
                cbitpos: u8::try_from(vm.sev_snp_cbit_pos).ok(),
                reduced_phys_bits: u8::try_from(vm.sev_snp_reduced_phys_bits).ok(),
                // Only SNP launches carry host data (spec §4.1 step 7).
                host_data: vm.snp_host_data().filter(|_| self.tee == TeeMode::Snp),
                ..Default::default()
            },
            tdx: vmm::spec::TdxSettings {
                quote_generation: Some(format!("vsock:2:{}", vm.quote_generation_port)),
                ..Default::default()
            },
            ..VmSpec::default()
        }
    }

    /// Registers a live VM process and starts watching it (and its TTL).
    fn track(
        self: &Arc<Self>,
        id: &str,
        port: u16,
        dir: VmDir,
        pidfd: OwnedFd,
        child: Option<Child>,
        ttl: Option<Duration>,
    ) {
        let pidfd = Arc::new(pidfd);
        let (tx, rx) = watch::channel(false);
        let mut vms = self.vms();
        let monitor =
            tokio::spawn(Arc::clone(self).monitor(id.to_string(), Arc::clone(&pidfd), child, tx));
        let ttl = ttl.map(|t| {
            let (me, id) = (Arc::clone(self), id.to_string());
            tokio::spawn(async move {
                tokio::time::sleep(t).await;
                tracing::info!(cvm_id = %id, "TTL expired, removing VM");
                if let Err(e) = me.remove_inner(&id, true).await {
                    tracing::warn!(cvm_id = %id, error = %e, "TTL removal failed");
                }
            })
            .abort_handle()
        });
        let boot = BootReport::default();
        if let Some(control) = dir.control() {
            let (me, id, once, exited) =
                (Arc::clone(self), id.to_string(), boot.clone(), rx.clone());
            tokio::spawn(async move {
                if let Some((up, phases)) = boot_watch::wait_until_up(control, exited).await {
                    boot_watch::report(&id, up, &phases, &me.metrics, &once);
                }
            });
        }
        let entry = Entry {
            port,
            running: true,
            pidfd: Some(pidfd),
            exited: rx,
            ttl,
            monitor: Some(monitor.abort_handle()),
            dir,
            boot,
        };
        vms.insert(id.to_string(), entry);
    }

    async fn monitor(
        self: Arc<Self>,
        id: String,
        pidfd: Arc<OwnedFd>,
        child: Option<Child>,
        tx: watch::Sender<bool>,
    ) {
        // SAFETY: the AsyncFd owns a clone of the Arc, so the pidfd stays open (and is not
        // reused for another file) for as long as it is registered.
        let registered = unsafe { tokio::io::unix::AsyncFd::register(Arc::clone(&pidfd)) };
        match registered {
            Ok(afd) => {
                let _ = afd.readable().await;
            }
            Err(e) => {
                tracing::warn!(cvm_id = %id, error = %e, "cannot poll pidfd; polling /proc instead");
                let pid = child.as_ref().map(|c| c.id() as i32);
                while pid.is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists()) {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        let status = child.and_then(|mut c| c.wait().ok());
        self.on_exit(&id, status);
        let _ = tx.send(true);
    }

    /// A VM process has exited: free its port and files, keep a stopped entry for RemoveVm.
    fn on_exit(&self, id: &str, status: Option<ExitStatus>) {
        let (dir, boot) = {
            let mut vms = self.vms();
            let Some(e) = vms.get_mut(id) else { return };
            e.running = false;
            e.pidfd = None;
            e.monitor = None;
            if let Some(t) = e.ttl.take() {
                t.abort();
            }
            (e.dir.clone(), e.boot.clone())
        };
        // A VM that stopped before its boot watcher saw the guest up: the timeline it left.
        let phases = std::fs::read(dir.timeline())
            .map(|t| boot_watch::phases_of_timeline(&t))
            .unwrap_or_default();
        if !phases.is_empty() {
            let up = boot_watch::guest_is_up(&phases);
            boot_watch::report(id, up, &phases, &self.metrics, &boot);
        }
        match status {
            Some(s) if !s.success() => {
                let log = std::fs::read(dir.console()).unwrap_or_default();
                let tail =
                    String::from_utf8_lossy(&log[log.len().saturating_sub(2048)..]).into_owned();
                tracing::warn!(cvm_id = %id, status = %s, console_tail = %tail, "VM process failed");
            }
            _ => tracing::info!(cvm_id = %id, status = ?status, "VM process exited"),
        }
        if let Err(e) = state::remove_vm_dir(&dir) {
            tracing::warn!(cvm_id = %id, error = %e, "could not remove VM files");
        }
        self.metrics.vm_exit();
    }

    /// RemoveVm.
    pub async fn remove(&self, id: &str) -> Result<(), VmError> {
        self.remove_inner(id, false).await
    }

    async fn remove_inner(&self, id: &str, from_ttl: bool) -> Result<(), VmError> {
        let (pidfd, mut exited, control) = {
            let mut vms = self.vms();
            let e = vms.get_mut(id).ok_or(VmError::NotFound)?;
            if let Some(t) = e.ttl.take() {
                if !from_ttl {
                    t.abort();
                }
            }
            match &e.pidfd {
                Some(fd) if e.running => (Arc::clone(fd), e.exited.clone(), e.dir.control()),
                _ => {
                    vms.remove(id);
                    return Ok(());
                }
            }
        };
        // Ask through the control socket first; a VM that does not answer (older VM, socket
        // gone, process wedged) gets SIGTERM.
        let asked = match control {
            Some(path) => tokio::task::spawn_blocking(move || vmm::control::stop(&path))
                .await
                .map_err(io::Error::other)
                .and_then(|r| r.map_err(io::Error::other)),
            None => Err(io::Error::other("no control socket")),
        };
        match asked {
            Ok(()) => tracing::debug!(cvm_id = %id, "stop requested on the control socket"),
            Err(e) => {
                tracing::debug!(cvm_id = %id, error = %e, "control socket unavailable, sending SIGTERM");
                pidfd_signal(&pidfd, libc::SIGTERM).map_err(VmError::Signal)?;
            }
        }
        let stop = self.cfg.stop_timeout;
        if tokio::time::timeout(stop, exited.wait_for(|x| *x))
            .await
            .is_err()
        {
            tracing::warn!(cvm_id = %id, timeout = ?stop, "VM ignored SIGTERM, sending SIGKILL");
            let _ = pidfd_signal(&pidfd, libc::SIGKILL);
            if tokio::time::timeout(KILL_WAIT, exited.wait_for(|x| *x))
                .await
                .is_err()
            {
                return Err(VmError::Kill(id.to_string()));
            }
        }
        self.vms().remove(id);
        tracing::info!(cvm_id = %id, "VM removed");
        Ok(())
    }

    /// AttestationPolicy's lookup: the id must be a known VM.
    pub fn check_known(&self, id: &str) -> Result<(), VmError> {
        self.vms()
            .contains_key(id)
            .then_some(())
            .ok_or_else(|| VmError::PolicyNotFound(id.to_string()))
    }

    /// Re-adopts the live VMs recorded in the state directory; drops records of dead ones.
    pub fn adopt(self: &Arc<Self>) -> io::Result<usize> {
        let mut adopted = 0;
        for found in state::scan(&self.cfg.state_dir)? {
            let Some(rec) = found.record else {
                // A manager killed between spawning the VM and writing its record leaves a
                // running VM here that nobody supervises: stop it before dropping its files.
                tracing::warn!(dir = %found.dir.0.display(), "VM directory without a readable record, removing it");
                stop_strays(&found.dir);
                let _ = state::remove_vm_dir(&found.dir);
                continue;
            };
            // Open the pidfd first: once it is open, a matching start time proves it is our VM.
            let live = pidfd_open(rec.pid)
                .ok()
                .filter(|_| start_time(rec.pid) == Some(rec.start_time));
            // And its arguments must name this VM's spec: a live process that is not that VM
            // (the pid reused by something else) is neither adopted nor killed.
            let live = live.filter(|_| runs_vm_spec(rec.pid, &found.dir.spec()));
            let Some(pidfd) = live else {
                tracing::info!(cvm_id = %rec.id, pid = rec.pid, "recorded VM is gone, removing its files");
                stop_strays(&found.dir);
                let _ = state::remove_vm_dir(&found.dir);
                continue;
            };
            // A VM that answers on its control socket must answer as this VM.
            if let Some(status) = found
                .dir
                .control()
                .filter(|p| p.exists())
                .and_then(|p| vmm::control::status(&p).ok())
            {
                if status.name != rec.id || status.pid != rec.pid as u32 {
                    tracing::warn!(cvm_id = %rec.id, pid = rec.pid, answered = %status.name, "control socket answers as another VM; not re-adopting");
                    continue;
                }
            }
            let ttl = rec
                .ttl_deadline_ms
                .map(|d| Duration::from_millis(d.saturating_sub(now_ms())));
            self.track(&rec.id, rec.port, found.dir, pidfd, None, ttl);
            tracing::info!(cvm_id = %rec.id, pid = rec.pid, port = rec.port, "re-adopted VM");
            adopted += 1;
        }
        Ok(adopted)
    }

    /// Manager shutdown: stop watching and forget every VM, leaving the processes running so a
    /// later manager can re-adopt them (the Go manager's behaviour).
    pub fn forget_all(&self) {
        for (_, e) in self.vms().drain() {
            for h in [e.ttl, e.monitor].into_iter().flatten() {
                h.abort();
            }
        }
    }
}

/// Copies the UEFI variable template `from` to a VM's own store `to`.
fn copy_file(from: &std::path::Path, to: &std::path::Path) -> Result<(), FsError> {
    let mut src = std::fs::File::open(from).map_err(|e| FsError::new("open", from, e))?;
    let mut dst = std::fs::File::create(to).map_err(|e| FsError::new("open", to, e))?;
    io::copy(&mut src, &mut dst).map_err(|e| FsError::new("write", to, e))?;
    Ok(())
}

/// Kills the VM processes still running from `dir`'s spec and waits for them to exit, so their
/// forwarded ports are free before the directory goes.
fn stop_strays(dir: &VmDir) {
    for pid in vm_processes(&dir.spec()) {
        match kill_and_wait(pid, KILL_WAIT) {
            Ok(true) => {
                tracing::warn!(pid, dir = %dir.0.display(), "killed a VM process left without a usable record")
            }
            Ok(false) => {
                tracing::error!(pid, dir = %dir.0.display(), "a VM process left without a record outlived SIGKILL")
            }
            Err(e) => {
                tracing::error!(pid, dir = %dir.0.display(), error = %e, "cannot kill a VM process left without a record")
            }
        }
    }
}
