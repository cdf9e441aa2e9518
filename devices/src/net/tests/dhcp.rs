//! DHCP: a real client (smoltcp's) gets the lease; hand-built messages check the RFC 2131
//! corner cases real clients rely on (broadcast flag, renewal with ciaddr, NAK, server id).

use std::net::Ipv4Addr;

use smoltcp::socket::dhcpv4;
use smoltcp::wire::{
    DhcpMessageType, DhcpPacket, DhcpRepr, EthernetAddress, EthernetFrame, Ipv4Packet, UdpPacket,
};

use super::harness::{config, Guest, GUEST_MAC};
use crate::net::wire::{udp_frames, Addrs};
use crate::net::{UserNet, DNS_IP, GATEWAY_IP, GATEWAY_MAC, GUEST_IP};

#[test]
fn smoltcp_client_obtains_lease() {
    let mut g = Guest::new(config(vec![]), false);
    let h = g.sockets.add(dhcpv4::Socket::new());
    let mut lease = None;
    let ok = g.run_until(500, |g| {
        if let Some(dhcpv4::Event::Configured(c)) = g.sockets.get_mut::<dhcpv4::Socket>(h).poll() {
            lease = Some((
                c.address,
                c.router,
                c.dns_servers.iter().copied().collect::<Vec<_>>(),
                c.server.address,
            ));
        }
        lease.is_some()
    });
    assert!(ok, "no DHCP lease");
    let (addr, router, dns, server) = lease.unwrap();
    assert_eq!(addr.address(), GUEST_IP);
    assert_eq!(addr.prefix_len(), 24);
    assert_eq!(router, Some(GATEWAY_IP));
    assert_eq!(dns, vec![DNS_IP]);
    assert_eq!(server, GATEWAY_IP);
}

fn client_repr(kind: DhcpMessageType, xid: u32) -> DhcpRepr<'static> {
    DhcpRepr {
        message_type: kind,
        transaction_id: xid,
        secs: 0,
        client_hardware_address: EthernetAddress(GUEST_MAC),
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: false,
        requested_ip: None,
        client_identifier: Some(EthernetAddress(GUEST_MAC)),
        server_identifier: None,
        parameter_request_list: Some(&[1, 3, 6, 51]),
        dns_servers: None,
        max_size: Some(576),
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: &[],
    }
}

/// Sends a client message (from `src` to `dst`) and returns the parsed reply, if any.
fn exchange(
    net: &mut UserNet,
    repr: &DhcpRepr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Option<(EthernetAddress, Ipv4Addr, DhcpReply)> {
    let mut payload = vec![0u8; repr.buffer_len()];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut payload[..]))
        .unwrap();
    let dst_mac = if dst == Ipv4Addr::BROADCAST {
        EthernetAddress::BROADCAST
    } else {
        EthernetAddress(GATEWAY_MAC)
    };
    let a = Addrs {
        src_mac: EthernetAddress(GUEST_MAC),
        dst_mac,
        src,
        dst,
    };
    for f in udp_frames(&a, 68, 67, &payload, 1) {
        net.guest_transmit(&f);
    }
    net.poll(std::time::Instant::now());
    let frame = net.guest_receive()?;
    assert!(net.guest_receive().is_none(), "one reply per request");
    let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
    assert_eq!(eth.src_addr(), EthernetAddress(GATEWAY_MAC));
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert!(ip.verify_checksum());
    assert_eq!(ip.src_addr(), GATEWAY_IP);
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
    assert_eq!((udp.src_port(), udp.dst_port()), (67, 68));
    let pkt = DhcpPacket::new_checked(udp.payload()).unwrap();
    assert!(udp.payload().len() >= 300, "BOOTP minimum size");
    let r = DhcpRepr::parse(&pkt).unwrap();
    let reply = DhcpReply {
        kind: r.message_type,
        xid: r.transaction_id,
        yiaddr: r.your_ip,
        ciaddr: r.client_ip,
        server_id: r.server_identifier,
        router: r.router,
        mask: r.subnet_mask,
        dns: r.dns_servers.map(|d| d.iter().copied().collect()),
        lease: r.lease_duration,
        renew: r.renew_duration,
    };
    Some((eth.dst_addr(), ip.dst_addr(), reply))
}

