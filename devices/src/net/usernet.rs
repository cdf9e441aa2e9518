//! [`UserNet`]: the NAT as a whole. Guest frames are classified here: ARP and ICMP for the
//! gateway/DNS addresses and TCP go to smoltcp (TCP SYNs after the host connect succeeded),
//! DHCP goes to the built-in server, other UDP to the UDP NAT; everything else is dropped.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::wire::{ArpOperation, EthernetAddress, HardwareAddress, IpCidr};
use vmm_sys_util::epoll::Epoll;

use super::config::{UserNetConfig, DNS_IP, GATEWAY_IP, GATEWAY_MAC, GUEST_IP, PREFIX_LEN};
use super::device::FrameDevice;
use super::dhcp::DhcpServer;
use super::tcp::{Ctx, TcpNat, Verdict};
use super::udp::UdpNat;
use super::wire::{self, Addrs, Frame, L4};
use super::NetError;

const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;
const DNS_PORT: u16 = 53;

/// A snapshot of the NAT's resource use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    /// Established or closing TCP connections.
    pub tcp_connections: usize,
    /// Host connects in progress.
    pub tcp_pending: usize,
    /// Open host TCP sockets belonging to connections.
    pub host_tcp_sockets: usize,
    /// UDP flows (each holds one host UDP socket).
    pub udp_flows: usize,
    /// Frames waiting for the guest.
    pub frames_to_guest: usize,
    /// Frames from the guest not yet processed.
    pub frames_from_guest: usize,
    /// Largest number of bytes held in one connection's smoltcp buffers.
    pub max_tcp_buffered: usize,
}

/// The user-mode NAT behind a virtio-net device.
pub struct UserNet {
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: FrameDevice,
    epoll: Epoll,
    dhcp: DhcpServer,
    udp: UdpNat,
    tcp: TcpNat,
    dns_upstream: Vec<SocketAddr>,
    hosts: super::dns::HostsTable,
    host_loopback: IpAddr,
    dns_timeout: Duration,
    udp_timeout: Duration,
    guest_mac: Option<EthernetAddress>,
    epoch: Instant,
    next_token: u64,
    ip_ident: u16,
    offloads: GuestOffloads,
    phase_sink: Option<PhaseSink>,
    seen_guest_frame: bool,
    seen_accept: bool,
    /// The guest has sent from 10.0.2.15: its address is configured.
    guest_up: bool,
    /// After a DHCP ACK, until the guest sends from 10.0.2.15 or this deadline passes: ask
    /// for 10.0.2.15 by ARP every [`ADDRESS_PROBE_EVERY`], and when to ask next. The guest
    /// applies its lease a little after the ACK; a forwarded connect waiting for it would
    /// otherwise wait for smoltcp's next ARP request, 1 s after its last.
    address_probe: Option<(Instant, Instant)>,
}

/// How often the guest's address is asked for by ARP after its DHCP ACK.
const ADDRESS_PROBE_EVERY: Duration = Duration::from_millis(20);
/// For how long after the ACK.
const ADDRESS_PROBE_FOR: Duration = Duration::from_secs(3);

/// Told, once each, the first guest frame (`net_first_guest_frame`) and the first connection
/// accepted on a port forward (`fwd_first_accept`): phases of a boot timeline.
pub type PhaseSink = Box<dyn Fn(&'static str) + Send>;

/// Receive offloads the guest's NIC driver accepted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuestOffloads {
    /// Frames may be marked as having valid checksums.
    pub csum: bool,
    /// TCP segments may exceed the MTU (the NAT is told a large MSS in the guest's SYNs).
    pub tso: bool,
}

