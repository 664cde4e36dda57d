//! The long-running self-healing loop of a control plane (`[heal]
//! enabled = true`).
//!
//! A tokio task that drives the `weft-heal` engine from what the control
//! plane already has:
//!
//! - **telemetry**: a durable consumer (`weft-heal`) of the bus's
//!   telemetry stream, where the control plane publishes the heartbeats
//!   it has written; every heartbeat becomes one [`Telemetry`] input (CPU,
//!   route count, each up link's loss and RTT) and a link reported down
//!   becomes a `neighbour_dead` event (`neighbour_up` when it is up
//!   again). A delivery is acknowledged once its heartbeats are in the
//!   engine; one that cannot be read is dead-lettered by the bus.
//! - **a cycle** every `cycle_interval`, or sooner when an action's
//!   verification or deadline falls due: analyze, execute, plan.
//! - **actions** through real actuators ([`ControlActuator`]): a link is
//!   drained, undrained or rerouted through its agents' admin sockets
//!   (`[heal.agent_sockets]`, for agents on this host), and a node is
//!   quarantined by revocation at this control plane (recorded in the
//!   store, published on the revocation stream, applied by every agent at
//!   its next sync). What has no actuator here (restart a process, shed
//!   load, rotate credentials) fails with the reason, changes nothing, and
//!   the planner moves on to the policy's next candidate.
//! - **audit**: every step of every incident is published on the audit
//!   stream (`weft.audit.heal`, event `weft.heal.step`), and a quarantine
//!   is also an audit record in the store (`node.revoke` by `weft-heal`).
//! - **knowledge**: incidents go to this control plane's store through
//!   [`StoreKnowledge`], flushed after every step, so `weft incidents
//!   list` shows them; on start the open ones are taken up again.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::watch;
use weft_bus::subject::SubjectFilter;
use weft_bus::{AckKind, Backend, BusError, ConsumerConfig, DeliverPolicy, FetchRequest};
use weft_crypto::NodeId;
use weft_heal::{
    ActRequest, ActionKind, Actuator, ActuatorError, Engine, Event, Input, Metric, Output, Policy,
    StoreKnowledge, Target, Telemetry,
};
use weft_store::{AnyStore, AuditResult, NewAuditRecord, Store};

use crate::app::{AUDIT_EVENT, AppState, TELEMETRY_STREAM};
use crate::error::ControlError;
use crate::telemetry::HeartbeatRequest;

/// The durable consumer of the telemetry stream.
pub const HEAL_CONSUMER: &str = "weft-heal";
/// Event type of one audited step of the loop.
pub const HEAL_STEP_EVENT: &str = "weft.heal.step";
/// Subject of the loop's audited steps (on the audit stream).
pub const HEAL_AUDIT_SUBJECT: &str = "weft.audit.heal";
/// Most heartbeat batches taken from the bus per fetch.
const FETCH_BATCHES: usize = 64;
/// Longest an actuator may take before its answer counts as a failure.
const ACT_TIMEOUT: Duration = Duration::from_secs(20);
/// Most link states remembered (to report a link going down or up once).
const MAX_LINK_STATES: usize = 1_000_000;

/// The `[heal]` settings of a control plane.
#[derive(Debug, Clone, PartialEq)]
pub struct HealConfig {
    /// Run the loop.
    pub enabled: bool,
    /// The policy file (TOML, see docs/heal.md); the built-in default
    /// policy if `None`.
    pub policy: Option<PathBuf>,
    /// How often a cycle runs (100 ms to 1 minute).
    pub cycle_interval: Duration,
    /// Admin sockets of agents on this host, by node: the drain, undrain
    /// and reroute actuators act through them.
    pub agent_sockets: BTreeMap<NodeId, PathBuf>,
}

impl Default for HealConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            policy: None,
            cycle_interval: Duration::from_secs(1),
            agent_sockets: BTreeMap::new(),
        }
    }
}

impl HealConfig {
    /// Refuses settings out of range, naming the setting.
    pub fn check(&self) -> Result<(), ControlError> {
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.cycle_interval) {
            return Err(ControlError::config(
                "heal.cycle_interval",
                "must be 100 ms to 1 minute",
            ));
        }
        Ok(())
    }

    /// The policy: the file's, or the default one. Errors name the file
    /// and the key.
    pub fn load_policy(&self) -> Result<Policy, ControlError> {
        match &self.policy {
            None => Ok(Policy::default_policy()),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(ControlError::io(
                    "cannot read the healing policy",
                    path.display().to_string(),
                ))?;
                Policy::parse(&text).map_err(|e| {
                    ControlError::config("heal.policy", format!("{}: {e}", path.display()))
                })
            }
        }
    }
}

/// The loop's actuators on a running system: agents' admin sockets and
/// this control plane.
pub struct ControlActuator {
    state: Arc<AppState>,
    sockets: BTreeMap<NodeId, PathBuf>,
}

