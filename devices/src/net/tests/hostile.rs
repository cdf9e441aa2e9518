//! Hostile frames: truncated, bad lengths, bad checksums and random junk are dropped without
//! panicking and without side effects (no host connect for a corrupted SYN); resets and a
//! storm of such frames leave the other connections working.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp::State;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

use super::harness::{closed_port, config, drain, local_listener, Guest, GUEST_MAC};
use crate::net::{UserNet, GATEWAY_IP, GATEWAY_MAC, GUEST_IP};

fn syn_frame(dst_port: u16) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: 40000,
        dst_port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1000),
        ack_number: None,
        window_len: 1000,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: GATEWAY_IP,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(GATEWAY_MAC),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buf = vec![0u8; 14 + ip.buffer_len() + tcp.buffer_len()];
    let caps = ChecksumCapabilities::default();
    let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut f);
    let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
    ip.emit(&mut p, &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(p.payload_mut()),
        &IpAddress::Ipv4(GUEST_IP),
        &IpAddress::Ipv4(GATEWAY_IP),
        &caps,
    );
    buf
}

#[test]
fn valid_syn_starts_a_connect_but_corrupted_ones_do_not() {
    let port = closed_port();
    let good = syn_frame(port);
    let mut net = UserNet::new(config(vec![])).unwrap();
    // Every single-byte corruption of the IP/TCP headers must be rejected or harmless.
    for i in 14..good.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut f = good.clone();
            f[i] ^= flip;
            net.guest_transmit(&f);
        }
    }
    // Corruptions of the checksummed fields never reach the host connect path.
    let mut bad_csum = good.clone();
    let last = bad_csum.len() - 1;
    bad_csum[last] ^= 0x55;
    net.guest_transmit(&bad_csum);
    // Truncations of the valid frame.
    for len in 0..good.len() {
        net.guest_transmit(&good[..len]);
    }
    net.poll(std::time::Instant::now());
    assert_eq!(net.stats().tcp_pending, 0, "{:?}", net.stats());

    let mut net = UserNet::new(config(vec![])).unwrap();
    net.guest_transmit(&bad_csum);
    assert_eq!(
        net.stats().tcp_pending,
        0,
        "bad checksum SYN started a connect"
    );
    net.guest_transmit(&good);
    assert_eq!(net.stats().tcp_pending, 1, "valid SYN starts a connect");
}

/// A deterministic source of junk frames (xorshift), a good share of them shaped like
/// IPv4/ARP/UDP so that the deeper parsers run.
struct Junk(u64);

impl Junk {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn frame(&mut self) -> Vec<u8> {
        let len = (self.next() % 1600) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| self.next() as u8).collect();
        if len > 40 {
            match self.next() % 4 {
                0 => f[12..14].copy_from_slice(&[0x08, 0x00]),
                1 => f[12..14].copy_from_slice(&[0x08, 0x06]),
                2 => {
                    f[12..14].copy_from_slice(&[0x08, 0x00]);
                    f[14] = 0x45;
                    f[23] = 17;
                }
                _ => {}
            }
            f[6] &= 0xfe; // unicast source MAC
        }
        f
    }
}

#[test]
fn random_junk_is_dropped() {
    let mut net = UserNet::new(config(vec![])).unwrap();
    let mut junk = Junk(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        net.guest_transmit(&junk.frame());
    }
    net.poll(std::time::Instant::now());
    while net.guest_receive().is_some() {}
    let s = net.stats();
    assert!(s.frames_from_guest == 0 && s.tcp_connections == 0, "{s:?}");
}

/// A guest connection from `local_port` to the host listener, and the host's end of it
/// (non-blocking, so the test thread can keep pumping frames).
fn open(
    g: &mut Guest,
    listener: &std::net::TcpListener,
    port: u16,
    local_port: u16,
) -> (smoltcp::iface::SocketHandle, TcpStream) {
    let h = g.connect(GATEWAY_IP, port, local_port);
    let mut host = None;
    let ok = g.run_until(1000, |g| {
        if host.is_none() {
            host = listener.accept().ok().map(|(s, _)| s);
        }
        host.is_some() && g.tcp(h).may_send()
    });
    assert!(
        ok,
        "connection from guest port {local_port} not established"
    );
    let host = host.unwrap();
    host.set_nonblocking(true).unwrap();
    (h, host)
}

