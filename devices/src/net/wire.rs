//! Frame parsing and building for the paths that bypass smoltcp (DHCP, UDP NAT, RSTs for
//! refused connects). Parsing validates lengths and checksums; anything malformed is `None`.

use std::net::Ipv4Addr;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress,
    IpProtocol, Ipv4Packet, TcpPacket, UdpPacket,
};

use super::device::MAX_FRAME;

const ETH_HDR: usize = 14;
const IP_HDR: usize = 20;
const MTU: usize = MAX_FRAME - ETH_HDR;

/// A validated frame from the guest.
pub(crate) enum Frame<'a> {
    Arp {
        op: ArpOperation,
        sender: Ipv4Addr,
        target: Ipv4Addr,
    },
    Ipv4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        l4: L4<'a>,
    },
}

/// The transport part of a validated IPv4 packet.
pub(crate) enum L4<'a> {
    Udp {
        src_port: u16,
        dst_port: u16,
        payload: &'a [u8],
    },
    Tcp(TcpInfo),
    Icmp,
    Other,
}

/// The fields of a TCP segment the NAT looks at before handing it to smoltcp.
#[derive(Clone, Copy)]
pub(crate) struct TcpInfo {
    pub src_port: u16,
    pub dst_port: u16,
    pub syn: bool,
    pub ack: bool,
    pub rst: bool,
    pub seq: u32,
    pub seg_len: u32,
}

/// Parses and validates a guest frame: Ethernet, then ARP or IPv4 (header checksum,
/// unfragmented) with UDP/TCP checksums verified. Returns the source MAC too.
pub(crate) fn parse(frame: &[u8]) -> Option<(EthernetAddress, Frame<'_>)> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let src_mac = eth.src_addr();
    if !src_mac.is_unicast() {
        return None;
    }
    let parsed = match eth.ethertype() {
        EthernetProtocol::Arp => {
            let arp = ArpPacket::new_checked(eth.payload()).ok()?;
            match ArpRepr::parse(&arp).ok()? {
                ArpRepr::EthernetIpv4 {
                    operation,
                    source_protocol_addr,
                    target_protocol_addr,
                    ..
                } => Frame::Arp {
                    op: operation,
                    sender: source_protocol_addr,
                    target: target_protocol_addr,
                },
                _ => return None,
            }
        }
        EthernetProtocol::Ipv4 => parse_ipv4(eth.payload())?,
        _ => return None,
    };
    Some((src_mac, parsed))
}

fn parse_ipv4(bytes: &[u8]) -> Option<Frame<'_>> {
    let ip = Ipv4Packet::new_checked(bytes).ok()?;
    if ip.version() != 4 || !ip.verify_checksum() || ip.more_frags() || ip.frag_offset() != 0 {
        return None;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let (s, d) = (IpAddress::Ipv4(src), IpAddress::Ipv4(dst));
    let header_len = usize::from(ip.header_len());
    let total_len = usize::from(ip.total_len());
    let payload = bytes.get(header_len..total_len)?;
    let l4 = match ip.next_header() {
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(payload).ok()?;
            if !udp.verify_checksum(&s, &d) {
                return None;
            }
            let len = usize::from(udp.len());
            L4::Udp {
                src_port: udp.src_port(),
                dst_port: udp.dst_port(),
                payload: payload.get(8..len)?,
            }
        }
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(payload).ok()?;
            if !tcp.verify_checksum(&s, &d) {
                return None;
            }
            L4::Tcp(TcpInfo {
                src_port: tcp.src_port(),
                dst_port: tcp.dst_port(),
                syn: tcp.syn(),
                ack: tcp.ack(),
                rst: tcp.rst(),
                seq: tcp.seq_number().0 as u32,
                seg_len: tcp.segment_len() as u32,
            })
        }
        IpProtocol::Icmp => L4::Icmp,
        _ => L4::Other,
    };
    Some(Frame::Ipv4 { src, dst, l4 })
}

