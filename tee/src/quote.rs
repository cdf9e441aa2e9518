//! TDX GetQuote (spec §6 step 8): the guest's shared buffer holds a 24-byte header and a
//! TDREPORT; cvmm forwards the report to the Quote Generation Service (QGS) and writes the quote
//! and a status back. QGS framing: a 4-byte big-endian length, then a QGS message (header
//! `{u16 major = 1, u16 minor = 1, u32 type, u32 size, u32 error_code}`; GET_QUOTE_REQ adds
//! `{u32 report_size, u32 id_list_size}` + report, GET_QUOTE_RESP `{u32 selected_id_size,
//! u32 quote_size}` + quote). The QGS listens on vsock CID 2 port 4050; `unix:PATH` and
//! `tcp:HOST:PORT` are accepted too. One deadline bounds the whole exchange, connect included
//! (the connect and every write and read wait only for the time left), so a QGS that never
//! accepts, or accepts and then stays silent or trickles its answer, ends in an error status,
//! not a worker held forever. A vsock connect is bounded by the kernel (2 s by default).

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

use zerocopy::{FromBytes, IntoBytes};

use crate::uapi::{
    TdxGetQuoteHeader, TDVMCALL_STATUS_ALIGN_ERROR, TDVMCALL_STATUS_INVALID_OPERAND,
    TDVMCALL_STATUS_RETRY, TDVMCALL_STATUS_SUCCESS,
};
use crate::TeeError;

/// Where the host QGS listens by default.
pub const QGS_VSOCK_CID: u32 = 2;
pub const QGS_VSOCK_PORT: u32 = 4050;

/// `structure_version` of the GetQuote buffer header.
pub const GET_QUOTE_STRUCTURE_VERSION: u64 = 1;
/// `error_code` values of the GetQuote buffer header.
pub const GET_QUOTE_SUCCESS: u64 = 0;
pub const GET_QUOTE_IN_FLIGHT: u64 = u64::MAX;
pub const GET_QUOTE_ERROR: u64 = 0x8000_0000_0000_0000;
pub const GET_QUOTE_QGS_UNAVAILABLE: u64 = 0x8000_0000_0000_0001;
/// Largest GetQuote buffer cvmm serves, and most requests in flight at once.
pub const MAX_GET_QUOTE_BUF: u64 = 128 << 10;
pub const MAX_QUOTES_IN_FLIGHT: usize = 16;

const HDR: usize = std::mem::size_of::<TdxGetQuoteHeader>();
const QGS_MAJOR: u16 = 1;
const QGS_MINOR: u16 = 1;
pub const QGS_GET_QUOTE_REQ: u32 = 0;
pub const QGS_GET_QUOTE_RESP: u32 = 1;
/// QGS message header + the two u32 fields of GET_QUOTE_REQ / GET_QUOTE_RESP.
pub const QGS_MSG_LEN: usize = 24;

/// Address of the Quote Generation Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QgsAddr {
    Vsock {
        cid: u32,
        port: u32,
    },
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

impl Default for QgsAddr {
    fn default() -> Self {
        QgsAddr::Vsock {
            cid: QGS_VSOCK_CID,
            port: QGS_VSOCK_PORT,
        }
    }
}

impl fmt::Display for QgsAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QgsAddr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            QgsAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            QgsAddr::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl FromStr for QgsAddr {
    type Err = TeeError;

    /// `vsock:CID:PORT`, `vsock:PORT` (CID 2), `unix:PATH` or `tcp:HOST:PORT`.
    fn from_str(s: &str) -> Result<Self, TeeError> {
        let bad = |why: &str| {
            TeeError::input(
                "QGS address",
                format!("{s:?}: {why} (expected vsock:CID:PORT, unix:PATH or tcp:HOST:PORT)"),
            )
        };
        let num = |v: &str| v.parse::<u32>().map_err(|_| bad("not a number"));
        match s.split_once(':') {
            Some(("vsock", rest)) => match rest.split_once(':') {
                Some((cid, port)) => Ok(QgsAddr::Vsock {
                    cid: num(cid)?,
                    port: num(port)?,
                }),
                None => Ok(QgsAddr::Vsock {
                    cid: QGS_VSOCK_CID,
                    port: num(rest)?,
                }),
            },
            Some(("unix", p)) if !p.is_empty() => Ok(QgsAddr::Unix(p.into())),
            Some(("tcp", a)) => match a.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {
                    Ok(QgsAddr::Tcp(a.to_string()))
                }
                _ => Err(bad("bad HOST:PORT")),
            },
            _ => Err(bad("unknown form")),
        }
    }
}

