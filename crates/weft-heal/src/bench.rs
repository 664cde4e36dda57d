//! `weft bench heal`: how long one full cycle (monitor → analyze →
//! execute → plan) takes over telemetry from a fleet, against baselines
//! measured in the same run.
//!
//! The fleet: `nodes` nodes, each sending one report per cycle (as an
//! agent's heartbeat does) with CPU, memory, its route count and loss and
//! RTT on 4 links (11 samples per node per cycle), noisy around steady
//! levels. After a warm-up (so every statistical detector
//! is live), 1 % of the nodes overload and 0.5 % of the links turn lossy,
//! so the timed cycles also open incidents and plan actions. Nothing
//! answers the actions: they time out and are rolled back, which the
//! timed cycles include too.
//!
//! The main size is also run with every value sent as its own sample
//! (`cycle_p50_ms_per_sample`), the slower path for drivers that cannot
//! batch.
//!
//! Baselines, over the same samples:
//! - **naive**: the same four detectors implemented directly: every
//!   series in a `HashMap` keyed by (node, metric, peer), statistics
//!   recomputed from the whole window each cycle, MAD by sorting;
//! - **bare pass**: reading every sample once and summing its value: the
//!   floor for anything that looks at every sample.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use serde::Serialize;
use weft_crypto::NodeId;

use crate::engine::{Config, Engine, Output};
use crate::knowledge::MemoryKnowledge;
use crate::model::{Input, Metric, Sample, Telemetry};
use crate::policy::Policy;
use crate::time::Time;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Nodes of the main run.
    pub nodes: usize,
    /// Timed cycles of the main run.
    pub cycles: usize,
    /// Nodes of the large run (0 skips it).
    pub nodes_large: usize,
    /// Timed cycles of the large run.
    pub cycles_large: usize,
    /// Untimed cycles first, so the detectors are warm.
    pub warmup_cycles: usize,
    /// Seed of the noise.
    pub seed: u64,
    /// Nodes of the simulated healing run that measures MTTD and MTTR
    /// (`weft sim --heal`; 0 skips it).
    pub sim_nodes: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            nodes: 1000,
            cycles: 300,
            nodes_large: 10_000,
            cycles_large: 60,
            warmup_cycles: 70,
            seed: 1,
            sim_nodes: 1000,
        }
    }
}

/// Median and tail of the phases of one run, in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Phases {
    /// Taking the cycle's samples in.
    pub monitor_p50_ms: f64,
    /// Detectors per cycle (MAD), correlation, resolution.
    pub analyze_p50_ms: f64,
    /// Results, verification, deadlines.
    pub execute_p50_ms: f64,
    /// Planning.
    pub plan_p50_ms: f64,
}

