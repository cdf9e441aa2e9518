//! UDP NAT: each (guest address, guest port, destination) flow gets a connected host UDP
//! socket. DNS to 10.0.2.3:53 is the same mechanism with the destination mapped to the
//! upstream resolver. Flows expire when idle; their number is bounded (oldest evicted).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{Epoll, EventSet};

use super::sys::set_interest;

/// (guest ip, guest port, original destination ip, original destination port)
pub(crate) type FlowKey = (Ipv4Addr, u16, Ipv4Addr, u16);

struct Flow {
    sock: UdpSocket,
    token: u64,
    interest: EventSet,
    idle_timeout: Duration,
    expires: Instant,
}

/// A datagram received from the host, to be delivered to the guest.
pub(crate) struct Incoming {
    pub key: FlowKey,
    pub payload: Vec<u8>,
}

pub(crate) struct UdpNat {
    flows: HashMap<FlowKey, Flow>,
    max_flows: usize,
    buf: Vec<u8>,
}

/// Datagrams read from one flow per poll, so one chatty peer cannot starve the rest.
const READ_BURST: usize = 32;

impl UdpNat {
    pub fn new(max_flows: usize) -> Self {
        UdpNat {
            flows: HashMap::new(),
            max_flows,
            buf: vec![0u8; 65536],
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Sends a guest datagram to `host_dst` through the flow's host socket (created on demand).
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        epoll: &Epoll,
        key: FlowKey,
        host_dst: SocketAddr,
        payload: &[u8],
        idle_timeout: Duration,
        token: impl FnOnce() -> u64,
        now: Instant,
    ) {
        if !self.flows.contains_key(&key) {
            if self.flows.len() >= self.max_flows {
                self.evict_oldest(epoll);
            }
            match open_flow(host_dst) {
                Ok(sock) => {
                    let mut flow = Flow {
                        sock,
                        token: token(),
                        interest: EventSet::empty(),
                        idle_timeout,
                        expires: now + idle_timeout,
                    };
                    set_interest(
                        epoll,
                        flow.sock.as_raw_fd(),
                        flow.token,
                        &mut flow.interest,
                        EventSet::IN,
                    );
                    self.flows.insert(key, flow);
                }
                Err(e) => {
                    tracing::debug!(dst = %host_dst, error = %e, "cannot open UDP flow");
                    return;
                }
            }
        }
        let Some(flow) = self.flows.get_mut(&key) else {
            return;
        };
        flow.expires = now + flow.idle_timeout;
        if let Err(e) = flow.sock.send(payload) {
            tracing::debug!(dst = %host_dst, error = %e, "UDP send failed, datagram dropped");
        }
    }

    /// Reads what the host sockets received and drops expired flows.
    pub fn poll(&mut self, epoll: &Epoll, now: Instant) -> Vec<Incoming> {
        let mut out = Vec::new();
        for (key, flow) in self.flows.iter_mut() {
            for _ in 0..READ_BURST {
                match flow.sock.recv(&mut self.buf) {
                    Ok(n) => {
                        flow.expires = now + flow.idle_timeout;
                        out.push(Incoming {
                            key: *key,
                            payload: self.buf[..n].to_vec(),
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // ICMP errors (port unreachable) surface here; the flow simply idles out.
                    Err(e) => {
                        tracing::trace!(error = %e, "UDP recv error");
                        break;
                    }
                }
            }
        }
        let expired: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, f)| f.expires <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            self.remove(epoll, &key);
        }
        out
    }

    /// Earliest flow expiry.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.flows.values().map(|f| f.expires).min()
    }

    fn evict_oldest(&mut self, epoll: &Epoll) {
        if let Some(key) = self
            .flows
            .iter()
            .min_by_key(|(_, f)| f.expires)
            .map(|(k, _)| *k)
        {
            tracing::debug!(?key, "UDP flow limit reached, evicting the oldest flow");
            self.remove(epoll, &key);
        }
    }

    fn remove(&mut self, epoll: &Epoll, key: &FlowKey) {
        if let Some(mut flow) = self.flows.remove(key) {
            let fd = flow.sock.as_raw_fd();
            set_interest(epoll, fd, flow.token, &mut flow.interest, EventSet::empty());
        }
    }
}

fn open_flow(dst: SocketAddr) -> io::Result<UdpSocket> {
    let bind: SocketAddr = match dst {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(bind)?;
    sock.set_nonblocking(true)?;
    sock.connect(dst)?;
    Ok(sock)
}
