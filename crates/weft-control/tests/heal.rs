//! The control plane's self-healing loop end to end: three enrolled
//! nodes whose agents run with admin sockets, heartbeats over mTLS that
//! report a lossy link, the telemetry the control plane publishes on its
//! embedded bus consumed by the loop, the link drained at both ends
//! through the agents' admin sockets, the drain verified, and the
//! incident in the store and its steps on the audit stream.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Db, Harness};
use weft_agent::AgentHandle;
use weft_agent::daemon::Daemon;
use weft_bus::{Backend, ConsumerConfig, FetchRequest};
use weft_control::agent::{self, AgentPaths};
use weft_control::client::ControlClient;
use weft_control::telemetry::{HeartbeatRequest, LinkReport};
use weft_crypto::NodeId;
use weft_crypto::tls::SvidCredentials;
use weft_store::{ActionOutcome, IncidentFilter, IncidentStatus, PageRequest, Store};

const POLICY: &str = r#"
version = 1
[limits]
blast_radius_min_nodes = 2
[[policy]]
name = "degraded link"
kind = "link_degraded"
min_severity = "major"
[[policy.actions]]
action = "drain_link"
cooldown = "10m"
verify_after = "2s"
requires = ["endpoints_keep_a_link"]
"#;

async fn linked(h: &AgentHandle, peer: NodeId) -> bool {
    h.peers()
        .await
        .is_ok_and(|p| p.iter().any(|p| p.id == peer))
}

async fn drained(h: &AgentHandle, peer: NodeId) -> bool {
    h.telemetry().await.is_ok_and(|t| t.drained.contains(&peer))
}

fn link(peer: NodeId, loss: f64) -> LinkReport {
    LinkReport {
        peer: peer.to_string(),
        up: true,
        rtt_ms: 2.0,
        loss,
        cost: 96,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_drains_a_lossy_link_through_the_agents_and_stores_the_incident() {
    let mut h = Harness::start(Db::Sqlite).await;
    let made = h
        .admin()
        .create_join_token(
            "default",
            &common::auto_approve_token(3, vec![], "heal test"),
        )
        .await
        .unwrap();
    let names = ["a", "b", "c"];
    let mut ids = Vec::new();
    for name in names {
        let state = agent::enroll(&h.url(), &made.token, h.trust(), &h.agent_dir(name))
            .await
            .unwrap();
        ids.push(state.settings.node_id.parse::<NodeId>().unwrap());
    }
    for name in names {
        agent::update_network_file(&h.agent_dir(name))
            .await
            .unwrap();
    }
    let (a, b, c) = (ids[0], ids[1], ids[2]);

    // The control plane again, now with the loop, its policy and the
    // agents' admin sockets.
    h.running.take().unwrap().shutdown().await;
    let policy = h.dir.path().join("heal.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let mut config = common::config(h.dir.path());
    config.heal.enabled = true;
    config.heal.policy = Some(policy);
    config.heal.cycle_interval = Duration::from_millis(200);
    config.heal.agent_sockets = names
        .iter()
        .zip(&ids)
        .map(|(n, id)| (*id, h.agent_dir(n).join("agent.sock")))
        .collect::<BTreeMap<_, _>>();
    h.running = Some(weft_control::start(config).await.unwrap());

    // The agents, in a triangle.
    let da = Daemon::start(&common::agent_settings(&h.agent_dir("a"), vec![]))
        .await
        .unwrap();
    let a_addr = da.agent.local_addr();
    let db = Daemon::start(&common::agent_settings(&h.agent_dir("b"), vec![a_addr]))
        .await
        .unwrap();
    let b_addr = db.agent.local_addr();
    let dc = Daemon::start(&common::agent_settings(
        &h.agent_dir("c"),
        vec![a_addr, b_addr],
    ))
    .await
    .unwrap();
    let (ha, hb) = (da.agent.handle(), db.agent.handle());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(linked(&ha, b).await && linked(&ha, c).await && linked(&hb, c).await) {
        assert!(Instant::now() < deadline, "the agents did not link up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Each node reports over mTLS with its own SVID: a-b loses 30 %.
    let clients: Vec<ControlClient> = names
        .iter()
        .map(|n| {
            let creds =
                SvidCredentials::load(&AgentPaths::new(&h.agent_dir(n)).svid_dir()).unwrap();
            ControlClient::new(&h.url(), h.bundle_trust(), Some(creds), None).unwrap()
        })
        .collect();
    let reports = [
        vec![link(b, 0.3), link(c, 0.0)],
        vec![link(a, 0.3), link(c, 0.0)],
        vec![link(a, 0.0), link(b, 0.0)],
    ];
    let store = h.store().clone();
    let filter = IncidentFilter {
        kind: Some("link_degraded".into()),
        ..IncidentFilter::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seq = 0;
    let incident = loop {
        assert!(
            Instant::now() < deadline,
            "the lossy link was not healed; stored: {:?}",
            store
                .list_incidents(filter.clone(), PageRequest::first(10))
                .await
        );
        seq += 1;
        for (client, links) in clients.iter().zip(&reports) {
            client
                .heartbeat(&HeartbeatRequest {
                    seq,
                    cpu_percent: Some(5.0),
                    memory_bytes: Some(64 << 20),
                    uptime_seconds: Some(seq),
                    routes: Some(2),
                    links: links.clone(),
                    versions: BTreeMap::new(),
                    endpoint: None,
                })
                .await
                .unwrap();
        }
        let page = store
            .list_incidents(filter.clone(), PageRequest::first(10))
            .await
            .unwrap();
        if let Some(i) = page
            .items
            .iter()
            .find(|i| i.status == IncidentStatus::Resolved)
        {
            break i.clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Drained at both ends, by the agents themselves.
    assert!(drained(&ha, b).await, "a did not drain its link to b");
    assert!(drained(&hb, a).await, "b did not drain its link to a");
    assert!(!drained(&ha, c).await, "a drained a healthy link");

    // The stored incident: the link, one drain, verified.
    let record = store.get_incident(incident.id).await.unwrap();
    assert_eq!(record.actions.len(), 1, "{:?}", record.actions);
    assert_eq!(record.actions[0].action, "drain_link");
    assert_eq!(record.actions[0].outcome, ActionOutcome::Succeeded);
    let document: serde_json::Value = serde_json::from_str(&record.document).unwrap();
    let text = document.to_string();
    for step in ["detected", "planned", "acted", "verified", "resolved"] {
        assert!(text.contains(&format!("\"{step}\"")), "no {step} in {text}");
    }

    // Every step went to the audit stream.
    let bus = h.running().bus();
    let mut consumer = ConsumerConfig::new("heal-test");
    consumer.filter_subject =
        Some(weft_bus::subject::SubjectFilter::new("weft.audit.heal").unwrap());
    bus.create_consumer(weft_control::app::AUDIT_STREAM, consumer)
        .await
        .unwrap();
    let got = bus
        .fetch(
            weft_control::app::AUDIT_STREAM,
            "heal-test",
            FetchRequest::new(100, Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let steps: Vec<String> = got
        .iter()
        .filter_map(|d| {
            let v: serde_json::Value = serde_json::from_slice(&d.message.payload).ok()?;
            let data = v.get("data")?;
            (data.get("incident")?.as_str()? == incident.id.to_string())
                .then(|| data.get("step")?.as_str().map(str::to_owned))?
        })
        .collect();
    assert_eq!(
        steps,
        ["detected", "planned", "acted", "verified", "resolved"],
        "{got:?}"
    );

    dc.stop().await;
    db.stop().await;
    da.stop().await;
    h.stop().await;
}
