//! The control socket of a VM process (`cvmm vm --control PATH`): a unix stream socket in the
//! VM's state directory through which the manager asks for the VM's state and boot phases and
//! asks it to stop. One JSON request line per connection, one JSON answer line:
//!
//! - `{"op":"status"}` → `{"name":..,"pid":..,"state":"running","phases":[{"phase":..,"us":..},..]}`
//! - `{"op":"stop"}` → `{"ok":true}`, then the VM stops as on SIGTERM.
//! - `{"op":"powerdown"}` → `{"ok":true}` once the VM's ACPI power button has been pressed
//!   (the guest decides what to do: an OS shuts down and powers off); `{"error":..}` when the
//!   VM process has no button to press.
//!
//! Requests are bounded (a line of at most [`MAX_REQUEST`] bytes, read within [`IO_TIMEOUT`]);
//! connections are served one at a time, so clients wait up to [`CLIENT_TIMEOUT`];
//! anything else gets `{"error":...}` and the connection is closed. The server thread runs
//! under its own seccomp filter.

use crate::timeline::Timeline;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 256;
/// How long one connection may take to send its request or read the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a client waits for the server (which may be busy with another client).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of the control socket (server set-up and client calls), naming the socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: bad answer {answer:?}")]
    BadAnswer { path: PathBuf, answer: String },
    #[error("control socket {path}: {op} refused: {message}")]
    Refused {
        path: PathBuf,
        op: &'static str,
        message: String,
    },
    #[error("control socket {path}: the VM still runs {waited:?} after {what}")]
    StillRunning {
        path: PathBuf,
        what: &'static str,
        waited: Duration,
    },
}

/// How long [`powerdown_and_wait`] waits for a VM it stopped to end.
pub const STOP_WAIT: Duration = Duration::from_secs(30);
/// How often a waiting client looks whether the VM has ended.
const GONE_POLL: Duration = Duration::from_millis(20);

/// How a [`powerdown_and_wait`] ended: the VM is gone either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerdownOutcome {
    /// The guest powered off this long after the press.
    PoweredOff(Duration),
    /// The guest was still running at the end of the wait, and the VM was stopped.
    Stopped,
}

/// What the server answers to `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    pub name: String,
    pub pid: u32,
    pub state: String,
    pub phases: Vec<Phase>,
}

/// One boot phase, microseconds since the VM process started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    pub phase: String,
    pub us: u64,
}

#[derive(Deserialize)]
struct Request {
    op: String,
}

/// Called when a client asks the VM to stop.
pub type StopHook = Box<dyn Fn() + Send>;
/// Called when a client asks for a power-button press; an error is answered to the client.
pub type PowerdownHook = Box<dyn Fn() -> std::io::Result<()> + Send>;

/// What the server does on requests that act on the VM.
pub struct ControlHooks {
    /// `stop`.
    pub on_stop: StopHook,
    /// `powerdown`; `None`: the request is refused (no button to press).
    pub on_powerdown: Option<PowerdownHook>,
}

impl ControlHooks {
    /// Hooks that only stop.
    pub fn stop_only(on_stop: StopHook) -> Self {
        Self {
            on_stop,
            on_powerdown: None,
        }
    }
}

/// A running control server (its thread ends with the process). The socket file stays: it
/// lives in the VM's state directory, which its owner removes (a stale file is replaced at the
/// next bind); the VM's own filters do not let it unlink files.
pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A bound, not yet served control socket (bind it before file access is confined; serve it
/// once the thread that serves it can inherit the confinement).
pub struct BoundControl {
    listener: UnixListener,
    server: ControlServer,
}

/// Binds `path`, replacing a stale socket file (never another kind of file).
pub fn bind(path: &Path) -> Result<BoundControl, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            std::fs::remove_file(path).map_err(io)?
        }
        _ => {}
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    Ok(BoundControl {
        listener,
        server: ControlServer {
            path: path.to_path_buf(),
        },
    })
}

impl BoundControl {
    /// Serves the socket from a thread named `control` (no `powerdown`).
    pub fn serve(
        self,
        name: String,
        timeline: Timeline,
        on_stop: StopHook,
    ) -> Result<ControlServer, ControlError> {
        self.serve_with(name, timeline, ControlHooks::stop_only(on_stop))
    }

    /// Serves the socket from a thread named `control` with `hooks`.
    pub fn serve_with(
        self,
        name: String,
        timeline: Timeline,
        hooks: ControlHooks,
    ) -> Result<ControlServer, ControlError> {
        let BoundControl { listener, server } = self;
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve(listener, name, timeline, hooks))
            .map_err(|source| ControlError::Io {
                path: server.path.clone(),
                source,
            })?;
        tracing::debug!(socket = %server.path.display(), "control socket listening");
        Ok(server)
    }
}

