//! The probe's network behaviour on top of smoltcp and `vnet`: DHCP, one outbound connection
//! (`probe.connect=`), and a TCP server (`probe.listen=`) that answers one request line per
//! connection: `ECHO <text>`, `GET <tag>/<file>` (streamed from a 9p share) or `ERR`.

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpCidr, Ipv4Address};

use crate::clock::{self, Deadline};
use crate::ninep::Share;
use crate::out::{line_start, put_ip};
use crate::serial::{put_dec, puts};
use crate::text::{escape, parse_request, Request};
use crate::vnet::Net;

/// Port-0x80 code written when the server listens.
pub const POST_NET_READY: u8 = 0x61;
const DHCP_MS: u64 = 30_000;
const OUTBOUND_MS: u64 = 15_000;
const CONN_IDLE_MS: u64 = 15_000;
const LINE_MAX: usize = 512;
const SERVERS: usize = 2;
/// Socket buffers: large enough that a bulk transfer is not window-bound at the probe's RTT.
const RX_BUF: usize = 32 * 1024;
const TX_BUF: usize = 32 * 1024;

/// What the command line asked the network to do.
pub struct Opts {
    /// Listen port (None: no server).
    pub listen: Option<u16>,
    /// Connections to serve before returning (None: forever).
    pub serve: Option<u64>,
    /// Outbound connection target.
    pub connect: Option<([u8; 4], u16)>,
}

fn now() -> Instant {
    Instant::from_millis(clock::now_ms() as i64)
}

fn tcp_socket() -> Option<tcp::Socket<'static>> {
    let rx = crate::arena::alloc(RX_BUF, 64)?;
    let tx = crate::arena::alloc(TX_BUF, 64)?;
    Some(tcp::Socket::new(
        tcp::SocketBuffer::new(rx),
        tcp::SocketBuffer::new(tx),
    ))
}

fn error(what: &[u8]) {
    line_start();
    puts(b"net-error ");
    puts(what);
    puts(b"\n");
}

/// Runs DHCP, the outbound connection and the server; returns when done or on error.
pub fn run(net: &mut Net, shares: &mut [Option<Share>], opts: &Opts) {
    let t0 = clock::now_ms();
    let mut cfg = Config::new(EthernetAddress(net.mac).into());
    cfg.random_seed = clock::rdtsc();
    let mut iface = Interface::new(cfg, net, now());
    let mut storage: [SocketStorage; 2 + SERVERS] = Default::default();
    let mut sockets = SocketSet::new(&mut storage[..]);
    let dhcp = sockets.add(dhcpv4::Socket::new());

    if !dhcp_wait(&mut iface, net, &mut sockets, dhcp) {
        error(b"dhcp-timeout");
        return;
    }
    line_start();
    puts(b"dhcp-ms=");
    put_dec(clock::now_ms().saturating_sub(t0));
    puts(b"\n");

    if let Some((ip, port)) = opts.connect {
        outbound(&mut iface, net, &mut sockets, ip, port);
    }
    if let Some(port) = opts.listen {
        serve(&mut iface, net, &mut sockets, shares, port, opts.serve);
    }
}

fn dhcp_wait(
    iface: &mut Interface,
    net: &mut Net,
    sockets: &mut SocketSet,
    h: SocketHandle,
) -> bool {
    let d = Deadline::after_ms(DHCP_MS);
    while !d.expired() {
        iface.poll(now(), net, sockets);
        if let Some(dhcpv4::Event::Configured(c)) = sockets.get_mut::<dhcpv4::Socket>(h).poll() {
            iface.update_ip_addrs(|a| {
                a.clear();
                let _ = a.push(IpCidr::Ipv4(c.address));
            });
            if let Some(r) = c.router {
                let _ = iface.routes_mut().add_default_ipv4_route(r);
            }
            line_start();
            puts(b"dhcp ip=");
            put_ip(c.address.address().octets());
            puts(b"/");
            put_dec(u64::from(c.address.prefix_len()));
            puts(b" router=");
            put_ip(c.router.map_or([0; 4], |r| r.octets()));
            puts(b" dns=");
            put_ip(c.dns_servers.first().map_or([0; 4], |d| d.octets()));
            puts(b"\n");
            return true;
        }
    }
    false
}

