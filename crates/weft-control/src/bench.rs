//! `weft bench control`: heartbeats from many enrolled agents over
//! keep-alive mTLS connections on loopback, against a trivial handler
//! (`GET /health`) on the same server stack in the same run.
//!
//! For each backend (SQLite in a temporary directory; PostgreSQL in a
//! database made for the run and dropped after it) the bench starts a
//! control plane on 127.0.0.1, enrolls `agents` agents (each with its own
//! identity, SVID and connection), then measures three phases of
//! `seconds` each:
//!
//! 1. **baseline**: every agent sends `GET /health` back to back;
//! 2. **saturation**: every agent sends heartbeats back to back (8 links
//!    each), which gives `heartbeats_per_sec`;
//! 3. **paced**: every agent sends a heartbeat every `agents /
//!    target_rate` seconds; latency is measured from the scheduled send
//!    time (so a slow server cannot hide queueing), which gives
//!    `heartbeat_p99_ms` at that rate; sends still due when the phase
//!    ends are counted as `missed`.
//!
//! `ratio_vs_baseline` is saturated heartbeats per second over saturated
//! health checks per second. The client and the server share the
//! machine's cores: the figures are for the whole loop, not the server
//! alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::Connection as _;
use tokio::task::JoinSet;
use weft_crypto::NodeIdentity;
use weft_crypto::ca::{CertKey, SvidAlgorithm};
use weft_crypto::tls::SvidCredentials;

use crate::api::CreateJoinToken;
use crate::client::{ClientError, Connection, ControlClient, Trust};
use crate::telemetry::{HeartbeatRequest, LinkReport};
use crate::{ControlConfig, Running};

/// Settings of the bench.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Agents, each with its own connection.
    pub agents: usize,
    /// Length of each phase.
    pub seconds: f64,
    /// Heartbeats per second in the paced phase (all agents together).
    pub target_rate: u32,
    /// A PostgreSQL URL to a database the bench may create databases
    /// from (`postgres://postgres@127.0.0.1:5432/test`); `None` skips
    /// PostgreSQL.
    pub postgres_admin_url: Option<String>,
    /// Enrollments at once while setting up.
    pub enroll_concurrency: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            agents: 1000,
            seconds: 5.0,
            target_rate: 10_000,
            postgres_admin_url: Some("postgres://postgres@127.0.0.1:5432/test".into()),
            enroll_concurrency: 8,
        }
    }
}

/// Why the bench failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad settings.
    #[error("{0}")]
    Config(String),
    /// The control plane could not start.
    #[error("control plane: {0}")]
    Control(#[from] crate::ControlError),
    /// A request failed during setup.
    #[error("{what}: {error}")]
    Client {
        /// What was being done.
        what: String,
        /// The error.
        error: ClientError,
    },
    /// PostgreSQL could not be prepared.
    #[error("PostgreSQL at {url}: {error}; start it or pass --no-postgres")]
    Postgres {
        /// The admin URL (password hidden).
        url: String,
        /// The error.
        error: String,
    },
    /// Something else.
    #[error("{0}")]
    Other(String),
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Requests answered 2xx.
    pub ok: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Answered per second.
    pub per_sec: f64,
    /// Median latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, milliseconds.
    pub p99_ms: f64,
    /// Largest latency, milliseconds.
    pub max_ms: f64,
    /// Paced sends never made: the agent was still waiting for earlier
    /// answers when the phase ended (the server was behind).
    pub missed: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
    /// CPU time of the whole process (agents, server, store and bus
    /// together) per request answered, microseconds; for the saturation
    /// phase, until the store has written what was answered. On a shared
    /// machine this is steadier than the rates: the cores this process
    /// had, divided by it, is the rate it would reach alone on them.
    pub cpu_us_per_request: Option<f64>,
}

/// One backend's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BackendReport {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Agents.
    pub agents: usize,
    /// Seconds to enroll them all and open their connections.
    pub setup_seconds: f64,
    /// Saturated heartbeats per second, written through: the lower of
    /// those answered 200 per second and those written to the store per
    /// second (from the phase's start until the store has written all it
    /// answered).
    pub heartbeats_per_sec: f64,
    /// Heartbeats written to the store per second in the saturation
    /// phase, until the queue drained.
    pub written_per_sec: f64,
    /// Heartbeats refused with 503 because the queue was full, in the
    /// saturation phase.
    pub refused_queue_full: u64,
    /// 99th percentile heartbeat latency at the target rate, ms.
    pub heartbeat_p99_ms: f64,
    /// `heartbeats_per_sec` over saturated health checks per second.
    pub ratio_vs_baseline: f64,
    /// The target rate of the paced phase.
    pub target_rate: u32,
    /// The baseline phase.
    pub baseline: Phase,
    /// The saturation phase.
    pub saturated: Phase,
    /// The paced phase.
    pub paced: Phase,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `control`.
    pub suite: String,
    /// Seconds per phase.
    pub seconds: f64,
    /// CPUs the machine has (client and server share them).
    pub cpus: usize,
    /// Figures per backend.
    pub backends: BTreeMap<String, BackendReport>,
}

