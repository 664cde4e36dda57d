//! `weft demo`: the whole system in one process, with faults injected and
//! healed while you watch.
//!
//! It starts a control plane (SQLite in a temporary directory, the
//! embedded bus), enrolls N agents through its HTTPS API with a join
//! token, runs them on loopback with real QUIC links (no TUN, so no root),
//! and drives the self-healing loop (`weft-heal`) from their telemetry and
//! events. Then it injects, one after the other:
//!
//! 1. a relay hangs (no close frame: neighbours must notice);
//! 2. a link drops 30 % of its datagrams;
//! 3. a node's workload saturates a CPU core;
//! 4. a node forges announcements for another;
//! 5. an operator revokes a node at the control plane.
//!
//! The loop's actions are real: restart the hung agent from its data
//! directory, drain the lossy link at both ends, stop the runaway
//! workload, revoke the forger at the control plane and hand the signed
//! list to every agent. Each fault's row says when it was detected, when
//! it was healed, by what, and whether the loop verified the result by
//! measuring again.
//!
//! Everything goes through the control plane's API, the network file (the
//! roster of enrolled nodes' keys) included: it is fetched from
//! `GET /v1/networks/{network}/members` once every agent has enrolled.

#![forbid(unsafe_code)]

mod load;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{broadcast, mpsc};
use weft_agent::AgentHandle;
use weft_agent::config::AgentSettings;
use weft_agent::daemon::Daemon;
use weft_agent::network::{NETWORK_FILE, Network};
use weft_control::ControlConfig;
use weft_control::api::CreateJoinToken;
use weft_control::client::{ControlClient, Trust};
use weft_crypto::{NodeId, NodeIdentity};
use weft_heal::{
    ActRequest, ActionKind, ActionResult, Engine, Input, Metric, Output, Policy, Sample, Step,
    StoreKnowledge, Target,
};
use weft_proto::node::Event as NodeEvent;
use weft_proto::origin::Refusal;
use weft_store::Store as _;

use crate::load::Burner;

/// The healing policy of the demo: the default one's actions with windows
/// short enough for a one-minute run.
pub const DEMO_POLICY: &str = include_str!("demo_policy.toml");

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DemoError(String);

fn fail(what: &str, e: impl std::fmt::Display) -> DemoError {
    DemoError(format!("{what}: {e}"))
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Agents.
    pub nodes: usize,
    /// How long one fault may take to heal before it counts as not healed.
    pub fault_timeout: Duration,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            nodes: 12,
            fault_timeout: Duration::from_secs(20),
        }
    }
}

/// One fault and what the loop did about it.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRow {
    /// What was injected.
    pub fault: String,
    /// From injection to the incident's detection (or, for the operator's
    /// revocation, to every agent applying it).
    pub detected_ms: Option<u64>,
    /// From injection to the verified repair.
    pub healed_ms: Option<u64>,
    /// What repaired it.
    pub action: String,
    /// Whether the result was verified by measuring again.
    pub verified: bool,
}

/// The demo's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// One row per fault.
    pub faults: Vec<FaultRow>,
    /// Whether every fault was healed and verified.
    pub all_healed: bool,
    /// Agents.
    pub nodes: usize,
    /// Links between them.
    pub links: usize,
    /// Wall time of the whole run, seconds.
    pub wall_seconds: f64,
}

/// A running demo: the control plane and agents stay up until dropped or
/// [`Demo::stop`] (for `--keep-running`).
pub struct Demo {
    /// The control plane's URL.
    pub control_url: String,
    /// Its admin token.
    pub admin_token: String,
    /// The CA bundle file to trust it with.
    pub bundle_path: PathBuf,
    control: weft_control::Running,
    admin: ControlClient,
    network: String,
    /// Where restarted agents' events go while the loop runs.
    events: Option<mpsc::UnboundedSender<Observed>>,
    nodes: Vec<NodeSlot>,
    dir: tempfile::TempDir,
}

struct NodeSlot {
    id: NodeId,
    settings: AgentSettings,
    daemon: Option<Daemon>,
    neighbours: Vec<usize>,
    load: Option<Burner>,
    quarantined: bool,
}

impl NodeSlot {
    fn handle(&self) -> Option<AgentHandle> {
        self.daemon.as_ref().map(|d| d.agent.handle())
    }
}

