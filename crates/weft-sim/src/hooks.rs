//! Hooks for a healing loop driven by the simulator (`weft sim --heal`):
//! what a node reports (synthesised CPU and memory, its links' loss, RTT
//! and cost as its liveness detector measured them, its route count), and
//! the actuators a loop uses on simulated nodes (drain a link at both
//! ends, crash and restart a node, distribute a revocation list, change a
//! link's loss, send bytes on a link as its end would, shed load).
//!
//! The loop itself lives above this crate (weft-heal); this file only
//! exposes the simulated world to it.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use weft_crypto::NodeId;
use weft_proto::node::{Input, LinkId, Node, NodeConfig};

use crate::{LinkSpec, NO_ROUTE, Sim, SimError, SimNode};

/// One link as one of its ends reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkReport {
    /// The simulator's link index.
    pub link: usize,
    /// The node at the other end.
    pub peer: usize,
    /// Hello loss rate the liveness detector measured, 0 to 1.
    pub loss: f64,
    /// Smoothed round-trip time in milliseconds, once measured.
    pub rtt_ms: Option<f64>,
    /// Cost the link gives to routing (`u16::MAX`: unusable or drained).
    pub cost: u16,
}

/// What a live node reports at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReport {
    /// The node's index.
    pub node: usize,
    /// CPU use in percent (synthesised by [`Load`]).
    pub cpu: f64,
    /// Memory use in percent (synthesised by [`Load`]).
    pub memory: f64,
    /// Destinations the node has a selected route to.
    pub routes: usize,
    /// Its live links.
    pub links: Vec<LinkReport>,
}

/// Synthesised CPU and memory use per node: a steady level of its own,
/// seeded noise, and extra load that a fault adds and shedding removes.
#[derive(Debug, Clone)]
pub struct Load {
    base_cpu: Vec<f64>,
    base_memory: Vec<f64>,
    extra_cpu: Vec<f64>,
    extra_memory: Vec<f64>,
    rng: ChaCha8Rng,
}

impl Load {
    /// Levels for `n` nodes drawn from `rng` (CPU 20–60 %, memory 30–60 %).
    pub fn new(n: usize, mut rng: ChaCha8Rng) -> Self {
        let base_cpu = (0..n).map(|_| rng.random_range(20.0..60.0)).collect();
        let base_memory = (0..n).map(|_| rng.random_range(30.0..60.0)).collect();
        Self {
            base_cpu,
            base_memory,
            extra_cpu: vec![0.0; n],
            extra_memory: vec![0.0; n],
            rng,
        }
    }

    /// Adds a workload to node `i` (percentage points of CPU and memory).
    pub fn overload(&mut self, i: usize, cpu: f64, memory: f64) {
        if let (Some(c), Some(m)) = (self.extra_cpu.get_mut(i), self.extra_memory.get_mut(i)) {
            *c += cpu;
            *m += memory;
        }
    }

    /// Sheds node `i`'s extra load (rate-limits it away). Returns the CPU
    /// points removed; 0 means there was nothing to shed.
    pub fn shed(&mut self, i: usize) -> f64 {
        let (Some(c), Some(m)) = (self.extra_cpu.get_mut(i), self.extra_memory.get_mut(i)) else {
            return 0.0;
        };
        let was = *c + *m;
        *c = 0.0;
        *m = 0.0;
        was
    }

    /// Node `i`'s steady CPU and memory levels (without noise or extra load).
    pub fn base(&self, i: usize) -> (f64, f64) {
        (
            self.base_cpu.get(i).copied().unwrap_or(0.0),
            self.base_memory.get(i).copied().unwrap_or(0.0),
        )
    }

    /// Extra CPU points node `i` carries now.
    pub fn extra(&self, i: usize) -> f64 {
        self.extra_cpu.get(i).copied().unwrap_or(0.0)
    }

