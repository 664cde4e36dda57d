//! The HTTP application: the route table (each route with the access it
//! needs and the audit action it records), authentication, authorization,
//! rate limits, audit, metrics and the error fallbacks.
//!
//! Layers, outermost first: metrics and request log → problem fallback
//! (turns any bare error response into problem details) → timeout → body
//! size limit → routing → guard (rate limit, authentication, role check,
//! audit) → handler.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, Extension, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rustls_pki_types::CertificateDer;
use serde_json::json;
use time::OffsetDateTime;
use tower::ServiceBuilder;
use weft_bus::admin::AnyBus;
use weft_bus::envelope::{Envelope, EventType};
use weft_bus::events::EventBus;
use weft_bus::subject::Subject;
use weft_crypto::NodeId;
use weft_store::{
    AnyStore, ApiToken, ApiTokenId, AuditResult, Network, NetworkId, NewAuditRecord, Node,
    NodeStatus, Role, Store, StoreError,
};

use crate::api::{AuditView, RevocationListView};
use crate::config::ControlConfig;
use crate::handlers;
use crate::metrics::Metrics;
use crate::pki::Pki;
use crate::problem::{Problem, ProblemMarker, body_read_problem};

/// Stream of audit records on the bus.
pub const AUDIT_STREAM: &str = "weft_audit";
/// Subjects of audit records: `weft.audit.<action>`.
pub const AUDIT_SUBJECTS: &str = "weft.audit.>";
/// Event type of an audit record.
pub const AUDIT_EVENT: &str = "weft.audit.recorded";
/// Stream of revocation lists on the bus.
pub const REVOCATION_STREAM: &str = "weft_revocations";
/// Subjects of revocation lists: `weft.revocation.<network>`.
pub const REVOCATION_SUBJECTS: &str = "weft.revocation.>";
/// Event type of a revocation list.
pub const REVOCATION_EVENT: &str = "weft.revocation.published";
/// Stream of heartbeat batches on the bus.
pub const TELEMETRY_STREAM: &str = "weft_telemetry";
/// Subjects of heartbeat batches: `weft.telemetry.<network>`.
pub const TELEMETRY_SUBJECTS: &str = "weft.telemetry.>";
/// Event type of a heartbeat batch.
pub const TELEMETRY_EVENT: &str = "weft.telemetry.heartbeats";
/// Stream of policy versions on the bus.
pub const POLICY_STREAM: &str = "weft_policies";
/// Subjects of policy versions: `weft.policy.<network>`.
pub const POLICY_SUBJECTS: &str = "weft.policy.>";
/// Event type of a new policy version.
pub const POLICY_EVENT: &str = "weft.policy.updated";
/// Longest `Authorization` header value read.
const MAX_AUTH_HEADER: usize = 512;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (liveness, readiness, the API description).
    Public,
    /// Anyone, authenticated by what the body proves (a join token, or a
    /// signature of an enrolled node's identity key).
    Enrollment,
    /// An API token with at least this role.
    Role(Role),
    /// An approved node presenting its SVID as TLS client certificate.
    Agent,
    /// An approved node (mTLS) or an API token with at least viewer.
    AgentOrViewer,
}

impl Access {
    /// How the access reads in docs and errors.
    pub fn describe(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Enrollment => "join token or node identity signature in the body",
            Access::Role(Role::Viewer) => "API token, role viewer or above",
            Access::Role(Role::Operator) => "API token, role operator or above",
            Access::Role(Role::Admin) => "API token, role admin",
            Access::Agent => "node SVID (mTLS)",
            Access::AgentOrViewer => "node SVID (mTLS) or API token, role viewer or above",
        }
    }
}

/// One route: its method, path template, who may call it and the audit
/// action it records (every mutating route has one).
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    /// HTTP method.
    pub method: &'static str,
    /// Path template (axum and OpenAPI syntax).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// The audit action, for mutating routes.
    pub action: Option<&'static str>,
}

const fn route(
    method: &'static str,
    path: &'static str,
    access: Access,
    action: Option<&'static str>,
) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access,
        action,
    }
}

