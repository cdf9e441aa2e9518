//! TCP proxying between smoltcp sockets (the guest side) and host `TcpStream`s.
//!
//! Outbound: a guest SYN to a new 4-tuple is held back while a non-blocking host connect runs.
//! When it succeeds, a smoltcp socket listening on exactly (destination ip, port) is created
//! and the held SYN is fed to smoltcp, which completes the handshake; when it fails the guest
//! gets a RST. Inbound: connections accepted on a forward listener get a smoltcp socket that
//! connects from 10.0.2.2 to the guest port. Both then run the same bounded byte pump.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{Socket, SocketBuffer, State};
use smoltcp::wire::IpListenEndpoint;
use vmm_sys_util::epoll::{Epoll, EventSet};

use super::config::{Limits, PortForward, GATEWAY_IP, GUEST_IP};
use super::device::FrameDevice;
use super::sys::{close_with_reset, connect_nonblocking, connect_result, set_interest};
use super::wire::TcpInfo;
use super::NetError;

/// (guest ip, guest port, destination ip, destination port) of a guest-initiated connection.
pub(crate) type Tuple = (Ipv4Addr, u16, Ipv4Addr, u16);

/// Ephemeral ports 10.0.2.2 uses for forwarded connections.
const EPHEMERAL: std::ops::RangeInclusive<u16> = 49152..=65535;
/// smoltcp gives up on a connection whose data is not acknowledged for this long.
const ACK_TIMEOUT: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(120);

/// What the caller should do with a guest TCP segment.
pub(crate) enum Verdict {
    ToSmoltcp,
    Drop,
    Refuse,
}

/// Everything the TCP NAT operates on besides its own tables.
pub(crate) struct Ctx<'a> {
    pub iface: &'a mut Interface,
    pub sockets: &'a mut SocketSet<'static>,
    pub dev: &'a mut FrameDevice,
    pub epoll: &'a Epoll,
    pub now: smoltcp::time::Instant,
}

struct Pending {
    syn: Vec<u8>,
    seg: TcpInfo,
    host: TcpStream,
    started: Instant,
    token: u64,
    interest: EventSet,
}

struct Conn {
    handle: SocketHandle,
    host: Option<TcpStream>,
    token: u64,
    interest: EventSet,
    host_eof: bool,
    host_wr_shut: bool,
    guest_fin: bool,
    tuple: Option<Tuple>,
    local_port: Option<u16>,
}

struct Forward {
    listener: TcpListener,
    guest_port: u16,
    token: u64,
    interest: EventSet,
}

pub(crate) struct TcpNat {
    conns: HashMap<u64, Conn>,
    by_tuple: HashMap<Tuple, u64>,
    pending: HashMap<Tuple, Pending>,
    forwards: Vec<Forward>,
    used_ports: HashSet<u16>,
    next_port: u16,
    limits: Limits,
    /// Guest SYNs whose host connect failed; the caller answers them with RSTs.
    pub refused: Vec<(Tuple, TcpInfo)>,
    /// Connections accepted on the forward listeners so far.
    pub accepted: u64,
}

impl TcpNat {
    pub fn new(
        forwards: Vec<PortForward>,
        limits: Limits,
        token: &mut impl FnMut() -> u64,
    ) -> Result<Self, NetError> {
        let mut fwd = Vec::with_capacity(forwards.len());
        for f in forwards {
            f.listener
                .set_nonblocking(true)
                .map_err(|source| NetError::Listener {
                    guest_port: f.guest_port,
                    source,
                })?;
            fwd.push(Forward {
                listener: f.listener,
                guest_port: f.guest_port,
                token: token(),
                interest: EventSet::empty(),
            });
        }
        Ok(TcpNat {
            conns: HashMap::new(),
            by_tuple: HashMap::new(),
            pending: HashMap::new(),
            forwards: fwd,
            used_ports: HashSet::new(),
            next_port: *EPHEMERAL.start(),
            limits,
            refused: Vec::new(),
            accepted: 0,
        })
    }

    /// Active connections and connects in progress.
    pub fn counts(&self) -> (usize, usize) {
        (self.conns.len(), self.pending.len())
    }

    /// Host sockets currently open for connections (pending connects included).
    pub fn host_sockets(&self) -> usize {
        self.pending.len() + self.conns.values().filter(|c| c.host.is_some()).count()
    }