#[derive(Debug)]
struct DhcpReply {
    kind: DhcpMessageType,
    xid: u32,
    yiaddr: Ipv4Addr,
    ciaddr: Ipv4Addr,
    server_id: Option<Ipv4Addr>,
    router: Option<Ipv4Addr>,
    mask: Option<Ipv4Addr>,
    dns: Option<Vec<Ipv4Addr>>,
    lease: Option<u32>,
    renew: Option<u32>,
}

fn new_net() -> UserNet {
    UserNet::new(config(vec![])).unwrap()
}

#[test]
fn discover_with_broadcast_flag_gets_broadcast_offer() {
    let mut net = new_net();
    let mut d = client_repr(DhcpMessageType::Discover, 0x1111);
    d.broadcast = true;
    let (mac, ip, r) =
        exchange(&mut net, &d, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST).expect("offer");
    assert_eq!((mac, ip), (EthernetAddress::BROADCAST, Ipv4Addr::BROADCAST));
    assert_eq!(r.kind, DhcpMessageType::Offer);
    assert_eq!(r.xid, 0x1111);
    assert_eq!(r.yiaddr, GUEST_IP);
    assert_eq!(r.server_id, Some(GATEWAY_IP));
    assert_eq!(r.router, Some(GATEWAY_IP));
    assert_eq!(r.mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
    assert_eq!(r.dns, Some(vec![DNS_IP]));
    assert_eq!(r.lease, Some(86400));
}

#[test]
fn select_then_renew_are_acked() {
    let mut net = new_net();
    // SELECTING, no broadcast flag (dhclient/udhcpc default): unicast to yiaddr at chaddr.
    let mut req = client_repr(DhcpMessageType::Request, 0x2222);
    req.requested_ip = Some(GUEST_IP);
    req.server_identifier = Some(GATEWAY_IP);
    let (mac, ip, r) =
        exchange(&mut net, &req, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST).expect("ack");
    assert_eq!((mac, ip), (EthernetAddress(GUEST_MAC), GUEST_IP));
    assert_eq!(r.kind, DhcpMessageType::Ack);
    assert_eq!(r.yiaddr, GUEST_IP);
    assert_eq!(r.lease, Some(86400));
    assert_eq!(r.renew, Some(43200));

    // RENEWING: ciaddr set, no server id / requested IP, unicast to the server.
    let mut renew = client_repr(DhcpMessageType::Request, 0x3333);
    renew.client_ip = GUEST_IP;
    let (mac, ip, r) = exchange(&mut net, &renew, GUEST_IP, GATEWAY_IP).expect("renew ack");
    assert_eq!((mac, ip), (EthernetAddress(GUEST_MAC), GUEST_IP));
    assert_eq!(r.kind, DhcpMessageType::Ack);
    assert_eq!(r.xid, 0x3333);
    assert_eq!(r.ciaddr, GUEST_IP);
    assert_eq!(r.yiaddr, GUEST_IP);
    assert_eq!(r.lease, Some(86400));

    // INIT-REBOOT for the right address.
    let mut reboot = client_repr(DhcpMessageType::Request, 0x4444);
    reboot.requested_ip = Some(GUEST_IP);
    let (_, _, r) = exchange(
        &mut net,
        &reboot,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::BROADCAST,
    )
    .expect("ack");
    assert_eq!(r.kind, DhcpMessageType::Ack);
}

#[test]
fn wrong_address_is_naked_and_other_server_ignored() {
    let mut net = new_net();
    let mut req = client_repr(DhcpMessageType::Request, 0x5555);
    req.requested_ip = Some(Ipv4Addr::new(192, 168, 1, 50));
    let (mac, ip, r) =
        exchange(&mut net, &req, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST).expect("nak");
    assert_eq!(r.kind, DhcpMessageType::Nak);
    assert_eq!((mac, ip), (EthernetAddress::BROADCAST, Ipv4Addr::BROADCAST));
    assert_eq!(r.yiaddr, Ipv4Addr::UNSPECIFIED);

    let mut other = client_repr(DhcpMessageType::Request, 0x6666);
    other.requested_ip = Some(GUEST_IP);
    other.server_identifier = Some(Ipv4Addr::new(10, 0, 2, 99));
    assert!(exchange(&mut net, &other, Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST).is_none());

    let release = client_repr(DhcpMessageType::Release, 0x7777);
    assert!(exchange(&mut net, &release, GUEST_IP, GATEWAY_IP).is_none());
}
