//! `weft control up`, `weft node`, `weft audit`, `weft join-token`,
//! `weft api-token` and `weft agent enroll|claim|renew`: argument parsing
//! and printing over weft-control.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use weft_control::api::{CreateApiToken, CreateJoinToken, NodeView};
use weft_control::client::{ControlClient, Trust};
use weft_control::{ControlConfig, agent};

/// Longest API token file read.
const MAX_TOKEN_FILE: u64 = 4096;

/// `weft control ...`.
#[derive(Debug, Subcommand)]
pub enum ControlCommand {
    /// Start the control plane: HTTPS API, enrollment, CA, audit. The first
    /// start creates the CA, the default network and an admin API token.
    Up(UpArgs),
}

/// Arguments of `weft control up`. Each flag (or its `WEFT_*` variable)
/// overrides the same key of the `--config` file, which overrides the
/// defaults.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// A TOML configuration file (keys as in docs/control.md; unknown keys
    /// are refused).
    #[arg(long, value_name = "FILE", env = "WEFT_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the CA, the SQLite database, the embedded bus and the
    /// admin token file (created 0700 if missing). Default: weft-data.
    #[arg(long, env = "WEFT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The store: sqlite://PATH (relative to --data-dir) or
    /// postgres://USER@HOST/DATABASE. Default: sqlite://weft.db.
    #[arg(long, env = "WEFT_DB")]
    db: Option<String>,
    /// Address to listen on. Default: 127.0.0.1:8443.
    #[arg(long, env = "WEFT_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Also offer classical key exchange (X25519, P-256, P-384) to clients
    /// that offer no post-quantum hybrid; every such handshake is logged
    /// and counted (weft_control_classical_kex_handshakes_total).
    #[arg(long, env = "WEFT_ALLOW_CLASSICAL_KEX")]
    allow_classical_kex: bool,
    /// Trust domain of the network (used when it is created). Default:
    /// weft.internal.
    #[arg(long, env = "WEFT_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// The network to serve (made on first start if missing; a network
    /// made with `weft network create` is restored from the database).
    /// Default: default.
    #[arg(long, env = "WEFT_NETWORK")]
    network: Option<String>,
    /// Host names and addresses in the server's certificates (repeat;
    /// default localhost, 127.0.0.1, ::1 and the listening address).
    #[arg(long = "server-name", value_name = "NAME")]
    server_names: Vec<String>,
    /// NATS URL of the bus (default: the embedded bus in DATA_DIR/bus).
    #[arg(long, env = "WEFT_NATS")]
    nats: Option<String>,
    /// Lifetime of node SVIDs (nodes renew at half). Default: 1h.
    #[arg(long, value_parser = super::parse_duration, env = "WEFT_SVID_TTL")]
    svid_ttl: Option<Duration>,
}

impl UpArgs {
    /// The settings: defaults, then the file, then flags and variables.
    fn config(self) -> Result<ControlConfig> {
        let file = match &self.config {
            Some(path) => weft_control::config::ConfigFile::load(path)?,
            None => weft_control::config::ConfigFile::default(),
        };
        let mut config = file.to_config()?;
        if let Some(dir) = self.data_dir {
            config.data_dir = dir;
        }
        if let Some(db) = self.db {
            config.db = Some(db);
        }
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if self.allow_classical_kex {
            config.allow_classical_kex = true;
        }
        if let Some(td) = self.trust_domain {
            config.trust_domain = td
                .parse()
                .with_context(|| format!("--trust-domain {td:?}"))?;
        }
        if let Some(name) = self.network {
            config.network = weft_store::NetworkName::new(&name)
                .with_context(|| format!("--network {name:?}"))?;
        }
        if !self.server_names.is_empty() {
            config.server_names = self.server_names;
        }
        if let Some(nats) = self.nats {
            config.nats = Some(nats);
        }
        if let Some(ttl) = self.svid_ttl {
            config.svid_ttl = ttl;
        }
        config.check()?;
        Ok(config)
    }
}