/// Why a quote could not be obtained; maps to the GetQuote `error_code`.
#[derive(Debug, thiserror::Error)]
pub enum QuoteError {
    #[error("QGS at {addr} unavailable: {source}")]
    Unavailable {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("QGS at {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("QGS at {addr} sent a bad response: {reason}")]
    Protocol { addr: String, reason: String },
    #[error("QGS at {addr} did not complete the exchange within {deadline:?}")]
    Timeout { addr: String, deadline: Duration },
}

impl QuoteError {
    /// The GetQuote `error_code` the guest sees.
    pub fn status(&self) -> u64 {
        match self {
            QuoteError::Unavailable { .. } => GET_QUOTE_QGS_UNAVAILABLE,
            _ => GET_QUOTE_ERROR,
        }
    }
}

/// The framed GET_QUOTE_REQ for a TDREPORT: length prefix, QGS header, report.
pub fn encode_request(report: &[u8]) -> Vec<u8> {
    let size = (QGS_MSG_LEN + report.len()) as u32;
    let mut m = Vec::with_capacity(4 + size as usize);
    m.extend_from_slice(&size.to_be_bytes());
    m.extend_from_slice(&QGS_MAJOR.to_le_bytes());
    m.extend_from_slice(&QGS_MINOR.to_le_bytes());
    m.extend_from_slice(&QGS_GET_QUOTE_REQ.to_le_bytes());
    m.extend_from_slice(&size.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes()); // error_code
    m.extend_from_slice(&(report.len() as u32).to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes()); // id_list_size
    m.extend_from_slice(report);
    m
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The quote in a GET_QUOTE_RESP message (without the length prefix).
pub fn decode_response(msg: &[u8]) -> Result<Vec<u8>, String> {
    if msg.len() < QGS_MSG_LEN {
        return Err(format!(
            "message of {} bytes is shorter than its header",
            msg.len()
        ));
    }
    let (major, minor) = (
        u16::from_le_bytes([msg[0], msg[1]]),
        u16::from_le_bytes([msg[2], msg[3]]),
    );
    let (kind, size, error, selected, quote_len) = (
        le32(msg, 4),
        le32(msg, 8) as usize,
        le32(msg, 12),
        le32(msg, 16),
        le32(msg, 20) as usize,
    );
    if (major, minor) != (QGS_MAJOR, QGS_MINOR) {
        return Err(format!("version {major}.{minor}, expected 1.1"));
    }
    if kind != QGS_GET_QUOTE_RESP {
        return Err(format!("message type {kind}, expected GET_QUOTE_RESP (1)"));
    }
    if error != 0 {
        return Err(format!("QGS error code {error:#x}"));
    }
    if size != msg.len() || selected != 0 || QGS_MSG_LEN + quote_len != msg.len() {
        return Err(format!(
            "sizes disagree: message {} bytes, header size {size}, selected id {selected}, \
             quote {quote_len}",
            msg.len()
        ));
    }
    Ok(msg[QGS_MSG_LEN..].to_vec())
}

trait Stream: Read + Write + AsRawFd {}
impl<T: Read + Write + AsRawFd> Stream for T {}

/// Sets `SO_RCVTIMEO` or `SO_SNDTIMEO` of a socket (never to zero, which would mean "wait
/// forever").
fn set_socket_timeout(fd: RawFd, opt: libc::c_int, timeout: Duration) -> io::Result<()> {
    let micros = timeout.as_micros().max(1);
    let tv = libc::timeval {
        tv_sec: (micros / 1_000_000) as libc::time_t,
        tv_usec: (micros % 1_000_000) as libc::suseconds_t,
    };
    // SAFETY: `tv` is a valid timeval of the given size that outlives the call; a bad fd only
    // makes the call fail.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn connect_vsock(cid: u32, port: u32) -> io::Result<std::fs::File> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket we own; OwnedFd closes it on every path.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes that outlives the call. The kernel
    // bounds a vsock connect itself (2 s by default).
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::fs::File::from(fd))
}

fn connect(addr: &QgsAddr, deadline: Instant) -> io::Result<Box<dyn Stream>> {
    Ok(match addr {
        QgsAddr::Vsock { cid, port } => Box::new(connect_vsock(*cid, *port)?),
        QgsAddr::Unix(p) => {
            let s = connect_by(Domain::UNIX, &SockAddr::unix(p)?, deadline)?;
            Box::new(UnixStream::from(OwnedFd::from(s)))
        }
        QgsAddr::Tcp(a) => {
            let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address");
            for sa in a.as_str().to_socket_addrs()? {
                match connect_by(Domain::for_address(sa), &sa.into(), deadline) {
                    Ok(s) => return Ok(Box::new(TcpStream::from(OwnedFd::from(s)))),
                    Err(e) => last = e,
                }
            }
            return Err(last);
        }
    })
}

/// A stream socket connected to `addr` by `deadline`, blocking again afterwards. A TCP
/// connect waits in poll(2) for the time left; a unix socket whose listener's queue is full
/// (EAGAIN: that QGS accepts nothing) is tried again every 10 ms until the deadline.
fn connect_by(domain: Domain, addr: &SockAddr, deadline: Instant) -> io::Result<Socket> {
    let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "connect: the QGS deadline passed");
    let s = Socket::new(domain, Type::STREAM, None)?;
    if domain != Domain::UNIX {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        s.connect_timeout(addr, left)?;
        return Ok(s);
    }
    s.set_nonblocking(true)?;
    loop {
        match s.connect(addr) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(timed_out());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
    s.set_nonblocking(false)?;
    Ok(s)
}

/// A QGS connection whose reads and writes share one deadline: before each call the socket's
/// timeout is set to the time left, and once it has passed every call fails with `TimedOut`.
struct DeadlineStream {
    inner: Box<dyn Stream>,
    deadline: Instant,
}

impl DeadlineStream {
    /// Sets the socket timeout `opt` to the time left; fails once the deadline has passed.
    fn arm(&self, opt: libc::c_int) -> io::Result<()> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the QGS deadline has passed",
            ));
        }
        set_socket_timeout(self.inner.as_raw_fd(), opt, left)
    }

    fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm(libc::SO_RCVTIMEO)?;
        self.inner.read(buf)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm(libc::SO_SNDTIMEO)?;
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Sends a TDREPORT to the QGS and returns the quote (at most `max_len` bytes). The whole
/// exchange (connect, request out, answer in) must finish within `deadline`.
pub fn request_quote(
    addr: &QgsAddr,
    report: &[u8],
    max_len: usize,
    deadline: Duration,
) -> Result<Vec<u8>, QuoteError> {
    let name = addr.to_string();
    let until = Instant::now() + deadline;
    let inner = connect(addr, until).map_err(|source| {
        if source.kind() == io::ErrorKind::TimedOut {
            QuoteError::Timeout {
                addr: name.clone(),
                deadline,
            }
        } else {
            QuoteError::Unavailable {
                addr: name.clone(),
                source,
            }
        }
    })?;
    let mut s = DeadlineStream {
        inner,
        deadline: until,
    };
    // A socket timeout (EAGAIN) or the deadline itself: both mean the time ran out.
    let io_err = |s: &DeadlineStream, source: io::Error| {
        let timed_out = matches!(
            source.kind(),
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
        );
        if timed_out || s.expired() {
            QuoteError::Timeout {
                addr: name.clone(),
                deadline,
            }
        } else {
            QuoteError::Io {
                addr: name.clone(),
                source,
            }
        }
    };
    s.write_all(&encode_request(report))
        .map_err(|e| io_err(&s, e))?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(|e| io_err(&s, e))?;
    let len = u32::from_be_bytes(len) as usize;
    if len < QGS_MSG_LEN || len > QGS_MSG_LEN + max_len {
        return Err(QuoteError::Protocol {
            addr: name,
            reason: format!(
                "length prefix {len} not in {QGS_MSG_LEN}..={}",
                QGS_MSG_LEN + max_len
            ),
        });
    }
    let mut msg = vec![0u8; len];
    s.read_exact(&mut msg).map_err(|e| io_err(&s, e))?;
    decode_response(&msg).map_err(|reason| QuoteError::Protocol { addr: name, reason })
}