    /// Largest number of bytes buffered in any connection's smoltcp socket.
    pub fn max_buffered(&self, sockets: &SocketSet<'static>) -> usize {
        self.conns
            .values()
            .map(|c| {
                let s = sockets.get::<Socket>(c.handle);
                s.send_queue() + s.recv_queue()
            })
            .max()
            .unwrap_or(0)
    }

    /// Decides about a guest segment; a SYN to a new tuple starts a host connect to `dst`.
    pub fn guest_segment(
        &mut self,
        epoll: &Epoll,
        tuple: Tuple,
        seg: &TcpInfo,
        frame: &[u8],
        dst: Option<SocketAddr>,
        token: u64,
    ) -> Verdict {
        if self.by_tuple.contains_key(&tuple) {
            return Verdict::ToSmoltcp;
        }
        if let Some(p) = self.pending.get_mut(&tuple) {
            if seg.rst {
                tracing::debug!(?tuple, "guest reset a connection still being connected");
                self.drop_pending(epoll, &tuple);
            } else if seg.syn && !seg.ack {
                p.syn = frame.to_vec(); // a retransmission: keep the newest
                p.seg = *seg;
            }
            return Verdict::Drop;
        }
        if !seg.syn || seg.ack {
            return Verdict::ToSmoltcp; // smoltcp resets segments of unknown connections
        }
        if self.conns.len() + self.pending.len() >= self.limits.max_tcp {
            tracing::warn!(
                ?tuple,
                max = self.limits.max_tcp,
                "TCP connection limit reached"
            );
            return Verdict::Refuse;
        }
        let Some(dst) = dst else {
            return Verdict::Refuse;
        };
        match connect_nonblocking(dst) {
            Ok(host) => {
                tracing::debug!(?tuple, %dst, "outbound connect started");
                let mut p = Pending {
                    syn: frame.to_vec(),
                    seg: *seg,
                    host,
                    started: Instant::now(),
                    token,
                    interest: EventSet::empty(),
                };
                let fd = p.host.as_raw_fd();
                set_interest(epoll, fd, token, &mut p.interest, EventSet::OUT);
                self.pending.insert(tuple, p);
                Verdict::Drop
            }
            Err(e) => {
                tracing::debug!(?tuple, %dst, error = %e, "outbound connect failed");
                Verdict::Refuse
            }
        }
    }

    fn drop_pending(&mut self, epoll: &Epoll, tuple: &Tuple) -> Option<Pending> {
        let mut p = self.pending.remove(tuple)?;
        let fd = p.host.as_raw_fd();
        set_interest(epoll, fd, p.token, &mut p.interest, EventSet::empty());
        Some(p)
    }

    /// Finishes host connects: established ones get their SYN handed to smoltcp, failed or
    /// timed-out ones are queued in `refused`.
    pub fn poll_pending(&mut self, cx: &mut Ctx, now: Instant) {
        let tuples: Vec<Tuple> = self.pending.keys().copied().collect();
        for tuple in tuples {
            let Some(p) = self.pending.get(&tuple) else {
                continue;
            };
            let outcome = match connect_result(&p.host) {
                Ok(false) if now.duration_since(p.started) < self.limits.connect_timeout => {
                    continue
                }
                Ok(false) => Err(io::Error::from(io::ErrorKind::TimedOut)),
                other => other,
            };
            let Some(p) = self.drop_pending(cx.epoll, &tuple) else {
                continue;
            };
            match outcome {
                Ok(_) => self.activate(cx, tuple, p),
                Err(e) => {
                    tracing::debug!(?tuple, error = %e, "host refused outbound connection");
                    self.refused.push((tuple, p.seg));
                }
            }
        }
    }

