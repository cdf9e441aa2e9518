//! Tier-A tests of the user-mode NAT: the test plays the guest with its own smoltcp stack
//! (see [`harness`]) or with hand-built frames, and the host peers are real sockets on
//! 127.0.0.1.

mod basic;
mod dhcp;
mod harness;
mod hostile;
mod tcp;
