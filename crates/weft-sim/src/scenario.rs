//! The standard chaos scenario behind `weft sim`: build a topology, let it
//! converge, measure steady control traffic, let byzantine nodes forge
//! announcements, kill a fraction of the nodes at once at half time, and
//! measure detection, reconvergence, loops, reachability and delivery.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use weft_proto::liveness::LivenessConfig;
use weft_proto::node::{Event, NodeConfig};
use weft_proto::origin::OwnOrigin;
use weft_proto::time::Time;
use weft_proto::wire::{Message, Seqno};

use crate::topology::{self, Graph};
use crate::{LinkSpec, Sim, SimError};

/// Which graph to build.
#[derive(Debug, Clone)]
pub enum Topology {
    /// Random geometric graph with the scenario's mean degree.
    Geometric,
    /// Square grid.
    Grid,
    /// Barabási–Albert.
    BarabasiAlbert,
    /// A given graph (from an edge-list file).
    Given(Graph),
}

/// Timer profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// weft's defaults (hello 60 ms, adaptive multiplier).
    Default,
    /// RFC 8966's default timers (hello 4 s): the baseline.
    BabelDefaults,
}

/// A scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Node count (ignored for a given graph).
    pub nodes: usize,
    /// Topology.
    pub topology: Topology,
    /// Mean degree for generated graphs.
    pub degree: f64,
    /// Fraction of nodes killed at once at half time.
    pub kill: f64,
    /// Byzantine nodes forging announcements from a quarter of the run.
    pub byzantine: usize,
    /// Seed of everything random.
    pub seed: u64,
    /// Simulated duration.
    pub duration: Duration,
    /// Timer profile.
    pub profile: Profile,
    /// Link properties.
    pub link: LinkSpec,
    /// Heard routes each node keeps per destination
    /// ([`NodeConfig::routes_kept`]).
    pub routes_kept: usize,
    /// Send window per link ([`NodeConfig::send_window`]).
    pub send_window: usize,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            nodes: 1000,
            topology: Topology::Geometric,
            degree: 8.0,
            kill: 0.3,
            byzantine: 0,
            seed: 1,
            duration: Duration::from_secs(60),
            profile: Profile::Default,
            link: LinkSpec::default(),
            routes_kept: weft_proto::route::DEFAULT_ROUTES_KEPT,
            send_window: NodeConfig::default().send_window,
        }
    }
}

/// p50, p99 and max of a sample, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
    /// Sample size.
    pub count: usize,
}

impl Percentiles {
    fn of(mut xs: Vec<f64>) -> Self {
        if xs.is_empty() {
            return Self::default();
        }
        xs.sort_by(f64::total_cmp);
        let at = |q: f64| xs[((xs.len() as f64 - 1.0) * q).round() as usize];
        Self {
            p50: at(0.5),
            p99: at(0.99),
            max: at(1.0),
            count: xs.len(),
        }
    }
}

/// What `weft sim --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
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
    /// Nodes killed.
    pub killed: usize,
    /// From the kill to detection by each live neighbour of each killed node.
    pub detect_ms: Percentiles,
    /// From the kill to repair of each affected route (source and
    /// destination alive and still connected, old path through a killed node).
    pub reconverge_ms: Percentiles,
    /// Affected routes never repaired before the end.
    pub unrepaired_routes: usize,
    /// Forwarding loops seen at any instant (checked at every route change).
    pub loops: u64,
    /// Forged announcements held by any node.
    pub forged_accepted: usize,
    /// Forged announcements injected.
    pub forged_injected: usize,
    /// Connected live pairs without a working route at the end.
    pub unreachable_pairs_after_heal: usize,
    /// Live pairs checked for the figure above.
    pub pairs_checked: usize,
    /// Probe datagrams delivered / sent between connected live pairs after healing.
    pub delivery_ratio: f64,
    /// Mesh message bytes per node per second in the steady window before the faults.
    pub control_bytes_per_node_per_sec: f64,
    /// Extra bytes per live node in the 10 s after the kill (or half the
    /// remaining run, if shorter), over the steady rate.
    pub churn_bytes_per_node: f64,
    /// Peak resident set size of the process.
    pub peak_rss_bytes: u64,
    /// Most bytes of frames on the simulated links at once (sent, not yet
    /// delivered): the bootstrap's traffic in flight.
    pub peak_in_flight_bytes: u64,
    /// Real signature verifications (the shared memo's misses).
    pub signature_verifications: u64,
    /// SHA-256 over the event trace.
    pub trace_hash: String,
    /// Frames and bytes sent by all nodes over the whole run, by message kind.
    pub messages: std::collections::BTreeMap<&'static str, KindTotals>,
    /// Simulator events processed (deliveries, timers, link downs).
    pub sim_events: u64,
}

