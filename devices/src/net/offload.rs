//! The guest's transmit offloads, finished in the device as a NIC would: with
//! `VIRTIO_NET_F_CSUM` the guest may leave a TCP/UDP checksum partial (`NEEDS_CSUM`: the field
//! holds the pseudo-header sum, the device sums `csum_start..` and stores the result), and with
//! `VIRTIO_NET_F_HOST_TSO4` it may send one TCP segment of up to 64 KiB (`GSO_TCPV4`) instead of
//! MTU-sized ones, which the device cuts into `gso_size` segments with their own sequence
//! numbers, IP ids, flags and checksums. Everything else is refused.

/// `VIRTIO_NET_F_CSUM`: the driver may hand over partially checksummed packets.
pub const F_CSUM: u64 = 1 << 0;
/// `VIRTIO_NET_F_HOST_TSO4`: the driver may send TCPv4 segments larger than the MTU.
pub const F_HOST_TSO4: u64 = 1 << 11;
/// `VIRTIO_NET_F_GUEST_CSUM`: the driver accepts packets marked `DATA_VALID`.
pub const F_GUEST_CSUM: u64 = 1 << 1;
/// `VIRTIO_NET_F_GUEST_TSO4`: the driver accepts TCPv4 segments larger than the MTU.
pub const F_GUEST_TSO4: u64 = 1 << 7;

/// MSS announced to the NAT for a guest that takes TSO frames: the NAT then sends segments of
/// up to this size, which the guest receives whole (`GSO_TCPV4`).
pub(crate) const GUEST_TSO_MSS: u16 = 65_000;
/// `gso_size` given to the guest with a large segment: the segment size a 1500-byte MTU allows.
const RX_GSO_SIZE: u16 = 1460;
const HDR_F_DATA_VALID: u8 = 2;

const HDR_F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_ECN: u8 = 0x80;

/// Why a transmitted frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffloadError {
    /// A GSO type that was not offered (UDP, TCPv6) or a malformed header.
    GsoType(u8),
    /// `csum_start`/`csum_offset` point outside the frame.
    ChecksumRange { start: usize, offset: usize },
    /// A GSO frame that is not Ethernet/IPv4/TCP, or has a zero `gso_size`.
    GsoFrame,
}

const ETH: usize = 14;

/// Applies the offloads the 12-byte `virtio_net_hdr_v1` `hdr` asks for to `frame` and hands
/// the resulting wire frames (one, or the segments of a TSO frame) to `out`.
pub fn finish_tx(
    hdr: &[u8],
    frame: &mut [u8],
    mut out: impl FnMut(&[u8]),
) -> Result<(), OffloadError> {
    let gso = hdr[1];
    if !matches!(gso & !GSO_ECN, GSO_NONE | GSO_TCPV4) {
        return Err(OffloadError::GsoType(gso));
    }
    let gso_size = usize::from(u16::from_le_bytes([hdr[4], hdr[5]]));
    if gso & !GSO_ECN == GSO_TCPV4 {
        return segment_tcpv4(frame, gso_size, out);
    }
    complete_checksum(hdr, frame)?;
    out(frame);
    Ok(())
}

/// Cuts a TSO frame into segments of at most `mss` payload bytes.
fn segment_tcpv4(frame: &[u8], mss: usize, mut out: impl FnMut(&[u8])) -> Result<(), OffloadError> {
    use smoltcp::wire::{
        EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, TcpPacket,
    };
    let bad = OffloadError::GsoFrame;
    let eth = EthernetFrame::new_checked(frame).map_err(|_| bad)?;
    let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|_| bad)?;
    if mss == 0 || eth.ethertype() != EthernetProtocol::Ipv4 || ip.next_header() != IpProtocol::Tcp
    {
        return Err(bad);
    }
    let ihl = usize::from(ip.header_len());
    let tcp = TcpPacket::new_checked(ip.payload()).map_err(|_| bad)?;
    let thl = usize::from(tcp.header_len());
    let headers = ETH + ihl + thl;
    let end = ETH + usize::from(ip.total_len());
    let (src, dst) = (
        IpAddress::Ipv4(ip.src_addr()),
        IpAddress::Ipv4(ip.dst_addr()),
    );
    let (id, seq, fin, psh) = (ip.ident(), tcp.seq_number(), tcp.fin(), tcp.psh());
    let payload = frame.get(headers..end).ok_or(bad)?;
    let count = payload.len().div_ceil(mss).max(1);
    let mut seg = Vec::with_capacity(headers + mss);
    for (i, chunk) in payload
        .chunks(mss)
        .chain(payload.is_empty().then_some(&[][..]))
        .enumerate()
    {
        let last = i + 1 == count;
        seg.clear();
        seg.extend_from_slice(&frame[..headers]);
        seg.extend_from_slice(chunk);
        let mut ip = Ipv4Packet::new_unchecked(&mut seg[ETH..]);
        ip.set_total_len((ihl + thl + chunk.len()) as u16);
        ip.set_ident(id.wrapping_add(i as u16));
        ip.fill_checksum();
        let mut tcp = TcpPacket::new_unchecked(&mut seg[ETH + ihl..]);
        tcp.set_seq_number(seq + i * mss);
        if !last {
            tcp.set_fin(false);
            tcp.set_psh(false);
        } else {
            tcp.set_fin(fin);
            tcp.set_psh(psh);
        }
        if i > 0 {
            tcp.set_cwr(false);
        }
        tcp.fill_checksum(&src, &dst);
        out(&seg);
    }
    Ok(())
}

