//! `weft bench heal`: the self-healing loop's cycle time (weft-heal's
//! bench), and `weft sim --heal` (weft-heal's `sim`), printed as a table
//! or JSON.

use anyhow::{Context, Result};
use clap::Args;
use weft_heal::bench::{BenchConfig, run};

/// Arguments of `weft bench heal`.
#[derive(Debug, Args)]
pub struct HealBenchArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Nodes of the main run.
    #[arg(long, default_value_t = BenchConfig::default().nodes)]
    nodes: usize,
    /// Timed cycles of the main run.
    #[arg(long, default_value_t = BenchConfig::default().cycles)]
    cycles: usize,
    /// Nodes of the large run (0 skips it).
    #[arg(long, default_value_t = BenchConfig::default().nodes_large)]
    nodes_large: usize,
    /// Timed cycles of the large run.
    #[arg(long, default_value_t = BenchConfig::default().cycles_large)]
    cycles_large: usize,
    /// Nodes of the simulated healing run that measures MTTD and MTTR
    /// (0 skips it).
    #[arg(long, default_value_t = BenchConfig::default().sim_nodes)]
    sim_nodes: usize,
}

/// Runs `weft bench heal`.
pub fn bench_heal(args: &HealBenchArgs) -> Result<()> {
    let cfg = BenchConfig {
        nodes: args.nodes,
        cycles: args.cycles,
        nodes_large: args.nodes_large,
        cycles_large: args.cycles_large,
        sim_nodes: args.sim_nodes,
        ..BenchConfig::default()
    };
    let r = run(&cfg).context("heal bench failed")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "cycle p50 / p99 ms          {:>8.3} / {:<8.3} ({} nodes, {} samples per cycle; target p99 <= {})",
        r.cycle_p50_ms, r.cycle_p99_ms, r.nodes, r.samples_per_cycle, r.target_cycle_p99_ms
    );
    println!(
        "  one sample per input        {:>8.3} / {:<8.3} (instead of one report per node)",
        r.cycle_p50_ms_per_sample, r.cycle_p99_ms_per_sample
    );
    println!(
        "  monitor / analyze / execute / plan p50 ms  {:.3} / {:.3} / {:.3} / {:.3}",
        r.phases.monitor_p50_ms,
        r.phases.analyze_p50_ms,
        r.phases.execute_p50_ms,
        r.phases.plan_p50_ms
    );
    if r.nodes_10k > 0 {
        println!(
            "cycle p50 / p99 ms          {:>8.3} / {:<8.3} ({} nodes, {} samples per cycle)",
            r.cycle_p50_ms_10k, r.cycle_p99_ms_10k, r.nodes_10k, r.samples_per_cycle_10k
        );
    }
    println!(
        "naive detectors p50 ms      {:>8.3}  (same samples; ours is {:.1}x faster)",
        r.naive_cycle_p50_ms, r.speedup_vs_naive
    );
    println!(
        "bare pass p50 ms            {:>8.3}  (ours / bare = {:.1})",
        r.bare_pass_p50_ms, r.ratio_vs_bare_pass
    );
    println!(
        "incidents / actions         {} / {}",
        r.incidents_opened, r.actions_requested
    );
    if r.sim_nodes > 0 {
        println!(
            "mttr p50 / p99 / max ms     {:.0} / {:.0} / {:.0}  (simulated {} nodes, virtual clock; {} of {} faults healed; target p99 <= {}; mttd p99 {:.0})",
            r.mttr_p50_ms,
            r.mttr_p99_ms,
            r.mttr_max_ms,
            r.sim_nodes,
            r.sim_faults_healed,
            r.sim_faults_injected,
            r.target_mttr_p99_ms,
            r.mttd_p99_ms
        );
    }
    for n in &r.not_measured {
        println!("not measured                {n}");
    }
    Ok(())
}

/// Runs `weft sim --heal`.
pub fn sim_heal(
    scenario: weft_sim::scenario::Scenario,
    waves: usize,
    per_kind: usize,
    json: bool,
) -> Result<()> {
    use weft_heal::sim::{HealSimConfig, run};
    let cfg = HealSimConfig {
        scenario,
        waves,
        per_kind,
        ..HealSimConfig::default()
    };
    let mut last = -1i64;
    let r = run(&cfg, &mut |f| {
        let pct = (f * 100.0) as i64;
        if !json && pct != last {
            last = pct;
            let bar = "#".repeat((pct / 4).clamp(0, 25) as usize);
            eprint!("\r[{bar:<25}] {pct:>3}%");
        }
    })
    .context("healing simulation failed")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    eprintln!();
    let p = |x: &weft_sim::scenario::Percentiles| {
        format!("p50 {:>7.1}  p99 {:>7.1}  max {:>7.1}", x.p50, x.p99, x.max)
    };
    println!("nodes / links              {} / {}", r.nodes, r.links);
    println!("profile, seed              {}, {}", r.profile, r.seed);
    println!(
        "sim / wall seconds         {:.1} / {:.1} (converged at {} ms)",
        r.sim_seconds, r.wall_seconds, r.converged_ms
    );
    println!(
        "faults healed / injected   {} / {}",
        r.faults_healed, r.faults_injected
    );
    println!("mttd ms                    {}", p(&r.mttd_ms));
    println!("mttr ms                    {}", p(&r.mttr_ms));
    for (kind, k) in &r.by_kind {
        println!(
            "  {kind:<24} {} / {} healed, mttd {}, mttr {}",
            k.healed,
            k.injected,
            p(&k.mttd_ms),
            p(&k.mttr_ms)
        );
    }
    println!(
        "incidents (unmatched)      {} ({})",
        r.incidents, r.unmatched_incidents
    );
    println!(
        "actions / rollbacks / failed {} / {} / {}",
        r.actions, r.rollbacks, r.actions_failed
    );
    println!("loops                      {}", r.loops);
    println!("trace hash                 {}", r.trace_hash);
    Ok(())
}
