//! The whole loop on a small simulated fleet: detection, planning with
//! cooldowns and blast radius, acting, verification, rollback,
//! correlation and deduplication.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::{Fleet, id, no_effect, ring};
use weft_heal::{
    ActRequest, ActionKind, Event, IncidentKind, IncidentStatus, Knowledge, Policy, Step, Target,
};

/// The test actuator: shed_load cools the node, restart_process revives
/// a silent node, quarantine records the revocation — test double only.
fn fixing(fleet: &mut Fleet, req: &ActRequest) -> Result<(), String> {
    match (&req.action, &req.target) {
        (ActionKind::ShedLoad, Target::Node(n)) => {
            let i = (0..fleet.n).find(|i| id(*i) == *n).unwrap();
            fleet.cpu[i] = 40.0;
        }
        (ActionKind::RestartProcess, Target::Component(n, _)) => {
            let i = (0..fleet.n).find(|i| id(*i) == *n).unwrap();
            fleet.revive(i);
        }
        (ActionKind::QuarantineNode, Target::Node(n)) => {
            let n = *n;
            fleet.event(Event::Revoked { node: n });
        }
        _ => {}
    }
    Ok(())
}

fn steps_of(fleet: &Fleet, incident: weft_heal::IncidentId) -> Vec<Step> {
    fleet
        .audits
        .iter()
        .filter(|a| a.incident == incident)
        .map(|a| a.step)
        .collect()
}

#[test]
fn overload_is_detected_acted_on_verified_and_resolved() {
    let mut f = Fleet::new(ring(20), Policy::default_policy());
    f.idle(40);
    assert!(
        f.detected().is_empty(),
        "noise alone opened {:?}",
        f.detected()
    );
    f.cpu[3] = 97.0;
    f.run(60, &mut fixing);
    let detected = f.detected();
    assert_eq!(detected.len(), 1, "{detected:?}");
    let d = detected[0];
    assert_eq!(d.kind, IncidentKind::Overload);
    assert_eq!(d.target, Target::Node(id(3)));
    let mttd = d.mttd_ms.unwrap();
    assert!(mttd <= 3000, "mttd {mttd} ms");
    assert_eq!(
        steps_of(&f, d.incident),
        [
            Step::Detected,
            Step::Planned,
            Step::Acted,
            Step::Verified,
            Step::Resolved
        ]
    );
    let resolved = f.steps(Step::Resolved);
    println!(
        "overload: mttd {mttd} ms, mttr {} ms",
        resolved[0].mttr_ms.unwrap()
    );
    let k = f.engine.knowledge().incident(d.incident).unwrap();
    assert_eq!(k.status, IncidentStatus::Resolved);
    assert_eq!(k.actions.len(), 1);
    assert!(
        k.evidence
            .iter()
            .any(|e| e.detector == weft_heal::Detector::Threshold)
    );
    assert_eq!(
        f.engine
            .knowledge()
            .outcomes(IncidentKind::Overload, ActionKind::ShedLoad)
            .succeeded,
        1
    );
    assert_eq!(f.engine.incidents().count(), 0);
}

#[test]
fn an_action_that_does_not_help_is_rolled_back_and_the_next_is_tried() {
    let mut f = Fleet::new(ring(20), Policy::default_policy());
    f.idle(40);
    f.cpu[5] = 97.0;
    f.run(120, &mut no_effect);
    let acts: Vec<(ActionKind, bool)> = f.acts.iter().map(|a| (a.action, a.id.rollback)).collect();
    assert_eq!(
        acts[..3],
        [
            (ActionKind::ShedLoad, false),
            (ActionKind::RestoreLoad, true),
            (ActionKind::RestartProcess, false),
        ]
    );
    let id5 = f.detected()[0].incident;
    let steps = steps_of(&f, id5);
    let from = steps.iter().position(|s| *s == Step::NotImproved).unwrap();
    assert_eq!(
        steps[from..from + 4],
        [
            Step::NotImproved,
            Step::Planned,
            Step::RolledBack,
            Step::Planned
        ]
    );
    let incident = f.engine.knowledge().incident(id5).unwrap();
    let shed = &incident.actions[0];
    assert!(shed.rolled_back);
    assert_eq!(shed.status, weft_heal::ActionStatus::NotImproved);
    assert!(shed.level_after.unwrap() >= 1.0);
    assert_eq!(
        f.engine
            .knowledge()
            .outcomes(IncidentKind::Overload, ActionKind::ShedLoad)
            .failed,
        1
    );
    // Both candidates failed: the incident is escalated, still open.
    assert!(steps.contains(&Step::Escalated), "{steps:?}");
    assert_eq!(incident.status, IncidentStatus::Escalated);
}

