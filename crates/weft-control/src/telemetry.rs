//! Heartbeats and the topology they describe.
//!
//! An approved node sends a heartbeat over mTLS: its load, versions and
//! the links it sees (RTT, loss, cost). Heartbeats are checked, applied
//! to an in-memory latest state, answered, and written behind in batches
//! of up to 4000, one transaction per batch (latest state plus bounded
//! history), then published per batch on the bus's telemetry stream. The topology view
//! joins every node with its latest heartbeat's links.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};
use utoipa::ToSchema;
use weft_crypto::NodeId;
use weft_store::{AnyStore, Heartbeat, Store, StoreError, limits};

use crate::metrics::Metrics;
use crate::problem::Problem;

/// Most links in one heartbeat.
pub const MAX_LINKS: usize = 256;
/// Most version entries in one heartbeat.
pub const MAX_VERSIONS: usize = 16;
/// How often agents are expected to send heartbeats; a node is `stale`
/// after three missed ones and `down` after twelve.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// How long the writer waits for more heartbeats after the first of a
/// batch (unless the batch is full already). Heartbeats are answered
/// before they are written, so this delays only the history, not the
/// agents; longer batches write each page of the latest states once for
/// many nodes instead of once or twice per heartbeat, and publish fewer,
/// larger telemetry events.
pub const HEARTBEAT_LINGER: Duration = Duration::from_millis(250);
/// Most heartbeats waiting for the store before new ones are refused.
const QUEUE: usize = 20_000;
/// Tries at writing one batch before it is dropped.
const STORE_ATTEMPTS: u32 = 3;

/// A link as a node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkReport {
    /// The neighbour's node id.
    pub peer: String,
    /// Whether the link is up.
    pub up: bool,
    /// Smoothed round-trip time, milliseconds (0 to 600,000).
    pub rtt_ms: f64,
    /// Loss, 0 to 1.
    pub loss: f64,
    /// Routing cost (0 to 65,535; 65,535 is infinite).
    pub cost: u32,
}

/// A heartbeat as an agent sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The agent's counter of heartbeats (for gaps and reordering).
    pub seq: u64,
    /// CPU use, percent of one core (0 to 100,000).
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    /// Resident memory, bytes.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Seconds since the agent started.
    #[serde(default)]
    pub uptime_seconds: Option<u64>,
    /// Routes in the node's table.
    #[serde(default)]
    pub routes: Option<u32>,
    /// Links to neighbours (at most 256).
    #[serde(default)]
    pub links: Vec<LinkReport>,
    /// Component versions, name to version (at most 16; names 1 to 64
    /// bytes, versions up to 128).
    #[serde(default)]
    pub versions: BTreeMap<String, String>,
    /// The UDP address where other nodes can link to this one
    /// (`IP:PORT`, neither unspecified nor multicast); served to the
    /// network's agents as a peer to dial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

fn finite_in(what: impl std::fmt::Display, v: f64, lo: f64, hi: f64) -> Result<(), Problem> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(Problem::bad_request(format!(
            "{what} is {v}; it must be a number from {lo} to {hi}"
        )))
    }
}

/// A field of one link, named only when a check fails (`links[3].loss`).
struct LinkField(usize, &'static str);

impl std::fmt::Display for LinkField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "links[{}].{}", self.0, self.1)
    }
}