/// Reads what is available on a non-blocking host socket; `Err` on a reset.
fn host_read(s: &mut TcpStream, out: &mut Vec<u8>) -> Result<(), ErrorKind> {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e.kind()),
        }
    }
}

/// Copies of a real guest segment `frame` turned into forgeries on its 4-tuple: a RST, an ACK
/// for data never sent and a data segment, all half the sequence space away, and a SYN; each
/// with valid checksums so that they reach the TCP code.
fn forged_segments(frame: &[u8]) -> Vec<Vec<u8>> {
    let forge = |edit: &dyn Fn(&mut TcpPacket<&mut [u8]>)| {
        let mut f = frame.to_vec();
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let mut tcp = TcpPacket::new_unchecked(ip.payload_mut());
        edit(&mut tcp);
        tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
        f
    };
    let far = |n: TcpSeqNumber| TcpSeqNumber(n.0 ^ i32::MIN);
    vec![
        forge(&|t| {
            t.set_rst(true);
            t.set_seq_number(far(t.seq_number()));
        }),
        forge(&|t| t.set_ack_number(far(t.ack_number()))),
        forge(&|t| t.set_seq_number(far(t.seq_number()))),
        forge(&|t| {
            t.set_syn(true);
            t.set_ack(false);
        }),
    ]
}

#[test]
fn resets_and_hostile_frames_leave_another_connection_working() {
    let (listener, port) = local_listener();
    listener.set_nonblocking(true).unwrap();
    let mut g = Guest::new(config(vec![]), true);
    let (a, mut host_a) = open(&mut g, &listener, port, 50010);
    let (b, host_b) = open(&mut g, &listener, port, 50011);
    let (c, mut host_c) = open(&mut g, &listener, port, 50012);
    assert_eq!(g.net.stats().tcp_connections, 3);

    // The guest resets `a`: its host peer sees the reset.
    g.tcp(a).abort();
    let mut seen = Vec::new();
    let mut reset_a = Ok(());
    assert!(g.run_until(1000, |_| {
        reset_a = host_read(&mut host_a, &mut seen);
        reset_a.is_err()
    }));
    assert_eq!(reset_a, Err(ErrorKind::ConnectionReset));
    // The host peer of `b` vanishes (closed with unsent data: a RST): the guest sees it.
    crate::net::sys::close_with_reset(host_b);
    assert!(g.run_until(1000, |g| g.tcp(b).state() == State::Closed));

    // A real segment of `c` from the guest's stack, the template of the forgeries.
    g.tcp(c).send_slice(b"before").unwrap();
    let ts = g.now();
    g.iface.poll(ts, &mut g.dev, &mut g.sockets);
    let real = g
        .dev
        .tx
        .iter()
        .find(|f| f.len() > 34 + 20 && f[34..36] == 50012u16.to_be_bytes())
        .expect("a segment of c")
        .clone();
    let mut storm = forged_segments(&real);
    for i in 14..real.len() {
        let mut f = real.clone();
        f[i] ^= 0xa5;
        storm.push(f);
    }
    let mut junk = Junk(0x2545_f491_4f6c_dd1d);
    storm.extend((0..5000).map(|_| junk.frame()));
    for f in &storm {
        g.net.guest_transmit(f);
        g.net.poll(std::time::Instant::now());
    }

    // `c` still carries data both ways.
    host_c.write_all(b"host to guest").unwrap();
    g.tcp(c).send_slice(b" and after").unwrap();
    let (mut to_host, mut to_guest) = (Vec::new(), Vec::new());
    let ok = g.run_until(2000, |g| {
        host_read(&mut host_c, &mut to_host).unwrap();
        drain(g, c, &mut to_guest);
        to_host.len() == 16 && to_guest.len() == 13
    });
    assert!(ok, "host got {to_host:?}, guest got {to_guest:?}");
    assert_eq!(to_host, b"before and after");
    assert_eq!(to_guest, b"host to guest");
    assert_eq!(g.tcp(c).state(), State::Established);
    let s = g.net.stats();
    assert_eq!((s.tcp_connections, s.host_tcp_sockets), (1, 1), "{s:?}");
}
