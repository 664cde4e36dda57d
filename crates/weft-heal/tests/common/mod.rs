//! A small deterministic fleet that feeds telemetry to an engine, with a
//! scriptable actuator: the test double the loop tests drive.
#![allow(dead_code, clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weft_crypto::NodeId;
use weft_heal::{
    ActRequest, ActionResult, AuditEvent, Config, Engine, Event, Input, Knowledge, MemoryKnowledge,
    Metric, Output, Policy, Sample, Step, Time,
};

pub fn id(i: usize) -> NodeId {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    NodeId(b)
}

/// A standard normal sample (Box-Muller).
pub fn gauss(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// What the test actuator does with a request: answer, and change the
/// fleet (or not).
pub type ActFn<K> = dyn FnMut(&mut Fleet<K>, &ActRequest) -> Result<(), String>;

pub struct Fleet<K: Knowledge = MemoryKnowledge> {
    pub engine: Engine<K>,
    pub n: usize,
    pub adj: Vec<BTreeSet<usize>>,
    pub now: Time,
    rng: ChaCha8Rng,
    /// Mean CPU per node.
    pub cpu: Vec<f64>,
    /// Mean loss per undirected link (a < b); default 0.3 %.
    pub loss: BTreeMap<(usize, usize), f64>,
    /// Nodes that send nothing.
    pub silent: BTreeSet<usize>,
    /// Route count per node.
    pub routes: Vec<f64>,
    /// Every audit event so far.
    pub audits: Vec<AuditEvent>,
    /// Every action request so far.
    pub acts: Vec<ActRequest>,
    /// Requests not answered yet.
    pub pending: Vec<ActRequest>,
}

impl Fleet<MemoryKnowledge> {
    pub fn new(adj: Vec<BTreeSet<usize>>, policy: Policy) -> Self {
        Self::with_knowledge(
            adj,
            policy,
            MemoryKnowledge::default(),
            Time::from_millis(1_000_000),
        )
    }
}

impl<K: Knowledge> Fleet<K> {
    pub fn with_knowledge(
        adj: Vec<BTreeSet<usize>>,
        policy: Policy,
        knowledge: K,
        now: Time,
    ) -> Self {
        let engine = Engine::new(Config::default(), policy, knowledge, now).unwrap();
        Self::around(engine, adj, now)
    }

    pub fn around(engine: Engine<K>, adj: Vec<BTreeSet<usize>>, now: Time) -> Self {
        let n = adj.len();
        Self {
            engine,
            n,
            adj,
            now,
            rng: ChaCha8Rng::seed_from_u64(7),
            cpu: vec![40.0; n],
            loss: BTreeMap::new(),
            silent: BTreeSet::new(),
            routes: vec![(n - 1) as f64; n],
            audits: Vec::new(),
            acts: Vec::new(),
            pending: Vec::new(),
        }
    }

    pub fn link_loss(&self, a: usize, b: usize) -> f64 {
        let key = (a.min(b), a.max(b));
        self.loss.get(&key).copied().unwrap_or(0.3)
    }

    /// One second: every reporting node sends its samples, then the
    /// engine runs what is due.
    pub fn tick(&mut self) {
        self.now = self.now + std::time::Duration::from_secs(1);
        let now = self.now;
        let mut inputs = Vec::new();
        for i in 0..self.n {
            if self.silent.contains(&i) {
                continue;
            }
            let cpu = (self.cpu[i] + 2.0 * gauss(&mut self.rng)).clamp(0.0, 100.0);
            let mem = (50.0 + 1.0 * gauss(&mut self.rng)).clamp(0.0, 100.0);
            let push = |inputs: &mut Vec<Input>, metric, value| {
                inputs.push(Input::Sample(Sample {
                    node: id(i),
                    metric,
                    value,
                    at: now,
                }));
            };
            push(&mut inputs, Metric::Cpu, cpu);
            push(&mut inputs, Metric::Memory, mem);
            push(&mut inputs, Metric::RouteCount, self.routes[i]);
            for &p in &self.adj[i].clone() {
                if self.silent.contains(&p) {
                    // A dead neighbour: reported by event, not by samples.
                    continue;
                }
                let loss = (self.link_loss(i, p) + 0.1 * gauss(&mut self.rng)).clamp(0.0, 100.0);
                let rtt = (20.0 + gauss(&mut self.rng)).max(0.0);
                push(&mut inputs, Metric::LinkLoss { peer: id(p) }, loss);
                push(&mut inputs, Metric::LinkRtt { peer: id(p) }, rtt);
            }
        }
        self.feed(inputs);
    }

    /// Node `i` crashes: it goes silent and its neighbours report it dead.
    pub fn kill(&mut self, i: usize) {
        self.silent.insert(i);
        let at = self.now;
        let events = self.adj[i]
            .iter()
            .filter(|p| !self.silent.contains(p))
            .map(|&p| Input::Event {
                at,
                event: Event::NeighbourDead {
                    node: id(p),
                    peer: id(i),
                },
            })
            .collect();
        self.feed(events);
    }

    /// Node `i` comes back.
    pub fn revive(&mut self, i: usize) {
        self.silent.remove(&i);
        let at = self.now;
        let events = self.adj[i]
            .iter()
            .map(|&p| Input::Event {
                at,
                event: Event::NeighbourUp {
                    node: id(p),
                    peer: id(i),
                },
            })
            .collect();
        self.feed(events);
    }

    pub fn event(&mut self, event: Event) {
        let at = self.now;
        self.feed(vec![Input::Event { at, event }]);
    }

    pub fn feed(&mut self, inputs: Vec<Input>) {
        let step = self.engine.step(self.now, inputs);
        assert!(step.refused.is_empty(), "refused: {:?}", step.refused);
        self.absorb(step.outputs);
    }

    fn absorb(&mut self, outputs: Vec<Output>) {
        for o in outputs {
            match o {
                Output::Act(a) => {
                    self.acts.push(a.clone());
                    self.pending.push(a);
                }
                Output::Audit(a) => self.audits.push(a),
            }
        }
    }

    /// Answers every pending request with `act`.
    pub fn answer(&mut self, act: &mut ActFn<K>) {
        let pending = std::mem::take(&mut self.pending);
        for req in pending {
            let outcome = act(self, &req);
            let step = self.engine.step(
                self.now,
                [Input::ActionResult(ActionResult {
                    id: req.id,
                    outcome,
                })],
            );
            assert!(step.refused.is_empty(), "refused: {:?}", step.refused);
            self.absorb(step.outputs);
        }
    }

    /// `secs` ticks, answering requests each tick.
    pub fn run(&mut self, secs: u64, act: &mut ActFn<K>) {
        for _ in 0..secs {
            self.tick();
            self.answer(act);
        }
    }

    /// `secs` ticks without answering.
    pub fn idle(&mut self, secs: u64) {
        for _ in 0..secs {
            self.tick();
        }
    }

    pub fn steps(&self, step: Step) -> Vec<&AuditEvent> {
        self.audits.iter().filter(|a| a.step == step).collect()
    }

    pub fn detected(&self) -> Vec<&AuditEvent> {
        self.steps(Step::Detected)
    }
}

/// An undirected ring of `n` with chords `i -> i + n/2`.
pub fn ring(n: usize) -> Vec<BTreeSet<usize>> {
    let mut adj = vec![BTreeSet::new(); n];
    for i in 0..n {
        for j in [(i + 1) % n, (i + n / 2) % n] {
            if j != i {
                adj[i].insert(j);
                adj[j].insert(i);
            }
        }
    }
    adj
}

/// The actuator that changes nothing and says it did (to test that a
/// useless action is caught) — test double only.
pub fn no_effect<K: Knowledge>(_: &mut Fleet<K>, _: &ActRequest) -> Result<(), String> {
    Ok(())
}
