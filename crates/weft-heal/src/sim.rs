//! `weft sim --heal`: the loop driven by the deterministic simulator.
//!
//! A mesh of `weft-proto` nodes runs in `weft-sim` on a virtual clock.
//! Every 100 ms (virtual) each live node reports what it measures (CPU and
//! memory synthesised per node, its links' loss and RTT from its liveness
//! detector, its route count) and the loop takes the nodes' events
//! (neighbour dead or up, forged announcements refused). Faults are
//! injected in waves; the loop's actions are carried out on the simulated
//! nodes by the [`SimActuator`]:
//!
//! | fault | injected as | healed by |
//! |---|---|---|
//! | overloaded node | its CPU driven to about 97 % | `shed_load`: the extra load is removed |
//! | lossy link | 30 % of transmissions lost | `drain_link`: cost infinite at both ends |
//! | crashed node | the node stops (no close frame) | `restart_process`: fresh state, links redialled |
//! | byzantine node | it forges announcements for others every 200 ms | `quarantine_node`: a signed revocation list to every node |
//!
//! MTTD and MTTR are measured on the virtual clock from each fault's
//! injection to the detection of the incident about it and to the loop's
//! verification that the action helped. The same seed gives the same run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use weft_crypto::NodeId;
use weft_proto::liveness::LivenessConfig;
use weft_proto::node::{Event as NodeEvent, NodeConfig};
use weft_proto::origin::{OwnOrigin, Refusal};
use weft_proto::wire::{Message, Seqno};
use weft_sim::hooks::Load;
use weft_sim::scenario::{Percentiles, Profile, Scenario, Topology};
use weft_sim::{Sim, SimError, topology};

use crate::engine::{ActRequest, Config, Engine, Output};
use crate::incident::Step;
use crate::knowledge::MemoryKnowledge;
use crate::model::{ActionKind, ActionResult, Event, Input, Metric, Target, Telemetry};
use crate::policy::Policy;
use crate::time::Time as HealTime;

/// The healing policy of `weft sim --heal` (`policy/sim.toml`).
pub const SIM_POLICY: &str = include_str!("../policy/sim.toml");

/// Wall-clock instant of the simulation's time zero, as its nodes see it.
const UNIX_MS_AT_ZERO: u64 = 1_800_000_000_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct HealSimConfig {
    /// The mesh: nodes, topology, degree, seed, timer profile and link
    /// properties (its kill fraction, byzantine count and duration are
    /// not used: the faults are this run's).
    pub scenario: Scenario,
    /// Waves of faults.
    pub waves: usize,
    /// Faults of each kind per wave (0: one per 250 nodes, at least one).
    pub per_kind: usize,
    /// Virtual time between waves.
    pub wave_interval: Duration,
    /// How often each node reports.
    pub report_interval: Duration,
    /// Longest the mesh may take to converge before the faults.
    pub converge_timeout: Duration,
    /// The healing policy (TOML; [`SIM_POLICY`] by default).
    pub policy: String,
}

impl Default for HealSimConfig {
    fn default() -> Self {
        Self {
            scenario: Scenario::default(),
            waves: 3,
            per_kind: 0,
            wave_interval: Duration::from_secs(8),
            report_interval: Duration::from_millis(100),
            converge_timeout: Duration::from_secs(30),
            policy: SIM_POLICY.to_owned(),
        }
    }
}

/// Why the run failed.
#[derive(Debug, thiserror::Error)]
pub enum HealSimError {
    /// The simulation could not be built.
    #[error("simulation: {0}")]
    Sim(#[from] SimError),
    /// The loop's configuration or policy was refused.
    #[error("healing loop: {0}")]
    Config(String),
    /// The run was asked for something impossible.
    #[error("{0}")]
    Invalid(String),
}

/// Kinds of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// A node's CPU saturates.
    OverloadedNode,
    /// A link loses 30 % of what it carries.
    LossyLink,
    /// A node crashes.
    CrashedNode,
    /// A node forges announcements.
    ByzantineNode,
}

