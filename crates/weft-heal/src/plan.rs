//! Plan: for each incident waiting for an action, the first policy rule
//! that matches it, its candidates ranked by past success for the
//! incident's kind, and the first candidate that is allowed now: not
//! tried on this incident before, its preconditions hold, it is not
//! cooling down on its target, and the blast radius (distinct nodes acted
//! on per window) has room. Critical incidents are planned first.

use std::collections::BTreeSet;

use weft_crypto::NodeId;
use weft_store::{IncidentId, IncidentStatus};

use crate::engine::{ActRequest, Engine, Output};
use crate::incident::{ActionRecord, ActionStatus, Incident, Phase, Step};
use crate::knowledge::Knowledge;
use crate::model::{ActionId, ActionKind, Target};
use crate::policy::{Candidate, Precondition};
use crate::time::Time;

/// Why a candidate cannot run now.
enum Refusal {
    /// It can never run for this incident.
    Never,
    /// Not now (precondition, cooldown, blast radius); the text says why.
    NotNow(String),
}

impl<K: Knowledge> Engine<K> {
    /// The plan phase.
    pub fn plan(&mut self, now: Time) {
        let window = self.policy.limits.blast_radius_window;
        let horizon = now.saturating_sub(window);
        while self
            .planner
            .acted
            .front()
            .is_some_and(|(t, _)| *t < horizon)
        {
            self.planner.acted.pop_front();
        }
        self.planner.cooldowns.retain(|_, until| *until > now);
        let mut waiting: Vec<(std::cmp::Reverse<crate::model::Severity>, Time, IncidentId)> = self
            .incidents
            .values()
            .filter(|i| i.phase == Phase::Waiting)
            .map(|i| (std::cmp::Reverse(i.severity), i.detected_at, i.id))
            .collect();
        waiting.sort_unstable();
        if waiting.is_empty() {
            return;
        }
        let fresh_since = now.saturating_sub(self.cfg.monitor.stale_after);
        self.planner.fresh_nodes = self.fresh_nodes(fresh_since);
        for (_, _, id) in waiting {
            if self.planner.in_flight >= self.policy.limits.max_in_flight {
                break;
            }
            self.plan_one(id, now);
        }
    }

