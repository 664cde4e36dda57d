//! The network policy as the data plane enforces it: which nodes may send
//! which IP traffic to which, first matching rule wins, else the default.
//!
//! The control plane's policy document names nodes by selector (`*`,
//! `node:<id>`, a SPIFFE ID, `tag:<tag>`); its agent-side client resolves
//! the selectors against the network's members and hands the agent an
//! [`Acl`] of node sets, so that checking a packet costs a few set
//! lookups and no parsing. The TUN data plane checks every packet twice:
//! when it leaves (so denied traffic never crosses the mesh) and when it
//! arrives (the destination's own check is the one that protects it).
//! Without a policy everything is allowed.

use std::collections::HashSet;
use std::ops::RangeInclusive;

use weft_crypto::NodeId;

/// IANA protocol numbers the rules can name.
const TCP: u8 = 6;
const UDP: u8 = 17;
/// IPv6 extension headers skipped to reach the transport header
/// (hop-by-hop, routing, destination options).
const EXTENSIONS: [u8; 3] = [0, 43, 60];
/// IPv6 fragment header: only the first fragment carries the ports.
const FRAGMENT: u8 = 44;
/// Most extension headers walked before giving up on a packet.
const MAX_EXTENSIONS: usize = 8;

/// A set of nodes a rule matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nodes {
    /// Every node.
    Any,
    /// These nodes.
    Only(HashSet<NodeId>),
}

impl Nodes {
    fn contains(&self, id: &NodeId) -> bool {
        match self {
            Nodes::Any => true,
            Nodes::Only(set) => set.contains(id),
        }
    }
}

/// Which transport a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP only.
    Tcp,
    /// UDP only.
    Udp,
    /// Any IP traffic (with ports: TCP and UDP to those ports).
    Any,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRule {
    /// Senders.
    pub from: Nodes,
    /// Receivers.
    pub to: Nodes,
    /// Destination port ranges; `None`: any port, and traffic without
    /// ports (ICMPv6) too.
    pub ports: Option<Vec<RangeInclusive<u16>>>,
    /// Transport.
    pub transport: Transport,
    /// Whether a match lets the packet through.
    pub allow: bool,
}

/// A compiled policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    /// The policy version it was compiled from (shown in status).
    pub version: u32,
    /// Rules in order.
    pub rules: Vec<AclRule>,
    /// What happens when no rule matches.
    pub default_allow: bool,
}

/// What the ACL needs to know of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flow {
    protocol: u8,
    /// The destination port, for TCP and UDP (first fragment).
    port: Option<u16>,
}

/// Reads the transport protocol and destination port of an IPv6 packet,
/// walking at most [`MAX_EXTENSIONS`] extension headers. `None` if it is
/// not a well-formed IPv6 packet.
fn flow(packet: &[u8]) -> Option<Flow> {
    if packet.len() < 40 || packet[0] >> 4 != 6 {
        return None;
    }
    let mut next = packet[6];
    let mut at = 40usize;
    for _ in 0..MAX_EXTENSIONS {
        if EXTENSIONS.contains(&next) {
            let len = 8 + 8 * usize::from(*packet.get(at + 1)?);
            next = *packet.get(at)?;
            at = at.checked_add(len)?;
        } else if next == FRAGMENT {
            let offset = u16::from_be_bytes([*packet.get(at + 2)?, *packet.get(at + 3)?]) >> 3;
            next = *packet.get(at)?;
            at += 8;
            if offset != 0 {
                // A later fragment: no ports in it.
                return Some(Flow {
                    protocol: next,
                    port: None,
                });
            }
        } else {
            break;
        }
    }
    let port = match next {
        TCP | UDP => Some(u16::from_be_bytes([
            *packet.get(at + 2)?,
            *packet.get(at + 3)?,
        ])),
        _ => None,
    };
    Some(Flow {
        protocol: next,
        port,
    })
}

