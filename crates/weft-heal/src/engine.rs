//! The engine: the whole MAPE-K loop as one sans-IO state machine.
//!
//! The driver feeds it inputs with [`Engine::handle_input`], calls
//! [`Engine::handle_timeout`] when [`Engine::poll_timeout`] says, and
//! drains [`Engine::poll_output`]: [`Output::Act`] requests go to an
//! [`Actuator`](crate::Actuator) (whose answer comes back as
//! [`Input::ActionResult`]), [`Output::Audit`] events go to the bus's audit
//! stream. [`Engine::step`] does all of that for one batch of inputs:
//! `(now, inputs) -> (outputs, next deadline)`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use weft_crypto::NodeId;
use weft_store::{IncidentId, IncidentStatus};

use crate::detect::DetectorConfig;
use crate::incident::{Element, Incident, Phase, Step};
use crate::knowledge::Knowledge;
use crate::model::{ActionId, ActionKind, IncidentKind, Input, InputError, Severity, Target};
use crate::monitor::{Monitor, MonitorConfig};
use crate::policy::Policy;
use crate::time::{Time, serde_duration};

/// Analysis settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyzeConfig {
    /// Failures starting within this of an incident may join it.
    #[serde(with = "serde_duration")]
    pub correlation_window: Duration,
    /// Failures around one node that make one group (2 to 1000).
    pub min_group: usize,
    /// Share of the reporting nodes overloaded (or losing routes) at once
    /// that is one fleet-wide incident (0 to 1).
    pub surge_fraction: f64,
    /// ... and at least this many nodes (2 to 1 000 000).
    pub surge_min_nodes: usize,
    /// An incident whose failures all cleared this long ago is resolved.
    #[serde(with = "serde_duration")]
    pub resolve_after: Duration,
    /// Refused announcements from one node that make an incident (1 to
    /// 4096).
    pub forged_min_reports: usize,
    /// Most open incidents (new ones beyond are counted and dropped).
    pub max_open_incidents: usize,
}

impl Default for AnalyzeConfig {
    fn default() -> Self {
        Self {
            correlation_window: Duration::from_secs(10),
            min_group: 3,
            surge_fraction: 0.2,
            surge_min_nodes: 10,
            resolve_after: Duration::from_secs(10),
            forged_min_reports: 3,
            max_open_incidents: 10_000,
        }
    }
}

/// Execution settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecuteConfig {
    /// An action not answered within this failed (a reversible one is
    /// rolled back in case it happened late).
    #[serde(with = "serde_duration")]
    pub action_timeout: Duration,
    /// Share by which the symptom level must fall for an action to count
    /// as helping when it does not clear the symptoms (0 to 1).
    pub min_improvement: f64,
    /// Share of its routes a link's end may lose after a drain before the
    /// drain counts as harmful (0 to 1).
    pub route_tolerance: f64,
}

impl Default for ExecuteConfig {
    fn default() -> Self {
        Self {
            action_timeout: Duration::from_secs(30),
            min_improvement: 0.3,
            route_tolerance: 0.1,
        }
    }
}

/// Everything the engine is configured with, except the policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Monitor limits.
    pub monitor: MonitorConfig,
    /// Detector settings.
    pub detect: DetectorConfig,
    /// Analysis.
    pub analyze: AnalyzeConfig,
    /// Execution.
    pub execute: ExecuteConfig,
    /// How often a cycle (analyze, verify, plan) runs.
    #[serde(with = "serde_duration")]
    pub cycle_interval: Duration,
    /// Seed of incident ids (ids are UUIDv7 from `now` and this seed, so a
    /// simulation is reproducible; a real driver passes a random seed).
    pub id_seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            monitor: MonitorConfig::default(),
            detect: DetectorConfig::default(),
            analyze: AnalyzeConfig::default(),
            execute: ExecuteConfig::default(),
            cycle_interval: Duration::from_secs(1),
            id_seed: 0,
        }
    }
}

