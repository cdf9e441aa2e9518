//! The thread that starts device workers while the guest runs. It is started before any filter
//! and installs the union filter of its children, so a worker's filter stack is exactly
//! (spawner ∩ own kind) rather than inheriting the narrow list of the vCPU that activated it.

use crate::{install, mode, Mode, SeccompError, ThreadKind};
use std::io;
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

type Body = Box<dyn FnOnce() + Send>;
type Reply = Sender<io::Result<JoinHandle<()>>>;

struct Job {
    name: String,
    kind: ThreadKind,
    body: Body,
    reply: Reply,
}

static SPAWNER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();

/// Starts the spawner thread once.
pub(crate) fn start() -> Result<(), SeccompError> {
    if SPAWNER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel::<Job>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), SeccompError>>();
    std::thread::Builder::new()
        .name("spawner".into())
        .spawn(move || {
            let installed = install(ThreadKind::Spawner);
            let ok = installed.is_ok();
            let _ = ready_tx.send(installed);
            if !ok {
                return;
            }
            for job in rx {
                let _ = job.reply.send(start_child(job.name, job.kind, job.body));
            }
        })
        .map_err(|e| SeccompError::Install {
            kind: ThreadKind::Spawner.name(),
            reason: format!("cannot start the spawner thread: {e}"),
        })?;
    ready_rx.recv().map_err(|_| SeccompError::Install {
        kind: ThreadKind::Spawner.name(),
        reason: "the spawner thread died".into(),
    })??;
    let _ = SPAWNER.set(Mutex::new(tx));
    Ok(())
}

fn start_child(name: String, kind: ThreadKind, body: Body) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(move || {
        if let Err(e) = install(kind) {
            // Refuse to touch guest data unfiltered.
            tracing::error!(error = %e, "not starting the thread");
            return;
        }
        body()
    })
}

/// Starts `body` on a new thread named `name` that first installs the filter of `kind`. With
/// filters on, the thread is created by the spawner; without, directly.
pub fn spawn<F>(name: &str, kind: ThreadKind, body: F) -> io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let body: Body = Box::new(body);
    let sender = match (mode(), SPAWNER.get()) {
        (Mode::Off, _) | (_, None) => return start_child(name.to_string(), kind, body),
        (_, Some(s)) => s.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    };
    let (reply, answer) = mpsc::channel();
    sender
        .send(Job {
            name: name.to_string(),
            kind,
            body,
            reply,
        })
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}