/// An enrolled agent: its own keep-alive mTLS connection (not a pooled
/// client: see [`ControlClient::connect`]).
struct Agent {
    connection: Connection,
    node_id: String,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[rank.min(sorted.len() - 1)]) / 1000.0
}

fn phase(
    mut latencies: Vec<u32>,
    errors: u64,
    missed: u64,
    first_error: Option<String>,
    secs: f64,
) -> Phase {
    latencies.sort_unstable();
    Phase {
        ok: latencies.len() as u64,
        errors,
        per_sec: latencies.len() as f64 / secs,
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        max_ms: latencies.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
        missed,
        first_error,
        cpu_us_per_request: None,
    }
}

/// Sets the phase's CPU per request from the process's CPU time at its
/// start (nanoseconds).
fn with_cpu(mut phase: Phase, cpu_at_start: Option<u64>) -> Phase {
    if let (Some(start), Some(end)) = (cpu_at_start, crate::sync::process_cpu_ns())
        && phase.ok > 0
    {
        phase.cpu_us_per_request =
            Some(end.saturating_sub(start) as f64 / 1000.0 / phase.ok as f64);
    }
    phase
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// What one agent does in a phase.
#[derive(Clone, Copy)]
enum Load {
    Health,
    Heartbeats,
    Paced(Duration),
}

/// Runs one phase with every agent; gives the agents back with the
/// phase's figures.
async fn drive(agents: Vec<Agent>, load: Load, length: Duration) -> (Vec<Agent>, Phase) {
    let start = Instant::now();
    let end = start + length;
    let count = agents.len();
    let ids: Arc<Vec<String>> = Arc::new(agents.iter().map(|a| a.node_id.clone()).collect());
    let mut tasks = JoinSet::new();
    for (i, mut me) in agents.into_iter().enumerate() {
        let ids = ids.clone();
        tasks.spawn(async move {
            // Eight neighbours, as a degree-8 mesh would have.
            let links: Vec<LinkReport> = (1..=8)
                .map(|k| LinkReport {
                    peer: ids[(i + k) % ids.len()].clone(),
                    up: true,
                    rtt_ms: 0.8 + k as f64 / 10.0,
                    loss: 0.0,
                    cost: 96,
                })
                .collect();
            let mut report = HeartbeatRequest {
                seq: 0,
                cpu_percent: Some(2.0),
                memory_bytes: Some(48 << 20),
                uptime_seconds: Some(60),
                routes: Some(ids.len() as u32),
                links,
                versions: BTreeMap::from([(
                    "agent".to_owned(),
                    env!("CARGO_PKG_VERSION").to_owned(),
                )]),
                endpoint: None,
            };
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut first_error = None;
            // Spread the paced agents over one interval.
            let mut next = match load {
                Load::Paced(every) => Instant::now() + every.mul_f64(i as f64 / ids.len() as f64),
                _ => Instant::now(),
            };
            let mut missed = 0u64;
            loop {
                if Instant::now() >= end {
                    // Paced sends still due when the phase ended were
                    // never made: the server was behind.
                    if let Load::Paced(every) = load
                        && next < end
                    {
                        missed += ((end - next).as_secs_f64() / every.as_secs_f64()).ceil() as u64;
                    }
                    break;
                }
                if let Load::Paced(every) = load {
                    if next >= end {
                        break;
                    }
                    tokio::time::sleep_until(next.into()).await;
                    next += every;
                }
                let scheduled = match load {
                    Load::Paced(every) => next - every,
                    _ => Instant::now(),
                };
                report.seq += 1;
                let result = match load {
                    Load::Health => me.connection.health().await.map(drop),
                    _ => me.connection.heartbeat(&report).await.map(drop),
                };
                match result {
                    Ok(()) => latencies.push(micros(scheduled.elapsed())),
                    Err(e) => {
                        errors += 1;
                        if first_error.is_none() {
                            first_error = Some(e.to_string());
                        }
                    }
                }
            }
            (me, latencies, errors, missed, first_error)
        });
    }
    let mut agents = Vec::with_capacity(count);
    let mut all = Vec::new();
    let mut errors = 0;
    let mut missed = 0;
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        if let Ok((agent, l, e, m, f)) = done {
            agents.push(agent);
            all.extend(l);
            errors += e;
            missed += m;
            if first_error.is_none() {
                first_error = f;
            }
        }
    }
    let phase = phase(
        all,
        errors,
        missed,
        first_error,
        start.elapsed().as_secs_f64(),
    );
    (agents, phase)
}