impl HeartbeatRequest {
    /// Checks every field against its limit, naming the field.
    pub fn check(&self) -> Result<(), Problem> {
        if let Some(cpu) = self.cpu_percent {
            finite_in("cpu_percent", cpu, 0.0, 100_000.0)?;
        }
        if self.links.len() > MAX_LINKS {
            return Err(Problem::bad_request(format!(
                "links holds {} entries; at most {MAX_LINKS} are accepted",
                self.links.len()
            )));
        }
        for (i, l) in self.links.iter().enumerate() {
            l.peer.parse::<NodeId>().map_err(|e| {
                Problem::bad_request(format!("links[{i}].peer is not a node id: {e}"))
            })?;
            finite_in(LinkField(i, "rtt_ms"), l.rtt_ms, 0.0, 600_000.0)?;
            finite_in(LinkField(i, "loss"), l.loss, 0.0, 1.0)?;
            if l.cost > 65_535 {
                return Err(Problem::bad_request(format!(
                    "links[{i}].cost is {}; it must be 0 to 65535",
                    l.cost
                )));
            }
        }
        if let Some(e) = &self.endpoint {
            let addr: std::net::SocketAddr = e.parse().map_err(|_| {
                Problem::bad_request(format!(
                    "endpoint {:?} is not an address like 192.0.2.1:7946 or [2001:db8::1]:7946",
                    e.chars().take(64).collect::<String>()
                ))
            })?;
            if addr.ip().is_unspecified() || addr.ip().is_multicast() || addr.port() == 0 {
                return Err(Problem::bad_request(format!(
                    "endpoint {addr} cannot be dialed: give the node's own address and port"
                )));
            }
        }
        if self.versions.len() > MAX_VERSIONS {
            return Err(Problem::bad_request(format!(
                "versions holds {} entries; at most {MAX_VERSIONS} are accepted",
                self.versions.len()
            )));
        }
        for (k, v) in &self.versions {
            let printable = |s: &str| s.chars().all(|c| !c.is_control());
            if k.is_empty() || k.len() > 64 || !printable(k) {
                return Err(Problem::bad_request(format!(
                    "versions key {:?} must be 1 to 64 printable bytes",
                    k.chars().take(70).collect::<String>()
                )));
            }
            if v.len() > 128 || !printable(v) {
                return Err(Problem::bad_request(format!(
                    "versions[{k:?}] must be at most 128 printable bytes"
                )));
            }
        }
        Ok(())
    }
}

/// Collects heartbeats into batches for the store, write-behind: a
/// heartbeat is applied to the in-memory latest state and queued, and the
/// agent is answered at once; a task writes what is queued in batches of
/// up to [`limits::MAX_HEARTBEAT_BATCH`], one transaction each. The queue
/// is bounded: when it is full new heartbeats are refused (503 with
/// `Retry-After`); at shutdown the task writes everything queued before
/// it ends.
#[derive(Debug, Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    fresh: Arc<Mutex<HashMap<NodeId, Heartbeat>>>,
    metrics: Metrics,
}

/// What the writing task takes from its queue.
#[derive(Debug)]
enum Job {
    /// A heartbeat to write.
    Beat(Heartbeat),
    /// Answer once everything queued before is written.
    Flush(oneshot::Sender<()>),
}

/// Tries to write one batch, retrying a failing store a few times.
async fn write_batch(
    store: &AnyStore,
    batch: &[Heartbeat],
    metrics: &Metrics,
) -> Option<Vec<Result<(), StoreError>>> {
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=STORE_ATTEMPTS {
        match store.record_heartbeats(batch).await {
            Ok(outcomes) => return Some(outcomes),
            Err(error) if attempt < STORE_ATTEMPTS => {
                tracing::warn!(%error, attempt, "cannot record heartbeats; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(error) => {
                tracing::error!(%error, heartbeats = batch.len(), "cannot record heartbeats; dropping the batch");
                metrics.heartbeats_dropped("store_error", batch.len() as u64);
            }
        }
    }
    None
}

/// Runs `work` on a new thread of its own, named `name`, with a
/// single-threaded runtime; the returned task ends when `work` has.
///
/// For background work that comes in bursts of CPU (a batch written, a
/// batch published): among the request tasks it would hold a worker for
/// the whole burst, and the requests queued behind it would wait that
/// long; on a thread of its own the kernel shares the cores between it
/// and the workers in slices of a few milliseconds.
pub(crate) fn on_own_thread(
    name: &str,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (finished, wait) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            runtime.block_on(work);
            let _ = finished.send(());
        })?;
    Ok(tokio::spawn(async move {
        let _ = wait.await;
    }))
}

