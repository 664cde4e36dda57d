//! Agents on loopback with real QUIC links (ML-DSA-65 SVIDs,
//! X25519MLKEM768): routing across hops, reroute when a relay stops,
//! refusal of foreign, unenrolled and revoked peers.

#![allow(clippy::unwrap_used, clippy::panic)] // test code: a failed setup step should fail the test

use std::sync::Arc;
use std::time::Duration;

use weft_agent::{Agent, AgentConfig, AgentError};
use weft_crypto::ca::{CertificateAuthority, SvidAlgorithm, Validity};
use weft_crypto::kem::DecapsulationKey;
use weft_crypto::sign::CompositeSigningKey;
use weft_crypto::tls::SvidCredentials;
use weft_crypto::{NodeId, TrustDomain};
use weft_proto::node::{Event, NodeConfig};
use weft_proto::roster::Roster;
use weft_proto::wire::RevocationList;

/// A trust domain with its CA, the mesh authority and enrolled node keys.
struct Network {
    ca: CertificateAuthority,
    authority: CompositeSigningKey,
    keys: Vec<Arc<CompositeSigningKey>>,
    kems: Vec<DecapsulationKey>,
    roster: Arc<Roster>,
}

impl Network {
    fn new(domain: &str, nodes: usize) -> Self {
        let td = TrustDomain::new(domain).unwrap();
        let ca = CertificateAuthority::init(&td, Duration::from_secs(3600)).unwrap();
        let keys: Vec<_> = (0..nodes)
            .map(|_| Arc::new(CompositeSigningKey::generate().unwrap()))
            .collect();
        let roster = Arc::new(Roster::of(keys.iter().map(|k| k.public_key().clone())).unwrap());
        Self {
            ca,
            authority: CompositeSigningKey::generate().unwrap(),
            kems: (0..nodes)
                .map(|_| DecapsulationKey::generate().unwrap())
                .collect(),
            keys,
            roster,
        }
    }

    fn config(&self, key: Arc<CompositeSigningKey>, kem: DecapsulationKey) -> AgentConfig {
        let id = NodeId::of(key.public_key());
        let svid = self
            .ca
            .issue(
                &id.spiffe_id(self.ca.trust_domain()),
                SvidAlgorithm::MlDsa65,
                Validity::starting_now(Duration::from_secs(3600)).unwrap(),
            )
            .unwrap();
        let peer_kem_keys = self
            .keys
            .iter()
            .zip(&self.kems)
            .map(|(k, d)| (NodeId::of(k.public_key()), d.encapsulation_key()))
            .collect();
        AgentConfig {
            key,
            kem,
            peer_kem_keys,
            svid: SvidCredentials::from_pem(svid.cert_pem.as_bytes(), svid.key_pem.as_bytes())
                .unwrap(),
            bundle: self.ca.bundle().unwrap(),
            roster: self.roster.clone(),
            authority: self.authority.public_key().clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            node: NodeConfig {
                unix_ms_at_zero: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis() as u64,
                ..NodeConfig::default()
            },
            e2e: Default::default(),
        }
    }

    fn start(&self, i: usize) -> Agent {
        let kem = DecapsulationKey::from_seed(*self.kems[i].seed());
        Agent::start(self.config(self.keys[i].clone(), kem)).unwrap()
    }

    fn revocation(&self, epoch: u64, revoked: Vec<NodeId>) -> RevocationList {
        let issued_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let msg = RevocationList::signed_bytes(epoch, issued_ms, &revoked);
        let sig = self.authority.sign(&msg, RevocationList::CONTEXT).unwrap();
        RevocationList {
            epoch,
            issued_ms,
            revoked,
            signature: Box::new(*sig.as_bytes()),
        }
    }
}

/// The tests run one at a time: each runs several agents, and on a busy
/// 2-core machine their detectors would otherwise see each other's load
/// as link loss.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Polls `check` every 20 ms for up to `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within {within:?}: {what}");
}