impl FaultKind {
    const ALL: [FaultKind; 4] = [
        FaultKind::OverloadedNode,
        FaultKind::LossyLink,
        FaultKind::CrashedNode,
        FaultKind::ByzantineNode,
    ];

    fn as_str(self) -> &'static str {
        match self {
            FaultKind::OverloadedNode => "overloaded_node",
            FaultKind::LossyLink => "lossy_link",
            FaultKind::CrashedNode => "crashed_node",
            FaultKind::ByzantineNode => "byzantine_node",
        }
    }
}

/// One injected fault and what the loop did about it.
#[derive(Debug, Clone, Serialize)]
pub struct FaultOutcome {
    /// What.
    pub kind: FaultKind,
    /// Where: `node N` or `link A-B` (simulator indices).
    pub place: String,
    /// Virtual time of the injection, ms.
    pub injected_at_ms: u64,
    /// From injection to the detection of an incident about it.
    pub detected_ms: Option<u64>,
    /// From injection to the verification that an action healed it.
    pub healed_ms: Option<u64>,
    /// The action verified to have healed it.
    pub action: Option<ActionKind>,
}

/// Per fault kind: how many, how many healed, and their times.
#[derive(Debug, Clone, Serialize)]
pub struct KindSummary {
    /// Injected.
    pub injected: usize,
    /// Healed and verified.
    pub healed: usize,
    /// Injection to detection.
    pub mttd_ms: Percentiles,
    /// Injection to verified heal.
    pub mttr_ms: Percentiles,
}

/// What `weft sim --heal --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct HealSimReport {
    /// Nodes.
    pub nodes: usize,
    /// Links.
    pub links: usize,
    /// Seed.
    pub seed: u64,
    /// Timer profile.
    pub profile: &'static str,
    /// Simulated seconds.
    pub sim_seconds: f64,
    /// Wall-clock seconds the run took.
    pub wall_seconds: f64,
    /// Virtual time until every node routed to every other node of its
    /// component, ms.
    pub converged_ms: u64,
    /// Faults injected.
    pub faults_injected: usize,
    /// Faults healed and verified.
    pub faults_healed: usize,
    /// Injection to detection, over the detected faults.
    pub mttd_ms: Percentiles,
    /// Injection to verified heal, over the healed faults.
    pub mttr_ms: Percentiles,
    /// The same by fault kind.
    pub by_kind: BTreeMap<&'static str, KindSummary>,
    /// Incidents the loop opened.
    pub incidents: u64,
    /// Incidents that matched no injected fault (false alarms or
    /// collateral symptoms).
    pub unmatched_incidents: u64,
    /// Actions requested (rollbacks included).
    pub actions: u64,
    /// Rollbacks requested.
    pub rollbacks: u64,
    /// Actions the simulator could not carry out.
    pub actions_failed: u64,
    /// Every fault.
    pub faults: Vec<FaultOutcome>,
    /// Forwarding loops seen at any instant.
    pub loops: u64,
    /// Simulator events processed.
    pub sim_events: u64,
    /// SHA-256 over the event trace: equal for equal seeds and arguments.
    pub trace_hash: String,
}

fn percentiles(mut xs: Vec<f64>) -> Percentiles {
    if xs.is_empty() {
        return Percentiles::default();
    }
    xs.sort_by(f64::total_cmp);
    let at = |q: f64| xs[((xs.len() as f64 - 1.0) * q).round() as usize];
    Percentiles {
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
        count: xs.len(),
    }
}

fn heal_time(t: weft_proto::time::Time) -> HealTime {
    HealTime::from_millis(t.0 / 1000)
}

/// The loop's actuators on simulated nodes: each changes the simulated
/// world or fails without changing it.
pub struct SimActuator<'a> {
    sim: &'a mut Sim,
    load: &'a mut Load,
    cfg: &'a NodeConfig,
    revoked: &'a mut BTreeSet<usize>,
    epoch: &'a mut u64,
}