impl ControlActuator {
    fn socket(&self, node: &NodeId) -> Result<&PathBuf, ActuatorError> {
        self.sockets.get(node).ok_or_else(|| {
            ActuatorError::new(format!(
                "no admin socket for node {node}: add it to [heal.agent_sockets] to let the loop act on its links"
            ))
        })
    }

    async fn drain(&self, a: &NodeId, b: &NodeId, drained: bool) -> Result<(), ActuatorError> {
        let (sa, sb) = (self.socket(a)?.clone(), self.socket(b)?.clone());
        let fail = |node: &NodeId, e: weft_agent::AgentError| {
            ActuatorError::new(format!("node {node}: {e}"))
        };
        weft_agent::admin::drain(&sa, b, drained)
            .await
            .map_err(|e| fail(a, e))?;
        if let Err(e) = weft_agent::admin::drain(&sb, a, drained).await {
            // Nothing may stay changed when the answer is an error: undo
            // the first end.
            if let Err(undo) = weft_agent::admin::drain(&sa, b, !drained).await {
                tracing::error!(node = %a, peer = %b, error = %undo,
                    "cannot undo a half-done drain; the link is drained at one end only");
            }
            return Err(fail(b, e));
        }
        Ok(())
    }

    async fn reroute(&self, target: &Target) -> Result<(), ActuatorError> {
        let nodes: Vec<NodeId> = match target {
            Target::Network => self.sockets.keys().copied().collect(),
            t => t.nodes(),
        };
        let mut links = 0;
        let mut errors = Vec::new();
        for n in &nodes {
            match self.socket(n) {
                Ok(socket) => match weft_agent::admin::reroute(socket).await {
                    Ok(l) => links += l,
                    Err(e) => errors.push(format!("node {n}: {e}")),
                },
                Err(e) => errors.push(e.reason),
            }
        }
        if links == 0 {
            return Err(ActuatorError::new(if errors.is_empty() {
                format!("no agent of {target} to reroute")
            } else {
                errors.join("; ")
            }));
        }
        Ok(())
    }

    async fn quarantine(&self, node: &NodeId) -> Result<(), ActuatorError> {
        let state = &self.state;
        let fail = |e: String| ActuatorError::new(format!("revocation of {node}: {e}"));
        let stored = state
            .store
            .get_node(node)
            .await
            .map_err(|e| fail(e.to_string()))?;
        if stored.network_id != state.network.id {
            return Err(fail(
                "the node is in a network this control plane does not serve".into(),
            ));
        }
        if stored.status == weft_store::NodeStatus::Revoked {
            // Idempotent: already done (a request asked again after a
            // restart).
            return Ok(());
        }
        let reason = "quarantined by weft-heal";
        let (revocation, published) = crate::handlers::revoke(state, node, reason)
            .await
            .map_err(|p| fail(p.to_string()))?;
        let record = NewAuditRecord {
            at: OffsetDateTime::now_utc(),
            actor: "weft-heal".into(),
            action: "node.revoke".into(),
            target: Some(format!("node:{node}")),
            network_id: Some(state.network.id),
            result: AuditResult::Success,
            detail: format!(
                "epoch {}{}; reason: {reason}",
                revocation.epoch,
                if published {
                    ""
                } else {
                    " (not published on the bus: see the logs)"
                }
            ),
        };
        match state.store.append_audit(record).await {
            Ok(stored) => {
                let view = crate::api::AuditView::of(&stored);
                let data = serde_json::to_value(&view).unwrap_or_else(|_| json!({}));
                state
                    .publish("weft.audit.node.revoke", AUDIT_EVENT, data)
                    .await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot write the audit record of a quarantine");
                state.metrics.audit_failed("store");
            }
        }
        Ok(())
    }
}

impl Actuator for ControlActuator {
    async fn act(&self, req: &ActRequest) -> Result<(), ActuatorError> {
        match (req.action, &req.target) {
            (ActionKind::DrainLink, Target::Link(a, b)) => self.drain(a, b, true).await,
            (ActionKind::UndrainLink, Target::Link(a, b)) => self.drain(a, b, false).await,
            (ActionKind::ForceReroute, target) => self.reroute(target).await,
            (ActionKind::QuarantineNode, Target::Node(n)) => self.quarantine(n).await,
            (action, target) => Err(ActuatorError::new(format!(
                "{action} on {target} has no actuator in the control plane (it needs the node's supervisor or agent); nothing was done"
            ))),
        }
    }
}

