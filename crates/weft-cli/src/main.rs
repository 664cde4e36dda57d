//! `weft`: the command-line front end. Each subcommand parses its arguments,
//! calls one crate API and prints the result; no logic lives here.

mod agent_cmd;
mod control_cmd;
mod demo_cmd;
mod heal_cmd;
mod incidents_cmd;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use weft_crypto::ca::{self, CertificateAuthority, SvidAlgorithm, Validity};
use weft_crypto::svid::RevokedSerials;
use weft_crypto::{NodeIdentity, SpiffeId, TrustDomain, bench, sign};

/// weft: a self-healing, post-quantum mesh platform.
///
/// Node agents form an encrypted overlay; a control plane enrolls and
/// revokes them; an autonomic loop detects faults and repairs them. This
/// build holds the post-quantum identity core: node identities, the
/// trust-domain CA with X.509-SVIDs, and the crypto benchmark.
#[derive(Debug, Parser)]
#[command(name = "weft", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "WEFT_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax: `info`, `weft_crypto=debug`, ...).
    #[arg(long, global = true, default_value = "warn", env = "WEFT_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create and inspect node identities (ML-DSA-65+Ed25519 and X-Wing keys).
    #[command(subcommand)]
    Id(IdCommand),
    /// Run a trust-domain certificate authority: create it, issue and verify X.509-SVIDs.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Measure a subsystem against a baseline in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Publish, consume, list streams and handle dead letters on the event
    /// bus (the embedded log in --data-dir, or NATS JetStream with --nats).
    Bus(BusArgs),
    /// Simulate a mesh of weft-proto nodes on a virtual clock: converge, forge,
    /// kill a fraction of the nodes at half time, and measure detection,
    /// reconvergence, loops, reachability and traffic.
    Sim(SimArgs),
    /// List and show the self-healing loop's incidents with their timelines
    /// (from a control plane's store).
    #[command(subcommand)]
    Incidents(incidents_cmd::IncidentsCommand),
    /// Run the control plane: `weft control up`.
    #[command(subcommand)]
    Control(control_cmd::ControlCommand),
    /// List, show, approve and revoke nodes through the control plane.
    #[command(subcommand)]
    Node(control_cmd::NodeCommand),
    /// Read the control plane's audit trail.
    #[command(subcommand)]
    Audit(control_cmd::AuditCommand),
    /// Make and list join tokens (they admit nodes to a network).
    #[command(subcommand)]
    JoinToken(control_cmd::JoinTokenCommand),
    /// Make, list and revoke operators' API tokens.
    #[command(subcommand)]
    ApiToken(control_cmd::ApiTokenCommand),
    /// Make and list networks (trust domains).
    #[command(subcommand)]
    Network(control_cmd::NetworkCommand),
    /// Show the mesh's nodes and links with their health (table, JSON or GraphViz).
    Topology(control_cmd::TopologyArgs),
    /// Set, show and list the network's versioned ACL policy.
    #[command(subcommand)]
    Policy(control_cmd::PolicyCommand),
    /// Run the whole system in one process (control plane, bus, 12 agents
    /// on loopback, the healing loop), inject five faults and show each
    /// detected, repaired and verified.
    Demo(demo_cmd::DemoArgs),
    /// Run the node agent.
    #[command(subcommand)]
    Agent(agent_cmd::AgentCommand),
    /// Show a running agent's state (node, neighbours, routes, refusals).
    Status(agent_cmd::AdminArgs),
    /// List a running agent's neighbours and link health.
    Peers(agent_cmd::AdminArgs),
    /// List a running agent's routes.
    Routes(agent_cmd::AdminArgs),
}

#[derive(Debug, Args)]
struct SimArgs {
    /// Number of nodes (ignored when --topology is an edge-list file).
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// `geometric`, `grid`, `ba` (Barabási–Albert), or a file of `A B` edge lines.
    #[arg(long, default_value = "geometric")]
    topology: String,
    /// Mean degree of generated topologies.
    #[arg(long, default_value_t = 8.0)]
    degree: f64,
    /// Fraction of nodes killed at once at half time (0 to 1).
    #[arg(long, default_value_t = 0.3)]
    kill: f64,
    /// Byzantine nodes forging announcements from a quarter of the run.
    #[arg(long, default_value_t = 0)]
    byzantine: usize,
    /// Seed: the same seed and arguments give the same trace hash.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated duration.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Timer profile: weft's defaults, or RFC 8966's (hello 4 s) as the baseline.
    #[arg(long, value_enum, default_value_t = SimProfile::Default)]
    profile: SimProfile,
    /// Run the self-healing loop against the simulated mesh instead of the
    /// kill: waves of overloaded nodes, lossy links, crashed nodes and
    /// byzantine nodes, healed by simulator actuators; reports MTTD and
    /// MTTR (--kill, --byzantine and --duration are not used).
    #[arg(long)]
    heal: bool,
    /// With --heal: waves of faults.
    #[arg(long, default_value_t = 3)]
    waves: usize,
    /// With --heal: faults of each kind per wave (0: one per 250 nodes).
    #[arg(long, default_value_t = 0)]
    per_kind: usize,
    /// Print one JSON object instead of a progress line and a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SimProfile {
    /// Hello every 75 ms, loss-adaptive dead-neighbour detector.
    Default,
    /// RFC 8966 default timers.
    BabelDefaults,
}

