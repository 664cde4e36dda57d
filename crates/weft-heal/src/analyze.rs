//! Analyze: from firing detectors and reports to incidents.
//!
//! Each cycle gathers the current failures ("elements": a silent node, a
//! bad link, an overloaded node, a route drop, a forger, a failing
//! component), each with its onset, severity, confidence and evidence.
//! An element already covered by an open incident refreshes it
//! (deduplication). New elements are correlated:
//!
//! - **around a common neighbour**: silent nodes and bad links touching
//!   one node (a silent node touches itself and its neighbours, a link its
//!   two ends) are grouped when at least `min_group` of them (counting
//!   those of incidents opened within `correlation_window`) touch it: one
//!   `partition` incident if two or more nodes are silent, else one
//!   `shared_cause` incident, about that node;
//! - **explained by a topology incident**: route drops while a silent-node,
//!   link or partition incident is young join it;
//! - **fleet-wide surges**: at least `surge_fraction` of the reporting
//!   nodes (and `surge_min_nodes`) overloaded, or losing routes, at once
//!   make one `shared_cause` incident about the network.
//!
//! Whatever is left opens an incident of its own. An incident none of
//! whose elements has failed for `resolve_after` resolves (unless an
//! action on it is being carried out or verified: execution decides then).

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use weft_store::{IncidentId, IncidentStatus};

use crate::detect::Alarms;
use crate::engine::Engine;
use crate::incident::{Element, Incident, MAX_ELEMENTS, Phase, Step};
use crate::knowledge::Knowledge;
use crate::model::{Detector, Evidence, IncidentKind, MetricKind, Severity, Target};
use crate::monitor::{LinkMetric, NodeMetric, Series, SeriesRef};
use crate::time::Time;

/// One current failure, as the detectors see it.
#[derive(Clone, Debug)]
pub(crate) struct Symptom {
    pub onset: Time,
    pub severity: Severity,
    pub confidence: f64,
    pub evidence: Vec<Evidence>,
}

impl Symptom {
    fn merge(&mut self, other: Symptom) {
        self.onset = self.onset.min(other.onset);
        self.severity = self.severity.max(other.severity);
        self.confidence = combine([self.confidence, other.confidence]);
        for e in other.evidence {
            if self.evidence.len() < 6 {
                self.evidence.push(e);
            }
        }
    }
}

/// `1 - Π(1 - c)`, at most 0.99.
fn combine(cs: impl IntoIterator<Item = f64>) -> f64 {
    let miss: f64 = cs.into_iter().map(|c| 1.0 - c.clamp(0.0, 1.0)).product();
    (1.0 - miss).min(0.99)
}

fn is_topology(kind: IncidentKind) -> bool {
    matches!(
        kind,
        IncidentKind::NodeDown
            | IncidentKind::LinkDegraded
            | IncidentKind::Partition
            | IncidentKind::SharedCause
    )
}

/// Most elements of an incident looked at to find what it touches.
const TOUCH_SCAN: usize = 256;

impl<K: Knowledge> Engine<K> {
    /// The analyze phase: detectors that run per cycle (MAD), then
    /// failures to incidents, then resolution of cleared incidents.
    pub fn analyze(&mut self, now: Time) {
        self.monitor.expire_reports(now, &self.cfg.monitor);
        self.monitor
            .run_mad(now, &self.cfg.monitor, &self.cfg.detect, &mut self.scratch);
        let symptoms = self.gather(now);
        let grace = self.cfg.analyze.resolve_after;
        self.recent.retain(|_, at| now.since(*at) < grace);
        let mut fresh = Vec::new();
        for (element, symptom) in &symptoms {
            let Some(id) = self.index.get(element).copied() else {
                // Just resolved: a minor (statistical) alarm still decaying
                // is not a new fault; a limit crossed again is.
                if symptom.severity == Severity::Minor && self.recent.contains_key(element) {
                    continue;
                }
                fresh.push((element.clone(), symptom.clone()));
                continue;
            };
            let Some(incident) = self.incidents.get_mut(&id) else {
                continue;
            };
            incident.last_active = now;
            // More evidence (a higher severity, or a confidence that grew,
            // e.g. more neighbours refusing a forger's announcements)
            // updates the open incident: an action that needs more
            // confidence may then run.
            let confidence = incident.confidence.max(symptom.confidence);
            if symptom.severity > incident.severity || confidence > incident.confidence + 1e-9 {
                incident.severity = incident.severity.max(symptom.severity);
                incident.confidence = confidence;
                incident.add_evidence(symptom.evidence.iter().cloned());
                incident.updated_at = now;
                let snapshot = incident.clone();
                self.knowledge.record(&snapshot);
            }
        }
        self.correlate(now, fresh);
        self.resolve_cleared(now, &symptoms);
    }