/// The heartbeats of one telemetry event as the engine's inputs. `links`
/// remembers each link's last reported state so that a link going down
/// (or up again) is one event.
fn inputs_of(data: &serde_json::Value, links: &mut HashMap<(NodeId, NodeId), bool>) -> Vec<Input> {
    let mut out = Vec::new();
    let Some(beats) = data.get("heartbeats").and_then(|h| h.as_array()) else {
        return out;
    };
    for hb in beats {
        let node = hb
            .get("node_id")
            .and_then(|n| n.as_str())
            .and_then(|n| n.parse::<NodeId>().ok());
        let at = hb
            .get("at")
            .and_then(|t| t.as_str())
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
        let report = hb
            .get("report")
            .and_then(|r| serde_json::from_value::<HeartbeatRequest>(r.clone()).ok());
        let (Some(node), Some(at), Some(report)) = (node, at, report) else {
            tracing::debug!("a heartbeat on the telemetry stream cannot be read; skipped");
            continue;
        };
        let ms = (at.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
        let at = weft_heal::Time::from_millis(ms);
        let mut values = Vec::new();
        if let Some(cpu) = report.cpu_percent {
            // Percent of one core: a busy agent is past the limit at 90,
            // whatever else the host runs.
            values.push((Metric::Cpu, cpu.clamp(0.0, 100.0)));
        }
        if let Some(routes) = report.routes {
            values.push((Metric::RouteCount, f64::from(routes)));
        }
        for l in &report.links {
            let Ok(peer) = l.peer.parse::<NodeId>() else {
                continue;
            };
            if peer == node {
                continue;
            }
            let was = links.insert((node, peer), l.up);
            if links.len() > MAX_LINK_STATES {
                links.clear();
            }
            if l.up {
                values.push((
                    Metric::LinkLoss { peer },
                    (l.loss * 100.0).clamp(0.0, 100.0),
                ));
                values.push((Metric::LinkRtt { peer }, l.rtt_ms));
                if was == Some(false) {
                    out.push(Input::Event {
                        at,
                        event: Event::NeighbourUp { node, peer },
                    });
                }
            } else if was != Some(false) {
                out.push(Input::Event {
                    at,
                    event: Event::NeighbourDead { node, peer },
                });
            }
        }
        values.truncate(weft_heal::MAX_TELEMETRY_VALUES);
        out.push(Input::Telemetry(Telemetry { node, at, values }));
    }
    out
}

fn wall_now() -> weft_heal::Time {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    weft_heal::Time::from_millis(ms)
}

/// Creates the loop's durable consumer of this network's heartbeats (new
/// ones only when it is first made; from where it stopped after that).
async fn consumer(state: &AppState) -> Result<(), ControlError> {
    let mut config = ConsumerConfig::new(HEAL_CONSUMER);
    config.filter_subject = Some(
        SubjectFilter::new(&format!("weft.telemetry.{}", state.network.name))
            .map_err(|e| ControlError::config("heal consumer", e.to_string()))?,
    );
    config.deliver_policy = DeliverPolicy::New;
    match state
        .events
        .backend()
        .create_consumer(TELEMETRY_STREAM, config)
        .await
    {
        Ok(_) | Err(BusError::ConsumerExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A started loop: the engine, its knowledge and its actuators.
pub struct HealLoop {
    state: Arc<AppState>,
    engine: Engine<StoreKnowledge<AnyStore>>,
    actuator: ControlActuator,
    cycle: Duration,
    links: HashMap<(NodeId, NodeId), bool>,
}

impl HealLoop {
    /// Opens the knowledge in the store (taking open incidents up again),
    /// builds the engine with `policy`, and makes the telemetry consumer.
    pub async fn start(
        state: Arc<AppState>,
        config: &HealConfig,
        policy: Policy,
    ) -> Result<HealLoop, ControlError> {
        consumer(&state).await?;
        let knowledge = StoreKnowledge::open(state.store.clone(), Some(state.network.id))
            .await
            .map_err(|e| ControlError::config("heal knowledge", e.to_string()))?;
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32);
        let mut cfg = weft_heal::Config {
            cycle_interval: config.cycle_interval,
            id_seed: seed,
            ..weft_heal::Config::default()
        };
        // A node is silent after three missed heartbeats, as the topology
        // view says it is stale.
        cfg.monitor.stale_after = crate::telemetry::HEARTBEAT_INTERVAL * 3;
        let engine = Engine::new(cfg, policy, knowledge, wall_now())
            .map_err(|e| ControlError::config("heal", e.to_string()))?;
        Ok(HealLoop {
            actuator: ControlActuator {
                state: state.clone(),
                sockets: config.agent_sockets.clone(),
            },
            state,
            engine,
            cycle: config.cycle_interval,
            links: HashMap::new(),
        })
    }

    /// Runs until `stop` turns true: fetch telemetry (waiting at most
    /// until the engine's next deadline), feed it, run what is due, act,
    /// publish, store.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        tracing::info!(network = %self.state.network.name, "self-healing loop started");
        loop {
            if *stop.borrow() {
                break;
            }
            let now = wall_now();
            let wait = self
                .engine
                .poll_timeout()
                .map_or(self.cycle, |t| {
                    Duration::from_millis(t.as_millis().saturating_sub(now.as_millis()))
                })
                .clamp(Duration::from_millis(10), self.cycle);
            let fetched = tokio::select! {
                f = self.state.events.fetch(
                    TELEMETRY_STREAM,
                    HEAL_CONSUMER,
                    FetchRequest::new(FETCH_BATCHES, wait),
                ) => f,
                _ = stop.changed() => break,
            };
            match fetched {
                Ok(deliveries) => {
                    for (delivery, envelope) in deliveries {
                        let now = wall_now();
                        for input in inputs_of(&envelope.data, &mut self.links) {
                            if let Err(e) = self.engine.handle_input(now, input) {
                                tracing::debug!(error = %e, "input refused by the loop");
                            }
                        }
                        if let Err(e) = self
                            .state
                            .events
                            .backend()
                            .ack(&delivery.ack_token, AckKind::Ack)
                            .await
                        {
                            tracing::warn!(error = %e, "cannot acknowledge telemetry");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot fetch telemetry; retrying");
                    tokio::time::sleep(self.cycle).await;
                }
            }
            self.step().await;
        }
        if let Err(e) = self.engine.knowledge_mut().flush().await {
            tracing::warn!(error = %e, "incidents not stored at shutdown");
        }
        tracing::info!("self-healing loop stopped");
    }

    /// Runs what is due, carries out the actions, publishes the audited
    /// steps and stores what changed.
    pub async fn step(&mut self) {
        let now = wall_now();
        self.engine.handle_timeout(now);
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Act(req) => {
                    tracing::info!(action = %req.action, target = %req.target, "acting");
                    let input = match tokio::time::timeout(
                        ACT_TIMEOUT,
                        weft_heal::answer(&self.actuator, &req),
                    )
                    .await
                    {
                        Ok(input) => input,
                        Err(_) => Input::ActionResult(weft_heal::ActionResult {
                            id: req.id,
                            outcome: Err(format!(
                                "no answer from the actuator within {ACT_TIMEOUT:?}"
                            )),
                        }),
                    };
                    if let Err(e) = self.engine.handle_input(wall_now(), input) {
                        tracing::warn!(error = %e, "the loop refused an actuator's answer");
                    }
                }
                Output::Audit(event) => {
                    tracing::info!(incident = %event.incident, step = ?event.step, detail = %event.detail, "heal");
                    let data = serde_json::to_value(&event).unwrap_or_else(|_| json!({}));
                    self.state
                        .publish(HEAL_AUDIT_SUBJECT, HEAL_STEP_EVENT, data)
                        .await;
                }
            }
        }
        if let Err(e) = self.engine.knowledge_mut().flush().await {
            tracing::warn!(error = %e, "incidents not stored yet; retried after the next step");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn node(i: u8) -> NodeId {
        NodeId([i; 32])
    }

    #[test]
    fn heartbeats_become_telemetry_and_link_events() {
        let report = |up: bool| {
            json!({
                "seq": 1, "cpu_percent": 97.5, "routes": 2,
                "links": [{"peer": node(2).to_string(), "up": up, "rtt_ms": 3.0, "loss": 0.3, "cost": 96}]
            })
        };
        let event = |up: bool| {
            json!({"network": "default", "heartbeats": [
                {"node_id": node(1).to_string(), "at": "2026-01-01T00:00:00Z", "report": report(up)},
                {"node_id": "not a node", "at": "2026-01-01T00:00:00Z", "report": report(up)},
            ]})
        };
        let mut links = HashMap::new();
        let inputs = inputs_of(&event(true), &mut links);
        assert_eq!(inputs.len(), 1, "the unreadable heartbeat is skipped");
        let Input::Telemetry(t) = &inputs[0] else {
            panic!("{inputs:?}")
        };
        assert_eq!(t.node, node(1));
        assert!(t.values.contains(&(Metric::Cpu, 97.5)));
        assert!(t.values.contains(&(Metric::RouteCount, 2.0)));
        assert!(
            t.values
                .contains(&(Metric::LinkLoss { peer: node(2) }, 30.0))
        );
        // Down: one event, then none while it stays down; up again: one.
        let down = inputs_of(&event(false), &mut links);
        assert!(matches!(
            down[0],
            Input::Event {
                event: Event::NeighbourDead { .. },
                ..
            }
        ));
        assert_eq!(inputs_of(&event(false), &mut links).len(), 1);
        let up = inputs_of(&event(true), &mut links);
        assert!(matches!(
            up[0],
            Input::Event {
                event: Event::NeighbourUp { .. },
                ..
            }
        ));
        assert!(inputs_of(&json!({"heartbeats": 3}), &mut links).is_empty());
    }
}