/// A configuration value out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("heal configuration: {key}: {message}")]
pub struct ConfigError {
    /// The key.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl Config {
    /// Refuses values out of range, naming the key.
    pub fn check(&self) -> Result<(), ConfigError> {
        let err = |(key, message): (String, String)| ConfigError { key, message };
        self.monitor.check().map_err(err)?;
        self.detect.check().map_err(err)?;
        let a = &self.analyze;
        let bad = |key: &str, message: String| {
            Err(ConfigError {
                key: key.into(),
                message,
            })
        };
        if !(2..=1000).contains(&a.min_group) {
            return bad(
                "analyze.min_group",
                format!("{} is outside 2 to 1000", a.min_group),
            );
        }
        if !(0.0..=1.0).contains(&a.surge_fraction) {
            return bad(
                "analyze.surge_fraction",
                format!("{} is outside 0 to 1", a.surge_fraction),
            );
        }
        if !(2..=1_000_000).contains(&a.surge_min_nodes) {
            return bad(
                "analyze.surge_min_nodes",
                format!("{} is outside 2 to 1000000", a.surge_min_nodes),
            );
        }
        if !(1..=4096).contains(&a.forged_min_reports) {
            return bad(
                "analyze.forged_min_reports",
                format!("{} is outside 1 to 4096", a.forged_min_reports),
            );
        }
        if !(1..=1_000_000).contains(&a.max_open_incidents) {
            return bad(
                "analyze.max_open_incidents",
                format!("{} is outside 1 to 1000000", a.max_open_incidents),
            );
        }
        let e = &self.execute;
        for (key, v) in [
            ("execute.min_improvement", e.min_improvement),
            ("execute.route_tolerance", e.route_tolerance),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return bad(key, format!("{v} is outside 0 to 1"));
            }
        }
        for (key, d) in [
            ("analyze.correlation_window", a.correlation_window),
            ("analyze.resolve_after", a.resolve_after),
            ("execute.action_timeout", e.action_timeout),
            ("cycle_interval", self.cycle_interval),
        ] {
            if d.is_zero() || d > Duration::from_secs(86_400) {
                return bad(key, format!("{d:?} is outside 1ms to 24h"));
            }
        }
        Ok(())
    }
}

/// A request to an actuator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActRequest {
    /// Answer with this id.
    pub id: ActionId,
    /// What to do.
    pub action: ActionKind,
    /// On what (for `restart_process` on a node: the component is in the
    /// target).
    pub target: Target,
    /// The incident's kind.
    pub incident_kind: IncidentKind,
    /// No answer after this is a failure.
    pub deadline: Time,
}

/// One audited step, for the bus's audit stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When.
    pub at: Time,
    /// The incident.
    pub incident: IncidentId,
    /// Its kind (after this step).
    pub kind: IncidentKind,
    /// What it is about.
    pub target: Target,
    /// Its severity.
    pub severity: Severity,
    /// The step.
    pub step: Step,
    /// The action concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionKind>,
    /// Details.
    pub detail: String,
    /// For `detected`: time to detect (from the first symptom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mttd_ms: Option<u64>,
    /// For `resolved`: time to repair (from the first symptom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mttr_ms: Option<u64>,
}

/// What the engine asks the driver to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Carry out an action and answer with [`Input::ActionResult`].
    Act(ActRequest),
    /// Publish an audit event.
    Audit(AuditEvent),
}

/// Counters of what the engine did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Inputs taken in.
    pub inputs: u64,
    /// Inputs refused.
    pub refused: u64,
    /// Cycles run.
    pub cycles: u64,
    /// Incidents opened.
    pub incidents_opened: u64,
    /// Incidents resolved.
    pub incidents_resolved: u64,
    /// Incidents not opened because `max_open_incidents` were open.
    pub incidents_dropped: u64,
    /// Failures merged into existing incidents (correlation or dedup).
    pub merged: u64,
    /// Actions requested (rollbacks included).
    pub actions: u64,
    /// Rollbacks requested.
    pub rollbacks: u64,
}