    /// Draws node `i`'s CPU and memory now: its level, its extra load and
    /// noise (±3 points, the sum of three uniforms), clamped to 0–100.
    pub fn sample(&mut self, i: usize) -> (f64, f64) {
        let noise = |rng: &mut ChaCha8Rng| (0..3).map(|_| rng.random_range(-1.0..1.0)).sum::<f64>();
        let cpu =
            self.base_cpu.get(i).copied().unwrap_or(0.0) + self.extra(i) + noise(&mut self.rng);
        let memory = self.base_memory.get(i).copied().unwrap_or(0.0)
            + self.extra_memory.get(i).copied().unwrap_or(0.0)
            + noise(&mut self.rng) / 3.0;
        (cpu.clamp(0.0, 100.0), memory.clamp(0.0, 100.0))
    }
}

impl Sim {
    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the simulation has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Index of the node with id `id`.
    pub fn index_of(&self, id: &NodeId) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Links as (link index, one end, other end).
    pub fn links(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        self.links
            .iter()
            .enumerate()
            .map(|(i, l)| (i, l.ends[0], l.ends[1]))
    }

    /// The link index between `a` and `b`, if they were connected.
    pub fn link_between(&self, a: usize, b: usize) -> Option<usize> {
        self.links
            .iter()
            .position(|l| l.ends == [a, b] || l.ends == [b, a])
    }

    /// A link's properties.
    pub fn link_spec(&self, link: usize) -> Option<LinkSpec> {
        self.links.get(link).map(|l| l.spec)
    }

    /// Whether a link is up in the transport (neither end closed it).
    pub fn link_up(&self, link: usize) -> bool {
        self.links.get(link).is_some_and(|l| l.up)
    }

    /// Sets a link's loss probability from now on (0 to 1).
    pub fn set_link_loss(&mut self, link: usize, loss: f64) {
        if let Some(l) = self.links.get_mut(link) {
            l.spec.loss = loss.clamp(0.0, 1.0);
        }
    }

    /// Each node's links as (link index, peer), in link order: what
    /// [`Sim::report`] takes, computed once by the caller.
    pub fn adjacency(&self) -> Vec<Vec<(usize, usize)>> {
        let mut adj = vec![Vec::new(); self.nodes.len()];
        for (li, l) in self.links.iter().enumerate() {
            adj[l.ends[0]].push((li, l.ends[1]));
            adj[l.ends[1]].push((li, l.ends[0]));
        }
        adj
    }

    /// What live node `i` reports now; `None` for a dead node (it reports
    /// nothing). `links` are its links as [`Sim::adjacency`] gives them.
    /// CPU and memory come from `load`; the rest is read from the node's
    /// own state (a link it has closed is not reported).
    pub fn report(
        &self,
        i: usize,
        links: &[(usize, usize)],
        load: &mut Load,
    ) -> Option<NodeReport> {
        let sn = self.nodes.get(i)?;
        if !self.alive[i] {
            return None;
        }
        let (cpu, memory) = load.sample(i);
        let links = links
            .iter()
            .filter_map(|&(li, peer)| {
                let m = sn.node.link_metrics(LinkId(li as u64))?;
                Some(LinkReport {
                    link: li,
                    peer,
                    loss: m.loss,
                    rtt_ms: m.srtt.map(|d| d.as_secs_f64() * 1000.0),
                    cost: m.cost,
                })
            })
            .collect();
        Some(NodeReport {
            node: i,
            cpu,
            memory,
            routes: sn.node.table().selected_count(),
            links,
        })
    }

    /// Drains (or undrains) a link: no route uses it, liveness is still
    /// measured. The setting belongs to the link, as an operator's would:
    /// it is applied at each live end that holds the link now and again
    /// whenever the link comes up (after a restart redials it), so a link
    /// drained while down stays drained when it returns. Returns the
    /// number of ends that hold the link now (0 to 2), `None` for an
    /// unknown link.
    pub fn set_drained(&mut self, link: usize, drained: bool) -> Option<usize> {
        let l = self.links.get_mut(link)?;
        l.drained = drained;
        let ends = l.ends;
        let now = self.now;
        let mut held = 0;
        for e in ends {
            let mut ok = false;
            self.input(e, |node| {
                ok = node.set_drained(now, LinkId(link as u64), drained);
            });
            held += usize::from(ok);
        }
        Some(held)
    }

