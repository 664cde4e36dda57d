//! Monitor: bounded sliding windows of telemetry per node, per link and
//! per component, the detector state of each series, and the events nodes
//! reported (dead neighbours, lost routes, refused announcements,
//! revocations, component stops).
//!
//! Everything is bounded: at most `max_nodes` nodes (the least recently
//! heard are evicted first, in batches), `max_links_per_node` links and
//! `max_components_per_node` components per node (the least recently
//! updated evicted), `window_samples` samples per series (the oldest
//! evicted), `max_reports` reports of each kind per node.

use std::collections::VecDeque;
use std::time::Duration;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use weft_crypto::NodeId;

use crate::detect::{Alarms, DetectorConfig, SeriesDetector};
use crate::model::{
    Component, Event, InputError, MAX_TELEMETRY_VALUES, Metric, MetricKind, Sample, Telemetry,
};
use crate::time::{Time, serde_duration};

/// Monitor settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Most nodes tracked (16 to 1 000 000).
    pub max_nodes: usize,
    /// Most links tracked per reporting node (1 to 1024).
    pub max_links_per_node: usize,
    /// Most components tracked per node (1 to 256).
    pub max_components_per_node: usize,
    /// Samples kept per series (2 to 4096).
    pub window_samples: usize,
    /// A node that reported before and sent nothing for this long is
    /// silent (down unless it comes back).
    #[serde(with = "serde_duration")]
    pub stale_after: Duration,
    /// Samples dated further than this after `now` are refused.
    #[serde(with = "serde_duration")]
    pub max_future_skew: Duration,
    /// Reports (dead neighbour, lost route, refusal) kept per node and
    /// kind (1 to 4096).
    pub max_reports: usize,
    /// Reports older than this are forgotten.
    #[serde(with = "serde_duration")]
    pub report_window: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            max_nodes: 20_000,
            max_links_per_node: 64,
            max_components_per_node: 16,
            window_samples: 24,
            stale_after: Duration::from_secs(5),
            max_future_skew: Duration::from_secs(60),
            max_reports: 64,
            report_window: Duration::from_secs(60),
        }
    }
}

impl MonitorConfig {
    /// Refuses settings out of range, naming the key.
    pub fn check(&self) -> Result<(), (String, String)> {
        let range = |key: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err((
                    format!("monitor.{key}"),
                    format!("{v} is outside {lo} to {hi}"),
                ))
            }
        };
        range("max_nodes", self.max_nodes, 16, 1_000_000)?;
        range("max_links_per_node", self.max_links_per_node, 1, 1024)?;
        range(
            "max_components_per_node",
            self.max_components_per_node,
            1,
            256,
        )?;
        range("window_samples", self.window_samples, 2, 4096)?;
        range("max_reports", self.max_reports, 1, 4096)?;
        for (key, d) in [
            ("stale_after", self.stale_after),
            ("max_future_skew", self.max_future_skew),
            ("report_window", self.report_window),
        ] {
            if d.is_zero() || d > Duration::from_secs(86_400) {
                return Err((
                    format!("monitor.{key}"),
                    format!("{d:?} is outside 1ms to 24h"),
                ));
            }
        }
        Ok(())
    }
}

/// A bounded window of (time, value) samples: a ring of `cap` slots
/// allocated at the first push, the newest sample also kept inline so
/// the hot path (order check, latest value) never reads the ring.
#[derive(Clone, Debug, Default)]
pub struct Window {
    buf: Box<[(Time, f32)]>,
    /// Slot of the oldest sample.
    head: u32,
    len: u32,
    last: Option<(Time, f32)>,
}

impl Window {
    /// Appends a sample, overwriting the oldest once `cap` are held.
    pub fn push(&mut self, at: Time, value: f32, cap: usize) {
        if self.buf.is_empty() {
            self.buf = vec![(Time::ZERO, 0.0); cap.max(1)].into_boxed_slice();
        }
        let cap = self.buf.len() as u32;
        let slot = if self.len < cap {
            self.len += 1;
            (self.head + self.len - 1) % cap
        } else {
            let s = self.head;
            self.head = (self.head + 1) % cap;
            s
        };
        self.buf[slot as usize] = (at, value);
        self.last = Some((at, value));
    }

    /// The mean of the samples at or after `since`, and how many there
    /// were.
    pub fn mean_since(&self, since: Time) -> Option<(f64, usize)> {
        let mut sum = 0.0;
        let mut n = 0usize;
        for (t, v) in self.iter_newest_first() {
            if t < since {
                break;
            }
            sum += f64::from(v);
            n += 1;
        }
        (n > 0).then(|| (sum / n as f64, n))
    }

    /// The newest sample.
    pub fn last(&self) -> Option<(Time, f32)> {
        self.last
    }

    fn iter_newest_first(&self) -> impl Iterator<Item = (Time, f32)> + '_ {
        let cap = self.buf.len() as u32;
        (0..self.len).map(move |k| self.buf[((self.head + self.len - 1 - k) % cap) as usize])
    }

    /// The samples, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (Time, f32)> + '_ {
        let cap = self.buf.len() as u32;
        (0..self.len).map(move |k| self.buf[((self.head + k) % cap) as usize])
    }

    /// How many samples.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One metric series: its window and detector state.