impl Batcher {
    /// Starts the writer: it waits for a heartbeat, takes what else is
    /// queued, collects more for up to `linger` while the batch is not
    /// full, and writes the batch in one transaction. `published` gets
    /// each written batch (for the bus). The returned task ends when the
    /// writer has written what was queued at shutdown.
    ///
    /// The writer runs on a thread of its own (with a single-threaded
    /// runtime), not among the request handlers: a batch awaits the store
    /// a few times, and on a busy server each await put the writer back
    /// behind every connection's task. Measured with 1000 agents
    /// saturating two cores, a 4000-heartbeat batch took 0.8 to 1.4 s
    /// there (the queue filled and heartbeats were refused) and 85 to
    /// 150 ms once the load stopped.
    pub fn start(
        store: AnyStore,
        linger: Duration,
        metrics: Metrics,
        published: mpsc::Sender<Vec<Heartbeat>>,
        mut stop: watch::Receiver<bool>,
    ) -> std::io::Result<(Self, tokio::task::JoinHandle<()>)> {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let task_metrics = metrics.clone();
        let writer = async move {
            let metrics = task_metrics;
            let mut stopping = false;
            loop {
                let first = tokio::select! {
                    job = rx.recv() => match job {
                        Some(job) => job,
                        None => return,
                    },
                    changed = stop.changed(), if !stopping => {
                        if changed.is_err() || *stop.borrow() {
                            // Take no more; write what is queued, then end.
                            stopping = true;
                            rx.close();
                        }
                        continue;
                    }
                };
                let mut batch = Vec::new();
                let mut flushes = Vec::new();
                fn take(
                    job: Job,
                    batch: &mut Vec<Heartbeat>,
                    flushes: &mut Vec<oneshot::Sender<()>>,
                ) {
                    match job {
                        Job::Beat(hb) => batch.push(hb),
                        Job::Flush(done) => flushes.push(done),
                    }
                }
                take(first, &mut batch, &mut flushes);
                // A flush ends the batch: it is answered once it is written.
                while batch.len() < limits::MAX_HEARTBEAT_BATCH && flushes.is_empty() {
                    match rx.try_recv() {
                        Ok(job) => take(job, &mut batch, &mut flushes),
                        Err(_) => break,
                    }
                }
                if !stopping
                    && !linger.is_zero()
                    && flushes.is_empty()
                    && batch.len() < limits::MAX_HEARTBEAT_BATCH
                {
                    // One wait for the whole linger, then take what came:
                    // waking for each heartbeat that arrives in it cost a
                    // task wake-up and a timer per heartbeat.
                    tokio::time::sleep(linger).await;
                    while batch.len() < limits::MAX_HEARTBEAT_BATCH && flushes.is_empty() {
                        match rx.try_recv() {
                            Ok(job) => take(job, &mut batch, &mut flushes),
                            Err(_) => break,
                        }
                    }
                }
                if batch.is_empty() {
                    for done in flushes {
                        let _ = done.send(());
                    }
                    continue;
                }
                metrics.heartbeat_queue_len(rx.len());
                let Some(outcomes) = write_batch(&store, &batch, &metrics).await else {
                    for done in flushes {
                        let _ = done.send(());
                    }
                    continue;
                };
                let mut written = Vec::with_capacity(batch.len());
                for (hb, outcome) in batch.into_iter().zip(outcomes) {
                    match outcome {
                        Ok(()) => written.push(hb),
                        Err(error) => {
                            // Checked and authenticated before it was queued:
                            // the node was revoked meanwhile, or the store
                            // refused the payload.
                            tracing::debug!(node = %hb.node_id, %error, "heartbeat refused by the store");
                            metrics.heartbeats_dropped("refused", 1);
                        }
                    }
                }
                metrics.heartbeats_written(written.len() as u64);
                if !written.is_empty() {
                    let _ = published.try_send(written);
                }
                for done in flushes {
                    let _ = done.send(());
                }
            }
        };
        let task = on_own_thread("weft-heartbeats", writer)?;
        Ok((
            Self {
                tx,
                fresh: Arc::new(Mutex::new(HashMap::new())),
                metrics,
            },
            task,
        ))
    }

    /// Applies a heartbeat to the latest state and queues it for the
    /// store; refused (503) when the queue is full or the control plane
    /// is stopping.
    pub fn record(&self, heartbeat: Heartbeat) -> Result<(), Problem> {
        let node_id = heartbeat.node_id;
        let latest = heartbeat.clone();
        self.tx
            .try_send(Job::Beat(heartbeat))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    self.metrics.heartbeat_refused("queue_full");
                    Problem::unavailable(format!(
                        "{QUEUE} heartbeats are waiting for the store; retry in a second"
                    ))
                    .with_header(
                        axum::http::header::RETRY_AFTER,
                        axum::http::HeaderValue::from_static("1"),
                    )
                }
                mpsc::error::TrySendError::Closed(_) => {
                    self.metrics.heartbeat_refused("stopping");
                    Problem::unavailable("the control plane is shutting down; retry elsewhere")
                }
            })?;
        let mut fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        match fresh.get(&node_id) {
            Some(old) if old.at > latest.at => {}
            _ => {
                fresh.insert(node_id, latest);
            }
        }
        Ok(())
    }

    /// Waits until every heartbeat queued before the call is written (or
    /// dropped after the store failed); returns at once if the writer has
    /// stopped.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Job::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// The latest heartbeat this process received from each of `nodes`
    /// (possibly not yet in the store).
    pub fn fresh<'a>(&self, nodes: impl IntoIterator<Item = &'a NodeId>) -> Vec<Heartbeat> {
        let fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .into_iter()
            .filter_map(|id| fresh.get(id).cloned())
            .collect()
    }

    /// Forgets a node's latest state (it was revoked).
    pub fn forget(&self, node_id: &NodeId) {
        self.fresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node_id);
    }
}

