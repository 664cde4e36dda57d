//! Prometheus metrics of the loop, in the text exposition format:
//!
//! | metric | labels |
//! |---|---|
//! | `weft_heal_cycle_duration_seconds` | `phase`: `monitor`, `analyze`, `execute`, `plan` (histogram) |
//! | `weft_heal_mttd_seconds` | histogram: first symptom to detection |
//! | `weft_heal_mttr_seconds` | histogram: first symptom to resolution |
//! | `weft_heal_actions_total` | `action`, `outcome`: `requested`, `acted`, `failed`, `verified`, `not_improved`, `rolled_back`, `rollback_failed` |
//! | `weft_heal_incidents_total` | `kind`, `event`: `detected`, `resolved`, `escalated` |
//!
//! The core has no clock, so the driver times the phases: [`HealMetrics::
//! run_cycle`] runs one cycle of an [`Engine`] with each phase timed, and
//! [`HealMetrics::time`] times anything else (the monitor phase is the
//! driver feeding inputs). [`HealMetrics::observe`] reads the engine's
//! audit events for the rest.

use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::{Engine, Output};
use crate::incident::Step;
use crate::knowledge::Knowledge;
use crate::time::Time;

type Labels = Vec<(String, String)>;

/// A phase of a cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Taking in telemetry.
    Monitor,
    /// Detectors and correlation.
    Analyze,
    /// Results, verification, rollbacks.
    Execute,
    /// Choosing actions.
    Plan,
}

impl Phase {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Monitor => "monitor",
            Phase::Analyze => "analyze",
            Phase::Execute => "execute",
            Phase::Plan => "plan",
        }
    }
}

fn cycle_histogram() -> Histogram {
    // 1 µs to about 4 s.
    Histogram::new(exponential_buckets(1e-6, 2.0, 22))
}

/// The loop's metrics. Cheap to clone (the metrics are shared).
#[derive(Clone)]
pub struct HealMetrics {
    cycle: Family<Labels, Histogram, fn() -> Histogram>,
    mttd: Histogram,
    mttr: Histogram,
    actions: Family<Labels, Counter>,
    incidents: Family<Labels, Counter>,
}

impl std::fmt::Debug for HealMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealMetrics").finish_non_exhaustive()
    }
}

impl Default for HealMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HealMetrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Self {
            cycle: Family::new_with_constructor(cycle_histogram),
            // 10 ms to about 20 minutes.
            mttd: Histogram::new(exponential_buckets(0.01, 2.0, 18)),
            mttr: Histogram::new(exponential_buckets(0.01, 2.0, 18)),
            actions: Family::default(),
            incidents: Family::default(),
        }
    }

    /// Records how long a phase took.
    pub fn observe_phase(&self, phase: Phase, seconds: f64) {
        self.cycle
            .get_or_create(&vec![("phase".to_owned(), phase.as_str().to_owned())])
            .observe(seconds);
    }

    /// Runs `f`, recording its duration as `phase`.
    pub fn time<T>(&self, phase: Phase, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.observe_phase(phase, start.elapsed().as_secs_f64());
        out
    }

    /// Runs one cycle of `engine` (analyze, execute, plan), each phase
    /// timed, and observes the outputs it queued. Returns them.
    pub fn run_cycle<K: Knowledge>(&self, engine: &mut Engine<K>, now: Time) -> Vec<Output> {
        self.time(Phase::Analyze, || engine.analyze(now));
        self.time(Phase::Execute, || engine.execute(now));
        self.time(Phase::Plan, || engine.plan(now));
        engine.finish_cycle(now);
        let mut out = Vec::new();
        while let Some(o) = engine.poll_output() {
            self.observe(&o);
            out.push(o);
        }
        out
    }

    /// Reads one output: detection and resolution times, action outcomes,
    /// incident counts.
    pub fn observe(&self, output: &Output) {
        let audit = match output {
            Output::Audit(a) => a,
            Output::Act(_) => return,
        };
        let count = |family: &Family<Labels, Counter>, labels: [(&str, &str); 2]| {
            family
                .get_or_create(
                    &labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                )
                .inc();
        };
        let kind = audit.kind.as_str();
        match audit.step {
            Step::Detected => {
                if let Some(ms) = audit.mttd_ms {
                    self.mttd.observe(ms as f64 / 1000.0);
                }
                count(&self.incidents, [("kind", kind), ("event", "detected")]);
            }
            Step::Resolved => {
                if let Some(ms) = audit.mttr_ms {
                    self.mttr.observe(ms as f64 / 1000.0);
                }
                count(&self.incidents, [("kind", kind), ("event", "resolved")]);
            }
            Step::Escalated => {
                count(&self.incidents, [("kind", kind), ("event", "escalated")]);
            }
            step => {
                let outcome = match step {
                    Step::Planned => "requested",
                    Step::Acted => "acted",
                    Step::ActionFailed => "failed",
                    Step::Verified => "verified",
                    Step::NotImproved => "not_improved",
                    Step::RolledBack => "rolled_back",
                    Step::RollbackFailed => "rollback_failed",
                    _ => return,
                };
                if let Some(action) = audit.action {
                    count(
                        &self.actions,
                        [("action", action.as_str()), ("outcome", outcome)],
                    );
                }
            }
        }
    }

    /// Every metric in the text format.
    pub fn encode_text(&self) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::with_prefix("weft_heal");
        registry.register(
            "cycle_duration_seconds",
            "Time spent in each phase of a cycle",
            self.cycle.clone(),
        );
        registry.register(
            "mttd_seconds",
            "Time from an incident's first symptom to its detection",
            self.mttd.clone(),
        );
        registry.register(
            "mttr_seconds",
            "Time from an incident's first symptom to its resolution",
            self.mttr.clone(),
        );
        registry.register(
            "actions",
            "Actions by action and outcome",
            self.actions.clone(),
        );
        registry.register(
            "incidents",
            "Incidents by kind and event",
            self.incidents.clone(),
        );
        let mut out = String::new();
        encode(&mut out, &registry)?;
        Ok(out)
    }
}