#[derive(Clone, Debug, Default)]
pub struct Series {
    /// The recent samples.
    pub window: Window,
    /// The detectors.
    pub det: SeriesDetector,
}

impl Series {
    /// When the newest sample was taken.
    pub fn last_at(&self) -> Option<Time> {
        self.window.last().map(|(t, _)| t)
    }

    /// The newest value.
    pub fn last_value(&self) -> Option<f64> {
        self.window.last().map(|(_, v)| f64::from(v))
    }
}

/// Which series of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeMetric {
    /// CPU.
    Cpu,
    /// Memory.
    Memory,
    /// Route count.
    Routes,
}

/// Which series of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinkMetric {
    /// Loss.
    Loss,
    /// RTT.
    Rtt,
}

/// A series, by slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SeriesRef {
    /// A node's series.
    Node(u32, NodeMetric),
    /// A link's series.
    Link(u32, LinkMetric),
    /// A component's error series.
    Component(u32),
}

/// A report by another node, with when it was made.
#[derive(Clone, Copy, Debug)]
pub struct Report {
    /// When.
    pub at: Time,
    /// Who reported.
    pub by: NodeId,
}

/// What the monitor knows about one node.
#[derive(Clone, Debug)]
pub struct NodeState {
    /// Its id.
    pub id: NodeId,
    /// The newest sample it sent, if it ever sent one.
    pub last_seen: Option<Time>,
    /// Last time anything about it arrived (for eviction).
    pub touched: Time,
    /// CPU.
    pub cpu: Series,
    /// Memory.
    pub memory: Series,
    /// Route count.
    pub routes: Series,
    /// Links it reports on (slots).
    pub links_out: Vec<u32>,
    /// Links other nodes report on with it as the peer (slots).
    pub links_in: Vec<u32>,
    /// Its components (slots).
    pub components: Vec<u32>,
    /// Neighbours reporting it dead (one entry per reporter).
    pub dead_reports: VecDeque<Report>,
    /// Nodes reporting their route to it lost.
    pub unreachable_reports: VecDeque<Report>,
    /// Nodes that refused forged announcements it sent.
    pub forged_reports: VecDeque<Report>,
    /// Revoked by the control plane.
    pub quarantined: bool,
}

impl NodeState {
    fn new(id: NodeId, now: Time) -> Self {
        Self {
            id,
            last_seen: None,
            touched: now,
            cpu: Series::default(),
            memory: Series::default(),
            routes: Series::default(),
            links_out: Vec::new(),
            links_in: Vec::new(),
            components: Vec::new(),
            dead_reports: VecDeque::new(),
            unreachable_reports: VecDeque::new(),
            forged_reports: VecDeque::new(),
            quarantined: false,
        }
    }

    /// Whether it sent a sample at or after `since`.
    pub fn fresh(&self, since: Time) -> bool {
        self.last_seen.is_some_and(|t| t >= since)
    }

    /// A series of the node.
    pub fn series(&self, m: NodeMetric) -> &Series {
        match m {
            NodeMetric::Cpu => &self.cpu,
            NodeMetric::Memory => &self.memory,
            NodeMetric::Routes => &self.routes,
        }
    }
}

/// What the monitor knows about one directed link (as its `from` end
/// reports it).
#[derive(Clone, Debug)]
pub struct LinkState {
    /// The reporting node (slot).
    pub from: u32,
    /// The peer (slot).
    pub to: u32,
    /// The peer's id (to find a node's link by peer without hashing).
    pub peer: NodeId,
    /// Loss.
    pub loss: Series,
    /// RTT.
    pub rtt: Series,
    /// Since when `from` reports `to` dead, if it does.
    pub dead_since: Option<Time>,
    /// Drained by the loop (routes avoid it; its symptoms are handled).
    pub drained: bool,
    /// Last update (for eviction).
    pub touched: Time,
}

impl LinkState {
    /// A series of the link.
    pub fn series(&self, m: LinkMetric) -> &Series {
        match m {
            LinkMetric::Loss => &self.loss,
            LinkMetric::Rtt => &self.rtt,
        }
    }
}

/// What the monitor knows about one component.
#[derive(Clone, Debug)]
pub struct ComponentState {
    /// Its node (slot).
    pub node: u32,
    /// Its name.
    pub name: Component,
    /// Error percent.
    pub errors: Series,
    /// Since when it is reported stopped, if it is.
    pub down_since: Option<Time>,
    /// Last update (for eviction).
    pub touched: Time,
}

/// A slab of slots with a free list.
#[derive(Clone, Debug)]
pub struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, v: T) -> u32 {
        self.len += 1;
        if let Some(i) = self.free.pop() {
            self.slots[i as usize] = Some(v);
            i
        } else {
            self.slots.push(Some(v));
            (self.slots.len() - 1) as u32
        }
    }

    fn remove(&mut self, i: u32) -> Option<T> {
        let v = self.slots.get_mut(i as usize)?.take()?;
        self.free.push(i);
        self.len -= 1;
        Some(v)
    }

    /// The value in slot `i`.
    pub fn get(&self, i: u32) -> Option<&T> {
        self.slots.get(i as usize)?.as_ref()
    }

    fn get_mut(&mut self, i: u32) -> Option<&mut T> {
        self.slots.get_mut(i as usize)?.as_mut()
    }

    /// Occupied slots and their values.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|v| (i as u32, v)))
    }

    /// How many are occupied.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The monitor.