#[test]
fn a_drain_that_costs_routes_is_rolled_back() {
    let mut f = Fleet::new(ring(20), Policy::default_policy());
    f.idle(40);
    f.loss.insert((0, 1), 20.0);
    // Draining the link makes node 0 lose half its routes (a bad drain).
    let mut harmful = |fleet: &mut Fleet, req: &ActRequest| {
        match req.action {
            ActionKind::DrainLink => fleet.routes[0] = 9.0,
            ActionKind::UndrainLink => fleet.routes[0] = 19.0,
            _ => {}
        }
        Ok(())
    };
    f.run(40, &mut harmful);
    let acts: Vec<ActionKind> = f.acts.iter().map(|a| a.action).collect();
    assert_eq!(
        acts[..2],
        [ActionKind::DrainLink, ActionKind::UndrainLink],
        "{acts:?}"
    );
    assert_eq!(f.acts[0].target, Target::link(id(0), id(1)));
    assert!(f.acts[1].id.rollback);
}

#[test]
fn a_drain_that_helps_heals_the_link() {
    let mut f = Fleet::new(ring(20), Policy::default_policy());
    f.idle(40);
    f.loss.insert((2, 3), 30.0);
    f.run(40, &mut no_effect);
    let d = f.detected();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].kind, IncidentKind::LinkDegraded);
    assert_eq!(
        steps_of(&f, d[0].incident),
        [
            Step::Detected,
            Step::Planned,
            Step::Acted,
            Step::Verified,
            Step::Resolved
        ]
    );
    // The drained link stays lossy but opens no new incident.
    f.run(30, &mut no_effect);
    assert_eq!(f.detected().len(), 1);
}

#[test]
fn cooldowns_are_honoured() {
    let policy = Policy::parse(
        r#"
[[policy]]
name = "overload"
kind = "overload"
[[policy.actions]]
action = "shed_load"
cooldown = "90s"
verify_after = "10s"
"#,
    )
    .unwrap();
    let mut f = Fleet::new(ring(20), policy);
    f.idle(40);
    f.cpu[7] = 97.0;
    f.run(30, &mut fixing);
    assert_eq!(f.steps(Step::Resolved).len(), 1);
    let first = f.acts[0].clone();
    // The fault comes back at once: a new incident, but shed_load on the
    // same node waits for its cooldown.
    f.cpu[7] = 97.0;
    f.run(30, &mut fixing);
    assert_eq!(f.detected().len(), 2);
    assert_eq!(f.acts.len(), 1, "acted again within the cooldown");
    let deferred = f.steps(Step::Deferred);
    assert!(
        deferred.iter().any(|d| d.detail.contains("cooling down")),
        "{deferred:?}"
    );
    f.run(60, &mut fixing);
    assert_eq!(f.acts.len(), 2);
    let second = &f.acts[1];
    assert_eq!(second.target, first.target);
    // Not before the 90 s cooldown from the first request.
    let started = |a: &ActRequest| a.deadline.as_millis() - 30_000;
    assert!(started(second) >= started(&first) + 90_000);
}