fn outbound(iface: &mut Interface, net: &mut Net, sockets: &mut SocketSet, ip: [u8; 4], port: u16) {
    let Some(sock) = tcp_socket() else {
        return error(b"no-memory");
    };
    let h = sockets.add(sock);
    let local = 49152 + (clock::rdtsc() % 8192) as u16;
    let remote = (Ipv4Address::from(ip), port);
    if sockets
        .get_mut::<tcp::Socket>(h)
        .connect(iface.context(), remote, local)
        .is_err()
    {
        return error(b"outbound-connect");
    }
    let (mut line, mut len, mut sent) = ([0u8; LINE_MAX], 0usize, false);
    let d = Deadline::after_ms(OUTBOUND_MS);
    let result: Result<(), &[u8]> = loop {
        iface.poll(now(), net, sockets);
        let s = sockets.get_mut::<tcp::Socket>(h);
        if d.expired() {
            break Err(b"timeout");
        }
        if !sent && s.may_send() {
            sent = s.send_slice(b"hello from probe\n").is_ok();
        }
        if s.can_recv() {
            let n = s.recv_slice(&mut line[len..]).unwrap_or(0);
            len += n;
            if line[..len].contains(&b'\n') || len == LINE_MAX {
                break Ok(());
            }
        } else if sent && !s.may_recv() {
            break if len > 0 { Ok(()) } else { Err(b"closed") };
        } else if s.state() == tcp::State::Closed {
            break Err(b"refused");
        }
    };
    sockets.get_mut::<tcp::Socket>(h).close();
    match result {
        Ok(()) => {
            let end = line[..len].iter().position(|&c| c == b'\n').unwrap_or(len);
            line_start();
            puts(b"outbound reply=");
            escape(&line[..end], puts);
            puts(b"\n");
        }
        Err(e) => {
            line_start();
            puts(b"outbound-error ");
            puts(e);
            puts(b"\n");
        }
    }
}

/// Where one server connection is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Listening.
    Idle,
    /// Reading the request line.
    Reading,
    /// Sending the file open on share `.0`, next offset `.1`.
    Streaming(usize, u64),
    /// Echoing everything back until the client closes its side.
    Piping,
    /// Dropping what arrives; `.0` bytes so far.
    Sinking(u64),
    /// Sending the pattern; `.0` bytes still to go.
    Sourcing(u64),
    /// Answer queued and FIN sent; waiting for the close to finish.
    Closing,
}

struct Conn {
    h: SocketHandle,
    /// 9p fid this connection opens files as.
    fid: u32,
    phase: Phase,
    line: [u8; LINE_MAX],
    len: usize,
    deadline: Deadline,
}

fn serve(
    iface: &mut Interface,
    net: &mut Net,
    sockets: &mut SocketSet,
    shares: &mut [Option<Share>],
    port: u16,
    limit: Option<u64>,
) {
    let mut conns: [Option<Conn>; SERVERS] = Default::default();
    for (k, c) in conns.iter_mut().enumerate() {
        let Some(mut s) = tcp_socket() else {
            return error(b"no-memory");
        };
        if s.listen(port).is_err() {
            return error(b"listen");
        }
        *c = Some(Conn {
            h: sockets.add(s),
            fid: 2 + k as u32,
            phase: Phase::Idle,
            line: [0; LINE_MAX],
            len: 0,
            deadline: Deadline::after_ms(0),
        });
    }
    crate::serial::post(POST_NET_READY);
    line_start();
    puts(b"net ready\n");
    let mut served = 0u64;
    while limit.is_none_or(|n| served < n) {
        iface.poll(now(), net, sockets);
        for c in conns.iter_mut().flatten() {
            if step(c, sockets.get_mut::<tcp::Socket>(c.h), shares, port) {
                served += 1;
                line_start();
                puts(b"served ");
                put_dec(served);
                puts(b"\n");
            }
        }
    }
}