#[derive(Debug, Default)]
pub struct Monitor {
    /// Nodes.
    pub nodes: Slab<NodeState>,
    /// Node slots by id.
    pub node_index: FxHashMap<NodeId, u32>,
    /// Directed links.
    pub links: Slab<LinkState>,
    /// Link slots by (from, to) node slots.
    pub link_index: FxHashMap<(u32, u32), u32>,
    /// Components.
    pub components: Slab<ComponentState>,
    /// Series with a firing detector.
    pub active: FxHashSet<SeriesRef>,
    /// Nodes that ever sent a sample.
    pub reporting: usize,
    /// Nodes evicted to stay within `max_nodes`.
    pub evicted_nodes: u64,
}

fn push_report(q: &mut VecDeque<Report>, r: Report, max: usize, dedup: bool) {
    if dedup && let Some(old) = q.iter_mut().find(|o| o.by == r.by) {
        old.at = old.at.max(r.at);
        return;
    }
    while q.len() >= max {
        q.pop_front();
    }
    q.push_back(r);
}

fn set_active(active: &mut FxHashSet<SeriesRef>, r: SeriesRef, on: bool) {
    if on {
        active.insert(r);
    } else {
        active.remove(&r);
    }
}

impl Monitor {
    /// The slot of `id`, creating it (and evicting the least recently
    /// heard nodes when full).
    pub fn node_slot(&mut self, id: NodeId, now: Time, cfg: &MonitorConfig) -> u32 {
        if let Some(&i) = self.node_index.get(&id) {
            return i;
        }
        if self.nodes.len() >= cfg.max_nodes {
            self.evict_nodes(cfg.max_nodes / 100 + 1);
        }
        let i = self.nodes.insert(NodeState::new(id, now));
        self.node_index.insert(id, i);
        i
    }

    fn evict_nodes(&mut self, n: usize) {
        let mut by_age: Vec<(Time, u32)> = self.nodes.iter().map(|(i, s)| (s.touched, i)).collect();
        let n = n.min(by_age.len());
        if n == 0 {
            return;
        }
        by_age.select_nth_unstable(n - 1);
        for &(_, i) in &by_age[..n] {
            self.remove_node(i);
        }
        self.evicted_nodes += n as u64;
    }

    fn remove_node(&mut self, i: u32) {
        let Some(node) = self.nodes.remove(i) else {
            return;
        };
        self.node_index.remove(&node.id);
        if node.last_seen.is_some() {
            self.reporting = self.reporting.saturating_sub(1);
        }
        for m in [NodeMetric::Cpu, NodeMetric::Memory, NodeMetric::Routes] {
            self.active.remove(&SeriesRef::Node(i, m));
        }
        for l in node.links_out.iter().chain(node.links_in.iter()) {
            self.remove_link(*l);
        }
        for c in node.components {
            if self.components.remove(c).is_some() {
                self.active.remove(&SeriesRef::Component(c));
            }
        }
    }

    fn remove_link(&mut self, l: u32) {
        let Some(link) = self.links.remove(l) else {
            return;
        };
        self.link_index.remove(&(link.from, link.to));
        self.active.remove(&SeriesRef::Link(l, LinkMetric::Loss));
        self.active.remove(&SeriesRef::Link(l, LinkMetric::Rtt));
        if let Some(f) = self.nodes.get_mut(link.from) {
            f.links_out.retain(|x| *x != l);
        }
        if let Some(t) = self.nodes.get_mut(link.to) {
            t.links_in.retain(|x| *x != l);
        }
    }

    /// The slot of the link `from → to`, creating it (and evicting
    /// `from`'s least recently updated link when it has too many).
    pub fn link_slot(&mut self, from: u32, to: u32, now: Time, cfg: &MonitorConfig) -> u32 {
        if let Some(&l) = self.link_index.get(&(from, to)) {
            return l;
        }
        let full = self
            .nodes
            .get(from)
            .is_some_and(|n| n.links_out.len() >= cfg.max_links_per_node);
        if full {
            let oldest = self.nodes.get(from).and_then(|n| {
                n.links_out
                    .iter()
                    .copied()
                    .min_by_key(|l| self.links.get(*l).map(|l| l.touched))
            });
            if let Some(old) = oldest {
                self.remove_link(old);
            }
        }
        let peer = self.nodes.get(to).map_or(NodeId([0; 32]), |n| n.id);
        let l = self.links.insert(LinkState {
            from,
            to,
            peer,
            loss: Series::default(),
            rtt: Series::default(),
            dead_since: None,
            drained: false,
            touched: now,
        });
        self.link_index.insert((from, to), l);
        if let Some(f) = self.nodes.get_mut(from) {
            f.links_out.push(l);
        }
        if let Some(t) = self.nodes.get_mut(to) {
            t.links_in.push(l);
        }
        l
    }

