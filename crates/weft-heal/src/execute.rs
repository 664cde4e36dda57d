//! Execute: actuator answers, verification by re-measuring, rollbacks,
//! and deadlines.
//!
//! An action goes: planned (an [`Output::Act`] is emitted) → acted (the
//! actuator answered `Ok`) → verified after the policy's `verify_after` by
//! re-measuring the incident's symptom level over the second half of that
//! window → resolved if the symptoms cleared, kept open if they only
//! improved, or rolled back (drain_link → undrain_link, shed_load →
//! restore_load) if they did not improve, after which the planner tries
//! the next candidate. A failed action (the actuator said so, or did not
//! answer in time) counts as a failure; one that timed out and can be
//! undone is rolled back in case it happened late. A rollback that fails
//! escalates the incident: the world is in a state the loop did not plan.

use std::time::Duration;

use weft_store::{IncidentId, IncidentStatus};

use crate::engine::{ActRequest, Engine, Output};
use crate::incident::{ActionStatus, Element, Incident, Phase, Step};
use crate::knowledge::Knowledge;
use crate::model::{ActionId, ActionKind, ActionResult, InputError, MetricKind, Target};
use crate::monitor::Series;
use crate::time::Time;

/// An incident's symptom level: per failing element, 0 when healthy,
/// 1 at the limit, 2 for "still down".
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Level {
    /// The mean over the elements measured.
    pub mean: f64,
    /// The worst element.
    pub max: f64,
}

/// Level of a silent node, a dead link or a stopped component.
const DOWN: f64 = 2.0;

impl<K: Knowledge> Engine<K> {
    /// Takes in an actuator's answer.
    pub(crate) fn action_result(&mut self, now: Time, r: ActionResult) -> Result<(), InputError> {
        let unknown = || InputError::UnknownAction {
            id: r.id.to_string(),
        };
        let Some(incident) = self.incidents.get(&r.id.incident) else {
            return Err(unknown());
        };
        let seq = r.id.seq;
        match (incident.phase, r.id.rollback) {
            (Phase::Acting { seq: s, .. }, false) if s == seq => {}
            (Phase::RollingBack { seq: s, .. }, true) if s == seq => {}
            _ => return Err(unknown()),
        }
        self.planner.in_flight = self.planner.in_flight.saturating_sub(1);
        let id = r.id.incident;
        let Some(mut incident) = self.incidents.remove(&id) else {
            return Err(unknown());
        };
        let verify_after = self.verify_after_of(&incident, seq);
        let Some(idx) = incident.actions.iter().position(|a| a.seq == seq) else {
            self.incidents.insert(id, incident);
            return Err(unknown());
        };
        let action = incident.actions[idx].action;
        let target = incident.actions[idx].target.clone();
        let (step, detail) = match (r.id.rollback, r.outcome) {
            (false, Ok(())) => {
                let a = &mut incident.actions[idx];
                a.status = ActionStatus::Verifying;
                a.acted_at = Some(now);
                incident.phase = Phase::Verifying {
                    seq,
                    until: now + verify_after,
                };
                self.apply_effect(action, &target, now);
                (
                    Step::Acted,
                    format!(
                        "{action} on {target} carried out; verifying in {}",
                        fmt_duration(verify_after)
                    ),
                )
            }
            (false, Err(reason)) => {
                let reason = clip(&reason);
                let a = &mut incident.actions[idx];
                a.status = ActionStatus::Failed;
                a.finished_at = Some(now);
                a.detail = reason.clone();
                incident.phase = Phase::Waiting;
                (
                    Step::ActionFailed,
                    format!("{action} on {target} failed: {reason}"),
                )
            }
            (true, Ok(())) => {
                let a = &mut incident.actions[idx];
                a.rolled_back = true;
                if let Some(inverse) = action.inverse() {
                    self.apply_effect(inverse, &target, now);
                }
                incident.phase = Phase::Waiting;
                (Step::RolledBack, format!("{action} on {target} undone"))
            }
            (true, Err(reason)) => {
                let reason = clip(&reason);
                incident.phase = Phase::Escalated;
                incident.status = IncidentStatus::Escalated;
                (
                    Step::RollbackFailed,
                    format!(
                        "undoing {action} on {target} failed: {reason}; an operator must check {target}"
                    ),
                )
            }
        };
        incident.note(now, step, Some(action), detail.clone());
        self.audit(&incident, now, step, Some(action), detail);
        if step == Step::RollbackFailed {
            let why = format!("rollback of {action} failed");
            incident.note(now, Step::Escalated, None, why.clone());
            self.audit(&incident, now, Step::Escalated, None, why);
        }
        self.knowledge.record(&incident);
        self.incidents.insert(id, incident);
        Ok(())
    }