/// Every route of the API.
pub const ROUTES: &[RouteSpec] = &[
    route("GET", "/health", Access::Public, None),
    route("GET", "/ready", Access::Public, None),
    route("GET", "/openapi.json", Access::Public, None),
    route("GET", "/metrics", Access::Role(Role::Viewer), None),
    route("GET", "/v1/audit", Access::Role(Role::Viewer), None),
    route("GET", "/v1/networks", Access::Role(Role::Viewer), None),
    route(
        "POST",
        "/v1/networks",
        Access::Role(Role::Admin),
        Some("network.create"),
    ),
    route(
        "GET",
        "/v1/networks/{network}/join-tokens",
        Access::Role(Role::Viewer),
        None,
    ),
    route(
        "POST",
        "/v1/networks/{network}/join-tokens",
        Access::Role(Role::Operator),
        Some("join_token.create"),
    ),
    route(
        "GET",
        "/v1/networks/{network}/revocations",
        Access::AgentOrViewer,
        None,
    ),
    route(
        "GET",
        "/v1/networks/{network}/members",
        Access::AgentOrViewer,
        None,
    ),
    route(
        "GET",
        "/v1/networks/{network}/peers",
        Access::AgentOrViewer,
        None,
    ),
    route(
        "POST",
        "/v1/enroll",
        Access::Enrollment,
        Some("node.enroll"),
    ),
    route(
        "POST",
        "/v1/enroll/claim",
        Access::Enrollment,
        Some("node.claim"),
    ),
    route("POST", "/v1/renew", Access::Agent, Some("node.renew")),
    route("GET", "/v1/nodes", Access::Role(Role::Viewer), None),
    route("GET", "/v1/nodes/{id}", Access::Role(Role::Viewer), None),
    route(
        "POST",
        "/v1/nodes/{id}/approve",
        Access::Role(Role::Operator),
        Some("node.approve"),
    ),
    route(
        "POST",
        "/v1/nodes/{id}/revoke",
        Access::Role(Role::Operator),
        Some("node.revoke"),
    ),
    route("POST", "/v1/heartbeat", Access::Agent, None),
    route("GET", "/v1/topology", Access::Role(Role::Viewer), None),
    route(
        "GET",
        "/v1/networks/{network}/policy",
        Access::AgentOrViewer,
        None,
    ),
    route(
        "PUT",
        "/v1/networks/{network}/policy",
        Access::Role(Role::Operator),
        Some("policy.update"),
    ),
    route(
        "GET",
        "/v1/networks/{network}/policies",
        Access::Role(Role::Viewer),
        None,
    ),
    route("GET", "/v1/api-tokens", Access::Role(Role::Admin), None),
    route(
        "POST",
        "/v1/api-tokens",
        Access::Role(Role::Admin),
        Some("api_token.create"),
    ),
    route(
        "POST",
        "/v1/api-tokens/{id}/revoke",
        Access::Role(Role::Admin),
        Some("api_token.revoke"),
    ),
];

/// The spec of a matched route.
pub fn find_route(method: &Method, template: &str) -> Option<&'static RouteSpec> {
    ROUTES
        .iter()
        .find(|r| r.path == template && r.method == method.as_str())
}