impl AclRule {
    fn matches(&self, src: &NodeId, dst: &NodeId, flow: Flow) -> bool {
        let transport = match self.transport {
            Transport::Tcp => flow.protocol == TCP,
            Transport::Udp => flow.protocol == UDP,
            Transport::Any => true,
        };
        let ports = match (&self.ports, flow.port) {
            (None, _) => true,
            (Some(ranges), Some(p)) => ranges.iter().any(|r| r.contains(&p)),
            // A rule about ports says nothing of traffic without them.
            (Some(_), None) => false,
        };
        transport && ports && self.from.contains(src) && self.to.contains(dst)
    }
}

impl Acl {
    /// Whether the IP `packet` from `src` to `dst` may pass. A packet that
    /// does not parse as IPv6 is refused (the data plane carries only
    /// IPv6).
    pub fn allows(&self, src: &NodeId, dst: &NodeId, packet: &[u8]) -> bool {
        let Some(flow) = flow(packet) else {
            return false;
        };
        self.rules
            .iter()
            .find(|r| r.matches(src, dst, flow))
            .map_or(self.default_allow, |r| r.allow)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    fn packet(protocol: u8, port: u16) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[6] = protocol;
        p[42..44].copy_from_slice(&port.to_be_bytes());
        p
    }

    fn rule(
        from: Nodes,
        to: Nodes,
        ports: Option<Vec<RangeInclusive<u16>>>,
        allow: bool,
    ) -> AclRule {
        AclRule {
            from,
            to,
            ports,
            transport: Transport::Tcp,
            allow,
        }
    }

    #[test]
    fn first_match_wins_then_the_default() {
        let web = Nodes::Only([id(1)].into());
        let db = Nodes::Only([id(2)].into());
        let acl = Acl {
            version: 1,
            rules: vec![
                rule(web.clone(), db.clone(), Some(vec![5432..=5432]), true),
                rule(Nodes::Any, db, None, false),
            ],
            default_allow: true,
        };
        assert!(acl.allows(&id(1), &id(2), &packet(TCP, 5432)));
        assert!(!acl.allows(&id(1), &id(2), &packet(TCP, 22)));
        assert!(!acl.allows(&id(3), &id(2), &packet(TCP, 5432)));
        // UDP is not covered by the TCP rules: the default applies.
        assert!(acl.allows(&id(3), &id(2), &packet(UDP, 5432)));
        assert!(acl.allows(&id(2), &id(1), &packet(TCP, 80)));
    }

    #[test]
    fn port_rules_do_not_match_icmp_and_garbage_is_refused() {
        let acl = Acl {
            version: 1,
            rules: vec![AclRule {
                from: Nodes::Any,
                to: Nodes::Any,
                ports: Some(vec![1..=65535]),
                transport: Transport::Any,
                allow: true,
            }],
            default_allow: false,
        };
        assert!(acl.allows(&id(1), &id(2), &packet(UDP, 53)));
        assert!(
            !acl.allows(&id(1), &id(2), &packet(58, 0)),
            "ICMPv6 has no port"
        );
        assert!(!acl.allows(&id(1), &id(2), &[0x45; 60]), "IPv4");
        assert!(!acl.allows(&id(1), &id(2), &[0x60; 10]), "short");
    }

    #[test]
    fn extension_headers_are_walked() {
        // Hop-by-hop (8 bytes) then UDP to port 53.
        let mut p = vec![0u8; 56];
        p[0] = 0x60;
        p[6] = 0;
        p[40] = UDP;
        p[41] = 0;
        p[50..52].copy_from_slice(&53u16.to_be_bytes());
        assert_eq!(
            flow(&p),
            Some(Flow {
                protocol: UDP,
                port: Some(53)
            })
        );
        // A header that claims more bytes than the packet has.
        p[41] = 200;
        assert_eq!(flow(&p), None);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = flow(&bytes);
        }
    }
}