    /// What a carried-out action changes in the loop's own model.
    fn apply_effect(&mut self, action: ActionKind, target: &Target, now: Time) {
        match (action, target) {
            (ActionKind::DrainLink, Target::Link(a, b)) => self.monitor.set_drained(*a, *b, true),
            (ActionKind::UndrainLink, Target::Link(a, b)) => {
                self.monitor.set_drained(*a, *b, false);
            }
            (ActionKind::QuarantineNode, Target::Node(n)) => {
                if let Some(&i) = self.monitor.node_index.get(n)
                    && let Some(node) = self.monitor.nodes.get(i)
                    && !node.quarantined
                {
                    // The control plane's revocation event may come later;
                    // the actuator's answer already says it is done.
                    let cfg = self.cfg.monitor.clone();
                    self.monitor
                        .event(now, now, &crate::model::Event::Revoked { node: *n }, &cfg);
                }
            }
            _ => {}
        }
    }

    /// The execute phase: verification and deadlines.
    pub fn execute(&mut self, now: Time) {
        let due: Vec<(IncidentId, Phase)> = self
            .incidents
            .values()
            .filter(|i| match i.phase {
                Phase::Acting { deadline, .. } | Phase::RollingBack { deadline, .. } => {
                    now >= deadline
                }
                Phase::Verifying { until, .. } => now >= until,
                _ => false,
            })
            .map(|i| (i.id, i.phase))
            .collect();
        for (id, phase) in due {
            match phase {
                Phase::Acting { seq, .. } => self.timed_out(id, seq, now),
                Phase::RollingBack { seq, .. } => {
                    self.planner.in_flight = self.planner.in_flight.saturating_sub(1);
                    let action = self
                        .incidents
                        .get(&id)
                        .and_then(|i| i.actions.iter().find(|a| a.seq == seq))
                        .map(|a| a.action);
                    if let Some(i) = self.incidents.get_mut(&id) {
                        i.phase = Phase::Escalated;
                        i.status = IncidentStatus::Escalated;
                    }
                    let timeout = fmt_duration(self.cfg.execute.action_timeout);
                    self.step_incident(
                        id,
                        now,
                        Step::RollbackFailed,
                        action,
                        format!("no answer to the rollback within {timeout}"),
                    );
                    self.step_incident(
                        id,
                        now,
                        Step::Escalated,
                        None,
                        "rollback unanswered; an operator must check".into(),
                    );
                }
                Phase::Verifying { seq, .. } => self.verify(id, seq, now),
                _ => {}
            }
        }
    }

    fn timed_out(&mut self, id: IncidentId, seq: u32, now: Time) {
        self.planner.in_flight = self.planner.in_flight.saturating_sub(1);
        let timeout = self.cfg.execute.action_timeout;
        let Some(incident) = self.incidents.get_mut(&id) else {
            return;
        };
        let Some(a) = incident.actions.iter_mut().find(|a| a.seq == seq) else {
            return;
        };
        a.status = ActionStatus::Failed;
        a.finished_at = Some(now);
        a.detail = format!("no answer within {}", fmt_duration(timeout));
        let (action, target) = (a.action, a.target.clone());
        incident.phase = Phase::Waiting;
        self.step_incident(
            id,
            now,
            Step::ActionFailed,
            Some(action),
            format!(
                "{action} on {target}: no answer within {}",
                fmt_duration(timeout)
            ),
        );
        if action.inverse().is_some() {
            // It may have happened late: undo it to be safe.
            self.request_rollback(id, seq, now);
        }
    }