    /// The slot of component `name` of node slot `node`, if tracked (a
    /// scan of the node's few components; no allocation).
    pub fn find_component(&self, node: u32, name: &Component) -> Option<u32> {
        self.nodes.get(node)?.components.iter().copied().find(|c| {
            self.components
                .get(*c)
                .is_some_and(|comp| comp.name == *name)
        })
    }

    fn component_slot(
        &mut self,
        node: u32,
        name: &Component,
        now: Time,
        cfg: &MonitorConfig,
    ) -> u32 {
        if let Some(c) = self.find_component(node, name) {
            return c;
        }
        let full = self
            .nodes
            .get(node)
            .is_some_and(|n| n.components.len() >= cfg.max_components_per_node);
        if full {
            let oldest = self.nodes.get(node).and_then(|n| {
                n.components
                    .iter()
                    .copied()
                    .min_by_key(|c| self.components.get(*c).map(|c| c.touched))
            });
            if let Some(old) = oldest
                && self.components.remove(old).is_some()
            {
                self.active.remove(&SeriesRef::Component(old));
                if let Some(n) = self.nodes.get_mut(node) {
                    n.components.retain(|x| *x != old);
                }
            }
        }
        let c = self.components.insert(ComponentState {
            node,
            name: name.clone(),
            errors: Series::default(),
            down_since: None,
            touched: now,
        });
        if let Some(n) = self.nodes.get_mut(node) {
            n.components.push(c);
        }
        c
    }

    /// Takes in one sample: at most three hash lookups (node, peer,
    /// link), a window push and the per-sample detectors.
    pub fn sample(
        &mut self,
        now: Time,
        s: &Sample,
        cfg: &MonitorConfig,
        det: &DetectorConfig,
    ) -> Result<(), InputError> {
        let kind = s.metric.kind();
        if !s.value.is_finite() || s.value < 0.0 || s.value > kind.max_value() {
            return Err(InputError::OutOfRange {
                metric: kind.as_str(),
                value: s.value,
                max: kind.max_value(),
            });
        }
        let limit = now.saturating_add(cfg.max_future_skew);
        if s.at > limit {
            return Err(InputError::FromTheFuture {
                ahead_ms: s.at.as_millis().saturating_sub(now.as_millis()),
                limit_ms: crate::time::millis(cfg.max_future_skew),
            });
        }
        if let Metric::LinkLoss { peer } | Metric::LinkRtt { peer } = &s.metric
            && *peer == s.node
        {
            return Err(InputError::SelfPeer);
        }
        // Find (or make) the series. A series made now is empty, so the
        // order check below never refuses a sample after creating
        // anything for it.
        let Some((n, r)) = self.resolve(now, s, cfg) else {
            return Ok(());
        };
        if self
            .series_mut(r)
            .and_then(|series| series.last_at())
            .is_some_and(|t| s.at < t)
        {
            return Err(InputError::OutOfOrder);
        }
        self.apply(r, s.at, s.value, kind, cfg, det);
        self.seen(n, s.at, now);
        Ok(())
    }

    /// Takes in a node's whole report: one node lookup, its links found
    /// by scanning its own (few) links. All or nothing: a bad value, a
    /// report older than the node's newest sample, or more than
    /// [`MAX_TELEMETRY_VALUES`] values refuse the whole report.
    pub fn telemetry(
        &mut self,
        now: Time,
        t: &Telemetry,
        cfg: &MonitorConfig,
        det: &DetectorConfig,
    ) -> Result<(), InputError> {
        if t.values.len() > MAX_TELEMETRY_VALUES {
            return Err(InputError::TooManyValues {
                count: t.values.len(),
                limit: MAX_TELEMETRY_VALUES,
            });
        }
        if t.at > now.saturating_add(cfg.max_future_skew) {
            return Err(InputError::FromTheFuture {
                ahead_ms: t.at.as_millis().saturating_sub(now.as_millis()),
                limit_ms: crate::time::millis(cfg.max_future_skew),
            });
        }
        for (metric, value) in &t.values {
            let kind = metric.kind();
            if !value.is_finite() || *value < 0.0 || *value > kind.max_value() {
                return Err(InputError::OutOfRange {
                    metric: kind.as_str(),
                    value: *value,
                    max: kind.max_value(),
                });
            }
            if let Metric::LinkLoss { peer } | Metric::LinkRtt { peer } = metric
                && *peer == t.node
            {
                return Err(InputError::SelfPeer);
            }
        }
        // No series of the node is newer than the node's newest sample,
        // so this one check keeps every series in order.
        if let Some(&n) = self.node_index.get(&t.node)
            && self
                .nodes
                .get(n)
                .and_then(|x| x.last_seen)
                .is_some_and(|last| t.at < last)
        {
            return Err(InputError::OutOfOrder);
        }
        let mut n = self.node_slot(t.node, now, cfg);
        self.touch(n, now);
        for (metric, value) in &t.values {
            let kind = metric.kind();
            let r = match metric {
                Metric::Cpu => SeriesRef::Node(n, NodeMetric::Cpu),
                Metric::Memory => SeriesRef::Node(n, NodeMetric::Memory),
                Metric::RouteCount => SeriesRef::Node(n, NodeMetric::Routes),
                Metric::LinkLoss { peer } | Metric::LinkRtt { peer } => {
                    let l = match self.own_link(n, peer) {
                        Some(l) => l,
                        None => {
                            let p = self.node_slot(*peer, now, cfg);
                            self.touch(p, now);
                            if !self.holds(n, &t.node) {
                                n = self.node_slot(t.node, now, cfg);
                                self.touch(n, now);
                                if !self.holds(p, peer) {
                                    continue;
                                }
                            }
                            self.link_slot(n, p, now, cfg)
                        }
                    };
                    if let Some(link) = self.links.get_mut(l) {
                        link.touched = link.touched.max(t.at);
                    }
                    let which = if kind == MetricKind::LinkLoss {
                        LinkMetric::Loss
                    } else {
                        LinkMetric::Rtt
                    };
                    SeriesRef::Link(l, which)
                }
                Metric::ComponentErrors { component } => {
                    let c = self.component_slot(n, component, now, cfg);
                    if let Some(comp) = self.components.get_mut(c) {
                        comp.touched = comp.touched.max(t.at);
                    }
                    SeriesRef::Component(c)
                }
            };
            self.apply(r, t.at, *value, kind, cfg, det);
        }
        self.seen(n, t.at, now);
        Ok(())
    }