#[test]
fn the_blast_radius_is_honoured() {
    let policy = Policy::parse(
        r#"
[limits]
blast_radius_percent = 5.0
blast_radius_window = "1m"
[[policy]]
name = "overload"
kind = "overload"
[[policy.actions]]
action = "shed_load"
verify_after = "5s"
"#,
    )
    .unwrap();
    let mut f = Fleet::new(ring(100), policy);
    f.idle(40);
    let hot: Vec<usize> = (0..8).map(|i| i * 11).collect();
    for &i in &hot {
        f.cpu[i] = 97.0;
    }
    // 5 % of 100 nodes: 5 may be acted on per minute.
    f.run(50, &mut fixing);
    let acted: BTreeSet<Target> = f.acts.iter().map(|a| a.target.clone()).collect();
    assert_eq!(acted.len(), 5, "{acted:?}");
    assert_eq!(f.detected().len(), 8, "eight separate incidents");
    assert!(
        f.steps(Step::Deferred)
            .iter()
            .any(|d| d.detail.contains("blast radius"))
    );
    // A minute after the first actions the rest go.
    f.run(40, &mut fixing);
    let acted: BTreeSet<Target> = f.acts.iter().map(|a| a.target.clone()).collect();
    assert_eq!(acted.len(), 8);
    assert_eq!(f.steps(Step::Resolved).len(), 8);
}

/// A hub with three leaves only it connects, inside a ring.
fn hub_and_leaves() -> Vec<BTreeSet<usize>> {
    let mut adj = ring(20);
    adj.resize(23, BTreeSet::new());
    for leaf in 20..23 {
        adj[leaf].insert(0);
        adj[0].insert(leaf);
    }
    adj
}

#[test]
fn correlated_failures_make_one_incident() {
    let mut f = Fleet::new(hub_and_leaves(), Policy::default_policy());
    f.idle(40);
    // The hub dies; its leaves fall silent with it.
    f.kill(0);
    for leaf in 20..23 {
        f.silent.insert(leaf);
    }
    f.idle(20);
    let detected = f.detected();
    let open: Vec<_> = f.engine.incidents().collect();
    assert_eq!(open.len(), 1, "{detected:?}");
    let incident = open[0];
    assert_eq!(incident.kind, IncidentKind::Partition);
    assert_eq!(incident.target, Target::Node(id(0)));
    assert_eq!(incident.elements.len(), 4);
    assert_eq!(incident.severity, weft_heal::Severity::Critical);
    // Its neighbours' reports are evidence.
    assert!(
        incident
            .evidence
            .iter()
            .any(|e| e.metric == "neighbour_dead_reports")
    );
}

#[test]
fn links_failing_around_one_node_are_one_shared_cause() {
    let mut adj = ring(20);
    for p in [5, 9, 13] {
        adj[1].insert(p);
        adj[p].insert(1);
    }
    let mut f = Fleet::new(adj.clone(), Policy::default_policy());
    f.idle(40);
    for &p in &adj[1] {
        f.loss.insert((1.min(p), 1.max(p)), 20.0);
    }
    f.idle(10);
    let open: Vec<_> = f.engine.incidents().collect();
    assert_eq!(open.len(), 1, "{:?}", f.detected());
    assert_eq!(open[0].kind, IncidentKind::SharedCause);
    assert_eq!(open[0].target, Target::Node(id(1)));
    assert_eq!(open[0].elements.len(), adj[1].len());
}

#[test]
fn independent_failures_stay_separate() {
    let mut f = Fleet::new(ring(40), Policy::default_policy());
    f.idle(40);
    f.kill(3);
    f.kill(25);
    f.cpu[11] = 99.0;
    f.idle(15);
    let mut kinds: Vec<(IncidentKind, Target)> = f
        .engine
        .incidents()
        .map(|i| (i.kind, i.target.clone()))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            (IncidentKind::NodeDown, Target::Node(id(3))),
            (IncidentKind::NodeDown, Target::Node(id(25))),
            (IncidentKind::Overload, Target::Node(id(11))),
        ]
    );
}

#[test]
fn a_crashed_node_is_restarted_and_verified() {
    let mut f = Fleet::new(ring(20), Policy::default_policy());
    f.idle(40);
    f.kill(8);
    f.run(60, &mut fixing);
    let d = f.detected();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].kind, IncidentKind::NodeDown);
    assert_eq!(
        f.acts[0].target,
        Target::Component(id(8), weft_heal::Component::new("agent").unwrap())
    );
    assert_eq!(
        steps_of(&f, d[0].incident),
        [
            Step::Detected,
            Step::Planned,
            Step::Acted,
            Step::Verified,
            Step::Resolved
        ]
    );
}

