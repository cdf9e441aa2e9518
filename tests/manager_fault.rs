//! Fault tests of `cvmm manager` with the probe guest (tier B, /dev/kvm): a VM process killed
//! with SIGKILL while it boots, the manager killed with SIGKILL during CreateVm (then
//! restarted on the same state directory), and a full state directory (a small tmpfs in a
//! private mount namespace). After each, no VM process, VM file or held forwarded port may be
//! left, and the failure must be visible (log line, metrics or the RPC's error).

mod common;

use api::pb::manager_service_client::ManagerServiceClient;
use api::pb::{CreateReq, RemoveReq};
use common::*;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const RANGE: u16 = 6;

fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// How to start a manager.
#[derive(Clone)]
struct Opts {
    state: PathBuf,
    fwd: u16,
    /// MANAGER_VMM_EXE (default: cvmm).
    exe: PathBuf,
    /// Mount a tmpfs of this many KiB on the state directory in a private mount namespace.
    tmpfs_kib: Option<u32>,
    /// Extra environment (inherited by the VM program).
    env: Vec<(String, String)>,
}

impl Opts {
    fn new(tag: &str) -> Self {
        let state = std::env::temp_dir().join(format!(
            "cvmm-fault-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&state).unwrap();
        Self {
            state,
            fwd: free_range(RANGE),
            exe: cvmm(),
            tmpfs_kib: None,
            env: Vec::new(),
        }
    }
}

struct Manager {
    child: Child,
    grpc: u16,
    http: u16,
    opts: Opts,
    log: PathBuf,
    initrd: PathBuf,
}

impl Manager {
    fn start(opts: &Opts) -> Manager {
        let log = PathBuf::from(format!("{}-{}.log", opts.state.display(), free_port()));
        // The probe's initrd is never read; any file will do (outside a tmpfs state dir).
        let initrd = log.with_extension("initrd");
        std::fs::write(&initrd, vec![0u8; 4096]).unwrap();
        let (grpc, http) = (free_port(), free_port());
        let mut cmd = match opts.tmpfs_kib {
            None => {
                let mut c = Command::new(cvmm());
                c.arg("manager");
                c
            }
            Some(kib) => {
                let mut c = Command::new("unshare");
                let script = format!(
                    "mount -t tmpfs -o size={kib}k,mode=0700 cvmm-fault \"$1\" && exec \"$0\" manager"
                );
                c.args(["-m", "sh", "-c", &script])
                    .arg(cvmm())
                    .arg(&opts.state);
                c
            }
        };
        cmd.env("MANAGER_GRPC_HOST", "127.0.0.1")
            .env("MANAGER_GRPC_PORT", grpc.to_string())
            .env("MANAGER_HTTP_HOST", "127.0.0.1")
            .env("MANAGER_HTTP_PORT", http.to_string())
            .env("MANAGER_STATE_DIR", &opts.state)
            .env("MANAGER_VMM_EXE", &opts.exe)
            .env("MANAGER_VMM_TEE", "none")
            .env("MANAGER_VMM_HOST_FWD_ADDR", "127.0.0.1")
            .env(
                "MANAGER_QEMU_HOST_FWD_RANGE",
                format!("{}-{}", opts.fwd, opts.fwd + RANGE - 1),
            )
            .env("MANAGER_QEMU_DISK_IMG_KERNEL_FILE", probe("pvh"))
            .env("MANAGER_QEMU_DISK_IMG_ROOTFS_FILE", &initrd)
            .env("MANAGER_QEMU_KERNEL_CMDLINE", "probe.exit=halt")
            .env("MANAGER_QEMU_MEMORY_SIZE", "128M")
            .env("MANAGER_QEMU_SMP_COUNT", "1")
            .env("MANAGER_MAX_VMS", "0")
            .env("CVMM_LOG", "info");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let m = Manager {
            child,
            grpc,
            http,
            opts: opts.clone(),
            log,
            initrd,
        };
        // Re-adoption runs before the API serves; its summary line is logged either way.
        assert!(
            wait_for(Duration::from_secs(60), || m.log_has("re-adopted VMs")
                && TcpStream::connect(("127.0.0.1", m.grpc)).is_ok()),
            "manager did not start: {}",
            m.log_text()
        );
        m
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The state directory as the manager sees it (through its mount namespace).
    fn state(&self) -> PathBuf {
        match self.opts.tmpfs_kib {
            None => self.opts.state.clone(),
            Some(_) => Path::new(&format!("/proc/{}/root", self.pid()))
                .join(self.opts.state.strip_prefix("/").unwrap()),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_has(&self, s: &str) -> bool {
        self.log_text().contains(s)
    }

    fn metrics(&self) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.http)).unwrap();
        use std::io::Write;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    fn unbindable_ports(&self) -> Vec<u16> {
        let fwd = self.opts.fwd;
        (fwd..fwd + RANGE)
            .filter(|p| TcpListener::bind(("127.0.0.1", *p)).is_err())
            .collect()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.kill();
        for pid in vm_processes(&self.opts.state) {
            // SAFETY: signalling a VM process this test started through the manager.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // A failing test keeps the manager's log for the post-mortem.
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
        let _ = std::fs::remove_file(&self.initrd);
    }
}

/// VM directories (uuid names) under `state`.
fn vm_dirs(state: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(state)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| uuid_like(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect()
}

fn uuid_like(name: &str) -> bool {
    name.len() == 36 && name.bytes().filter(|b| *b == b'-').count() == 4
}

/// Live processes running a VM spec from under `state` (`... vm --spec <state>/<id>/spec.json`).
fn vm_processes(state: &Path) -> Vec<i32> {
    let needle = state.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            args.windows(3)
                .any(|w| w[0] == b"vm" && w[1] == b"--spec" && w[2].starts_with(needle))
        })
        .collect()
}

/// Pids whose parent is `pid` (zombies included: an unreaped VM counts).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn client(m: &Manager) -> ManagerServiceClient<Channel> {
    ManagerServiceClient::connect(format!("http://127.0.0.1:{}", m.grpc))
        .await
        .unwrap()
}

fn req() -> CreateReq {
    CreateReq {
        ttl: "10m".into(),
        ..Default::default()
    }
}

/// Asserts that nothing of any VM is left: no VM process, no VM directory, no held port.
fn assert_clean(m: &Manager, what: &str) {
    let clean = wait_for(Duration::from_secs(15), || {
        vm_processes(&m.opts.state).is_empty()
            && children(m.pid()).is_empty()
            && vm_dirs(&m.state()).is_empty()
            && m.unbindable_ports().is_empty()
    });
    assert!(
        clean,
        "{what}: left behind: VM processes {:?}, children {:?}, VM dirs {:?}, held ports {:?}\n{}",
        vm_processes(&m.opts.state),
        children(m.pid()),
        vm_dirs(&m.state()),
        m.unbindable_ports(),
        m.log_text()
    );
}

#[test]
fn a_vm_killed_mid_boot_is_reaped_cleaned_up_and_reported() {
    if !kvm_available("manager fault") {
        return;
    }
    let opts = Opts::new("vmkill");
    let m = Manager::start(&opts);
    let rt = rt();
    let mut c = rt.block_on(client(&m));
    let res = rt.block_on(c.create_vm(req())).unwrap().into_inner();
    let id = res.cvm_id;
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.state().join(&id).join("vm.json")).unwrap())
            .unwrap();
    let pid = rec["pid"].as_i64().unwrap() as i32;
    // CreateVm answers right after the spawn; the guest is still booting.
    // SAFETY: killing the VM process this test just created.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);