/// The `virtio_net_hdr_v1` for `frame` going to a guest that negotiated GUEST_CSUM
/// (`csum`) and GUEST_TSO4 (`tso`): the checksums are always complete (`DATA_VALID`), and a
/// TCP frame over the 1500-byte MTU is marked `GSO_TCPV4`.
pub fn rx_header(frame: &[u8], csum: bool, tso: bool) -> [u8; 12] {
    let mut hdr = [0u8; 12];
    hdr[10..12].copy_from_slice(&1u16.to_le_bytes()); // num_buffers
    if csum {
        hdr[0] = HDR_F_DATA_VALID;
    }
    if tso && frame.len() > super::device::MAX_FRAME {
        hdr[1] = GSO_TCPV4;
        hdr[4..6].copy_from_slice(&RX_GSO_SIZE.to_le_bytes());
    }
    hdr
}

/// Raises the MSS option of a guest's TCP SYN in Ethernet frame `f` to `mss` (checksum
/// fixed); anything else is left alone.
pub(crate) fn raise_syn_mss(f: &mut [u8], mss: u16) {
    use smoltcp::wire::{EthernetFrame, IpAddress, IpProtocol, Ipv4Packet, TcpPacket};
    let Ok(mut eth) = EthernetFrame::new_checked(&mut f[..]) else {
        return;
    };
    let Ok(mut ip) = Ipv4Packet::new_checked(eth.payload_mut()) else {
        return;
    };
    if ip.next_header() != IpProtocol::Tcp {
        return;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) else {
        return;
    };
    if !tcp.syn() {
        return;
    }
    let opts = tcp.options_mut();
    let mut i = 0;
    while i + 1 < opts.len() {
        match opts[i] {
            0 => return,
            1 => i += 1,
            2 if opts[i + 1] == 4 && i + 4 <= opts.len() => {
                let old = u16::from_be_bytes([opts[i + 2], opts[i + 3]]);
                opts[i + 2..i + 4].copy_from_slice(&old.max(mss).to_be_bytes());
                break;
            }
            _ => i += usize::from(opts[i + 1]).max(2),
        }
    }
    tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
}

/// Finishes a partial checksum (`NEEDS_CSUM`) in place.
fn complete_checksum(hdr: &[u8], frame: &mut [u8]) -> Result<(), OffloadError> {
    if hdr[0] & HDR_F_NEEDS_CSUM != 0 {
        let start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
        let offset = usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
        let bad = OffloadError::ChecksumRange { start, offset };
        let at = start.checked_add(offset).ok_or(bad)?;
        if start > frame.len() || at.checked_add(2).is_none_or(|end| end > frame.len()) {
            return Err(bad);
        }
        let sum = !fold(sum16(&frame[start..]));
        frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
    }
    Ok(())
}