    /// Judges an action after its verification window.
    fn verify(&mut self, id: IncidentId, seq: u32, now: Time) {
        let verify_after = self
            .incidents
            .get(&id)
            .map(|i| self.verify_after_of(i, seq));
        let Some(incident) = self.incidents.get(&id) else {
            return;
        };
        let Some(a) = incident.actions.iter().find(|a| a.seq == seq) else {
            return;
        };
        let acted = a.acted_at.unwrap_or(a.started_at);
        // Re-measure over the second half of the window, once the action
        // has had time to act.
        let half = verify_after.unwrap_or(Duration::from_secs(30)) / 2;
        let since = acted + half;
        let after = self.level(incident, Some(&a.target), since);
        let before = a.level_before;
        let (action, target) = (a.action, a.target.clone());
        let min_improvement = self.cfg.execute.min_improvement;
        let cleared = after.is_some_and(|l| l.max < 1.0);
        let improved = cleared
            || matches!((before, after), (Some(b), Some(l)) if l.mean <= (1.0 - min_improvement) * b);
        let fmt_level =
            |l: Option<f64>| l.map_or_else(|| "unmeasured".to_owned(), |l| format!("{l:.2}"));
        let detail = format!(
            "{action} on {target}: symptom level {} before, {} after",
            fmt_level(before),
            fmt_level(after.map(|l| l.mean))
        );
        if let Some(i) = self.incidents.get_mut(&id)
            && let Some(a) = i.actions.iter_mut().find(|a| a.seq == seq)
        {
            a.finished_at = Some(now);
            a.level_after = after.map(|l| l.mean);
            a.status = if improved {
                ActionStatus::Verified
            } else {
                ActionStatus::NotImproved
            };
            a.detail = detail.clone();
            i.phase = Phase::Waiting;
        }
        if improved {
            self.step_incident(id, now, Step::Verified, Some(action), detail);
            if cleared {
                self.resolve(id, now, format!("healed by {action} on {target}"));
            }
        } else {
            self.step_incident(id, now, Step::NotImproved, Some(action), detail);
            if action.inverse().is_some() {
                self.request_rollback(id, seq, now);
            }
        }
    }

    fn request_rollback(&mut self, id: IncidentId, seq: u32, now: Time) {
        let deadline = now + self.cfg.execute.action_timeout;
        let Some(incident) = self.incidents.get_mut(&id) else {
            return;
        };
        let Some(a) = incident.actions.iter().find(|a| a.seq == seq) else {
            return;
        };
        let Some(inverse) = a.action.inverse() else {
            return;
        };
        let target = a.target.clone();
        incident.phase = Phase::RollingBack { seq, deadline };
        let kind = incident.kind;
        self.outputs.push_back(Output::Act(ActRequest {
            id: ActionId {
                incident: id,
                seq,
                rollback: true,
            },
            action: inverse,
            target: target.clone(),
            incident_kind: kind,
            deadline,
        }));
        self.planner.in_flight += 1;
        self.stats.actions += 1;
        self.stats.rollbacks += 1;
        self.step_incident(
            id,
            now,
            Step::Planned,
            Some(inverse),
            format!("rollback: {inverse} on {target}"),
        );
    }

    /// The symptom level of an incident over the samples taken at or after
    /// `since`, measured on the elements an action on `target` addresses
    /// (see [`addresses`]; all of them if it addresses none, or if
    /// `target` is `None`); `None` if nothing was measured.
    ///
    /// An action is judged by the symptoms it targets: draining one link
    /// of a group is verified on that link, restarting a node on that
    /// node's failures, so an unrelated symptom that joined the incident
    /// can neither fail nor pass it.
    pub fn level(
        &self,
        incident: &Incident,
        target: Option<&Target>,
        since: Time,
    ) -> Option<Level> {
        let elements = incident.elements.iter().take(crate::incident::MAX_ELEMENTS);
        let some = target.is_some_and(|t| elements.clone().any(|e| addresses(t, e)));
        let mut sum = 0.0;
        let mut max: f64 = 0.0;
        let mut n = 0usize;
        for e in elements {
            if some && target.is_some_and(|t| !addresses(t, e)) {
                continue;
            }
            if let Some(l) = self.element_level(e, since) {
                sum += l;
                max = max.max(l);
                n += 1;
            }
        }
        (n > 0).then(|| Level {
            mean: sum / n as f64,
            max,
        })
    }