fn setup_error(what: impl Into<String>) -> impl FnOnce(ClientError) -> BenchError {
    let what = what.into();
    move |error| BenchError::Client { what, error }
}

async fn enroll_agents(running: &Running, config: &BenchConfig) -> Result<Vec<Agent>, BenchError> {
    let info = running.info();
    let token = info
        .admin_token
        .clone()
        .ok_or_else(|| BenchError::Other("the bench's control plane made no admin token".into()))?;
    let trust = Trust::fingerprint(&info.ca_fingerprint).map_err(setup_error("CA fingerprint"))?;
    let admin = ControlClient::new(&info.url, trust.clone(), None, Some(token))
        .map_err(setup_error("admin client"))?;
    let join = admin
        .create_join_token(
            crate::config::DEFAULT_NETWORK,
            &CreateJoinToken {
                uses: u32::try_from(config.agents)
                    .map_err(|_| BenchError::Config("too many agents".into()))?,
                ttl_seconds: 3600,
                tags: vec!["bench".into()],
                auto_approve: true,
                description: "weft bench control".into(),
            },
        )
        .await
        .map_err(setup_error("join token"))?;
    let enroller = ControlClient::new(&info.url, trust.clone(), None, None)
        .map_err(setup_error("enrollment client"))?;
    let bundle = running_bundle(running)?;
    let mut agents = Vec::with_capacity(config.agents);
    let mut tasks = JoinSet::new();
    let mut started = 0;
    while agents.len() < config.agents {
        while started < config.agents && tasks.len() < config.enroll_concurrency.max(1) {
            started += 1;
            let enroller = enroller.clone();
            let token = join.token.clone();
            let url = info.url.clone();
            let bundle = bundle.clone();
            tasks.spawn(async move {
                let id = NodeIdentity::generate().map_err(|e| BenchError::Other(e.to_string()))?;
                let key = CertKey::generate(SvidAlgorithm::MlDsa65)
                    .map_err(|e| BenchError::Other(e.to_string()))?;
                let key_pem = key
                    .to_pkcs8_pem()
                    .map_err(|e| BenchError::Other(e.to_string()))?;
                let CertKey::MlDsa65 { pair, public } = key else {
                    return Err(BenchError::Other("not an ML-DSA-65 key".into()));
                };
                let request = crate::agent::enroll_request(&id, &pair, &public, &token)
                    .map_err(|e| BenchError::Other(e.to_string()))?;
                let answer = enroller
                    .enroll(&request)
                    .await
                    .map_err(setup_error("enrollment"))?;
                let svid = answer
                    .svid_pem
                    .ok_or_else(|| BenchError::Other("an enrolled agent got no SVID".into()))?;
                let creds = SvidCredentials::from_pem(svid.as_bytes(), key_pem.as_bytes())
                    .map_err(|e| BenchError::Other(e.to_string()))?;
                let client = ControlClient::new(&url, Trust::Bundle(bundle), Some(creds), None)
                    .map_err(setup_error("agent client"))?;
                // Open the connection (the mTLS handshake) now, not in a phase.
                let mut connection = client.connect().await.map_err(setup_error("connect"))?;
                connection
                    .health()
                    .await
                    .map_err(setup_error("first request"))?;
                Ok(Agent {
                    connection,
                    node_id: answer.settings.node_id,
                })
            });
        }
        match tasks.join_next().await {
            Some(Ok(agent)) => agents.push(agent?),
            Some(Err(e)) => return Err(BenchError::Other(format!("enrollment task: {e}"))),
            None => break,
        }
    }
    Ok(agents)
}

fn running_bundle(running: &Running) -> Result<Vec<u8>, BenchError> {
    std::fs::read(&running.info().bundle_path)
        .map_err(|e| BenchError::Other(format!("CA bundle: {e}")))
}