    /// Node slot `n`'s link to `peer`, found by scanning its links (the
    /// hash index for nodes with many).
    fn own_link(&self, n: u32, peer: &NodeId) -> Option<u32> {
        let node = self.nodes.get(n)?;
        if node.links_out.len() <= 16 {
            node.links_out
                .iter()
                .copied()
                .find(|l| self.links.get(*l).is_some_and(|x| x.peer == *peer))
        } else {
            let p = *self.node_index.get(peer)?;
            self.link_index.get(&(n, p)).copied()
        }
    }

    /// Pushes a value into a series and runs its detectors.
    fn apply(
        &mut self,
        r: SeriesRef,
        at: Time,
        value: f64,
        kind: MetricKind,
        cfg: &MonitorConfig,
        det: &DetectorConfig,
    ) {
        let Some(series) = self.series_mut(r) else {
            return;
        };
        series.window.push(at, value as f32, cfg.window_samples);
        let was = series.det.alarms().any();
        let firing = series
            .det
            .update(at, value, kind, det, det.metric(kind))
            .any();
        if was != firing {
            set_active(&mut self.active, r, firing);
        }
    }

    /// Records that node slot `n` sent a sample taken at `at`.
    fn seen(&mut self, n: u32, at: Time, now: Time) {
        if let Some(node) = self.nodes.get_mut(n) {
            if node.last_seen.is_none() {
                self.reporting += 1;
            }
            node.last_seen = Some(node.last_seen.map_or(at, |t| t.max(at)));
            node.touched = node.touched.max(at).max(now);
        }
    }

    /// The reporting node's slot and the series a sample belongs to,
    /// creating what is missing; `None` if churn (evictions while making
    /// room) left nothing to record it in.
    fn resolve(&mut self, now: Time, s: &Sample, cfg: &MonitorConfig) -> Option<(u32, SeriesRef)> {
        let mut n = self.node_slot(s.node, now, cfg);
        self.touch(n, now);
        let r = match &s.metric {
            Metric::Cpu => SeriesRef::Node(n, NodeMetric::Cpu),
            Metric::Memory => SeriesRef::Node(n, NodeMetric::Memory),
            Metric::RouteCount => SeriesRef::Node(n, NodeMetric::Routes),
            Metric::LinkLoss { peer } | Metric::LinkRtt { peer } => {
                let p = self.node_slot(*peer, now, cfg);
                self.touch(p, now);
                if !self.holds(n, &s.node) {
                    // Making room for the peer evicted the reporter.
                    n = self.node_slot(s.node, now, cfg);
                    self.touch(n, now);
                    if !self.holds(p, peer) {
                        return None;
                    }
                }
                let l = self.link_slot(n, p, now, cfg);
                if let Some(link) = self.links.get_mut(l) {
                    link.touched = link.touched.max(s.at);
                }
                let which = if matches!(s.metric, Metric::LinkLoss { .. }) {
                    LinkMetric::Loss
                } else {
                    LinkMetric::Rtt
                };
                SeriesRef::Link(l, which)
            }
            Metric::ComponentErrors { component } => {
                let c = self.component_slot(n, component, now, cfg);
                if let Some(comp) = self.components.get_mut(c) {
                    comp.touched = comp.touched.max(s.at);
                }
                SeriesRef::Component(c)
            }
        };
        Some((n, r))
    }

    fn touch(&mut self, n: u32, now: Time) {
        if let Some(node) = self.nodes.get_mut(n) {
            node.touched = node.touched.max(now);
        }
    }

    fn holds(&self, slot: u32, id: &NodeId) -> bool {
        self.nodes.get(slot).is_some_and(|x| x.id == *id)
    }