/// Whether a concrete path matches a template (`{x}` matches one segment).
pub fn path_matches(template: &str, path: &str) -> bool {
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return true,
            (Some(ts), Some(ps)) => {
                let param = ts.starts_with('{') && ts.ends_with('}');
                if !(param && !ps.is_empty() || ts == ps) {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// What the TLS layer learned about a connection; put on every request.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's certificate (its SVID), verified at the handshake.
    pub client_cert: Option<Arc<CertificateDer<'static>>>,
    /// What the client certificate says, read once per connection.
    pub client_svid: Option<Arc<PeerSvid>>,
    /// The key exchange group negotiated (shared: the connection's
    /// information is copied into every request).
    pub kx_group: Arc<str>,
}

/// The parts of a client's SVID the guard checks on every request, read
/// once when the connection is made.
#[derive(Debug, Clone)]
pub struct PeerSvid {
    /// Its end of validity (Unix seconds), or why it cannot be read.
    pub not_after: Result<i64, String>,
    /// Its SPIFFE ID, or why it is refused.
    pub spiffe_id: Result<weft_crypto::SpiffeId, String>,
    /// The node it names, when the SPIFFE ID is a node's
    /// (`spiffe://TD/node/<node id>`).
    pub node_id: Option<NodeId>,
}

impl PeerSvid {
    /// Reads a certificate verified at the handshake.
    pub fn of(cert: &CertificateDer<'_>) -> Self {
        let not_after = x509_parser::parse_x509_certificate(cert)
            .map(|(_, parsed)| parsed.validity().not_after.timestamp())
            .map_err(|e| format!("the client certificate does not parse: {e}"));
        let spiffe_id = weft_crypto::svid::spiffe_id_from_der(cert)
            .map_err(|e| format!("the client certificate is refused: {e}"));
        let node_id = spiffe_id.as_ref().ok().and_then(NodeId::from_spiffe_id);
        Self {
            not_after,
            spiffe_id,
            node_id,
        }
    }
}

/// Nodes as the guard last read them: an agent sending many requests
/// costs one store read a second, not one per request. This process
/// forgets a node when it approves or revokes it; another process sharing
/// the database sees the change within about [`NODE_CACHE_TTL`].
///
/// Misses are read in batches: a task takes every lookup waiting and
/// reads those nodes in one query, so a thousand agents whose entries
/// expire together cost a query, not a thousand queued on the store's
/// connections.
///
/// An entry past its TTL but younger than [`NODE_CACHE_MAX_STALE`] is
/// still used, and read again in the background: a request waits for the
/// store only for a node it has not seen lately. With every request
/// waiting for the read once its entry expired, a store read held up for
/// a moment (SQLite's readers back off while a checkpoint syncs the file)
/// held up every agent whose entry expired meanwhile; measured at 10,000
/// heartbeats a second, by up to 160 ms.
#[derive(Debug)]
pub struct NodeCache {
    map: Arc<Mutex<HashMap<NodeId, CachedNode>>>,
    lookups: tokio::sync::mpsc::Sender<NodeLookup>,
    /// Counts [`NodeCache::forget`]s: a read that started before one is
    /// not cached, as it may hold the status from before the change.
    forgets: Arc<std::sync::atomic::AtomicU64>,
}

/// A node as last read, when, and whether a background read of it is
/// under way.
#[derive(Debug)]
struct CachedNode {
    node: Arc<Node>,
    read_at: Instant,
    refreshing: bool,
}

/// A node to read for the batch reader, and where to answer: `None` for
/// a background refresh; else `None` when the batch failed (the caller
/// reads the node itself).
type NodeLookup = (
    NodeId,
    Option<tokio::sync::oneshot::Sender<Option<Option<Arc<Node>>>>>,
);

/// How long the guard trusts a node read from the store without reading
/// it again.
pub const NODE_CACHE_TTL: Duration = Duration::from_secs(1);
/// How long an entry is still used while it is read again; past this
/// (its reads failed), the request waits for the store.
pub const NODE_CACHE_MAX_STALE: Duration = Duration::from_secs(10);
/// Most nodes cached (then the cache starts over).
const NODE_CACHE_MAX: usize = 100_000;
/// Most nodes read in one query.
const NODE_LOOKUP_BATCH: usize = 500;

impl NodeCache {
    /// An empty cache whose misses are read from `store`, by a task that
    /// ends when the cache is dropped.
    pub fn new(store: AnyStore) -> Self {
        let (lookups, mut waiting) =
            tokio::sync::mpsc::channel::<NodeLookup>(4 * NODE_LOOKUP_BATCH);
        let map = Arc::new(Mutex::new(HashMap::new()));
        let forgets = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (cache, forgotten) = (map.clone(), forgets.clone());
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(NODE_LOOKUP_BATCH);
            while waiting.recv_many(&mut batch, NODE_LOOKUP_BATCH).await > 0 {
                let mut ids: Vec<NodeId> = batch.iter().map(|(id, _)| *id).collect();
                ids.sort_unstable();
                ids.dedup();
                let before = forgotten.load(std::sync::atomic::Ordering::Acquire);
                let found = match store.get_nodes(&ids).await {
                    Ok(nodes) => {
                        let found: HashMap<NodeId, Arc<Node>> = nodes
                            .into_iter()
                            .map(|n| (n.node_id, Arc::new(n)))
                            .collect();
                        let mut map = lock(&cache);
                        let changed =
                            forgotten.load(std::sync::atomic::Ordering::Acquire) != before;
                        for id in ids.iter().filter(|_| !changed) {
                            match found.get(id) {
                                Some(node) => put(&mut map, node.clone()),
                                None => {
                                    map.remove(id);
                                }
                            }
                        }
                        Some(found)
                    }
                    Err(error) => {
                        tracing::warn!(%error, nodes = ids.len(), "cannot read nodes in a batch; reading them one by one");
                        // Refreshes are asked again by the next request.
                        let mut map = lock(&cache);
                        for id in &ids {
                            if let Some(entry) = map.get_mut(id) {
                                entry.refreshing = false;
                            }
                        }
                        None
                    }
                };
                for (id, answer) in batch.drain(..) {
                    if let Some(answer) = answer {
                        let _ = answer.send(found.as_ref().map(|f| f.get(&id).cloned()));
                    }
                }
            }
        });
        Self {
            map,
            lookups,
            forgets,
        }
    }

    /// The node, from the cache or else from the store (batched with
    /// other misses). Shared, not copied: the guard hands it to the
    /// handler with every request.
    async fn load(&self, store: &AnyStore, id: &NodeId) -> Result<Arc<Node>, StoreError> {
        if let Some(node) = self.get(id) {
            return Ok(node);
        }
        let (answer, wait) = tokio::sync::oneshot::channel();
        let batched = match self.lookups.send((*id, Some(answer))).await {
            Ok(()) => wait.await.ok().flatten(),
            Err(_) => None,
        };
        match batched {
            Some(Some(node)) => Ok(node),
            Some(None) => Err(StoreError::NotFound {
                what: "node",
                id: id.to_string(),
            }),
            None => {
                let before = self.forgets.load(std::sync::atomic::Ordering::Acquire);
                let node = Arc::new(store.get_node(id).await?);
                let mut map = lock(&self.map);
                if self.forgets.load(std::sync::atomic::Ordering::Acquire) == before {
                    put(&mut map, node.clone());
                }
                Ok(node)
            }
        }
    }

    /// The cached node, if fresh or stale but usable; a stale one is
    /// read again in the background.
    fn get(&self, id: &NodeId) -> Option<Arc<Node>> {
        // Each node's entry is fresh between half the TTL and the TTL, by
        // its id: agents whose entries were read at the same moment (all
        // of them, after a restart) are then read again at different
        // ones, not in one burst.
        let ttl = NODE_CACHE_TTL.mul_f64(0.5 + f64::from(id.0[0]) / 512.0);
        let mut map = lock(&self.map);
        let entry = map.get_mut(id)?;
        let age = entry.read_at.elapsed();
        if age < ttl {
            return Some(entry.node.clone());
        }
        if age >= NODE_CACHE_MAX_STALE {
            return None;
        }
        // A full queue drops the refresh; the next request asks again.
        if !entry.refreshing && self.lookups.try_send((*id, None)).is_ok() {
            entry.refreshing = true;
        }
        Some(entry.node.clone())
    }

    /// Forgets a node (its status changed).
    pub fn forget(&self, id: &NodeId) {
        let mut map = lock(&self.map);
        self.forgets
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        map.remove(id);
    }
}

