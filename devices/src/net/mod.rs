//! virtio-net and its backend: a user-mode NAT (smoltcp) with DHCP, DNS relay, outbound TCP
//! proxying and inbound port forwards.
