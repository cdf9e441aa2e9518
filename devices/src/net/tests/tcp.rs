//! TCP through the NAT: outbound to 10.0.2.2 (host loopback), refused connects, inbound
//! forwards, resets both ways, 64 simultaneous connections, a large bidirectional transfer and
//! TSO-sized segments from the guest.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::State;

use super::harness::{closed_port, config, drain, local_listener, Guest};
use crate::net::{PortForward, GATEWAY_IP};

const T: Option<Duration> = Some(Duration::from_secs(10));

fn all_freed(g: &mut Guest) -> bool {
    let s = g.net.stats();
    s.tcp_connections == 0 && s.tcp_pending == 0 && s.host_tcp_sockets == 0
}

#[test]
fn outbound_to_gateway_reaches_host_loopback_with_fin() {
    let (listener, port) = local_listener();
    let server = thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        s.set_read_timeout(T).unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"world").unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap(); // guest FIN arrives as EOF
        drop(s); // host FIN
        (peer, buf, rest)
    });
    let mut g = Guest::new(config(vec![]), true);
    let h = g.connect(GATEWAY_IP, port, 50000);
    assert!(g.run_until(500, |g| g.tcp(h).may_send()), "handshake");
    g.tcp(h).send_slice(b"hello").unwrap();
    let mut got = Vec::new();
    assert!(g.run_until(500, |g| {
        drain(g, h, &mut got);
        got.len() == 5
    }));
    assert_eq!(got, b"world");
    g.tcp(h).close();
    assert!(
        g.run_until(1000, |g| !g.tcp(h).may_recv()),
        "host close reaches guest as FIN"
    );
    let (peer, hello, rest) = server.join().unwrap();
    assert!(peer.ip().is_loopback());
    assert_eq!(&hello, b"hello");
    assert!(rest.is_empty());
    assert!(
        g.run_until(1000, all_freed),
        "state freed: {:?}",
        g.net.stats()
    );
}

#[test]
fn connect_to_closed_port_is_reset() {
    let port = closed_port();
    let mut g = Guest::new(config(vec![]), true);
    let h = g.connect(GATEWAY_IP, port, 50001);
    let mut ever_established = false;
    let ok = g.run_until(1000, |g| {
        ever_established |= g.tcp(h).state() == State::Established;
        g.tcp(h).state() == State::Closed
    });
    assert!(ok, "guest socket still {}", g.tcp(h).state());
    assert!(!ever_established);
    assert!(all_freed(&mut g));
}

#[test]
fn guest_reset_reaches_host_and_host_reset_reaches_guest() {
    let (listener, port) = local_listener();
    let server = thread::spawn(move || {
        // First connection: the guest aborts it.
        let (mut a, _) = listener.accept().unwrap();
        a.set_read_timeout(T).unwrap();
        let mut buf = [0u8; 16];
        let first = a.read(&mut buf);
        // Second connection: the host aborts it with SO_LINGER 0.
        let (b, _) = listener.accept().unwrap();
        crate::net::sys::close_with_reset(b);
        first.map_err(|e| e.kind())
    });
    let mut g = Guest::new(config(vec![]), true);
    let a = g.connect(GATEWAY_IP, port, 50002);
    assert!(g.run_until(500, |g| g.tcp(a).may_send()));
    // Let the NAT finish its side before aborting.
    for _ in 0..20 {
        g.step();
    }
    g.tcp(a).abort();
    for _ in 0..20 {
        g.step();
    }
    let b = g.connect(GATEWAY_IP, port, 50003);
    let mut saw_fin = false;
    let ok = g.run_until(1000, |g| {
        saw_fin |= matches!(g.tcp(b).state(), State::CloseWait | State::LastAck);
        g.tcp(b).state() == State::Closed
    });
    assert!(ok, "host reset not seen: {}", g.tcp(b).state());
    assert!(!saw_fin, "host abort must arrive as RST, not FIN");
    assert_eq!(server.join().unwrap(), Err(ErrorKind::ConnectionReset));
    assert!(g.run_until(1000, all_freed));
}

