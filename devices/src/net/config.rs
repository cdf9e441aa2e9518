//! Configuration of the user-mode network: slirp's fixed addresses, limits, port forwards,
//! the QEMU `hostfwd` syntax and `/etc/resolv.conf` parsing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use super::NetError;

/// The gateway; guest connections to it reach the host's loopback.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The DNS relay.
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The only address the DHCP server hands out.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// Prefix length of the guest network.
pub const PREFIX_LEN: u8 = 24;
/// Netmask of the guest network.
pub const NETMASK: Ipv4Addr = Ipv4Addr::new(255, 255, 255, 0);
/// MAC address of the gateway and DNS relay (slirp's).
pub const GATEWAY_MAC: [u8; 6] = [0x52, 0x55, 0x0a, 0x00, 0x02, 0x02];

/// Resource bounds. Every queue and buffer of the NAT has a fixed maximum size.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Simultaneous TCP connections (both directions, including connects in progress).
    pub max_tcp: usize,
    /// Simultaneous UDP flows (DNS queries included).
    pub max_udp_flows: usize,
    /// smoltcp receive buffer per TCP connection (guest -> host), bytes.
    pub tcp_rx_buffer: usize,
    /// smoltcp send buffer per TCP connection (host -> guest), bytes.
    pub tcp_tx_buffer: usize,
    /// Frames queued in each direction between the guest and the NAT.
    pub frame_queue: usize,
    /// How long a host connect may take before the guest gets a RST.
    pub connect_timeout: Duration,
    /// Idle time after which a DNS flow is dropped.
    pub dns_timeout: Duration,
    /// Idle time after which any other UDP flow is dropped.
    pub udp_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tcp: 256,
            max_udp_flows: 64,
            tcp_rx_buffer: 128 * 1024,
            tcp_tx_buffer: 128 * 1024,
            frame_queue: 512,
            connect_timeout: Duration::from_secs(30),
            dns_timeout: Duration::from_secs(10),
            udp_timeout: Duration::from_secs(60),
        }
    }
}

/// One inbound forward: connections accepted on `listener` go to the guest's `guest_port`.
#[derive(Debug)]
pub struct PortForward {
    /// An already bound listener (for example a socket inherited from the manager).
    pub listener: TcpListener,
    /// The guest TCP port connections are forwarded to.
    pub guest_port: u16,
}

/// Everything [`super::UserNet::new`] needs.
#[derive(Debug)]
pub struct UserNetConfig {
    /// Inbound TCP forwards.
    pub forwards: Vec<PortForward>,
    /// Upstream resolvers for the DNS relay; the first one is used.
    pub dns_upstream: Vec<SocketAddr>,
    /// What 10.0.2.2 stands for on the host.
    pub host_loopback: IpAddr,
    /// Hosts file whose names 10.0.2.3 answers itself (`/etc/hosts`); `None`: relay all.
    pub hosts_file: Option<std::path::PathBuf>,
    /// DHCP lease time in seconds.
    pub lease_secs: u32,
    /// Resource bounds.
    pub limits: Limits,
}

impl UserNetConfig {
    /// A configuration with the given forwards and DNS servers taken from `/etc/resolv.conf`.
    pub fn from_system(forwards: Vec<PortForward>) -> Result<Self, NetError> {
        Ok(Self::with_dns(
            forwards,
            dns_from_resolv_conf(Path::new("/etc/resolv.conf"))?,
        ))
    }

    /// A configuration with the given forwards and upstream DNS servers.
    pub fn with_dns(forwards: Vec<PortForward>, dns_upstream: Vec<SocketAddr>) -> Self {
        UserNetConfig {
            forwards,
            dns_upstream,
            host_loopback: IpAddr::V4(Ipv4Addr::LOCALHOST),
            hosts_file: Some("/etc/hosts".into()),
            lease_secs: 86400,
            limits: Limits::default(),
        }
    }
}

/// Reads the nameservers of a resolv.conf file (port 53).
pub fn dns_from_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>, NetError> {
    let text = std::fs::read_to_string(path).map_err(|source| NetError::ResolvConf {
        path: path.display().to_string(),
        source,
    })?;
    let servers = parse_resolv_conf(&text);
    if servers.is_empty() {
        return Err(NetError::NoNameserver {
            path: path.display().to_string(),
        });
    }
    Ok(servers)
}

/// Extracts the `nameserver` lines of resolv.conf text; unparsable entries are skipped.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then_some(())?;
            // Strip an IPv6 zone ("fe80::1%eth0"): it cannot be expressed in an IpAddr.
            let addr = words.next()?.split('%').next()?;
            addr.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// A parsed `hostfwd` rule: optional host address, host port, guest port.
pub type HostFwd = (Option<IpAddr>, u16, u16);

/// Parses QEMU's `hostfwd` syntax `[tcp]:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`, for
/// example `tcp::7020-:7002` or `tcp:127.0.0.1:7020-10.0.2.15:7002`. Only TCP is supported and
/// the guest address, if given, must be 10.0.2.15.
pub fn parse_hostfwd(rule: &str) -> Result<HostFwd, NetError> {
    let bad = |reason: &str| NetError::BadHostFwd {
        rule: rule.to_string(),
        reason: reason.to_string(),
    };
    let (proto, rest) = rule
        .split_once(':')
        .ok_or_else(|| bad("expected [tcp]:[hostaddr]:hostport-[guestaddr]:guestport"))?;
    if !(proto.is_empty() || proto.eq_ignore_ascii_case("tcp")) {
        return Err(bad(&format!("unsupported protocol {proto:?} (only tcp)")));
    }
    let (host, guest) = rest
        .split_once('-')
        .ok_or_else(|| bad("missing '-' between host and guest parts"))?;
    let (host_addr, host_port) = split_addr_port(host).map_err(|r| bad(&format!("host: {r}")))?;
    let (guest_addr, guest_port) =
        split_addr_port(guest).map_err(|r| bad(&format!("guest: {r}")))?;
    if guest_port == 0 {
        return Err(bad("guest port must not be 0"));
    }
    match guest_addr {
        None => {}
        Some(IpAddr::V4(ip)) if ip == GUEST_IP => {}
        Some(other) => return Err(bad(&format!("guest address {other} is not {GUEST_IP}"))),
    }
    Ok((host_addr, host_port, guest_port))
}

/// Splits `[ADDR]:PORT` (ADDR may be empty, IPv4, or a bracketed IPv6 address).
fn split_addr_port(s: &str) -> Result<(Option<IpAddr>, u16), String> {
    let (addr, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} lacks ':PORT'"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("port {port:?} is not a number in 0..=65535"))?;
    let addr = addr.trim_start_matches('[').trim_end_matches(']');
    if addr.is_empty() {
        return Ok((None, port));
    }
    let ip = addr
        .parse::<IpAddr>()
        .map_err(|_| format!("address {addr:?} is not an IP address"))?;
    Ok((Some(ip), port))
}