impl SimActuator<'_> {
    fn node(&self, id: &NodeId) -> Result<usize, String> {
        self.sim
            .index_of(id)
            .ok_or_else(|| format!("{id} is not a simulated node"))
    }

    /// Carries out one request.
    pub fn act(&mut self, req: &ActRequest) -> Result<(), String> {
        match (req.action, &req.target) {
            (ActionKind::DrainLink | ActionKind::UndrainLink, Target::Link(a, b)) => {
                let (ia, ib) = (self.node(a)?, self.node(b)?);
                let link = self
                    .sim
                    .link_between(ia, ib)
                    .ok_or_else(|| format!("no link between nodes {ia} and {ib}"))?;
                let drained = req.action == ActionKind::DrainLink;
                // The drain belongs to the link, not to its current
                // session: it is applied at the ends that hold the link
                // and again whenever the link comes back. A lossy link
                // that both ends already declared dead carries no traffic
                // now, but a flapping link returns; what an operator
                // wants is that it returns drained, so the request
                // succeeds and the loop verifies, as for any drain, that
                // both ends keep reporting and keep their routes.
                match self.sim.set_drained(link, drained) {
                    Some(_) => Ok(()),
                    None => Err(format!("no link between nodes {ia} and {ib}")),
                }
            }
            (ActionKind::RestartProcess, Target::Node(id) | Target::Component(id, _)) => {
                let i = self.node(id)?;
                if self.revoked.contains(&i) {
                    return Err(format!("node {i} is revoked"));
                }
                self.sim
                    .restart(i, self.cfg.clone())
                    .map_err(|e| format!("restart of node {i}: {e}"))
            }
            (ActionKind::ShedLoad, Target::Node(id)) => {
                let i = self.node(id)?;
                if self.load.shed(i) > 0.0 {
                    Ok(())
                } else {
                    Err(format!("node {i} carries no load to shed"))
                }
            }
            (ActionKind::QuarantineNode, Target::Node(id)) => {
                let i = self.node(id)?;
                if self.revoked.contains(&i) {
                    return Ok(());
                }
                self.revoked.insert(i);
                *self.epoch += 1;
                let list: Vec<usize> = self.revoked.iter().copied().collect();
                match self.sim.revoke_everywhere(&list, *self.epoch) {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        self.revoked.remove(&i);
                        Err(format!("revocation of node {i}: {e}"))
                    }
                }
            }
            (action, target) => Err(format!(
                "{action} on {target} is not available in the simulator"
            )),
        }
    }
}

struct Fault {
    /// Node indices it concerns (one, or a link's two ends).
    nodes: Vec<usize>,
    target: Target,
    injected: u64,
    outcome: FaultOutcome,
}