#[test]
fn inbound_forward_to_guest_port_7002() {
    let (listener, host_port) = local_listener();
    let fwd = PortForward {
        listener,
        guest_port: 7002,
    };
    let mut g = Guest::new(config(vec![fwd]), true);
    let h = g.tcp_socket(64 * 1024);
    g.tcp(h).listen(7002).unwrap();
    let client = thread::spawn(move || {
        let mut c = TcpStream::connect(("127.0.0.1", host_port)).unwrap();
        c.set_read_timeout(T).unwrap();
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).unwrap();
        (buf, rest)
    });
    let mut got = Vec::new();
    assert!(g.run_until(1000, |g| {
        drain(g, h, &mut got);
        got.len() == 4
    }));
    assert_eq!(got, b"ping");
    let remote = g.tcp(h).remote_endpoint().unwrap();
    assert_eq!(
        remote.addr,
        GATEWAY_IP.into(),
        "forwarded connections come from 10.0.2.2"
    );
    g.tcp(h).send_slice(b"pong").unwrap();
    assert!(
        g.run_until(1000, |g| !g.tcp(h).may_recv()),
        "host FIN reaches guest"
    );
    g.tcp(h).close();
    assert!(
        g.run_until(2000, |_| client.is_finished()),
        "guest FIN reaches host"
    );
    let (pong, rest) = client.join().unwrap();
    assert_eq!(&pong, b"pong");
    assert!(rest.is_empty());
    assert!(g.run_until(1000, all_freed), "{:?}", g.net.stats());
}

#[test]
fn sixty_four_simultaneous_connections() {
    const N: usize = 64;
    let (listener, port) = local_listener();
    let server = thread::spawn(move || {
        let mut workers = Vec::new();
        for _ in 0..N {
            let (mut s, _) = listener.accept().unwrap();
            workers.push(thread::spawn(move || {
                s.set_read_timeout(T).unwrap();
                let mut data = Vec::new();
                s.read_to_end(&mut data).unwrap();
                s.write_all(&data).unwrap();
            }));
        }
        workers.into_iter().for_each(|w| w.join().unwrap());
    });
    let mut g = Guest::new(config(vec![]), true);
    let hs: Vec<SocketHandle> = (0..N)
        .map(|i| g.connect(GATEWAY_IP, port, 51000 + i as u16))
        .collect();
    assert!(g.run_until(2000, |g| hs.iter().all(|&h| g.tcp(h).may_send())));
    assert_eq!(g.net.stats().tcp_connections, N);
    for (i, &h) in hs.iter().enumerate() {
        let msg = format!("connection {i:03} says hello");
        g.tcp(h).send_slice(msg.as_bytes()).unwrap();
        g.tcp(h).close();
    }
    let mut got = vec![Vec::new(); N];
    let ok = g.run_until(5000, |g| {
        for (i, &h) in hs.iter().enumerate() {
            drain(g, h, &mut got[i]);
        }
        hs.iter().all(|&h| !g.tcp(h).may_recv())
    });
    assert!(ok, "not all echoes finished");
    for (i, data) in got.iter().enumerate() {
        assert_eq!(data, format!("connection {i:03} says hello").as_bytes());
    }
    server.join().unwrap();
    assert!(g.run_until(2000, all_freed), "{:?}", g.net.stats());
}

fn pattern(seed: u8, i: usize) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8
}