/// How operator commands reach the control plane.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The control plane's URL.
    #[arg(long, default_value = "https://127.0.0.1:8443", env = "WEFT_CONTROL")]
    control: String,
    /// API token (prefer --api-token-file or WEFT_API_TOKEN: a command line
    /// is visible to other users).
    #[arg(long, env = "WEFT_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// File holding the API token (must be 0600), e.g. DATA_DIR/admin.token.
    #[arg(long, value_name = "FILE", env = "WEFT_API_TOKEN_FILE")]
    api_token_file: Option<PathBuf>,
    #[command(flatten)]
    trust: TrustArgs,
}

/// How a client trusts the control plane.
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// The control plane's CA bundle (DATA_DIR/ca/bundle.pem).
    #[arg(
        long,
        value_name = "FILE",
        env = "WEFT_CA_BUNDLE",
        conflicts_with = "ca_fingerprint"
    )]
    ca_bundle: Option<PathBuf>,
    /// SHA-256 of the control plane's ML-DSA-65 CA root, as printed by
    /// `weft control up` (sha256:<64 hex digits>).
    #[arg(long, value_name = "SHA256", env = "WEFT_CA_FINGERPRINT")]
    ca_fingerprint: Option<String>,
}

impl TrustArgs {
    fn trust(&self) -> Result<Trust> {
        match (&self.ca_bundle, &self.ca_fingerprint) {
            (Some(path), _) => Ok(Trust::Bundle(
                weft_control::pki::read_bundle_file(path)
                    .with_context(|| format!("CA bundle {}", path.display()))?,
            )),
            (None, Some(fp)) => Ok(Trust::fingerprint(fp)?),
            (None, None) => bail!(
                "say how to trust the control plane: --ca-bundle FILE (its DATA_DIR/ca/bundle.pem) or --ca-fingerprint sha256:... (printed by weft control up)"
            ),
        }
    }
}

impl ClientArgs {
    fn client(&self) -> Result<ControlClient> {
        let token = match (&self.api_token, &self.api_token_file) {
            (Some(t), _) => Some(t.trim().to_owned()),
            (None, Some(path)) => {
                let bytes = weft_crypto::files::read_secret_file(path, MAX_TOKEN_FILE)
                    .with_context(|| format!("API token file {}", path.display()))?;
                Some(
                    String::from_utf8(bytes)
                        .with_context(|| format!("{} is not text", path.display()))?
                        .trim()
                        .to_owned(),
                )
            }
            (None, None) => None,
        };
        Ok(ControlClient::new(
            &self.control,
            self.trust.trust()?,
            None,
            token,
        )?)
    }
}