impl UserNet {
    /// Builds the NAT; the forward listeners are switched to non-blocking mode.
    pub fn new(cfg: UserNetConfig) -> Result<Self, NetError> {
        let limits = cfg.limits;
        if limits.frame_queue == 0 || limits.max_tcp == 0 {
            return Err(NetError::Config {
                field: "limits",
                value: format!("{limits:?}"),
            });
        }
        if limits.tcp_rx_buffer < 1024 || limits.tcp_tx_buffer < 1024 {
            return Err(NetError::Config {
                field: "limits.tcp_*_buffer",
                value: format!("{}/{}", limits.tcp_rx_buffer, limits.tcp_tx_buffer),
            });
        }
        let epoll = Epoll::new().map_err(NetError::Epoll)?;
        let mut next_token = 1u64;
        let mut token = || {
            next_token += 1;
            next_token
        };
        let tcp = TcpNat::new(cfg.forwards, limits.clone(), &mut token)?;

        let mut dev = FrameDevice::new(limits.frame_queue);
        let epoch = Instant::now();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GATEWAY_MAC)));
        config.random_seed = seed();
        let mut iface = Interface::new(config, &mut dev, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            // The iface holds at most two addresses (smoltcp's default): exactly these.
            let _ = addrs.push(IpCidr::new(GATEWAY_IP.into(), PREFIX_LEN));
            let _ = addrs.push(IpCidr::new(DNS_IP.into(), PREFIX_LEN));
        });
        // AnyIP + a default route through our own address: smoltcp accepts packets for any
        // destination, so a socket can listen on (remote ip, port) for each guest connection.
        iface.set_any_ip(true);
        if let Err(e) = iface.routes_mut().add_default_ipv4_route(GATEWAY_IP) {
            return Err(NetError::Config {
                field: "route",
                value: e.to_string(),
            });
        }
        Ok(UserNet {
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            epoll,
            dhcp: DhcpServer::new(cfg.lease_secs),
            udp: UdpNat::new(limits.max_udp_flows),
            tcp,
            dns_upstream: cfg.dns_upstream,
            hosts: cfg
                .hosts_file
                .as_deref()
                .map(super::dns::HostsTable::load)
                .unwrap_or_default(),
            host_loopback: cfg.host_loopback,
            dns_timeout: limits.dns_timeout,
            udp_timeout: limits.udp_timeout,
            guest_mac: None,
            offloads: GuestOffloads::default(),
            phase_sink: None,
            seen_guest_frame: false,
            seen_accept: false,
            guest_up: false,
            address_probe: None,
            epoch,
            next_token,
            ip_ident: 0,
        })
    }

    /// An epoll fd that is readable when a host socket can be served; then call [`Self::poll`].
    pub fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Reports first-time network events to `sink`.
    pub fn set_phase_sink(&mut self, sink: PhaseSink) {
        self.phase_sink = Some(sink);
    }

    fn phase(&self, name: &'static str) {
        if let Some(s) = &self.phase_sink {
            s(name);
        }
    }

    /// Sets the receive offloads the guest's driver negotiated (at device activation).
    pub fn set_guest_offloads(&mut self, offloads: GuestOffloads) {
        self.offloads = offloads;
    }

    /// The receive offloads in force.
    pub fn guest_offloads(&self) -> GuestOffloads {
        self.offloads
    }

    /// Takes one Ethernet frame transmitted by the guest. Malformed frames are dropped.
    pub fn guest_transmit(&mut self, frame: &[u8]) {
        if !self.seen_guest_frame {
            self.seen_guest_frame = true;
            self.phase("net_first_guest_frame");
        }
        let Some((src_mac, parsed)) = wire::parse(frame) else {
            tracing::trace!(len = frame.len(), "dropping malformed guest frame");
            return;
        };
        let sender = match parsed {
            Frame::Arp { sender, .. } => sender,
            Frame::Ipv4 { src, .. } => src,
        };
        if sender == GUEST_IP && !self.guest_up {
            tracing::debug!(mac = %src_mac, "the guest's address 10.0.2.15 is up");
            self.guest_up = true;
        }
        match parsed {
            Frame::Arp { op, target, .. } => {
                // Answer only for our own addresses (smoltcp with AnyIP would answer all).
                let ours = target == GATEWAY_IP || target == DNS_IP;
                if op == ArpOperation::Reply || (op == ArpOperation::Request && ours) {
                    self.dev.push_from_guest(frame.to_vec());
                }
            }
            Frame::Ipv4 { src, dst, l4 } => {
                let from_guest_net = src.is_unspecified() || in_subnet(src);
                if !from_guest_net || src == GATEWAY_IP || src == DNS_IP {
                    return;
                }
                if src == GUEST_IP || self.guest_mac.is_none() {
                    self.guest_mac = Some(src_mac);
                }
                self.guest_ipv4(frame, src_mac, src, dst, l4);
            }
        }
    }

    /// Asks the guest for 10.0.2.15 by ARP while an address probe runs and is due.
    fn probe_guest_address(&mut self, now: Instant) {
        let Some((until, next)) = self.address_probe else {
            return;
        };
        if self.guest_up || now >= until {
            self.address_probe = None;
            return;
        }
        let Some(mac) = self.guest_mac else {
            return;
        };
        if now >= next {
            let a = Addrs {
                src_mac: EthernetAddress(GATEWAY_MAC),
                dst_mac: mac,
                src: GATEWAY_IP,
                dst: GUEST_IP,
            };
            self.dev.push_to_guest(wire::arp(ArpOperation::Request, &a));
            self.address_probe = Some((until, now + ADDRESS_PROBE_EVERY));
        }
    }

    fn guest_ipv4(
        &mut self,
        frame: &[u8],
        src_mac: EthernetAddress,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        l4: L4<'_>,
    ) {
        match l4 {
            L4::Udp {
                src_port,
                dst_port: DHCP_SERVER_PORT,
                payload,
            } if src_port == DHCP_CLIENT_PORT => {
                if let Some(reply) = self.dhcp.handle(payload) {
                    if reply.leased && !self.guest_up {
                        let now = Instant::now();
                        let first = now + ADDRESS_PROBE_EVERY;
                        self.address_probe = Some((now + ADDRESS_PROBE_FOR, first));
                    }
                    let a = Addrs {
                        src_mac: EthernetAddress(GATEWAY_MAC),
                        dst_mac: reply.dst_mac,
                        src: GATEWAY_IP,
                        dst: reply.dst_ip,
                    };
                    self.send_udp(&a, DHCP_SERVER_PORT, DHCP_CLIENT_PORT, &reply.payload);
                }
            }
            L4::Udp {
                src_port,
                dst_port,
                payload,
            } => {
                if src.is_unspecified() {
                    return;
                }
                if dst == DNS_IP && dst_port == 53 {
                    if let Some(reply) = self.hosts.answer(payload) {
                        let a = Addrs {
                            src_mac: EthernetAddress(GATEWAY_MAC),
                            dst_mac: src_mac,
                            src: DNS_IP,
                            dst: src,
                        };
                        self.send_udp(&a, 53, src_port, &reply);
                        return;
                    }
                    if self.dns_upstream.is_empty() {
                        if let Some(reply) = super::dns::servfail(payload) {
                            let a = Addrs {
                                src_mac: EthernetAddress(GATEWAY_MAC),
                                dst_mac: src_mac,
                                src: DNS_IP,
                                dst: src,
                            };
                            self.send_udp(&a, 53, src_port, &reply);
                        }
                        return;
                    }
                }
                let Some(host_dst) = self.map_destination(dst, dst_port) else {
                    return;
                };
                let timeout = if dst == DNS_IP {
                    self.dns_timeout
                } else {
                    self.udp_timeout
                };
                let token = self.token();
                self.udp.send(
                    &self.epoll,
                    (src, src_port, dst, dst_port),
                    host_dst,
                    payload,
                    timeout,
                    || token,
                    Instant::now(),
                );
            }
            L4::Tcp(seg) => {
                if src.is_unspecified() {
                    return;
                }
                let tuple = (src, seg.src_port, dst, seg.dst_port);
                let host_dst = self.map_destination(dst, seg.dst_port);
                // A guest that takes TSO frames gets large segments: tell the NAT a large MSS.
                let raised;
                let frame = if self.offloads.tso && seg.syn {
                    let mut f = frame.to_vec();
                    super::offload::raise_syn_mss(&mut f, super::offload::GUEST_TSO_MSS);
                    raised = f;
                    &raised[..]
                } else {
                    frame
                };
                let token = self.token();
                match self
                    .tcp
                    .guest_segment(&self.epoll, tuple, &seg, frame, host_dst, token)
                {
                    Verdict::ToSmoltcp => {
                        self.dev.push_from_guest(frame.to_vec());
                    }
                    Verdict::Drop => {}
                    Verdict::Refuse => self.send_rst(src_mac, tuple, &seg),
                }
            }
            L4::Icmp if dst == GATEWAY_IP || dst == DNS_IP => {
                self.dev.push_from_guest(frame.to_vec());
            }
            L4::Icmp | L4::Other => {}
        }
    }

    /// Where a guest destination lives on the host: 10.0.2.2 is the host's loopback, 10.0.2.3:53
    /// the upstream resolver, other guest-subnet addresses nowhere, the rest as is.
    fn map_destination(&self, ip: Ipv4Addr, port: u16) -> Option<SocketAddr> {
        if ip == GATEWAY_IP {
            return Some(SocketAddr::new(self.host_loopback, port));
        }
        if ip == DNS_IP {
            return (port == DNS_PORT)
                .then(|| self.dns_upstream.first().copied())
                .flatten();
        }
        let unroutable = in_subnet(ip)
            || ip.is_loopback()
            || ip.is_unspecified()
            || ip.is_broadcast()
            || ip.is_multicast()
            || ip.octets()[0] == 0;
        (!unroutable && port != 0).then(|| SocketAddr::new(IpAddr::V4(ip), port))
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn ident(&mut self) -> u16 {
        self.ip_ident = self.ip_ident.wrapping_add(1);
        self.ip_ident
    }

    fn send_udp(&mut self, a: &Addrs, src_port: u16, dst_port: u16, payload: &[u8]) {
        let ident = self.ident();
        let frames = wire::udp_frames(a, src_port, dst_port, payload, ident);
        // All fragments or none: a partial datagram is useless to the guest.
        if self.dev.to_guest.len() + frames.len() > self.dev.cap {
            tracing::trace!("to-guest queue full, dropping UDP datagram");
            return;
        }
        for f in frames {
            self.dev.push_to_guest(f);
        }
    }

    fn send_rst(
        &mut self,
        guest_mac: EthernetAddress,
        tuple: super::tcp::Tuple,
        seg: &wire::TcpInfo,
    ) {
        let a = Addrs {
            src_mac: EthernetAddress(GATEWAY_MAC),
            dst_mac: guest_mac,
            src: tuple.2,
            dst: tuple.0,
        };
        let ident = self.ident();
        self.dev.push_to_guest(wire::tcp_rst(&a, seg, ident));
    }

    /// The next frame for the guest, if any.
    pub fn guest_receive(&mut self) -> Option<Vec<u8>> {
        self.dev.to_guest.pop_front()
    }

    /// Whether frames are waiting for the guest.
    pub fn has_frames_for_guest(&self) -> bool {
        !self.dev.to_guest.is_empty()
    }

    /// Does all work that is possible now without blocking: accepts forwarded connections,
    /// finishes host connects, runs smoltcp and moves data between smoltcp and host sockets.
    pub fn poll(&mut self, now: Instant) {
        self.probe_guest_address(now);
        let ts = self.smol_now(now);
        let mut next = self.next_token;
        let mut token = || {
            next += 1;
            next
        };
        let mut cx = Ctx {
            iface: &mut self.iface,
            sockets: &mut self.sockets,
            dev: &mut self.dev,
            epoll: &self.epoll,
            now: ts,
        };
        self.tcp.accept_forwards(&mut cx, &mut token);
        let first_accept = !self.seen_accept && self.tcp.accepted > 0;
        self.tcp.poll_pending(&mut cx, now);
        cx.iface.poll(ts, cx.dev, cx.sockets);
        self.tcp.pump_all(&mut cx);
        cx.iface.poll(ts, cx.dev, cx.sockets);
        // Pumping again lets data read while smoltcp drained its buffers flow in this round.
        self.tcp.pump_all(&mut cx);
        cx.iface.poll(ts, cx.dev, cx.sockets);
        self.tcp.reap(&mut cx);
        self.tcp.update_interest(&self.epoll, &self.sockets);
        self.next_token = next;
        if first_accept {
            self.seen_accept = true;
            self.phase("fwd_first_accept");
        }

        for (tuple, seg) in std::mem::take(&mut self.tcp.refused) {
            if let Some(mac) = self.guest_mac {
                self.send_rst(mac, tuple, &seg);
            }
        }
        for d in self.udp.poll(&self.epoll, now) {
            let (guest_ip, guest_port, orig_ip, orig_port) = d.key;
            let Some(mac) = self.guest_mac else { continue };
            let a = Addrs {
                src_mac: EthernetAddress(GATEWAY_MAC),
                dst_mac: mac,
                src: orig_ip,
                dst: guest_ip,
            };
            self.send_udp(&a, orig_port, guest_port, &d.payload);
        }
    }

    /// How long the caller may wait (on [`Self::as_raw_fd`] and the guest) before the next
    /// [`Self::poll`]; `None` means only new events matter.
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        if !self.dev.from_guest.is_empty() {
            return Some(Duration::ZERO);
        }
        let ts = self.smol_now(now);
        let mut delay = self
            .iface
            .poll_delay(ts, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        let probe = self.address_probe.map(|(_, next)| next);
        for deadline in [self.tcp.next_deadline(), self.udp.next_deadline(), probe]
            .into_iter()
            .flatten()
        {
            let d = deadline.saturating_duration_since(now);
            delay = Some(delay.map_or(d, |x| x.min(d)));
        }
        // While the guest is not draining its queue, smoltcp cannot send anyway; draining
        // it is an event of its own, so do not spin.
        if self.dev.to_guest.len() >= self.dev.cap {
            delay = delay.map(|d| d.max(Duration::from_millis(5)));
        }
        delay
    }

    /// Current resource use.
    pub fn stats(&self) -> NetStats {
        let (tcp_connections, tcp_pending) = self.tcp.counts();
        NetStats {
            tcp_connections,
            tcp_pending,
            host_tcp_sockets: self.tcp.host_sockets(),
            udp_flows: self.udp.len(),
            frames_to_guest: self.dev.to_guest.len(),
            frames_from_guest: self.dev.from_guest.len(),
            max_tcp_buffered: self.tcp.max_buffered(&self.sockets),
        }
    }

    fn smol_now(&self, now: Instant) -> smoltcp::time::Instant {
        let micros = now.saturating_duration_since(self.epoch).as_micros();
        smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }
}

impl AsRawFd for UserNet {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

fn in_subnet(ip: Ipv4Addr) -> bool {
    ip.octets()[..3] == GATEWAY_IP.octets()[..3]
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}