/// Binds `path` and serves it at once (see [`bind`] and [`BoundControl::serve`]).
pub fn start(
    path: &Path,
    name: String,
    timeline: Timeline,
    on_stop: StopHook,
) -> Result<ControlServer, ControlError> {
    bind(path)?.serve(name, timeline, on_stop)
}

/// Binds `path` and serves it at once with `hooks`.
pub fn start_with(
    path: &Path,
    name: String,
    timeline: Timeline,
    hooks: ControlHooks,
) -> Result<ControlServer, ControlError> {
    bind(path)?.serve_with(name, timeline, hooks)
}

fn serve(listener: UnixListener, name: String, timeline: Timeline, hooks: ControlHooks) {
    if let Err(e) = seccomp::install(seccomp::ThreadKind::Control) {
        tracing::error!("control socket disabled: {e}");
        return;
    }
    for conn in listener.incoming() {
        match conn {
            Ok(s) => {
                if let Err(e) = handle(s, &name, &timeline, &hooks) {
                    tracing::debug!("control connection: {e}");
                }
            }
            Err(e) => tracing::warn!("control socket accept: {e}"),
        }
    }
}

fn handle(
    stream: UnixStream,
    name: &str,
    timeline: &Timeline,
    hooks: &ControlHooks,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = String::new();
    let read = BufReader::new((&stream).take(MAX_REQUEST as u64 + 1)).read_line(&mut line);
    let mut out = &stream;
    let answer = match serde_json::from_str::<Request>(line.trim_end()) {
        _ if line.len() > MAX_REQUEST => error("request too long"),
        _ if read.is_err() || line.is_empty() => error("no request line"),
        Ok(r) if r.op == "status" => status_line(name, timeline),
        Ok(r) if r.op == "stop" => {
            out.write_all(b"{\"ok\":true}\n")?;
            tracing::info!("stop requested on the control socket");
            (hooks.on_stop)();
            return Ok(());
        }
        Ok(r) if r.op == "powerdown" => match &hooks.on_powerdown {
            Some(press) => match press() {
                Ok(()) => {
                    tracing::info!("power button pressed on the control socket");
                    "{\"ok\":true}\n".to_string()
                }
                Err(e) => error(&format!("powerdown: cannot press the power button: {e}")),
            },
            None => error("powerdown: this VM process has no power button to press"),
        },
        Ok(r) => error(&format!("unknown op {:?}", r.op)),
        Err(e) => error(&format!("bad request: {e}")),
    };
    out.write_all(answer.as_bytes())
}

fn error(msg: &str) -> String {
    format!("{}\n", serde_json::json!({ "error": msg }))
}

fn status_line(name: &str, timeline: &Timeline) -> String {
    let phases = timeline
        .events()
        .into_iter()
        .map(|e| Phase {
            phase: match (e.vcpu, e.code) {
                (Some(v), _) => format!("{}[vcpu{v}]", e.phase),
                (None, Some(c)) => format!("{}:{c:#04x}", e.phase),
                (None, None) => e.phase,
            },
            us: e.us,
        })
        .collect();
    let s = VmStatus {
        name: name.to_string(),
        pid: std::process::id(),
        state: "running".into(),
        phases,
    };
    format!(
        "{}\n",
        serde_json::to_string(&s).unwrap_or_else(|_| "{}".into())
    )
}

fn call(path: &Path, request: &str) -> Result<String, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(io)?;
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    s.write_all(request.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(s.take(1 << 20))
        .read_line(&mut answer)
        .map_err(io)?;
    Ok(answer)
}

/// Asks the VM behind `path` for its status.
pub fn status(path: &Path) -> Result<VmStatus, ControlError> {
    let answer = call(path, "{\"op\":\"status\"}\n")?;
    serde_json::from_str(answer.trim_end()).map_err(|_| ControlError::BadAnswer {
        path: path.to_path_buf(),
        answer,
    })
}

/// Presses the ACPI power button of the VM behind `path` (the guest then shuts down if its
/// OS handles the button; the VM keeps running until it powers off).
pub fn powerdown(path: &Path) -> Result<(), ControlError> {
    let answer = call(path, "{\"op\":\"powerdown\"}\n")?;
    if answer.trim_end() == "{\"ok\":true}" {
        return Ok(());
    }
    match serde_json::from_str::<serde_json::Value>(answer.trim_end())
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
    {
        Some(message) => Err(ControlError::Refused {
            path: path.to_path_buf(),
            op: "powerdown",
            message,
        }),
        None => Err(ControlError::BadAnswer {
            path: path.to_path_buf(),
            answer,
        }),
    }
}

