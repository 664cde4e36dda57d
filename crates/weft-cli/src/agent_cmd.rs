//! `weft agent run` and the local admin commands (`weft status`,
//! `weft peers`, `weft routes`), thin over weft-agent.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use weft_agent::admin;
use weft_agent::config::AgentSettings;
use weft_agent::daemon::Daemon;
use weft_control::sync::{EnrolledAgent, is_enrolled};

/// `weft agent ...`
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Run the node agent: mesh links, the TUN data plane and the admin
    /// socket, until SIGINT or SIGTERM.
    Run {
        /// The agent's configuration file (agent.toml).
        #[arg(long, value_name = "FILE", env = "WEFT_AGENT_CONFIG")]
        config: PathBuf,
    },
    /// Enroll this node with a control plane: make its identity locally,
    /// redeem a join token, write the SVID and the CA bundle.
    Enroll(crate::control_cmd::EnrollArgs),
    /// Fetch the SVID of a node that enrolled pending and was approved since.
    Claim(crate::control_cmd::AgentDirArgs),
    /// Renew the SVID over mTLS with the current one.
    Renew(crate::control_cmd::AgentDirArgs),
}

/// Where to find a running agent.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The agent's admin socket.
    #[arg(long, value_name = "PATH", env = "WEFT_AGENT_SOCKET")]
    socket: Option<PathBuf>,
    /// Or the agent's configuration file, to read admin_socket from.
    #[arg(long, value_name = "FILE", env = "WEFT_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs an agent subcommand.
pub fn agent(command: AgentCommand) -> Result<()> {
    match command {
        AgentCommand::Run { config } => {
            let settings = AgentSettings::load(&config)
                .with_context(|| format!("configuration {}", config.display()))?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async {
                // Enrolled with a control plane: follow it; else run on
                // the files in the data directory alone.
                if is_enrolled(&settings.data_dir) {
                    let agent = EnrolledAgent::start(&settings)
                        .await
                        .context("cannot start the agent")?;
                    announce(&agent.daemon, &settings);
                    wait_for_signal().await?;
                    agent.stop().await;
                } else {
                    let daemon = Daemon::start(&settings)
                        .await
                        .context("cannot start the agent")?;
                    announce(&daemon, &settings);
                    wait_for_signal().await?;
                    daemon.stop().await;
                }
                Ok(())
            })
        }
        AgentCommand::Enroll(args) => crate::control_cmd::agent_enroll(args),
        AgentCommand::Claim(args) => crate::control_cmd::agent_claim(args),
        AgentCommand::Renew(args) => crate::control_cmd::agent_renew(args),
    }
}

fn announce(daemon: &Daemon, settings: &AgentSettings) {
    eprintln!(
        "weft agent {} listening on {} (admin socket {})",
        daemon.agent.id(),
        daemon.agent.local_addr(),
        settings.admin_socket.display()
    );
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot watch SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// Asks the running agent for `cmd` (status, peers, routes) and prints it.
pub fn admin_command(cmd: &str, args: &AdminArgs) -> Result<()> {
    let socket = match (&args.socket, &args.config) {
        (Some(s), _) => s.clone(),
        (None, Some(c)) => {
            AgentSettings::load(c)
                .with_context(|| format!("configuration {}", c.display()))?
                .admin_socket
        }
        (None, None) => {
            bail!("say which agent: --socket PATH (its admin_socket) or --config agent.toml")
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let value = runtime.block_on(admin::request(&socket, cmd))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    match (cmd, &value) {
        ("status", serde_json::Value::Object(map)) => {
            for (k, v) in map {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                println!("{k:<16} {v}");
            }
        }
        (_, serde_json::Value::Array(rows)) => print_table(rows),
        _ => println!("{value}"),
    }
    Ok(())
}

fn print_table(rows: &[serde_json::Value]) {
    let Some(serde_json::Value::Object(first)) = rows.first() else {
        println!("(none)");
        return;
    };
    let columns: Vec<&String> = first.keys().collect();
    let cell = |row: &serde_json::Value, c: &str| match row.get(c) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => "-".into(),
        Some(v) => v.to_string(),
    };
    let widths: Vec<usize> = columns
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| cell(r, c).len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!(
        "{}",
        line(columns.iter().map(|c| c.to_uppercase()).collect())
    );
    for r in rows {
        println!("{}", line(columns.iter().map(|c| cell(r, c)).collect()));
    }
}

/// `weft bench dataplane`.
#[derive(Debug, Args)]
pub struct DataplaneBenchArgs {
    /// Seconds each UDP flow runs.
    #[arg(long, default_value_t = 3)]
    seconds: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs the dataplane bench with this binary as the agents.
pub fn bench_dataplane(args: &DataplaneBenchArgs) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the weft binary")?;
    let r = weft_agent::bench::dataplane(&exe, args.seconds).context("dataplane bench failed")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "mesh Gbit/s            {:>10.3}  (UDP 1200 B, TUN to TUN through two agents)",
        r.mesh_gbps
    );
    println!(
        "plain UDP Gbit/s       {:>10.3}  (same path, no agents)",
        r.plain_udp_gbps
    );
    println!(
        "ratio                  {:>10.3}  (aim >= 0.5)",
        r.ratio_vs_plain_udp
    );
    println!(
        "mesh loss %            {:>10.1}  (offered as fast as possible)",
        r.mesh_lost_percent
    );
    println!(
        "link handshakes/s      {:>10.0}  (QUIC, X25519MLKEM768, ML-DSA-65 both ways)",
        r.handshakes_per_sec
    );
    println!(
        "e2e handshakes/s       {:>10.0}  (X-Wing both ways)",
        r.e2e_handshakes_per_sec
    );
    println!(
        "e2e seal+open ns       {:>10.0}  (1400-byte payload)",
        r.e2e_seal_open_ns
    );
    Ok(())
}