/// Addresses of a frame built by the NAT.
pub(crate) struct Addrs {
    pub src_mac: EthernetAddress,
    pub dst_mac: EthernetAddress,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

/// Builds a UDP datagram as one or more Ethernet frames (IPv4 fragments when it exceeds the
/// MTU). Returns no frame when the datagram cannot be represented (over 65507 bytes).
pub(crate) fn udp_frames(
    a: &Addrs,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
    ident: u16,
) -> Vec<Vec<u8>> {
    let udp_len = 8 + payload.len();
    if udp_len + IP_HDR > usize::from(u16::MAX) {
        return Vec::new();
    }
    let mut datagram = vec![0u8; udp_len];
    {
        let mut udp = UdpPacket::new_unchecked(&mut datagram[..]);
        udp.set_src_port(src_port);
        udp.set_dst_port(dst_port);
        udp.set_len(udp_len as u16);
        udp.payload_mut().copy_from_slice(payload);
        udp.fill_checksum(&IpAddress::Ipv4(a.src), &IpAddress::Ipv4(a.dst));
    }
    ipv4_frames(a, IpProtocol::Udp, &datagram, ident)
}

/// Wraps an IPv4 payload into Ethernet frames, fragmenting at the MTU.
fn ipv4_frames(a: &Addrs, proto: IpProtocol, payload: &[u8], ident: u16) -> Vec<Vec<u8>> {
    // Fragment payloads must be multiples of 8 bytes, except the last one.
    let chunk = (MTU - IP_HDR) & !7;
    let mut frames = Vec::with_capacity(payload.len() / chunk + 1);
    let mut offset = 0;
    loop {
        let end = (offset + chunk).min(payload.len());
        let part = &payload[offset..end];
        let more = end < payload.len();
        let mut frame = vec![0u8; ETH_HDR + IP_HDR + part.len()];
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.set_src_addr(a.src_mac);
        eth.set_dst_addr(a.dst_mac);
        eth.set_ethertype(EthernetProtocol::Ipv4);
        let mut ip = Ipv4Packet::new_unchecked(eth.payload_mut());
        ip.set_version(4);
        ip.set_header_len(IP_HDR as u8);
        ip.set_dscp(0);
        ip.set_ecn(0);
        ip.set_total_len((IP_HDR + part.len()) as u16);
        ip.set_ident(ident);
        ip.clear_flags();
        ip.set_more_frags(more);
        ip.set_frag_offset(offset as u16);
        ip.set_hop_limit(64);
        ip.set_next_header(proto);
        ip.set_src_addr(a.src);
        ip.set_dst_addr(a.dst);
        ip.payload_mut().copy_from_slice(part);
        ip.fill_checksum();
        frames.push(frame);
        if !more {
            return frames;
        }
        offset = end;
    }
}

/// Builds the RST|ACK answering a guest SYN (or any segment) described by `seg`, sent from
/// the segment's destination back to its source.
pub(crate) fn tcp_rst(a: &Addrs, seg: &TcpInfo, ident: u16) -> Vec<u8> {
    let mut segment = [0u8; 20];
    {
        let mut tcp = TcpPacket::new_unchecked(&mut segment[..]);
        tcp.set_src_port(seg.dst_port);
        tcp.set_dst_port(seg.src_port);
        tcp.set_seq_number(smoltcp::wire::TcpSeqNumber(0));
        let ack = seg.seq.wrapping_add(seg.seg_len.max(1));
        tcp.set_ack_number(smoltcp::wire::TcpSeqNumber(ack as i32));
        tcp.set_header_len(20);
        tcp.clear_flags();
        tcp.set_rst(true);
        tcp.set_ack(true);
        tcp.set_window_len(0);
        tcp.set_urgent_at(0);
        tcp.fill_checksum(&IpAddress::Ipv4(a.src), &IpAddress::Ipv4(a.dst));
    }
    ipv4_frames(a, IpProtocol::Tcp, &segment, ident)
        .pop()
        .unwrap_or_default()
}

/// An ARP frame from `a.src_mac`/`a.src` about `a.dst`: a reply to `a.dst_mac`, or a
/// request (target hardware address zero) sent to `a.dst_mac`.
pub(crate) fn arp(op: ArpOperation, a: &Addrs) -> Vec<u8> {
    let target_hw = if op == ArpOperation::Request {
        EthernetAddress([0; 6])
    } else {
        a.dst_mac
    };
    let arp = ArpRepr::EthernetIpv4 {
        operation: op,
        source_hardware_addr: a.src_mac,
        source_protocol_addr: a.src,
        target_hardware_addr: target_hw,
        target_protocol_addr: a.dst,
    };
    let mut buf = vec![0u8; ETH_HDR + arp.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut buf[..]);
    eth.set_src_addr(a.src_mac);
    eth.set_dst_addr(a.dst_mac);
    eth.set_ethertype(EthernetProtocol::Arp);
    arp.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    buf
}
