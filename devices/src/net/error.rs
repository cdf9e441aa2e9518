//! Errors of the user-mode network backend.

use std::io;

/// What went wrong while configuring the user-mode network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A QEMU-style `hostfwd` rule could not be parsed.
    #[error("invalid hostfwd rule {rule:?}: {reason}")]
    BadHostFwd { rule: String, reason: String },
    /// The resolver configuration could not be read.
    #[error("cannot read DNS servers from {path}: {source}")]
    ResolvConf { path: String, source: io::Error },
    /// The resolver configuration names no usable IPv4/IPv6 nameserver.
    #[error("no usable nameserver in {path}")]
    NoNameserver { path: String },
    /// The epoll instance could not be created or a socket could not be registered.
    #[error("epoll setup failed: {0}")]
    Epoll(io::Error),
    /// A port-forward listener could not be made non-blocking.
    #[error("port forward listener for guest port {guest_port}: {source}")]
    Listener { guest_port: u16, source: io::Error },
    /// A configuration value is out of range.
    #[error("invalid configuration: {field} = {value}")]
    Config { field: &'static str, value: String },
}