fn lock(
    map: &Mutex<HashMap<NodeId, CachedNode>>,
) -> std::sync::MutexGuard<'_, HashMap<NodeId, CachedNode>> {
    map.lock().unwrap_or_else(|e| e.into_inner())
}

fn put(map: &mut HashMap<NodeId, CachedNode>, node: Arc<Node>) {
    if map.len() >= NODE_CACHE_MAX {
        map.clear();
    }
    map.insert(
        node.node_id,
        CachedNode {
            node,
            read_at: Instant::now(),
            refreshing: false,
        },
    );
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Identity {
    /// Nobody authenticated (public and enrollment routes).
    Anonymous {
        /// The client's address.
        addr: IpAddr,
    },
    /// An operator's API token.
    Operator {
        /// The token.
        token: Box<ApiToken>,
    },
    /// An approved node (mTLS).
    Agent {
        /// The node (as the guard's cache holds it).
        node: Arc<Node>,
    },
}

impl Identity {
    /// The audit actor.
    pub fn actor(&self) -> String {
        match self {
            Identity::Anonymous { addr } => format!("anonymous@{addr}"),
            Identity::Operator { token } => format!("api-token:{}", token.id),
            Identity::Agent { node } => node.spiffe_id.to_string(),
        }
    }

    fn limit_key(&self) -> LimitKey {
        match self {
            Identity::Anonymous { addr } => LimitKey::Address(*addr),
            Identity::Operator { token } => LimitKey::Token(token.id),
            Identity::Agent { node } => LimitKey::Node(node.node_id),
        }
    }
}

/// What a handler tells the audit trail beyond the request itself.
#[derive(Debug, Clone, Default)]
pub struct AuditNote {
    /// Who, when the handler knows better than the guard (a join token).
    pub actor: Option<String>,
    /// On what.
    pub target: Option<String>,
    /// The network concerned.
    pub network_id: Option<NetworkId>,
    /// Details.
    pub detail: String,
}

/// The route template a response answered (for metrics).
#[derive(Debug, Clone)]
struct RouteLabel(&'static str);

/// Whom the per-identity rate limit counts: a value, not a formatted
/// string, so a request costs no allocation to find its bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum LimitKey {
    Address(IpAddr),
    Token(ApiTokenId),
    Node(NodeId),
}

/// Rate limiters. governor's keyed limiters (GCRA, lock-free) are used
/// directly rather than through tower_governor because the key is the
/// authenticated identity, known only inside the guard.
pub struct Limiters {
    by_ip: DefaultKeyedRateLimiter<IpAddr>,
    by_identity: DefaultKeyedRateLimiter<LimitKey>,
    auth_failures: DefaultKeyedRateLimiter<IpAddr>,
}

impl std::fmt::Debug for Limiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limiters")
    }
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

impl Limiters {
    /// Limiters for `config`.
    pub fn new(config: &ControlConfig) -> Self {
        let l = &config.limits;
        let per_ip = Quota::per_second(nz(l.rate_per_second.saturating_mul(10)))
            .allow_burst(nz(l.rate_burst.saturating_mul(10)));
        let per_identity = Quota::per_second(nz(l.rate_per_second)).allow_burst(nz(l.rate_burst));
        let failures = Quota::per_minute(nz(l.auth_failures_per_minute));
        Self {
            by_ip: RateLimiter::keyed(per_ip),
            by_identity: RateLimiter::keyed(per_identity),
            auth_failures: RateLimiter::keyed(failures),
        }
    }