/// The result of [`Engine::step`].
#[derive(Debug, Default)]
pub struct StepResult {
    /// Outputs, in order.
    pub outputs: Vec<Output>,
    /// When to call again at the latest.
    pub next_deadline: Option<Time>,
    /// Inputs refused, with why (the rest were taken in).
    pub refused: Vec<InputError>,
}

/// Blast-radius and cooldown state.
#[derive(Debug, Default)]
pub(crate) struct PlannerState {
    /// When each (action, target) may run again.
    pub cooldowns: FxHashMap<(ActionKind, Target), Time>,
    /// Nodes acted on, with when.
    pub acted: VecDeque<(Time, NodeId)>,
    /// Actions awaiting an answer.
    pub in_flight: usize,
    /// Nodes reporting at the start of the current plan phase.
    pub fresh_nodes: usize,
}

/// The self-healing loop.
pub struct Engine<K> {
    pub(crate) cfg: Config,
    pub(crate) policy: Policy,
    pub(crate) knowledge: K,
    pub(crate) monitor: Monitor,
    /// Open and escalated incidents.
    pub(crate) incidents: BTreeMap<IncidentId, Incident>,
    /// Which open incident covers each element.
    pub(crate) index: FxHashMap<Element, IncidentId>,
    /// Elements of incidents resolved lately, with when: a lingering
    /// statistical alarm on one of them opens nothing for `resolve_after`.
    pub(crate) recent: FxHashMap<Element, Time>,
    pub(crate) planner: PlannerState,
    pub(crate) outputs: VecDeque<Output>,
    pub(crate) next_cycle: Option<Time>,
    pub(crate) ids: u64,
    pub(crate) scratch: Vec<f32>,
    pub(crate) stats: EngineStats,
}