/// Observations the loop driver collects from the agents.
enum Observed {
    Node(usize, NodeEvent),
    ActDone(ActionResult),
}

impl Demo {
    /// Stops the agents and the control plane.
    pub async fn stop(mut self) {
        for n in &mut self.nodes {
            if let Some(d) = n.daemon.take() {
                d.stop().await;
            }
        }
        self.control.shutdown().await;
    }
}

/// Runs the demo, printing progress through `progress`; returns the report
/// and the still-running system.
pub async fn run(
    cfg: &DemoConfig,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(DemoReport, Demo), DemoError> {
    let started = Instant::now();
    let mut demo = start(cfg, progress).await?;
    let faults = run_faults(&mut demo, cfg, progress).await?;
    let all_healed = faults.iter().all(|f| f.healed_ms.is_some() && f.verified);
    let report = DemoReport {
        faults,
        all_healed,
        nodes: demo.nodes.len(),
        links: demo.nodes.iter().map(|n| n.neighbours.len()).sum::<usize>() / 2,
        wall_seconds: started.elapsed().as_secs_f64(),
    };
    Ok((report, demo))
}

/// Starts the system without injecting faults: the control plane, `cfg.nodes`
/// enrolled agents linked on loopback, converged (every node routes to
/// every other).
pub async fn start(cfg: &DemoConfig, progress: &(dyn Fn(&str) + Sync)) -> Result<Demo, DemoError> {
    let started = Instant::now();
    if !(4..=64).contains(&cfg.nodes) {
        return Err(DemoError(format!(
            "--nodes {} is outside 4..=64",
            cfg.nodes
        )));
    }
    let dir = tempfile::tempdir().map_err(|e| fail("temporary directory", e))?;

    // The control plane.
    let mut control_cfg =
        ControlConfig::new(dir.path().join("control")).map_err(|e| fail("control plane", e))?;
    control_cfg.listen = "127.0.0.1:0".parse().map_err(|e| fail("address", e))?;
    let control = weft_control::start(control_cfg)
        .await
        .map_err(|e| fail("control plane", e))?;
    let info = control.info().clone();
    let admin_token = info
        .admin_token
        .clone()
        .ok_or_else(|| DemoError("the control plane printed no admin token".into()))?;
    let bundle = std::fs::read(&info.bundle_path).map_err(|e| fail("CA bundle", e))?;
    progress(&format!(
        "control plane up at {} (SQLite, embedded bus, network {})",
        info.url, info.network
    ));
    let admin = ControlClient::new(
        &info.url,
        Trust::Bundle(bundle.clone()),
        None,
        Some(admin_token.clone()),
    )
    .map_err(|e| fail("control client", e))?;
    let token = admin
        .create_join_token(
            &info.network,
            &CreateJoinToken {
                uses: cfg.nodes as u32,
                ttl_seconds: 600,
                tags: vec!["demo".into()],
                auto_approve: true,
                description: "weft demo".into(),
            },
        )
        .await
        .map_err(|e| fail("join token", e))?;

    // Enrollment: each agent makes its identity and gets its SVID.
    let mut dirs = Vec::new();
    for i in 0..cfg.nodes {
        let d = dir.path().join(format!("node{i:02}"));
        weft_control::agent::enroll(&info.url, &token.token, Trust::Bundle(bundle.clone()), &d)
            .await
            .map_err(|e| fail(&format!("enrolling node {i}"), e))?;
        dirs.push(d);
    }
    progress(&format!(
        "{} agents enrolled with one join token",
        cfg.nodes
    ));
    let identities: Vec<NodeIdentity> = dirs
        .iter()
        .map(|d| NodeIdentity::load(&d.join("node.key")).map_err(|e| fail("node key", e)))
        .collect::<Result<_, _>>()?;
    let network_json = admin
        .fetch_members(&info.network)
        .await
        .map_err(|e| fail("network file", e))?;
    let network =
        Network::from_json(network_json.as_bytes()).map_err(|e| fail("network file", e))?;
    if network.nodes.len() != identities.len() {
        return Err(DemoError(format!(
            "the control plane lists {} members, {} agents enrolled",
            network.nodes.len(),
            identities.len()
        )));
    }
    for d in &dirs {
        std::fs::write(d.join(NETWORK_FILE), &network_json).map_err(|e| fail("network file", e))?;
    }

    // Agents on loopback: a ring with chords, so every node has four
    // neighbours and every relay has a detour.
    let n = cfg.nodes;
    let mut edges = Vec::new();
    for i in 0..n {
        for step in [1, n / 3] {
            let (a, b) = (i, (i + step) % n);
            let e = (a.min(b), a.max(b));
            if a != b && !edges.contains(&e) {
                edges.push(e);
            }
        }
    }
    let mut nodes = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let settings = AgentSettings {
            data_dir: d.clone(),
            listen: "127.0.0.1:0".parse().map_err(|e| fail("address", e))?,
            peers: Vec::new(),
            tun: None,
            admin_socket: d.join("agent.sock"),
            metrics_listen: None,
            advertise: None,
            max_peers: 0,
        };
        let daemon = Daemon::start(&settings)
            .await
            .map_err(|e| fail(&format!("agent {i}"), e))?;
        let mut settings = settings;
        // A restart comes back on the same port, where neighbours redial.
        settings.listen = daemon.agent.local_addr();
        let neighbours = edges
            .iter()
            .filter_map(|&(a, b)| (a == i).then_some(b).or((b == i).then_some(a)))
            .collect();
        nodes.push(NodeSlot {
            id: identities[i].node_id(),
            settings,
            daemon: Some(daemon),
            neighbours,
            load: None,
            quarantined: false,
        });
    }
    for &(a, b) in &edges {
        let addr = nodes[b].settings.listen;
        if let Some(d) = nodes[a].daemon.as_mut() {
            d.agent.add_peer(addr);
        }
    }
    let demo = Demo {
        control_url: info.url.clone(),
        admin_token,
        bundle_path: info.bundle_path.clone(),
        control,
        admin,
        network: info.network.clone(),
        events: None,
        nodes,
        dir,
    };
    wait_converged(&demo, Duration::from_secs(30)).await?;
    progress(&format!(
        "{} agents linked over QUIC (X25519MLKEM768, ML-DSA-65), {} links, every node routes to every other ({:.1} s)",
        n,
        edges.len(),
        started.elapsed().as_secs_f64()
    ));

    Ok(demo)
}