    assert_clean(&m, "after SIGKILL of the VM");
    assert!(
        wait_for(Duration::from_secs(5), || m.log_has("VM process failed")),
        "no log line about the killed VM:\n{}",
        m.log_text()
    );
    let line = m
        .log_text()
        .lines()
        .find(|l| l.contains("VM process failed"))
        .unwrap()
        .to_string();
    assert!(line.contains(&id) && line.contains("signal: 9"), "{line}");
    let metrics = m.metrics();
    assert!(
        metrics.contains("manager_vm_exits_total 1\n")
            && metrics.contains("manager_vms_running 0\n"),
        "{metrics}"
    );
    // The stopped VM is still known until removed; then it is gone.
    rt.block_on(c.remove_vm(RemoveReq { cvm_id: id.clone() }))
        .unwrap();
    let again = rt
        .block_on(c.remove_vm(RemoveReq { cvm_id: id }))
        .unwrap_err();
    assert!(again.message().contains("not found"), "{again:?}");
    // The manager still works, and the freed port can be handed out again.
    let res = rt.block_on(c.create_vm(req())).unwrap().into_inner();
    rt.block_on(c.remove_vm(RemoveReq { cvm_id: res.cvm_id }))
        .unwrap();
    assert_clean(&m, "after the next VM");
    drop(m);
    let _ = std::fs::remove_dir_all(&opts.state);
}

