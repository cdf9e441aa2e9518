//! The manager's launcher: one thread, started before any filter, that runs the closures
//! starting VM processes. A filter survives fork and execve, so a VM forked by a filtered
//! manager thread would carry the manager's list into its own run; forked here, a VM process
//! starts unfiltered and installs the filters of its own threads.

use crate::{SeccompError, ThreadKind};
use std::io;
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

static LAUNCHER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();

/// Starts the launcher thread once.
pub(crate) fn start() -> Result<(), SeccompError> {
    if LAUNCHER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("launcher".into())
        .spawn(move || {
            for job in rx {
                job();
            }
        })
        .map_err(|e| SeccompError::Install {
            kind: ThreadKind::Manager.name(),
            reason: format!("cannot start the launcher thread: {e}"),
        })?;
    let _ = LAUNCHER.set(Mutex::new(tx));
    Ok(())
}

/// Runs `f` on the launcher thread (no filter) and returns its result; without a launcher
/// (filters off, or not the manager), runs it on the calling thread.
pub fn run_unfiltered<T, F>(f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let Some(launcher) = LAUNCHER.get() else {
        return Ok(f());
    };
    let (reply, result) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = reply.send(f());
    });
    let gone = || io::Error::other("the unfiltered launcher thread is gone");
    launcher
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| gone())?;
    result.recv().map_err(|_| gone())
}