    fn element_level(&self, e: &Element, since: Time) -> Option<f64> {
        let m = &self.monitor;
        let det = &self.cfg.detect;
        let slot = |id| m.node_index.get(id).copied();
        match e {
            Element::Overload(n) => {
                let node = m.nodes.get(slot(n)?)?;
                let cpu = series_level(&node.cpu, MetricKind::Cpu, since, det);
                let mem = series_level(&node.memory, MetricKind::Memory, since, det);
                match (cpu, mem) {
                    (None, None) => None,
                    (a, b) => Some(a.unwrap_or(0.0).max(b.unwrap_or(0.0))),
                }
            }
            Element::NodeDown(n) => {
                let node = m.nodes.get(slot(n)?)?;
                Some(if node.quarantined || node.fresh(since) {
                    0.0
                } else {
                    DOWN
                })
            }
            Element::Link(a, b) => {
                let (x, y) = (slot(a)?, slot(b)?);
                if m.is_drained(x, y) {
                    // Routes avoid it: what matters is that both ends
                    // still report and kept their routes.
                    return Some(
                        self.drain_penalty(x, since)
                            .max(self.drain_penalty(y, since)),
                    );
                }
                let mut level: Option<f64> = None;
                for key in [(x, y), (y, x)] {
                    let Some(link) = m.link_index.get(&key).and_then(|l| m.links.get(*l)) else {
                        continue;
                    };
                    if link.dead_since.is_some() {
                        return Some(DOWN);
                    }
                    for (series, kind) in [
                        (&link.loss, MetricKind::LinkLoss),
                        (&link.rtt, MetricKind::LinkRtt),
                    ] {
                        if let Some(l) = series_level(series, kind, since, det) {
                            level = Some(level.unwrap_or(0.0).max(l));
                        }
                    }
                }
                level
            }
            Element::RouteDrop(n) => {
                let node = m.nodes.get(slot(n)?)?;
                let (mean, _) = node.routes.window.mean_since(since)?;
                let base = node.routes.det.mean().max(1.0);
                // 1 at a quarter of the routes lost.
                Some(((base - mean) / base).max(0.0) * 4.0)
            }
            Element::Forged(n) => {
                let node = m.nodes.get(slot(n)?)?;
                let recent = node.forged_reports.iter().filter(|r| r.at >= since).count();
                Some(recent as f64 / self.cfg.analyze.forged_min_reports as f64)
            }
            Element::Component(n, c) => {
                let comp = m
                    .find_component(slot(n)?, c)
                    .and_then(|c| m.components.get(c))?;
                if comp.down_since.is_some() {
                    return Some(DOWN);
                }
                series_level(&comp.errors, MetricKind::ComponentErrors, since, det).or(Some(0.0))
            }
        }
    }

    /// 0 if node slot `n` reports and kept its routes since `since`; 2
    /// if it went silent or lost more than `route_tolerance` of them.
    fn drain_penalty(&self, n: u32, since: Time) -> f64 {
        let Some(node) = self.monitor.nodes.get(n) else {
            return 0.0;
        };
        if node.last_seen.is_some() && !node.fresh(since) {
            return DOWN;
        }
        match node.routes.window.mean_since(since) {
            Some((mean, _)) => {
                let base = node.routes.det.mean();
                if base > 0.0 && mean < (1.0 - self.cfg.execute.route_tolerance) * base {
                    DOWN
                } else {
                    0.0
                }
            }
            None => 0.0,
        }
    }
}

/// Whether an action on `target` addresses failure `e`: for a link, that
/// link; for a node or one of its components, the node's own failures
/// and its links'; for the network, every failure.
pub fn addresses(target: &Target, e: &Element) -> bool {
    match target {
        Target::Network => true,
        Target::Link(a, b) => *e == Element::link(*a, *b),
        Target::Node(n) | Target::Component(n, _) => match e {
            Element::NodeDown(x)
            | Element::Overload(x)
            | Element::RouteDrop(x)
            | Element::Forged(x)
            | Element::Component(x, _) => x == n,
            Element::Link(a, b) => a == n || b == n,
        },
    }
}

/// A series' level since `since`: the mean over its static limit, or, for
/// a metric without one, its z-score over the z threshold.
fn series_level(
    series: &Series,
    kind: MetricKind,
    since: Time,
    det: &crate::detect::DetectorConfig,
) -> Option<f64> {
    let (mean, _) = series.window.mean_since(since)?;
    let m = det.metric(kind);
    Some(match m.threshold {
        Some(t) if t > 0.0 => mean / t,
        _ => {
            let z = (mean - series.det.mean()) / series.det.sigma(m);
            (z / det.z_threshold).max(0.0)
        }
    })
}

fn clip(s: &str) -> String {
    s.chars().take(512).collect()
}

pub(crate) fn fmt_duration(d: Duration) -> String {
    let ms = crate::time::millis(d);
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