    fn plan_one(&mut self, id: IncidentId, now: Time) {
        let Some(incident) = self.incidents.get(&id) else {
            return;
        };
        let Some(rule) =
            self.policy
                .rule_for(incident.kind, incident.severity, incident.confidence)
        else {
            self.defer(
                id,
                now,
                format!(
                    "no policy handles a {} {} incident with confidence {:.2}",
                    incident.severity, incident.kind, incident.confidence
                ),
            );
            return;
        };
        if now < incident.detected_at + rule.hold {
            return;
        }
        let max_attempts = self.policy.limits.max_attempts as usize;
        if incident.actions.len() >= max_attempts {
            self.escalate(id, now, format!("{max_attempts} actions tried"));
            return;
        }
        // Rank the candidates by past success for this kind, ties in file
        // order.
        let mut ranked: Vec<(f64, usize, &Candidate)> = rule
            .actions
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let score = self.knowledge.outcomes(incident.kind, c.action).score();
                (score, i, c)
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));

        let mut reasons: Vec<String> = Vec::new();
        let mut possible = false;
        let mut chosen: Option<(Candidate, Target, f64)> = None;
        for (score, _, c) in ranked {
            let target = action_target(c, &incident.target);
            let target = match target {
                Some(t) => t,
                None => continue,
            };
            match self.allowed(incident, c, &target, now) {
                Ok(()) => {
                    chosen = Some((c.clone(), target, score));
                    break;
                }
                Err(Refusal::Never) => {}
                Err(Refusal::NotNow(why)) => {
                    possible = true;
                    reasons.push(format!("{}: {why}", c.action));
                }
            }
        }
        let rule_name = rule.name.clone();
        match chosen {
            Some((c, target, score)) => self.start(id, now, &c, target, score, rule_name),
            None if possible => self.defer(id, now, reasons.join("; ")),
            None => self.escalate(
                id,
                now,
                format!("no action of policy {rule_name:?} is left to try"),
            ),
        }
    }

    /// Whether candidate `c` may act on `target` for `incident` now.
    fn allowed(
        &self,
        incident: &Incident,
        c: &Candidate,
        target: &Target,
        now: Time,
    ) -> Result<(), Refusal> {
        if incident
            .actions
            .iter()
            .any(|a| a.action == c.action && a.target == *target)
        {
            return Err(Refusal::Never);
        }
        if !crate::policy::confident(incident.confidence, c.min_confidence) {
            // Not yet: more evidence (another neighbour refusing a forger's
            // announcements, another detector firing) raises an open
            // incident's confidence, and an action that needs more is
            // then allowed. Escalating now would hand the operator an
            // incident the loop may still handle.
            return Err(Refusal::NotNow(format!(
                "confidence {:.2} is below the {:.2} it needs",
                incident.confidence, c.min_confidence
            )));
        }
        for p in &c.requires {
            if let Err(why) = self.check(*p, target, now) {
                return Err(Refusal::NotNow(why));
            }
        }
        if let Some(until) = self.planner.cooldowns.get(&(c.action, target.clone()))
            && *until > now
        {
            return Err(Refusal::NotNow(format!(
                "cooling down on {target} for {} more",
                crate::execute::fmt_duration(until.since(now))
            )));
        }
        let nodes = target.nodes();
        let acted: BTreeSet<NodeId> = self.planner.acted.iter().map(|(_, n)| *n).collect();
        let new = nodes.iter().filter(|n| !acted.contains(n)).count();
        let budget = self.blast_budget();
        if new > 0 && acted.len() + new > budget {
            return Err(Refusal::NotNow(format!(
                "blast radius: {} of {budget} nodes acted on in the last {}",
                acted.len(),
                crate::execute::fmt_duration(self.policy.limits.blast_radius_window)
            )));
        }
        Ok(())
    }

    /// Distinct nodes that may be acted on per window.
    pub(crate) fn blast_budget(&self) -> usize {
        let l = &self.policy.limits;
        let share = (l.blast_radius_percent / 100.0 * self.monitor.reporting as f64).floor();
        (share as usize).max(l.blast_radius_min_nodes as usize)
    }

    fn check(&self, p: Precondition, target: &Target, now: Time) -> Result<(), String> {
        let m = &self.monitor;
        let fresh_since = now.saturating_sub(self.cfg.monitor.stale_after);
        let node = |id: &NodeId| m.node_index.get(id).and_then(|i| m.nodes.get(*i));
        match p {
            Precondition::TargetReachable => {
                for n in target.nodes() {
                    if !node(&n).is_some_and(|s| s.fresh(fresh_since)) {
                        return Err(format!("node {n} is not reporting"));
                    }
                }
                if *target == Target::Network {
                    return Err("the network is not a node".into());
                }
                Ok(())
            }
            Precondition::TargetUnreachable => {
                if *target == Target::Network {
                    return Err("the network is not a node".into());
                }
                for n in target.nodes() {
                    if node(&n).is_some_and(|s| s.fresh(fresh_since)) {
                        return Err(format!("node {n} is reporting"));
                    }
                }
                Ok(())
            }
            Precondition::NotQuarantined => {
                for n in target.nodes() {
                    if node(&n).is_some_and(|s| s.quarantined) {
                        return Err(format!("node {n} is quarantined"));
                    }
                }
                Ok(())
            }
            Precondition::EndpointsKeepALink => {
                let Target::Link(a, b) = target else {
                    return Ok(());
                };
                for (end, other) in [(a, b), (b, a)] {
                    if !self.keeps_a_link(end, other, fresh_since) {
                        return Err(format!(
                            "node {end} has no other healthy link; draining would cut it off"
                        ));
                    }
                }
                Ok(())
            }
            Precondition::FleetMostlyHealthy => {
                let reporting = m.reporting.max(1);
                let fraction = self.planner.fresh_nodes as f64 / reporting as f64;
                if fraction < self.policy.limits.min_healthy_fraction {
                    return Err(format!(
                        "only {:.0}% of the nodes report; suspect the monitoring first",
                        fraction * 100.0
                    ));
                }
                Ok(())
            }
        }
    }

    fn keeps_a_link(&self, end: &NodeId, other: &NodeId, fresh_since: Time) -> bool {
        let m = &self.monitor;
        let (Some(&e), Some(&o)) = (m.node_index.get(end), m.node_index.get(other)) else {
            return false;
        };
        m.neighbours(e).into_iter().any(|p| {
            if p == o || m.is_drained(e, p) {
                return false;
            }
            let Some(peer) = m.nodes.get(p) else {
                return false;
            };
            if peer.quarantined || (peer.last_seen.is_some() && !peer.fresh(fresh_since)) {
                return false;
            }
            [(e, p), (p, e)].iter().all(|key| {
                m.link_index
                    .get(key)
                    .and_then(|l| m.links.get(*l))
                    .is_none_or(|l| l.dead_since.is_none() && !l.loss.det.alarms().any())
            })
        })
    }

    fn fresh_nodes(&self, since: Time) -> usize {
        self.monitor
            .nodes
            .iter()
            .filter(|(_, n)| n.fresh(since))
            .count()
    }

    fn start(
        &mut self,
        id: IncidentId,
        now: Time,
        c: &Candidate,
        target: Target,
        score: f64,
        policy: String,
    ) {
        let level_before = self
            .incidents
            .get(&id)
            .and_then(|i| self.level(i, Some(&target), now.saturating_sub(c.verify_after)))
            .map(|l| l.mean);
        let deadline = now + self.cfg.execute.action_timeout;
        let Some(incident) = self.incidents.get_mut(&id) else {
            return;
        };
        let seq = incident.actions.len() as u32;
        incident.actions.push(ActionRecord {
            seq,
            action: c.action,
            target: target.clone(),
            policy: policy.clone(),
            started_at: now,
            acted_at: None,
            finished_at: None,
            status: ActionStatus::Acting,
            level_before,
            level_after: None,
            rolled_back: false,
            detail: String::new(),
        });
        incident.phase = Phase::Acting { seq, deadline };
        incident.last_deferral = None;
        let kind = incident.kind;
        self.planner
            .cooldowns
            .insert((c.action, target.clone()), now + c.cooldown);
        for n in target.nodes() {
            self.planner.acted.push_back((now, n));
        }
        self.planner.in_flight += 1;
        self.stats.actions += 1;
        self.outputs.push_back(Output::Act(ActRequest {
            id: ActionId {
                incident: id,
                seq,
                rollback: false,
            },
            action: c.action,
            target: target.clone(),
            incident_kind: kind,
            deadline,
        }));
        self.step_incident(
            id,
            now,
            Step::Planned,
            Some(c.action),
            format!(
                "{} on {target} (policy {policy:?}, past success {score:.2})",
                c.action
            ),
        );
    }

    fn defer(&mut self, id: IncidentId, now: Time, why: String) {
        let Some(incident) = self.incidents.get_mut(&id) else {
            return;
        };
        if incident.last_deferral.as_deref() == Some(why.as_str()) {
            return;
        }
        incident.last_deferral = Some(why.clone());
        self.step_incident(id, now, Step::Deferred, None, why);
    }

    fn escalate(&mut self, id: IncidentId, now: Time, why: String) {
        let Some(incident) = self.incidents.get_mut(&id) else {
            return;
        };
        incident.phase = Phase::Escalated;
        incident.status = IncidentStatus::Escalated;
        self.step_incident(
            id,
            now,
            Step::Escalated,
            None,
            format!("{why}; an operator must look"),
        );
    }
}

/// What candidate `c` acts on for an incident about `target`, if it can.
fn action_target(c: &Candidate, target: &Target) -> Option<Target> {
    let t = match (c.action, target, &c.component) {
        (ActionKind::RestartProcess, Target::Node(n), Some(comp)) => {
            Target::Component(*n, comp.clone())
        }
        _ => target.clone(),
    };
    c.action.applies_to(&t).then_some(t)
}
