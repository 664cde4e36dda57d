//! Enrolled agents following their control plane over loopback: the
//! network file fetched at start, heartbeats, peers suggested by the
//! control plane, a revocation applied by the
//! revoked node's neighbour, the SVID renewed at half its lifetime and
//! presented on new links, and the agents running on without the control
//! plane, saying so.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Db, Harness};
use weft_agent::AgentHandle;
use weft_agent::network::{NETWORK_FILE, Network};
use weft_control::agent;
use weft_control::sync::EnrolledAgent;
use weft_crypto::NodeId;

async fn wait_for<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("not within {within:?}: {what}");
}

async fn linked(h: &AgentHandle, peer: NodeId) -> bool {
    h.peers()
        .await
        .is_ok_and(|p| p.iter().any(|p| p.id == peer))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_agents_follow_the_control_plane() {
    // The shortest SVID lifetime allowed: renewal falls due after 30 s.
    let h = Harness::start_with(Db::Sqlite, |c| c.svid_ttl = Duration::from_secs(60)).await;
    let made = h
        .admin()
        .create_join_token(
            "default",
            &common::auto_approve_token(4, vec![], "sync test"),
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let state = agent::enroll(&h.url(), &made.token, h.trust(), &h.agent_dir(name))
            .await
            .unwrap();
        ids.push(state.settings.node_id.parse::<NodeId>().unwrap());
    }
    let (a_id, b_id, c_id, d_id) = (ids[0], ids[1], ids[2], ids[3]);

    // a first; b and c link to it.
    let a = EnrolledAgent::start(&common::agent_settings(&h.agent_dir("a"), vec![]))
        .await
        .unwrap();
    let a_addr = a.daemon.agent.local_addr();
    let b = EnrolledAgent::start(&common::agent_settings(&h.agent_dir("b"), vec![a_addr]))
        .await
        .unwrap();
    let c = EnrolledAgent::start(&common::agent_settings(&h.agent_dir("c"), vec![a_addr]))
        .await
        .unwrap();
    let (ha, hb) = (a.daemon.agent.handle(), b.daemon.agent.handle());
    let hc = c.daemon.agent.handle();

    // The network file came from the control plane: all four enrolled
    // nodes, in enrollment order.
    let network = Network::load(&h.agent_dir("b").join(NETWORK_FILE)).unwrap();
    let listed: Vec<NodeId> = network.nodes.iter().map(|n| n.node_id()).collect();
    assert_eq!(listed, ids);
    wait_for(Duration::from_secs(20), "a links to b and c", || async {
        linked(&ha, b_id).await && linked(&ha, c_id).await
    })
    .await;
    assert!(
        ha.control_status().starts_with("connected to"),
        "{}",
        ha.control_status()
    );

    // Heartbeats reach the control plane.
    wait_for(
        Duration::from_secs(20),
        "the topology lists a, b, c up",
        || async {
            h.admin().topology().await.is_ok_and(|t| {
                [a_id, b_id, c_id].iter().all(|id| {
                    t.nodes
                        .iter()
                        .any(|n| n.node_id == id.to_string() && n.health == "up")
                })
            })
        },
    )
    .await;

    // c revoked at the control plane: a closes its link, at its next sync
    // or when b's list reaches it over the mesh.
    h.admin()
        .revoke_node(&c_id.to_string(), "sync test")
        .await
        .unwrap();
    wait_for(Duration::from_secs(30), "a drops the revoked c", || async {
        !linked(&ha, c_id).await
    })
    .await;
    assert!(linked(&ha, b_id).await, "a lost b as well");
    // c itself hears it at its next sync: the control plane refuses it.
    wait_for(
        Duration::from_secs(30),
        "c reports it is refused",
        || async { hc.control_status().starts_with("REFUSED by") },
    )
    .await;
    c.stop().await;

    // Renewal at half the SVID's lifetime: b's SVID file changes, and a
    // new node linking to b after that is accepted (b presents the new
    // SVID on new links).
    let before = std::fs::read(h.agent_dir("b").join("svid.pem")).unwrap();
    wait_for(Duration::from_secs(60), "b renews its SVID", || async {
        std::fs::read(h.agent_dir("b").join("svid.pem")).is_ok_and(|now| now != before)
    })
    .await;
    // d has no peers in its configuration: the control plane suggests
    // a and b (up, with the addresses their heartbeats gave), not the
    // revoked c.
    let d = EnrolledAgent::start(&common::agent_settings(&h.agent_dir("d"), vec![]))
        .await
        .unwrap();
    let hd = d.daemon.agent.handle();
    wait_for(
        Duration::from_secs(20),
        "d links to b after b's renewal",
        || async { linked(&hb, d_id).await },
    )
    .await;
    wait_for(Duration::from_secs(20), "d links to a as well", || async {
        linked(&hd, a_id).await
    })
    .await;
    assert!(!linked(&hd, c_id).await, "d linked to the revoked c");

    // Without the control plane the agents keep their links and say so.
    h.stop().await;
    wait_for(
        Duration::from_secs(30),
        "a reports the control plane unreachable",
        || async { ha.control_status().starts_with("UNREACHABLE") },
    )
    .await;
    assert!(
        linked(&ha, b_id).await,
        "a lost b without the control plane"
    );
    d.stop().await;
    b.stop().await;
    a.stop().await;
}