/// The results.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// Nodes of the main run.
    pub nodes: usize,
    /// Samples per cycle of the main run.
    pub samples_per_cycle: usize,
    /// Timed cycles of the main run.
    pub cycles: usize,
    /// One full cycle, median.
    pub cycle_p50_ms: f64,
    /// One full cycle, 99th percentile.
    pub cycle_p99_ms: f64,
    /// One full cycle, worst.
    pub cycle_max_ms: f64,
    /// The same cycle with every value sent as its own sample instead of
    /// one report per node, median.
    pub cycle_p50_ms_per_sample: f64,
    /// ... and 99th percentile.
    pub cycle_p99_ms_per_sample: f64,
    /// By phase.
    pub phases: Phases,
    /// Nodes of the large run.
    pub nodes_10k: usize,
    /// Samples per cycle of the large run.
    pub samples_per_cycle_10k: usize,
    /// One full cycle at the large size, median.
    pub cycle_p50_ms_10k: f64,
    /// One full cycle at the large size, 99th percentile.
    pub cycle_p99_ms_10k: f64,
    /// The naive detectors over the same samples, median per cycle.
    pub naive_cycle_p50_ms: f64,
    /// The naive detectors, 99th percentile.
    pub naive_cycle_p99_ms: f64,
    /// Naive median / ours (how many times faster the loop is).
    pub speedup_vs_naive: f64,
    /// A bare pass over the same samples, median per cycle.
    pub bare_pass_p50_ms: f64,
    /// Ours / bare pass (what the loop costs over touching each sample).
    pub ratio_vs_bare_pass: f64,
    /// Incidents the main run opened.
    pub incidents_opened: u64,
    /// Actions (and rollbacks) it requested.
    pub actions_requested: u64,
    /// The target for `cycle_p99_ms`.
    pub target_cycle_p99_ms: f64,
    /// Whether the target was met.
    pub meets_target: bool,
    /// Nodes of the simulated healing run (0: not run).
    pub sim_nodes: usize,
    /// Faults injected in it / healed and verified.
    pub sim_faults_injected: usize,
    /// Faults healed and verified in it.
    pub sim_faults_healed: usize,
    /// Injection to detection on the simulator's virtual clock, p99.
    pub mttd_p99_ms: f64,
    /// Injection to verified heal on the virtual clock, median.
    pub mttr_p50_ms: f64,
    /// Injection to verified heal on the virtual clock, 99th percentile.
    pub mttr_p99_ms: f64,
    /// ... worst.
    pub mttr_max_ms: f64,
    /// The target for `mttr_p99_ms`.
    pub target_mttr_p99_ms: f64,
    /// Whether every fault was healed and `mttr_p99_ms` met its target.
    pub meets_mttr_target: bool,
    /// Wall-clock seconds the simulated run took.
    pub sim_wall_seconds: f64,
    /// What this bench does not measure yet, and why.
    pub not_measured: Vec<String>,
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A setting is out of range.
    #[error("bench setting {what}: {reason}")]
    Invalid {
        /// The setting.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The engine refused its configuration.
    #[error(transparent)]
    Config(#[from] crate::engine::ConfigError),
    /// The simulated healing run failed.
    #[error("simulated healing run: {0}")]
    Sim(#[from] crate::sim::HealSimError),
}

/// A small, fast deterministic generator (xorshift64*).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// About N(0, 1) (Irwin–Hall of four uniforms).
    fn gauss(&mut self) -> f64 {
        (self.unit() + self.unit() + self.unit() + self.unit() - 2.0) * 3f64.sqrt()
    }
}

fn node_id(i: usize) -> NodeId {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    b[8..16].copy_from_slice(&(i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    NodeId(b)
}

/// The fleet that generates telemetry.
struct Fleet {
    ids: Vec<NodeId>,
    peers: Vec<[usize; 4]>,
    hot: Vec<bool>,
    lossy: Vec<[bool; 4]>,
    noise: Noise,
}

impl Fleet {
    fn new(n: usize, seed: u64) -> Self {
        let third = (n / 3).max(2);
        Self {
            ids: (0..n).map(node_id).collect(),
            peers: (0..n)
                .map(|i| {
                    [
                        (i + 1) % n,
                        (i + n - 1) % n,
                        (i + third) % n,
                        (i + n - third % n) % n,
                    ]
                })
                .collect(),
            hot: vec![false; n],
            lossy: vec![[false; 4]; n],
            noise: Noise(seed | 1),
        }
    }

    /// Overloads 1 % of the nodes and makes 0.5 % of the links lossy.
    fn inject(&mut self) {
        let n = self.ids.len();
        for i in (0..n).step_by(100) {
            self.hot[i] = true;
        }
        for i in (50..n).step_by(200) {
            self.lossy[i][0] = true;
        }
    }

    /// One report per node, as agents send them.
    fn reports(&mut self, at: Time, out: &mut Vec<Input>) {
        out.clear();
        for i in 0..self.ids.len() {
            let cpu = if self.hot[i] { 97.0 } else { 40.0 };
            let mut values = Vec::with_capacity(11);
            values.push((
                Metric::Cpu,
                (cpu + 2.0 * self.noise.gauss()).clamp(0.0, 100.0),
            ));
            values.push((
                Metric::Memory,
                (55.0 + self.noise.gauss()).clamp(0.0, 100.0),
            ));
            values.push((Metric::RouteCount, (self.ids.len() - 1) as f64));
            for (k, &p) in self.peers[i].iter().enumerate() {
                let peer = self.ids[p];
                let loss = if self.lossy[i][k] { 20.0 } else { 0.3 };
                values.push((
                    Metric::LinkLoss { peer },
                    (loss + 0.1 * self.noise.gauss()).clamp(0.0, 100.0),
                ));
                values.push((
                    Metric::LinkRtt { peer },
                    (20.0 + 2.0 * self.noise.gauss()).max(0.0),
                ));
            }
            out.push(Input::Telemetry(Telemetry {
                node: self.ids[i],
                at,
                values,
            }));
        }
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Run {
    cycle: Vec<f64>,
    monitor: Vec<f64>,
    analyze: Vec<f64>,
    execute: Vec<f64>,
    plan: Vec<f64>,
    naive: Vec<f64>,
    bare: Vec<f64>,
    samples_per_cycle: usize,
    incidents: u64,
    actions: u64,
}

fn run_size(
    nodes: usize,
    cycles: usize,
    warmup: usize,
    seed: u64,
    baselines: bool,
    per_sample: bool,
) -> Result<Run, BenchError> {
    let cfg = Config {
        monitor: crate::monitor::MonitorConfig {
            max_nodes: (nodes * 2).max(16),
            ..crate::monitor::MonitorConfig::default()
        },
        id_seed: seed,
        ..Config::default()
    };
    let mut engine = Engine::new(
        cfg,
        Policy::default_policy(),
        MemoryKnowledge::new(100_000),
        Time::ZERO,
    )?;
    let mut naive = Naive::default();
    let mut fleet = Fleet::new(nodes, seed);
    let mut inputs = Vec::with_capacity(nodes * 11);
    let mut run = Run {
        cycle: Vec::with_capacity(cycles),
        monitor: Vec::with_capacity(cycles),
        analyze: Vec::with_capacity(cycles),
        execute: Vec::with_capacity(cycles),
        plan: Vec::with_capacity(cycles),
        naive: Vec::new(),
        bare: Vec::new(),
        samples_per_cycle: 0,
        incidents: 0,
        actions: 0,
    };
    let start = Time::from_millis(1_700_000_000_000);
    for c in 0..warmup + cycles {
        if c == warmup + 10 {
            fleet.inject();
        }
        let now = start + Duration::from_secs(c as u64 + 1);
        fleet.reports(now, &mut inputs);
        if per_sample {
            inputs = split(std::mem::take(&mut inputs));
        }
        run.samples_per_cycle = inputs
            .iter()
            .map(|i| match i {
                Input::Telemetry(t) => t.values.len(),
                _ => 1,
            })
            .sum();

        let timed = c >= warmup;
        if baselines && timed {
            let t = Instant::now();
            let mut sum = 0.0;
            for i in &inputs {
                if let Input::Telemetry(t) = i {
                    for (_, v) in &t.values {
                        sum += v;
                    }
                }
            }
            black_box(sum);
            run.bare.push(ms(t.elapsed()));
            let t = Instant::now();
            black_box(naive.cycle(&inputs));
            run.naive.push(ms(t.elapsed()));
        } else if baselines {
            naive.cycle(&inputs);
        }
        let t0 = Instant::now();
        for input in inputs.drain(..) {
            // Refusals are counted by the engine; none are expected.
            let _ = engine.handle_input(now, input);
        }
        let t1 = Instant::now();
        engine.analyze(now);
        let t2 = Instant::now();
        engine.execute(now);
        let t3 = Instant::now();
        engine.plan(now);
        let t4 = Instant::now();
        engine.finish_cycle(now);
        while let Some(o) = engine.poll_output() {
            black_box(matches!(o, Output::Act(_)));
        }
        if timed {
            run.monitor.push(ms(t1 - t0));
            run.analyze.push(ms(t2 - t1));
            run.execute.push(ms(t3 - t2));
            run.plan.push(ms(t4 - t3));
            run.cycle.push(ms(t4 - t0));
        }
    }
    run.incidents = engine.stats().incidents_opened;
    run.actions = engine.stats().actions;
    for v in [
        &mut run.cycle,
        &mut run.monitor,
        &mut run.analyze,
        &mut run.execute,
        &mut run.plan,
        &mut run.naive,
        &mut run.bare,
    ] {
        v.sort_by(f64::total_cmp);
    }
    Ok(run)
}

/// The same reports as one sample per value.
fn split(reports: Vec<Input>) -> Vec<Input> {
    let mut out = Vec::with_capacity(reports.len() * 11);
    for r in reports {
        match r {
            Input::Telemetry(t) => {
                for (metric, value) in t.values {
                    out.push(Input::Sample(Sample {
                        node: t.node,
                        metric,
                        value,
                        at: t.at,
                    }));
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Runs the bench.
pub fn run(cfg: &BenchConfig) -> Result<BenchReport, BenchError> {
    if !(16..=1_000_000).contains(&cfg.nodes) {
        return Err(BenchError::Invalid {
            what: "nodes",
            reason: format!("{} is outside 16 to 1000000", cfg.nodes),
        });
    }
    if cfg.nodes_large != 0 && !(16..=1_000_000).contains(&cfg.nodes_large) {
        return Err(BenchError::Invalid {
            what: "nodes_large",
            reason: format!("{} is outside 16 to 1000000 (or 0)", cfg.nodes_large),
        });
    }
    if cfg.cycles == 0 || cfg.cycles > 100_000 {
        return Err(BenchError::Invalid {
            what: "cycles",
            reason: format!("{} is outside 1 to 100000", cfg.cycles),
        });
    }
    if cfg.warmup_cycles < 65 {
        return Err(BenchError::Invalid {
            what: "warmup_cycles",
            reason: format!(
                "{}: at least 65, so every detector (CUSUM starts after 60 samples) is live",
                cfg.warmup_cycles
            ),
        });
    }
    let main = run_size(
        cfg.nodes,
        cfg.cycles,
        cfg.warmup_cycles,
        cfg.seed,
        true,
        false,
    )?;
    let single = run_size(
        cfg.nodes,
        cfg.cycles,
        cfg.warmup_cycles,
        cfg.seed,
        false,
        true,
    )?;
    let large = if cfg.nodes_large > 0 {
        Some(run_size(
            cfg.nodes_large,
            cfg.cycles_large.max(1),
            cfg.warmup_cycles,
            cfg.seed,
            false,
            false,
        )?)
    } else {
        None
    };
    let healing = if cfg.sim_nodes > 0 {
        let sc = weft_sim::scenario::Scenario {
            nodes: cfg.sim_nodes,
            seed: cfg.seed,
            ..weft_sim::scenario::Scenario::default()
        };
        Some(crate::sim::run(
            &crate::sim::HealSimConfig {
                scenario: sc,
                ..crate::sim::HealSimConfig::default()
            },
            &mut |_| {},
        )?)
    } else {
        None
    };
    let target_mttr = 2000.0;
    let p50 = pct(&main.cycle, 0.5);
    let p99 = pct(&main.cycle, 0.99);
    let naive50 = pct(&main.naive, 0.5);
    let bare50 = pct(&main.bare, 0.5);
    let target = 5.0;
    Ok(BenchReport {
        nodes: cfg.nodes,
        samples_per_cycle: main.samples_per_cycle,
        cycles: cfg.cycles,
        cycle_p50_ms: p50,
        cycle_p99_ms: p99,
        cycle_max_ms: main.cycle.last().copied().unwrap_or(0.0),
        cycle_p50_ms_per_sample: pct(&single.cycle, 0.5),
        cycle_p99_ms_per_sample: pct(&single.cycle, 0.99),
        phases: Phases {
            monitor_p50_ms: pct(&main.monitor, 0.5),
            analyze_p50_ms: pct(&main.analyze, 0.5),
            execute_p50_ms: pct(&main.execute, 0.5),
            plan_p50_ms: pct(&main.plan, 0.5),
        },
        nodes_10k: cfg.nodes_large,
        samples_per_cycle_10k: large.as_ref().map_or(0, |r| r.samples_per_cycle),
        cycle_p50_ms_10k: large.as_ref().map_or(0.0, |r| pct(&r.cycle, 0.5)),
        cycle_p99_ms_10k: large.as_ref().map_or(0.0, |r| pct(&r.cycle, 0.99)),
        naive_cycle_p50_ms: naive50,
        naive_cycle_p99_ms: pct(&main.naive, 0.99),
        speedup_vs_naive: if p50 > 0.0 { naive50 / p50 } else { 0.0 },
        bare_pass_p50_ms: bare50,
        ratio_vs_bare_pass: if bare50 > 0.0 { p50 / bare50 } else { 0.0 },
        incidents_opened: main.incidents,
        actions_requested: main.actions,
        target_cycle_p99_ms: target,
        meets_target: p99 <= target,
        sim_nodes: healing.as_ref().map_or(0, |h| h.nodes),
        sim_faults_injected: healing.as_ref().map_or(0, |h| h.faults_injected),
        sim_faults_healed: healing.as_ref().map_or(0, |h| h.faults_healed),
        mttd_p99_ms: healing.as_ref().map_or(0.0, |h| h.mttd_ms.p99),
        mttr_p50_ms: healing.as_ref().map_or(0.0, |h| h.mttr_ms.p50),
        mttr_p99_ms: healing.as_ref().map_or(0.0, |h| h.mttr_ms.p99),
        mttr_max_ms: healing.as_ref().map_or(0.0, |h| h.mttr_ms.max),
        target_mttr_p99_ms: target_mttr,
        meets_mttr_target: healing.as_ref().is_some_and(|h| {
            h.faults_healed == h.faults_injected
                && h.faults_injected > 0
                && h.mttr_ms.p99 <= target_mttr
        }),
        sim_wall_seconds: healing.as_ref().map_or(0.0, |h| h.wall_seconds),
        not_measured: if healing.is_some() {
            Vec::new()
        } else {
            vec!["mttr_p99_ms: the simulated healing run was skipped (sim_nodes = 0)".to_owned()]
        },
    })
}

/// The naive implementation of the same detectors (the baseline).
#[derive(Default)]
struct Naive {
    series: HashMap<(NodeId, u8, Option<NodeId>), Vec<f64>>,
}

impl Naive {
    const WINDOW: usize = 60;

    /// Takes a cycle's samples and runs every detector from scratch;
    /// returns how many series fire.
    fn cycle(&mut self, inputs: &[Input]) -> usize {
        for i in inputs {
            let Input::Telemetry(t) = i else { continue };
            for (metric, value) in &t.values {
                let (kind, peer) = match metric {
                    Metric::Cpu => (0u8, None),
                    Metric::Memory => (1, None),
                    Metric::RouteCount => (2, None),
                    Metric::LinkLoss { peer } => (3, Some(*peer)),
                    Metric::LinkRtt { peer } => (4, Some(*peer)),
                    Metric::ComponentErrors { .. } => (5, None),
                };
                let w = self.series.entry((t.node, kind, peer)).or_default();
                if w.len() >= Self::WINDOW {
                    w.remove(0);
                }
                w.push(*value);
            }
        }
        let mut firing = 0;
        let mut latest: HashMap<u8, Vec<f64>> = HashMap::new();
        for ((_, kind, _), w) in &self.series {
            let Some(&x) = w.last() else { continue };
            latest.entry(*kind).or_default().push(x);
            let limit = match kind {
                0 => Some(90.0),
                1 => Some(85.0),
                3 => Some(5.0),
                _ => None,
            };
            let mut fire = false;
            if let Some(t) = limit {
                fire |= w.len() >= 2 && w[w.len() - 2..].iter().all(|v| *v > t);
            }
            if w.len() > 30 {
                let base = &w[..w.len() - 1];
                let mean = base.iter().sum::<f64>() / base.len() as f64;
                let var =
                    base.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (base.len() - 1) as f64;
                let sigma = var.sqrt().max(1.0);
                fire |= (x - mean) / sigma > 4.0;
                let mut s: f64 = 0.0;
                for v in base {
                    s = (s + (v - mean) / sigma - 0.5).max(0.0);
                }
                fire |= s > 12.0;
            }
            if fire {
                firing += 1;
            }
        }
        for values in latest.values_mut() {
            values.sort_by(f64::total_cmp);
            let median = values[values.len() / 2];
            let mut dev: Vec<f64> = values.iter().map(|v| (v - median).abs()).collect();
            dev.sort_by(f64::total_cmp);
            let mad = dev[dev.len() / 2].max(1e-9);
            firing += values
                .iter()
                .filter(|v| 0.6745 * (*v - median) / mad > 6.0)
                .count();
        }
        firing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_reports_sane_numbers() {
        let r = run(&BenchConfig {
            nodes: 100,
            cycles: 20,
            nodes_large: 0,
            cycles_large: 0,
            warmup_cycles: 65,
            seed: 3,
            // tests/sim.rs runs the simulated healing at a small size.
            sim_nodes: 0,
        })
        .unwrap();
        assert_eq!(r.mttr_p99_ms, 0.0);
        assert!(!r.meets_mttr_target && r.not_measured.len() == 1);
        assert_eq!(r.samples_per_cycle, 1100);
        assert!(r.cycle_p50_ms > 0.0 && r.cycle_p99_ms >= r.cycle_p50_ms);
        assert!(r.naive_cycle_p50_ms > 0.0 && r.bare_pass_p50_ms > 0.0);
        // The injected faults opened incidents and the loop planned.
        assert!(r.incidents_opened >= 1, "{r:?}");
        assert!(r.actions_requested >= 1, "{r:?}");
        assert!(
            run(&BenchConfig {
                nodes: 3,
                ..BenchConfig::default()
            })
            .is_err()
        );
    }
}