/// A GetQuote request taken from the guest buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteJob {
    pub buf_gpa: u64,
    /// Bytes available for the quote after the header.
    pub capacity: usize,
    pub header: TdxGetQuoteHeader,
    pub report: Vec<u8>,
}

/// Checks the `(gpa, size)` of a GetQuote exit; `Err` holds the TDVMCALL status to return.
pub fn check_get_quote_args(gpa: u64, size: u64) -> Result<(), u64> {
    if size == 0 || size > MAX_GET_QUOTE_BUF {
        return Err(TDVMCALL_STATUS_INVALID_OPERAND);
    }
    if (gpa | size) & 0xfff != 0 {
        return Err(TDVMCALL_STATUS_ALIGN_ERROR);
    }
    Ok(())
}

/// Parses the guest buffer (header + payload, `buf.len()` = the exit's size).
pub fn parse_get_quote(buf_gpa: u64, buf: &[u8]) -> Result<QuoteJob, u64> {
    let (header, payload) =
        TdxGetQuoteHeader::read_from_prefix(buf).map_err(|_| TDVMCALL_STATUS_INVALID_OPERAND)?;
    let in_len = header.in_len as usize;
    if header.structure_version != GET_QUOTE_STRUCTURE_VERSION || in_len > payload.len() {
        return Err(TDVMCALL_STATUS_INVALID_OPERAND);
    }
    Ok(QuoteJob {
        buf_gpa,
        capacity: payload.len(),
        header,
        report: payload[..in_len].to_vec(),
    })
}