impl<K> std::fmt::Debug for Engine<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("incidents", &self.incidents.len())
            .field("nodes", &self.monitor.nodes.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<K: Knowledge> Engine<K> {
    /// A new engine; takes up the open incidents `knowledge` holds (their
    /// actions in flight are verified again from `now`).
    pub fn new(cfg: Config, policy: Policy, knowledge: K, now: Time) -> Result<Self, ConfigError> {
        cfg.check()?;
        let mut engine = Self {
            cfg,
            policy,
            knowledge,
            monitor: Monitor::default(),
            incidents: BTreeMap::new(),
            index: FxHashMap::default(),
            recent: FxHashMap::default(),
            planner: PlannerState::default(),
            outputs: VecDeque::new(),
            next_cycle: None,
            ids: 0,
            scratch: Vec::new(),
            stats: EngineStats::default(),
        };
        for incident in engine.knowledge.open_incidents() {
            engine.restore(incident, now);
        }
        Ok(engine)
    }

    fn restore(&mut self, mut incident: Incident, now: Time) {
        if self.incidents.len() >= self.cfg.analyze.max_open_incidents {
            self.stats.incidents_dropped += 1;
            return;
        }
        let detail = match incident.phase {
            Phase::Acting { seq, .. } | Phase::Verifying { seq, .. } => {
                // The answer may have been lost with the old process:
                // judge the action by re-measuring.
                let verify_after = self.verify_after_of(&incident, seq);
                incident.phase = Phase::Verifying {
                    seq,
                    until: now + verify_after,
                };
                if let Some(a) = incident.actions.iter_mut().find(|a| a.seq == seq) {
                    a.status = crate::incident::ActionStatus::Verifying;
                }
                format!("restarted while action {seq} was in flight; verifying it again")
            }
            Phase::RollingBack { seq, .. } => {
                // Ask for the rollback again (rollbacks are idempotent).
                incident.phase = Phase::RollingBack {
                    seq,
                    deadline: now + self.cfg.execute.action_timeout,
                };
                if let Some(a) = incident.actions.iter().find(|a| a.seq == seq)
                    && let Some(inverse) = a.action.inverse()
                {
                    self.outputs.push_back(Output::Act(ActRequest {
                        id: ActionId {
                            incident: incident.id,
                            seq,
                            rollback: true,
                        },
                        action: inverse,
                        target: a.target.clone(),
                        incident_kind: incident.kind,
                        deadline: now + self.cfg.execute.action_timeout,
                    }));
                    self.planner.in_flight += 1;
                    self.stats.rollbacks += 1;
                    self.stats.actions += 1;
                }
                format!("restarted while rolling back action {seq}; asked again")
            }
            _ => "restarted; taken up again".to_owned(),
        };
        // Links drained by a verified (or verifying) action stay drained.
        for a in &incident.actions {
            if a.action == ActionKind::DrainLink
                && !a.rolled_back
                && a.status != crate::incident::ActionStatus::Failed
                && let Target::Link(x, y) = a.target
            {
                let cfg = self.cfg.monitor.clone();
                self.monitor.node_slot(x, now, &cfg);
                self.monitor.node_slot(y, now, &cfg);
                let (Some(&i), Some(&j)) = (
                    self.monitor.node_index.get(&x),
                    self.monitor.node_index.get(&y),
                ) else {
                    continue;
                };
                self.monitor.link_slot(i, j, now, &cfg);
                self.monitor.link_slot(j, i, now, &cfg);
                self.monitor.set_drained(x, y, true);
            }
        }
        incident.last_active = incident.last_active.max(now);
        incident.note(now, Step::Restored, None, detail.clone());
        for e in &incident.elements {
            self.index.insert(e.clone(), incident.id);
        }
        self.audit(&incident, now, Step::Restored, None, detail);
        self.knowledge.record(&incident);
        self.incidents.insert(incident.id, incident);
    }

    pub(crate) fn verify_after_of(&self, incident: &Incident, seq: u32) -> Duration {
        let action = incident.actions.iter().find(|a| a.seq == seq);
        action
            .and_then(|a| {
                self.policy
                    .rules
                    .iter()
                    .find(|r| r.name == a.policy)
                    .and_then(|r| r.actions.iter().find(|c| c.action == a.action))
            })
            .map_or(Duration::from_secs(30), |c| c.verify_after)
    }

    /// Takes in one input. A refused input changes nothing.
    pub fn handle_input(&mut self, now: Time, input: Input) -> Result<(), InputError> {
        self.stats.inputs += 1;
        let r = match input {
            Input::Sample(s) => self
                .monitor
                .sample(now, &s, &self.cfg.monitor, &self.cfg.detect),
            Input::Telemetry(t) => {
                self.monitor
                    .telemetry(now, &t, &self.cfg.monitor, &self.cfg.detect)
            }
            Input::Event { at, event } => {
                self.monitor.event(now, at, &event, &self.cfg.monitor);
                Ok(())
            }
            Input::ActionResult(r) => self.action_result(now, r),
        };
        if r.is_err() {
            self.stats.refused += 1;
        }
        if self.next_cycle.is_none() {
            self.next_cycle = Some(now + self.cfg.cycle_interval);
        }
        r
    }

    /// Whether a cycle is due at `now`.
    pub fn cycle_due(&self, now: Time) -> bool {
        self.next_cycle.is_some_and(|t| now >= t)
    }

    /// Runs what is due at `now`: a cycle (analyze, execute, plan) if one
    /// is due, and action deadlines.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.cycle_due(now) {
            self.run_cycle(now);
        } else {
            self.execute(now);
        }
    }

    /// Runs one full cycle now, due or not: analyze, execute (results,
    /// verification, rollbacks, deadlines), plan.
    pub fn run_cycle(&mut self, now: Time) {
        self.analyze(now);
        self.execute(now);
        self.plan(now);
        self.finish_cycle(now);
    }

    /// Marks a cycle done (for drivers that call the phases one by one).
    pub fn finish_cycle(&mut self, now: Time) {
        self.stats.cycles += 1;
        self.next_cycle = Some(now + self.cfg.cycle_interval);
    }

    /// The next time [`Engine::handle_timeout`] should be called.
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut next = self.next_cycle;
        for i in self.incidents.values() {
            let t = match i.phase {
                Phase::Acting { deadline, .. } | Phase::RollingBack { deadline, .. } => deadline,
                Phase::Verifying { until, .. } => until,
                _ => continue,
            };
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Takes in `inputs`, runs what is due, and returns every output and
    /// the next deadline.
    pub fn step(&mut self, now: Time, inputs: impl IntoIterator<Item = Input>) -> StepResult {
        let mut refused = Vec::new();
        for input in inputs {
            if let Err(e) = self.handle_input(now, input) {
                refused.push(e);
            }
        }
        if self.poll_timeout().is_some_and(|t| now >= t) {
            self.handle_timeout(now);
        }
        StepResult {
            outputs: self.outputs.drain(..).collect(),
            next_deadline: self.poll_timeout(),
            refused,
        }
    }

    /// The open and escalated incidents.
    pub fn incidents(&self) -> impl Iterator<Item = &Incident> {
        self.incidents.values()
    }

    /// An open incident by id.
    pub fn incident(&self, id: IncidentId) -> Option<&Incident> {
        self.incidents.get(&id)
    }

    /// The knowledge.
    pub fn knowledge(&self) -> &K {
        &self.knowledge
    }

    /// The knowledge, to flush a persistent one.
    pub fn knowledge_mut(&mut self) -> &mut K {
        &mut self.knowledge
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replaces the policy (actions in flight finish under the old one).
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Nodes tracked, and nodes that ever reported.
    pub fn node_counts(&self) -> (usize, usize) {
        (self.monitor.nodes.len(), self.monitor.reporting)
    }

    /// The next incident id: a UUIDv7 from `now`, the seed and a counter.
    pub(crate) fn new_id(&mut self, now: Time) -> IncidentId {
        self.ids += 1;
        let mut x = self.cfg.id_seed ^ self.ids.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut bytes = [0u8; 10];
        for chunk in bytes.chunks_mut(5) {
            // splitmix64
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..5]);
        }
        IncidentId(uuid::Builder::from_unix_timestamp_millis(now.as_millis(), &bytes).into_uuid())
    }

    /// Queues an audit event for an incident.
    pub(crate) fn audit(
        &mut self,
        incident: &Incident,
        at: Time,
        step: Step,
        action: Option<ActionKind>,
        detail: String,
    ) {
        self.outputs.push_back(Output::Audit(AuditEvent {
            at,
            incident: incident.id,
            kind: incident.kind,
            target: incident.target.clone(),
            severity: incident.severity,
            step,
            action,
            detail,
            mttd_ms: (step == Step::Detected).then(|| incident.mttd_ms()),
            mttr_ms: if step == Step::Resolved {
                incident.mttr_ms()
            } else {
                None
            },
        }));
    }

    /// Notes a step on an incident's timeline and audits it.
    pub(crate) fn step_incident(
        &mut self,
        id: IncidentId,
        at: Time,
        step: Step,
        action: Option<ActionKind>,
        detail: String,
    ) {
        let Some(mut incident) = self.incidents.remove(&id) else {
            return;
        };
        incident.note(at, step, action, detail.clone());
        self.audit(&incident, at, step, action, detail);
        self.knowledge.record(&incident);
        self.incidents.insert(id, incident);
    }

    /// Resolves an open incident.
    pub(crate) fn resolve(&mut self, id: IncidentId, now: Time, how: String) {
        let Some(mut incident) = self.incidents.remove(&id) else {
            return;
        };
        incident.status = IncidentStatus::Resolved;
        incident.phase = Phase::Closed;
        incident.resolved_at = Some(now);
        incident.resolution = Some(how.clone());
        incident.note(now, Step::Resolved, None, how.clone());
        for e in &incident.elements {
            if self.index.get(e) == Some(&id) {
                self.index.remove(e);
                self.recent.insert(e.clone(), now);
            }
        }
        self.stats.incidents_resolved += 1;
        self.audit(&incident, now, Step::Resolved, None, how);
        self.knowledge.record(&incident);
    }
}