    /// The current failures, in a stable order.
    fn gather(&mut self, now: Time) -> BTreeMap<Element, Symptom> {
        let m = &self.monitor;
        let det = &self.cfg.detect;
        let since = now.saturating_sub(self.cfg.monitor.stale_after);
        let mut out: BTreeMap<Element, Symptom> = BTreeMap::new();
        let mut add = |e: Element, s: Symptom| match out.get_mut(&e) {
            Some(old) => old.merge(s),
            None => {
                out.insert(e, s);
            }
        };

        // Nodes gone from the mesh: quarantined, silent, or reported dead
        // by a neighbour and not heard from since (the mesh withdraws a
        // crashed node's routes as soon as its neighbours declare it
        // dead, before it is silent for `stale_after`). Every other node
        // loses its route to each of them, so a route count that dropped
        // by no more than this is what their absence makes it, not a
        // failure of its own (each crash or quarantine would otherwise be
        // a fleet-wide drop).
        let gone = m
            .nodes
            .iter()
            .filter(|(_, n)| {
                n.quarantined
                    || n.last_seen.is_some_and(|t| t < since)
                    || n.dead_reports
                        .iter()
                        .map(|r| r.at)
                        .max()
                        .is_some_and(|dead| n.last_seen.is_none_or(|t| t <= dead))
            })
            .count() as f64;

        // Series with a firing detector.
        let mut active: Vec<SeriesRef> = m.active.iter().copied().collect();
        active.sort_unstable();
        for r in active {
            let Some(series) = m.series(r) else { continue };
            let Some((t, _)) = series.window.last() else {
                continue;
            };
            if t < since || !series.det.alarms().any() {
                continue;
            }
            match r {
                SeriesRef::Node(n, which) => {
                    let Some(node) = m.nodes.get(n) else { continue };
                    if node.quarantined || !node.fresh(since) {
                        continue;
                    }
                    let (kind, element) = match which {
                        NodeMetric::Cpu => (MetricKind::Cpu, Element::Overload(node.id)),
                        NodeMetric::Memory => (MetricKind::Memory, Element::Overload(node.id)),
                        NodeMetric::Routes => {
                            let drop = series.det.mean()
                                - series.window.last().map_or(0.0, |(_, v)| f64::from(v));
                            if drop <= gone + 0.5 {
                                continue;
                            }
                            (MetricKind::RouteCount, Element::RouteDrop(node.id))
                        }
                    };
                    add(
                        element,
                        series_symptom(series, kind, Target::Node(node.id), det),
                    );
                }
                SeriesRef::Link(l, which) => {
                    let Some(link) = m.links.get(l) else { continue };
                    let (Some(from), Some(to)) = (m.nodes.get(link.from), m.nodes.get(link.to))
                    else {
                        continue;
                    };
                    if link.drained
                        || m.is_drained(link.from, link.to)
                        || from.quarantined
                        || to.quarantined
                        || !from.fresh(since)
                        || (to.last_seen.is_some() && !to.fresh(since))
                    {
                        continue;
                    }
                    let kind = match which {
                        LinkMetric::Loss => MetricKind::LinkLoss,
                        LinkMetric::Rtt => MetricKind::LinkRtt,
                    };
                    add(
                        Element::link(from.id, to.id),
                        series_symptom(series, kind, Target::link(from.id, to.id), det),
                    );
                }
                SeriesRef::Component(c) => {
                    let Some(comp) = m.components.get(c) else {
                        continue;
                    };
                    let Some(node) = m.nodes.get(comp.node) else {
                        continue;
                    };
                    if node.quarantined || !node.fresh(since) {
                        continue;
                    }
                    let target = Target::Component(node.id, comp.name.clone());
                    add(
                        Element::Component(node.id, comp.name.clone()),
                        series_symptom(&comp.errors, MetricKind::ComponentErrors, target, det),
                    );
                }
            }
        }

        // Silent nodes and forgers.
        let stale_secs = self.cfg.monitor.stale_after.as_secs_f64();
        for (_, node) in m.nodes.iter() {
            if node.quarantined {
                continue;
            }
            if let Some(last) = node.last_seen
                && last < since
            {
                let reports = node.dead_reports.len().min(2) as f64;
                let unreachable = node.unreachable_reports.len().min(2) as f64;
                let mut evidence = vec![Evidence {
                    at: last,
                    subject: Target::Node(node.id),
                    metric: "liveness".into(),
                    detector: Detector::Silence,
                    value: now.since(last).as_secs_f64(),
                    score: now.since(last).as_secs_f64(),
                    limit: stale_secs,
                }];
                if !node.dead_reports.is_empty() {
                    evidence.push(Evidence {
                        at: node.dead_reports.iter().map(|r| r.at).max().unwrap_or(last),
                        subject: Target::Node(node.id),
                        metric: "neighbour_dead_reports".into(),
                        detector: Detector::Reports,
                        value: node.dead_reports.len() as f64,
                        score: node.dead_reports.len() as f64,
                        limit: 1.0,
                    });
                }
                add(
                    Element::NodeDown(node.id),
                    Symptom {
                        onset: last,
                        severity: Severity::Major,
                        confidence: (0.6 + 0.15 * reports + 0.05 * unreachable).min(0.99),
                        evidence,
                    },
                );
            }
            let forged = node.forged_reports.len();
            if forged >= self.cfg.analyze.forged_min_reports {
                let mut reporters: Vec<_> = node.forged_reports.iter().map(|r| r.by).collect();
                reporters.sort_unstable();
                reporters.dedup();
                let first = node.forged_reports.front().map_or(now, |r| r.at);
                add(
                    Element::Forged(node.id),
                    Symptom {
                        onset: first,
                        severity: Severity::Critical,
                        // Tenths as integers: 0.7 + 0.2 is not 0.9 in floating point.
                        confidence: ((7 + reporters.len()) as f64 / 10.0).min(0.99),
                        evidence: vec![Evidence {
                            at: node.forged_reports.back().map_or(now, |r| r.at),
                            subject: Target::Node(node.id),
                            metric: "refused_announcements".into(),
                            detector: Detector::Reports,
                            value: forged as f64,
                            score: reporters.len() as f64,
                            limit: self.cfg.analyze.forged_min_reports as f64,
                        }],
                    },
                );
            }
        }

        // Links reported dead while both ends still report: the peer sent
        // a sample after the report (or never reports itself). A peer that
        // went quiet when it was reported dead is a silent node instead,
        // once it is stale.
        for (_, link) in m.links.iter() {
            let Some(dead_since) = link.dead_since else {
                continue;
            };
            let (Some(from), Some(to)) = (m.nodes.get(link.from), m.nodes.get(link.to)) else {
                continue;
            };
            if link.drained
                || m.is_drained(link.from, link.to)
                || from.quarantined
                || to.quarantined
                || !from.fresh(since)
                || to.last_seen.is_some_and(|t| t <= dead_since || t < since)
            {
                continue;
            }
            let both = m
                .link_index
                .get(&(link.to, link.from))
                .and_then(|l| m.links.get(*l))
                .is_some_and(|l| l.dead_since.is_some());
            add(
                Element::link(from.id, to.id),
                Symptom {
                    onset: dead_since,
                    severity: Severity::Major,
                    confidence: if both { 0.95 } else { 0.8 },
                    evidence: vec![Evidence {
                        at: dead_since,
                        subject: Target::link(from.id, to.id),
                        metric: "neighbour_dead".into(),
                        detector: Detector::Reports,
                        value: 1.0,
                        score: if both { 2.0 } else { 1.0 },
                        limit: 1.0,
                    }],
                },
            );
        }

        // Components reported stopped.
        for (_, comp) in m.components.iter() {
            let Some(down) = comp.down_since else {
                continue;
            };
            let Some(node) = m.nodes.get(comp.node) else {
                continue;
            };
            if node.quarantined || !node.fresh(since) {
                continue;
            }
            let target = Target::Component(node.id, comp.name.clone());
            add(
                Element::Component(node.id, comp.name.clone()),
                Symptom {
                    onset: down,
                    severity: Severity::Major,
                    confidence: 0.9,
                    evidence: vec![Evidence {
                        at: down,
                        subject: target,
                        metric: "component_down".into(),
                        detector: Detector::Reports,
                        value: 1.0,
                        score: 1.0,
                        limit: 1.0,
                    }],
                },
            );
        }
        out
    }