/// Advances one connection; true when it has just been served completely.
fn step(c: &mut Conn, s: &mut tcp::Socket, shares: &mut [Option<Share>], port: u16) -> bool {
    use tcp::State;
    match s.state() {
        State::Closed => {
            let done = c.phase == Phase::Closing;
            if let Phase::Streaming(i, _) = c.phase {
                close_file(shares, i, c.fid);
            }
            c.phase = Phase::Idle;
            let _ = s.listen(port);
            return done;
        }
        State::TimeWait => {
            // Our FIN and theirs are both acknowledged: free the socket for the next client.
            s.abort();
            return false;
        }
        State::Listen | State::SynReceived => return false,
        _ => {}
    }
    if c.phase == Phase::Idle {
        c.phase = Phase::Reading;
        c.len = 0;
        c.deadline = Deadline::after_ms(CONN_IDLE_MS);
    }
    if c.deadline.expired() {
        if let Phase::Streaming(i, _) = c.phase {
            close_file(shares, i, c.fid);
        }
        c.phase = Phase::Idle;
        s.abort();
        return false;
    }
    match c.phase {
        Phase::Reading => read_request(c, s, shares),
        Phase::Streaming(i, off) => stream(c, s, shares, i, off),
        Phase::Piping => pipe(c, s),
        Phase::Sinking(n) => sink(c, s, n),
        Phase::Sourcing(left) => source(c, s, left),
        Phase::Idle | Phase::Closing => {}
    }
    false
}

fn finish(c: &mut Conn, s: &mut tcp::Socket, reply: &[u8]) {
    let _ = s.send_slice(reply);
    s.close();
    c.phase = Phase::Closing;
}

fn read_request(c: &mut Conn, s: &mut tcp::Socket, shares: &mut [Option<Share>]) {
    if s.can_recv() {
        c.len += s.recv_slice(&mut c.line[c.len..]).unwrap_or(0);
    }
    let Some(nl) = c.line[..c.len].iter().position(|&b| b == b'\n') else {
        if c.len == LINE_MAX || !s.may_recv() {
            finish(c, s, b"ERR\n");
        }
        return;
    };
    let line = c.line;
    match parse_request(&line[..nl]) {
        Request::Echo(text) => {
            let _ = s.send_slice(text);
            finish(c, s, b"\n");
        }
        Request::Bad => finish(c, s, b"ERR\n"),
        Request::Sink => {
            c.phase = Phase::Sinking((c.len - nl - 1) as u64);
            c.deadline = Deadline::after_ms(CONN_IDLE_MS);
        }
        Request::Source(n) => {
            c.phase = Phase::Sourcing(n);
            c.deadline = Deadline::after_ms(CONN_IDLE_MS);
        }
        Request::Pipe => {
            // Bytes that came with the request line are the start of the stream.
            let rest = nl + 1..c.len;
            let _ = s.send_slice(&line[rest]);
            c.phase = Phase::Piping;
            c.deadline = Deadline::after_ms(CONN_IDLE_MS);
        }
        Request::Get(tag, file) => {
            let found = shares
                .iter()
                .position(|sh| sh.as_ref().is_some_and(|sh| sh.tag() == tag));
            let opened = match found.and_then(|i| Some((i, shares[i].as_mut()?))) {
                Some((i, sh)) => sh.open(c.fid, file).map(|()| i).map_err(errno),
                None => Err(19), // ENODEV: no share with that tag
            };
            match opened {
                Ok(i) => {
                    c.phase = Phase::Streaming(i, 0);
                    c.deadline = Deadline::after_ms(CONN_IDLE_MS);
                }
                Err(e) => {
                    let mut buf = [0u8; 24];
                    let n = err_reply(&mut buf, e);
                    finish(c, s, &buf[..n]);
                }
            }
        }
    }
}

