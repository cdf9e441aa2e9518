//! User-mode NAT: guest Ethernet frames from the input (records, see `cvmm_fuzz::records`) go
//! through `UserNet::guest_transmit`; flag bit 1 runs `poll` after the frame; every frame the
//! NAT produces for the guest is drained.
//!
//! No traffic leaves the host: for every IPv4 TCP/UDP frame the destination address is rewritten
//! into 10.0.2.0/24 (the NAT's own subnet; 10.0.2.2 maps to host loopback) or 127.0.0.0/8 before
//! the NAT sees it, and no DNS upstream is configured. Flag bit 0 clear recomputes the IPv4 and
//! TCP/UDP checksums so the NAT's deeper paths are reached; set, the frame keeps its checksums.
#![no_main]

use cvmm_fuzz::frame::{confine_destination, fix_checksums};
use devices::net::{UserNet, UserNetConfig};
use libfuzzer_sys::fuzz_target;
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let mut net = match UserNet::new(UserNetConfig::with_dns(vec![], vec![])) {
        Ok(n) => n,
        Err(e) => panic!("UserNet::new failed: {e}"),
    };
    let mut frame = Vec::new();
    for (flags, rec) in cvmm_fuzz::records(data) {
        frame.clear();
        frame.extend_from_slice(rec);
        confine_destination(&mut frame);
        if flags & 1 == 0 {
            fix_checksums(&mut frame);
        }
        net.guest_transmit(&frame);
        if flags & 2 != 0 {
            net.poll(Instant::now());
        }
        while net.guest_receive().is_some() {}
    }
    net.poll(Instant::now());
    while net.guest_receive().is_some() {}
});