    /// The node slots an element touches.
    fn touches(&self, e: &Element) -> Vec<u32> {
        let slot = |id| self.monitor.node_index.get(id).copied();
        match e {
            Element::NodeDown(n) => match slot(n) {
                Some(s) => {
                    let mut v = self.monitor.neighbours(s);
                    v.push(s);
                    v
                }
                None => Vec::new(),
            },
            Element::Link(a, b) => [slot(a), slot(b)].into_iter().flatten().collect(),
            _ => Vec::new(),
        }
    }

    fn incident_touches(&self, incident: &Incident) -> FxHashMap<u32, usize> {
        let mut m = FxHashMap::default();
        for e in incident.elements.iter().take(TOUCH_SCAN) {
            for s in self.touches(e) {
                *m.entry(s).or_insert(0) += 1;
            }
        }
        m
    }

    /// Turns new failures into new incidents or merges them into open ones.
    fn correlate(&mut self, now: Time, fresh: Vec<(Element, Symptom)>) {
        if fresh.is_empty() {
            return;
        }
        let window_start = now.saturating_sub(self.cfg.analyze.correlation_window);
        let min_group = self.cfg.analyze.min_group;
        let (topo, other): (Vec<_>, Vec<_>) = fresh.into_iter().partition(|(e, _)| e.topological());

        // Young topology incidents and what they touch.
        let mut young: Vec<(IncidentId, FxHashMap<u32, usize>)> = self
            .incidents
            .values()
            .filter(|i| i.is_open() && is_topology(i.kind) && i.detected_at >= window_start)
            .map(|i| (i.id, self.incident_touches(i)))
            .collect();

        let touch: Vec<Vec<u32>> = topo.iter().map(|(e, _)| self.touches(e)).collect();
        let mut taken = vec![false; topo.len()];
        let mut topo: Vec<Option<(Element, Symptom)>> = topo.into_iter().map(Some).collect();
        loop {
            let mut score: FxHashMap<u32, (usize, usize)> = FxHashMap::default();
            for (i, t) in touch.iter().enumerate() {
                if taken[i] {
                    continue;
                }
                for s in t {
                    score.entry(*s).or_default().0 += 1;
                }
            }
            for (_, m) in &young {
                for (s, c) in m {
                    if let Some(e) = score.get_mut(s) {
                        e.1 += c;
                    }
                }
            }
            let best = score
                .iter()
                .filter(|(_, (f, o))| *f >= 1 && f + o >= min_group)
                .max_by(|(sa, (fa, oa)), (sb, (fb, ob))| {
                    (fa + oa)
                        .cmp(&(fb + ob))
                        .then_with(|| self.node_id_of(**sb).cmp(&self.node_id_of(**sa)))
                })
                .map(|(s, _)| *s);
            let Some(center) = best else { break };
            let mut members = Vec::new();
            for (i, t) in touch.iter().enumerate() {
                if !taken[i] && t.contains(&center) {
                    taken[i] = true;
                    if let Some(m) = topo[i].take() {
                        members.push(m);
                    }
                }
            }
            let joined: Vec<IncidentId> = young
                .iter()
                .filter(|(_, m)| m.contains_key(&center))
                .map(|(id, _)| *id)
                .collect();
            let center_id = self.node_id_of(center);
            let id = match joined.first() {
                Some(&target) => {
                    for other in joined.iter().skip(1) {
                        self.absorb(target, *other, now);
                    }
                    young.retain(|(id, _)| !joined[1..].contains(id));
                    self.merge(target, now, members, center_id);
                    Some(target)
                }
                None => self.open_group(now, members, center_id),
            };
            if let Some(id) = id
                && let Some(incident) = self.incidents.get(&id)
            {
                let m = self.incident_touches(incident);
                match young.iter_mut().find(|(y, _)| *y == id) {
                    Some(entry) => entry.1 = m,
                    None => young.push((id, m)),
                }
            }
        }
        // What is left joins a young incident it touches, or stands alone.
        for (i, item) in topo.into_iter().enumerate() {
            let Some(item) = item else { continue };
            let joined = young
                .iter()
                .find(|(_, m)| touch[i].iter().any(|s| m.contains_key(s)))
                .map(|(id, _)| *id);
            let id = match joined {
                Some(target) => {
                    self.merge(target, now, vec![item], None);
                    Some(target)
                }
                None => {
                    let (kind, target) = (item.0.kind(), item.0.target());
                    self.open(now, kind, target, vec![item])
                }
            };
            if let Some(id) = id
                && let Some(incident) = self.incidents.get(&id)
            {
                let m = self.incident_touches(incident);
                match young.iter_mut().find(|(y, _)| *y == id) {
                    Some(entry) => entry.1 = m,
                    None => young.push((id, m)),
                }
            }
        }

        // Route drops explained by a young topology incident that touches
        // the node (its own failure, a neighbour's, or one of its links):
        // only those. A drop elsewhere has another cause, and merging it
        // would make the incident's actions answer for symptoms they
        // cannot change.
        let mut rest = Vec::new();
        let mut explained: BTreeMap<IncidentId, Vec<(Element, Symptom)>> = BTreeMap::new();
        for item in other {
            let Element::RouteDrop(n) = &item.0 else {
                rest.push(item);
                continue;
            };
            let by = self.monitor.node_index.get(n).and_then(|s| {
                young
                    .iter()
                    .filter(|(_, m)| m.contains_key(s))
                    .map(|(id, _)| *id)
                    .min()
            });
            match by {
                Some(id) => explained.entry(id).or_default().push(item),
                None => rest.push(item),
            }
        }
        for (id, drops) in explained {
            self.merge(id, now, drops, None);
        }

        // Fleet-wide surges.
        let reporting = self.monitor.reporting;
        let surge_at = self
            .cfg
            .analyze
            .surge_min_nodes
            .max((self.cfg.analyze.surge_fraction * reporting as f64).ceil() as usize);
        for kind in [IncidentKind::Overload, IncidentKind::RouteLoss] {
            let count = rest.iter().filter(|(e, _)| e.kind() == kind).count();
            if count < surge_at {
                continue;
            }
            let (surge, keep): (Vec<_>, Vec<_>) =
                rest.into_iter().partition(|(e, _)| e.kind() == kind);
            rest = keep;
            let existing = self
                .incidents
                .values()
                .find(|i| {
                    i.is_open()
                        && i.kind == IncidentKind::SharedCause
                        && i.target == Target::Network
                        && i.detected_at >= window_start
                })
                .map(|i| i.id);
            match existing {
                Some(id) => self.merge(id, now, surge, None),
                None => {
                    self.open(now, IncidentKind::SharedCause, Target::Network, surge);
                }
            }
        }

        for item in rest {
            let (kind, target) = (item.0.kind(), item.0.target());
            self.open(now, kind, target, vec![item]);
        }
    }

