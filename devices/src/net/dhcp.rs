//! A single-lease DHCP server (RFC 2131) that hands 10.0.2.15/24 to the guest with router
//! 10.0.2.2 and DNS 10.0.2.3, like slirp. Requests are parsed field by field so unusual client
//! identifiers do not make a client unservable; replies are built with smoltcp's `DhcpRepr`.

use std::net::Ipv4Addr;

use smoltcp::wire::{DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress};

use super::config::{DNS_IP, GATEWAY_IP, GUEST_IP, NETMASK};

const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_SERVER_ID: u8 = 54;
const OPT_DNS: u8 = 6;
const OPT_RENEWAL: u8 = 58;
const OPT_REBINDING: u8 = 59;
/// BOOTP's minimum message size; some clients discard shorter replies.
const MIN_BOOTP_LEN: usize = 300;

/// Where and what to send back to the client.
pub(crate) struct DhcpReply {
    pub payload: Vec<u8>,
    pub dst_ip: Ipv4Addr,
    pub dst_mac: EthernetAddress,
    /// An ACK that gives the client 10.0.2.15.
    pub leased: bool,
}

/// The fields of a client message the server acts on.
struct Request {
    kind: DhcpMessageType,
    xid: u32,
    chaddr: EthernetAddress,
    ciaddr: Ipv4Addr,
    broadcast: bool,
    requested: Option<Ipv4Addr>,
    server_id: Option<Ipv4Addr>,
}

fn parse(payload: &[u8]) -> Option<Request> {
    let pkt = DhcpPacket::new_checked(payload).ok()?;
    // op must be BOOTREQUEST, htype Ethernet with 6-byte addresses, and the magic cookie set.
    if pkt.opcode() != smoltcp::wire::DhcpOpCode::Request
        || pkt.hardware_type() != smoltcp::wire::ArpHardware::Ethernet
        || pkt.hardware_len() != 6
        || pkt.magic_number() != 0x6382_5363
    {
        return None;
    }
    let mut kind = None;
    let mut requested = None;
    let mut server_id = None;
    for opt in pkt.options() {
        match (opt.kind, opt.data) {
            (OPT_MESSAGE_TYPE, [t]) => kind = Some(DhcpMessageType::from(*t)),
            (OPT_REQUESTED_IP, &[a, b, c, d]) => requested = Some(Ipv4Addr::new(a, b, c, d)),
            (OPT_SERVER_ID, &[a, b, c, d]) => server_id = Some(Ipv4Addr::new(a, b, c, d)),
            _ => {}
        }
    }
    Some(Request {
        kind: kind?,
        xid: pkt.transaction_id(),
        chaddr: pkt.client_hardware_address(),
        ciaddr: pkt.client_ip(),
        broadcast: pkt.flags().contains(smoltcp::wire::DhcpFlags::BROADCAST),
        requested,
        server_id,
    })
}

/// The DHCP server state (only the lease time: there is a single fixed lease).
pub(crate) struct DhcpServer {
    lease_secs: u32,
}

impl DhcpServer {
    pub fn new(lease_secs: u32) -> Self {
        DhcpServer { lease_secs }
    }

    /// Answers one client message (UDP payload to port 67), or `None` to stay silent.
    pub fn handle(&self, payload: &[u8]) -> Option<DhcpReply> {
        let Some(req) = parse(payload) else {
            tracing::debug!(len = payload.len(), "dropping malformed DHCP message");
            return None;
        };
        tracing::debug!(kind = ?req.kind, mac = %req.chaddr, ciaddr = %req.ciaddr,
            requested = ?req.requested, "DHCP request");
        match req.kind {
            DhcpMessageType::Discover => Some(self.reply(&req, DhcpMessageType::Offer)),
            DhcpMessageType::Request => {
                if req.server_id.is_some_and(|s| s != GATEWAY_IP) {
                    return None; // the client chose another server
                }
                // SELECTING / INIT-REBOOT carry "requested IP"; RENEWING / REBINDING carry ciaddr.
                let wanted = req.requested.unwrap_or(req.ciaddr);
                if wanted == GUEST_IP {
                    let mut ack = self.reply(&req, DhcpMessageType::Ack);
                    ack.leased = true;
                    Some(ack)
                } else {
                    Some(self.reply(&req, DhcpMessageType::Nak))
                }
            }
            DhcpMessageType::Inform => Some(self.reply(&req, DhcpMessageType::Ack)),
            DhcpMessageType::Release | DhcpMessageType::Decline => {
                tracing::info!(kind = ?req.kind, "DHCP client gave the lease back");
                None
            }
            _ => None,
        }
    }

    fn reply(&self, req: &Request, kind: DhcpMessageType) -> DhcpReply {
        let nak = kind == DhcpMessageType::Nak;
        let inform = req.kind == DhcpMessageType::Inform;
        let dns = DNS_IP.octets();
        let t1 = (self.lease_secs / 2).to_be_bytes();
        let t2 = (self.lease_secs / 8 * 7).to_be_bytes();
        let extra_all = [
            DhcpOption {
                kind: OPT_DNS,
                data: &dns,
            },
            DhcpOption {
                kind: OPT_RENEWAL,
                data: &t1,
            },
            DhcpOption {
                kind: OPT_REBINDING,
                data: &t2,
            },
        ];
        let extra: &[DhcpOption] = match (nak, inform) {
            (true, _) => &[],
            (false, true) => &extra_all[..1],
            (false, false) => &extra_all,
        };
        let config = |v| if nak { None } else { Some(v) };
        let repr = DhcpRepr {
            message_type: kind,
            transaction_id: req.xid,
            secs: 0,
            client_hardware_address: req.chaddr,
            client_ip: if nak {
                Ipv4Addr::UNSPECIFIED
            } else {
                req.ciaddr
            },
            your_ip: if nak || inform {
                Ipv4Addr::UNSPECIFIED
            } else {
                GUEST_IP
            },
            server_ip: Ipv4Addr::UNSPECIFIED,
            router: config(GATEWAY_IP),
            subnet_mask: config(NETMASK),
            relay_agent_ip: Ipv4Addr::UNSPECIFIED,
            broadcast: req.broadcast,
            requested_ip: None,
            client_identifier: None,
            server_identifier: Some(GATEWAY_IP),
            parameter_request_list: None,
            dns_servers: None,
            max_size: None,
            lease_duration: if nak || inform {
                None
            } else {
                Some(self.lease_secs)
            },
            renew_duration: None,
            rebind_duration: None,
            additional_options: extra,
        };
        let mut payload = vec![0u8; repr.buffer_len().max(MIN_BOOTP_LEN)];
        // The buffer is sized by buffer_len(), so emitting cannot run out of room.
        if let Err(e) = repr.emit(&mut DhcpPacket::new_unchecked(&mut payload[..])) {
            tracing::warn!(error = %e, "cannot emit DHCP reply");
        }
        // RFC 2131 4.1: unicast to ciaddr when set; broadcast NAKs and replies the client asked
        // to be broadcast; otherwise unicast to yiaddr at chaddr.
        let (dst_ip, dst_mac) = if nak || (req.ciaddr.is_unspecified() && req.broadcast) {
            (Ipv4Addr::BROADCAST, EthernetAddress::BROADCAST)
        } else if !req.ciaddr.is_unspecified() {
            (req.ciaddr, req.chaddr)
        } else {
            (GUEST_IP, req.chaddr)
        };
        DhcpReply {
            payload,
            dst_ip,
            dst_mac,
            leased: false,
        }
    }
}
