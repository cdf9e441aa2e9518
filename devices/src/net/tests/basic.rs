//! ARP, ICMP echo, the DNS relay, and the configuration parsers.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::time::Duration;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::{icmp, udp};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpAddress,
};

use super::harness::{config, Guest, GUEST_MAC};
use crate::net::{
    parse_hostfwd, parse_resolv_conf, UserNet, UserNetConfig, DNS_IP, GATEWAY_IP, GATEWAY_MAC,
    GUEST_IP,
};

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(GUEST_MAC),
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let eth = EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let mut buf = vec![0u8; eth.buffer_len() + arp.buffer_len()];
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.emit(&mut frame);
    arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    buf
}

fn arp_reply_for(net: &mut UserNet, target: Ipv4Addr) -> Option<EthernetAddress> {
    net.guest_transmit(&arp_request(target));
    net.poll(std::time::Instant::now());
    let f = net.guest_receive()?;
    let eth = EthernetFrame::new_checked(&f[..]).unwrap();
    match ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap() {
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Reply,
            source_hardware_addr,
            source_protocol_addr,
            target_hardware_addr,
            ..
        } => {
            assert_eq!(source_protocol_addr, target);
            assert_eq!(target_hardware_addr, EthernetAddress(GUEST_MAC));
            Some(source_hardware_addr)
        }
        other => panic!("unexpected ARP {other:?}"),
    }
}

#[test]
fn arp_answers_only_gateway_and_dns() {
    let mut net = UserNet::new(config(vec![])).unwrap();
    assert_eq!(
        arp_reply_for(&mut net, GATEWAY_IP),
        Some(EthernetAddress(GATEWAY_MAC))
    );
    assert_eq!(
        arp_reply_for(&mut net, DNS_IP),
        Some(EthernetAddress(GATEWAY_MAC))
    );
    // Not for the guest's own address (duplicate address probes must stay unanswered)
    // nor for other hosts.
    assert_eq!(arp_reply_for(&mut net, GUEST_IP), None);
    assert_eq!(arp_reply_for(&mut net, Ipv4Addr::new(10, 0, 2, 77)), None);
    assert_eq!(arp_reply_for(&mut net, Ipv4Addr::new(8, 8, 8, 8)), None);
}

#[test]
fn ping_gateway() {
    let mut g = Guest::new(config(vec![]), true);
    let mut s = icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 512]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 512]),
    );
    s.bind(icmp::Endpoint::Ident(0x4242)).unwrap();
    let h = g.sockets.add(s);
    let echo = Icmpv4Repr::EchoRequest {
        ident: 0x4242,
        seq_no: 7,
        data: b"cvmm-ping",
    };
    let mut bytes = vec![0u8; echo.buffer_len()];
    echo.emit(
        &mut Icmpv4Packet::new_unchecked(&mut bytes[..]),
        &ChecksumCapabilities::default(),
    );
    g.sockets
        .get_mut::<icmp::Socket>(h)
        .send_slice(&bytes, IpAddress::Ipv4(GATEWAY_IP))
        .unwrap();
    let mut reply = None;
    let ok = g.run_until(300, |g| {
        let s = g.sockets.get_mut::<icmp::Socket>(h);
        if let Ok((data, from)) = s.recv() {
            let pkt = Icmpv4Packet::new_checked(data).unwrap();
            let r = Icmpv4Repr::parse(&pkt, &ChecksumCapabilities::default()).unwrap();
            if let Icmpv4Repr::EchoReply {
                ident,
                seq_no,
                data,
            } = r
            {
                reply = Some((from, ident, seq_no, data.to_vec()));
            }
        }
        reply.is_some()
    });
    assert!(ok, "no echo reply");
    assert_eq!(
        reply.unwrap(),
        (
            IpAddress::Ipv4(GATEWAY_IP),
            0x4242,
            7,
            b"cvmm-ping".to_vec()
        )
    );
}

