//! Prometheus metrics of an agent, served on `metrics_listen` (meant for
//! localhost: the text names the node's neighbours).
//!
//! | metric | labels |
//! |---|---|
//! | `weft_agent_link_rtt_seconds`, `weft_agent_link_loss_ratio`, `weft_agent_link_cost` | `peer` |
//! | `weft_agent_links_up_total`, `weft_agent_neighbours_dead_total` | |
//! | `weft_agent_route_changes_total` | `kind` (`added`, `changed`, `lost`) |
//! | `weft_agent_detection_seconds` (histogram): last frame from a neighbour to its declared death | |
//! | `weft_agent_reroute_seconds` (histogram): a neighbour's death to each of its routes moved elsewhere | |
//! | `weft_agent_sent_bytes_total`, `weft_agent_sent_frames_total` | `kind` (message kind) |
//! | `weft_agent_e2e_handshakes_total`, `weft_agent_datagrams_delivered_total` | |
//! | `weft_agent_refusals_total` | `reason` |

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;

use crate::quic::RefusalCounts;
use crate::{AgentError, AgentHandle};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// The agent's metrics; the driver updates them as things happen.
pub struct AgentMetrics {
    registry: Registry,
    link_rtt: Family<PeerLabel, Gauge<f64, AtomicU64>>,
    link_loss: Family<PeerLabel, Gauge<f64, AtomicU64>>,
    link_cost: Family<PeerLabel, Gauge>,
    pub(crate) links_up: Counter,
    pub(crate) neighbours_dead: Counter,
    route_changes: Family<KindLabel, Counter>,
    pub(crate) detection: Histogram,
    pub(crate) reroute: Histogram,
    sent_bytes: Family<KindLabel, Counter>,
    sent_frames: Family<KindLabel, Counter>,
    pub(crate) e2e_handshakes: Counter,
    pub(crate) delivered: Counter,
    refusals: Family<ReasonLabel, Counter>,
    /// Last totals copied into the counters kept elsewhere.
    last_sent: Mutex<std::collections::BTreeMap<&'static str, (u64, u64)>>,
    last_refusals: Mutex<RefusalCounts>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("weft_agent");
        let m = Self {
            link_rtt: Family::default(),
            link_loss: Family::default(),
            link_cost: Family::default(),
            links_up: Counter::default(),
            neighbours_dead: Counter::default(),
            route_changes: Family::default(),
            // 1 ms .. ~65 s.
            detection: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            reroute: Histogram::new(exponential_buckets(0.0001, 2.0, 20)),
            sent_bytes: Family::default(),
            sent_frames: Family::default(),
            e2e_handshakes: Counter::default(),
            delivered: Counter::default(),
            refusals: Family::default(),
            last_sent: Mutex::default(),
            last_refusals: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "link_rtt_seconds",
            "Smoothed RTT of a link",
            m.link_rtt.clone(),
        );
        registry.register(
            "link_loss_ratio",
            "Hello loss rate of a link",
            m.link_loss.clone(),
        );
        registry.register(
            "link_cost",
            "Routing cost of a link (65535: unusable)",
            m.link_cost.clone(),
        );
        registry.register("links_up", "Links established", m.links_up.clone());
        registry.register(
            "neighbours_dead",
            "Neighbours declared dead",
            m.neighbours_dead.clone(),
        );
        registry.register(
            "route_changes",
            "Selected routes added, changed or lost",
            m.route_changes.clone(),
        );
        registry.register(
            "detection_seconds",
            "Last frame from a neighbour to its declared death",
            m.detection.clone(),
        );
        registry.register(
            "reroute_seconds",
            "A neighbour's death to each of its routes moved to another next hop",
            m.reroute.clone(),
        );
        registry.register(
            "sent_bytes",
            "Mesh protocol bytes sent, by message kind",
            m.sent_bytes.clone(),
        );
        registry.register(
            "sent_frames",
            "Mesh protocol frames sent, by message kind",
            m.sent_frames.clone(),
        );
        registry.register(
            "e2e_handshakes",
            "End-to-end sessions established",
            m.e2e_handshakes.clone(),
        );
        registry.register(
            "datagrams_delivered",
            "Datagrams delivered to this node and opened",
            m.delivered.clone(),
        );
        registry.register("refusals", "Peers refused, by reason", m.refusals.clone());
        Self { registry, ..m }
    }

    pub(crate) fn route_change(&self, kind: &str) {
        self.route_changes
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// Copies the node's send totals into the counters.
    pub(crate) fn sync_sent(&self, sent: &std::collections::BTreeMap<&'static str, (u64, u64)>) {
        let mut last = self.last_sent.lock().unwrap_or_else(|e| e.into_inner());
        for (kind, &(frames, bytes)) in sent {
            let (f0, b0) = last.get(kind).copied().unwrap_or((0, 0));
            if (frames, bytes) == (f0, b0) {
                continue;
            }
            let label = KindLabel {
                kind: (*kind).to_string(),
            };
            self.sent_frames
                .get_or_create(&label)
                .inc_by(frames.saturating_sub(f0));
            self.sent_bytes
                .get_or_create(&label)
                .inc_by(bytes.saturating_sub(b0));
            last.insert(kind, (frames, bytes));
        }
    }

    fn sync_refusals(&self, now: RefusalCounts) {
        let mut last = self.last_refusals.lock().unwrap_or_else(|e| e.into_inner());
        for (reason, new, old) in [
            ("not_a_node", now.not_a_node, last.not_a_node),
            ("not_enrolled", now.not_enrolled, last.not_enrolled),
            ("revoked", now.revoked, last.revoked),
            ("own_identity", now.own_identity, last.own_identity),
            ("handshake", now.handshake, last.handshake),
            ("duplicate", now.duplicate, last.duplicate),
        ] {
            self.refusals
                .get_or_create(&ReasonLabel {
                    reason: reason.into(),
                })
                .inc_by(new.saturating_sub(old));
        }
        *last = now;
    }

    /// The text exposition, with link gauges and refusals read from `agent` now.
    pub async fn render(&self, agent: &AgentHandle) -> Result<String, AgentError> {
        let peers = agent.peers().await?;
        self.link_rtt.clear();
        self.link_loss.clear();
        self.link_cost.clear();
        for p in peers {
            let label = PeerLabel {
                peer: p.id.to_string(),
            };
            if let Some(m) = p.metrics {
                if let Some(rtt) = m.srtt {
                    self.link_rtt.get_or_create(&label).set(rtt.as_secs_f64());
                }
                self.link_loss.get_or_create(&label).set(m.loss);
                self.link_cost.get_or_create(&label).set(i64::from(m.cost));
            }
        }
        self.sync_refusals(agent.refusals());
        let mut out = String::new();
        encode(&mut out, &self.registry).map_err(|e| AgentError::Setup(format!("metrics: {e}")))?;
        Ok(out)
    }
}

/// Serves `GET /metrics` on `addr`.
pub async fn serve(
    addr: SocketAddr,
    agent: AgentHandle,
    metrics: Arc<AgentMetrics>,
) -> Result<(SocketAddr, JoinHandle<()>), AgentError> {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "metrics served beyond localhost: they name this node's neighbours");
    }
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (agent, metrics) = (agent.clone(), metrics.clone());
            async move {
                match metrics.render(&agent).await {
                    Ok(text) => (
                        StatusCode::OK,
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response(),
                    Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| AgentError::Bind {
            addr,
            reason: e.to_string(),
        })?;
    let local = listener.local_addr().map_err(|e| AgentError::Bind {
        addr,
        reason: e.to_string(),
    })?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok((local, task))
}