/// Frames and bytes of one message kind.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct KindTotals {
    /// Frames sent.
    pub frames: u64,
    /// Bytes sent.
    pub bytes: u64,
}

/// Most (source, destination) pairs followed for reconvergence and reachability.
const MAX_PAIRS: usize = 200_000;
/// Probe datagrams sent after healing.
const PROBES: usize = 2000;

/// Runs a scenario; `progress` is called with the fraction done.
pub fn run(sc: &Scenario, progress: &mut dyn FnMut(f64)) -> Result<Report, SimError> {
    let wall = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(sc.seed ^ 0x5eed_7090);
    let graph = match &sc.topology {
        Topology::Geometric => topology::geometric(sc.nodes, sc.degree, &mut rng),
        Topology::Grid => topology::grid(sc.nodes),
        Topology::BarabasiAlbert => topology::barabasi_albert(sc.nodes, sc.degree, &mut rng),
        Topology::Given(g) => g.clone(),
    };
    let n = graph.nodes;
    let liveness = match sc.profile {
        Profile::Default => LivenessConfig::default(),
        Profile::BabelDefaults => LivenessConfig::babel_defaults(),
    };
    let cfg = NodeConfig {
        liveness,
        unix_ms_at_zero: 1_800_000_000_000,
        routes_kept: sc.routes_kept,
        send_window: sc.send_window,
        ..NodeConfig::default()
    };
    let mut sim = Sim::new(n, sc.seed, cfg)?;
    let mut link_of = std::collections::HashMap::new();
    for &(a, b) in &graph.edges {
        let id = sim.connect(a, b, sc.link)?;
        link_of.insert((a, b), id);
        link_of.insert((b, a), id);
    }
    let end = Time(u64::try_from(sc.duration.as_micros()).unwrap_or(u64::MAX));
    let kill_at = Time(end.0 / 2);
    let byz_at = Time(end.0 / 4);
    let steady_from = Time(
        kill_at
            .0
            .saturating_sub(10_000_000)
            .max(byz_at.0 + 2_000_000)
            .min(kill_at.0),
    );
    let step = |sim: &mut Sim, t: Time, progress: &mut dyn FnMut(f64)| {
        while sim.now() < t {
            let next = (sim.now() + Duration::from_millis(500)).min(t);
            sim.run_until(next);
            progress(next.0 as f64 / end.0.max(1) as f64);
        }
    };

    // Byzantine nodes forge announcements for random origins.
    step(&mut sim, byz_at, progress);
    let mut byzantine: Vec<usize> = (0..n).collect();
    byzantine.shuffle(&mut rng);
    byzantine.truncate(sc.byzantine.min(n));
    let adj = graph.adjacency();
    let mut forged = Vec::new();
    for &b in &byzantine {
        for _ in 0..4 {
            let victim = rng.random_range(0..n);
            let now_ms = 1_800_000_000_000 + sim.now().0 / 1000;
            let held = sim
                .node(victim)
                .held_announcement(&sim.ids()[victim])
                .map(|a| a.seqno)
                .unwrap_or_default();
            // Signed by the byzantine node's own key, claimed for the victim.
            let seqno = Seqno(held.0.wrapping_add(100));
            let own = OwnOrigin::new(sim.key(b).clone(), 1, seqno, now_ms)?;
            let Some(mut a) = own.announcement(seqno) else {
                continue;
            };
            let mut cert = (*a.cert).clone();
            cert.origin = sim.ids()[victim];
            a.cert = std::sync::Arc::new(cert);
            let bytes = Message::Announcement(a.clone())
                .to_bytes()
                .unwrap_or_default();
            for &nb in &adj[b] {
                if let Some(&l) = link_of.get(&(b, nb)) {
                    sim.inject(nb, l, bytes.clone());
                }
            }
            forged.push(a);
        }
    }

    // Steady window.
    step(&mut sim, steady_from, progress);
    let bytes_at = |sim: &Sim| (0..n).map(|i| sim.control_bytes(i)).sum::<u64>();
    let steady_start_bytes = bytes_at(&sim);
    step(&mut sim, kill_at, progress);
    let steady_bytes = bytes_at(&sim) - steady_start_bytes;
    let steady_secs = kill_at
        .saturating_since(steady_from)
        .as_secs_f64()
        .max(1e-9);
    let steady_rate = steady_bytes as f64 / steady_secs;

    // Kill.
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng);
    let killed: HashSet<usize> = order
        .iter()
        .copied()
        .take((sc.kill * n as f64).round() as usize)
        .collect();
    let alive: Vec<bool> = (0..n).map(|i| !killed.contains(&i)).collect();
    let label = graph.components(&alive);
    // Affected pairs: next-hop chain through a killed node before the kill.
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    'outer: for src in 0..n {
        if !alive[src] {
            continue;
        }
        for dst in 0..n {
            if dst == src || !alive[dst] || label[src] != label[dst] {
                continue;
            }
            let mut at = src;
            let mut hops = 0;
            while at != dst && hops <= n {
                hops += 1;
                match sim.next_hop(at, dst) {
                    Some(next) if killed.contains(&next) => {
                        pairs.push((src, dst));
                        break;
                    }
                    Some(next) => at = next,
                    None => break,
                }
            }
            if pairs.len() >= MAX_PAIRS {
                break 'outer;
            }
        }
    }
    let records_before = sim.records().len();
    for &k in &killed {
        sim.kill(k);
    }
    let mut repaired: Vec<Option<Time>> = vec![None; pairs.len()];
    let mut open: Vec<usize> = (0..pairs.len()).collect();
    let tail = end.saturating_since(kill_at);
    let churn_until = kill_at + Duration::from_secs(10).min(tail / 2);
    let kill_bytes = bytes_at(&sim);
    while sim.now() < churn_until {
        let next = sim.now() + Duration::from_millis(10);
        sim.run_until(next);
        open.retain(|&p| {
            let (src, dst) = pairs[p];
            if reaches(&sim, src, dst) {
                repaired[p] = Some(sim.now());
                false
            } else {
                true
            }
        });
        if next.0 % 500_000 < 10_000 {
            progress(next.0 as f64 / end.0.max(1) as f64);
        }
    }
    let churn_secs = churn_until.saturating_since(kill_at).as_secs_f64();
    let churn_bytes = (bytes_at(&sim) - kill_bytes) as f64 - steady_rate * churn_secs;
    let live = alive.iter().filter(|a| **a).count().max(1);

    // Detection: each live neighbour of each killed node.
    let mut detect = Vec::new();
    let dead_ids: std::collections::HashMap<_, _> =
        killed.iter().map(|&k| (sim.ids()[k], k)).collect();
    let mut seen: HashSet<(usize, usize)> = HashSet::new();
    for r in &sim.records()[records_before..] {
        if let Event::NeighbourDead { peer } = &r.event
            && let Some(&k) = dead_ids.get(peer)
            && seen.insert((r.node, k))
        {
            detect.push(r.at.saturating_since(kill_at).as_secs_f64() * 1000.0);
        }
    }
    let expected_detections: usize = killed
        .iter()
        .map(|&k| adj[k].iter().filter(|&&j| alive[j]).count())
        .sum();
    // Undetected deaths count as the whole remaining run.
    for _ in detect.len()..expected_detections {
        detect.push(churn_until.saturating_since(kill_at).as_secs_f64() * 1000.0);
    }
    let reconverge: Vec<f64> = repaired
        .iter()
        .map(|t| {
            t.unwrap_or(churn_until)
                .saturating_since(kill_at)
                .as_secs_f64()
                * 1000.0
        })
        .collect();
    let unrepaired = repaired.iter().filter(|t| t.is_none()).count();

    // Healing done: probe delivery and reachability.
    let probe_window = Duration::from_secs(5).min(tail / 4);
    let probe_at = Time(
        end.0
            .saturating_sub(probe_window.as_micros() as u64)
            .max(churn_until.0),
    );
    step(&mut sim, probe_at, progress);
    let live_nodes: Vec<usize> = (0..n).filter(|&i| alive[i]).collect();
    let mut sent = 0usize;
    let mut probe_pairs = Vec::new();
    for p in 0..PROBES {
        if live_nodes.len() < 2 {
            break;
        }
        let a = live_nodes[rng.random_range(0..live_nodes.len())];
        let b = live_nodes[rng.random_range(0..live_nodes.len())];
        if a == b || label[a] != label[b] {
            continue;
        }
        let payload = format!("probe-{p}").into_bytes();
        sim.send_datagram(a, b, payload.clone());
        probe_pairs.push((b, payload));
        sent += 1;
    }
    let probe_records = sim.records().len();
    step(&mut sim, end, progress);
    let got: HashSet<(usize, Vec<u8>)> = sim.records()[probe_records..]
        .iter()
        .filter_map(|r| match &r.event {
            Event::Delivered { payload, .. } => Some((r.node, payload.clone())),
            _ => None,
        })
        .collect();
    let delivered = probe_pairs
        .iter()
        .filter(|(b, p)| got.contains(&(*b, p.clone())))
        .count();
    let mut unreachable = 0;
    let mut checked = 0;
    'pairs: for &src in &live_nodes {
        for &dst in &live_nodes {
            if src != dst && label[src] == label[dst] {
                checked += 1;
                if !reaches(&sim, src, dst) {
                    unreachable += 1;
                }
                if checked >= MAX_PAIRS {
                    break 'pairs;
                }
            }
        }
    }
    let forged_accepted = forged
        .iter()
        .filter(|f| (0..n).any(|i| sim.node(i).held_announcement(f.origin()) == Some(f)))
        .count();
    progress(1.0);
    let mut messages = std::collections::BTreeMap::<&'static str, KindTotals>::new();
    for i in 0..n {
        for (kind, &(frames, bytes)) in &sim.node(i).stats().sent {
            let t = messages.entry(kind).or_default();
            t.frames += frames;
            t.bytes += bytes;
        }
    }
    Ok(Report {
        nodes: n,
        links: graph.edges.len(),
        seed: sc.seed,
        profile: match sc.profile {
            Profile::Default => "default",
            Profile::BabelDefaults => "babel-defaults",
        },
        sim_seconds: end.0 as f64 / 1e6,
        wall_seconds: wall.elapsed().as_secs_f64(),
        killed: killed.len(),
        detect_ms: Percentiles::of(detect),
        reconverge_ms: Percentiles::of(reconverge),
        unrepaired_routes: unrepaired,
        loops: sim.loops_seen(),
        forged_accepted,
        forged_injected: forged.len(),
        unreachable_pairs_after_heal: unreachable,
        pairs_checked: checked,
        delivery_ratio: if sent == 0 {
            1.0
        } else {
            delivered as f64 / sent as f64
        },
        control_bytes_per_node_per_sec: steady_rate / n as f64,
        churn_bytes_per_node: churn_bytes / live as f64,
        peak_rss_bytes: peak_rss(),
        peak_in_flight_bytes: sim.peak_in_flight_bytes(),
        signature_verifications: sim.verifications(),
        trace_hash: sim.trace_hash(),
        messages,
        sim_events: sim.events_processed(),
    })
}

/// Whether next hops from `src` lead to `dst` through live nodes.
fn reaches(sim: &Sim, src: usize, dst: usize) -> bool {
    let mut at = src;
    let mut hops = 0;
    while at != dst {
        if !sim.is_alive(at) || hops > sim.ids().len() {
            return false;
        }
        hops += 1;
        match sim.next_hop(at, dst) {
            Some(next) => at = next,
            None => return false,
        }
    }
    true
}

/// Peak resident set size (VmHWM) of this process, 0 where unavailable.
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