    fn node_id_of(&self, slot: u32) -> Option<weft_crypto::NodeId> {
        self.monitor.nodes.get(slot).map(|n| n.id)
    }

    /// Opens a group incident around `center`.
    fn open_group(
        &mut self,
        now: Time,
        members: Vec<(Element, Symptom)>,
        center: Option<weft_crypto::NodeId>,
    ) -> Option<IncidentId> {
        let elements: Vec<Element> = members.iter().map(|(e, _)| e.clone()).collect();
        let (kind, target) = group_kind(&elements, center, self.cfg.analyze.min_group).unwrap_or((
            IncidentKind::SharedCause,
            center.map_or(Target::Network, Target::Node),
        ));
        self.open(now, kind, target, members)
    }

    /// Opens an incident.
    fn open(
        &mut self,
        now: Time,
        kind: IncidentKind,
        target: Target,
        members: Vec<(Element, Symptom)>,
    ) -> Option<IncidentId> {
        if self.incidents.len() >= self.cfg.analyze.max_open_incidents {
            self.stats.incidents_dropped += 1;
            return None;
        }
        let id = self.new_id(now);
        let onset = members.iter().map(|(_, s)| s.onset).min().unwrap_or(now);
        let mut severity = members
            .iter()
            .map(|(_, s)| s.severity)
            .max()
            .unwrap_or(Severity::Minor);
        match kind {
            IncidentKind::Partition => severity = Severity::Critical,
            IncidentKind::SharedCause => severity = severity.max(Severity::Major),
            _ => {}
        }
        let confidence = combine(members.iter().map(|(_, s)| s.confidence));
        let mut incident = Incident {
            id,
            kind,
            severity,
            confidence,
            target,
            status: IncidentStatus::Open,
            phase: Phase::Waiting,
            onset: onset.min(now),
            detected_at: now,
            updated_at: now,
            resolved_at: None,
            last_active: now,
            elements: Vec::new(),
            elements_dropped: 0,
            evidence: Vec::new(),
            timeline: Vec::new(),
            timeline_dropped: 0,
            actions: Vec::new(),
            resolution: None,
            last_deferral: None,
        };
        let n = members.len();
        for (e, s) in members {
            incident.add_evidence(s.evidence);
            if incident.elements.len() < MAX_ELEMENTS {
                self.index.insert(e.clone(), id);
                incident.elements.push(e);
            } else {
                incident.elements_dropped = incident.elements_dropped.saturating_add(1);
            }
        }
        let detail = format!(
            "{kind} of {} ({n} failure{}), severity {severity}, confidence {confidence:.2}",
            incident.target,
            if n == 1 { "" } else { "s" }
        );
        incident.note(now, Step::Detected, None, detail.clone());
        self.stats.incidents_opened += 1;
        self.audit(&incident, now, Step::Detected, None, detail);
        self.knowledge.record(&incident);
        self.incidents.insert(id, incident);
        Some(id)
    }