#[test]
fn large_transfer_both_ways_with_bounded_buffers() {
    const SIZE: usize = 8 << 20;
    let (listener, port) = local_listener();
    let server = thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = thread::spawn(move || {
            let chunk: Vec<u8> = (0..SIZE).map(|i| pattern(7, i)).collect();
            w.write_all(&chunk).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut r = s;
        let mut n = 0usize;
        let mut bad = None;
        let mut buf = vec![0u8; 65536];
        loop {
            let k = r.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            for (j, b) in buf[..k].iter().enumerate() {
                if bad.is_none() && *b != pattern(3, n + j) {
                    bad = Some(n + j);
                }
            }
            n += k;
        }
        writer.join().unwrap();
        (n, bad)
    });
    let mut g = Guest::new(config(vec![]), true);
    let h = g.tcp_socket(256 * 1024);
    let cx = g.iface.context();
    g.sockets
        .get_mut::<smoltcp::socket::tcp::Socket>(h)
        .connect(cx, (GATEWAY_IP, port), 52000)
        .unwrap();
    let limits = crate::net::Limits::default();
    let (mut sent, mut recvd, mut bad) = (0usize, 0usize, None);
    let (mut max_frames, mut max_buffered) = (0, 0);
    let start = Instant::now();
    let ok = g.run_until(2_000_000, |g| {
        let s = g.tcp(h);
        while sent < SIZE && s.can_send() {
            sent += s
                .send(|b| {
                    let n = b.len().min(SIZE - sent);
                    for (j, x) in b[..n].iter_mut().enumerate() {
                        *x = pattern(3, sent + j);
                    }
                    (n, n)
                })
                .unwrap();
        }
        if sent == SIZE && s.may_send() {
            s.close();
        }
        while s.can_recv() {
            recvd += s
                .recv(|b| {
                    for (j, x) in b.iter().enumerate() {
                        if bad.is_none() && *x != pattern(7, recvd + j) {
                            bad = Some(recvd + j);
                        }
                    }
                    (b.len(), b.len())
                })
                .unwrap();
        }
        let st = g.net.stats();
        max_frames = max_frames.max(st.frames_to_guest);
        max_buffered = max_buffered.max(st.max_tcp_buffered);
        recvd == SIZE && !g.tcp(h).may_recv() && sent == SIZE
    });
    let secs = start.elapsed().as_secs_f64();
    assert!(ok, "transfer stalled: sent {sent} received {recvd}");
    assert_eq!(bad, None, "guest received corrupted data");
    let (host_got, host_bad) = server.join().unwrap();
    assert_eq!(host_got, SIZE);
    assert_eq!(host_bad, None, "host received corrupted data");
    assert!(
        max_frames <= limits.frame_queue,
        "to-guest queue grew to {max_frames}"
    );
    assert!(
        max_buffered <= limits.tcp_rx_buffer + limits.tcp_tx_buffer,
        "a connection buffered {max_buffered} bytes"
    );
    eprintln!(
        "large transfer: 2 x {} MiB in {secs:.2} s = {:.1} MiB/s aggregate",
        SIZE >> 20,
        2.0 * (SIZE >> 20) as f64 / secs
    );
    assert!(g.run_until(1000, all_freed), "{:?}", g.net.stats());
}

#[test]
fn tso_sized_guest_segments_reach_the_host_intact() {
    const SIZE: usize = 1 << 20;
    let (listener, port) = local_listener();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let mut g = Guest::with_tso(config(vec![]));
    let h = g.connect(GATEWAY_IP, port, 50001);
    assert!(g.run_until(500, |g| g.tcp(h).may_send()), "handshake");
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let mut sent = 0;
    assert!(g.run_until(20_000, |g| {
        if sent < SIZE {
            sent += g.tcp(h).send_slice(&data[sent..]).unwrap_or(0);
        }
        if sent == SIZE && g.tcp(h).send_queue() == 0 {
            g.tcp(h).close();
            return true;
        }
        false
    }));
    assert!(g.run_until(2000, |g| !g.tcp(h).is_open() || !g.tcp(h).may_send()));
    g.run_until(200, |_| false);
    let got = server.join().unwrap();
    assert_eq!(got.len(), SIZE);
    assert!(got == data, "bytes differ");
    assert!(
        g.big_frames > 0,
        "the guest never sent a segment over 1514 bytes"
    );
}

#[test]
fn a_guest_taking_tso_frames_gets_large_segments_intact() {
    const SIZE: usize = 1 << 20;
    let (listener, port) = local_listener();
    let data: Vec<u8> = (0..SIZE).map(|i| (i % 241) as u8).collect();
    let to_send = data.clone();
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(&to_send).unwrap();
    });
    // The guest announces MSS 1460 (1500-byte MTU), as Linux does; only the offload flag
    // makes the NAT send it larger segments.
    let mut g = Guest::new(config(vec![]), true);
    g.net.set_guest_offloads(crate::net::GuestOffloads {
        csum: true,
        tso: true,
    });
    let h = g.connect(GATEWAY_IP, port, 50002);
    let mut got = Vec::new();
    let mut biggest = 0;
    assert!(g.run_until(20_000, |g| {
        biggest = biggest.max(g.dev.rx.iter().map(Vec::len).max().unwrap_or(0));
        drain(g, h, &mut got);
        got.len() == SIZE
    }));
    server.join().unwrap();
    assert!(got == data, "bytes differ");
    assert!(
        biggest > 1514,
        "the NAT never sent a segment over the MTU ({biggest})"
    );
}

