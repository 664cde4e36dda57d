//! `weft sim --heal` at a small size: every kind of fault is detected,
//! acted on and verified on the virtual clock, and a seed replays.

use std::time::Duration;

use weft_heal::sim::{HealSimConfig, run};
use weft_sim::scenario::Scenario;

fn cfg(nodes: usize, seed: u64) -> HealSimConfig {
    HealSimConfig {
        scenario: Scenario {
            nodes,
            degree: 6.0,
            seed,
            ..Scenario::default()
        },
        waves: 2,
        per_kind: 1,
        wave_interval: Duration::from_secs(6),
        // 60 nodes: the default 10 % blast radius would allow 6 nodes a
        // minute, fewer than two waves touch.
        policy: weft_heal::sim::SIM_POLICY
            .replace("blast_radius_percent = 10.0", "blast_radius_percent = 40.0"),
        ..HealSimConfig::default()
    }
}

#[test]
fn every_simulated_fault_is_healed_and_verified() {
    let r = run(&cfg(60, 3), &mut |_| {}).expect("run");
    eprintln!("{}", serde_json::to_string_pretty(&r).expect("json"));
    assert_eq!(r.faults_injected, 8, "two waves of one fault of each kind");
    for (kind, k) in &r.by_kind {
        assert_eq!(k.injected, 2, "{kind}");
        assert_eq!(k.healed, 2, "{kind}: {:?}", r.faults);
    }
    assert_eq!(r.faults_healed, r.faults_injected);
    // Every healed fault was healed by the action meant for it.
    for f in &r.faults {
        let want = match f.kind {
            weft_heal::sim::FaultKind::OverloadedNode => weft_heal::ActionKind::ShedLoad,
            weft_heal::sim::FaultKind::LossyLink => weft_heal::ActionKind::DrainLink,
            weft_heal::sim::FaultKind::CrashedNode => weft_heal::ActionKind::RestartProcess,
            weft_heal::sim::FaultKind::ByzantineNode => weft_heal::ActionKind::QuarantineNode,
        };
        assert_eq!(f.action, Some(want), "{f:?}");
        let (d, h) = (
            f.detected_ms.expect("detected"),
            f.healed_ms.expect("healed"),
        );
        assert!(d <= h, "{f:?}");
    }
    assert!(
        r.mttr_ms.count == 8 && r.mttr_ms.p99 <= 2000.0,
        "{:?}",
        r.mttr_ms
    );
    assert!(r.mttd_ms.p50 > 0.0 && r.mttd_ms.p50 <= r.mttr_ms.p50);
    assert_eq!(r.loops, 0);
    assert!(r.actions >= 8 && r.incidents >= 8);
}

#[test]
fn a_seed_replays_the_same_run() {
    let a = run(&cfg(40, 9), &mut |_| {}).expect("run");
    let b = run(&cfg(40, 9), &mut |_| {}).expect("run");
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(
        serde_json::to_value(&a.faults).expect("json"),
        serde_json::to_value(&b.faults).expect("json")
    );
    assert_eq!((a.incidents, a.actions), (b.incidents, b.actions));
}