#[derive(Debug, Subcommand)]
enum IdCommand {
    /// Generate a new node identity and write its key file (mode 0600, atomically).
    New {
        /// Where to write the key file.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Replace an existing file at --out.
        #[arg(long)]
        force: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a key file's node id, algorithms and public key fingerprint.
    Show {
        /// The key file (must not be readable by group or others).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a CA for a trust domain: an ML-DSA-65 root and an ECDSA P-256 compat root.
    Init {
        /// Trust domain name, e.g. `mesh.example.org` (lower-case letters, digits, `.`, `-`, `_`).
        #[arg(long, value_name = "DOMAIN")]
        trust_domain: String,
        /// Directory to write the CA into (created if missing; an existing CA is never overwritten).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// CA lifetime, e.g. `365d`, `8760h`.
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        ttl: Duration,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue an X.509-SVID: writes svid.pem, svid.key (0600) and bundle.pem into --out.
    Issue {
        /// The CA directory made by `weft ca init`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// SPIFFE ID for the certificate, e.g. `spiffe://mesh.example.org/node/a`.
        #[arg(long, value_name = "ID")]
        spiffe_id: String,
        /// SVID lifetime, e.g. `1h`, `30m`.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        /// Directory for svid.pem, svid.key and bundle.pem (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Issue an ECDSA P-256 SVID under the compat root, for tools that
        /// cannot verify ML-DSA yet. weft components refuse such SVIDs.
        #[arg(long)]
        compat: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify an X.509-SVID: chain, validity window and the X509-SVID profile.
    /// Exits non-zero with the exact reason when it is not valid.
    Verify {
        /// The CA directory made by `weft ca init`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// PEM file holding the SVID (leaf first).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Treat this serial number (hex) as revoked; repeatable.
        #[arg(long, value_name = "HEX")]
        revoked: Vec<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// X-Wing, composite signatures vs their components, and mTLS handshakes per second.
    Crypto(CryptoBenchArgs),
    /// Event bus publish rates against a bare write+fdatasync loop and a bare
    /// NATS client, in-memory rate, and end-to-end latency at a fixed rate.
    Bus(BusBenchArgs),
    /// Agent data plane: a UDP flow TUN to TUN through two agents across
    /// network namespaces against plain UDP on the same path, link and
    /// end-to-end handshake rates, seal+open cost. Needs root and iperf3.
    Dataplane(agent_cmd::DataplaneBenchArgs),
    /// Control plane heartbeats from many enrolled agents over keep-alive
    /// mTLS against a trivial handler on the same server, on SQLite and
    /// PostgreSQL.
    Control(control_cmd::ControlBenchArgs),
    /// Self-healing loop: one full cycle over telemetry from 1000 and
    /// 10,000 nodes against naive detectors and a bare pass over the samples.
    Heal(heal_cmd::HealBenchArgs),
}

#[derive(Debug, Args)]
struct BusBenchArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Directory on the disk to measure (a temporary subdirectory is used and removed).
    #[arg(long, default_value = ".", value_name = "DIR")]
    dir: PathBuf,
    /// Messages per publish-rate run.
    #[arg(long, default_value_t = weft_bus::bench::BenchConfig::default().messages)]
    messages: usize,
    /// Concurrent publishers (group commit batches up to this many).
    #[arg(long, default_value_t = weft_bus::bench::BenchConfig::default().publishers)]
    publishers: usize,
    /// NATS server to measure too (skipped with a note when unreachable).
    #[arg(long, default_value = "127.0.0.1:4222", value_name = "URL")]
    nats: String,
    /// Do not measure NATS.
    #[arg(long)]
    no_nats: bool,
}

#[derive(Debug, Args)]
struct BusArgs {
    /// Directory of the embedded bus (created if missing).
    #[arg(
        long,
        default_value = "weft-data/bus",
        env = "WEFT_BUS_DATA_DIR",
        value_name = "DIR"
    )]
    data_dir: PathBuf,
    /// Use the NATS JetStream server at this address instead of --data-dir.
    #[arg(long, env = "WEFT_BUS_NATS", value_name = "URL")]
    nats: Option<String>,
    #[command(subcommand)]
    command: BusCommand,
}

#[derive(Debug, Subcommand)]
enum BusCommand {
    /// Publish one message; prints its stream and sequence.
    Pub {
        /// Subject, e.g. `telemetry.node-a.cpu`.
        subject: String,
        /// Payload (UTF-8 text).
        payload: String,
        /// Dedup id (a repeat within the stream's window is stored once).
        #[arg(long)]
        id: Option<String>,
        /// Header `Name: value`; repeatable.
        #[arg(long = "header", value_name = "NAME:VALUE")]
        headers: Vec<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch messages from a durable consumer (created if missing) and settle them.
    Sub {
        /// The stream.
        stream: String,
        /// The durable consumer's name.
        #[arg(long, default_value = "weft-cli")]
        consumer: String,
        /// Most messages to fetch.
        #[arg(long, default_value_t = 10)]
        max: usize,
        /// Longest wait for the first message, e.g. `500ms`, `5s`.
        #[arg(long, default_value = "1s", value_parser = parse_wait)]
        wait: Duration,
        /// What to do with each message.
        #[arg(long, value_enum, default_value_t = SettleArg::Ack)]
        settle: SettleArg,
        /// Reason recorded with --settle term.
        #[arg(long, default_value = "terminated from the command line")]
        reason: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List and create streams.
    #[command(subcommand)]
    Streams(StreamsCommand),
    /// Dead letters: list, show, replay.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SettleArg {
    /// Acknowledge.
    Ack,
    /// Leave unacknowledged (redelivered after ack_wait).
    None,
    /// Redeliver at once.
    Nak,
    /// Move to the dead-letter stream with --reason.
    Term,
}

#[derive(Debug, Subcommand)]
enum StreamsCommand {
    /// Every stream with its messages, bytes and sequences.
    List {
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create a stream (and its dead-letter stream).
    Create {
        /// Name: letters, digits, `-`, `_`.
        name: String,
        /// Subject filter captured, e.g. `telemetry.>`; repeatable.
        #[arg(long = "subject", required = true, value_name = "FILTER")]
        subjects: Vec<String>,
        /// Delete each message once acknowledged.
        #[arg(long)]
        work_queue: bool,
        /// Drop messages older than this, e.g. `7d`.
        #[arg(long, value_parser = parse_duration)]
        max_age: Option<Duration>,
        /// Keep at most this many messages.
        #[arg(long)]
        max_msgs: Option<u64>,
        /// Keep at most this many bytes.
        #[arg(long)]
        max_bytes: Option<u64>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Dead letters of a stream.
    List {
        /// The stream whose dead letters to list.
        stream: String,
        /// First dead-letter sequence.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Most to list.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One dead letter with its headers and payload.
    Show {
        /// The stream.
        stream: String,
        /// Its dead-letter sequence (from `dlq list`).
        seq: u64,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Publish a dead letter again to its original subject and remove it.
    Replay {
        /// The stream.
        stream: String,
        /// Its dead-letter sequence (from `dlq list`).
        seq: u64,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct CryptoBenchArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Rounds per operation (each round yields one sample; medians are reported).
    #[arg(long, default_value_t = bench::BenchConfig::default().rounds)]
    rounds: usize,
    /// Operations per round.
    #[arg(long, default_value_t = bench::BenchConfig::default().batch)]
    batch: usize,
    /// Loopback mTLS handshakes to time.
    #[arg(long, default_value_t = bench::BenchConfig::default().handshakes)]
    handshakes: usize,
}

fn parse_wait(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{e}; use a number with a unit, e.g. 0s, 500ms, 5s"))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e}; use a number with a unit, e.g. 90s, 30m, 1h, 365d"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

fn init_logging(format: LogFormat, filter: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid --log-level {filter:?}; try `info` or `warn`"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = init_logging(cli.log_format, &cli.log_level).and_then(|()| run(cli.command));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what failed, with the value, and the cause chain.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Id(IdCommand::New { out, force, json }) => id_new(&out, force, json),
        Command::Id(IdCommand::Show { file, json }) => id_show(&file, json),
        Command::Ca(CaCommand::Init {
            trust_domain,
            out,
            ttl,
            json,
        }) => ca_init(&trust_domain, &out, ttl, json),
        Command::Ca(CaCommand::Issue {
            ca,
            spiffe_id,
            ttl,
            out,
            compat,
            json,
        }) => ca_issue(&ca, &spiffe_id, ttl, &out, compat, json),
        Command::Ca(CaCommand::Verify {
            ca,
            file,
            revoked,
            json,
        }) => ca_verify(&ca, &file, &revoked, json),
        Command::Bench(BenchCommand::Crypto(args)) => bench_crypto(&args),
        Command::Bench(BenchCommand::Bus(args)) => bench_bus(&args),
        Command::Bench(BenchCommand::Dataplane(args)) => agent_cmd::bench_dataplane(&args),
        Command::Bench(BenchCommand::Control(args)) => control_cmd::bench_control(args),
        Command::Bench(BenchCommand::Heal(args)) => heal_cmd::bench_heal(&args),
        Command::Bus(args) => bus(args),
        Command::Sim(args) => sim(&args),
        Command::Incidents(cmd) => incidents_cmd::incidents(cmd),
        Command::Demo(args) => demo_cmd::demo(&args),
        Command::Agent(cmd) => agent_cmd::agent(cmd),
        Command::Control(cmd) => control_cmd::control(cmd),
        Command::Node(cmd) => control_cmd::node(cmd),
        Command::Audit(cmd) => control_cmd::audit(cmd),
        Command::JoinToken(cmd) => control_cmd::join_token(cmd),
        Command::ApiToken(cmd) => control_cmd::api_token(cmd),
        Command::Network(cmd) => control_cmd::network(cmd),
        Command::Topology(args) => control_cmd::topology(args),
        Command::Policy(cmd) => control_cmd::policy(cmd),
        Command::Status(args) => agent_cmd::admin_command("status", &args),
        Command::Peers(args) => agent_cmd::admin_command("peers", &args),
        Command::Routes(args) => agent_cmd::admin_command("routes", &args),
    }
}

fn print_json(value: &serde_json::Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn id_new(out: &Path, force: bool, json: bool) -> Result<()> {
    let id = NodeIdentity::generate().context("cannot generate a node identity")?;
    id.save(out, force)
        .with_context(|| format!("cannot write key file {}", out.display()))?;
    if json {
        print_json(&json!({ "node_id": id.node_id().to_string(), "key_file": out }))
    } else {
        println!("node id  {}", id.node_id());
        println!("key file {} (mode 0600)", out.display());
        Ok(())
    }
}

fn id_show(file: &Path, json: bool) -> Result<()> {
    let id = NodeIdentity::load(file)
        .with_context(|| format!("cannot load key file {}", file.display()))?;
    let public = id.public();
    let signature = sign::ALGORITHM;
    let kem = "X-Wing (X25519+ML-KEM-768)";
    if json {
        print_json(&json!({
            "node_id": id.node_id().to_string(),
            "signature_algorithm": signature,
            "kem_algorithm": kem,
            "fingerprint": public.fingerprint(),
            "key_file_version": weft_crypto::identity::KEY_FILE_VERSION,
        }))
    } else {
        println!("node id      {}", id.node_id());
        println!("signature    {signature}");
        println!("kem          {kem}");
        println!("fingerprint  {}", public.fingerprint());
        Ok(())
    }
}

fn ca_init(trust_domain: &str, out: &Path, ttl: Duration, json: bool) -> Result<()> {
    let td = TrustDomain::new(trust_domain)
        .with_context(|| format!("invalid --trust-domain {trust_domain:?}"))?;
    let ca = CertificateAuthority::init(&td, ttl).context("cannot create the CA")?;
    ca.save(out)
        .with_context(|| format!("cannot write the CA into {}", out.display()))?;
    if json {
        print_json(&json!({
            "trust_domain": td.to_string(),
            "dir": out,
            "roots": ["ML-DSA-65", "ECDSA-P256-SHA256 (compat)"],
            "bundle": out.join(ca::layout::BUNDLE),
        }))
    } else {
        println!("trust domain {td}");
        println!(
            "CA written to {} (ca.key and compat-ca.key are 0600)",
            out.display()
        );
        println!("trust bundle {}", out.join(ca::layout::BUNDLE).display());
        Ok(())
    }
}

fn ca_issue(
    ca_dir: &Path,
    id: &str,
    ttl: Duration,
    out: &Path,
    compat: bool,
    json: bool,
) -> Result<()> {
    let id = SpiffeId::parse(id).with_context(|| format!("invalid --spiffe-id {id:?}"))?;
    let ca = CertificateAuthority::load(ca_dir)
        .with_context(|| format!("cannot load the CA in {}", ca_dir.display()))?;
    let alg = if compat {
        SvidAlgorithm::EcdsaP256
    } else {
        SvidAlgorithm::MlDsa65
    };
    let validity = Validity::starting_now(ttl).context("invalid --ttl")?;
    let svid = ca
        .issue(&id, alg, validity)
        .with_context(|| format!("cannot issue an SVID for {id}"))?;
    svid.save(out, &ca.bundle_pem())
        .with_context(|| format!("cannot write the SVID into {}", out.display()))?;
    let serial = hex(&svid.serial);
    let not_after = rfc3339(svid.not_after);
    if json {
        print_json(&json!({
            "spiffe_id": id.to_string(),
            "algorithm": alg.to_string(),
            "serial": serial,
            "not_after": not_after,
            "dir": out,
        }))
    } else {
        println!("issued     {id}");
        println!("algorithm  {alg}");
        println!("serial     {serial}");
        println!("not after  {not_after}");
        println!(
            "files      {}/{{svid.pem,svid.key,bundle.pem}}",
            out.display()
        );
        Ok(())
    }
}

fn ca_verify(ca_dir: &Path, file: &Path, revoked_hex: &[String], json: bool) -> Result<()> {
    let revoked = RevokedSerials::default();
    for s in revoked_hex {
        let serial = data_encoding::HEXLOWER_PERMISSIVE
            .decode(s.replace(':', "").as_bytes())
            .map_err(|_| anyhow::anyhow!("invalid --revoked {s:?}: expected hex digits"))?;
        revoked.revoke(&serial);
    }
    let verified = ca::verify_svid_file(ca_dir, file, &revoked)
        .with_context(|| format!("{} is not a valid X.509-SVID", file.display()))?;
    let not_after = time::OffsetDateTime::from_unix_timestamp(verified.not_after)
        .map(rfc3339)
        .unwrap_or_else(|_| verified.not_after.to_string());
    if json {
        print_json(&json!({
            "valid": true,
            "spiffe_id": verified.spiffe_id.to_string(),
            "serial": hex(&verified.serial),
            "not_after": not_after,
        }))
    } else {
        println!("valid X.509-SVID for {}", verified.spiffe_id);
        println!("serial     {}", hex(&verified.serial));
        println!("not after  {not_after}");
        Ok(())
    }
}

fn bench_crypto(args: &CryptoBenchArgs) -> Result<()> {
    if args.rounds == 0 || args.batch == 0 || args.handshakes == 0 {
        bail!("--rounds, --batch and --handshakes must be at least 1");
    }
    let cfg = bench::BenchConfig {
        rounds: args.rounds,
        batch: args.batch,
        handshakes: args.handshakes,
    };
    let r = bench::run(cfg).context("crypto bench failed")?;
    if args.json {
        return print_json(&serde_json::to_value(&r)?);
    }
    let us = |ns: f64| format!("{:>10.1} µs", ns / 1000.0);
    println!("operation                      median");
    println!("xwing encapsulate           {}", us(r.xwing_encaps_ns));
    println!("xwing decapsulate           {}", us(r.xwing_decaps_ns));
    println!("ML-DSA-65 sign              {}", us(r.mldsa65_sign_ns));
    println!("Ed25519 sign                {}", us(r.ed25519_sign_ns));
    println!("composite sign              {}", us(r.composite_sign_ns));
    println!("ML-DSA-65 verify            {}", us(r.mldsa65_verify_ns));
    println!("Ed25519 verify              {}", us(r.ed25519_verify_ns));
    println!("composite verify            {}", us(r.composite_verify_ns));
    println!();
    println!(
        "composite sign overhead     {:>10.3}  (target <= 1.10)",
        r.composite_sign_overhead_ratio
    );
    println!(
        "composite verify overhead   {:>10.3}  (target <= 1.10)",
        r.composite_verify_overhead_ratio
    );
    println!(
        "mTLS handshakes/s           {:>10.0}  (X25519MLKEM768, ML-DSA-65, loopback)",
        r.mtls_handshakes_per_sec
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn sim(args: &SimArgs) -> Result<()> {
    use weft_sim::scenario::{self, Profile, Scenario, Topology};
    if !(0.0..=1.0).contains(&args.kill) {
        bail!(
            "invalid --kill {}: must be a fraction between 0 and 1",
            args.kill
        );
    }
    if args.degree <= 0.0 || !args.degree.is_finite() {
        bail!(
            "invalid --degree {}: must be a positive number",
            args.degree
        );
    }
    let topology = match args.topology.as_str() {
        "geometric" => Topology::Geometric,
        "grid" => Topology::Grid,
        "ba" => Topology::BarabasiAlbert,
        file => {
            let text = std::fs::read(file).with_context(|| {
                format!("--topology {file:?} is not geometric, grid or ba, and cannot be read as an edge-list file")
            })?;
            Topology::Given(
                weft_sim::topology::parse_edge_list(&text)
                    .with_context(|| format!("invalid edge list {file}"))?,
            )
        }
    };
    if !matches!(topology, Topology::Given(_)) && args.nodes < 2 {
        bail!(
            "invalid --nodes {}: a mesh needs at least 2 nodes",
            args.nodes
        );
    }
    let sc = Scenario {
        nodes: args.nodes,
        topology,
        degree: args.degree,
        kill: args.kill,
        byzantine: args.byzantine,
        seed: args.seed,
        duration: args.duration,
        profile: match args.profile {
            SimProfile::Default => Profile::Default,
            SimProfile::BabelDefaults => Profile::BabelDefaults,
        },
        ..Scenario::default()
    };
    let show_progress = !args.json;
    let mut last = -1i64;
    if args.heal {
        return heal_cmd::sim_heal(sc, args.waves, args.per_kind, args.json);
    }
    let r = scenario::run(&sc, &mut |f| {
        let pct = (f * 100.0) as i64;
        if show_progress && pct != last {
            last = pct;
            let bar = "#".repeat((pct / 4) as usize);
            eprint!("\r[{bar:<25}] {pct:>3}%");
        }
    })
    .context("simulation failed")?;
    if show_progress {
        eprintln!();
    }
    if args.json {
        return print_json(&serde_json::to_value(&r)?);
    }
    let p = |x: &scenario::Percentiles| {
        format!("p50 {:>7.1}  p99 {:>7.1}  max {:>7.1}", x.p50, x.p99, x.max)
    };
    println!("nodes / links              {} / {}", r.nodes, r.links);
    println!("profile, seed              {}, {}", r.profile, r.seed);
    println!(
        "sim / wall seconds         {:.1} / {:.1}",
        r.sim_seconds, r.wall_seconds
    );
    println!("killed                     {}", r.killed);
    println!("detect ms                  {}", p(&r.detect_ms));
    println!("reconverge ms              {}", p(&r.reconverge_ms));
    println!("unrepaired routes          {}", r.unrepaired_routes);
    println!("loops                      {}", r.loops);
    println!(
        "forged accepted / injected {} / {}",
        r.forged_accepted, r.forged_injected
    );
    println!(
        "unreachable after heal     {} of {} pairs",
        r.unreachable_pairs_after_heal, r.pairs_checked
    );
    println!("delivery ratio             {:.4}", r.delivery_ratio);
    println!(
        "control bytes/node/s       {:.0}",
        r.control_bytes_per_node_per_sec
    );
    println!("churn bytes/node           {:.0}", r.churn_bytes_per_node);
    println!(
        "peak RSS                   {:.1} MiB",
        r.peak_rss_bytes as f64 / 1048576.0
    );
    println!("signature verifications    {}", r.signature_verifications);
    println!("trace hash                 {}", r.trace_hash);
    Ok(())
}

fn bench_bus(args: &BusBenchArgs) -> Result<()> {
    let cfg = weft_bus::bench::BenchConfig {
        dir: args.dir.clone(),
        messages: args.messages,
        publishers: args.publishers,
        nats_url: (!args.no_nats).then(|| args.nats.clone()),
        ..weft_bus::bench::BenchConfig::default()
    };
    let r = weft_bus::bench::run(&cfg).context("bus bench failed")?;
    if args.json {
        return print_json(&serde_json::to_value(&r)?);
    }
    println!(
        "embedded publish msgs/s     {:>12.0}  (1 KiB, durable, group commit)",
        r.embedded_publish_msgs_per_sec
    );
    println!(
        "raw append msgs/s           {:>12.0}  (write + fdatasync, same records and batches)",
        r.raw_append_msgs_per_sec
    );
    println!(
        "embedded / raw append       {:>12.3}  (target >= 0.7)",
        r.embedded_ratio_vs_raw_append
    );
    println!(
        "memory publish msgs/s       {:>12.0}  (target >= 1,000,000)",
        r.memory_publish_msgs_per_sec
    );
    println!(
        "e2e p50 / p99 ms            {:>5.2} / {:<5.2}  (10k msg/s offered, embedded; target p99 <= 5)",
        r.e2e_p50_ms, r.e2e_p99_ms
    );
    match (
        r.nats_publish_msgs_per_sec,
        r.nats_raw_client_msgs_per_sec,
        r.nats_ratio_vs_raw_client,
    ) {
        (Some(ours), Some(bare), Some(ratio)) => {
            println!("nats publish msgs/s         {ours:>12.0}");
            println!("bare nats client msgs/s     {bare:>12.0}");
            println!("nats / bare client          {ratio:>12.3}  (target >= 0.8)");
        }
        _ => println!(
            "nats                        not measured: {}",
            r.nats_skipped.as_deref().unwrap_or("unknown")
        ),
    }
    Ok(())
}

fn bus(args: BusArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let bus = match &args.nats {
            Some(url) => weft_bus::admin::AnyBus::Nats(
                weft_bus::NatsBus::connect(weft_bus::NatsConfig {
                    url: url.clone(),
                    ..weft_bus::NatsConfig::default()
                })
                .await?,
            ),
            None => weft_bus::admin::AnyBus::Embedded(
                weft_bus::EmbeddedBus::open(&args.data_dir, weft_bus::EmbeddedConfig::default())
                    .with_context(|| {
                        format!("cannot open the bus in {}", args.data_dir.display())
                    })?,
            ),
        };
        let result = bus_command(&bus, args.command).await;
        bus.close().await;
        result
    })
}

fn text(payload: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(payload);
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

fn headers_json(h: &weft_bus::Headers) -> serde_json::Value {
    h.iter()
        .map(|(n, v)| json!([n, v]))
        .collect::<Vec<_>>()
        .into()
}

fn dead_letter_json(d: &weft_bus::DeadLetter) -> serde_json::Value {
    json!({
        "dlq_sequence": d.dlq_sequence,
        "time_ns": d.time_ns,
        "stream": d.stream,
        "consumer": d.consumer,
        "original_sequence": d.original_sequence,
        "original_subject": d.original_subject.as_str(),
        "original_msg_id": d.original_msg_id,
        "reason": d.reason,
        "deliveries": d.deliveries,
        "headers": headers_json(&d.headers),
        "payload": String::from_utf8_lossy(&d.payload),
    })
}

async fn bus_command(bus: &weft_bus::admin::AnyBus, command: BusCommand) -> Result<()> {
    use weft_bus::Backend;
    use weft_bus::admin::{self, Settle};
    match command {
        BusCommand::Pub {
            subject,
            payload,
            id,
            headers,
            json,
        } => {
            let mut hs = Vec::with_capacity(headers.len());
            for h in &headers {
                let (n, v) = h
                    .split_once(':')
                    .with_context(|| format!("invalid --header {h:?}: expected NAME:VALUE"))?;
                hs.push((n.trim().to_owned(), v.trim().to_owned()));
            }
            let ack = admin::publish(
                bus,
                &subject,
                bytes::Bytes::from(payload),
                id.as_deref(),
                &hs,
            )
            .await
            .with_context(|| format!("cannot publish to {subject:?}"))?;
            if json {
                return print_json(&serde_json::to_value(&ack)?);
            }
            println!(
                "stream {}  sequence {}{}",
                ack.stream,
                ack.sequence,
                if ack.duplicate { "  (duplicate)" } else { "" }
            );
        }
        BusCommand::Sub {
            stream,
            consumer,
            max,
            wait,
            settle,
            reason,
            json,
        } => {
            let settle = match settle {
                SettleArg::Ack => Settle::Ack,
                SettleArg::None => Settle::None,
                SettleArg::Nak => Settle::Nak,
                SettleArg::Term => Settle::Term(reason),
            };
            let got = admin::subscribe(bus, &stream, &consumer, max, wait, &settle)
                .await
                .with_context(|| format!("cannot consume from stream {stream:?}"))?;
            if json {
                let v: Vec<serde_json::Value> = got
                    .iter()
                    .map(|d| {
                        json!({
                            "stream": d.message.stream,
                            "sequence": d.message.sequence,
                            "subject": d.message.subject.as_str(),
                            "time_ns": d.message.time_ns,
                            "msg_id": d.message.msg_id,
                            "delivered": d.delivered,
                            "headers": headers_json(&d.message.headers),
                            "payload": String::from_utf8_lossy(&d.message.payload),
                        })
                    })
                    .collect();
                return print_json(&v.into());
            }
            println!(
                "{:>8}  {:<32}  {:>9}  payload",
                "seq", "subject", "delivered"
            );
            for d in &got {
                println!(
                    "{:>8}  {:<32}  {:>9}  {}",
                    d.message.sequence,
                    d.message.subject.as_str(),
                    d.delivered,
                    text(&d.message.payload, 60)
                );
            }
        }
        BusCommand::Streams(StreamsCommand::List { json }) => {
            let streams = bus.streams().await.context("cannot list streams")?;
            if json {
                return print_json(&serde_json::to_value(&streams)?);
            }
            println!(
                "{:<24}  {:<28}  {:>10}  {:>12}  {:>8}  {:>8}",
                "stream", "subjects", "messages", "bytes", "first", "last"
            );
            for s in &streams {
                let subjects: Vec<&str> = s.config.subjects.iter().map(|f| f.as_str()).collect();
                println!(
                    "{:<24}  {:<28}  {:>10}  {:>12}  {:>8}  {:>8}",
                    s.config.name,
                    subjects.join(","),
                    s.state.messages,
                    s.state.bytes,
                    s.state.first_seq,
                    s.state.last_seq
                );
            }
        }
        BusCommand::Streams(StreamsCommand::Create {
            name,
            subjects,
            work_queue,
            max_age,
            max_msgs,
            max_bytes,
            json,
        }) => {
            let mut filters = Vec::with_capacity(subjects.len());
            for s in &subjects {
                filters.push(
                    weft_bus::subject::SubjectFilter::new(s)
                        .with_context(|| format!("invalid --subject {s:?}"))?,
                );
            }
            let mut c = weft_bus::StreamConfig::new(&name, filters);
            if work_queue {
                c.retention = weft_bus::Retention::WorkQueue;
            }
            c.max_age = max_age;
            c.max_messages = max_msgs;
            c.max_bytes = max_bytes;
            let info = bus
                .create_stream(c)
                .await
                .with_context(|| format!("cannot create stream {name:?}"))?;
            if json {
                return print_json(&serde_json::to_value(&info)?);
            }
            println!(
                "stream {} created (dead letters in {})",
                info.config.name,
                info.dead_letter_stream.as_deref().unwrap_or("-")
            );
        }
        BusCommand::Dlq(DlqCommand::List {
            stream,
            from,
            limit,
            json,
        }) => {
            let dls = bus
                .dlq_list(&stream, from, limit)
                .await
                .with_context(|| format!("cannot list dead letters of {stream:?}"))?;
            if json {
                let v: Vec<serde_json::Value> = dls.iter().map(dead_letter_json).collect();
                return print_json(&v.into());
            }
            println!(
                "{:>6}  {:>8}  {:<16}  {:>10}  reason",
                "dlq", "orig seq", "consumer", "deliveries"
            );
            for d in &dls {
                println!(
                    "{:>6}  {:>8}  {:<16}  {:>10}  {}",
                    d.dlq_sequence,
                    d.original_sequence,
                    d.consumer,
                    d.deliveries,
                    text(d.reason.as_bytes(), 80)
                );
            }
        }
        BusCommand::Dlq(DlqCommand::Show { stream, seq, json }) => {
            let d = bus
                .dlq_show(&stream, seq)
                .await
                .with_context(|| format!("cannot show dead letter {seq} of {stream:?}"))?;
            if json {
                return print_json(&dead_letter_json(&d));
            }
            println!("dead letter  {} of {}", d.dlq_sequence, d.stream);
            println!("reason       {}", d.reason);
            println!("consumer     {}", d.consumer);
            println!("deliveries   {}", d.deliveries);
            println!(
                "original     sequence {} on {}{}",
                d.original_sequence,
                d.original_subject.as_str(),
                d.original_msg_id
                    .as_deref()
                    .map(|i| format!(" (id {i})"))
                    .unwrap_or_default()
            );
            for (n, v) in d.headers.iter() {
                println!("header       {n}: {v}");
            }
            println!("payload      {}", text(&d.payload, 2000));
        }
        BusCommand::Dlq(DlqCommand::Replay { stream, seq, json }) => {
            let ack = bus
                .dlq_replay(&stream, seq)
                .await
                .with_context(|| format!("cannot replay dead letter {seq} of {stream:?}"))?;
            if json {
                return print_json(&serde_json::to_value(&ack)?);
            }
            println!(
                "replayed to stream {} as sequence {}{}",
                ack.stream,
                ack.sequence,
                if ack.duplicate {
                    "  (duplicate: already replayed)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}