/// Presses the power button of the VM behind `path` and waits up to `wait` for the VM to end
/// (its socket refuses connections or is gone). A VM still running then is an error, or with
/// `force` is stopped (as SIGTERM does) and waited for up to [`STOP_WAIT`].
pub fn powerdown_and_wait(
    path: &Path,
    wait: Duration,
    force: bool,
) -> Result<PowerdownOutcome, ControlError> {
    powerdown(path)?;
    let pressed = std::time::Instant::now();
    if wait_gone(path, wait) {
        return Ok(PowerdownOutcome::PoweredOff(pressed.elapsed()));
    }
    let still = |what, waited| ControlError::StillRunning {
        path: path.to_path_buf(),
        what,
        waited,
    };
    if !force {
        return Err(still("the power button press", wait));
    }
    tracing::warn!(socket = %path.display(), ?wait, "the guest did not power off; stopping the VM");
    match stop(path) {
        // Gone between the last look and the stop: it powered off after all.
        Err(ControlError::Io { source, .. }) if is_gone(&source) => {
            return Ok(PowerdownOutcome::PoweredOff(pressed.elapsed()));
        }
        other => other?,
    }
    if wait_gone(path, STOP_WAIT) {
        Ok(PowerdownOutcome::Stopped)
    } else {
        Err(still("the stop request", STOP_WAIT))
    }
}

/// Whether a connect error says no VM serves the socket any more (a VM that exited leaves its
/// socket file behind, refusing connections).
fn is_gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

/// Looks every [`GONE_POLL`] whether the VM behind `path` has ended, for up to `limit`.
fn wait_gone(path: &Path, limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Err(e) = UnixStream::connect(path) {
            if is_gone(&e) {
                return true;
            }
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(GONE_POLL);
    }
}