    fn series_mut(&mut self, r: SeriesRef) -> Option<&mut Series> {
        match r {
            SeriesRef::Node(n, m) => {
                let node = self.nodes.get_mut(n)?;
                Some(match m {
                    NodeMetric::Cpu => &mut node.cpu,
                    NodeMetric::Memory => &mut node.memory,
                    NodeMetric::Routes => &mut node.routes,
                })
            }
            SeriesRef::Link(l, m) => {
                let link = self.links.get_mut(l)?;
                Some(match m {
                    LinkMetric::Loss => &mut link.loss,
                    LinkMetric::Rtt => &mut link.rtt,
                })
            }
            SeriesRef::Component(c) => Some(&mut self.components.get_mut(c)?.errors),
        }
    }

    /// Takes in one event.
    pub fn event(&mut self, now: Time, at: Time, e: &Event, cfg: &MonitorConfig) {
        let max = cfg.max_reports;
        match e {
            Event::NeighbourDead { node, peer } | Event::NeighbourUp { node, peer } => {
                if node == peer {
                    return;
                }
                let dead = matches!(e, Event::NeighbourDead { .. });
                self.node_slot(*node, now, cfg);
                self.node_slot(*peer, now, cfg);
                // Creating the second may have evicted the first.
                let (Some(&n), Some(&p)) = (self.node_index.get(node), self.node_index.get(peer))
                else {
                    return;
                };
                let l = self.link_slot(n, p, now, cfg);
                if let Some(link) = self.links.get_mut(l) {
                    link.touched = link.touched.max(at);
                    link.dead_since = if dead {
                        Some(link.dead_since.unwrap_or(at))
                    } else {
                        None
                    };
                }
                if let Some(peer_state) = self.nodes.get_mut(p) {
                    peer_state.touched = peer_state.touched.max(now);
                    if dead {
                        push_report(
                            &mut peer_state.dead_reports,
                            Report { at, by: *node },
                            max,
                            true,
                        );
                    } else {
                        peer_state.dead_reports.retain(|r| r.by != *node);
                    }
                }
            }
            Event::RouteLost { node, destination } => {
                if node == destination {
                    return;
                }
                let d = self.node_slot(*destination, now, cfg);
                if let Some(dest) = self.nodes.get_mut(d) {
                    dest.touched = dest.touched.max(now);
                    push_report(
                        &mut dest.unreachable_reports,
                        Report { at, by: *node },
                        max,
                        true,
                    );
                }
            }
            Event::ForgedAnnouncement { node, from, .. } => {
                if node == from {
                    return;
                }
                let f = self.node_slot(*from, now, cfg);
                if let Some(forger) = self.nodes.get_mut(f) {
                    forger.touched = forger.touched.max(now);
                    push_report(
                        &mut forger.forged_reports,
                        Report { at, by: *node },
                        max,
                        false,
                    );
                }
            }
            Event::Revoked { node } => {
                let n = self.node_slot(*node, now, cfg);
                if let Some(state) = self.nodes.get_mut(n) {
                    state.quarantined = true;
                    state.touched = state.touched.max(now);
                }
            }
            Event::ComponentDown { node, component } | Event::ComponentUp { node, component } => {
                let n = self.node_slot(*node, now, cfg);
                let c = self.component_slot(n, component, now, cfg);
                if let Some(comp) = self.components.get_mut(c) {
                    comp.touched = comp.touched.max(at);
                    comp.down_since = if matches!(e, Event::ComponentDown { .. }) {
                        Some(comp.down_since.unwrap_or(at))
                    } else {
                        None
                    };
                }
            }
        }
    }

    /// Forgets reports older than the report window.
    pub fn expire_reports(&mut self, now: Time, cfg: &MonitorConfig) {
        let horizon = now.saturating_sub(cfg.report_window);
        for slot in self.nodes.slots.iter_mut().flatten() {
            for q in [
                &mut slot.dead_reports,
                &mut slot.unreachable_reports,
                &mut slot.forged_reports,
            ] {
                while q.front().is_some_and(|r| r.at < horizon) {
                    q.pop_front();
                }
            }
        }
    }