    /// Forgets idle keys (called every minute), bounding memory.
    pub fn prune(&self) {
        self.by_ip.retain_recent();
        self.by_identity.retain_recent();
        self.auth_failures.retain_recent();
        self.by_ip.shrink_to_fit();
        self.by_identity.shrink_to_fit();
        self.auth_failures.shrink_to_fit();
    }
}

/// Shared state of the handlers.
pub struct AppState {
    /// The store.
    pub store: AnyStore,
    /// The bus, with the audit and revocation schemas.
    pub events: EventBus<AnyBus>,
    /// Keys.
    pub pki: Pki,
    /// The network this control plane serves (as at start; re-read for
    /// its revocation epoch).
    pub network: Network,
    /// Metrics.
    pub metrics: Metrics,
    /// Settings.
    pub config: ControlConfig,
    /// Rate limiters.
    pub limiters: Limiters,
    /// Collects heartbeats into store batches.
    pub heartbeats: crate::telemetry::Batcher,
    /// Signed revocation lists by network, re-signed when the epoch moves.
    pub revocations: Mutex<HashMap<NetworkId, Arc<RevocationListView>>>,
    /// Nodes as the guard last read them.
    pub nodes: NodeCache,
    /// Rendered network files by network, rendered again when the
    /// membership stamp moves.
    pub members: Mutex<HashMap<NetworkId, Arc<crate::handlers::MembersFile>>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("network", &self.network.name)
            .finish_non_exhaustive()
    }
}

/// The state as handlers see it.
pub type Shared = Arc<AppState>;

impl AppState {
    /// The network `name`, if this control plane serves it.
    pub async fn served_network(&self, name: &str) -> Result<Network, Problem> {
        if name != self.network.name.as_str() {
            return Err(Problem::not_found(format!(
                "network {:?} is not served by this control plane; it serves {:?}",
                name.chars().take(64).collect::<String>(),
                self.network.name.as_str()
            )));
        }
        Ok(self.store.get_network(self.network.id).await?)
    }

    /// Publishes an event; a failure is logged and counted (the store
    /// holds the authoritative record).
    pub async fn publish(&self, subject: &str, event_type: &str, data: serde_json::Value) -> bool {
        let result = async {
            let (subject, mut envelope) = self.envelope(subject, event_type)?;
            envelope.data = data;
            self.events
                .publish(subject, &envelope)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        self.published(subject, result)
    }

    /// Publishes an event whose data is typed and encoded straight from
    /// its `Serialize` form, unchecked against its schema (see
    /// [`weft_bus::events::EventBus::publish_typed`]: the caller's types
    /// vouch for the shape, and a test checks it); a failure is logged
    /// and counted.
    pub async fn publish_typed<D: serde::Serialize + ?Sized>(
        &self,
        subject: &str,
        event_type: &str,
        data: &D,
    ) -> bool {
        let result = async {
            let (subject, envelope) = self.envelope(subject, event_type)?;
            self.events
                .publish_typed(subject, &envelope, data)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        self.published(subject, result)
    }

    /// A new envelope (version 1, from the control plane, no data yet)
    /// for `subject`.
    fn envelope(&self, subject: &str, event_type: &str) -> Result<(Subject, Envelope), String> {
        let subject = Subject::new(subject).map_err(|e| e.to_string())?;
        let ty = EventType::new(event_type).map_err(|e| e.to_string())?;
        let envelope = Envelope::new(
            ty,
            self.pki.control_id().clone(),
            1,
            serde_json::Value::Null,
        );
        Ok((subject, envelope))
    }

    fn published<T>(&self, subject: &str, result: Result<T, String>) -> bool {
        match result {
            Ok(_) => true,
            Err(error) => {
                tracing::error!(subject, %error, "cannot publish on the bus");
                self.metrics.audit_failed("bus");
                false
            }
        }
    }
}

// ------------------------------------------------------------------ router

/// Builds the application.
pub fn router(state: Shared) -> Router {
    let max_body = state.config.limits.max_body_bytes;
    let timeout = state.config.limits.request_timeout;
    let api = Router::new()
        .route("/health", get(handlers::health))
        .route("/ready", get(handlers::ready))
        .route("/openapi.json", get(handlers::openapi))
        .route("/metrics", get(handlers::metrics))
        .route("/v1/audit", get(handlers::list_audit))
        .route(
            "/v1/networks",
            get(handlers::list_networks).post(handlers::create_network),
        )
        .route(
            "/v1/networks/{network}/join-tokens",
            get(handlers::list_join_tokens).post(handlers::create_join_token),
        )
        .route(
            "/v1/networks/{network}/revocations",
            get(handlers::revocations),
        )
        .route("/v1/networks/{network}/members", get(handlers::members))
        .route("/v1/networks/{network}/peers", get(handlers::peers))
        .route("/v1/enroll", post(handlers::enroll))
        .route("/v1/enroll/claim", post(handlers::claim))
        .route("/v1/renew", post(handlers::renew))
        .route("/v1/nodes", get(handlers::list_nodes))
        .route("/v1/nodes/{id}", get(handlers::get_node))
        .route("/v1/nodes/{id}/approve", post(handlers::approve_node))
        .route("/v1/nodes/{id}/revoke", post(handlers::revoke_node))
        .route("/v1/heartbeat", post(handlers::heartbeat))
        .route("/v1/topology", get(handlers::topology))
        .route(
            "/v1/networks/{network}/policy",
            get(handlers::get_policy).put(handlers::put_policy),
        )
        .route(
            "/v1/networks/{network}/policies",
            get(handlers::list_policies),
        )
        .route(
            "/v1/api-tokens",
            get(handlers::list_api_tokens).post(handlers::create_api_token),
        )
        .route(
            "/v1/api-tokens/{id}/revoke",
            post(handlers::revoke_api_token),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), guard))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state.clone());
    api.layer(
        ServiceBuilder::new()
            .layer(middleware::from_fn_with_state(state, observe))
            .layer(middleware::from_fn(move |req, next| {
                problem_fallback(req, next, max_body)
            }))
            .layer(HandleErrorLayer::new(
                move |e: tower::BoxError| async move { timeout_problem(e, timeout) },
            ))
            .timeout(timeout)
            .layer(tower_http::limit::RequestBodyLimitLayer::new(max_body)),
    )
}

