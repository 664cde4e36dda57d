//! The TUN data plane: IP packets to other nodes' mesh addresses travel
//! the mesh as sealed datagrams.
//!
//! Every node has one IPv6 address derived from its NodeId in the
//! `fd00::/8` unique-local range ([`mesh_address`]); the interface holds
//! it with prefix length 8, so the kernel routes the whole range into
//! `weft0`. The interface MTU is IPv6's minimum, 1280, so a packet plus
//! the end-to-end and mesh headers (about 100 bytes) always fits one QUIC
//! datagram on a 1500-byte path and is never fragmented outside; QUIC
//! carries a larger one on the link's stream instead of dropping it.
//!
//! Inbound packets are written to the interface only if their source is
//! the mesh address of the node whose session sealed them and their
//! destination is ours: a node cannot spoof another's address.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use weft_crypto::NodeId;

use crate::{Agent, AgentError, AgentHandle, Delivery};

/// The first byte of every mesh address (`fd00::/8`, RFC 4193).
pub const MESH_PREFIX: u8 = 0xfd;
/// Interface MTU: the IPv6 minimum.
pub const TUN_MTU: u16 = 1280;
/// Default interface name.
pub const DEFAULT_TUN_NAME: &str = "weft0";

/// The mesh address of a node: `fd` followed by the first 15 bytes of its
/// NodeId (a SHA-256 of its key: 120 bits, so no two enrolled nodes share
/// one in practice).
pub fn mesh_address(id: &NodeId) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a[0] = MESH_PREFIX;
    a[1..].copy_from_slice(&id.0[..15]);
    Ipv6Addr::from(a)
}

/// Source and destination of an IPv6 packet, if `packet` is one (version
/// 6, at least a whole fixed header).
pub fn ipv6_endpoints(packet: &[u8]) -> Option<(Ipv6Addr, Ipv6Addr)> {
    if packet.len() < 40 || packet[0] >> 4 != 6 {
        return None;
    }
    let src: [u8; 16] = packet[8..24].try_into().ok()?;
    let dst: [u8; 16] = packet[24..40].try_into().ok()?;
    Some((Ipv6Addr::from(src), Ipv6Addr::from(dst)))
}

/// Mesh addresses of the enrolled nodes.
#[derive(Debug, Clone, Default)]
pub struct AddressBook(HashMap<Ipv6Addr, NodeId>);

impl AddressBook {
    /// The addresses of `nodes`.
    pub fn of(nodes: impl IntoIterator<Item = NodeId>) -> Self {
        Self(nodes.into_iter().map(|n| (mesh_address(&n), n)).collect())
    }

    /// The addresses of a roster's nodes.
    pub fn of_roster(roster: &weft_proto::roster::Roster) -> Self {
        Self::of(
            (0..roster.len())
                .filter_map(|i| u32::try_from(i).ok())
                .filter_map(|i| roster.id(weft_proto::roster::NodeIndex(i))),
        )
    }

    /// The node at `addr`.
    pub fn node(&self, addr: &Ipv6Addr) -> Option<NodeId> {
        self.0.get(addr).copied()
    }
}

/// Packets the data plane did not carry, by reason.
#[derive(Debug, Default)]
pub struct TunStats {
    /// Packets read from the interface and sent into the mesh.
    pub sent: AtomicU64,
    /// Packets from the mesh written to the interface.
    pub received: AtomicU64,
    /// Read from the interface but not IPv6, or not from our address.
    pub dropped_not_ours: AtomicU64,
    /// Read from the interface for an address no enrolled node has.
    pub dropped_no_node: AtomicU64,
    /// From the mesh with a source that is not the sender's mesh address
    /// or a destination that is not ours.
    pub dropped_spoofed: AtomicU64,
    /// Lost because the data plane fell behind the mesh.
    pub dropped_lagged: AtomicU64,
    /// Refused by the network policy, leaving or arriving.
    pub dropped_policy: AtomicU64,
}

/// A running TUN data plane.
pub struct Tun {
    /// The interface's name.
    pub name: String,
    /// Our mesh address.
    pub address: Ipv6Addr,
    /// Counters.
    pub stats: Arc<TunStats>,
    tasks: [JoinHandle<()>; 2],
}