    /// Whether a link is drained (see [`Sim::set_drained`]).
    pub fn is_drained(&self, link: usize) -> bool {
        self.links.get(link).is_some_and(|l| l.drained)
    }

    /// Restarts node `i` with fresh state (its identity kept), as its
    /// supervisor would after a crash: it comes back with no routes and
    /// redials every neighbour over its links. `cfg` is the configuration
    /// it was started with.
    pub fn restart(&mut self, i: usize, cfg: NodeConfig) -> Result<(), SimError> {
        let n = self.nodes.len();
        if i >= n {
            return Err(SimError::BadLink { a: i, b: i, n });
        }
        let roster = self.nodes[i].node.roster().clone();
        let node = Node::new(
            self.keys[i].clone(),
            cfg,
            roster,
            self.authority.public_key().clone(),
            self.memo.clone(),
        )?;
        let control_bytes = self.nodes[i].control_bytes;
        self.nodes[i] = SimNode {
            node,
            timer_at: None,
            control_bytes,
        };
        self.alive[i] = true;
        for d in 0..n {
            self.next[d * n + i] = NO_ROUTE;
        }
        let now = self.now;
        // A fresh node's timers start at time zero; one timeout now, before
        // it has links, moves them to the present (a deadline in the past
        // would be run at that past time).
        self.input(i, |node| node.handle_timeout(now));
        let mine: Vec<usize> = self
            .links
            .iter()
            .enumerate()
            .filter(|(_, l)| l.ends.contains(&i))
            .map(|(li, _)| li)
            .collect();
        for li in mine {
            let ends = {
                let l = &mut self.links[li];
                l.up = true;
                l.busy_until = [now; 2];
                l.stream_tail = [now; 2];
                l.ends
            };
            let drained = self.links[li].drained;
            let (a, b) = (ends[0], ends[1]);
            let (ia, ib) = (self.ids[a], self.ids[b]);
            self.input(a, |node| {
                node.handle(
                    now,
                    Input::LinkUp {
                        link: LinkId(li as u64),
                        peer: ib,
                    },
                )
            });
            self.input(b, |node| {
                node.handle(
                    now,
                    Input::LinkUp {
                        link: LinkId(li as u64),
                        peer: ia,
                    },
                )
            });
            if drained {
                for e in [a, b] {
                    self.input(e, |node| {
                        node.set_drained(now, LinkId(li as u64), true);
                    });
                }
            }
        }
        Ok(())
    }

    /// Signs one revocation list of `revoked` at `epoch` and hands it to
    /// every live node, as their control-plane clients would. Returns how
    /// many applied it (a node that already had it by gossip does not).
    pub fn revoke_everywhere(&mut self, revoked: &[usize], epoch: u64) -> Result<usize, SimError> {
        let list = self.signed_revocation(revoked, epoch)?;
        let now = self.now;
        for i in 0..self.nodes.len() {
            // A neighbour may have gossiped it meanwhile: then it is held.
            if self.nodes[i].node.revocation().map_or(0, |r| r.epoch) < epoch {
                let list = list.clone();
                self.input(i, |node| {
                    node.revoke(now, list);
                });
            }
        }
        Ok((0..self.nodes.len())
            .filter(|&i| {
                self.alive[i] && self.nodes[i].node.revocation().map_or(0, |r| r.epoch) >= epoch
            })
            .count())
    }

    /// Sends `bytes` on link `link` from its end `from` over the link's
    /// reliable stream, as that node's transport would: nothing happens if
    /// the link is down or `from` is dead or not an end. Returns whether
    /// the bytes went out.
    pub fn send_on_link(&mut self, from: usize, link: usize, bytes: Vec<u8>) -> bool {
        let Some(l) = self.links.get(link) else {
            return false;
        };
        if !l.up || !l.ends.contains(&from) || !self.alive[from] {
            return false;
        }
        self.transmit(from, link, bytes, true);
        true
    }
}