#[test]
fn forgers_are_quarantined() {
    let mut f = Fleet::new(ring(20), Policy::default_policy());
    f.idle(40);
    for reporter in [1, 2, 3] {
        f.event(Event::ForgedAnnouncement {
            node: id(reporter),
            origin: id(9),
            from: id(4),
        });
    }
    f.run(30, &mut fixing);
    let d = f.detected();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].kind, IncidentKind::ForgedAnnouncements);
    assert_eq!(d[0].target, Target::Node(id(4)));
    assert_eq!(f.acts[0].action, ActionKind::QuarantineNode);
    assert_eq!(f.steps(Step::Resolved).len(), 1);
}

#[test]
fn incidents_are_deduplicated_while_open() {
    // No policy: nothing acts, the overload persists.
    let policy = Policy::parse("version = 1\n").unwrap();
    let mut f = Fleet::new(ring(20), policy);
    f.idle(40);
    f.cpu[2] = 99.0;
    f.idle(120);
    assert_eq!(f.detected().len(), 1);
    assert_eq!(f.engine.incidents().count(), 1);
    // Deferred is audited once, not every cycle.
    assert_eq!(f.steps(Step::Deferred).len(), 1);
    // It clears, and resolves after resolve_after.
    f.cpu[2] = 40.0;
    f.idle(30);
    assert_eq!(f.steps(Step::Resolved).len(), 1);
    assert_eq!(f.engine.incidents().count(), 0);
}

#[test]
fn unanswered_actions_fail_and_are_rolled_back() {
    let mut f = Fleet::new(ring(20), Policy::default_policy());
    f.idle(40);
    f.cpu[6] = 97.0;
    // Never answer.
    f.idle(45);
    let failed = f.steps(Step::ActionFailed);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].detail.contains("no answer"));
    // shed_load may have happened late: it is undone.
    assert!(
        f.acts
            .iter()
            .any(|a| a.action == ActionKind::RestoreLoad && a.id.rollback)
    );
}

#[test]
fn bad_results_are_refused() {
    let mut f = Fleet::new(ring(20), Policy::default_policy());
    f.idle(30);
    let bogus = weft_heal::ActionResult {
        id: weft_heal::ActionId {
            incident: weft_heal::IncidentId(uuid::Uuid::nil()),
            seq: 0,
            rollback: false,
        },
        outcome: Ok(()),
    };
    let step = f
        .engine
        .step(f.now, [weft_heal::Input::ActionResult(bogus)]);
    assert_eq!(step.refused.len(), 1);
}

#[test]
fn a_quiet_fleet_opens_no_incident() {
    let mut f = Fleet::new(ring(100), Policy::default_policy());
    f.idle(600);
    let samples = f.engine.stats().inputs;
    println!(
        "quiet fleet: {} incidents over {samples} samples (100 nodes, 600 s)",
        f.detected().len()
    );
    assert!(f.detected().is_empty(), "{:?}", f.detected());
}

#[test]
fn metrics_are_exported() {
    let metrics = weft_heal::HealMetrics::new();
    let mut f = Fleet::new(ring(20), Policy::default_policy());
    f.idle(40);
    f.cpu[3] = 97.0;
    f.run(60, &mut fixing);
    for a in &f.audits {
        metrics.observe(&weft_heal::Output::Audit(a.clone()));
    }
    // A cycle driven through the metrics is timed by phase.
    let now = f.now + std::time::Duration::from_secs(1);
    metrics.run_cycle(&mut f.engine, now);
    metrics.time(weft_heal::metrics::Phase::Monitor, || ());
    let text = metrics.encode_text().unwrap();
    for expected in [
        "weft_heal_cycle_duration_seconds_count{phase=\"analyze\"} 1",
        "weft_heal_cycle_duration_seconds_count{phase=\"plan\"} 1",
        "weft_heal_cycle_duration_seconds_count{phase=\"monitor\"} 1",
        "weft_heal_mttd_seconds_count 1",
        "weft_heal_mttr_seconds_count 1",
        "weft_heal_actions_total{action=\"shed_load\",outcome=\"verified\"} 1",
        "weft_heal_actions_total{action=\"shed_load\",outcome=\"acted\"} 1",
        "weft_heal_incidents_total{kind=\"overload\",event=\"resolved\"} 1",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
}
