//! Small simulated meshes: convergence, failure detection and reroute,
//! forged announcements, revocation, determinism; loop-freedom checked
//! throughout.

#![allow(clippy::unwrap_used, clippy::panic)] // test code: a failed setup step should fail the test

use std::time::Duration;

use weft_proto::node::{Event, NodeConfig};
use weft_proto::origin::{OwnOrigin, Refusal};
use weft_proto::time::Time;
use weft_proto::wire::{Message, Seqno};
use weft_sim::{LinkSpec, Sim};

fn sim(n: usize, edges: &[(usize, usize)], seed: u64) -> Sim {
    let mut s = Sim::new(n, seed, NodeConfig::default()).unwrap();
    for &(a, b) in edges {
        s.connect(a, b, LinkSpec::default()).unwrap();
    }
    s
}

/// Runs in small steps, asserting loop-freedom after each.
fn run_checked(s: &mut Sim, until: Time) {
    while s.now() < until {
        let next = (s.now() + Duration::from_millis(10)).min(until);
        s.run_until(next);
        assert_eq!(
            s.forwarding_loops(),
            vec![],
            "forwarding loop at {:?}",
            s.now()
        );
        assert_eq!(
            s.next_hop_mismatches(),
            vec![],
            "route events and tables disagree at {:?}",
            s.now()
        );
    }
}

fn delivered(s: &Sim, to: usize, payload: &[u8]) -> bool {
    s.records().iter().any(|r| {
        r.node == to && matches!(&r.event, Event::Delivered { payload: p, .. } if p == payload)
    })
}

#[test]
fn a_line_converges_and_delivers() {
    let mut s = sim(5, &[(0, 1), (1, 2), (2, 3), (3, 4)], 1);
    run_checked(&mut s, Time::from_secs(2));
    for a in 0..5 {
        for b in 0..5 {
            if a != b {
                assert!(s.next_hop(a, b).is_some(), "{a} has no route to {b}");
            }
        }
    }
    assert_eq!(s.next_hop(0, 4), Some(1));
    s.send_datagram(0, 4, b"hello".to_vec());
    run_checked(&mut s, Time::from_secs(3));
    assert!(delivered(&s, 4, b"hello"));
}

#[test]
fn a_dead_relay_is_detected_and_routed_around() {
    // Diamond: 0-1-3 and 0-2-3; the path through 2 is slower.
    let mut s = Sim::new(4, 7, NodeConfig::default()).unwrap();
    let fast = LinkSpec::default();
    let slow = LinkSpec {
        latency: Duration::from_millis(30),
        ..LinkSpec::default()
    };
    s.connect(0, 1, fast).unwrap();
    s.connect(1, 3, fast).unwrap();
    s.connect(0, 2, slow).unwrap();
    s.connect(2, 3, slow).unwrap();
    run_checked(&mut s, Time::from_secs(3));
    assert_eq!(s.next_hop(0, 3), Some(1));

    let kill = s.now();
    s.kill(1);
    run_checked(&mut s, kill + Duration::from_secs(2));
    let id1 = s.ids()[1];
    let detected = s
        .records()
        .iter()
        .find(|r| r.node == 0 && r.event == Event::NeighbourDead { peer: id1 })
        .map(|r| r.at.saturating_since(kill))
        .expect("node 0 never noticed node 1 died");
    assert!(
        detected <= Duration::from_millis(300),
        "detected after {detected:?}"
    );
    assert_eq!(s.next_hop(0, 3), Some(2));
    assert_eq!(s.next_hop(3, 0), Some(2));
    s.send_datagram(0, 3, b"after".to_vec());
    run_checked(&mut s, kill + Duration::from_secs(3));
    assert!(delivered(&s, 3, b"after"));
}

#[test]
fn forged_and_unknown_announcements_are_refused() {
    let mut s = sim(3, &[(0, 1), (1, 2)], 3);
    run_checked(&mut s, Time::from_secs(2));
    let route_before = s.node(0).route(&s.ids()[2]);

    // Node 1 (compromised) claims a new seqno for node 2 with a bad signature.
    let now_ms = s.now().0 / 1000;
    let announce = |key: &std::sync::Arc<weft_crypto::sign::CompositeSigningKey>, seqno| {
        OwnOrigin::new(key.clone(), 1, seqno, now_ms)
            .unwrap()
            .announcement(seqno)
            .unwrap()
    };
    let mut forged = announce(s.key(2), Seqno(40));
    let mut cert = (*forged.cert).clone();
    cert.signature[7] ^= 0x55;
    forged.cert = std::sync::Arc::new(cert);
    let link_0_1 = 0; // first link connected
    s.inject(
        0,
        link_0_1,
        Message::Announcement(forged).to_bytes().unwrap(),
    );
    // ... a guessed seqno proof under node 2's real certificate ...
    let held = s.node(0).held_announcement(&s.ids()[2]).unwrap().clone();
    let guess = weft_proto::wire::SeqnoProof {
        origin: s.ids()[2],
        cert: held.cert.cert_ref(),
        seqno: held.seqno.next(),
        proof: [0x42; 32],
    };
    s.inject(0, link_0_1, Message::SeqnoProof(guess).to_bytes().unwrap());
    // ... and one for a node that was never enrolled.
    let stranger = std::sync::Arc::new(weft_crypto::sign::CompositeSigningKey::generate().unwrap());
    let unknown = announce(&stranger, Seqno(1));
    s.inject(
        0,
        link_0_1,
        Message::Announcement(unknown).to_bytes().unwrap(),
    );
    run_checked(&mut s, Time::from_secs(3));

    assert_eq!(s.node(0).refused(Refusal::Forged), 2);
    assert_eq!(s.node(0).refused(Refusal::UnknownOrigin), 1);
    assert_eq!(s.node(0).held_announcement(&s.ids()[2]), Some(&held));
    assert_eq!(s.node(0).route(&s.ids()[2]), route_before);
}