/// The header bytes with a new status (and `out_len`).
pub fn header_with(h: &TdxGetQuoteHeader, error_code: u64, out_len: u32) -> [u8; HDR] {
    let mut out = [0u8; HDR];
    let h = TdxGetQuoteHeader {
        error_code,
        out_len,
        ..*h
    };
    out.copy_from_slice(h.as_bytes());
    out
}

/// Guest memory the quote path reads and writes (the shared GetQuote buffer).
pub trait SharedMemory: Send + Sync {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write(&self, gpa: u64, data: &[u8]) -> io::Result<()>;
}

/// Starts a GetQuote worker thread named by the first argument that runs the body. The VMM
/// passes one that gives the thread its own seccomp filter.
pub type Spawner = Arc<dyn Fn(&str, Box<dyn FnOnce() + Send>) -> io::Result<()> + Send + Sync>;

/// The default [`Spawner`]: a plain `std::thread`.
fn std_spawner() -> Spawner {
    Arc::new(|name, body| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(body)
            .map(|_| ())
    })
}

/// Serves GetQuote requests: validates them, marks the buffer in flight, forwards the report to
/// the QGS on a worker thread, writes the quote and status back and calls the completion hook
/// (which injects the event-notify vector).
#[derive(Clone)]
pub struct QuoteService {
    qgs: Option<QgsAddr>,
    deadline: Duration,
    in_flight: Arc<AtomicUsize>,
    spawner: Spawner,
}

impl fmt::Debug for QuoteService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuoteService")
            .field("qgs", &self.qgs)
            .field("deadline", &self.deadline)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish()
    }
}

impl QuoteService {
    /// `qgs = None`: every request completes at once with QGS_UNAVAILABLE. Each exchange with
    /// the QGS must finish within `deadline` after the connect, or the guest gets GET_QUOTE_ERROR.
    pub fn new(qgs: Option<QgsAddr>, deadline: Duration) -> Self {
        QuoteService {
            qgs,
            deadline,
            in_flight: Arc::new(AtomicUsize::new(0)),
            spawner: std_spawner(),
        }
    }

