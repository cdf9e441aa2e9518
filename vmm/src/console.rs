//! The guest console on the host: serial output buffered per line (the UART flushes every
//! byte, which would cost a syscall per character), and host stdin fed into the UART.

use crate::error::{Result, VmmError};
use crate::spec::SerialSpec;
use devices::bus::lock;
use devices::legacy::SerialPort;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex};

const FLUSH_AT: usize = 4096;

struct Inner {
    buf: Vec<u8>,
    sink: Box<dyn Write + Send>,
}

/// Where guest serial output goes; cheap to clone.
#[derive(Clone)]
pub struct ConsoleOutput(Arc<Mutex<Inner>>);

impl ConsoleOutput {
    /// Opens the destination named by `spec`; the flag says whether host stdin feeds the guest.
    pub fn open(spec: &SerialSpec) -> Result<(Self, bool)> {
        let (sink, stdin): (Box<dyn Write + Send>, bool) = match spec {
            SerialSpec::Stdio => (Box::new(std::io::stdout()), true),
            SerialSpec::None => (Box::new(std::io::sink()), false),
            SerialSpec::File(p) => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| VmmError::Input(format!("--serial file:{}: {e}", p.display())))?;
                (Box::new(f), false)
            }
        };
        Ok((Self::from_sink(sink), stdin))
    }

    /// Output into any writer (tests).
    pub fn from_sink(sink: Box<dyn Write + Send>) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            buf: Vec::with_capacity(FLUSH_AT),
            sink,
        })))
    }

    /// Writes out whatever is buffered.
    pub fn flush_pending(&self) {
        let mut g = lock(&self.0);
        let Inner { buf, sink } = &mut *g;
        if !buf.is_empty() {
            let _ = sink.write_all(buf);
            let _ = sink.flush();
            buf.clear();
        }
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut g = lock(&self.0);
            g.buf.extend_from_slice(data);
            g.buf.len() >= FLUSH_AT || data.contains(&b'\n')
        };
        if full {
            self.flush_pending();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // The UART flushes after every byte; real flushes happen per line, when the buffer
        // fills, and on the event loop's tick.
        Ok(())
    }
}

/// Feeds host stdin into the guest UART.
pub struct ConsoleInput {
    serial: Arc<Mutex<SerialPort>>,
}

impl ConsoleInput {
    /// Input for `serial`.
    pub fn new(serial: Arc<Mutex<SerialPort>>) -> Self {
        Self { serial }
    }
}

fn stdin_fd() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(0) }
}

impl MutEventSubscriber for ConsoleInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let n = nix_read(stdin_fd().as_raw_fd(), &mut buf);
        if n <= 0 || events.event_set().contains(EventSet::HANG_UP) {
            // EOF or error: stop watching stdin.
            let _ = ops.remove(Events::new(&stdin_fd(), EventSet::IN));
            return;
        }
        let n = n as usize;
        let taken = lock(&self.serial).enqueue_input(&buf[..n]);
        if taken < n {
            tracing::debug!(dropped = n - taken, "guest UART receive FIFO full");
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&stdin_fd(), EventSet::IN)) {
            tracing::debug!("stdin is not pollable, guest console input disabled: {e:?}");
        }
    }
}

fn nix_read(fd: i32, buf: &mut [u8]) -> isize {
    // SAFETY: `buf` is a valid writable buffer of the given length.
    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_is_written_per_line_and_on_flush() {
        let sink = Sink::default();
        let mut out = ConsoleOutput::from_sink(Box::new(sink.clone()));
        out.write_all(b"abc").unwrap();
        assert!(sink.0.lock().unwrap().is_empty());
        out.write_all(b"\n").unwrap();
        assert_eq!(&*sink.0.lock().unwrap(), b"abc\n");
        out.write_all(b"xyz").unwrap();
        out.flush_pending();
        assert_eq!(&*sink.0.lock().unwrap(), b"abc\nxyz");
    }

    #[test]
    fn unwritable_serial_file_is_an_input_error() {
        let e = ConsoleOutput::open(&SerialSpec::File("/nonexistent/dir/log".into()))
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent/dir/log"));
    }
}
