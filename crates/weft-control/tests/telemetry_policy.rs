//! Heartbeats over mTLS, the topology they describe (JSON and GraphViz),
//! and versioned policies, on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use common::{Db, Harness};
use weft_bus::Backend;
use weft_control::agent::{self, AgentPaths, AgentState};
use weft_control::client::{ClientError, ControlClient};
use weft_control::policy::{Action, PolicyDocument, Protocol, PutPolicy, Rule};
use weft_control::telemetry::{HeartbeatRequest, LinkReport};
use weft_crypto::tls::SvidCredentials;
use weft_store::Store;

async fn enroll(h: &Harness, token: &str, name: &str) -> (AgentState, ControlClient) {
    let state = agent::enroll(&h.url(), token, h.trust(), &h.agent_dir(name))
        .await
        .unwrap();
    let creds = SvidCredentials::load(&AgentPaths::new(&h.agent_dir(name)).svid_dir()).unwrap();
    let client = ControlClient::new(&h.url(), h.bundle_trust(), Some(creds), None).unwrap();
    (state, client)
}

fn report(seq: u64, links: Vec<LinkReport>) -> HeartbeatRequest {
    HeartbeatRequest {
        seq,
        cpu_percent: Some(3.5),
        memory_bytes: Some(64 << 20),
        uptime_seconds: Some(seq * 10),
        routes: Some(2),
        links,
        versions: BTreeMap::from([("agent".to_owned(), "0.1.0".to_owned())]),
        endpoint: None,
    }
}

fn link(peer: &AgentState, up: bool, loss: f64) -> LinkReport {
    LinkReport {
        peer: peer.settings.node_id.clone(),
        up,
        rtt_ms: 2.5,
        loss,
        cost: 96,
    }
}

async fn heartbeats_and_topology(h: &Harness) {
    let admin = h.admin();
    let made = admin
        .create_join_token("default", &common::auto_approve_token(3, vec![], ""))
        .await
        .unwrap();
    let (a, as_a) = enroll(h, &made.token, "a").await;
    let (b, as_b) = enroll(h, &made.token, "b").await;
    let (c, as_c) = enroll(h, &made.token, "c").await;

    let ack = as_a
        .heartbeat(&report(1, vec![link(&b, true, 0.0), link(&c, false, 1.0)]))
        .await
        .unwrap();
    assert!(ack.accepted);
    as_a.heartbeat(&report(2, vec![link(&b, true, 0.0), link(&c, false, 1.0)]))
        .await
        .unwrap();
    as_b.heartbeat(&report(1, vec![link(&a, true, 0.2)]))
        .await
        .unwrap();

    // Bad reports are refused with the field named; operators cannot send.
    let mut bad = report(3, vec![link(&b, true, 2.0)]);
    let e = as_a.heartbeat(&bad).await.unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert!(e.to_string().contains("links[0].loss"), "{e}");
    bad.links.clear();
    let e = admin.heartbeat(&bad).await.unwrap_err();
    assert_eq!(e.status(), Some(401));

    let t = admin.topology().await.unwrap();
    assert_eq!(t.nodes.len(), 3);
    let health = |id: &str| {
        t.nodes
            .iter()
            .find(|n| n.node_id == id)
            .unwrap()
            .health
            .clone()
    };
    assert_eq!(health(&a.settings.node_id), "up");
    assert_eq!(health(&b.settings.node_id), "up");
    assert_eq!(health(&c.settings.node_id), "unknown");
    let mut links: Vec<(String, String, String)> = t
        .links
        .iter()
        .map(|l| (l.from.clone(), l.to.clone(), l.health.clone()))
        .collect();
    links.sort();
    let mut expected = vec![
        (
            a.settings.node_id.clone(),
            b.settings.node_id.clone(),
            "good".to_owned(),
        ),
        (
            a.settings.node_id.clone(),
            c.settings.node_id.clone(),
            "down".to_owned(),
        ),
        (
            b.settings.node_id.clone(),
            a.settings.node_id.clone(),
            "degraded".to_owned(),
        ),
    ];
    expected.sort();
    assert_eq!(links, expected);
    let dot = admin.topology_dot().await.unwrap();
    assert!(dot.starts_with("digraph weft {"), "{dot}");
    assert!(
        dot.contains(&format!(
            "\"{}\" -> \"{}\"",
            a.settings.node_id, b.settings.node_id
        )),
        "{dot}"
    );

    // History and the bus, once the heartbeats are written behind.
    h.running().flush_heartbeats().await;
    let id = a.settings.node_id.parse().unwrap();
    assert_eq!(h.store().heartbeat_history(&id, 10).await.unwrap().len(), 2);
    let shown = admin.get_node(&a.settings.node_id).await.unwrap();
    assert!(shown.last_seen.is_some());
    let telemetry = h
        .running()
        .bus()
        .stream_info("weft_telemetry")
        .await
        .unwrap();
    assert!(telemetry.state.messages >= 1);

    // A revoked node's heartbeats are refused.
    admin
        .revoke_node(&c.settings.node_id, "gone")
        .await
        .unwrap();
    let e = as_c.heartbeat(&report(1, vec![])).await.unwrap_err();
    assert_eq!(e.status(), Some(403));
    let t = admin.topology().await.unwrap();
    assert_eq!(
        t.nodes
            .iter()
            .find(|n| n.node_id == c.settings.node_id)
            .unwrap()
            .health,
        "revoked"
    );
}