/// The 32-bit running one's-complement sum of `data` as big-endian 16-bit words.
fn sum16(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    let mut sum: u64 = chunks
        .by_ref()
        .map(|w| u64::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::wire::{parse, Frame, L4};
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
        Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
    };

    const GUEST: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);
    const HOST: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);

    fn hdr(flags: u8, gso: u8, gso_size: u16, start: u16, offset: u16) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[0] = flags;
        h[1] = gso;
        h[4..6].copy_from_slice(&gso_size.to_le_bytes());
        h[6..8].copy_from_slice(&start.to_le_bytes());
        h[8..10].copy_from_slice(&offset.to_le_bytes());
        h
    }

    fn tcp_repr(payload: &[u8], control: TcpControl) -> TcpRepr<'_> {
        TcpRepr {
            src_port: 40000,
            dst_port: 7002,
            control,
            seq_number: TcpSeqNumber(1000),
            ack_number: Some(TcpSeqNumber(1)),
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        }
    }

    /// A guest frame (Ethernet/IPv4/TCP) carrying `payload`, with the TCP checksum left as the
    /// guest leaves it under `NEEDS_CSUM`: the pseudo-header sum.
    fn guest_frame(payload: &[u8], control: TcpControl, psh: bool) -> Vec<u8> {
        let tcp = tcp_repr(payload, control);
        let ip = Ipv4Repr {
            src_addr: GUEST,
            dst_addr: HOST,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let eth = EthernetRepr {
            src_addr: EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            dst_addr: EthernetAddress([0x52, 0x55, 10, 0, 2, 2]),
            ethertype: EthernetProtocol::Ipv4,
        };
        let mut f = vec![0u8; ETH + ip.buffer_len() + tcp.buffer_len()];
        let mut e = EthernetFrame::new_unchecked(&mut f[..]);
        eth.emit(&mut e);
        let caps = ChecksumCapabilities::default();
        let mut p = Ipv4Packet::new_unchecked(e.payload_mut());
        ip.emit(&mut p, &caps);
        p.set_ident(0x1234);
        p.fill_checksum();
        let mut t = TcpPacket::new_unchecked(p.payload_mut());
        tcp.emit(
            &mut t,
            &IpAddress::Ipv4(GUEST),
            &IpAddress::Ipv4(HOST),
            &caps,
        );
        t.set_psh(psh);
        let len = t.header_len() as u64 + payload.len() as u64;
        let ph = sum16(&GUEST.octets()) + sum16(&HOST.octets()) + 6 + len;
        t.set_checksum(fold(ph));
        f
    }

    fn collect(h: &[u8; 12], f: &mut [u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
        let mut out = Vec::new();
        finish_tx(h, f, |s| out.push(s.to_vec()))?;
        Ok(out)
    }

    #[test]
    fn a_partial_checksum_is_completed() {
        for len in [0usize, 1, 1460] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut f = guest_frame(&payload, TcpControl::None, true);
            assert!(parse(&f).is_none(), "partial checksum must not verify");
            let out = collect(&hdr(HDR_F_NEEDS_CSUM, GSO_NONE, 0, 34, 16), &mut f).unwrap();
            assert_eq!(out.len(), 1);
            assert!(
                parse(&out[0]).is_some(),
                "payload {len}: checksum completed"
            );
        }
    }

    #[test]
    fn a_tso_frame_becomes_mss_sized_segments() {
        let payload: Vec<u8> = (0..5000).map(|i| (i % 253) as u8).collect();
        let mut f = guest_frame(&payload, TcpControl::Fin, true);
        let out = collect(&hdr(HDR_F_NEEDS_CSUM, GSO_TCPV4, 1448, 34, 16), &mut f).unwrap();
        assert_eq!(out.len(), 4);
        let mut joined = Vec::new();
        for (i, seg) in out.iter().enumerate() {
            let last = i == 3;
            let (_, frame) = parse(seg).expect("each segment parses with valid checksums");
            let Frame::Ipv4 {
                l4: L4::Tcp(info), ..
            } = frame
            else {
                panic!("segment {i} is not TCP");
            };
            assert_eq!(info.seq, 1000 + (i as u32) * 1448, "seq of segment {i}");
            let ip = Ipv4Packet::new_checked(&seg[ETH..]).unwrap();
            assert_eq!(ip.ident(), 0x1234 + i as u16);
            let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
            assert_eq!(tcp.fin(), last, "FIN only on the last segment");
            assert_eq!(tcp.psh(), last, "PSH only on the last segment");
            assert_eq!(
                tcp.payload().len(),
                if last { 5000 - 3 * 1448 } else { 1448 }
            );
            joined.extend_from_slice(tcp.payload());
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn a_tso_frame_without_payload_is_sent_once() {
        let mut f = guest_frame(&[], TcpControl::Fin, false);
        let out = collect(&hdr(0, GSO_TCPV4, 1448, 0, 0), &mut f).unwrap();
        assert_eq!(out.len(), 1);
        assert!(parse(&out[0]).is_some());
    }

    #[test]
    fn plain_frames_are_untouched() {
        let mut f = vec![9u8; 100];
        assert_eq!(
            collect(&hdr(0, GSO_NONE, 0, 0, 0), &mut f).unwrap(),
            vec![vec![9u8; 100]]
        );
    }

    #[test]
    fn hostile_headers_are_refused_not_trusted() {
        let mut f = vec![0u8; 64];
        for (h, want) in [
            (
                hdr(HDR_F_NEEDS_CSUM, 0, 0, 63, 0),
                OffloadError::ChecksumRange {
                    start: 63,
                    offset: 0,
                },
            ),
            (
                hdr(HDR_F_NEEDS_CSUM, 0, 0, 65, 0),
                OffloadError::ChecksumRange {
                    start: 65,
                    offset: 0,
                },
            ),
            (
                hdr(HDR_F_NEEDS_CSUM, 0, 0, 60, 0xffff),
                OffloadError::ChecksumRange {
                    start: 60,
                    offset: 0xffff,
                },
            ),
            (hdr(0, 3, 0, 0, 0), OffloadError::GsoType(3)),
            (hdr(0, 4, 0, 0, 0), OffloadError::GsoType(4)),
            (hdr(0, GSO_TCPV4, 1448, 0, 0), OffloadError::GsoFrame),
        ] {
            assert_eq!(collect(&h, &mut f), Err(want));
        }
        // The last two bytes are a valid place for the checksum.
        collect(&hdr(HDR_F_NEEDS_CSUM, 0, 0, 0, 62), &mut f).unwrap();

        let good = guest_frame(&[1; 3000], TcpControl::None, false);
        let mut zero_mss = good.clone();
        assert_eq!(
            collect(&hdr(0, GSO_TCPV4, 0, 0, 0), &mut zero_mss),
            Err(OffloadError::GsoFrame)
        );
        let mut cut = good[..good.len() - 10].to_vec(); // IP total length beyond the frame
        assert_eq!(
            collect(&hdr(0, GSO_TCPV4, 1448, 0, 0), &mut cut),
            Err(OffloadError::GsoFrame)
        );
        let mut short_len = good.clone();
        short_len[ETH + 2..ETH + 4].copy_from_slice(&30u16.to_be_bytes()); // < IP + TCP headers
        assert_eq!(
            collect(&hdr(0, GSO_TCPV4, 1448, 0, 0), &mut short_len),
            Err(OffloadError::GsoFrame)
        );
    }

    #[test]
    fn a_guest_syn_announces_the_tso_mss() {
        let mut syn = guest_frame(&[], TcpControl::Syn, false);
        // guest_frame leaves the checksum partial; complete it, then add an MSS option by hand.
        let mut f =
            collect(&hdr(HDR_F_NEEDS_CSUM, GSO_NONE, 0, 34, 16), &mut syn).unwrap()[0].clone();
        assert!(parse(&f).is_some());
        let before = f.clone();
        raise_syn_mss(&mut f, GUEST_TSO_MSS); // no MSS option: nothing to raise
        assert_eq!(f, before);

        let tcp = TcpRepr {
            max_seg_size: Some(1460),
            ..tcp_repr(&[], TcpControl::Syn)
        };
        let mut f = vec![0u8; before.len() + 4];
        f[..ETH].copy_from_slice(&before[..ETH]);
        let ip = Ipv4Repr {
            src_addr: GUEST,
            dst_addr: HOST,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let caps = ChecksumCapabilities::default();
        let mut p = Ipv4Packet::new_unchecked(&mut f[ETH..]);
        ip.emit(&mut p, &caps);
        tcp.emit(
            &mut TcpPacket::new_unchecked(p.payload_mut()),
            &IpAddress::Ipv4(GUEST),
            &IpAddress::Ipv4(HOST),
            &caps,
        );
        raise_syn_mss(&mut f, GUEST_TSO_MSS);
        assert!(parse(&f).is_some(), "checksum still valid");
        let p = Ipv4Packet::new_checked(&f[ETH..]).unwrap();
        let t = TcpPacket::new_checked(p.payload()).unwrap();
        let repr =
            TcpRepr::parse(&t, &IpAddress::Ipv4(GUEST), &IpAddress::Ipv4(HOST), &caps).unwrap();
        assert_eq!(repr.max_seg_size, Some(GUEST_TSO_MSS));
    }

    #[test]
    fn rx_headers_mark_valid_checksums_and_large_segments() {
        let small = vec![0u8; 1514];
        let big = vec![0u8; 30_000];
        assert_eq!(rx_header(&small, false, false)[..10], [0u8; 10]);
        assert_eq!(rx_header(&small, false, false)[10..], [1, 0]);
        assert_eq!(rx_header(&small, true, true)[0], HDR_F_DATA_VALID);
        assert_eq!(rx_header(&small, true, true)[1], GSO_NONE);
        let h = rx_header(&big, true, true);
        assert_eq!(
            (h[1], u16::from_le_bytes([h[4], h[5]])),
            (GSO_TCPV4, RX_GSO_SIZE)
        );
        assert_eq!(rx_header(&big, true, false)[1], GSO_NONE);
    }
}