/// Runs the mesh, the faults and the loop; `progress` gets the fraction done.
pub fn run(
    cfg: &HealSimConfig,
    progress: &mut dyn FnMut(f64),
) -> Result<HealSimReport, HealSimError> {
    let wall = Instant::now();
    let sc = &cfg.scenario;
    if cfg.report_interval.is_zero() || cfg.wave_interval < Duration::from_secs(2) {
        return Err(HealSimError::Invalid(
            "report interval must be positive and waves at least 2 s apart".into(),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(sc.seed ^ 0x5eed_7090);
    let graph = match &sc.topology {
        Topology::Geometric => topology::geometric(sc.nodes, sc.degree, &mut rng),
        Topology::Grid => topology::grid(sc.nodes),
        Topology::BarabasiAlbert => topology::barabasi_albert(sc.nodes, sc.degree, &mut rng),
        Topology::Given(g) => g.clone(),
    };
    let n = graph.nodes;
    if n < 8 {
        return Err(HealSimError::Invalid(format!(
            "{n} nodes: the healing run needs at least 8"
        )));
    }
    let node_cfg = NodeConfig {
        liveness: match sc.profile {
            Profile::Default => LivenessConfig::default(),
            Profile::BabelDefaults => LivenessConfig::babel_defaults(),
        },
        unix_ms_at_zero: UNIX_MS_AT_ZERO,
        ..NodeConfig::default()
    };
    let mut sim = Sim::new(n, sc.seed, node_cfg.clone())?;
    for &(a, b) in &graph.edges {
        sim.connect(a, b, sc.link)?;
    }
    let adj = sim.adjacency();
    let ids: Vec<NodeId> = sim.ids().to_vec();
    let mut load = Load::new(n, ChaCha8Rng::seed_from_u64(sc.seed ^ 0x10ad));

    // Converge: every node routes to every other node of its component
    // (a generated graph may have more than one).
    let label = graph.components(&vec![true; n]);
    let mut size = vec![0usize; n];
    for &l in &label {
        size[l] += 1;
    }
    let step = Duration::from_millis(250);
    let converge_end = weft_proto::time::Time::ZERO + cfg.converge_timeout;
    loop {
        let t = sim.now() + step;
        sim.run_until(t);
        let done = (0..n).all(|i| sim.node(i).table().selected_count() + 1 >= size[label[i]]);
        if done {
            break;
        }
        if sim.now() >= converge_end {
            return Err(HealSimError::Invalid(format!(
                "the mesh did not converge within {:?} of virtual time",
                cfg.converge_timeout
            )));
        }
    }
    let converged_ms = sim.now().0 / 1000;

    let policy = Policy::parse(&cfg.policy).map_err(|e| HealSimError::Config(e.to_string()))?;
    let mut heal_cfg = Config {
        cycle_interval: cfg.report_interval,
        id_seed: sc.seed,
        ..Config::default()
    };
    // Six missed reports make a node silent.
    heal_cfg.monitor.stale_after = cfg.report_interval * 6;
    let mut engine = Engine::new(
        heal_cfg,
        policy,
        MemoryKnowledge::default(),
        heal_time(sim.now()),
    )
    .map_err(|e| HealSimError::Config(e.to_string()))?;

    // Warm-up: the statistical detectors learn each series' level.
    let warmup = cfg.report_interval * 40;
    let per_kind = if cfg.per_kind == 0 {
        (n / 250).max(1)
    } else {
        cfg.per_kind
    };
    let faults_start = sim.now() + warmup;
    let settle = Duration::from_secs(6);
    let end = faults_start + cfg.wave_interval * (cfg.waves as u32) + settle;
    let total = end.0.max(1) as f64;

    let mut revoked: BTreeSet<usize> = BTreeSet::new();
    let mut crashed: BTreeSet<usize> = BTreeSet::new();
    let mut epoch = 0u64;
    let mut faults: Vec<Fault> = Vec::new();
    let mut byzantine: Vec<(usize, u16)> = Vec::new();
    let mut used: BTreeSet<usize> = BTreeSet::new();
    let mut incident_fault: BTreeMap<weft_store::IncidentId, Option<usize>> = BTreeMap::new();
    let mut actions_failed = 0u64;
    let mut record_cursor = sim.records().len();
    let mut next_wave = 0usize;
    let mut last_forgery = sim.now();

    while sim.now() < end {
        let t = sim.now() + cfg.report_interval;
        sim.run_until(t);
        let now = heal_time(t);
        progress(t.0 as f64 / total);

        // Inject the next wave when due.
        if next_wave < cfg.waves && t >= faults_start + cfg.wave_interval * (next_wave as u32) {
            next_wave += 1;
            used.clear();
            inject_wave(
                &mut sim,
                &mut load,
                &adj,
                &mut rng,
                per_kind,
                &mut used,
                &revoked,
                &mut crashed,
                &mut faults,
                &mut byzantine,
            );
        }
        // Byzantine nodes forge every 200 ms until cut off.
        if t.saturating_since(last_forgery) >= Duration::from_millis(200) {
            last_forgery = t;
            for (b, seq) in &mut byzantine {
                *seq = seq.wrapping_add(1);
                forge(&mut sim, &adj, *b, *seq, &mut rng);
            }
        }

        // Monitor: every live, unrevoked node's report, then the events.
        for i in 0..n {
            if revoked.contains(&i) {
                continue;
            }
            let Some(r) = sim.report(i, &adj[i], &mut load) else {
                continue;
            };
            let mut values = Vec::with_capacity(3 + 2 * r.links.len());
            values.push((Metric::Cpu, r.cpu));
            values.push((Metric::Memory, r.memory));
            values.push((Metric::RouteCount, r.routes as f64));
            for l in &r.links {
                let peer = ids[l.peer];
                values.push((
                    Metric::LinkLoss { peer },
                    (l.loss * 100.0).clamp(0.0, 100.0),
                ));
                if let Some(rtt) = l.rtt_ms {
                    values.push((Metric::LinkRtt { peer }, rtt));
                }
            }
            let _ = engine.handle_input(
                now,
                Input::Telemetry(Telemetry {
                    node: ids[i],
                    at: now,
                    values,
                }),
            );
        }
        let records = sim.records();
        let mut events = Vec::new();
        for rec in &records[record_cursor..] {
            let node = ids[rec.node];
            let event = match &rec.event {
                NodeEvent::NeighbourDead { peer } => Event::NeighbourDead { node, peer: *peer },
                NodeEvent::NeighbourUp { peer } => Event::NeighbourUp { node, peer: *peer },
                NodeEvent::AnnouncementRefused {
                    origin,
                    reason: Refusal::Forged,
                    from,
                } => Event::ForgedAnnouncement {
                    node,
                    origin: *origin,
                    from: *from,
                },
                _ => continue,
            };
            events.push(Input::Event {
                at: heal_time(rec.at),
                event,
            });
        }
        record_cursor = records.len();
        for e in events {
            let _ = engine.handle_input(now, e);
        }

        // Analyze, execute, plan; act at once and answer.
        engine.handle_timeout(now);
        let mut answers = Vec::new();
        while let Some(out) = engine.poll_output() {
            match out {
                Output::Act(req) => {
                    let outcome = SimActuator {
                        sim: &mut sim,
                        load: &mut load,
                        cfg: &node_cfg,
                        revoked: &mut revoked,
                        epoch: &mut epoch,
                    }
                    .act(&req);
                    if outcome.is_err() {
                        actions_failed += 1;
                    }
                    if req.action == ActionKind::RestartProcess && outcome.is_ok() {
                        for id in req.target.nodes() {
                            if let Some(i) = sim.index_of(&id) {
                                crashed.remove(&i);
                            }
                        }
                    }
                    answers.push(Input::ActionResult(ActionResult {
                        id: req.id,
                        outcome,
                    }));
                }
                Output::Audit(ev) => {
                    let at = ev.at.as_millis();
                    match ev.step {
                        Step::Detected | Step::Merged => {
                            let slot = incident_fault.entry(ev.incident).or_insert(None);
                            if slot.is_none() {
                                *slot = match_fault(&faults, &ev.target, &sim);
                            }
                            if let Some(f) = *slot {
                                let f = &mut faults[f];
                                f.outcome
                                    .detected_ms
                                    .get_or_insert(at.saturating_sub(f.injected));
                            }
                        }
                        Step::Verified => {
                            if let Some(Some(f)) = incident_fault.get(&ev.incident) {
                                let f = &mut faults[*f];
                                if f.outcome.healed_ms.is_none() {
                                    f.outcome.healed_ms = Some(at.saturating_sub(f.injected));
                                    f.outcome.action = ev.action;
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        for a in answers {
            let _ = engine.handle_input(now, a);
        }
    }
    progress(1.0);

    let stats = engine.stats().clone();
    let outcomes: Vec<FaultOutcome> = faults.iter().map(|f| f.outcome.clone()).collect();
    let times = |fs: &mut dyn Iterator<Item = &FaultOutcome>| {
        let (mut d, mut r) = (Vec::new(), Vec::new());
        let mut injected = 0;
        for f in fs {
            injected += 1;
            if let Some(x) = f.detected_ms {
                d.push(x as f64);
            }
            if let Some(x) = f.healed_ms {
                r.push(x as f64);
            }
        }
        KindSummary {
            injected,
            healed: r.len(),
            mttd_ms: percentiles(d),
            mttr_ms: percentiles(r),
        }
    };
    let all = times(&mut outcomes.iter());
    let by_kind = FaultKind::ALL
        .iter()
        .map(|k| {
            (
                k.as_str(),
                times(&mut outcomes.iter().filter(|f| f.kind == *k)),
            )
        })
        .collect();
    Ok(HealSimReport {
        nodes: n,
        links: graph.edges.len(),
        seed: sc.seed,
        profile: match sc.profile {
            Profile::Default => "default",
            Profile::BabelDefaults => "babel-defaults",
        },
        sim_seconds: sim.now().0 as f64 / 1e6,
        wall_seconds: wall.elapsed().as_secs_f64(),
        converged_ms,
        faults_injected: all.injected,
        faults_healed: all.healed,
        mttd_ms: all.mttd_ms,
        mttr_ms: all.mttr_ms,
        by_kind,
        incidents: stats.incidents_opened,
        unmatched_incidents: incident_fault.values().filter(|f| f.is_none()).count() as u64,
        actions: stats.actions,
        rollbacks: stats.rollbacks,
        actions_failed,
        faults: outcomes,
        loops: sim.loops_seen(),
        sim_events: sim.events_processed(),
        trace_hash: sim.trace_hash(),
    })
}

/// The fault an incident about `target` is about: the one on exactly that
/// target, else the newest one whose nodes it touches.
fn match_fault(faults: &[Fault], target: &Target, sim: &Sim) -> Option<usize> {
    if let Some(i) = faults.iter().rposition(|f| f.target == *target) {
        return Some(i);
    }
    let touched: Vec<usize> = target
        .nodes()
        .iter()
        .filter_map(|id| sim.index_of(id))
        .collect();
    faults
        .iter()
        .rposition(|f| f.nodes.iter().any(|x| touched.contains(x)))
}

/// Injects one wave: `per_kind` faults of each kind, each on nodes whose
/// neighbourhoods no other fault of the wave touches (so that faults stay
/// independent and the loop's correlation does not merge them), never on
/// a revoked node or one still down.
#[allow(clippy::too_many_arguments)]
fn inject_wave(
    sim: &mut Sim,
    load: &mut Load,
    adj: &[Vec<(usize, usize)>],
    rng: &mut ChaCha8Rng,
    per_kind: usize,
    used: &mut BTreeSet<usize>,
    revoked: &BTreeSet<usize>,
    crashed: &mut BTreeSet<usize>,
    faults: &mut Vec<Fault>,
    byzantine: &mut Vec<(usize, u16)>,
) {
    let n = adj.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let ids = sim.ids().to_vec();
    let at = sim.now().0 / 1000;
    // A node and its neighbours, free of other faults; a fault claims them.
    let down = crashed.clone();
    let free = |used: &BTreeSet<usize>, i: usize| {
        !used.contains(&i)
            && !revoked.contains(&i)
            && !down.contains(&i)
            && adj[i].iter().all(|&(_, p)| !used.contains(&p))
    };
    let claim = |used: &mut BTreeSet<usize>, i: usize| {
        used.insert(i);
        used.extend(adj[i].iter().map(|&(_, p)| p));
    };
    let mut next = order.into_iter();
    for kind in FaultKind::ALL {
        for _ in 0..per_kind {
            let pick = match kind {
                // A link whose two ends each keep at least two other links.
                FaultKind::LossyLink => next.by_ref().find_map(|a| {
                    if !free(used, a) || adj[a].len() < 3 {
                        return None;
                    }
                    adj[a]
                        .iter()
                        .find(|&&(l, b)| {
                            free(used, b) && adj[b].len() >= 3 && sim.link_up(l) && b != a
                        })
                        .map(|&(l, b)| vec![a, b, l])
                }),
                // Nodes with at least two links, so a crash or a
                // quarantine leaves their neighbours connected.
                _ => next
                    .by_ref()
                    .find(|&a| free(used, a) && adj[a].len() >= 2)
                    .map(|a| vec![a]),
            };
            let Some(pick) = pick else { break };
            let (nodes, target, place) = if kind == FaultKind::LossyLink {
                let (a, b, l) = (pick[0], pick[1], pick[2]);
                sim.set_link_loss(l, 0.3);
                (
                    vec![a, b],
                    Target::link(ids[a], ids[b]),
                    format!("link {a}-{b}"),
                )
            } else {
                let a = pick[0];
                match kind {
                    FaultKind::OverloadedNode => {
                        let (cpu, _) = load.base(a);
                        load.overload(a, 97.0 - cpu, 0.0);
                    }
                    FaultKind::CrashedNode => {
                        sim.kill(a);
                        crashed.insert(a);
                    }
                    _ => byzantine.push((a, 0)),
                }
                (vec![a], Target::Node(ids[a]), format!("node {a}"))
            };
            for &x in &nodes {
                claim(used, x);
            }
            faults.push(Fault {
                nodes,
                target,
                injected: at,
                outcome: FaultOutcome {
                    kind,
                    place,
                    injected_at_ms: at,
                    detected_ms: None,
                    healed_ms: None,
                    action: None,
                },
            });
        }
    }
}

/// Byzantine node `b` sends each neighbour an announcement for a random
/// other node, signed with its own key: every honest receiver refuses it.
fn forge(sim: &mut Sim, adj: &[Vec<(usize, usize)>], b: usize, seq: u16, rng: &mut ChaCha8Rng) {
    let n = adj.len();
    let victim = (b + 1 + rng.random_range(0..n - 1)) % n;
    let now_ms = UNIX_MS_AT_ZERO + sim.now().0 / 1000;
    let held = sim
        .node(victim)
        .held_announcement(&sim.ids()[victim])
        .map(|a| a.seqno)
        .unwrap_or_default();
    let seqno = Seqno(held.0.wrapping_add(100).wrapping_add(seq));
    let Ok(own) = OwnOrigin::new(sim.key(b).clone(), 1, seqno, now_ms) else {
        return;
    };
    let Some(mut a) = own.announcement(seqno) else {
        return;
    };
    let mut cert = (*a.cert).clone();
    cert.origin = sim.ids()[victim];
    a.cert = std::sync::Arc::new(cert);
    let Ok(bytes) = Message::Announcement(a).to_bytes() else {
        return;
    };
    for &(l, _) in &adj[b] {
        sim.send_on_link(b, l, bytes.clone());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::model::ActionId;
    use weft_sim::LinkSpec;

    /// A lossy link that both ends already declared dead is still drained:
    /// the request succeeds and the link comes back drained.
    #[test]
    fn a_link_dead_at_both_ends_is_drained_for_when_it_returns() {
        let cfg = NodeConfig {
            unix_ms_at_zero: UNIX_MS_AT_ZERO,
            ..NodeConfig::default()
        };
        let mut sim = Sim::new(6, 1, cfg.clone()).unwrap();
        for a in 0..6 {
            sim.connect(a, (a + 1) % 6, LinkSpec::default()).unwrap();
        }
        let at = |ms: u64| weft_proto::time::Time::ZERO + Duration::from_millis(ms);
        sim.run_until(at(2000));
        let link = sim.link_between(0, 1).unwrap();
        sim.set_link_loss(link, 1.0);
        sim.run_until(at(8000));
        assert!(!sim.link_up(link), "both ends closed the link");
        let ids = sim.ids().to_vec();
        let mut load = Load::new(6, ChaCha8Rng::seed_from_u64(1));
        let mut revoked = BTreeSet::new();
        let mut epoch = 0;
        let req = ActRequest {
            id: ActionId {
                incident: weft_store::IncidentId(uuid::Uuid::nil()),
                seq: 0,
                rollback: false,
            },
            action: ActionKind::DrainLink,
            target: Target::link(ids[0], ids[1]),
            incident_kind: crate::model::IncidentKind::LinkDegraded,
            deadline: HealTime::from_millis(60_000),
        };
        let mut actuator = SimActuator {
            sim: &mut sim,
            load: &mut load,
            cfg: &cfg,
            revoked: &mut revoked,
            epoch: &mut epoch,
        };
        assert_eq!(actuator.act(&req), Ok(()));
        assert!(sim.is_drained(link));
        // Back up (node 1 restarts and redials): still drained, so node 0
        // goes the long way round.
        sim.set_link_loss(link, 0.0);
        sim.restart(1, cfg).unwrap();
        sim.run_until(at(10_000));
        assert!(sim.link_up(link));
        assert_eq!(sim.next_hop(0, 1), Some(5));
    }
}
