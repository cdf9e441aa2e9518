//! A guest-side smoltcp stack wired to a [`UserNet`] through in-memory frame queues, and a
//! pump that moves frames both ways until a condition holds or an iteration budget runs out.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::time::Instant;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

use crate::net::{PortForward, UserNet, UserNetConfig, GATEWAY_IP, GUEST_IP};

pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Unbounded test-side queues (the NAT's own queues are the bounded ones under test).
pub struct TestDevice {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
    /// Largest frame the guest stack may emit (1514; larger plays a TSO-capable guest).
    pub mtu: usize,
}

impl Default for TestDevice {
    fn default() -> Self {
        Self {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu: 1514,
        }
    }
}

pub struct Rx(Vec<u8>);
pub struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl phy::Device for TestDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = self.mtu;
        c
    }
}

pub struct Guest {
    pub iface: Interface,
    pub sockets: SocketSet<'static>,
    pub dev: TestDevice,
    pub net: UserNet,
    epoch: Instant,
    /// Frames larger than 1514 bytes the guest sent (TSO-sized segments).
    pub big_frames: usize,
}

/// A NAT configuration with the given forwards and a DNS upstream that nothing serves.
pub fn config(forwards: Vec<PortForward>) -> UserNetConfig {
    UserNetConfig::with_dns(forwards, vec!["127.0.0.1:9".parse().unwrap()])
}

impl Guest {
    /// A guest with a static 10.0.2.15/24 address and default route via 10.0.2.2
    /// (`static_ip`), or an unconfigured one (for DHCP).
    pub fn new(cfg: UserNetConfig, static_ip: bool) -> Guest {
        Self::with_mtu(cfg, static_ip, 1514)
    }

    /// A static-address guest whose NIC does TSO both ways: its stack may emit and take frames
    /// of up to 64 KiB (the NAT announces a large MSS; a guest taking TSO frames is told
    /// `UserNet::set_guest_offloads` by the test).
    pub fn with_tso(cfg: UserNetConfig) -> Guest {
        Self::with_mtu(cfg, true, 65_535)
    }

    fn with_mtu(cfg: UserNetConfig, static_ip: bool, mtu: usize) -> Guest {
        let net = UserNet::new(cfg).expect("UserNet::new");
        let mut dev = TestDevice {
            mtu,
            ..TestDevice::default()
        };
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        let mut iface = Interface::new(config, &mut dev, smoltcp::time::Instant::ZERO);
        if static_ip {
            iface.update_ip_addrs(|a| {
                a.push(IpCidr::new(GUEST_IP.into(), 24)).unwrap();
            });
            iface
                .routes_mut()
                .add_default_ipv4_route(GATEWAY_IP)
                .unwrap();
        }
        Guest {
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            net,
            epoch: Instant::now(),
            big_frames: 0,
        }
    }

    pub fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// One round: guest stack, guest->NAT frames, NAT poll, NAT->guest frames. When nothing
    /// moved, waits up to 2 ms on the NAT's epoll fd. Returns whether any frame moved.
    pub fn step(&mut self) -> bool {
        let ts = self.now();
        self.iface.poll(ts, &mut self.dev, &mut self.sockets);
        let mut moved = false;
        while let Some(f) = self.dev.tx.pop_front() {
            self.big_frames += usize::from(f.len() > 1514);
            self.net.guest_transmit(&f);
            moved = true;
        }
        self.net.poll(Instant::now());
        while let Some(f) = self.net.guest_receive() {
            self.dev.rx.push_back(f);
            moved = true;
        }
        if !moved {
            wait_readable(self.net.as_raw_fd(), 2);
        }
        moved
    }

    /// Steps until `cond` holds; false when `max_iters` steps were not enough.
    pub fn run_until(
        &mut self,
        max_iters: usize,
        mut cond: impl FnMut(&mut Guest) -> bool,
    ) -> bool {
        for _ in 0..max_iters {
            if cond(self) {
                return true;
            }
            self.step();
        }
        cond(self)
    }

    pub fn tcp_socket(&mut self, buf: usize) -> SocketHandle {
        let s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buf]),
            tcp::SocketBuffer::new(vec![0; buf]),
        );
        self.sockets.add(s)
    }

    /// A guest socket connecting from `local_port` to `ip:port`.
    pub fn connect(&mut self, ip: Ipv4Address, port: u16, local_port: u16) -> SocketHandle {
        let h = self.tcp_socket(64 * 1024);
        let cx = self.iface.context();
        self.sockets
            .get_mut::<tcp::Socket>(h)
            .connect(cx, (ip, port), local_port)
            .expect("guest connect");
        h
    }

    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }
}

/// Receives everything available on a guest socket into `out`.
pub fn drain(g: &mut Guest, h: SocketHandle, out: &mut Vec<u8>) {
    let s = g.tcp(h);
    while s.can_recv() {
        s.recv(|b| {
            out.extend_from_slice(b);
            (b.len(), ())
        })
        .unwrap();
    }
}

/// Waits up to `ms` milliseconds for `fd` to become readable.
pub fn wait_readable(fd: i32, ms: i32) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    unsafe { libc::poll(&mut p, 1, ms) };
}

/// A listener on 127.0.0.1 with an OS-chosen port.
pub fn local_listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// A port on 127.0.0.1 with (almost certainly) nothing listening.
pub fn closed_port() -> u16 {
    let (l, port) = local_listener();
    drop(l);
    port
}