/// A VM program that kills the manager that started it (after `KILL_DELAY` seconds when set),
/// then (with `FORCE_NO_RECORD` set) waits for it to be dead and deletes the VM's record as if
/// the kill had come before the record was written, and then runs the real VM.
fn manager_killing_exe(dir: &Path) -> PathBuf {
    let exe = dir.with_extension("kill-manager.sh");
    let script = format!(
        "#!/bin/sh\n[ -n \"$KILL_DELAY\" ] && sleep \"$KILL_DELAY\"\nkill -9 $PPID\nif [ -n \"$FORCE_NO_RECORD\" ]; then\n  sleep 0.5\n  rm -f \"$(dirname \"$3\")/vm.json\" \"$(dirname \"$3\")/vm.tmp\"\nfi\nexec '{}' \"$@\"\n",
        cvmm().display()
    );
    std::fs::write(&exe, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    exe
}

#[test]
fn a_manager_killed_during_create_vm_leaves_no_half_made_vm_after_restart() {
    if !kvm_available("manager fault") {
        return;
    }
    let base = Opts::new("mgrkill");
    let killer = manager_killing_exe(&base.state);
    let rt = rt();
    let (mut adopted, mut stopped) = (0, 0);
    // Rounds 0-1 force the kill before the record is written, 2-3 kill at once (the race
    // decides), 4-5 kill half a second late, when the record is written.
    for round in 0..6 {
        let mut dying = Opts {
            exe: killer.clone(),
            ..base.clone()
        };
        dying.env = match round {
            0 | 1 => vec![("FORCE_NO_RECORD".into(), "1".into())],
            2 | 3 => Vec::new(),
            _ => vec![("KILL_DELAY".into(), "0.5".into())],
        };
        let mut m = Manager::start(&dying);
        let mut c = rt.block_on(client(&m));
        // The call fails when the kill beats the answer, else the client got an id it will
        // not use: either way the restart must leave a whole VM or none.
        let res = rt.block_on(c.create_vm(req()));
        assert!(
            wait_for(Duration::from_secs(10), || m
                .child
                .try_wait()
                .unwrap()
                .is_some()),
            "the manager survived its VM program ({res:?})"
        );
        m.kill();
        // The dead manager's VM runs on (its orphan), its record there or not, once the
        // killing script has exec'd the real VM program.
        let cvmm_exe = std::fs::canonicalize(cvmm()).unwrap();
        assert!(wait_for(Duration::from_secs(10), || {
            let procs = vm_processes(&base.state);
            !procs.is_empty()
                && procs.iter().all(|p| {
                    std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|e| e == cvmm_exe)
                })
        }));
        let recorded = vm_dirs(&base.state)
            .iter()
            .filter(|d| d.join("vm.json").exists())
            .count();

        let m = Manager::start(&base);
        let dirs = vm_dirs(&m.state());
        let mut c = rt.block_on(client(&m));
        let procs = vm_processes(&base.state);
        for d in &dirs {
            assert!(
                d.join("vm.json").exists(),
                "round {round}: VM directory {} without a record survived the restart",
                d.display()
            );
        }
        assert_eq!(
            procs.len(),
            dirs.len(),
            "round {round}: VM processes {procs:?} for VM dirs {dirs:?}\n{}",
            m.log_text()
        );
        assert!(
            round >= 2 || dirs.is_empty(),
            "round {round}: the VM whose record was deleted was adopted"
        );
        assert!(
            round < 4 || dirs.len() == 1,
            "round {round}: the VM killed after its record was written was not re-adopted\n{}",
            m.log_text()
        );
        if dirs.is_empty() {
            stopped += 1;
            assert!(m.log_has("killed a VM process left without a usable record"));
        } else {
            adopted += 1;
            assert_eq!(recorded, 1, "round {round}: adopted a VM with no record");
            assert!(m.log_has("re-adopted VM"));
        }
        // Whatever was adopted is a full VM: RemoveVm stops it and frees everything.
        for d in dirs {
            let id = d.file_name().unwrap().to_string_lossy().into_owned();
            rt.block_on(c.remove_vm(RemoveReq { cvm_id: id })).unwrap();
        }
        assert_clean(&m, &format!("round {round}"));
    }
    println!("manager kill during CreateVm: {stopped} half-made VMs stopped on restart, {adopted} recorded VMs re-adopted");
    let _ = std::fs::remove_file(killer);
    let _ = std::fs::remove_dir_all(&base.state);
}