#[test]
fn dns_query_is_relayed_to_upstream() {
    let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
    upstream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let addr = upstream.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        let (n, peer) = upstream
            .recv_from(&mut buf)
            .expect("query reaches upstream");
        let mut answer = buf[..n].to_vec();
        answer[2] |= 0x80; // QR: response
        answer.extend_from_slice(b"answer");
        upstream.send_to(&answer, peer).unwrap();
        buf[..n].to_vec()
    });

    let cfg = UserNetConfig::with_dns(vec![], vec![addr]);
    let mut g = Guest::new(cfg, true);
    let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 2048]);
    let mut s = udp::Socket::new(buf(), buf());
    s.bind(40000).unwrap();
    let h = g.sockets.add(s);
    let query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x07example\x03com\x00\x00\x01\x00\x01";
    g.sockets
        .get_mut::<udp::Socket>(h)
        .send_slice(query, (DNS_IP, 53))
        .unwrap();
    let mut got = None;
    let ok = g.run_until(500, |g| {
        if let Ok((data, meta)) = g.sockets.get_mut::<udp::Socket>(h).recv() {
            got = Some((data.to_vec(), meta.endpoint));
        }
        got.is_some()
    });
    assert!(ok, "no DNS answer");
    let seen = server.join().unwrap();
    assert_eq!(seen, query.to_vec(), "upstream got the query unchanged");
    let (answer, from) = got.unwrap();
    assert_eq!(from.addr, IpAddress::Ipv4(DNS_IP));
    assert_eq!(from.port, 53);
    assert_eq!(&answer[..2], &query[..2]);
    assert!(answer.ends_with(b"answer"));
    assert_eq!(g.net.stats().udp_flows, 1);
}

#[test]
fn hostfwd_syntax() {
    assert_eq!(
        parse_hostfwd("tcp::7020-:7002").unwrap(),
        (None, 7020, 7002)
    );
    assert_eq!(
        parse_hostfwd("tcp:127.0.0.1:7020-10.0.2.15:7002").unwrap(),
        (Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), 7020, 7002)
    );
    assert_eq!(parse_hostfwd(":0.0.0.0:80-:8080").unwrap().2, 8080);
    assert_eq!(
        parse_hostfwd("tcp:[::1]:7020-:7002").unwrap().0,
        Some("::1".parse().unwrap())
    );
    for bad in [
        "",
        "tcp",
        "udp::7020-:7002",
        "tcp::7020",
        "tcp::7020-:0",
        "tcp::70200-:7002",
        "tcp::7020-:x",
        "tcp:host:7020-:7002",
        "tcp::7020-10.0.2.16:7002",
        "tcp::-:7002",
    ] {
        let err = parse_hostfwd(bad).expect_err(bad);
        assert!(err.to_string().contains(bad), "error names the rule: {err}");
    }
}

#[test]
fn resolv_conf_nameservers() {
    let text = "# comment\nsearch lan\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\n\
                nameserver bogus\noptions edns0\n";
    let got = parse_resolv_conf(text);
    assert_eq!(
        got,
        vec![
            "127.0.0.53:53".parse().unwrap(),
            "[fe80::1]:53".parse().unwrap()
        ]
    );
}

#[test]
fn large_udp_datagrams_are_fragmented() {
    use crate::net::wire::{udp_frames, Addrs};
    use smoltcp::wire::{Ipv4Packet, UdpPacket};
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let a = Addrs {
        src_mac: EthernetAddress(GATEWAY_MAC),
        dst_mac: EthernetAddress(GUEST_MAC),
        src: DNS_IP,
        dst: GUEST_IP,
    };
    let frames = udp_frames(&a, 53, 40000, &payload, 99);
    assert_eq!(frames.len(), 3);
    let mut datagram = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        assert!(f.len() <= 1514);
        let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.ident(), 99);
        assert_eq!(ip.more_frags(), i < 2);
        assert_eq!(usize::from(ip.frag_offset()), datagram.len());
        datagram.extend_from_slice(ip.payload());
    }
    let udp = UdpPacket::new_checked(&datagram[..]).unwrap();
    assert!(udp.verify_checksum(&DNS_IP.into(), &GUEST_IP.into()));
    assert_eq!(udp.payload(), &payload[..]);
}