async fn wait_converged(demo: &Demo, within: Duration) -> Result<(), DemoError> {
    let deadline = Instant::now() + within;
    let live: Vec<_> = demo
        .nodes
        .iter()
        .filter(|s| !s.quarantined)
        .filter_map(NodeSlot::handle)
        .collect();
    let want = live.len() - 1;
    while Instant::now() < deadline {
        let mut all = true;
        for h in &live {
            let routes = tokio::time::timeout(Duration::from_millis(500), h.telemetry())
                .await
                .ok()
                .and_then(Result::ok)
                .map_or(0, |t| t.routes);
            all &= routes >= want;
        }
        if all {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(DemoError(format!(
        "the mesh did not converge within {within:?}"
    )))
}

/// What a fault is waiting for.
struct Pending {
    row: FaultRow,
    target: Target,
    injected: Instant,
}

/// Drives the healing loop while the faults are injected one by one.
async fn run_faults(
    demo: &mut Demo,
    cfg: &DemoConfig,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Vec<FaultRow>, DemoError> {
    let admin = demo.admin.clone();
    let network = demo.network.clone();
    let (admin, network) = (&admin, network.as_str());
    let policy = Policy::parse(DEMO_POLICY).map_err(|e| fail("demo policy", e))?;
    let heal_cfg = weft_heal::Config {
        cycle_interval: Duration::from_millis(100),
        ..weft_heal::Config::default()
    };
    let epoch = Instant::now();
    let clock = move || weft_heal::Time::from_millis(epoch.elapsed().as_millis() as u64);
    // Incidents go to the control plane's store, where `weft incidents`
    // reads them (with --keep-running, or from the data directory after).
    let store = demo.control.store().clone();
    let network_name =
        weft_store::NetworkName::new(network).map_err(|e| fail("network name", e))?;
    let network_id = store
        .get_network_by_name(&network_name)
        .await
        .map_err(|e| fail("network", e))?
        .id;
    let knowledge = StoreKnowledge::open(store, Some(network_id))
        .await
        .map_err(|e| fail("incident store", e))?;
    let mut engine =
        Engine::new(heal_cfg, policy, knowledge, clock()).map_err(|e| fail("healing loop", e))?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    demo.events = Some(tx.clone());
    for (i, slot) in demo.nodes.iter().enumerate() {
        if let Some(d) = &slot.daemon {
            forward_events(i, d.agent.events(), tx.clone());
        }
    }

    let n = demo.nodes.len();
    let (relay, lossy, busy, forger, revoked) = (3 % n, (0, 1), 5 % n, 7 % n, 9 % n);
    let mut rows = Vec::new();
    let script: [(&str, Target); 4] = [
        ("relay hangs", Target::Node(demo.nodes[relay].id)),
        (
            "link at 30 % loss",
            Target::link(demo.nodes[lossy.0].id, demo.nodes[lossy.1].id),
        ),
        ("node overloaded", Target::Node(demo.nodes[busy].id)),
        ("forged announcements", Target::Node(demo.nodes[forger].id)),
    ];
    for (k, (_, target)) in script.into_iter().enumerate() {
        let fault = match k {
            0 => format!("node {relay} (a relay) hangs"),
            1 => format!("link {}-{} drops 30 % of datagrams", lossy.0, lossy.1),
            2 => format!("node {busy}'s workload saturates a core"),
            _ => format!("node {forger} forges announcements for node 0"),
        };
        progress(&format!("fault: {fault}"));
        match k {
            0 => {
                if let Some(h) = demo.nodes[relay].handle() {
                    h.hang().map_err(|e| fail("hang", e))?;
                }
            }
            1 => {
                if let Some(h) = demo.nodes[lossy.0].handle() {
                    h.inject_loss(demo.nodes[lossy.1].id, 0.3)
                        .map_err(|e| fail("loss", e))?;
                }
            }
            2 => demo.nodes[busy].load = Some(Burner::start()),
            _ => {}
        }
        let mut pending = Pending {
            row: FaultRow {
                fault,
                detected_ms: None,
                healed_ms: None,
                action: "-".into(),
                verified: false,
            },
            target,
            injected: Instant::now(),
        };
        let deadline = Instant::now() + cfg.fault_timeout;
        let mut last_forgery = Instant::now() - Duration::from_secs(1);
        while Instant::now() < deadline && pending.row.healed_ms.is_none() {
            if k == 3
                && !demo.nodes[forger].quarantined
                && last_forgery.elapsed() >= Duration::from_millis(300)
            {
                if let Some(h) = demo.nodes[forger].handle() {
                    let _ = h.inject_forged(demo.nodes[0].id).await;
                }
                last_forgery = Instant::now();
            }
            let now = clock();
            let mut inputs = collect_samples(demo, now).await;
            while let Ok(o) = rx.try_recv() {
                match o {
                    Observed::Node(i, e) => {
                        if let Some(event) = heal_event(demo, i, e) {
                            inputs.push(Input::Event { at: now, event });
                        }
                    }
                    Observed::ActDone(r) => inputs.push(Input::ActionResult(r)),
                }
            }
            for input in inputs {
                if let Err(e) = engine.handle_input(now, input) {
                    tracing::debug!(error = %e, "input refused by the loop");
                }
            }
            engine.handle_timeout(now);
            while let Some(out) = engine.poll_output() {
                match out {
                    Output::Act(req) => {
                        let desc = format!("{} on {}", req.action, name_target(demo, &req.target));
                        progress(&format!("  act: {desc}"));
                        let result = act(demo, &req).await;
                        if let Err(e) = &result {
                            progress(&format!("  action failed: {e}"));
                        }
                        let _ = tx.send(Observed::ActDone(ActionResult {
                            id: req.id,
                            outcome: result,
                        }));
                    }
                    Output::Audit(ev) => {
                        let ours = ev.target == pending.target;
                        let t = pending.injected.elapsed().as_millis() as u64;
                        match ev.step {
                            Step::Detected if ours => {
                                pending.row.detected_ms.get_or_insert(t);
                                progress(&format!(
                                    "  detected: {} on {} after {t} ms",
                                    ev.kind,
                                    name_target(demo, &ev.target)
                                ));
                            }
                            Step::Verified if ours => {
                                pending.row.verified = true;
                                pending.row.healed_ms = Some(t);
                                if let Some(a) = ev.action {
                                    pending.row.action = a.to_string();
                                }
                                progress(&format!("  verified after {t} ms: {}", ev.detail));
                            }
                            Step::NotImproved
                            | Step::RolledBack
                            | Step::Escalated
                            | Step::Deferred
                            | Step::ActionFailed
                                if ours =>
                            {
                                progress(&format!("  {:?}: {}", ev.step, ev.detail));
                            }
                            _ => {}
                        }
                    }
                }
            }
            if let Err(e) = engine.knowledge_mut().flush().await {
                progress(&format!("  incidents not stored yet: {e}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if pending.row.healed_ms.is_none() {
            progress("  not healed in time");
        }
        rows.push(pending.row);
        // Let the mesh settle before the next fault.
        let _ = wait_converged(demo, Duration::from_secs(10)).await;
    }

    // The operator revokes a node: the control plane signs a new list,
    // every agent applies it, and the mesh cuts the node off.
    let fault = format!("operator revokes node {revoked} at the control plane");
    progress(&format!("fault: {fault}"));
    let injected = Instant::now();
    let victim = demo.nodes[revoked].id;
    admin
        .revoke_node(&victim.to_string(), "weft demo: operator revocation")
        .await
        .map_err(|e| fail("revoke", e))?;
    let applied = distribute_revocations(demo, admin, network).await?;
    let detected_ms = Some(injected.elapsed().as_millis() as u64);
    demo.nodes[revoked].quarantined = true;
    let mut healed_ms = None;
    let deadline = Instant::now() + cfg.fault_timeout;
    while Instant::now() < deadline {
        if cut_off(demo, revoked).await {
            healed_ms = Some(injected.elapsed().as_millis() as u64);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress(&format!(
        "  revocation epoch applied by {applied} agents; node {revoked} {}",
        if healed_ms.is_some() {
            "cut off everywhere"
        } else {
            "still reachable"
        }
    ));
    rows.push(FaultRow {
        fault,
        detected_ms,
        healed_ms,
        action: "revocation list (control plane)".into(),
        verified: healed_ms.is_some(),
    });
    for slot in &mut demo.nodes {
        if let Some(b) = slot.load.take() {
            b.stop();
        }
        // Revoked nodes would keep dialing and be refused (and logged) by
        // every neighbour; their operator stops them.
        if slot.quarantined
            && let Some(d) = slot.daemon.take()
        {
            d.stop().await;
        }
    }
    Ok(rows)
}

fn forward_events(
    i: usize,
    mut events: broadcast::Receiver<NodeEvent>,
    tx: mpsc::UnboundedSender<Observed>,
) {
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if tx.send(Observed::Node(i, e)).is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

fn heal_event(demo: &Demo, i: usize, e: NodeEvent) -> Option<weft_heal::Event> {
    let node = demo.nodes[i].id;
    Some(match e {
        NodeEvent::NeighbourDead { peer } => weft_heal::Event::NeighbourDead { node, peer },
        NodeEvent::NeighbourUp { peer } => weft_heal::Event::NeighbourUp { node, peer },
        NodeEvent::RouteLost { dst } => weft_heal::Event::RouteLost {
            node,
            destination: dst,
        },
        NodeEvent::AnnouncementRefused {
            origin,
            reason: Refusal::Forged,
            from,
        } => weft_heal::Event::ForgedAnnouncement { node, origin, from },
        _ => return None,
    })
}

/// Telemetry of every agent that answers (a hung one does not).
async fn collect_samples(demo: &Demo, at: weft_heal::Time) -> Vec<Input> {
    let mut inputs = Vec::new();
    for slot in &demo.nodes {
        if slot.quarantined {
            continue;
        }
        let Some(h) = slot.handle() else { continue };
        let Ok(Ok(t)) = tokio::time::timeout(Duration::from_millis(100), h.telemetry()).await
        else {
            continue;
        };
        let node = slot.id;
        let mut push = |metric, value: f64| {
            inputs.push(Input::Sample(Sample {
                node,
                metric,
                value,
                at,
            }));
        };
        push(Metric::RouteCount, t.routes as f64);
        push(
            Metric::Cpu,
            slot.load.as_ref().map_or(0.0, Burner::cpu_percent),
        );
        for p in &t.peers {
            if let Some(m) = p.metrics {
                push(
                    Metric::LinkLoss { peer: p.id },
                    (m.loss * 100.0).clamp(0.0, 100.0),
                );
                if let Some(rtt) = m.srtt {
                    push(Metric::LinkRtt { peer: p.id }, rtt.as_secs_f64() * 1000.0);
                }
            }
        }
    }
    inputs
}

fn index_of(demo: &Demo, id: &NodeId) -> Option<usize> {
    demo.nodes.iter().position(|s| s.id == *id)
}

fn name_target(demo: &Demo, t: &Target) -> String {
    let name =
        |id: &NodeId| index_of(demo, id).map_or_else(|| id.to_string(), |i| format!("node {i}"));
    match t {
        Target::Node(n) => name(n),
        Target::Link(a, b) => format!("link {}-{}", name(a), name(b)),
        Target::Component(n, c) => format!("{}/{c}", name(n)),
        Target::Network => "the network".into(),
    }
}

/// The actuators: each changes the running system for real.
async fn act(demo: &mut Demo, req: &ActRequest) -> Result<(), String> {
    let admin = demo.admin.clone();
    let network = demo.network.clone();
    let (admin, network) = (&admin, network.as_str());
    let node = |id: &NodeId| index_of(demo, id).ok_or_else(|| format!("unknown node {id}"));
    match (req.action, &req.target) {
        (ActionKind::DrainLink | ActionKind::UndrainLink, Target::Link(a, b)) => {
            let drained = req.action == ActionKind::DrainLink;
            let (ia, ib) = (node(a)?, node(b)?);
            for (x, peer) in [(ia, *b), (ib, *a)] {
                if let Some(h) = demo.nodes[x].handle() {
                    h.drain(peer, drained).await.map_err(|e| e.to_string())?;
                }
            }
            Ok(())
        }
        (ActionKind::RestartProcess, Target::Node(id) | Target::Component(id, _)) => {
            let i = node(id)?;
            restart_agent(demo, i).await
        }
        (ActionKind::RotateCredentials, Target::Node(id)) => {
            // The control plane issues a new SVID over mTLS with the current
            // one; the running agent presents it on every link made from
            // now on (links up keep their authenticated sessions).
            let i = node(id)?;
            if demo.nodes[i].quarantined {
                return Err(format!("node {i} is revoked"));
            }
            let dir = demo.nodes[i].settings.data_dir.clone();
            weft_control::agent::renew(&dir)
                .await
                .map_err(|e| format!("SVID renewal at the control plane: {e}"))?;
            let creds = weft_crypto::tls::SvidCredentials::load(&dir)
                .map_err(|e| format!("the renewed SVID in {}: {e}", dir.display()))?;
            let handle = demo.nodes[i]
                .handle()
                .ok_or_else(|| format!("node {i} is not running"))?;
            handle
                .set_credentials(&creds)
                .map_err(|e| format!("the agent refused the renewed SVID: {e}"))
        }
        (ActionKind::ForceReroute, target) => {
            let nodes: Vec<usize> = match target {
                Target::Network => (0..demo.nodes.len()).collect(),
                t => t.nodes().iter().map(&node).collect::<Result<_, _>>()?,
            };
            let mut links = 0;
            for i in nodes {
                if demo.nodes[i].quarantined {
                    continue;
                }
                if let Some(h) = demo.nodes[i].handle() {
                    links += h.reroute().await.map_err(|e| format!("reroute: {e}"))?;
                }
            }
            if links == 0 {
                return Err(format!(
                    "no live link to re-evaluate on {}",
                    name_target(demo, target)
                ));
            }
            Ok(())
        }
        (ActionKind::ShedLoad, Target::Node(id)) => {
            let i = node(id)?;
            match demo.nodes[i].load.take() {
                Some(b) => {
                    b.stop();
                    Ok(())
                }
                None => Err("no workload runs on that node".into()),
            }
        }
        (ActionKind::RestoreLoad, Target::Node(id)) => {
            let i = node(id)?;
            demo.nodes[i].load = Some(Burner::start());
            Ok(())
        }
        (ActionKind::QuarantineNode, Target::Node(id)) => {
            let i = node(id)?;
            admin
                .revoke_node(&id.to_string(), "quarantined by weft-heal")
                .await
                .map_err(|e| format!("revocation at the control plane: {e}"))?;
            distribute_revocations(demo, admin, network)
                .await
                .map_err(|e| e.to_string())?;
            demo.nodes[i].quarantined = true;
            Ok(())
        }
        (action, target) => Err(format!(
            "{action} on {} is not available in the demo",
            name_target(demo, target)
        )),
    }
}

/// Stops agent `i` if it runs and starts it again from its data directory
/// (identity, SVID, network file), redialling its neighbours.
async fn restart_agent(demo: &mut Demo, i: usize) -> Result<(), String> {
    if let Some(d) = demo.nodes[i].daemon.take() {
        d.stop().await;
    }
    let mut daemon = Daemon::start(&demo.nodes[i].settings)
        .await
        .map_err(|e| format!("restart: {e}"))?;
    if let Some(tx) = &demo.events {
        forward_events(i, daemon.agent.events(), tx.clone());
    }
    for &nb in &demo.nodes[i].neighbours.clone() {
        daemon.agent.add_peer(demo.nodes[nb].settings.listen);
    }
    demo.nodes[i].daemon = Some(daemon);
    Ok(())
}

impl Demo {
    /// Carries out one of the loop's actions on this system, through the
    /// same actuators the demo's loop uses: `Ok` once the change is made.
    pub async fn act(&mut self, req: &ActRequest) -> Result<(), String> {
        act(self, req).await
    }

    /// Agent `i`'s id.
    pub fn node_id(&self, i: usize) -> Option<NodeId> {
        self.nodes.get(i).map(|n| n.id)
    }

    /// A handle on agent `i`, while it runs.
    pub fn agent(&self, i: usize) -> Option<AgentHandle> {
        self.nodes.get(i).and_then(NodeSlot::handle)
    }

    /// Agent `i`'s data directory (identity, SVID, bundle, network file).
    pub fn data_dir(&self, i: usize) -> Option<&Path> {
        self.nodes.get(i).map(|n| n.settings.data_dir.as_path())
    }

    /// The control plane's store (where the loop's incidents are kept).
    pub fn store(&self) -> &weft_store::AnyStore {
        self.control.store()
    }

    /// A client of the control plane with the admin token.
    pub fn admin(&self) -> &ControlClient {
        &self.admin
    }

    /// Waits until every running, unrevoked agent routes to every other.
    pub async fn wait_converged(&self, within: Duration) -> Result<(), DemoError> {
        wait_converged(self, within).await
    }
}

/// Fetches the signed revocation list from the control plane and hands it
/// to every agent, as their control-plane clients would. Returns how many
/// applied it.
async fn distribute_revocations(
    demo: &Demo,
    admin: &ControlClient,
    network: &str,
) -> Result<usize, DemoError> {
    let view = admin
        .revocations(network)
        .await
        .map_err(|e| fail("revocation list", e))?;
    let list = weft_control::sync::revocation_list(&view).map_err(DemoError)?;
    let mut applied = 0;
    for slot in &demo.nodes {
        if let Some(h) = slot.handle()
            && let Ok(Ok(ok)) =
                tokio::time::timeout(Duration::from_millis(500), h.revoke(list.clone())).await
        {
            // `false`: it already held the list, gossiped by a neighbour.
            let _ = ok;
            applied += 1;
        }
    }
    Ok(applied)
}

/// Whether no live agent has a link or a route to node `i`.
async fn cut_off(demo: &Demo, i: usize) -> bool {
    let victim = demo.nodes[i].id;
    for (j, slot) in demo.nodes.iter().enumerate() {
        if j == i || slot.quarantined {
            continue;
        }
        let Some(h) = slot.handle() else { continue };
        let Ok(Ok(routes)) = tokio::time::timeout(Duration::from_millis(200), h.routes()).await
        else {
            continue;
        };
        if routes
            .iter()
            .any(|(d, r)| *d == victim || r.next_hop == victim)
        {
            return false;
        }
    }
    true
}

/// Where a demo's data lives, for messages.
pub fn describe(demo: &Demo) -> String {
    format!(
        "control plane {} (admin token {}, CA bundle {}); incidents: weft incidents list --data-dir {}",
        demo.control_url,
        demo.admin_token,
        Path::new(&demo.bundle_path).display(),
        demo.dir.path().join("control").display()
    )
}

/// Node count and listen addresses, for `--keep-running`.
pub fn agents(demo: &Demo) -> Vec<(usize, NodeId, SocketAddr)> {
    demo.nodes
        .iter()
        .enumerate()
        .filter(|(_, s)| s.daemon.is_some())
        .map(|(i, s)| (i, s.id, s.settings.listen))
        .collect()
}