fn timeout_problem(e: tower::BoxError, timeout: Duration) -> Problem {
    if e.is::<tower::timeout::error::Elapsed>() {
        Problem::unavailable(format!(
            "the request took longer than {} ms and was abandoned; retry later",
            timeout.as_millis()
        ))
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    } else {
        Problem::internal(format!("request failed: {e}"))
    }
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Problem {
    let path = uri.path();
    Problem::not_found(format!(
        "no route {method} {}; the routes are listed at /openapi.json",
        path.chars().take(256).collect::<String>()
    ))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Problem {
    let path = uri.path();
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|r| path_matches(r.path, path))
        .map(|r| r.method)
        .collect();
    let allow = allowed.join(", ");
    let mut p = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!(
            "{method} is not allowed on {}; allowed: {allow}",
            path.chars().take(256).collect::<String>()
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&allow) {
        p = p.with_header(header::ALLOW, v);
    }
    p
}

/// Turns error responses that are not problem details yet (from layers:
/// body limit, timeouts) into problem details.
async fn problem_fallback(req: Request, next: Next, max_body: usize) -> Response {
    let method = req.method().clone();
    // The URI is shared, not copied; its path is written out only for a
    // refusal.
    let uri = req.uri().clone();
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<ProblemMarker>().is_some()
    {
        return response;
    }
    let path: String = uri.path().chars().take(256).collect();
    let headers = response.headers().clone();
    let mut problem = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            let mut p = body_read_problem(status, "");
            p.detail = format!(
                "the request body is larger than {max_body} bytes, the limit of this server; send a smaller body"
            );
            p
        }
        s => Problem::new(
            s,
            "error",
            format!(
                "{method} {path} failed with {} {}",
                s.as_u16(),
                s.canonical_reason().unwrap_or("")
            ),
        ),
    };
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(v) = headers.get(&name) {
            problem = problem.with_header(name, v.clone());
        }
    }
    problem.into_response()
}

/// Counts and logs every request.
async fn observe(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let response = next.run(req).await;
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map_or("unmatched", |r| r.0);
    let status = response.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    state
        .metrics
        .request(method.as_str(), route, status, elapsed);
    if status >= 500 {
        tracing::warn!(%method, route, status, elapsed, "request failed");
    } else {
        tracing::debug!(%method, route, status, elapsed, "request");
    }
    response
}

// ------------------------------------------------------------------- guard

