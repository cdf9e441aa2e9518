//! A device worker thread: waits on its eventfds with epoll and stops when told to. Virtio
//! device models run their queue processing on one of these once the driver activates them.

use std::os::fd::{AsRawFd, RawFd};
use std::thread::JoinHandle;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// What woke the worker.
pub enum Wake {
    /// The worker must stop.
    Stop,
    /// One of the watched fds is ready; the value is the token it was registered with.
    Ready(u64),
}

/// The epoll set a worker waits on; token `u64::MAX` is reserved for the stop eventfd.
pub struct WorkerPoll {
    epoll: Epoll,
    stop: EventFd,
}

const STOP_TOKEN: u64 = u64::MAX;

impl WorkerPoll {
    /// Watches `fd` for input, reporting `token` when it is ready.
    pub fn watch(&self, fd: RawFd, token: u64) -> std::io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
    }

    /// Stops watching `fd`.
    pub fn unwatch(&self, fd: RawFd) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Waits up to `timeout_ms` (-1: forever) and returns what is ready (empty on timeout).
    pub fn wait(&self, timeout_ms: i32) -> Vec<Wake> {
        let mut events = [EpollEvent::default(); 16];
        let n = match self.epoll.wait(timeout_ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => {
                tracing::error!("device worker epoll failed: {e}");
                return vec![Wake::Stop];
            }
        };
        events[..n]
            .iter()
            .map(|e| match e.data() {
                STOP_TOKEN => Wake::Stop,
                t => Wake::Ready(t),
            })
            .collect()
    }
}

/// A running worker thread.
pub struct Worker {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `body` on a thread named `name` under the seccomp filter of `kind` (installed
    /// before `body` runs); `body` gets the poll set to register its fds in.
    pub fn spawn<F>(name: &str, kind: seccomp::ThreadKind, body: F) -> std::io::Result<Self>
    where
        F: FnOnce(WorkerPoll) + Send + 'static,
    {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        let poll = WorkerPoll {
            epoll,
            stop: stop.try_clone()?,
        };
        let handle = seccomp::spawn(name, kind, move || body(poll))?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    /// Asks the worker to stop and waits for it.
    pub fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = self.stop.write(1);
            if h.join().is_err() {
                tracing::error!("a device worker thread panicked");
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

impl WorkerPoll {
    /// The stop eventfd (for workers that nest their own waits).
    pub fn stop_fd(&self) -> RawFd {
        self.stop.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn worker_sees_its_fd_and_stops_on_request() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let seen = Arc::new(AtomicU32::new(0));
        let (e2, s2) = (evt.try_clone().unwrap(), seen.clone());
        let mut w = Worker::spawn("test-worker", seccomp::ThreadKind::Net, move |poll| {
            poll.watch(e2.as_raw_fd(), 7).unwrap();
            loop {
                for wake in poll.wait(-1) {
                    match wake {
                        Wake::Stop => return,
                        Wake::Ready(t) => {
                            assert_eq!(t, 7);
                            let _ = e2.read();
                            s2.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
        })
        .unwrap();
        evt.write(1).unwrap();
        for _ in 0..1000 {
            if seen.load(Ordering::SeqCst) > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        w.stop();
        w.stop(); // idempotent
    }
}