/// Echoes what the client sends, never reading more than can be sent back at once.
fn pipe(c: &mut Conn, s: &mut tcp::Socket) {
    let mut buf = [0u8; 2048];
    while s.can_recv() && s.can_send() {
        let room = (s.send_capacity() - s.send_queue()).min(buf.len());
        let n = s.recv_slice(&mut buf[..room]).unwrap_or(0);
        if n == 0 {
            break;
        }
        let _ = s.send_slice(&buf[..n]);
        c.deadline = Deadline::after_ms(CONN_IDLE_MS);
    }
    if !s.may_recv() && s.recv_queue() == 0 {
        s.close();
        c.phase = Phase::Closing;
    }
}

fn sink(c: &mut Conn, s: &mut tcp::Socket, mut n: u64) {
    while s.can_recv() {
        let got = s.recv(|b| (b.len(), b.len())).unwrap_or(0);
        if got == 0 {
            break;
        }
        n += got as u64;
        c.deadline = Deadline::after_ms(CONN_IDLE_MS);
    }
    c.phase = Phase::Sinking(n);
    if !s.may_recv() {
        let mut buf = [0u8; 24];
        let len = dec_line(&mut buf, n);
        finish(c, s, &buf[..len]);
    }
}

fn source(c: &mut Conn, s: &mut tcp::Socket, mut left: u64) {
    while left > 0 && s.can_send() {
        let sent = s
            .send(|b| {
                let k = b.len().min(left as usize);
                b[..k].fill(b'x');
                (k, k)
            })
            .unwrap_or(0);
        if sent == 0 {
            break;
        }
        left -= sent as u64;
        c.deadline = Deadline::after_ms(CONN_IDLE_MS);
    }
    c.phase = Phase::Sourcing(left);
    if left == 0 {
        s.close();
        c.phase = Phase::Closing;
    }
}

/// Writes `v` as a decimal line into `buf`; returns its length.
fn dec_line(buf: &mut [u8; 24], mut v: u64) -> usize {
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for (i, d) in digits[..n].iter().rev().enumerate() {
        buf[i] = *d;
    }
    buf[n] = b'\n';
    n + 1
}

fn errno(e: crate::p9::Error) -> u32 {
    match e {
        crate::p9::Error::Errno(n) => n,
        _ => 5, // EIO
    }
}

/// Writes `ERR <errno>\n` into `buf`; returns its length.
fn err_reply(buf: &mut [u8; 24], e: u32) -> usize {
    buf[..4].copy_from_slice(b"ERR ");
    let mut line = [0u8; 24];
    let n = dec_line(&mut line, u64::from(e));
    buf[4..4 + n].copy_from_slice(&line[..n]);
    4 + n
}

fn close_file(shares: &mut [Option<Share>], i: usize, fid: u32) {
    if let Some(sh) = shares.get_mut(i).and_then(Option::as_mut) {
        let _ = sh.close(fid);
    }
}

fn stream(c: &mut Conn, s: &mut tcp::Socket, shares: &mut [Option<Share>], i: usize, mut off: u64) {
    let Some(sh) = shares.get_mut(i).and_then(Option::as_mut) else {
        return finish(c, s, b"");
    };
    for _ in 0..4 {
        let room = s.send_capacity() - s.send_queue();
        if room == 0 {
            break;
        }
        match sh.read(c.fid, off, room as u32) {
            Ok([]) => {
                let _ = sh.close(c.fid);
                return finish(c, s, b"");
            }
            Ok(data) => {
                let n = s.send_slice(data).unwrap_or(0);
                off += n as u64;
                c.deadline = Deadline::after_ms(CONN_IDLE_MS);
            }
            Err(_) => {
                let _ = sh.close(c.fid);
                c.phase = Phase::Idle;
                s.abort();
                return;
            }
        }
    }
    c.phase = Phase::Streaming(i, off);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn err_reply_formats_errno() {
        let mut b = [0u8; 24];
        let n = err_reply(&mut b, 2);
        assert_eq!(&b[..n], b"ERR 2\n");
        let n = err_reply(&mut b, 4_294_967_295);
        assert_eq!(&b[..n], b"ERR 4294967295\n");
    }
}
