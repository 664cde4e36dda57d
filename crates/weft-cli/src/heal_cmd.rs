//! `weft bench heal`: the self-healing loop's cycle time (weft-heal's
//! bench), printed as a table or JSON.

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
}

/// Runs `weft bench heal`.
pub fn bench_heal(args: &HealBenchArgs) -> Result<()> {
    let cfg = BenchConfig {
        nodes: args.nodes,
        cycles: args.cycles,
        nodes_large: args.nodes_large,
        cycles_large: args.cycles_large,
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
    for n in &r.not_measured {
        println!("not measured                {n}");
    }
    Ok(())
}