async fn next_hop(agent: &Agent, dst: NodeId) -> Option<NodeId> {
    agent
        .routes()
        .await
        .unwrap()
        .into_iter()
        .find(|(d, _)| *d == dst)
        .map(|(_, r)| r.next_hop)
}

/// Sends datagrams from `from` to `to` until one arrives (datagrams are
/// unreliable), returning how many were sent.
async fn deliver(from: &Agent, to: &Agent, payload: &[u8]) -> usize {
    let mut deliveries = to.deliveries();
    for sent in 1..=20 {
        from.send(to.id(), payload.to_vec()).unwrap();
        let got = tokio::time::timeout(Duration::from_millis(250), async {
            loop {
                match deliveries.recv().await {
                    Ok(d) if d.src == from.id() && d.payload == payload => return,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(e) => panic!("event stream ended: {e}"),
                }
            }
        })
        .await;
        if got.is_ok() {
            return sent;
        }
    }
    panic!("no datagram from {} reached {}", from.id(), to.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_cross_two_hops_and_reroute_when_the_relay_hangs() {
    let _serial = SERIAL.lock().await;
    // a - b - c and a - d - c: two disjoint two-hop paths.
    let net = Network::new("mesh.weft.test", 4);
    let agents: Vec<Agent> = (0..4).map(|i| net.start(i)).collect();
    let [a, b, c, d] = [&agents[0], &agents[1], &agents[2], &agents[3]];
    assert_eq!(a.connect(b.local_addr()).await.unwrap(), b.id());
    assert_eq!(b.connect(c.local_addr()).await.unwrap(), c.id());
    assert_eq!(a.connect(d.local_addr()).await.unwrap(), d.id());
    assert_eq!(d.connect(c.local_addr()).await.unwrap(), c.id());

    eventually(Duration::from_secs(10), "a has a route to c", || async {
        next_hop(a, c.id()).await.is_some()
    })
    .await;
    deliver(a, c, b"over two hops").await;
    deliver(c, a, b"and back").await;

    // The relay a uses hangs (no close frame warns anyone); the other path
    // takes over once the detectors notice.
    let relay = next_hop(a, c.id()).await.unwrap();
    let mut agents = agents;
    let stopped = agents.iter().position(|x| x.id() == relay).unwrap();
    let hung = agents.remove(stopped);
    hung.handle().hang().unwrap();
    let (a, c) = (&agents[0], &agents[1]);
    eventually(Duration::from_secs(10), "a reroutes to c", || async {
        next_hop(a, c.id()).await.is_some_and(|hop| hop != relay)
    })
    .await;
    deliver(a, c, b"after the reroute").await;
    hung.shutdown().await;
    for x in agents {
        x.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_outside_the_network_are_refused() {
    let _serial = SERIAL.lock().await;
    let net = Network::new("mesh.weft.test", 2);
    let a = net.start(0);

    // An SVID from another trust domain: the handshake fails both ways.
    let foreign = Network::new("other.weft.test", 1);
    let x = foreign.start(0);
    let err = x.connect(a.local_addr()).await.unwrap_err();
    assert!(matches!(err, AgentError::Connect { .. }), "{err}");
    eventually(
        Duration::from_secs(5),
        "a counts the handshake refusal",
        || async { a.refusals().handshake >= 1 },
    )
    .await;

    // A valid SVID of this trust domain for a node not in the roster.
    let stranger = Arc::new(CompositeSigningKey::generate().unwrap());
    let mut cfg = net.config(stranger, DecapsulationKey::generate().unwrap());
    // It trusts a; a does not know it.
    cfg.roster = Arc::new(
        Roster::of([
            net.keys[0].public_key().clone(),
            cfg.key.public_key().clone(),
        ])
        .unwrap(),
    );
    let s = Agent::start(cfg).unwrap();
    assert!(s.connect(a.local_addr()).await.is_err());
    eventually(
        Duration::from_secs(5),
        "a counts the unenrolled peer",
        || async { a.refusals().not_enrolled >= 1 },
    )
    .await;
    assert!(a.peers().await.unwrap().is_empty());
    for agent in [a, x, s] {
        agent.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_neighbour_is_cut_off_and_cannot_come_back() {
    let _serial = SERIAL.lock().await;
    let net = Network::new("mesh.weft.test", 3);
    let agents: Vec<Agent> = (0..3).map(|i| net.start(i)).collect();
    let [a, b, c] = [&agents[0], &agents[1], &agents[2]];
    a.connect(b.local_addr()).await.unwrap();
    b.connect(c.local_addr()).await.unwrap();
    eventually(Duration::from_secs(10), "a reaches c", || async {
        next_hop(a, c.id()).await == Some(b.id())
    })
    .await;

    // The control plane revokes c and tells b; b gossips the list to a.
    let list = net.revocation(1, vec![c.id()]);
    let mut a_events = a.events();
    assert!(b.revoke(list.clone()).await.unwrap());
    tokio::time::timeout(Duration::from_secs(5), async {
        while !matches!(
            a_events.recv().await,
            Ok(Event::RevocationApplied { epoch: 1 })
        ) {}
    })
    .await
    .expect("a learns the revocation from b");
    // A replayed list is stale.
    assert!(!a.revoke(list).await.unwrap());
    eventually(Duration::from_secs(5), "b closes its link to c", || async {
        b.peers().await.unwrap().iter().all(|p| p.id != c.id())
    })
    .await;
    eventually(Duration::from_secs(5), "a loses its route to c", || async {
        next_hop(a, c.id()).await.is_none()
    })
    .await;
    assert!(c.connect(b.local_addr()).await.is_err());
    eventually(
        Duration::from_secs(5),
        "b counts the revoked peer",
        || async { b.refusals().revoked >= 1 },
    )
    .await;
    for x in agents {
        x.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_enrolled_later_is_accepted_once_the_network_file_grows() {
    let _serial = SERIAL.lock().await;
    let net = Network::new("mesh.weft.test", 3);
    // a and b start knowing only themselves and each other.
    let early = Arc::new(Roster::of(net.keys[..2].iter().map(|k| k.public_key().clone())).unwrap());
    let start = |i: usize, roster: Arc<Roster>| {
        let kem = DecapsulationKey::from_seed(*net.kems[i].seed());
        let mut cfg = net.config(net.keys[i].clone(), kem);
        cfg.roster = roster;
        Agent::start(cfg).unwrap()
    };
    let a = start(0, early.clone());
    let b = start(1, early);
    let c = start(2, net.roster.clone());
    a.connect(b.local_addr()).await.unwrap();
    assert!(
        c.connect(a.local_addr()).await.is_err(),
        "c is not enrolled yet for a"
    );

    let grown = weft_agent::network::Network {
        trust_domain: net.ca.trust_domain().clone(),
        authority: net.authority.public_key().clone(),
        nodes: net
            .keys
            .iter()
            .zip(&net.kems)
            .map(|(k, d)| weft_crypto::NodePublicIdentity {
                signing: k.public_key().clone(),
                kem: d.encapsulation_key(),
            })
            .collect(),
        tags: Default::default(),
    };
    a.handle().set_network(grown.clone()).await.unwrap();
    assert_eq!(c.connect(a.local_addr()).await.unwrap(), a.id());
    deliver(&c, &a, b"newcomer").await;
    // A file that drops or reorders nodes is refused.
    let mut shuffled = grown;
    shuffled.nodes.swap(0, 1);
    assert!(a.handle().set_network(shuffled).await.is_err());
    for x in [a, b, c] {
        x.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_moves_routes_and_injected_loss_shows_in_telemetry() {
    let _serial = SERIAL.lock().await;
    // a - b - c and a - d - c.
    let net = Network::new("mesh.weft.test", 4);
    let agents: Vec<Agent> = (0..4).map(|i| net.start(i)).collect();
    let [a, b, c, d] = [&agents[0], &agents[1], &agents[2], &agents[3]];
    a.connect(b.local_addr()).await.unwrap();
    b.connect(c.local_addr()).await.unwrap();
    a.connect(d.local_addr()).await.unwrap();
    d.connect(c.local_addr()).await.unwrap();
    eventually(Duration::from_secs(10), "a has a route to c", || async {
        next_hop(a, c.id()).await.is_some()
    })
    .await;
    let via = next_hop(a, c.id()).await.unwrap();
    assert!(a.handle().drain(via, true).await.unwrap());
    let other = if via == b.id() { d.id() } else { b.id() };
    eventually(
        Duration::from_secs(5),
        "the route leaves the drained link",
        || async { next_hop(a, c.id()).await == Some(other) },
    )
    .await;
    assert_eq!(a.handle().telemetry().await.unwrap().drained, vec![via]);
    // The drained neighbour itself is reached the long way round.
    eventually(Duration::from_secs(5), "a reaches every node", || async {
        a.handle().telemetry().await.unwrap().routes == 3
    })
    .await;
    assert_ne!(next_hop(a, via).await, Some(via));
    // Undrained, the link carries routes again (either path may win).
    assert!(a.handle().drain(via, false).await.unwrap());
    assert!(a.handle().telemetry().await.unwrap().drained.is_empty());
    // A node of the network a has no link to can be drained for when it
    // links (the drain is the peer's, kept across reconnects); a node
    // outside the network cannot.
    assert!(a.handle().drain(c.id(), true).await.unwrap());
    assert_eq!(a.handle().telemetry().await.unwrap().drained, vec![c.id()]);
    assert!(a.handle().drain(c.id(), false).await.unwrap());
    let stranger = weft_crypto::NodeId([7; 32]);
    assert!(!a.handle().drain(stranger, true).await.unwrap());
    assert!(a.handle().telemetry().await.unwrap().drained.is_empty());

    a.handle().inject_loss(other, 0.3).unwrap();
    // The loss shows as the link's measured loss, or as the link declared
    // dead: until the estimate has risen, three hellos lost in a row (1 in
    // 37 at 30 %) end the link at the detector's smallest multiplier, and
    // this test dialled it once, so nothing brings it back. Both are the
    // injected loss seen by a's detector; waiting for the first alone
    // failed now and then, at any deadline.
    eventually(
        Duration::from_secs(10),
        "a measures loss on the link, or declares it dead",
        || async {
            let peers = a.handle().telemetry().await.unwrap().peers;
            match peers.iter().find(|p| p.id == other) {
                Some(p) => p.metrics.is_some_and(|m| m.loss > 0.1),
                None => true,
            }
        },
    )
    .await;
    for x in agents {
        x.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_announcements_are_refused_and_name_the_sender() {
    let _serial = SERIAL.lock().await;
    let net = Network::new("mesh.weft.test", 3);
    let agents: Vec<Agent> = (0..3).map(|i| net.start(i)).collect();
    let [a, b, c] = [&agents[0], &agents[1], &agents[2]];
    a.connect(b.local_addr()).await.unwrap();
    b.connect(c.local_addr()).await.unwrap();
    eventually(Duration::from_secs(10), "a reaches c", || async {
        next_hop(a, c.id()).await.is_some()
    })
    .await;
    let mut events = a.events();
    assert_eq!(b.handle().inject_forged(c.id()).await.unwrap(), 2);
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Event::AnnouncementRefused {
                origin,
                reason,
                from,
            }) = events.recv().await
                && origin == c.id()
            {
                assert_eq!(reason, weft_proto::origin::Refusal::Forged);
                assert_eq!(from, b.id());
                return;
            }
        }
    })
    .await
    .expect("a refuses the forgery");
    let t = a.handle().telemetry().await.unwrap();
    assert!(
        t.refused_announcements
            .iter()
            .any(|(r, n)| r == "forged" && *n >= 1)
    );
    // The real route to c survives.
    assert_eq!(next_hop(a, c.id()).await, Some(b.id()));
    for x in agents {
        x.shutdown().await;
    }
}