#[test]
fn first_guest_frame_and_first_forwarded_connection_are_reported_once() {
    use std::sync::{Arc, Mutex};
    let (listener, host_port) = local_listener();
    let fwd = PortForward {
        listener,
        guest_port: 7002,
    };
    let mut g = Guest::new(config(vec![fwd]), true);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    g.net
        .set_phase_sink(Box::new(move |p| s.lock().unwrap().push(p)));
    let h = g.tcp_socket(64 * 1024);
    g.tcp(h).listen(7002).unwrap();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            thread::spawn(move || {
                let mut c = TcpStream::connect(("127.0.0.1", host_port)).unwrap();
                c.write_all(b"x").unwrap();
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert!(g.run_until(1000, |g| {
        let n = seen.lock().unwrap().len();
        g.tcp(h).is_active() && n == 2
    }));
    g.run_until(100, |_| false);
    assert_eq!(
        *seen.lock().unwrap(),
        ["fwd_first_accept", "net_first_guest_frame"],
        "each phase once, in the order they happened"
    );
}

/// Whether `frame` is an ARP request for 10.0.2.15.
fn asks_for_guest_address(frame: &[u8]) -> bool {
    use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol};
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return false;
    };
    if eth.ethertype() != EthernetProtocol::Arp {
        return false;
    }
    let Ok(arp) = ArpPacket::new_checked(eth.payload()) else {
        return false;
    };
    matches!(
        ArpRepr::parse(&arp),
        Ok(ArpRepr::EthernetIpv4 { operation: ArpOperation::Request, target_protocol_addr, .. })
            if target_protocol_addr == crate::net::GUEST_IP
    )
}

/// The race at every boot: the manager (or an operator) connects to the forwarded port while
/// the guest is still running DHCP. The NAT dials at once, its ARP for 10.0.2.15 goes
/// unanswered, and smoltcp would ask again only 1 s later. After the DHCP ACK the NAT asks
/// for the address itself until the guest answers, so the SYN follows the applied lease
/// within a few polls.
#[test]
fn forward_connected_before_dhcp_reaches_the_guest_once_it_applies_its_lease() {
    use smoltcp::socket::dhcpv4;
    use smoltcp::wire::IpCidr;
    let (listener, host_port) = local_listener();
    let fwd = PortForward {
        listener,
        guest_port: 7002,
    };
    let mut g = Guest::new(config(vec![fwd]), false);
    let l = g.tcp_socket(64 * 1024);
    g.tcp(l).listen(7002).unwrap();
    let client = thread::spawn(move || {
        let mut c = TcpStream::connect(("127.0.0.1", host_port)).unwrap();
        c.set_read_timeout(T).unwrap();
        c.write_all(b"early").unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).unwrap();
        buf
    });
    // Accepted and dialled while the guest has no address: nothing answers.
    assert!(g.run_until(1000, |g| g.net.stats().tcp_connections == 1));
    for _ in 0..10 {
        g.step();
    }
    assert_eq!(g.tcp(l).state(), State::Listen);

    // DHCP; like a real client, the guest applies the lease after the poll that took the ACK.
    let d = g.sockets.add(dhcpv4::Socket::new());
    let mut lease = None;
    assert!(g.run_until(500, |g| {
        if let Some(dhcpv4::Event::Configured(c)) = g.sockets.get_mut::<dhcpv4::Socket>(d).poll() {
            lease = Some(c.address);
        }
        lease.is_some()
    }));
    let addr = lease.unwrap();
    g.iface
        .update_ip_addrs(|a| a.push(IpCidr::Ipv4(addr)).unwrap());
    let applied = Instant::now();
    let mut asked = 0;
    assert!(
        g.run_until(2000, |g| {
            asked += g
                .dev
                .rx
                .iter()
                .filter(|f| asks_for_guest_address(f))
                .count();
            g.tcp(l).state() != State::Listen
        }),
        "the forwarded SYN never reached the guest"
    );
    let waited = applied.elapsed();
    // smoltcp alone would wait for its next ARP request, up to 1 s after its first.
    assert!(
        waited < Duration::from_millis(500),
        "the SYN came {waited:?} after the lease was applied"
    );
    assert!(
        asked >= 1,
        "the NAT did not ask for 10.0.2.15 after the ACK"
    );
    let mut got = Vec::new();
    assert!(g.run_until(1000, |g| {
        drain(g, l, &mut got);
        got.len() == 5
    }));
    assert_eq!(got, b"early");
    g.tcp(l).send_slice(b"late").unwrap();
    assert!(g.run_until(2000, |_| client.is_finished()));
    assert_eq!(&client.join().unwrap(), b"late");
}