    /// Runs the MAD peer comparison for every metric kind that has it:
    /// each fresh series' latest value against all fresh series of its
    /// kind. `scratch` is reused between calls.
    pub fn run_mad(
        &mut self,
        now: Time,
        cfg: &MonitorConfig,
        det: &DetectorConfig,
        scratch: &mut Vec<f32>,
    ) {
        let since = now.saturating_sub(cfg.stale_after);
        for (kind, which) in [
            (MetricKind::Cpu, NodeMetric::Cpu),
            (MetricKind::Memory, NodeMetric::Memory),
        ] {
            let m = det.metric(kind);
            if !m.mad {
                continue;
            }
            scratch.clear();
            for (_, node) in self.nodes.iter() {
                if let Some((t, v)) = node.series(which).window.last()
                    && t >= since
                {
                    scratch.push(v);
                }
            }
            let stats = if scratch.len() >= det.mad_min_peers {
                crate::detect::median_mad(scratch)
            } else {
                None
            };
            for (i, slot) in self.nodes.slots.iter_mut().enumerate() {
                let Some(node) = slot else { continue };
                let series = match which {
                    NodeMetric::Cpu => &mut node.cpu,
                    NodeMetric::Memory => &mut node.memory,
                    NodeMetric::Routes => &mut node.routes,
                };
                let (outlier, rz) = match (stats, series.window.last()) {
                    (Some((median, mad)), Some((t, v))) if t >= since => (
                        crate::detect::is_outlier(f64::from(v), median, mad, kind, det, m),
                        crate::detect::robust_z(f64::from(v), median, mad, kind, m),
                    ),
                    _ => (false, 0.0),
                };
                if !outlier && series.det.alarms().0 & Alarms::MAD == 0 {
                    continue;
                }
                let a = series.det.update_mad(now, outlier, rz, det);
                set_active(&mut self.active, SeriesRef::Node(i as u32, which), a.any());
            }
        }
        for (kind, which) in [
            (MetricKind::LinkLoss, LinkMetric::Loss),
            (MetricKind::LinkRtt, LinkMetric::Rtt),
        ] {
            let m = det.metric(kind);
            if !m.mad {
                continue;
            }
            scratch.clear();
            for (_, link) in self.links.iter() {
                if let Some((t, v)) = link.series(which).window.last()
                    && t >= since
                {
                    scratch.push(v);
                }
            }
            let stats = if scratch.len() >= det.mad_min_peers {
                crate::detect::median_mad(scratch)
            } else {
                None
            };
            for (i, slot) in self.links.slots.iter_mut().enumerate() {
                let Some(link) = slot else { continue };
                let series = match which {
                    LinkMetric::Loss => &mut link.loss,
                    LinkMetric::Rtt => &mut link.rtt,
                };
                let (outlier, rz) = match (stats, series.window.last()) {
                    (Some((median, mad)), Some((t, v))) if t >= since => (
                        crate::detect::is_outlier(f64::from(v), median, mad, kind, det, m),
                        crate::detect::robust_z(f64::from(v), median, mad, kind, m),
                    ),
                    _ => (false, 0.0),
                };
                if !outlier && series.det.alarms().0 & Alarms::MAD == 0 {
                    continue;
                }
                let a = series.det.update_mad(now, outlier, rz, det);
                set_active(&mut self.active, SeriesRef::Link(i as u32, which), a.any());
            }
        }
    }

    /// The series a reference names.
    pub fn series(&self, r: SeriesRef) -> Option<&Series> {
        match r {
            SeriesRef::Node(n, m) => Some(self.nodes.get(n)?.series(m)),
            SeriesRef::Link(l, m) => Some(self.links.get(l)?.series(m)),
            SeriesRef::Component(c) => Some(&self.components.get(c)?.errors),
        }
    }