/// Rate limits, authenticates, authorizes and audits each routed request.
async fn guard(
    State(state): State<Shared>,
    matched: Option<MatchedPath>,
    conn: Option<Extension<ConnInfo>>,
    mut req: Request,
    next: Next,
) -> Response {
    let conn = conn.map(|Extension(c)| c);
    let addr = conn
        .as_ref()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.peer.ip());
    let Some(spec) = matched
        .as_ref()
        .and_then(|m| find_route(req.method(), m.as_str()))
    else {
        // Routed but not in the table: a programming error, refused.
        return Problem::internal("this route has no access rule; report it as a bug")
            .into_response();
    };
    let label = RouteLabel(spec.path);
    // Only audited routes need the path after the request is handed on.
    let path: String = if spec.action.is_some() {
        req.uri().path().chars().take(512).collect()
    } else {
        String::new()
    };

    if state.limiters.by_ip.check_key(&addr).is_err() {
        state.metrics.rate_limited("address");
        return with_label(too_many("this client address"), label);
    }

    let identity = match authenticate(&state, spec.access, req.headers(), conn.as_ref(), addr).await
    {
        Ok(identity) => identity,
        Err(problem) => {
            let response = if problem.status == StatusCode::UNAUTHORIZED
                && state.limiters.auth_failures.check_key(&addr).is_err()
            {
                state.metrics.rate_limited("auth_failures");
                too_many("failed authentications from this client address")
            } else {
                problem.into_response()
            };
            if let Some(action) = spec.action
                && response.status() != StatusCode::TOO_MANY_REQUESTS
            {
                // The certificate was verified at the handshake: name it.
                let actor = conn
                    .as_ref()
                    .and_then(|c| c.client_svid.as_ref())
                    .and_then(|c| c.spiffe_id.clone().ok())
                    .map_or_else(|| Identity::Anonymous { addr }.actor(), |id| id.to_string());
                audit(&state, actor, action, &path, &response).await;
            }
            return with_label(response, label);
        }
    };
    if state
        .limiters
        .by_identity
        .check_key(&identity.limit_key())
        .is_err()
    {
        state.metrics.rate_limited("identity");
        return with_label(too_many("this identity"), label);
    }
    req.extensions_mut().insert(identity.clone());
    let mut response = next.run(req).await;
    if spec.access == Access::Enrollment
        && response.status() == StatusCode::UNAUTHORIZED
        && state.limiters.auth_failures.check_key(&addr).is_err()
    {
        // A bad join token or signature counts as a failed
        // authentication; past the budget the answer is 429.
        state.metrics.rate_limited("auth_failures");
        let note = response.extensions().get::<AuditNote>().cloned();
        response = too_many("failed authentications from this client address");
        if let Some(note) = note {
            response.extensions_mut().insert(note);
        }
    }
    if let Some(action) = spec.action {
        audit(&state, identity.actor(), action, &path, &response).await;
    }
    with_label(response, label)
}

fn with_label(mut response: Response, label: RouteLabel) -> Response {
    response.extensions_mut().insert(label);
    response
}

fn too_many(whom: &str) -> Response {
    Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        format!("too many requests from {whom}; slow down and retry after a second"),
    )
    .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    .into_response()
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    if value.len() > MAX_AUTH_HEADER {
        return Err(Problem::unauthorized(format!(
            "the Authorization header is longer than {MAX_AUTH_HEADER} bytes; send Authorization: Bearer <API token>"
        )));
    }
    let text = value.to_str().map_err(|_| {
        Problem::unauthorized(
            "the Authorization header is not ASCII; send Authorization: Bearer <API token>",
        )
    })?;
    let Some((scheme, token)) = text.split_once(' ') else {
        return Err(Problem::unauthorized(
            "the Authorization header has no scheme; send Authorization: Bearer <API token>",
        ));
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Problem::unauthorized(format!(
            "the Authorization scheme {:?} is not supported; send Authorization: Bearer <API token>",
            scheme.chars().take(32).collect::<String>()
        )));
    }
    Ok(Some(token.trim().to_owned()))
}

async fn authenticate(
    state: &AppState,
    access: Access,
    headers: &HeaderMap,
    conn: Option<&ConnInfo>,
    addr: IpAddr,
) -> Result<Identity, Problem> {
    match access {
        Access::Public | Access::Enrollment => Ok(Identity::Anonymous { addr }),
        Access::Role(required) => operator(state, headers, required).await,
        Access::Agent => agent(state, conn).await,
        Access::AgentOrViewer => {
            if headers.contains_key(header::AUTHORIZATION) {
                operator(state, headers, Role::Viewer).await
            } else if conn.is_some_and(|c| c.client_svid.is_some()) {
                agent(state, conn).await
            } else {
                Err(Problem::unauthorized(
                    "this route needs a node SVID (mTLS client certificate) or an API token with role viewer or above: send Authorization: Bearer <API token>",
                ))
            }
        }
    }
}

async fn operator(
    state: &AppState,
    headers: &HeaderMap,
    required: Role,
) -> Result<Identity, Problem> {
    let Some(token) = bearer(headers)? else {
        return Err(Problem::unauthorized(format!(
            "this route needs an API token with role {required} or above: send Authorization: Bearer <API token> (the first admin token is in the control plane's data directory, admin.token)"
        )));
    };
    let token = state
        .store
        .authenticate_api_token(&token, OffsetDateTime::now_utc())
        .await
        .map_err(|e| match e {
            StoreError::TokenInvalid { .. }
            | StoreError::TokenExpired { .. }
            | StoreError::TokenRevoked { .. } => Problem::unauthorized(e.to_string()),
            other => Problem::from(other),
        })?;
    if !token.role.includes(required) {
        return Err(Problem::forbidden(format!(
            "API token {} ({:?}) has role {}; this route needs {required} or above",
            token.id, token.name, token.role
        )));
    }
    Ok(Identity::Operator {
        token: Box::new(token),
    })
}