async fn run_backend(
    name: &str,
    db: Option<String>,
    config: &BenchConfig,
) -> Result<BackendReport, BenchError> {
    let dir = tempfile::tempdir().map_err(|e| BenchError::Other(format!("temp dir: {e}")))?;
    let mut control = ControlConfig::new(dir.path().join("control"))?;
    control.listen = "127.0.0.1:0"
        .parse()
        .map_err(|_| BenchError::Config("listen address".into()))?;
    control.db = db;
    control.limits.rate_per_second = 1_000_000;
    control.limits.rate_burst = 1_000_000;
    control.limits.max_connections = config.agents + 64;
    let running = crate::start(control).await?;
    let result = async {
        let setup = Instant::now();
        let agents = enroll_agents(&running, config).await?;
        let setup_seconds = setup.elapsed().as_secs_f64();
        let length = Duration::from_secs_f64(config.seconds);
        let cpu = crate::sync::process_cpu_ns();
        let (agents, baseline) = drive(agents, Load::Health, length).await;
        let baseline = with_cpu(baseline, cpu);
        // Heartbeats are answered once queued (write-behind): the phase
        // ends when the store has written all it acknowledged, so the
        // figure is what the store sustains, not what the queue absorbs.
        let metrics = running.metrics().clone();
        let written_before = metrics.heartbeats_written_total();
        let refused_before = metrics.heartbeats_refused("queue_full");
        let started = Instant::now();
        let cpu = crate::sync::process_cpu_ns();
        let (agents, saturated) = drive(agents, Load::Heartbeats, length).await;
        running.flush_heartbeats().await;
        let saturated = with_cpu(saturated, cpu);
        let written = metrics.heartbeats_written_total() - written_before;
        let written_per_sec = written as f64 / started.elapsed().as_secs_f64();
        let refused = metrics.heartbeats_refused("queue_full") - refused_before;
        let heartbeats_per_sec = saturated.per_sec.min(written_per_sec);
        let every = Duration::from_secs_f64(agents.len() as f64 / f64::from(config.target_rate));
        let agents_count = agents.len();
        let cpu = crate::sync::process_cpu_ns();
        let (_, paced) = drive(agents, Load::Paced(every), length).await;
        let paced = with_cpu(paced, cpu);
        Ok::<_, BenchError>(BackendReport {
            backend: name.to_owned(),
            agents: agents_count,
            setup_seconds,
            heartbeats_per_sec,
            heartbeat_p99_ms: paced.p99_ms,
            ratio_vs_baseline: if baseline.per_sec > 0.0 {
                heartbeats_per_sec / baseline.per_sec
            } else {
                0.0
            },
            written_per_sec,
            refused_queue_full: refused,
            target_rate: config.target_rate,
            baseline,
            saturated,
            paced,
        })
    }
    .await;
    running.shutdown().await;
    result
}

/// Runs the bench.
pub async fn run(config: &BenchConfig) -> Result<BenchReport, BenchError> {
    if config.agents == 0 || config.agents > 20_000 {
        return Err(BenchError::Config("agents must be 1 to 20,000".into()));
    }
    if !(0.5..=600.0).contains(&config.seconds) {
        return Err(BenchError::Config("seconds must be 0.5 to 600".into()));
    }
    if config.target_rate == 0 {
        return Err(BenchError::Config(
            "the target rate must be at least 1".into(),
        ));
    }
    let mut backends = BTreeMap::new();
    backends.insert(
        "sqlite".to_owned(),
        run_backend("sqlite", None, config).await?,
    );
    if let Some(admin_url) = &config.postgres_admin_url {
        let redacted = weft_store::Location::Postgres(admin_url.clone()).to_string();
        let pg_error = |e: sqlx::Error| BenchError::Postgres {
            url: redacted.clone(),
            error: e.to_string(),
        };
        let name = format!("weft_bench_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .map_err(pg_error)?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .map_err(pg_error)?;
        let url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => {
                return Err(BenchError::Config(
                    "the PostgreSQL URL must end in /DATABASE".into(),
                ));
            }
        };
        let report = run_backend("postgres", Some(url), config).await;
        let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)
            .await;
        let _ = admin.close().await;
        backends.insert("postgres".to_owned(), report?);
        dropped.map_err(pg_error)?;
    }
    Ok(BenchReport {
        suite: "control".into(),
        seconds: config.seconds,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        backends,
    })
}