    fn new_socket(&self) -> Socket<'static> {
        let mut s = Socket::new(
            SocketBuffer::new(vec![0u8; self.limits.tcp_rx_buffer]),
            SocketBuffer::new(vec![0u8; self.limits.tcp_tx_buffer]),
        );
        s.set_nagle_enabled(false);
        s.set_timeout(Some(ACK_TIMEOUT));
        s
    }

    fn activate(&mut self, cx: &mut Ctx, tuple: Tuple, p: Pending) {
        let (_, _, dst_ip, dst_port) = tuple;
        let mut sock = self.new_socket();
        let ep = IpListenEndpoint {
            addr: Some(dst_ip.into()),
            port: dst_port,
        };
        if let Err(e) = sock.listen(ep) {
            tracing::warn!(?tuple, error = %e, "cannot listen for guest SYN");
            close_with_reset(p.host);
            self.refused.push((tuple, p.seg));
            return;
        }
        let handle = cx.sockets.add(sock);
        // Feed the held SYN alone, so that this socket (the only one listening on the
        // endpoint right now) is the one that takes it.
        cx.dev.from_guest.push_front(p.syn);
        cx.iface.poll(cx.now, cx.dev, cx.sockets);
        if cx.sockets.get::<Socket>(handle).state() == State::Listen {
            tracing::warn!(?tuple, "smoltcp did not take the guest SYN");
            cx.sockets.remove(handle);
            close_with_reset(p.host);
            return;
        }
        let _ = p.host.set_nodelay(true);
        tracing::debug!(?tuple, "outbound connection established");
        self.by_tuple.insert(tuple, p.token);
        self.conns.insert(
            p.token,
            Conn::new(handle, p.host, p.token, Some(tuple), None),
        );
    }

    /// Accepts host connections on the forward listeners and connects them into the guest.
    pub fn accept_forwards(&mut self, cx: &mut Ctx, token: &mut impl FnMut() -> u64) {
        for i in 0..self.forwards.len() {
            while self.conns.len() + self.pending.len() < self.limits.max_tcp {
                let guest_port = self.forwards[i].guest_port;
                let (stream, peer) = match self.forwards[i].listener.accept() {
                    Ok(x) => {
                        self.accepted += 1;
                        x
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!(guest_port, error = %e, "accept failed");
                        break;
                    }
                };
                let Some(port) = self.alloc_port() else {
                    tracing::warn!("no free ephemeral port for a forwarded connection");
                    close_with_reset(stream);
                    continue;
                };
                let mut sock = self.new_socket();
                if let Err(e) = sock.connect(
                    cx.iface.context(),
                    (GUEST_IP, guest_port),
                    (GATEWAY_IP, port),
                ) {
                    tracing::warn!(guest_port, error = %e, "cannot connect into the guest");
                    self.used_ports.remove(&port);
                    close_with_reset(stream);
                    continue;
                }
                if stream.set_nonblocking(true).is_err() {
                    self.used_ports.remove(&port);
                    continue;
                }
                let _ = stream.set_nodelay(true);
                tracing::debug!(%peer, guest_port, local_port = port, "forwarded connection");
                let handle = cx.sockets.add(sock);
                let t = token();
                self.conns
                    .insert(t, Conn::new(handle, stream, t, None, Some(port)));
            }
        }
    }

    fn alloc_port(&mut self) -> Option<u16> {
        let span = usize::from(EPHEMERAL.end() - EPHEMERAL.start()) + 1;
        for _ in 0..span {
            let port = self.next_port;
            self.next_port = if port == *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                port + 1
            };
            if self.used_ports.insert(port) {
                return Some(port);
            }
        }
        None
    }

    /// Moves bytes between every connection's smoltcp socket and its host socket.
    pub fn pump_all(&mut self, cx: &mut Ctx) {
        for conn in self.conns.values_mut() {
            let sock = cx.sockets.get_mut::<Socket>(conn.handle);
            conn.pump(sock, cx.epoll);
        }
    }

    /// Frees connections whose both sides are done.
    pub fn reap(&mut self, cx: &mut Ctx) {
        let done: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.host.is_none()
                    && matches!(
                        cx.sockets.get::<Socket>(c.handle).state(),
                        State::Closed | State::TimeWait
                    )
            })
            .map(|(t, _)| *t)
            .collect();
        for t in done {
            if let Some(c) = self.conns.remove(&t) {
                cx.sockets.remove(c.handle);
                if let Some(tuple) = c.tuple {
                    self.by_tuple.remove(&tuple);
                }
                if let Some(port) = c.local_port {
                    self.used_ports.remove(&port);
                }
                tracing::debug!(tuple = ?c.tuple, local_port = ?c.local_port, "connection freed");
            }
        }
    }

    /// Registers in epoll exactly the readiness each host socket can be served on now.
    pub fn update_interest(&mut self, epoll: &Epoll, sockets: &SocketSet<'static>) {
        for c in self.conns.values_mut() {
            let Some(host) = c.host.as_ref() else {
                continue;
            };
            let sock = sockets.get::<Socket>(c.handle);
            let mut want = EventSet::empty();
            if !c.host_eof && sock.can_send() {
                want |= EventSet::IN;
            }
            if sock.recv_queue() > 0 {
                want |= EventSet::OUT;
            }
            set_interest(epoll, host.as_raw_fd(), c.token, &mut c.interest, want);
        }
        let room = self.conns.len() + self.pending.len() < self.limits.max_tcp;
        for f in &mut self.forwards {
            let want = if room {
                EventSet::IN
            } else {
                EventSet::empty()
            };
            set_interest(
                epoll,
                f.listener.as_raw_fd(),
                f.token,
                &mut f.interest,
                want,
            );
        }
    }

    /// When the oldest pending connect times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| p.started + self.limits.connect_timeout)
            .min()
    }
}