    /// Merges failures into an open incident; re-derives a topology
    /// incident's kind and target from its size.
    fn merge(
        &mut self,
        id: IncidentId,
        now: Time,
        members: Vec<(Element, Symptom)>,
        center: Option<weft_crypto::NodeId>,
    ) {
        let min_group = self.cfg.analyze.min_group;
        let Some(mut incident) = self.incidents.remove(&id) else {
            return;
        };
        let n = members.len();
        for (e, s) in members {
            incident.onset = incident.onset.min(s.onset);
            incident.severity = incident.severity.max(s.severity);
            incident.confidence = combine([incident.confidence, s.confidence]);
            incident.add_evidence(s.evidence);
            if incident.elements.contains(&e) {
                continue;
            }
            if incident.elements.len() < MAX_ELEMENTS {
                self.index.insert(e.clone(), id);
                incident.elements.push(e);
            } else {
                incident.elements_dropped = incident.elements_dropped.saturating_add(1);
            }
        }
        self.stats.merged += n as u64;
        let before = (incident.kind, incident.target.clone());
        if is_topology(incident.kind) {
            let center = center.or(match incident.target {
                Target::Node(n) => Some(n),
                _ => None,
            });
            if let Some((kind, target)) = group_kind(&incident.elements, center, min_group) {
                incident.kind = kind;
                incident.target = target;
            }
        }
        match incident.kind {
            IncidentKind::Partition => incident.severity = Severity::Critical,
            IncidentKind::SharedCause => incident.severity = incident.severity.max(Severity::Major),
            _ => {}
        }
        incident.last_active = now;
        let detail = if before != (incident.kind, incident.target.clone()) {
            format!(
                "{n} more failure{}; now {} of {} ({} failures)",
                if n == 1 { "" } else { "s" },
                incident.kind,
                incident.target,
                incident.elements.len()
            )
        } else {
            format!(
                "{n} more failure{} ({} in all)",
                if n == 1 { "" } else { "s" },
                incident.elements.len()
            )
        };
        incident.note(now, Step::Merged, None, detail.clone());
        self.audit(&incident, now, Step::Merged, None, detail);
        self.knowledge.record(&incident);
        self.incidents.insert(id, incident);
    }