/// A node revoked by another process sharing the database (here: the
/// store, behind the control plane's back) is refused once the guard's
/// cache has read it again: its entry is still used past its TTL, and
/// read again meanwhile, so the refusal comes within about the TTL.
async fn revoked_elsewhere(h: &Harness) {
    let admin = h.admin();
    let made = admin
        .create_join_token("default", &common::auto_approve_token(1, vec![], ""))
        .await
        .unwrap();
    let (d, as_d) = enroll(h, &made.token, "d").await;
    as_d.heartbeat(&report(1, vec![])).await.unwrap();
    let id = d.settings.node_id.parse().unwrap();
    h.store()
        .revoke_node(
            &id,
            "revoked by another control plane",
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    // Generous for a loaded machine: it comes after about the TTL.
    let deadline = std::time::Instant::now()
        + weft_control::app::NODE_CACHE_TTL
        + std::time::Duration::from_secs(10);
    let mut seq = 2;
    loop {
        match as_d.heartbeat(&report(seq, vec![])).await {
            Ok(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "a node revoked in the store was still accepted"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                seq += 1;
            }
            Err(e) => {
                assert_eq!(e.status(), Some(403), "{e}");
                break;
            }
        }
    }
}

fn allow_web_to_db() -> PolicyDocument {
    PolicyDocument {
        default: Action::Deny,
        rules: vec![Rule {
            from: vec!["tag:role=web".into()],
            to: vec!["tag:role=db".into()],
            ports: vec!["5432".into()],
            protocol: Protocol::Tcp,
            action: Action::Allow,
        }],
    }
}

async fn policies(h: &Harness) {
    let admin = h.admin();
    let e = admin.get_policy("default", None).await.unwrap_err();
    assert_eq!(e.status(), Some(404));
    assert!(e.to_string().contains("no policy yet"), "{e}");

    let put = |base| PutPolicy {
        document: allow_web_to_db(),
        base_version: base,
    };
    let v1 = admin.put_policy("default", &put(Some(0))).await.unwrap();
    assert_eq!(v1.version, 1);
    assert!(v1.author.starts_with("api-token:"));
    // A second edit based on "none yet" is stale.
    let e = admin
        .put_policy("default", &put(Some(0)))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(409));
    let v2 = admin.put_policy("default", &put(Some(1))).await.unwrap();
    assert_eq!(v2.version, 2);
    // An invalid document is refused with the path of the problem.
    let mut bad = allow_web_to_db();
    bad.rules[0].to = vec!["database".into()];
    let e = admin
        .put_policy(
            "default",
            &PutPolicy {
                document: bad,
                base_version: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert!(e.to_string().contains("rules[0].to[0]"), "{e}");

    // An agent reads it over mTLS; older versions stay readable.
    let made = admin
        .create_join_token(
            "default",
            &common::auto_approve_token(1, vec!["role=web".into()], ""),
        )
        .await
        .unwrap();
    let (_, as_agent) = enroll(h, &made.token, "web").await;
    let latest = as_agent.get_policy("default", None).await.unwrap();
    assert_eq!((latest.version, latest.document), (2, allow_web_to_db()));
    assert_eq!(
        admin.get_policy("default", Some(1)).await.unwrap().version,
        1
    );
    let list = admin.list_policies("default", None, None).await.unwrap();
    let versions: Vec<u32> = list.items.iter().map(|p| p.version).collect();
    assert_eq!(versions, [2, 1]);

    // Audited and published.
    let audit = admin
        .audit(&[("action", Some("policy.update".into()))])
        .await
        .unwrap();
    let results: Vec<&str> = audit.items.iter().map(|r| r.result.as_str()).collect();
    assert_eq!(results, ["failed", "success", "failed", "success"]);
    let bus = h
        .running()
        .bus()
        .stream_info("weft_policies")
        .await
        .unwrap();
    assert_eq!(bus.state.messages, 2);
    let e: ClientError = h
        .client(None)
        .get_policy("default", None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(401));
}

macro_rules! on_both {
    ($($name:ident),*) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = Harness::start(Db::Sqlite).await;
                    super::$name(&h).await;
                    h.stop().await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = Harness::start(Db::Postgres).await;
                    super::$name(&h).await;
                    h.stop().await;
                }
            )*
        }
    };
}

on_both!(heartbeats_and_topology, policies, revoked_elsewhere);