#[test]
fn a_revoked_node_loses_every_route_and_its_links() {
    let mut s = sim(4, &[(0, 1), (1, 2), (2, 3), (3, 0)], 5);
    run_checked(&mut s, Time::from_secs(2));
    s.revoke(0, &[2], 1).unwrap();
    run_checked(&mut s, Time::from_secs(3));
    let id2 = s.ids()[2];
    for i in [0, 1, 3] {
        assert!(
            s.node(i).route(&id2).is_none(),
            "node {i} still routes to the revoked node"
        );
        assert!(
            s.records()
                .iter()
                .any(|r| r.node == i && r.event == Event::RevocationApplied { epoch: 1 })
        );
    }
    // Its neighbours closed their links to it, and the rest still talk.
    assert!(s.next_hop(1, 3).is_some());
    assert_ne!(s.next_hop(1, 3), Some(2));
}

#[test]
fn same_seed_same_trace() {
    let run = |seed| {
        let mut s = sim(
            6,
            &[(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 0), (1, 4)],
            seed,
        );
        s.run_until(Time::from_secs(1));
        s.kill(4);
        s.run_until(Time::from_secs(2));
        s.trace_hash()
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
}

#[test]
fn chaos_scenario_on_a_small_mesh_keeps_every_invariant() {
    use weft_sim::scenario::{Scenario, run};
    let sc = Scenario {
        nodes: 80,
        degree: 6.0,
        kill: 0.2,
        byzantine: 3,
        seed: 9,
        duration: Duration::from_secs(16),
        ..Scenario::default()
    };
    let r = run(&sc, &mut |_| {}).unwrap();
    assert_eq!(r.killed, 16);
    assert_eq!(r.loops, 0);
    assert_eq!(r.forged_injected, 12);
    assert_eq!(r.forged_accepted, 0);
    assert_eq!(r.unreachable_pairs_after_heal, 0, "{r:?}");
    assert_eq!(r.unrepaired_routes, 0, "{r:?}");
    assert!(r.delivery_ratio >= 0.999, "{r:?}");
    assert!(
        r.detect_ms.count > 0 && r.detect_ms.max <= 300.0,
        "{:?}",
        r.detect_ms
    );
    assert!(r.reconverge_ms.count > 0, "{r:?}");
    // Same seed, same trace.
    assert_eq!(run(&sc, &mut |_| {}).unwrap().trace_hash, r.trace_hash);
}

/// The same chaos with route state cut to the bone: one or two heard
/// routes per destination (offers dropped for lack of room come back
/// through route requests) and a send window smaller than one certificate
/// (every fetched certificate waits for the previous one to drain). Still
/// no loop at any instant, and every connected pair routed after healing.
#[test]
fn chaos_with_few_routes_kept_and_a_tiny_send_window_keeps_every_invariant() {
    use weft_sim::scenario::{Scenario, run};
    for kept in [1, 2] {
        let sc = Scenario {
            nodes: 60,
            degree: 8.0,
            kill: 0.2,
            seed: 5,
            duration: Duration::from_secs(12),
            routes_kept: kept,
            send_window: 1024,
            ..Scenario::default()
        };
        let r = run(&sc, &mut |_| {}).unwrap();
        assert_eq!(r.loops, 0, "kept {kept}: {r:?}");
        assert_eq!(r.unreachable_pairs_after_heal, 0, "kept {kept}: {r:?}");
        assert_eq!(r.unrepaired_routes, 0, "kept {kept}: {r:?}");
        assert!(r.delivery_ratio >= 0.999, "kept {kept}: {r:?}");
        let requests = r.messages.get("route_request").map_or(0, |m| m.frames);
        assert!(
            requests > 0,
            "kept {kept}: no offer was ever dropped? {r:?}"
        );
    }
}
