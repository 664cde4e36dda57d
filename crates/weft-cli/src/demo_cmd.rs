//! `weft demo`: thin over weft-demo.

use anyhow::{Context, Result, bail};
use clap::Args;

/// `weft demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Agents to run.
    #[arg(long, default_value_t = 12)]
    nodes: usize,
    /// Print the result table as JSON (`faults`, `all_healed`).
    #[arg(long)]
    json: bool,
    /// Leave the control plane and the agents running after the table
    /// (until Ctrl-C).
    #[arg(long)]
    keep_running: bool,
}

/// Runs the demo; fails unless every fault was healed and verified.
pub fn demo(args: &DemoArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let cfg = weft_demo::DemoConfig {
        nodes: args.nodes,
        ..weft_demo::DemoConfig::default()
    };
    let json = args.json;
    let (report, demo) = runtime.block_on(async {
        let progress = |line: &str| {
            if !json {
                println!("{line}");
            }
        };
        weft_demo::run(&cfg, &progress).await
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!();
        println!(
            "{:<52} {:>12} {:>12}  {:<32} verified",
            "fault", "detected", "healed", "action"
        );
        let ms = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| format!("{v} ms"));
        for f in &report.faults {
            println!(
                "{:<52} {:>12} {:>12}  {:<32} {}",
                f.fault,
                ms(f.detected_ms),
                ms(f.healed_ms),
                f.action,
                if f.verified { "yes" } else { "no" }
            );
        }
        println!(
            "\n{} nodes, {} links, {:.1} s; {}",
            report.nodes,
            report.links,
            report.wall_seconds,
            if report.all_healed {
                "every fault healed and verified"
            } else {
                "NOT every fault was healed"
            }
        );
    }
    runtime.block_on(async {
        if args.keep_running {
            eprintln!("{}; Ctrl-C to stop", weft_demo::describe(&demo));
            let _ = tokio::signal::ctrl_c().await;
        }
        demo.stop().await;
    });
    if !report.all_healed {
        bail!("not every fault was healed and verified");
    }
    Ok(())
}