    /// Starts the workers with `spawner` instead of `std::thread`.
    pub fn with_spawner(mut self, spawner: Spawner) -> Self {
        self.spawner = spawner;
        self
    }

    /// Where requests go (`None`: nowhere, every request is answered QGS_UNAVAILABLE).
    pub fn qgs(&self) -> Option<&QgsAddr> {
        self.qgs.as_ref()
    }

    /// Handles one GetQuote exit and returns the TDVMCALL status for `kvm_run`. On SUCCESS
    /// with a QGS, `done` runs on the worker after the buffer is updated.
    pub fn get_quote(
        &self,
        mem: Arc<dyn SharedMemory>,
        gpa: u64,
        size: u64,
        done: Box<dyn FnOnce() + Send>,
    ) -> u64 {
        if let Err(ret) = check_get_quote_args(gpa, size) {
            return ret;
        }
        let mut buf = vec![0u8; size as usize];
        if let Err(e) = mem.read(gpa, &mut buf) {
            tracing::warn!(gpa, size, error = %e, "GetQuote: cannot read the shared buffer");
            return TDVMCALL_STATUS_INVALID_OPERAND;
        }
        let job = match parse_get_quote(gpa, &buf) {
            Ok(j) => j,
            Err(ret) => return ret,
        };
        let Some(qgs) = self.qgs.clone() else {
            let hdr = header_with(&job.header, GET_QUOTE_QGS_UNAVAILABLE, 0);
            return match mem.write(gpa, &hdr) {
                Ok(()) => TDVMCALL_STATUS_SUCCESS,
                Err(_) => TDVMCALL_STATUS_INVALID_OPERAND,
            };
        };
        if self.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_QUOTES_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return TDVMCALL_STATUS_RETRY;
        }
        if mem
            .write(gpa, &header_with(&job.header, GET_QUOTE_IN_FLIGHT, 0))
            .is_err()
        {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return TDVMCALL_STATUS_INVALID_OPERAND;
        }
        let (in_flight, deadline) = (self.in_flight.clone(), self.deadline);
        let spawned = (self.spawner)(
            "tdx-quote",
            Box::new(move || {
                let result = request_quote(&qgs, &job.report, job.capacity, deadline);
                complete(&*mem, &job, result);
                in_flight.fetch_sub(1, Ordering::SeqCst);
                done();
            }),
        );
        match spawned {
            Ok(_) => TDVMCALL_STATUS_SUCCESS,
            Err(e) => {
                tracing::warn!(error = %e, "GetQuote: cannot start the worker");
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                TDVMCALL_STATUS_RETRY
            }
        }
    }
}

/// Writes the outcome into the guest buffer: the quote first, then the header with its status.
pub fn complete(mem: &dyn SharedMemory, job: &QuoteJob, result: Result<Vec<u8>, QuoteError>) {
    let (status, out_len) = match result {
        Ok(q) if q.len() <= job.capacity => match mem.write(job.buf_gpa + HDR as u64, &q) {
            Ok(()) => (GET_QUOTE_SUCCESS, q.len() as u32),
            Err(e) => {
                tracing::warn!(gpa = job.buf_gpa, error = %e, "GetQuote: cannot write the quote");
                (GET_QUOTE_ERROR, 0)
            }
        },
        Ok(q) => {
            tracing::warn!(
                len = q.len(),
                capacity = job.capacity,
                "GetQuote: quote too large"
            );
            (GET_QUOTE_ERROR, 0)
        }
        Err(e) => {
            tracing::warn!(error = %e, "GetQuote failed");
            (e.status(), 0)
        }
    };
    if let Err(e) = mem.write(job.buf_gpa, &header_with(&job.header, status, out_len)) {
        tracing::warn!(gpa = job.buf_gpa, error = %e, "GetQuote: cannot update the header");
    }
}

#[cfg(test)]
#[path = "quote_tests.rs"]
mod tests;