    /// Moves incident `from` (which has taken no action) into `into`.
    fn absorb(&mut self, into: IncidentId, from: IncidentId, now: Time) {
        let acted = self
            .incidents
            .get(&from)
            .is_none_or(|i| !i.actions.is_empty() || !matches!(i.phase, Phase::Waiting));
        if acted || into == from {
            return;
        }
        let Some(mut old) = self.incidents.remove(&from) else {
            return;
        };
        let members: Vec<(Element, Symptom)> = old
            .elements
            .iter()
            .map(|e| {
                (
                    e.clone(),
                    Symptom {
                        onset: old.onset,
                        severity: old.severity,
                        confidence: old.confidence,
                        evidence: Vec::new(),
                    },
                )
            })
            .collect();
        for e in &old.elements {
            self.index.remove(e);
        }
        old.status = IncidentStatus::Resolved;
        old.phase = Phase::Closed;
        old.resolved_at = Some(now);
        old.resolution = Some(format!("merged into {into}"));
        let detail = format!("merged into {into}");
        old.note(now, Step::Merged, None, detail.clone());
        self.audit(&old, now, Step::Merged, None, detail);
        self.knowledge.record(&old);
        self.merge(into, now, members, None);
    }

    /// Resolves waiting or escalated incidents whose failures all cleared
    /// `resolve_after` ago.
    fn resolve_cleared(&mut self, now: Time, symptoms: &BTreeMap<Element, Symptom>) {
        let after = self.cfg.analyze.resolve_after;
        let cleared: Vec<IncidentId> = self
            .incidents
            .values()
            .filter(|i| matches!(i.phase, Phase::Waiting | Phase::Escalated))
            .filter(|i| !i.elements.iter().any(|e| symptoms.contains_key(e)))
            .filter(|i| now.since(i.last_active) >= after)
            .map(|i| i.id)
            .collect();
        for id in cleared {
            let verified = self.incidents.get(&id).and_then(|i| {
                i.actions
                    .iter()
                    .rev()
                    .find(|a| a.status == crate::incident::ActionStatus::Verified)
                    .map(|a| a.action)
            });
            let how = match verified {
                Some(a) => format!("symptoms cleared after {a}"),
                None => "symptoms cleared without action".to_owned(),
            };
            self.resolve(id, now, how);
        }
    }
}

