//! weft's control plane: how operators and agents meet.
//!
//! [`start`] runs `weft control up`: it opens the store (SQLite in the
//! data directory, or PostgreSQL), creates on first start the trust-domain
//! CA, the default network and a one-time admin API token, opens the bus
//! (embedded in the data directory, or NATS), issues the server's own
//! certificates and serves the HTTPS API until told to stop.
//!
//! - [`app`]: the route table with each route's access rule, the guard
//!   (rate limits, authentication, roles, audit) and the error fallbacks.
//! - [`handlers`]: the routes; [`openapi`]: the OpenAPI 3.1 document.
//! - [`tls`]: TLS 1.3, X25519MLKEM768 only unless classical key exchange
//!   is allowed; the ML-DSA-65 or ECDSA certificate by what the client can
//!   verify; optional client SVIDs.
//! - [`server`]: the accept loop and graceful shutdown.
//! - [`pki`]: the CA, the revocation authority key, the master key.
//! - [`proof`]: what agents sign to enroll and claim.
//! - [`client`]: an HTTPS client of this API (the CLI's and the tests').
//! - [`agent`]: the agent side of enrollment, claims and renewal.
//! - [`telemetry`]: heartbeats and the topology; [`policy`]: ACL policies.
//! - [`heal`]: the self-healing loop (`[heal] enabled = true`): telemetry
//!   from the bus into `weft-heal`, actions through agents' admin sockets
//!   and revocation here, incidents into the store.
//! - [`bench`]: `weft bench control`.
//! - [`problem`]: RFC 9457 problem details.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod app;
pub mod bench;
pub mod client;
pub mod config;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod heal;
pub mod metrics;
pub mod openapi;
pub mod pki;
pub mod policy;
pub mod problem;
pub mod proof;
pub mod server;
pub mod sync;
pub mod telemetry;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weft_bus::admin::AnyBus;
use weft_bus::envelope::{DEFAULT_MAX_ENVELOPE_BYTES, EventType};
use weft_bus::events::EventBus;
use weft_bus::schema::SchemaRegistry;
use weft_bus::subject::SubjectFilter;
use weft_bus::{Backend, BusError, EmbeddedBus, EmbeddedConfig, NatsBus, NatsConfig, StreamConfig};
use weft_crypto::svid::{RevokedSerials, SvidVerifier};
use weft_crypto::tls::{SpiffePeerVerifier, any_in_trust_domain};
use weft_store::{AnyStore, Location, Store, StoreConfig};

pub use config::{ControlConfig, Limits};
pub use error::ControlError;

use crate::app::{
    AUDIT_EVENT, AUDIT_STREAM, AUDIT_SUBJECTS, AppState, Limiters, POLICY_EVENT, POLICY_STREAM,
    POLICY_SUBJECTS, REVOCATION_EVENT, REVOCATION_STREAM, REVOCATION_SUBJECTS, TELEMETRY_EVENT,
    TELEMETRY_STREAM, TELEMETRY_SUBJECTS,
};
use crate::metrics::Metrics;
use crate::pki::Pki;
use crate::tls::CertResolver;

/// The file in the data directory that holds the first admin token (0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The embedded bus's directory inside the data directory.
pub const BUS_DIR: &str = "bus";

/// What a started control plane tells its operator.
#[derive(Debug, Clone)]
pub struct Started {
    /// The address it listens on.
    pub local_addr: SocketAddr,
    /// `https://` URL of the API.
    pub url: String,
    /// SHA-256 of the ML-DSA-65 CA root, for `--ca-fingerprint`.
    pub ca_fingerprint: String,
    /// The CA bundle file, for `--ca-bundle`.
    pub bundle_path: PathBuf,
    /// The network served.
    pub network: String,
    /// Its trust domain.
    pub trust_domain: String,
    /// The control plane's SPIFFE ID.
    pub control_id: String,
    /// The store (password hidden).
    pub db: String,
    /// The bus (`embedded DIR` or the NATS URL).
    pub bus: String,
    /// Whether the CA was created by this start.
    pub created_ca: bool,
    /// The first admin API token, on the first start of a database only.
    pub admin_token: Option<String>,
    /// Where that token was written (0600).
    pub admin_token_file: Option<PathBuf>,
    /// Whether classical key exchange is offered.
    pub allow_classical_kex: bool,
}