impl Tun {
    /// Creates interface `name` with this node's mesh address and starts
    /// carrying packets between it and the mesh (to the roster's nodes, as
    /// the network policy allows). Needs CAP_NET_ADMIN.
    pub fn start(agent: &Agent, name: &str) -> Result<Tun, AgentError> {
        let address = mesh_address(&agent.id());
        let device = tun_rs::DeviceBuilder::new()
            .name(name)
            .ipv6(address, 8u8)
            .mtu(TUN_MTU)
            .build_async()
            .map_err(|e| {
                AgentError::Tun(format!(
                    "cannot create {name}: {e} (needs CAP_NET_ADMIN and /dev/net/tun)"
                ))
            })?;
        let device = Arc::new(device);
        let stats = Arc::new(TunStats::default());
        let tasks = [
            tokio::spawn(outbound(
                device.clone(),
                address,
                agent.handle(),
                stats.clone(),
            )),
            tokio::spawn(inbound(
                device,
                address,
                agent.handle(),
                agent.deliveries(),
                stats.clone(),
            )),
        ];
        tracing::info!(interface = name, %address, "TUN data plane up");
        Ok(Tun {
            name: name.to_string(),
            address,
            stats,
            tasks,
        })
    }

    /// Stops carrying packets (the interface goes with the process).
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

async fn outbound(
    device: Arc<tun_rs::AsyncDevice>,
    me: Ipv6Addr,
    sender: AgentHandle,
    stats: Arc<TunStats>,
) {
    let my_id = sender.id();
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let n = match device.recv(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "TUN read failed; data plane stopped");
                return;
            }
        };
        let packet = &buf[..n];
        let Some((src, dst)) = ipv6_endpoints(packet).filter(|(src, _)| *src == me) else {
            count(&stats.dropped_not_ours);
            continue;
        };
        let _ = src;
        let Some(node) = sender.node_at(&dst) else {
            count(&stats.dropped_no_node);
            continue;
        };
        if sender
            .acl()
            .is_some_and(|acl| !acl.allows(&my_id, &node, packet))
        {
            count(&stats.dropped_policy);
            continue;
        }
        if sender.send(node, packet.to_vec()).is_err() {
            return;
        }
        count(&stats.sent);
    }
}

async fn inbound(
    device: Arc<tun_rs::AsyncDevice>,
    me: Ipv6Addr,
    agent: AgentHandle,
    mut deliveries: broadcast::Receiver<Delivery>,
    stats: Arc<TunStats>,
) {
    let my_id = agent.id();
    loop {
        let d = match deliveries.recv().await {
            Ok(d) => d,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                stats.dropped_lagged.fetch_add(n, Ordering::Relaxed);
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let authentic = ipv6_endpoints(&d.payload)
            .is_some_and(|(src, dst)| src == mesh_address(&d.src) && dst == me);
        if !authentic {
            count(&stats.dropped_spoofed);
            continue;
        }
        if agent
            .acl()
            .is_some_and(|acl| !acl.allows(&d.src, &my_id, &d.payload))
        {
            count(&stats.dropped_policy);
            continue;
        }
        if let Err(e) = device.send(&d.payload).await {
            tracing::warn!(error = %e, "TUN write failed");
            continue;
        }
        count(&stats.received);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn packet(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[8..24].copy_from_slice(&src.octets());
        p[24..40].copy_from_slice(&dst.octets());
        p
    }

    #[test]
    fn addresses_come_from_node_ids() {
        let id = NodeId([0xab; 32]);
        let a = mesh_address(&id);
        assert_eq!(a.octets()[0], 0xfd);
        assert_eq!(&a.octets()[1..], &[0xab; 15]);
        let book = AddressBook::of([id, NodeId([1; 32])]);
        assert_eq!(book.node(&a), Some(id));
        assert_eq!(book.node(&Ipv6Addr::LOCALHOST), None);
    }

    #[test]
    fn only_ipv6_headers_parse() {
        let (s, d) = (
            mesh_address(&NodeId([1; 32])),
            mesh_address(&NodeId([2; 32])),
        );
        assert_eq!(ipv6_endpoints(&packet(s, d)), Some((s, d)));
        let mut v4 = packet(s, d);
        v4[0] = 0x45;
        assert_eq!(ipv6_endpoints(&v4), None);
        assert_eq!(ipv6_endpoints(&packet(s, d)[..39]), None);
        assert_eq!(ipv6_endpoints(&[]), None);
    }
}
