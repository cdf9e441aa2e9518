//! Test harness: a manager on 127.0.0.1 ephemeral ports with a fake VM program (a shell
//! script), a private state directory, and a gRPC client. Dropping it stops the manager and
//! kills any VM process still recorded, so no test leaves processes, ports or files behind.

#![allow(dead_code)]

use api::pb::manager_service_client::ManagerServiceClient;
use api::{ApiError, ManagerConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// Fake VM programs. Each records the name of its fd 3 and its arguments next to its spec.
/// Blocks (opening `$r/block.fifo`, which nobody writes) as the shell itself, with no child
/// process, so it keeps the `vm --spec FILE` arguments a re-adopting manager checks, and dies
/// of SIGTERM.
pub const SLEEPER: &str = "read x < \"$r/block.fifo\"";
/// Ignores SIGTERM (an ignored signal stays ignored across exec).
pub const STUBBORN: &str = "trap '' TERM\nexec sleep 300";
/// Fails at once.
pub const FAILS: &str = "exit 3";

static NEXT: AtomicU32 = AtomicU32::new(0);
/// Numbers the forwarded-port ranges apart from the scratch directories, so the 40 ranges of
/// a test binary only repeat after 40 managers.
static NEXT_RANGE: AtomicU32 = AtomicU32::new(0);

/// A loopback port free now, for a test's own one-port range: above the harnesses' ranges and
/// below the ephemeral ports, never the same twice in a test process.
pub fn lone_port() -> u16 {
    static NEXT_LONE: AtomicU32 = AtomicU32::new(0);
    let start = (std::process::id() % 1000) * 2;
    for _ in 0..2000 {
        let n = NEXT_LONE.fetch_add(1, Ordering::SeqCst);
        let port = 30000 + ((start + n) % 2000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in 30000-31999");
}

/// A running manager.
pub struct Harness {
    pub root: PathBuf,
    pub state: PathBuf,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    range: (u16, u16),
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ApiError>>>,
}

/// A scratch directory for one test.
pub fn scratch() -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let root = std::env::temp_dir().join(format!("cvmm-api-it-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// Writes the fake VM program with `body` into `root` (which the script knows as `$r`), next
/// to the FIFO [`SLEEPER`] blocks on.
pub fn fake_vm(root: &Path, body: &str) -> PathBuf {
    let exe = root.join("fake-vm.sh");
    let fifo = std::ffi::CString::new(
        root.join("block.fifo")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: mkfifo on a NUL-terminated path we own.
    let made = unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) };
    assert!(
        made == 0 || std::io::Error::last_os_error().kind() == std::io::ErrorKind::AlreadyExists,
        "mkfifo {fifo:?}"
    );
    let script = format!(
        "#!/bin/sh\nr='{}'\nd=$(dirname \"$3\")\nreadlink /proc/$$/fd/3 > \"$d/fd3.tmp\"; mv \"$d/fd3.tmp\" \"$d/fd3\"\necho \"$@\" > \"$d/args\"\n{body}\n",
        root.display()
    );
    std::fs::write(&exe, script).unwrap();
    std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    exe
}

/// Configuration for a test manager; `extra` overrides or adds variables. The kernel and
/// initrd it names are (empty) files under `root`: CreateVm checks they exist.
pub fn config(root: &Path, state: &Path, exe: &Path, extra: &[(&str, String)]) -> ManagerConfig {
    let (kernel, initrd) = (root.join("bzImage"), root.join("initrd.img"));
    for f in [&kernel, &initrd] {
        if !f.exists() {
            std::fs::write(f, b"").unwrap();
        }
    }
    let n = NEXT_RANGE.fetch_add(1, Ordering::SeqCst) as u16;
    // Below Linux's ephemeral ports (32768 and up): no `bind(0)` listener of another harness
    // and no outgoing connection can sit in the range.
    let base = 20000 + (std::process::id() as u16 % 50) * 200 + (n % 40) * 5;
    let mut vars: Vec<(String, String)> = vec![
        ("MANAGER_VMM_EXE".into(), exe.display().to_string()),
        ("MANAGER_STATE_DIR".into(), state.display().to_string()),
        ("MANAGER_VMM_HOST_FWD_ADDR".into(), "127.0.0.1".into()),
        (
            "MANAGER_QEMU_HOST_FWD_RANGE".into(),
            format!("{base}-{}", base + 4),
        ),
        ("MANAGER_VMM_TEE".into(), "none".into()),
        (
            "MANAGER_QEMU_DISK_IMG_KERNEL_FILE".into(),
            kernel.display().to_string(),
        ),
        (
            "MANAGER_QEMU_DISK_IMG_ROOTFS_FILE".into(),
            initrd.display().to_string(),
        ),
        ("MANAGER_VMM_STOP_TIMEOUT".into(), "5s".into()),
    ];
    for (k, v) in extra {
        vars.retain(|(name, _)| name != k);
        vars.push((k.to_string(), v.clone()));
    }
    ManagerConfig::from_vars(vars).unwrap()
}

impl Harness {
    /// Starts a manager with a fake VM running `body`.
    pub async fn start(body: &str, extra: &[(&str, String)]) -> Self {
        let root = scratch();
        let exe = fake_vm(&root, body);
        let state = root.join("state");
        let cfg = config(&root, &state, &exe, extra);
        Self::start_with(root, cfg).await
    }

    /// Starts a manager with a prepared config.
    pub async fn start_with(root: PathBuf, cfg: ManagerConfig) -> Self {
        let state = cfg.state_dir.clone();
        let range = cfg.vm.host_fwd_range;
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc_addr, http_addr) = (grpc.local_addr().unwrap(), http.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(api::serve_on(cfg, grpc, http, async {
            let _ = rx.await;
        }));
        Self {
            root,
            state,
            grpc: grpc_addr,
            http: http_addr,
            range,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// A plaintext client.
    pub async fn client(&self) -> ManagerServiceClient<Channel> {
        let ch = Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        ManagerServiceClient::new(ch)
    }

    /// Stops the manager (VMs keep running) and returns how `serve` ended.
    pub async fn shutdown(&mut self) -> Result<(), ApiError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => t.await.unwrap(),
            None => Ok(()),
        }
    }

    /// The forwarded-port range (first, last).
    pub fn range(&self) -> (u16, u16) {
        self.range
    }

    /// The state directory of one VM.
    pub fn vm_dir(&self, id: &str) -> PathBuf {
        self.state.join(id)
    }

    /// `GET path` on the HTTP side server: (status line, body).
    pub async fn http_get(&self, path: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.http).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text))
            .await
            .unwrap()
            .unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    }

    /// The value of one metrics line, e.g. `manager_vms_running`.
    pub async fn metric(&self, name: &str) -> Option<String> {
        let (_, body) = self.http_get("/metrics").await;
        body.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(' '))
                .map(str::to_string)
        })
    }
}

/// Waits (bounded) until `cond` holds; panics with `what` otherwise.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Kills every VM process still recorded under `state` (best effort) and reaps it.
pub fn kill_recorded(state: &Path) {
    let Ok(dirs) = std::fs::read_dir(state) else {
        return;
    };
    for d in dirs.flatten() {
        let Ok(rec) = std::fs::read(d.path().join("vm.json")) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&rec) else {
            continue;
        };
        if let Some(pid) = v.get("pid").and_then(|p| p.as_i64()) {
            // SAFETY: signalling and reaping a test-owned child process.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
                libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG);
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        kill_recorded(&self.state);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