/// `weft node ...`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes (table, or --json).
    List {
        /// Only pending, approved or revoked nodes.
        #[arg(long)]
        status: Option<String>,
        /// Only nodes with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Page size (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Continue after this cursor (printed at the end of a full page).
        #[arg(long)]
        cursor: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show one node.
    Show {
        /// The node id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Approve a pending node; it then claims its SVID (weft agent claim).
    Approve {
        /// The node id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a node: bumps the revocation epoch and publishes the signed list.
    Revoke {
        /// The node id.
        id: String,
        /// Why (recorded in the revocation list and the audit trail).
        #[arg(long, default_value = "")]
        reason: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `weft audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit records, newest first.
    List {
        /// Only this actor (api-token:<id>, a SPIFFE ID, join-token:<id>).
        #[arg(long)]
        actor: Option<String>,
        /// Only this action (node.revoke, node.enroll, ...).
        #[arg(long)]
        action: Option<String>,
        /// Only success, denied or failed.
        #[arg(long)]
        result: Option<String>,
        /// At or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Page size (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after this cursor.
        #[arg(long)]
        cursor: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `weft join-token ...`.
#[derive(Debug, Subcommand)]
pub enum JoinTokenCommand {
    /// Make a join token; it is printed once.
    Create {
        /// The network.
        #[arg(long, default_value = weft_control::config::DEFAULT_NETWORK)]
        network: String,
        /// How many nodes it may enroll.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it is valid.
        #[arg(long, default_value = "1h", value_parser = super::parse_duration)]
        ttl: Duration,
        /// A tag for the nodes it enrolls (repeat).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Approve its nodes at once (else they wait for weft node approve).
        #[arg(long)]
        auto_approve: bool,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List a network's join tokens (no secrets).
    List {
        /// The network.
        #[arg(long, default_value = weft_control::config::DEFAULT_NETWORK)]
        network: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `weft api-token ...`.
#[derive(Debug, Subcommand)]
pub enum ApiTokenCommand {
    /// Make an API token for an operator; it is printed once.
    Create {
        /// A label.
        #[arg(long)]
        name: String,
        /// admin, operator or viewer.
        #[arg(long)]
        role: String,
        /// How long it is valid (default: until revoked).
        #[arg(long, value_parser = super::parse_duration)]
        ttl: Option<Duration>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List API tokens (no secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke an API token.
    Revoke {
        /// The token id (UUID).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `weft network ...`.
#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Make a network (a trust domain) with its own CA; serve it with
    /// `weft control up --network NAME` and a copy of master.key.
    Create {
        /// Its name (1 to 63 of a-z 0-9 -).
        name: String,
        /// Its SPIFFE trust domain, e.g. lab.example.net.
        #[arg(long)]
        trust_domain: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List networks.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Arguments of `weft agent enroll`.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The control plane's URL.
    #[arg(long, env = "WEFT_CONTROL")]
    control: String,
    /// The join token.
    #[arg(long, env = "WEFT_JOIN_TOKEN", hide_env_values = true)]
    token: String,
    /// The agent's data directory (identity, SVID, bundle).
    #[arg(long, default_value = "weft-agent", env = "WEFT_AGENT_DATA_DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    trust: TrustArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `weft agent claim|renew`.
#[derive(Debug, Args)]
pub struct AgentDirArgs {
    /// The agent's data directory.
    #[arg(long, default_value = "weft-agent", env = "WEFT_AGENT_DATA_DIR")]
    data_dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn print_json(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs `weft control ...`.
pub fn control(command: ControlCommand) -> Result<()> {
    let ControlCommand::Up(args) = command;
    let config = args.config()?;
    runtime()?.block_on(async {
        let running = weft_control::start(config)
            .await
            .context("cannot start the control plane")?;
        let info = running.info();
        println!("weft control plane listening on {}", info.url);
        println!(
            "  network {}, trust domain {}, SPIFFE ID {}",
            info.network, info.trust_domain, info.control_id
        );
        println!("  store {}; bus {}", info.db, info.bus);
        println!("  CA bundle:      {}", info.bundle_path.display());
        println!("  CA fingerprint: {}", info.ca_fingerprint);
        if info.allow_classical_kex {
            println!(
                "  key exchange: X25519MLKEM768, and classical groups for clients without it (logged and counted)"
            );
        } else {
            println!("  key exchange: X25519MLKEM768 only");
        }
        if let (Some(token), Some(file)) = (&info.admin_token, &info.admin_token_file) {
            println!();
            println!(
                "First start: the admin API token (shown once; also in {}, mode 0600):",
                file.display()
            );
            println!("  {token}");
        }
        running.run_until(shutdown_signal()).await;
        Ok(())
    })
}

fn node_table(nodes: &[NodeView]) {
    println!(
        "{:<52}  {:<8}  {:<27}  {:<27}  TAGS",
        "NODE", "STATUS", "ENROLLED", "SVID EXPIRES"
    );
    for n in nodes {
        println!(
            "{:<52}  {:<8}  {:<27}  {:<27}  {}",
            n.node_id,
            n.status,
            n.enrolled_at,
            n.svid_not_after.as_deref().unwrap_or("-"),
            n.tags.join(",")
        );
    }
}

fn node_details(n: &NodeView) {
    println!("node         {}", n.node_id);
    println!("network      {}", n.network);
    println!("SPIFFE ID    {}", n.spiffe_id);
    println!("status       {} (since {})", n.status, n.status_changed_at);
    println!("tags         {}", n.tags.join(", "));
    println!("enrolled     {}", n.enrolled_at);
    println!(
        "SVID         {}",
        match (&n.svid_serial, &n.svid_not_after) {
            (Some(s), Some(t)) => format!("serial {s}, expires {t}"),
            _ => "none".into(),
        }
    );
    println!("last seen    {}", n.last_seen.as_deref().unwrap_or("never"));
}

/// Runs `weft node ...`.
pub fn node(command: NodeCommand) -> Result<()> {
    runtime()?.block_on(async {
        match command {
            NodeCommand::List {
                status,
                tag,
                limit,
                cursor,
                json,
                client,
            } => {
                let page = client
                    .client()?
                    .list_nodes(status, tag, Some(limit), cursor)
                    .await?;
                if json {
                    return print_json(&page);
                }
                node_table(&page.items);
                if let Some(next) = page.next {
                    println!("(more: --cursor {next})");
                }
            }
            NodeCommand::Show { id, json, client } => {
                let node = client.client()?.get_node(&id).await?;
                if json {
                    return print_json(&node);
                }
                node_details(&node);
            }
            NodeCommand::Approve { id, json, client } => {
                let node = client.client()?.approve_node(&id).await?;
                if json {
                    return print_json(&node);
                }
                println!(
                    "node {} is {}; it can now claim its SVID (weft agent claim)",
                    node.node_id, node.status
                );
            }
            NodeCommand::Revoke {
                id,
                reason,
                json,
                client,
            } => {
                let done = client.client()?.revoke_node(&id, &reason).await?;
                if json {
                    return print_json(&done);
                }
                println!(
                    "node {} revoked; revocation epoch {}",
                    done.node.node_id, done.epoch
                );
            }
        }
        Ok(())
    })
}

/// Runs `weft audit ...`.
pub fn audit(command: AuditCommand) -> Result<()> {
    let AuditCommand::List {
        actor,
        action,
        result,
        since,
        until,
        limit,
        cursor,
        json,
        client,
    } = command;
    runtime()?.block_on(async {
        let page = client
            .client()?
            .audit(&[
                ("actor", actor),
                ("action", action),
                ("result", result),
                ("since", since),
                ("until", until),
                ("limit", Some(limit.to_string())),
                ("cursor", cursor),
            ])
            .await?;
        if json {
            return print_json(&page);
        }
        println!(
            "{:<30}  {:<18}  {:<8}  {:<44}  {:<40}  DETAIL",
            "AT", "ACTION", "RESULT", "ACTOR", "TARGET"
        );
        for r in &page.items {
            let detail: String = r.detail.chars().take(80).collect();
            println!(
                "{:<30}  {:<18}  {:<8}  {:<44}  {:<40}  {detail}",
                r.at,
                r.action,
                r.result,
                r.actor,
                r.target.as_deref().unwrap_or("-")
            );
        }
        if let Some(next) = page.next {
            println!("(more: --cursor {next})");
        }
        Ok(())
    })
}

/// Runs `weft join-token ...`.
pub fn join_token(command: JoinTokenCommand) -> Result<()> {
    runtime()?.block_on(async {
        match command {
            JoinTokenCommand::Create {
                network,
                uses,
                ttl,
                tags,
                auto_approve,
                description,
                json,
                client,
            } => {
                let made = client
                    .client()?
                    .create_join_token(
                        &network,
                        &CreateJoinToken {
                            uses,
                            ttl_seconds: ttl.as_secs(),
                            tags,
                            auto_approve,
                            description,
                        },
                    )
                    .await?;
                if json {
                    return print_json(&made);
                }
                let t = &made.join_token;
                println!(
                    "join token {} for network {}: {} use(s), expires {}, {}",
                    t.id,
                    t.network,
                    t.max_uses,
                    t.expires_at,
                    if t.auto_approve {
                        "nodes approved at once"
                    } else {
                        "nodes wait for approval"
                    }
                );
                println!("(shown once) {}", made.token);
            }
            JoinTokenCommand::List {
                network,
                json,
                client,
            } => {
                let page = client
                    .client()?
                    .list_join_tokens(&network, Some(1000), None)
                    .await?;
                if json {
                    return print_json(&page);
                }
                println!(
                    "{:<36}  {:>9}  {:<25}  {:<5}  TAGS",
                    "ID", "USES LEFT", "EXPIRES", "AUTO"
                );
                for t in &page.items {
                    println!(
                        "{:<36}  {:>4}/{:<4}  {:<25}  {:<5}  {}",
                        t.id,
                        t.uses_left,
                        t.max_uses,
                        t.expires_at,
                        t.auto_approve,
                        t.tags.join(",")
                    );
                }
            }
        }
        Ok(())
    })
}

/// Runs `weft network ...`.
pub fn network(command: NetworkCommand) -> Result<()> {
    runtime()?.block_on(async {
        match command {
            NetworkCommand::Create {
                name,
                trust_domain,
                json,
                client,
            } => {
                let made = client
                    .client()?
                    .create_network(&weft_control::api::CreateNetwork { name, trust_domain })
                    .await?;
                if json {
                    return print_json(&made);
                }
                println!(
                    "network {} (trust domain {}), CA fingerprint {}",
                    made.name,
                    made.trust_domain,
                    made.ca_fingerprint.as_deref().unwrap_or("-")
                );
                println!(
                    "serve it with: weft control up --network {} --data-dir DIR (DIR holding a copy of this control plane's master.key)",
                    made.name
                );
            }
            NetworkCommand::List { json, client } => {
                let client = client.client()?;
                let mut items = Vec::new();
                let mut cursor = None;
                loop {
                    let page = client.list_networks(Some(1000), cursor).await?;
                    items.extend(page.items);
                    match page.next {
                        Some(c) => cursor = Some(c),
                        None => break,
                    }
                }
                if json {
                    return print_json(&items);
                }
                println!(
                    "{:<24}  {:<32}  {:<6}  {:<7}  CREATED",
                    "NAME", "TRUST DOMAIN", "SERVED", "EPOCH"
                );
                for n in &items {
                    println!(
                        "{:<24}  {:<32}  {:<6}  {:<7}  {}",
                        n.name,
                        n.trust_domain,
                        if n.served { "yes" } else { "no" },
                        n.revocation_epoch,
                        n.created_at
                    );
                }
            }
        }
        Ok(())
    })
}

/// Runs `weft api-token ...`.
pub fn api_token(command: ApiTokenCommand) -> Result<()> {
    runtime()?.block_on(async {
        match command {
            ApiTokenCommand::Create {
                name,
                role,
                ttl,
                json,
                client,
            } => {
                let made = client
                    .client()?
                    .create_api_token(&CreateApiToken {
                        name,
                        role,
                        ttl_seconds: ttl.map(|t| t.as_secs()),
                    })
                    .await?;
                if json {
                    return print_json(&made);
                }
                println!(
                    "API token {} ({}, role {})",
                    made.api_token.id, made.api_token.name, made.api_token.role
                );
                println!("(shown once) {}", made.token);
            }
            ApiTokenCommand::List { json, client } => {
                let page = client.client()?.list_api_tokens(Some(1000), None).await?;
                if json {
                    return print_json(&page);
                }
                println!(
                    "{:<36}  {:<8}  {:<25}  {:<25}  NAME",
                    "ID", "ROLE", "CREATED", "REVOKED"
                );
                for t in &page.items {
                    println!(
                        "{:<36}  {:<8}  {:<25}  {:<25}  {}",
                        t.id,
                        t.role,
                        t.created_at,
                        t.revoked_at.as_deref().unwrap_or("-"),
                        t.name
                    );
                }
            }
            ApiTokenCommand::Revoke { id, client } => {
                let t = client.client()?.revoke_api_token(&id).await?;
                println!("API token {} revoked", t.id);
            }
        }
        Ok(())
    })
}

fn print_agent(state: &agent::AgentState, dir: &Path, json: bool) -> Result<()> {
    if json {
        return print_json(state);
    }
    println!(
        "node {} ({}) is {} in network {}",
        state.settings.node_id, state.settings.spiffe_id, state.status, state.settings.network
    );
    match &state.svid_not_after {
        Some(t) => println!(
            "  SVID in {} until {t}; renew before then (weft agent renew)",
            dir.display()
        ),
        None => println!(
            "  no SVID yet: an operator must approve it (weft node approve {}), then run weft agent claim --data-dir {}",
            state.settings.node_id,
            dir.display()
        ),
    }
    Ok(())
}

/// Runs `weft agent enroll`.
pub fn agent_enroll(args: EnrollArgs) -> Result<()> {
    let trust = args.trust.trust()?;
    runtime()?.block_on(async {
        let state = agent::enroll(&args.control, &args.token, trust, &args.data_dir).await?;
        print_agent(&state, &args.data_dir, args.json)
    })
}

/// Runs `weft agent claim`.
pub fn agent_claim(args: AgentDirArgs) -> Result<()> {
    runtime()?.block_on(async {
        let state = agent::claim(&args.data_dir).await?;
        print_agent(&state, &args.data_dir, args.json)
    })
}

/// Runs `weft agent renew`.
pub fn agent_renew(args: AgentDirArgs) -> Result<()> {
    runtime()?.block_on(async {
        let state = agent::renew(&args.data_dir).await?;
        print_agent(&state, &args.data_dir, args.json)
    })
}

/// Arguments of `weft topology`.
#[derive(Debug, Args)]
pub struct TopologyArgs {
    /// Print GraphViz dot (pipe to `dot -Tsvg`).
    #[arg(long, conflicts_with = "json")]
    dot: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// `weft policy ...`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Store a policy document (JSON) as the network's next version.
    Set {
        /// The document: {"default": "deny", "rules": [...]} (see docs/control.md).
        file: PathBuf,
        /// The version this edit is based on (0: none yet); refused if
        /// someone stored another version since.
        #[arg(long)]
        base_version: Option<u32>,
        /// The network.
        #[arg(long, default_value = weft_control::config::DEFAULT_NETWORK)]
        network: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a policy version (default: the latest).
    Show {
        /// The version (default: the latest).
        #[arg(value_name = "VERSION")]
        number: Option<u32>,
        /// The network.
        #[arg(long, default_value = weft_control::config::DEFAULT_NETWORK)]
        network: String,
        /// Print JSON (the whole record; default: the document).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List policy versions, newest first.
    List {
        /// The network.
        #[arg(long, default_value = weft_control::config::DEFAULT_NETWORK)]
        network: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Runs `weft topology`.
pub fn topology(args: TopologyArgs) -> Result<()> {
    runtime()?.block_on(async {
        let client = args.client.client()?;
        if args.dot {
            print!("{}", client.topology_dot().await?);
            return Ok(());
        }
        let t = client.topology().await?;
        if args.json {
            return print_json(&t);
        }
        println!("network {} at {}", t.network, t.at);
        println!(
            "{:<52}  {:<8}  {:<8}  LAST SEEN",
            "NODE", "STATUS", "HEALTH"
        );
        for n in &t.nodes {
            println!(
                "{:<52}  {:<8}  {:<8}  {}",
                n.node_id,
                n.status,
                n.health,
                n.last_seen.as_deref().unwrap_or("never")
            );
        }
        println!();
        println!(
            "{:<52}  {:<52}  {:<8}  {:>9}  {:>6}  COST",
            "FROM", "TO", "HEALTH", "RTT ms", "LOSS %"
        );
        for l in &t.links {
            println!(
                "{:<52}  {:<52}  {:<8}  {:>9.2}  {:>6.1}  {}",
                l.from,
                l.to,
                l.health,
                l.rtt_ms,
                l.loss * 100.0,
                l.cost
            );
        }
        Ok(())
    })
}

/// Largest policy file read.
const MAX_POLICY_FILE: u64 = 256 * 1024;

/// Runs `weft policy ...`.
pub fn policy(command: PolicyCommand) -> Result<()> {
    runtime()?.block_on(async {
        match command {
            PolicyCommand::Set {
                file,
                base_version,
                network,
                json,
                client,
            } => {
                let bytes = weft_crypto::files::read_public_file(&file, MAX_POLICY_FILE)
                    .with_context(|| format!("policy file {}", file.display()))?;
                let document: weft_control::policy::PolicyDocument = serde_json::from_slice(&bytes)
                    .with_context(|| format!("policy file {} is not a policy", file.display()))?;
                let stored = client
                    .client()?
                    .put_policy(
                        &network,
                        &weft_control::policy::PutPolicy {
                            document,
                            base_version,
                        },
                    )
                    .await?;
                if json {
                    return print_json(&stored);
                }
                println!(
                    "policy version {} of network {} stored ({} rule(s), default {:?})",
                    stored.version,
                    stored.network,
                    stored.document.rules.len(),
                    stored.document.default
                );
            }
            PolicyCommand::Show {
                number,
                network,
                json,
                client,
            } => {
                let p = client.client()?.get_policy(&network, number).await?;
                if json {
                    return print_json(&p);
                }
                println!(
                    "# version {} by {} at {}",
                    p.version, p.author, p.created_at
                );
                print_json(&p.document)?;
            }
            PolicyCommand::List {
                network,
                json,
                client,
            } => {
                let page = client
                    .client()?
                    .list_policies(&network, Some(1000), None)
                    .await?;
                if json {
                    return print_json(&page);
                }
                println!(
                    "{:>7}  {:<30}  {:>8}  AUTHOR",
                    "VERSION", "CREATED", "BYTES"
                );
                for p in &page.items {
                    println!(
                        "{:>7}  {:<30}  {:>8}  {}",
                        p.version, p.created_at, p.size, p.author
                    );
                }
            }
        }
        Ok(())
    })
}

/// Arguments of `weft bench control`.
#[derive(Debug, Args)]
pub struct ControlBenchArgs {
    /// Agents, each enrolled with its own identity and keep-alive mTLS connection.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Seconds per phase (baseline, saturation, paced).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Heartbeats per second of the paced phase (all agents together).
    #[arg(long, default_value_t = 10_000)]
    target_rate: u32,
    /// A PostgreSQL database to create the bench's database from.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/test",
        env = "WEFT_BENCH_POSTGRES"
    )]
    postgres: String,
    /// Measure SQLite only.
    #[arg(long)]
    no_postgres: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `weft bench control`.
pub fn bench_control(args: ControlBenchArgs) -> Result<()> {
    let config = weft_control::bench::BenchConfig {
        agents: args.agents,
        seconds: args.seconds,
        target_rate: args.target_rate,
        postgres_admin_url: (!args.no_postgres).then_some(args.postgres),
        ..weft_control::bench::BenchConfig::default()
    };
    let report = runtime()?
        .block_on(weft_control::bench::run(&config))
        .context("control bench failed")?;
    if args.json {
        return print_json(&report);
    }
    println!(
        "weft bench control: {} s per phase, {} CPUs shared by the agents and the server",
        report.seconds, report.cpus
    );
    for (name, b) in &report.backends {
        println!();
        println!(
            "{name}: {} agents on keep-alive mTLS connections (setup {:.1} s)",
            b.agents, b.setup_seconds
        );
        println!(
            "  {:<34} {:>10} {:>9} {:>9} {:>9} {:>7} {:>8} {:>11}",
            "phase", "per sec", "p50 ms", "p99 ms", "max ms", "errors", "missed", "CPU us/req"
        );
        for (label, p) in [
            ("baseline GET /health (saturated)", &b.baseline),
            ("heartbeats (saturated)", &b.saturated),
            ("heartbeats (paced at target)", &b.paced),
        ] {
            let cpu = p
                .cpu_us_per_request
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.0}"));
            println!(
                "  {:<34} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>8} {:>11}",
                label, p.per_sec, p.p50_ms, p.p99_ms, p.max_ms, p.errors, p.missed, cpu
            );
            if let Some(e) = &p.first_error {
                println!("    first error: {e}");
            }
        }
        println!(
            "  written to the store {:.0}/s; refused (queue full) {}",
            b.written_per_sec, b.refused_queue_full
        );
        println!(
            "  heartbeats_per_sec {:.0}, heartbeat_p99_ms {:.2} at {}/s, ratio_vs_baseline {:.3}",
            b.heartbeats_per_sec, b.heartbeat_p99_ms, b.target_rate, b.ratio_vs_baseline
        );
    }
    Ok(())
}