// ---------------------------------------------------------------- topology

/// A node in the topology.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopologyNode {
    /// Its id.
    pub node_id: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// `pending`, `approved` or `revoked`.
    pub status: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its latest heartbeat (RFC 3339), if any.
    pub last_seen: Option<String>,
    /// `up` (a heartbeat within 3 intervals), `stale` (within 12), `down`
    /// (older), `unknown` (never).
    pub health: String,
    /// CPU percent in the latest heartbeat.
    pub cpu_percent: Option<f64>,
    /// Memory bytes in the latest heartbeat.
    pub memory_bytes: Option<u64>,
    /// Component versions in the latest heartbeat.
    pub versions: BTreeMap<String, String>,
    /// Where other nodes can link to it, from the latest heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

/// A link in the topology, as its source reported it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopologyLink {
    /// The reporting node.
    pub from: String,
    /// Its neighbour.
    pub to: String,
    /// Whether it is up.
    pub up: bool,
    /// RTT, milliseconds.
    pub rtt_ms: f64,
    /// Loss, 0 to 1.
    pub loss: f64,
    /// Routing cost.
    pub cost: u32,
    /// `good` (up, loss under 5 %), `degraded` (up) or `down`.
    pub health: String,
}

/// Nodes and links with health.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Topology {
    /// The network.
    pub network: String,
    /// When it was computed (RFC 3339).
    pub at: String,
    /// The nodes.
    pub nodes: Vec<TopologyNode>,
    /// The links.
    pub links: Vec<TopologyLink>,
}

/// A node's health from the age of its latest heartbeat.
pub fn node_health(last: Option<OffsetDateTime>, now: OffsetDateTime) -> &'static str {
    let interval = time::Duration::try_from(HEARTBEAT_INTERVAL).unwrap_or(time::Duration::ZERO);
    match last {
        None => "unknown",
        Some(t) if now - t <= interval * 3 => "up",
        Some(t) if now - t <= interval * 12 => "stale",
        Some(_) => "down",
    }
}

/// A link's health.
pub fn link_health(l: &LinkReport) -> &'static str {
    if !l.up {
        "down"
    } else if l.loss < 0.05 {
        "good"
    } else {
        "degraded"
    }
}

/// Builds the topology from nodes and their latest heartbeats.
pub fn topology(
    network: &str,
    nodes: &[weft_store::Node],
    latest: &[Heartbeat],
    now: OffsetDateTime,
) -> Topology {
    let mut reports: HashMap<NodeId, (OffsetDateTime, Option<HeartbeatRequest>)> = HashMap::new();
    for hb in latest {
        // The payload is the report as the agent sent it, checked.
        let report = serde_json::from_str::<HeartbeatRequest>(&hb.payload).ok();
        reports.insert(hb.node_id, (hb.at, report));
    }
    let mut out_nodes = Vec::with_capacity(nodes.len());
    let mut links = Vec::new();
    for n in nodes {
        let (last, report) = match reports.get(&n.node_id) {
            Some((at, r)) => (Some(*at), r.as_ref()),
            None => (n.last_seen, None),
        };
        out_nodes.push(TopologyNode {
            node_id: n.node_id.to_string(),
            spiffe_id: n.spiffe_id.to_string(),
            status: n.status.as_str().to_owned(),
            tags: n.tags.iter().map(str::to_owned).collect(),
            last_seen: last.map(crate::api::rfc3339),
            health: if n.status == weft_store::NodeStatus::Revoked {
                "revoked".into()
            } else {
                node_health(last, now).into()
            },
            cpu_percent: report.and_then(|r| r.cpu_percent),
            memory_bytes: report.and_then(|r| r.memory_bytes),
            versions: report.map(|r| r.versions.clone()).unwrap_or_default(),
            endpoint: report.and_then(|r| r.endpoint.clone()),
        });
        if let Some(r) = report {
            for l in &r.links {
                links.push(TopologyLink {
                    from: n.node_id.to_string(),
                    to: l.peer.clone(),
                    up: l.up,
                    rtt_ms: l.rtt_ms,
                    loss: l.loss,
                    cost: l.cost,
                    health: link_health(l).into(),
                });
            }
        }
    }
    Topology {
        network: network.to_owned(),
        at: crate::api::rfc3339(now),
        nodes: out_nodes,
        links,
    }
}