async fn agent(state: &AppState, conn: Option<&ConnInfo>) -> Result<Identity, Problem> {
    let Some(svid) = conn.and_then(|c| c.client_svid.as_ref()) else {
        return Err(Problem::unauthorized(
            "this route is for enrolled nodes: present the node's X.509-SVID as TLS client certificate (mTLS)",
        ));
    };
    // rustls verified the chain against the CA bundle at the handshake;
    // a connection can outlive the certificate, so its end is checked on
    // every request.
    let not_after = svid.not_after.clone().map_err(Problem::unauthorized)?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if now > not_after {
        return Err(Problem::unauthorized(format!(
            "the client certificate expired at Unix time {not_after}; enroll again or renew before expiry"
        )));
    }
    // The SPIFFE ID and the node it names were read once, when the
    // connection was made.
    let spiffe_id = svid
        .spiffe_id
        .as_ref()
        .map_err(|e| Problem::unauthorized(e.clone()))?;
    let node_id = svid.node_id.ok_or_else(|| {
        Problem::forbidden(format!(
            "{spiffe_id} is not a node's SPIFFE ID (spiffe://{}/node/<node id>)",
            state.pki.trust_domain()
        ))
    })?;
    let node = match state.nodes.load(&state.store, &node_id).await {
        Ok(node) => node,
        Err(StoreError::NotFound { .. }) => {
            return Err(Problem::forbidden(format!(
                "node {node_id} is not enrolled in this control plane"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if node.spiffe_id != *spiffe_id || node.network_id != state.network.id {
        return Err(Problem::forbidden(format!(
            "the certificate names {spiffe_id} but node {node_id} is {} in another network",
            node.spiffe_id
        )));
    }
    match node.status {
        NodeStatus::Approved => Ok(Identity::Agent { node }),
        NodeStatus::Revoked => Err(Problem::forbidden(format!(
            "node {node_id} was revoked; it cannot use its SVID any more and must enroll again with a new identity"
        ))),
        NodeStatus::Pending => Err(Problem::forbidden(format!(
            "node {node_id} is pending approval; an operator must approve it first"
        ))),
    }
}

/// Records an audited request in the store and on the bus.
fn audit<'a>(
    state: &'a AppState,
    actor: String,
    action: &'a str,
    path: &'a str,
    response: &Response,
) -> impl std::future::Future<Output = ()> + Send + 'a {
    let note = response
        .extensions()
        .get::<AuditNote>()
        .cloned()
        .unwrap_or_default();
    let problem = response
        .extensions()
        .get::<ProblemMarker>()
        .map_or(String::new(), |m| m.0.clone());
    write_audit(state, actor, action, path, response.status(), note, problem)
}

async fn write_audit(
    state: &AppState,
    actor: String,
    action: &str,
    path: &str,
    status: StatusCode,
    note: AuditNote,
    problem: String,
) {
    let result = if status.is_success() {
        AuditResult::Success
    } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        AuditResult::Denied
    } else {
        AuditResult::Failed
    };
    let mut detail = if status.is_success() {
        note.detail.clone()
    } else {
        format!("{} {}", status.as_u16(), problem)
    };
    truncate(&mut detail, weft_store::limits::MAX_DETAIL_LEN);
    let mut target = note.target.clone().unwrap_or_else(|| path.to_owned());
    truncate(&mut target, weft_store::limits::MAX_TARGET_LEN);
    let mut actor = note.actor.clone().unwrap_or(actor);
    truncate(&mut actor, weft_store::limits::MAX_ACTOR_LEN);
    let record = NewAuditRecord {
        at: OffsetDateTime::now_utc(),
        actor,
        action: action.to_owned(),
        target: Some(target),
        network_id: note.network_id,
        result,
        detail,
    };
    match state.store.append_audit(record).await {
        Ok(stored) => {
            let view = AuditView::of(&stored);
            let data = serde_json::to_value(&view).unwrap_or_else(|_| json!({}));
            state
                .publish(&format!("weft.audit.{action}"), AUDIT_EVENT, data)
                .await;
        }
        Err(error) => {
            tracing::error!(%error, action, "cannot write the audit record");
            state.metrics.audit_failed("store");
        }
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// A JSON response with an audit note.
pub fn respond<T: serde::Serialize>(status: StatusCode, body: &T, note: AuditNote) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    response.extensions_mut().insert(note);
    response
}