    /// The node slots adjacent to `n` (either direction), deduplicated.
    pub fn neighbours(&self, n: u32) -> Vec<u32> {
        let Some(node) = self.nodes.get(n) else {
            return Vec::new();
        };
        let mut out: Vec<u32> = node
            .links_out
            .iter()
            .filter_map(|l| self.links.get(*l).map(|l| l.to))
            .chain(
                node.links_in
                    .iter()
                    .filter_map(|l| self.links.get(*l).map(|l| l.from)),
            )
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Marks both directions of the link between two nodes drained or not.
    pub fn set_drained(&mut self, a: NodeId, b: NodeId, drained: bool) {
        let (Some(&x), Some(&y)) = (self.node_index.get(&a), self.node_index.get(&b)) else {
            return;
        };
        for key in [(x, y), (y, x)] {
            if let Some(&l) = self.link_index.get(&key)
                && let Some(link) = self.links.get_mut(l)
            {
                link.drained = drained;
            }
        }
    }

    /// Whether the link between two nodes is drained (either direction).
    pub fn is_drained(&self, a: u32, b: u32) -> bool {
        [(a, b), (b, a)].iter().any(|key| {
            self.link_index
                .get(key)
                .and_then(|l| self.links.get(*l))
                .is_some_and(|l| l.drained)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u32) -> NodeId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_be_bytes());
        NodeId(b)
    }

    fn sample(node: u32, metric: Metric, value: f64, ms: u64) -> Sample {
        Sample {
            node: id(node),
            metric,
            value,
            at: Time::from_millis(ms),
        }
    }

    #[test]
    fn windows_evict_the_oldest() {
        let mut w = Window::default();
        assert_eq!(w.mean_since(Time::ZERO), None);
        for i in 0..10 {
            w.push(Time::from_millis(i * 10), i as f32, 4);
        }
        assert_eq!(w.len(), 4);
        let all: Vec<f32> = w.iter().map(|x| x.1).collect();
        assert_eq!(all, [6.0, 7.0, 8.0, 9.0]);
        assert_eq!(w.last(), Some((Time::from_millis(90), 9.0)));
        w.push(Time::from_millis(1000), 1.0, 4);
        assert_eq!(w.len(), 4);
        assert_eq!(w.mean_since(Time::from_millis(90)), Some((5.0, 2)));
        assert_eq!(w.mean_since(Time::from_millis(2000)), None);
        assert_eq!(w.mean_since(Time::ZERO), Some((6.25, 4)));
    }

    #[test]
    fn bad_samples_are_refused_and_change_nothing() {
        let cfg = MonitorConfig::default();
        let det = DetectorConfig::default();
        let mut m = Monitor::default();
        let now = Time::from_millis(10_000);
        for (s, what) in [
            (sample(1, Metric::Cpu, f64::NAN, 1), "NaN"),
            (sample(1, Metric::Cpu, 101.0, 1), "over 100"),
            (sample(1, Metric::Memory, -1.0, 1), "negative"),
            (
                sample(1, Metric::LinkLoss { peer: id(1) }, 1.0, 1),
                "self peer",
            ),
            (sample(1, Metric::Cpu, 1.0, 100_000), "future"),
        ] {
            assert!(m.sample(now, &s, &cfg, &det).is_err(), "{what}");
        }
        assert!(m.nodes.is_empty());
        m.sample(now, &sample(1, Metric::Cpu, 1.0, 500), &cfg, &det)
            .unwrap();
        assert_eq!(
            m.sample(now, &sample(1, Metric::Cpu, 1.0, 499), &cfg, &det),
            Err(InputError::OutOfOrder)
        );
        assert_eq!(m.reporting, 1);
    }

    #[test]
    fn reports_equal_samples_and_are_all_or_nothing() {
        let cfg = MonitorConfig::default();
        let det = DetectorConfig::default();
        let (mut a, mut b) = (Monitor::default(), Monitor::default());
        for k in 0..80u64 {
            let now = Time::from_millis(k * 1000 + 1000);
            let values = vec![
                (Metric::Cpu, 40.0 + (k % 7) as f64),
                (Metric::LinkLoss { peer: id(2) }, 0.5 + (k % 3) as f64),
                (Metric::LinkRtt { peer: id(3) }, 20.0 + (k % 5) as f64),
            ];
            for (metric, value) in &values {
                a.sample(
                    now,
                    &sample(1, metric.clone(), *value, k * 1000),
                    &cfg,
                    &det,
                )
                .unwrap();
            }
            b.telemetry(
                now,
                &Telemetry {
                    node: id(1),
                    at: Time::from_millis(k * 1000),
                    values,
                },
                &cfg,
                &det,
            )
            .unwrap();
        }
        let (na, nb) = (a.node_index[&id(1)], b.node_index[&id(1)]);
        let (x, y) = (a.nodes.get(na).unwrap(), b.nodes.get(nb).unwrap());
        assert_eq!(x.cpu.det.mean(), y.cpu.det.mean());
        assert_eq!(x.last_seen, y.last_seen);
        assert_eq!(a.links.len(), 2);
        assert_eq!(b.links.len(), 2);
        let now = Time::from_millis(100_000);
        let bad = Telemetry {
            node: id(1),
            at: Time::from_millis(90_000),
            values: vec![(Metric::Cpu, 10.0), (Metric::Memory, f64::NAN)],
        };
        assert!(b.telemetry(now, &bad, &cfg, &det).is_err());
        let late = Telemetry {
            node: id(1),
            at: Time::from_millis(1),
            values: vec![(Metric::Cpu, 10.0)],
        };
        assert_eq!(
            b.telemetry(now, &late, &cfg, &det),
            Err(InputError::OutOfOrder)
        );
        let many = Telemetry {
            node: id(1),
            at: Time::from_millis(90_000),
            values: vec![(Metric::Cpu, 1.0); MAX_TELEMETRY_VALUES + 1],
        };
        assert!(b.telemetry(now, &many, &cfg, &det).is_err());
        // Nothing of the refused reports was taken.
        assert_eq!(b.nodes.get(nb).unwrap().last_seen, x.last_seen);
    }

    #[test]
    fn sizes_are_bounded() {
        let cfg = MonitorConfig {
            max_nodes: 100,
            max_links_per_node: 3,
            ..MonitorConfig::default()
        };
        let det = DetectorConfig::default();
        let mut m = Monitor::default();
        for i in 0..1000u32 {
            let now = Time::from_millis(u64::from(i) + 1);
            m.sample(now, &sample(i, Metric::Cpu, 10.0, u64::from(i)), &cfg, &det)
                .unwrap();
            assert!(m.nodes.len() <= 100);
        }
        // The newest survive.
        assert!(m.node_index.contains_key(&id(999)));
        assert!(!m.node_index.contains_key(&id(0)));
        let now = Time::from_millis(5000);
        for p in 0..10u32 {
            m.sample(
                now,
                &sample(999, Metric::LinkLoss { peer: id(2000 + p) }, 1.0, 4000),
                &cfg,
                &det,
            )
            .unwrap();
        }
        let n = m.node_index[&id(999)];
        assert_eq!(m.nodes.get(n).unwrap().links_out.len(), 3);
        assert!(m.links.len() <= 3 * m.nodes.len());
        // Every index entry points at a live slot.
        for (&(f, t), &l) in &m.link_index {
            let link = m.links.get(l).unwrap();
            assert_eq!((link.from, link.to), (f, t));
            assert!(m.nodes.get(f).is_some() && m.nodes.get(t).is_some());
        }
    }
}