/// The kind and target of a group of topology failures, if its size
/// decides them: two or more silent nodes (and `min_group` failures) are a
/// partition about `center`; one silent node whose every other failure is
/// one of its own links is that node down; `min_group` failures otherwise
/// share a cause at `center`.
fn group_kind(
    elements: &[Element],
    center: Option<weft_crypto::NodeId>,
    min_group: usize,
) -> Option<(IncidentKind, Target)> {
    let topo: Vec<&Element> = elements.iter().filter(|e| e.topological()).collect();
    let downs: Vec<weft_crypto::NodeId> = topo
        .iter()
        .filter_map(|e| match e {
            Element::NodeDown(n) => Some(*n),
            _ => None,
        })
        .collect();
    let unexplained = topo
        .iter()
        .filter(|e| match e {
            Element::Link(a, b) => !downs.contains(a) && !downs.contains(b),
            _ => false,
        })
        .count();
    let around = |fallback: weft_crypto::NodeId| Target::Node(center.unwrap_or(fallback));
    if downs.len() >= 2 && topo.len() >= min_group {
        return Some((IncidentKind::Partition, around(downs[0])));
    }
    if downs.len() == 1 && unexplained == 0 {
        return Some((IncidentKind::NodeDown, Target::Node(downs[0])));
    }
    if topo.len() >= min_group {
        let fallback = match topo[0] {
            Element::NodeDown(n) | Element::Link(n, _) => Target::Node(*n),
            _ => Target::Network,
        };
        return Some((
            IncidentKind::SharedCause,
            center.map_or(fallback, Target::Node),
        ));
    }
    None
}