#[test]
fn unanswered_dns_flows_expire() {
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut cfg = UserNetConfig::with_dns(vec![], vec![silent.local_addr().unwrap()]);
    cfg.limits.dns_timeout = Duration::from_millis(50);
    cfg.limits.max_udp_flows = 4;
    let mut g = Guest::new(cfg, true);
    let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 8], vec![0; 2048]);
    let mut handles = Vec::new();
    for port in 0..6u16 {
        let mut s = udp::Socket::new(buf(), buf());
        s.bind(41000 + port).unwrap();
        s.send_slice(b"query", (DNS_IP, 53)).unwrap();
        handles.push(g.sockets.add(s));
    }
    let mut max_flows = 0;
    assert!(g.run_until(200, |g| {
        max_flows = max_flows.max(g.net.stats().udp_flows);
        max_flows > 0
    }));
    // Flow count stays bounded while queries are outstanding, then drops to zero.
    let start = std::time::Instant::now();
    assert!(g.run_until(2000, |g| {
        max_flows = max_flows.max(g.net.stats().udp_flows);
        g.net.stats().udp_flows == 0 && start.elapsed() > Duration::from_millis(60)
    }));
    assert!(max_flows <= 4, "flow limit exceeded: {max_flows}");
    let mut b = [0u8; 64];
    silent.set_nonblocking(true).unwrap();
    assert!(silent.recv(&mut b).is_ok(), "queries reached the upstream");
}

/// Sends `query` from guest UDP port `port` to 10.0.2.3:53; returns the reply and its source.
fn dns_round_trip(
    g: &mut Guest,
    port: u16,
    query: &[u8],
) -> Option<(Vec<u8>, smoltcp::wire::IpEndpoint)> {
    let buf = || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 2048]);
    let mut s = udp::Socket::new(buf(), buf());
    s.bind(port).unwrap();
    let h = g.sockets.add(s);
    g.sockets
        .get_mut::<udp::Socket>(h)
        .send_slice(query, (DNS_IP, 53))
        .unwrap();
    let mut got = None;
    g.run_until(500, |g| {
        if let Ok((data, meta)) = g.sockets.get_mut::<udp::Socket>(h).recv() {
            got = Some((data.to_vec(), meta.endpoint));
        }
        got.is_some()
    });
    got
}

#[test]
fn names_in_the_hosts_file_are_answered_by_10_0_2_3_itself() {
    let hosts = std::env::temp_dir().join(format!("cvmm-hosts-{}", std::process::id()));
    std::fs::write(&hosts, "10.9.8.7 cvms.internal\n").unwrap();
    // No upstream at all: only the local answer can reach the guest.
    let mut cfg = UserNetConfig::with_dns(vec![], vec![]);
    cfg.hosts_file = Some(hosts.clone());
    let mut g = Guest::new(cfg, true);
    let query =
        b"\x43\x21\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04cvms\x08internal\x00\x00\x01\x00\x01";
    let got = dns_round_trip(&mut g, 40001, query);
    std::fs::remove_file(&hosts).unwrap();
    let (answer, from) = got.expect("no DNS answer");
    assert_eq!(from.addr, IpAddress::Ipv4(DNS_IP));
    assert_eq!(from.port, 53);
    assert_eq!(&answer[0..2], &[0x43, 0x21]);
    assert_eq!(&answer[answer.len() - 4..], &[10, 9, 8, 7]);
}

#[test]
fn without_an_upstream_unknown_names_fail_at_once() {
    let mut cfg = UserNetConfig::with_dns(vec![], vec![]);
    cfg.hosts_file = None;
    let mut g = Guest::new(cfg, true);
    let query =
        b"\x55\x66\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03org\x00\x00\x01\x00\x01";
    let (r, _) = dns_round_trip(&mut g, 40002, query).expect("no DNS reply");
    assert_eq!(&r[0..2], &[0x55, 0x66]);
    assert_eq!(r[3] & 0x0f, 2, "SERVFAIL");
}
