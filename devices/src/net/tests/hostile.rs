//! Hostile frames: truncated, bad lengths, bad checksums and random junk are dropped without
//! panicking and without side effects (no host connect for a corrupted SYN).

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use super::harness::{closed_port, config, GUEST_MAC};
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

#[test]
fn random_junk_is_dropped() {
    let mut net = UserNet::new(config(vec![])).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let len = (next() % 1600) as usize;
        let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Make a good share of them look like IPv4/ARP/UDP-to-DHCP so deeper parsers run.
        if len > 40 {
            match next() % 4 {
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
        net.guest_transmit(&f);
    }
    net.poll(std::time::Instant::now());
    while net.guest_receive().is_some() {}
    let s = net.stats();
    assert!(s.frames_from_guest == 0 && s.tcp_connections == 0, "{s:?}");
}