/// The symptom of a series whose detectors fire.
fn series_symptom(
    series: &Series,
    kind: MetricKind,
    subject: Target,
    det: &crate::detect::DetectorConfig,
) -> Symptom {
    let m = det.metric(kind);
    let alarms = series.det.alarms();
    let (at, value) = series
        .window
        .last()
        .map_or((Time::ZERO, 0.0), |(t, v)| (t, f64::from(v)));
    let mut evidence = Vec::new();
    let mut confidences = Vec::new();
    let mut severity = Severity::Minor;
    let metric = kind.as_str().to_owned();
    let mut push = |detector, score, limit| {
        evidence.push(Evidence {
            at,
            subject: subject.clone(),
            metric: metric.clone(),
            detector,
            value,
            score,
            limit,
        });
    };
    if alarms.has(Alarms::THRESHOLD)
        && let Some(t) = m.threshold
    {
        severity = match m.critical {
            Some(c) if value >= c => Severity::Critical,
            _ => Severity::Major,
        };
        let span = m.critical.map_or(t, |c| (c - t).max(1e-9));
        confidences.push(0.6 + 0.39 * ((value - t).abs() / span).min(1.0));
        push(Detector::Threshold, value, t);
    }
    if alarms.has(Alarms::EWMA) {
        let z = series.det.last_z();
        confidences.push(0.5 + 0.45 * ((z - det.z_threshold) / det.z_threshold).clamp(0.0, 1.0));
        push(Detector::Ewma, z, det.z_threshold);
    }
    if alarms.has(Alarms::CUSUM) {
        confidences.push(0.6);
        push(Detector::Cusum, series.det.cusum(), det.cusum_h);
    }
    if alarms.has(Alarms::MAD) {
        confidences.push(0.6);
        push(Detector::Mad, series.det.last_robust_z(), det.mad_threshold);
    }
    if kind == MetricKind::RouteCount {
        let base = series.det.mean();
        severity = if base > 0.0 && value < 0.5 * base {
            Severity::Major
        } else {
            Severity::Minor
        };
    }
    Symptom {
        onset: series.det.onset().unwrap_or(at),
        severity,
        confidence: combine(confidences),
        evidence,
    }
}