/// Asks the VM behind `path` to stop (it acknowledges before it starts stopping).
pub fn stop(path: &Path) -> Result<(), ControlError> {
    let answer = call(path, "{\"op\":\"stop\"}\n")?;
    if answer.trim_end() == "{\"ok\":true}" {
        Ok(())
    } else {
        Err(ControlError::BadAnswer {
            path: path.to_path_buf(),
            answer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn sock(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("cvmm-ctl-{}-{tag}.sock", std::process::id()))
    }

    #[test]
    fn status_lists_the_phases_and_stop_calls_the_hook() {
        let path = sock("a");
        let tl = Timeline::new();
        tl.mark("kvm_vm_created");
        tl.mark_vcpu("first_kvm_run", 0);
        let stops = Arc::new(AtomicUsize::new(0));
        let s2 = stops.clone();
        let server = start(
            &path,
            "vm-1".into(),
            tl,
            Box::new(move || {
                s2.fetch_add(1, Ordering::SeqCst);
            }),
        )
        .unwrap();
        let st = status(&path).unwrap();
        assert_eq!((st.name.as_str(), st.state.as_str()), ("vm-1", "running"));
        assert_eq!(st.pid, std::process::id());
        let names: Vec<_> = st.phases.iter().map(|p| p.phase.as_str()).collect();
        assert_eq!(
            names,
            ["process_start", "kvm_vm_created", "first_kvm_run[vcpu0]"]
        );
        assert_eq!(stops.load(Ordering::SeqCst), 0);
        stop(&path).unwrap();
        // The hook runs right after the answer is written.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while stops.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(stops.load(Ordering::SeqCst), 1);
        assert_eq!(server.path(), path);
        let _ = std::fs::remove_file(&path);
        assert!(matches!(status(&path), Err(ControlError::Io { .. })));
    }

    #[test]
    fn bad_requests_get_errors_and_the_server_keeps_serving() {
        let path = sock("b");
        let _server = start(&path, "vm-2".into(), Timeline::new(), Box::new(|| {})).unwrap();
        for bad in [
            "not json\n".to_string(),
            "{\"op\":\"reboot\"}\n".to_string(),
            format!("{{\"op\":\"{}\"}}\n", "x".repeat(400)),
            String::new(),
        ] {
            let a = call(&path, &bad).unwrap();
            assert!(a.starts_with("{\"error\""), "{bad:?} -> {a:?}");
        }
        // A client that connects and says nothing is timed out, not served forever.
        let idle = UnixStream::connect(&path).unwrap();
        assert_eq!(status(&path).unwrap().name, "vm-2");
        drop(idle);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn powerdown_calls_its_hook_or_is_refused_without_one() {
        let path = sock("p");
        let presses = Arc::new(AtomicUsize::new(0));
        let p2 = presses.clone();
        let _server = start_with(
            &path,
            "vm-4".into(),
            Timeline::new(),
            ControlHooks {
                on_stop: Box::new(|| panic!("powerdown is not stop")),
                on_powerdown: Some(Box::new(move || {
                    p2.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })),
            },
        )
        .unwrap();
        powerdown(&path).unwrap();
        assert_eq!(
            presses.load(Ordering::SeqCst),
            1,
            "pressed before the answer"
        );
        assert_eq!(
            status(&path).unwrap().state,
            "running",
            "the VM keeps running"
        );

        let failing = sock("q");
        let _s2 = start_with(
            &failing,
            "vm-5".into(),
            Timeline::new(),
            ControlHooks {
                on_stop: Box::new(|| {}),
                on_powerdown: Some(Box::new(|| Err(std::io::Error::other("eventfd full")))),
            },
        )
        .unwrap();
        let e = powerdown(&failing).unwrap_err().to_string();
        assert!(
            e.contains("powerdown refused") && e.contains("eventfd full"),
            "{e}"
        );

        let plain = sock("r");
        let _s3 = start(&plain, "vm-6".into(), Timeline::new(), Box::new(|| {})).unwrap();
        let e = powerdown(&plain).unwrap_err().to_string();
        assert!(e.contains("no power button"), "{e}");
        for p in [path, failing, plain] {
            let _ = std::fs::remove_file(p);
        }
    }

    /// A server whose power button and stop hooks count their calls and, when told to, make
    /// the VM "end" 100 ms later (its socket file goes away: connecting fails, as it does to
    /// an exited VM).
    fn vm_with(
        tag: &str,
        ends_on_press: bool,
        ends_on_stop: bool,
    ) -> (PathBuf, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let path = sock(tag);
        let (presses, stops) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let end_later = |path: PathBuf| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                let _ = std::fs::remove_file(path);
            });
        };
        let (p2, s2, path_p, path_s) = (presses.clone(), stops.clone(), path.clone(), path.clone());
        start_with(
            &path,
            tag.into(),
            Timeline::new(),
            ControlHooks {
                on_stop: Box::new(move || {
                    s2.fetch_add(1, Ordering::SeqCst);
                    if ends_on_stop {
                        end_later(path_s.clone());
                    }
                }),
                on_powerdown: Some(Box::new(move || {
                    p2.fetch_add(1, Ordering::SeqCst);
                    if ends_on_press {
                        end_later(path_p.clone());
                    }
                    Ok(())
                })),
            },
        )
        .unwrap();
        (path, presses, stops)
    }

    /// powerdown with a wait: a guest that powers off ends the wait (not stopped); one that
    /// ignores the press is an error naming the socket and the wait, and keeps running; with
    /// force it is stopped after the wait.
    #[test]
    fn powerdown_and_wait_reports_power_off_timeout_or_forced_stop() {
        let wait = Duration::from_secs(5);
        let (path, presses, stops) = vm_with("w1", true, false);
        let outcome = powerdown_and_wait(&path, wait, true).unwrap();
        let PowerdownOutcome::PoweredOff(after) = outcome else {
            panic!("{outcome:?}")
        };
        assert!(
            after >= Duration::from_millis(100) && after < wait,
            "{after:?}"
        );
        assert_eq!(
            (presses.load(Ordering::SeqCst), stops.load(Ordering::SeqCst)),
            (1, 0)
        );

        let (path, presses, stops) = vm_with("w2", false, true);
        let e = powerdown_and_wait(&path, Duration::from_millis(300), false).unwrap_err();
        assert!(
            matches!(&e, ControlError::StillRunning { what, waited, .. }
                if *what == "the power button press" && *waited == Duration::from_millis(300)),
            "{e:?}"
        );
        assert!(e.to_string().contains(path.to_str().unwrap()), "{e}");
        assert_eq!(status(&path).unwrap().state, "running");
        assert_eq!(
            (presses.load(Ordering::SeqCst), stops.load(Ordering::SeqCst)),
            (1, 0)
        );
        let outcome = powerdown_and_wait(&path, Duration::from_millis(300), true).unwrap();
        assert_eq!(outcome, PowerdownOutcome::Stopped);
        assert_eq!(
            (presses.load(Ordering::SeqCst), stops.load(Ordering::SeqCst)),
            (2, 1)
        );
        assert!(matches!(status(&path), Err(ControlError::Io { .. })));
    }

    #[test]
    fn a_stale_socket_file_is_replaced_but_other_files_are_not() {
        let path = sock("c");
        let old = UnixListener::bind(&path).unwrap();
        drop(old); // leaves the socket file behind, as a killed VM would
        let server = start(&path, "vm-3".into(), Timeline::new(), Box::new(|| {})).unwrap();
        assert_eq!(status(&path).unwrap().name, "vm-3");
        drop(server);
        let _ = std::fs::remove_file(&path);
        let file = sock("d");
        std::fs::write(&file, b"not a socket").unwrap();
        assert!(start(&file, "x".into(), Timeline::new(), Box::new(|| {})).is_err());
        assert_eq!(std::fs::read(&file).unwrap(), b"not a socket");
        let _ = std::fs::remove_file(&file);
    }
}
