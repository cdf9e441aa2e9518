//! virtio-net backend: a user-mode NAT ("slirp") built on smoltcp.
//!
//! [`UserNet`] presents the guest with slirp's network: gateway 10.0.2.2 (which stands for the
//! host's loopback), DNS relay 10.0.2.3, guest 10.0.2.15/24 handed out by a built-in DHCP server.
//! Guest TCP connections are terminated in smoltcp and proxied through host sockets; host
//! listeners ([`PortForward`]) are forwarded into the guest. It is transport-independent: the
//! virtio-net device feeds it Ethernet frames ([`UserNet::guest_transmit`]), drains frames for
//! the guest ([`UserNet::guest_receive`]) and calls [`UserNet::poll`] when
//! [`UserNet::as_raw_fd`] becomes readable or [`UserNet::poll_delay`] expires.

mod config;
mod device;
mod dhcp;
pub mod dns;
mod error;
pub mod offload;
mod sys;
mod tcp;
mod udp;
mod usernet;
pub mod virtio;
mod wire;

pub use config::{
    dns_from_resolv_conf, parse_hostfwd, parse_resolv_conf, HostFwd, Limits, PortForward,
    UserNetConfig, DNS_IP, GATEWAY_IP, GATEWAY_MAC, GUEST_IP, NETMASK, PREFIX_LEN,
};
pub use error::NetError;
pub use usernet::{GuestOffloads, NetStats, PhaseSink, UserNet};

#[cfg(test)]
mod tests;