impl Conn {
    fn new(
        handle: SocketHandle,
        host: TcpStream,
        token: u64,
        tuple: Option<Tuple>,
        local_port: Option<u16>,
    ) -> Self {
        Conn {
            handle,
            host: Some(host),
            token,
            interest: EventSet::empty(),
            host_eof: false,
            host_wr_shut: false,
            guest_fin: false,
            tuple,
            local_port,
        }
    }

    fn close_host(&mut self, epoll: &Epoll, reset: bool) {
        if let Some(host) = self.host.take() {
            set_interest(
                epoll,
                host.as_raw_fd(),
                self.token,
                &mut self.interest,
                EventSet::empty(),
            );
            if reset {
                close_with_reset(host);
            }
        }
    }

    /// One round of proxying; carries FIN and RST across.
    fn pump(&mut self, sock: &mut Socket, epoll: &Epoll) {
        if self.host.is_none() {
            return;
        }
        let state = sock.state();
        if matches!(
            state,
            State::CloseWait | State::LastAck | State::Closing | State::TimeWait
        ) {
            self.guest_fin = true;
        }
        if state == State::Closed && !(self.guest_fin && self.host_eof) {
            tracing::debug!(tuple = ?self.tuple, "guest side reset or timed out; resetting host");
            self.close_host(epoll, true);
            return;
        }
        let Some(host) = self.host.as_mut() else {
            return;
        };
        let result =
            host_to_guest(host, sock, &mut self.host_eof).and_then(|()| guest_to_host(host, sock));
        if let Err(e) = result {
            tracing::debug!(tuple = ?self.tuple, error = %e, "host side failed; resetting guest");
            sock.abort();
            self.close_host(epoll, true);
            return;
        }
        if self.guest_fin && !self.host_wr_shut && sock.recv_queue() == 0 {
            if let Err(e) = host.shutdown(Shutdown::Write) {
                tracing::debug!(error = %e, "host shutdown failed");
            }
            self.host_wr_shut = true;
        }
        if self.host_eof && self.host_wr_shut {
            self.close_host(epoll, false);
        }
    }
}

/// Reads from the host only into the free space of the smoltcp send buffer.
fn host_to_guest(host: &mut TcpStream, sock: &mut Socket, eof: &mut bool) -> io::Result<()> {
    while !*eof && sock.can_send() {
        let r = sock.send(|buf| {
            if buf.is_empty() {
                return (0, Ok(None));
            }
            match host.read(buf) {
                Ok(n) => (n, Ok(Some(n))),
                Err(e) => (0, Err(e)),
            }
        });
        match r {
            Ok(Ok(Some(0))) => {
                *eof = true;
                sock.close(); // FIN after the queued data
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => break,
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => break,
        }
    }
    Ok(())
}

/// Writes to the host only what it accepts; the rest stays in the smoltcp receive buffer
/// (which closes the guest's window: backpressure).
fn guest_to_host(host: &mut TcpStream, sock: &mut Socket) -> io::Result<()> {
    while sock.can_recv() {
        let r = sock.recv(|buf| match host.write(buf) {
            Ok(n) => (n, Ok(n)),
            Err(e) => (0, Err(e)),
        });
        match r {
            Ok(Ok(0)) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => break,
        }
    }
    Ok(())
}
