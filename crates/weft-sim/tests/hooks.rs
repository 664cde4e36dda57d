//! The hooks a healing loop uses on the simulator: reports, restart,
//! drain, loss and revocation.

use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use weft_proto::node::NodeConfig;
use weft_proto::time::Time;
use weft_sim::hooks::Load;
use weft_sim::{LinkSpec, Sim};

fn ring(n: usize) -> (Sim, NodeConfig) {
    let cfg = NodeConfig {
        unix_ms_at_zero: 1_800_000_000_000,
        ..NodeConfig::default()
    };
    let mut sim = Sim::new(n, 1, cfg.clone()).expect("sim");
    for a in 0..n {
        sim.connect(a, (a + 1) % n, LinkSpec::default())
            .expect("link");
    }
    (sim, cfg)
}

fn at(ms: u64) -> Time {
    Time::ZERO + Duration::from_millis(ms)
}

#[test]
fn a_restarted_node_comes_back_with_clean_links_and_all_routes() {
    let (mut sim, cfg) = ring(5);
    let adj = sim.adjacency();
    let mut load = Load::new(5, ChaCha8Rng::seed_from_u64(1));
    sim.run_until(at(2000));
    sim.kill(1);
    assert!(
        sim.report(1, &adj[1], &mut load).is_none(),
        "a dead node reports nothing"
    );
    sim.run_until(at(3000));
    let r0 = sim.report(0, &adj[0], &mut load).expect("report");
    assert!(
        r0.links.iter().all(|l| l.peer != 1),
        "node 0 closed its link to the dead node"
    );
    sim.restart(1, cfg).expect("restart");
    sim.run_until(at(3500));
    for i in [0, 1, 2] {
        let r = sim.report(i, &adj[i], &mut load).expect("report");
        assert_eq!(r.routes, 4, "node {i} routes to every other node");
        for l in &r.links {
            assert!(l.loss < 0.01, "node {i}: {l:?}");
            let rtt = l.rtt_ms.expect("rtt measured");
            assert!((9.0..20.0).contains(&rtt), "node {i}: {l:?}");
        }
    }
    assert_eq!(sim.loops_seen(), 0);
}

#[test]
fn drain_loss_and_revocation_hooks_change_the_mesh() {
    let (mut sim, _) = ring(6);
    let adj = sim.adjacency();
    let mut load = Load::new(6, ChaCha8Rng::seed_from_u64(2));
    sim.run_until(at(2000));
    let link = sim.link_between(0, 1).expect("link 0-1");
    // Loss shows up in what both ends measure.
    sim.set_link_loss(link, 0.3);
    sim.run_until(at(4000));
    let loss = |sim: &Sim, load: &mut Load| {
        sim.report(0, &adj[0], load)
            .expect("report")
            .links
            .iter()
            .find(|l| l.peer == 1)
            .map(|l| l.loss)
            .expect("link to 1")
    };
    assert!(loss(&sim, &mut load) > 0.1);
    // Drained: node 0 reaches node 1 the long way round.
    assert_eq!(sim.set_drained(link, true), Some(2));
    sim.run_until(at(4500));
    assert_eq!(sim.next_hop(0, 1), Some(5));
    assert_eq!(sim.set_drained(link, false), Some(2));
    sim.set_link_loss(link, 0.0);
    sim.run_until(at(5000));
    assert_eq!(sim.next_hop(0, 1), Some(1));
    // Revoked everywhere: its neighbours close their links and nobody
    // routes to it.
    assert_eq!(sim.revoke_everywhere(&[3], 1).expect("revoke"), 6);
    sim.run_until(at(6000));
    for i in [0, 1, 2, 4, 5] {
        assert_eq!(sim.next_hop(i, 3), None, "node {i} still routes to 3");
    }
    let to_3 = sim.link_between(2, 3).expect("link 2-3");
    assert!(!sim.link_up(to_3));
    assert!(
        !sim.send_on_link(3, to_3, vec![0; 8]),
        "a closed link carries nothing"
    );
}

#[test]
fn load_is_synthesised_per_node_and_shed() {
    let mut load = Load::new(3, ChaCha8Rng::seed_from_u64(3));
    let (base, _) = load.base(1);
    load.overload(1, 97.0 - base, 0.0);
    let (cpu, _) = load.sample(1);
    assert!(cpu > 90.0, "{cpu}");
    assert!(load.shed(1) > 0.0);
    assert_eq!(load.shed(1), 0.0, "nothing left to shed");
    let (cpu, mem) = load.sample(1);
    assert!((cpu - base).abs() <= 3.0 && (0.0..=100.0).contains(&mem));
}

#[test]
fn a_link_drained_while_down_stays_drained_when_it_comes_back() {
    let (mut sim, cfg) = ring(6);
    sim.run_until(at(2000));
    let link = sim.link_between(0, 1).expect("link 0-1");
    // Everything lost: both ends declare the link dead and close it.
    sim.set_link_loss(link, 1.0);
    sim.run_until(at(8000));
    assert!(!sim.link_up(link), "the link is closed");
    // Drained while down: no end holds it, the setting is kept.
    assert_eq!(sim.set_drained(link, true), Some(0));
    assert!(sim.is_drained(link));
    assert_eq!(sim.set_drained(usize::MAX, true), None, "no such link");
    // The link heals and node 1 restarts, which redials it: it comes up
    // drained, so node 0 still reaches node 1 the long way round.
    sim.set_link_loss(link, 0.0);
    sim.restart(1, cfg).expect("restart");
    sim.run_until(at(10_000));
    assert!(sim.link_up(link));
    assert_eq!(sim.next_hop(0, 1), Some(5));
    // Undrained, it carries the route again.
    assert_eq!(sim.set_drained(link, false), Some(2));
    sim.run_until(at(11_000));
    assert_eq!(sim.next_hop(0, 1), Some(1));
}