#[test]
fn create_vm_fails_cleanly_when_the_state_directory_is_full() {
    if !kvm_available("manager fault") {
        return;
    }
    let can = Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !can {
        println!("SKIPPED: disk-full test needs unshare -m (root)");
        return;
    }
    let mut opts = Opts::new("full");
    opts.tmpfs_kib = Some(512);
    let m = Manager::start(&opts);
    let fill = m.state().join("fill");
    let mut f = std::fs::File::create(&fill).unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        use std::io::Write;
        if let Err(e) = f.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    let full = f.metadata().unwrap().len() / 4096 * 4096;
    drop(f);
    let rt = rt();
    let mut c = rt.block_on(client(&m));

    // No space at all: the spec cannot be written, no VM is started. The message is the OS
    // error text as the Go manager returned it (spec §4.8), naming the file.
    let err = rt.block_on(c.create_vm(req())).unwrap_err();
    let msg = err.message();
    let in_state = format!(" {}/", opts.state.display());
    assert!(
        (msg.starts_with("open ") || msg.starts_with("write "))
            && msg.contains(&in_state)
            && msg.ends_with("/spec.tmp: no space left on device"),
        "{err:?}"
    );
    assert_clean(&m, "disk full before the spec");

    // One free page: the spec fits, the VM starts, its record does not fit: the VM is stopped.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&fill)
        .unwrap()
        .set_len(full - 4096)
        .unwrap();
    let err = rt.block_on(c.create_vm(req())).unwrap_err();
    assert!(
        err.message().ends_with(": no space left on device"),
        "{err:?}"
    );
    assert!(
        m.log_has("could not persist the VM record, stopping the VM"),
        "the spec did not fit either:\n{}",
        m.log_text()
    );
    assert_clean(&m, "disk full at the record");
    assert!(m.log_has("CreateVm failed"), "{}", m.log_text());

    // With room again CreateVm works.
    std::fs::remove_file(&fill).unwrap();
    let res = rt.block_on(c.create_vm(req())).unwrap().into_inner();
    rt.block_on(c.remove_vm(RemoveReq { cvm_id: res.cvm_id }))
        .unwrap();
    assert_clean(&m, "after space was freed");
    drop(m);
    let _ = std::fs::remove_dir_all(&opts.state);
}