/// The topology as a GraphViz digraph: nodes colored by health, links
/// labelled with RTT and loss, down links dashed.
pub fn to_dot(t: &Topology) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph weft {{");
    let _ = writeln!(out, "  label=\"weft network {} at {}\";", t.network, t.at);
    let _ = writeln!(out, "  node [shape=box, style=filled, fontname=monospace];");
    for n in &t.nodes {
        let color = match n.health.as_str() {
            "up" => "palegreen",
            "stale" => "khaki",
            "down" | "revoked" => "lightcoral",
            _ => "lightgrey",
        };
        let _ = writeln!(
            out,
            "  \"{}\" [label=\"{}…\\n{}\", fillcolor={color}];",
            n.node_id,
            &n.node_id[..n.node_id.len().min(8)],
            n.health
        );
    }
    for l in &t.links {
        let style = if l.up { "solid" } else { "dashed" };
        let color = match l.health.as_str() {
            "good" => "darkgreen",
            "degraded" => "orange",
            _ => "red",
        };
        let _ = writeln!(
            out,
            "  \"{}\" -> \"{}\" [label=\"{:.1} ms, {:.1}%\", style={style}, color={color}];",
            l.from,
            l.to,
            l.rtt_ms,
            l.loss * 100.0
        );
    }
    let _ = writeln!(out, "}}");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn link(peer: &str) -> LinkReport {
        LinkReport {
            peer: peer.into(),
            up: true,
            rtt_ms: 1.5,
            loss: 0.0,
            cost: 10,
        }
    }

    #[test]
    fn heartbeats_are_checked_field_by_field() {
        let peer = "a".repeat(52);
        let mut hb = HeartbeatRequest {
            seq: 1,
            cpu_percent: Some(12.5),
            memory_bytes: Some(1 << 20),
            uptime_seconds: Some(5),
            routes: Some(3),
            links: vec![link(&peer)],
            versions: BTreeMap::from([("agent".into(), "0.1.0".into())]),
            endpoint: Some("192.0.2.7:7946".into()),
        };
        hb.check().unwrap();
        for bad in ["0.0.0.0:7946", "192.0.2.7:0", "[ff02::1]:7946", "here"] {
            hb.endpoint = Some(bad.into());
            assert!(hb.check().unwrap_err().detail.contains("endpoint"), "{bad}");
        }
        hb.endpoint = None;
        hb.links[0].loss = 1.5;
        assert!(hb.check().unwrap_err().detail.contains("links[0].loss"));
        hb.links[0].loss = f64::NAN;
        assert!(hb.check().is_err());
        hb.links[0].loss = 0.0;
        hb.links[0].peer = "x".into();
        assert!(hb.check().unwrap_err().detail.contains("links[0].peer"));
        hb.links = vec![link(&peer); MAX_LINKS + 1];
        assert!(hb.check().unwrap_err().detail.contains("links holds"));
        hb.links.clear();
        hb.cpu_percent = Some(f64::INFINITY);
        assert!(hb.check().is_err());
    }

    #[test]
    fn health_by_age() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(node_health(None, now), "unknown");
        assert_eq!(node_health(Some(now), now), "up");
        assert_eq!(
            node_health(Some(now - time::Duration::seconds(60)), now),
            "stale"
        );
        assert_eq!(
            node_health(Some(now - time::Duration::hours(1)), now),
            "down"
        );
        let mut l = link("x");
        assert_eq!(link_health(&l), "good");
        l.loss = 0.2;
        assert_eq!(link_health(&l), "degraded");
        l.up = false;
        assert_eq!(link_health(&l), "down");
    }
}