/// A running control plane.
#[derive(Debug)]
pub struct Running {
    info: Started,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    state: Arc<AppState>,
}

impl Running {
    /// What was started.
    pub fn info(&self) -> &Started {
        &self.info
    }

    /// Waits until every heartbeat answered so far is written to the
    /// store (heartbeats are written behind their answers).
    pub async fn flush_heartbeats(&self) {
        self.state.heartbeats.flush().await;
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// The store.
    pub fn store(&self) -> &AnyStore {
        &self.state.store
    }

    /// The bus.
    pub fn bus(&self) -> &AnyBus {
        self.state.events.backend()
    }

    /// Stops accepting, lets in-flight requests finish, closes the bus and
    /// the store.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Runs until `signal` completes, then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        tokio::select! {
            _ = signal => {}
            _ = stopped(&self.stop) => {}
        }
        tracing::info!("shutting down");
        self.shutdown().await;
    }
}

async fn stopped(stop: &watch::Sender<bool>) {
    let mut rx = stop.subscribe();
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn make_dir(dir: &Path) -> Result<(), ControlError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(ControlError::io("cannot create directory", dir.display()))
}

async fn ensure_stream(
    bus: &AnyBus,
    name: &str,
    subjects: &str,
    max_age: Option<Duration>,
    max_bytes: Option<u64>,
) -> Result<(), ControlError> {
    match bus.stream_info(name).await {
        Ok(_) => return Ok(()),
        Err(BusError::StreamNotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let mut config = StreamConfig::new(
        name,
        vec![
            SubjectFilter::new(subjects)
                .map_err(|e| ControlError::config("bus subjects", e.to_string()))?,
        ],
    );
    config.max_age = max_age;
    config.max_bytes = max_bytes;
    match bus.create_stream(config).await {
        Ok(_) | Err(BusError::StreamExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn schemas() -> Result<SchemaRegistry, ControlError> {
    let mut registry = SchemaRegistry::new();
    let bad =
        |e: weft_bus::envelope::EnvelopeError| ControlError::config("event type", e.to_string());
    let schema =
        |e: weft_bus::schema::SchemaError| ControlError::config("event schema", e.to_string());
    registry
        .register(
            &EventType::new(AUDIT_EVENT).map_err(bad)?,
            1,
            json!({
                "type": "object",
                "required": ["id", "at", "actor", "action", "result", "detail"],
                "properties": {
                    "id": {"type": "string"},
                    "at": {"type": "string"},
                    "actor": {"type": "string"},
                    "action": {"type": "string"},
                    "target": {"type": ["string", "null"]},
                    "network_id": {"type": ["string", "null"]},
                    "result": {"enum": ["success", "denied", "failed"]},
                    "detail": {"type": "string"}
                }
            }),
        )
        .map_err(schema)?;
    registry
        .register(
            &EventType::new(REVOCATION_EVENT).map_err(bad)?,
            1,
            json!({
                "type": "object",
                "required": ["network", "epoch", "issued_ms", "authority_public_key", "revoked", "signature", "wire", "entries"],
                "properties": {
                    "network": {"type": "string"},
                    "epoch": {"type": "integer", "minimum": 0},
                    "issued_ms": {"type": "integer", "minimum": 0},
                    "authority_public_key": {"type": "string"},
                    "revoked": {"type": "array", "items": {"type": "string"}},
                    "signature": {"type": "string"},
                    "wire": {"type": "string"},
                    "entries": {"type": "array"}
                }
            }),
        )
        .map_err(schema)?;
    registry
        .register(
            &EventType::new(TELEMETRY_EVENT).map_err(bad)?,
            1,
            json!({
                "type": "object",
                "required": ["network", "heartbeats"],
                "properties": {
                    "network": {"type": "string"},
                    "heartbeats": {"type": "array", "items": {
                        "type": "object",
                        "required": ["node_id", "at", "report"],
                        "properties": {
                            "node_id": {"type": "string"},
                            "at": {"type": "string"},
                            "report": {"type": "object"}
                        }
                    }}
                }
            }),
        )
        .map_err(schema)?;
    registry
        .register(
            &EventType::new(heal::HEAL_STEP_EVENT).map_err(bad)?,
            1,
            json!({
                "type": "object",
                "required": ["at", "incident", "kind", "target", "severity", "step", "detail"],
                "properties": {
                    "at": {"type": "integer", "minimum": 0},
                    "incident": {"type": "string"},
                    "kind": {"type": "string"},
                    "target": {"type": "string"},
                    "severity": {"type": "string"},
                    "step": {"type": "string"},
                    "action": {"type": "string"},
                    "detail": {"type": "string"},
                    "mttd_ms": {"type": "integer", "minimum": 0},
                    "mttr_ms": {"type": "integer", "minimum": 0}
                }
            }),
        )
        .map_err(schema)?;
    registry
        .register(
            &EventType::new(POLICY_EVENT).map_err(bad)?,
            1,
            json!({
                "type": "object",
                "required": ["network", "version", "author", "created_at", "document"],
                "properties": {
                    "network": {"type": "string"},
                    "version": {"type": "integer", "minimum": 1},
                    "author": {"type": "string"},
                    "created_at": {"type": "string"},
                    "document": {"type": "object"}
                }
            }),
        )
        .map_err(schema)?;
    Ok(registry)
}

/// Largest heartbeat batch event on the bus (bytes of reports).
const MAX_TELEMETRY_EVENT: usize = 256 * 1024;

/// The data of a telemetry event (schema [`TELEMETRY_EVENT`] version 1).
#[derive(serde::Serialize)]
struct TelemetryEvent<'a> {
    network: &'a str,
    heartbeats: &'a [TelemetryItem<'a>],
}

/// One heartbeat in a telemetry event.
#[derive(serde::Serialize)]
struct TelemetryItem<'a> {
    node_id: String,
    at: String,
    /// The report as stored: a JSON object (the heartbeat handler keeps
    /// the agent's text only when it is one).
    report: &'a serde_json::value::RawValue,
}

impl<'a> TelemetryItem<'a> {
    /// The item for a written heartbeat; `None` if its payload is not a
    /// JSON object, which the schema would refuse.
    fn of(hb: &'a weft_store::Heartbeat) -> Option<Self> {
        let report = serde_json::from_str::<&serde_json::value::RawValue>(&hb.payload).ok()?;
        report.get().starts_with('{').then(|| TelemetryItem {
            node_id: hb.node_id.to_string(),
            at: api::rfc3339(hb.at),
            report,
        })
    }
}

/// Publishes written heartbeats on the telemetry stream, in events of at
/// most [`MAX_TELEMETRY_EVENT`] bytes of reports.
///
/// The reports are copied into the event as the store holds them, not
/// parsed into JSON trees and written again: with 10,000 heartbeats a
/// second, the trees cost as much CPU as the requests' own handling, and
/// a batch's worth held a request worker for tens of milliseconds.
async fn publish_heartbeats(state: &AppState, batch: Vec<weft_store::Heartbeat>) {
    let subject = format!("weft.telemetry.{}", state.network.name);
    // Split first, then publish each event once.
    let mut events: Vec<Vec<TelemetryItem>> = Vec::new();
    let mut size = 0;
    for hb in &batch {
        let Some(item) = TelemetryItem::of(hb) else {
            tracing::warn!(node = %hb.node_id, "a stored heartbeat is not a JSON object; not published");
            continue;
        };
        match events.last_mut() {
            Some(event) if size + hb.payload.len() <= MAX_TELEMETRY_EVENT => event.push(item),
            _ => {
                events.push(vec![item]);
                size = 0;
            }
        }
        size += hb.payload.len();
    }
    for heartbeats in &events {
        let event = TelemetryEvent {
            network: state.network.name.as_str(),
            heartbeats,
        };
        state.publish_typed(&subject, TELEMETRY_EVENT, &event).await;
    }
}

/// Starts the control plane (see the crate documentation).
pub async fn start(config: ControlConfig) -> Result<Running, ControlError> {
    config.check()?;
    // A bad policy file stops the start, with its key named.
    let heal_policy = if config.heal.enabled {
        Some(config.heal.load_policy()?)
    } else {
        None
    };
    make_dir(&config.data_dir)?;
    let location = match &config.db {
        Some(db) => Location::parse(db, &config.data_dir)?,
        None => Location::default_in(&config.data_dir),
    };
    let store = AnyStore::open(&location, StoreConfig::default()).await?;
    let now = OffsetDateTime::now_utc();
    let (pki, network, created_ca) = Pki::open(
        &config.data_dir,
        &store,
        &config.network,
        &config.trust_domain,
        now,
    )
    .await?;

    let mut admin_token = None;
    let mut admin_token_file = None;
    if let Some((token, secret)) = store.bootstrap_admin_token("bootstrap admin", now).await? {
        let path = config.data_dir.join(ADMIN_TOKEN_FILE);
        weft_crypto::files::write_secret_file(
            &path,
            format!("{}\n", secret.expose()).as_bytes(),
            true,
        )?;
        tracing::info!(token_id = %token.id, file = %path.display(), "made the first admin API token");
        admin_token = Some(secret.expose().to_owned());
        admin_token_file = Some(path);
    }

    let (bus, bus_text) = match &config.nats {
        Some(url) => (
            AnyBus::Nats(
                NatsBus::connect(NatsConfig {
                    url: url.clone(),
                    ..NatsConfig::default()
                })
                .await
                .map_err(|e| ControlError::config("NATS", e.to_string()))?,
            ),
            format!("NATS {url}"),
        ),
        None => {
            let dir = config.data_dir.join(BUS_DIR);
            (
                AnyBus::Embedded(EmbeddedBus::open(&dir, EmbeddedConfig::default())?),
                format!("embedded {}", dir.display()),
            )
        }
    };
    ensure_stream(&bus, AUDIT_STREAM, AUDIT_SUBJECTS, None, None).await?;
    ensure_stream(&bus, REVOCATION_STREAM, REVOCATION_SUBJECTS, None, None).await?;
    ensure_stream(&bus, POLICY_STREAM, POLICY_SUBJECTS, None, None).await?;
    // Telemetry is for consumers that keep up (weft-heal); the store
    // keeps each node's history.
    ensure_stream(
        &bus,
        TELEMETRY_STREAM,
        TELEMETRY_SUBJECTS,
        Some(Duration::from_secs(3600)),
        Some(256 << 20),
    )
    .await?;
    let events = EventBus::new(bus, Arc::new(schemas()?), DEFAULT_MAX_ENVELOPE_BYTES);

    let (dns, ips) = config.split_server_names()?;
    let certs = pki.issue_server_certs(&dns, &ips, config.server_cert_ttl)?;
    let resolver = CertResolver::new(certs);
    let bundle = pki.ca().bundle()?;
    let svids = SvidVerifier::new(bundle.clone(), RevokedSerials::default());
    let clients = SpiffePeerVerifier::new(svids, any_in_trust_domain());
    let tls = tls::server_configs(resolver.clone(), clients, config.allow_classical_kex)?;

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(ControlError::io("cannot listen on", config.listen))?;
    let local_addr = listener.local_addr().map_err(ControlError::io(
        "cannot read the address of",
        config.listen,
    ))?;
    let host = match local_addr.ip() {
        ip if ip.is_unspecified() => "localhost".to_owned(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let info = Started {
        local_addr,
        url: format!("https://{host}:{}", local_addr.port()),
        ca_fingerprint: pki.ca_fingerprint().to_owned(),
        bundle_path: pki::bundle_path(&config.data_dir),
        network: network.name.to_string(),
        trust_domain: network.trust_domain.to_string(),
        control_id: pki.control_id().to_string(),
        db: location.to_string(),
        bus: bus_text,
        created_ca,
        admin_token,
        admin_token_file,
        allow_classical_kex: config.allow_classical_kex,
    };
    let metrics = Metrics::new();
    let options = server::ServeOptions {
        handshake_timeout: config.limits.handshake_timeout,
        max_connections: config.limits.max_connections,
        shutdown_grace: config.limits.shutdown_grace,
    };
    let (stop, stop_rx) = watch::channel(false);
    let (written_tx, mut written_rx) = tokio::sync::mpsc::channel(64);
    let (heartbeats, batcher) = telemetry::Batcher::start(
        store.clone(),
        telemetry::HEARTBEAT_LINGER,
        metrics.clone(),
        written_tx,
        stop.subscribe(),
    )
    .map_err(|error| ControlError::Io {
        action: "start",
        what: "the heartbeat writer thread".into(),
        error,
    })?;
    let nodes = app::NodeCache::new(store.clone());
    let state = Arc::new(AppState {
        heartbeats,
        store,
        events,
        limiters: Limiters::new(&config),
        pki,
        network,
        metrics: metrics.clone(),
        config: config.clone(),
        revocations: Mutex::new(HashMap::new()),
        members: Mutex::new(HashMap::new()),
        nodes,
    });
    let app = app::router(state.clone());
    let publisher_state = state.clone();
    let publisher = telemetry::on_own_thread("weft-telemetry", async move {
        while let Some(batch) = written_rx.recv().await {
            publish_heartbeats(&publisher_state, batch).await;
        }
    })
    .map_err(|error| ControlError::Io {
        action: "start",
        what: "the telemetry publisher thread".into(),
        error,
    })?;
    let maintenance = tokio::spawn(maintain(
        state.clone(),
        resolver,
        dns,
        ips,
        stop.subscribe(),
    ));
    let healing = match &heal_policy {
        Some(policy) => {
            let heal = heal::HealLoop::start(state.clone(), &config.heal, policy.clone()).await?;
            Some(tokio::spawn(heal.run(stop.subscribe())))
        }
        None => None,
    };
    let task_state = state.clone();
    let task = tokio::spawn(async move {
        server::serve(listener, tls, app, metrics, options, stop_rx).await;
        if let Some(h) = healing {
            let _ = h.await;
        }
        let _ = maintenance.await;
        let _ = batcher.await;
        let _ = publisher.await;
        task_state.events.backend().close().await;
        task_state.store.close().await;
        tracing::info!("control plane stopped");
    });
    tracing::info!(url = %info.url, network = %info.network, db = %info.db, bus = %info.bus, "control plane up");
    Ok(Running {
        info,
        stop,
        task,
        state,
    })
}

/// Once a minute: forgets idle rate-limit keys and renews the server's
/// certificates once half their lifetime has passed.
async fn maintain(
    state: Arc<AppState>,
    resolver: Arc<CertResolver>,
    dns: Vec<String>,
    ips: Vec<std::net::IpAddr>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        state.limiters.prune();
        let current = resolver.current();
        let half = (current.not_after - current.issued_at) / 2;
        if OffsetDateTime::now_utc() >= current.issued_at + half {
            match state
                .pki
                .issue_server_certs(&dns, &ips, state.config.server_cert_ttl)
            {
                Ok(certs) => {
                    tracing::info!(not_after = %certs.not_after, "renewed the server certificates");
                    resolver.replace(certs);
                }
                Err(error) => tracing::error!(%error, "cannot renew the server certificates"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(payload: &str) -> weft_store::Heartbeat {
        weft_store::Heartbeat {
            node_id: weft_crypto::NodeIdentity::generate()
                .expect("identity")
                .node_id(),
            at: OffsetDateTime::now_utc(),
            payload: payload.to_owned(),
        }
    }

    /// Telemetry events skip the producer's schema check: their encoding
    /// is checked here against the registered schema instead.
    #[test]
    fn telemetry_events_fit_their_schema() {
        let registry = schemas().expect("schemas");
        let beats = [
            heartbeat(r#"{"seq":1,"links":[]}"#),
            heartbeat(
                r#" {"seq":2,"links":[{"peer":"x","up":true,"rtt_ms":1.5,"loss":0.0,"cost":96}],"versions":{"agent":"0.1.0"}}"#,
            ),
        ];
        let items: Vec<TelemetryItem> = beats.iter().filter_map(TelemetryItem::of).collect();
        assert_eq!(items.len(), 2);
        let event = TelemetryEvent {
            network: "default",
            heartbeats: &items,
        };
        let data = serde_json::to_value(&event).expect("encodes");
        registry
            .validate(&EventType::new(TELEMETRY_EVENT).expect("type"), 1, &data)
            .expect("fits the schema");
        assert_eq!(data["heartbeats"][1]["report"]["seq"], 2);
        assert_eq!(
            data["heartbeats"][0]["node_id"],
            beats[0].node_id.to_string().as_str()
        );
    }

    #[test]
    fn reports_that_are_not_objects_are_not_published() {
        for payload in ["[1,2]", "\"text\"", "{\"open\":", ""] {
            assert!(
                TelemetryItem::of(&heartbeat(payload)).is_none(),
                "{payload:?}"
            );
        }
    }
}
