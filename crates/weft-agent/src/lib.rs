//! weft's node agent: the sans-IO mesh core ([`weft_proto::node::Node`])
//! driven on tokio over post-quantum QUIC links.
//!
//! One task owns the node and is the only place its state changes: link
//! tasks, the API and timers send it [`Command`]s over one channel, it feeds
//! them to the node and carries out the node's outputs (stream writes,
//! QUIC datagrams, link closes, events). A link is one QUIC connection
//! (see [`quic`]) whose peer proved in the handshake that it holds an
//! ML-DSA-65 X.509-SVID of the network's trust domain naming an enrolled,
//! unrevoked node.

#![forbid(unsafe_code)]

pub mod acl;
pub mod admin;
pub mod bench;
pub mod config;
pub mod daemon;
pub mod e2e;
pub mod metrics;
pub mod network;
pub mod quic;
pub mod tun;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use weft_crypto::kem::{DecapsulationKey, EncapsulationKey};
use weft_crypto::sign::{CompositePublicKey, CompositeSigningKey};
use weft_crypto::svid::{RevokedSerials, SvidVerifier, TrustBundle};
use weft_crypto::tls::{SpiffePeerVerifier, SvidCredentials, TlsError};
use weft_crypto::{NodeId, SpiffeId};
use weft_proto::liveness::LinkHealth;
use weft_proto::node::{
    CloseReason, Event, Input, LinkId, LinkMetrics, Node, NodeConfig, NodeError, Output, Route,
};
use weft_proto::origin::DirectCheck;
use weft_proto::roster::Roster;
use weft_proto::time::Time;
use weft_proto::wire::RevocationList;

pub use e2e::{E2e, E2eConfig, E2eError, E2eStats};
pub use quic::{RefusalCounts, Refusals};

/// Errors starting or using an agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The TLS configuration could not be built from the credentials.
    #[error("TLS configuration: {0}")]
    Tls(#[from] TlsError),
    /// The QUIC configuration was refused.
    #[error("QUIC configuration: {0}")]
    Quic(String),
    /// The UDP socket could not be bound.
    #[error("cannot listen on {addr}: {reason}; is the port in use?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The mesh node could not be created (identity not in the roster).
    #[error("mesh node: {0}")]
    Node(#[from] NodeError),
    /// Dialing a peer failed.
    #[error("link to {addr} failed: {reason}")]
    Connect {
        /// The peer's address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The admin socket failed.
    #[error("admin socket {0}")]
    Admin(String),
    /// The agent's files or configuration are unusable.
    #[error("{0}")]
    Setup(String),
    /// The TUN interface could not be set up.
    #[error("TUN: {0}")]
    Tun(String),
    /// The agent has stopped.
    #[error("the agent has stopped")]
    Stopped,
}

/// What an agent needs to run.
pub struct AgentConfig {
    /// The node's mesh identity: signs its route announcements.
    pub key: Arc<CompositeSigningKey>,
    /// The node's X-Wing key: end-to-end sessions are set up to it.
    pub kem: DecapsulationKey,
    /// Other nodes' X-Wing public keys (from the control plane's node
    /// records), needed to seal datagrams to them.
    pub peer_kem_keys: HashMap<NodeId, EncapsulationKey>,
    /// The node's X.509-SVID (ML-DSA-65) for the QUIC handshakes; its
    /// SPIFFE ID must be `/node/<node id>` of `key`.
    pub svid: SvidCredentials,
    /// The trust domain's CA bundle.
    pub bundle: TrustBundle,
    /// The network's enrolled nodes.
    pub roster: Arc<Roster>,
    /// The key that signs revocation lists (the trust domain's authority).
    pub authority: CompositePublicKey,
    /// UDP address to listen on (port 0 picks one).
    pub listen: SocketAddr,
    /// Mesh protocol settings.
    pub node: NodeConfig,
    /// End-to-end session settings.
    pub e2e: E2eConfig,
}

/// A snapshot of what the agent measures, for heartbeats and the healing
/// loop.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// Neighbours and their links.
    pub peers: Vec<PeerInfo>,
    /// Destinations with a route.
    pub routes: usize,
    /// Announcements refused, by reason (forged, replayed, ...).
    pub refused_announcements: Vec<(String, u64)>,
    /// Links drained now, by peer.
    pub drained: Vec<NodeId>,
}

/// A datagram delivered to this node, opened end to end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The sender, authenticated by the session key.
    pub src: NodeId,
    /// The payload.
    pub payload: Vec<u8>,
}

/// A neighbour as [`Agent::peers`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerInfo {
    /// The neighbour.
    pub id: NodeId,
    /// Its UDP address.
    pub addr: SocketAddr,
    /// Measured health of the link.
    pub health: Option<LinkHealth>,
    /// What the liveness detector measured.
    pub metrics: Option<LinkMetrics>,
}

/// QUIC application error codes used when closing links.
mod close_code {
    pub const DEAD: u32 = 1;
    pub const REVOKED: u32 = 2;
    pub const MALFORMED: u32 = 3;
    pub const TOO_MANY_LINKS: u32 = 4;
    pub const DUPLICATE: u32 = 5;
    pub const OVERFLOW: u32 = 6;
    pub const SHUTDOWN: u32 = 7;
}

/// Frames queued for one link's stream before the link is given up as too
/// slow (a reliable stream cannot drop; one write per node input).
const LINK_QUEUE: usize = 4096;
/// Commands handled before the outputs are carried out, under load.
const BATCH: usize = 64;
/// Largest read from a link's stream at once.
const READ_CHUNK: usize = 64 * 1024;
/// Capacity of the event broadcast; slow subscribers miss old events.
const EVENT_CAPACITY: usize = 4096;
/// Redial delays for persistent peers.
const REDIAL_MIN: Duration = Duration::from_millis(200);
const REDIAL_MAX: Duration = Duration::from_secs(10);

enum Command {
    LinkUp {
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        peer: NodeId,
        dialed_by_us: bool,
        ready: Option<oneshot::Sender<Result<NodeId, AgentError>>>,
    },
    Received {
        link: LinkId,
        bytes: Bytes,
    },
    Datagram {
        link: LinkId,
        bytes: Bytes,
    },
    LinkClosed {
        link: LinkId,
    },
    /// Bytes of a link's stream quinn accepted (its send buffer is bounded
    /// by the stream's flow control): they leave the node's send window.
    Drained {
        link: LinkId,
        bytes: usize,
    },
    Send {
        dst: NodeId,
        payload: Vec<u8>,
    },
    Routes(oneshot::Sender<Vec<(NodeId, Route)>>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    Revoke(RevocationList, oneshot::Sender<bool>),
    SetNetwork(network::Network, oneshot::Sender<Result<(), AgentError>>),
    Drain(NodeId, bool, oneshot::Sender<bool>),
    Reroute(oneshot::Sender<usize>),
    InjectLoss(NodeId, f64),
    Telemetry(oneshot::Sender<Telemetry>),
    Hang,
    Forge(NodeId, oneshot::Sender<usize>),
    Shutdown,
}

/// The endpoint and the TLS configuration links are made with, which a
/// renewed SVID replaces.
struct LinkTls {
    endpoint: quinn::Endpoint,
    verifier: Arc<SpiffePeerVerifier>,
    client: RwLock<quinn::ClientConfig>,
}

/// State the handshake checks read outside the driver task.
struct Shared {
    me: NodeId,
    roster: RwLock<Arc<Roster>>,
    /// Mesh addresses of the roster's nodes, for the TUN data plane.
    addresses: RwLock<Arc<tun::AddressBook>>,
    /// The network policy in force, if the control plane gave one.
    acl: RwLock<Option<Arc<acl::Acl>>>,
    revoked: RwLock<std::collections::HashSet<NodeId>>,
    refusals: Refusals,
    control_status: RwLock<String>,
}

impl Shared {
    /// The handshake policy: the SVID must name an enrolled, unrevoked
    /// node other than us.
    fn authorize(&self, id: &SpiffeId) -> Result<(), String> {
        let Some(node) = NodeId::from_spiffe_id(id) else {
            Refusals::count(&self.refusals.not_a_node);
            return Err(format!("{id} does not name a node (/node/<node id>)"));
        };
        if node == self.me {
            Refusals::count(&self.refusals.own_identity);
            return Err("the peer presented our own identity".into());
        }
        if read(&self.revoked).contains(&node) {
            Refusals::count(&self.refusals.revoked);
            return Err(format!("node {node} is revoked"));
        }
        if !read(&self.roster).contains(&node) {
            Refusals::count(&self.refusals.not_enrolled);
            return Err(format!("node {node} is not enrolled in this network"));
        }
        Ok(())
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

/// Sends datagrams through a running agent and asks it about its state,
/// from any task; cheap to clone.
#[derive(Clone)]
pub struct AgentHandle {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    tls: Arc<LinkTls>,
}

impl AgentHandle {
    /// The node's id.
    pub fn id(&self) -> NodeId {
        self.shared.me
    }

    /// Sends `payload` to `dst` over the mesh, sealed end to end (the
    /// first datagram to a node waits for the session handshake).
    pub fn send(&self, dst: NodeId, payload: Vec<u8>) -> Result<(), AgentError> {
        self.commands
            .send(Command::Send { dst, payload })
            .map_err(|_| AgentError::Stopped)
    }

    /// The selected route to every reachable destination.
    pub async fn routes(&self) -> Result<Vec<(NodeId, Route)>, AgentError> {
        self.ask(Command::Routes).await
    }

    /// The current neighbours.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, AgentError> {
        self.ask(Command::Peers).await
    }

    /// Applies a revocation list (from the control plane); true if it was
    /// newer than the one held and correctly signed. Revoked peers' links
    /// are closed and their routes withdrawn mesh-wide.
    pub async fn revoke(&self, list: RevocationList) -> Result<bool, AgentError> {
        self.ask(|tx| Command::Revoke(list, tx)).await
    }

    /// Peers refused so far, by reason.
    pub fn refusals(&self) -> RefusalCounts {
        self.shared.refusals.snapshot()
    }

    /// Trusts a newer network file (nodes enrolled since): the roster
    /// grows and the new nodes' X-Wing keys are learnt. Refused if it is
    /// not an extension of the current roster (an index would change).
    pub async fn set_network(&self, network: network::Network) -> Result<(), AgentError> {
        self.ask(|tx| Command::SetNetwork(network, tx)).await?
    }

    /// Drains the link to `peer` (no route uses it; liveness is still
    /// measured) or puts it back. The setting is kept for the peer: a
    /// link to it that comes up later (a reconnect) is drained too, and a
    /// peer with no link now can be drained for when it links. False if
    /// `peer` is not in the network.
    pub async fn drain(&self, peer: NodeId, drained: bool) -> Result<bool, AgentError> {
        self.ask(|tx| Command::Drain(peer, drained, tx)).await
    }

    /// Forces route re-selection now: every link's currently measured cost
    /// goes to the route table at once (routine updates wait until a cost
    /// moves by more than the hysteresis, 25 %), drained links staying
    /// drained, and the changed routes are sent to the neighbours. Returns
    /// the links re-evaluated.
    pub async fn reroute(&self) -> Result<usize, AgentError> {
        tracing::info!(node = %self.id(), "forced route re-selection");
        self.ask(Command::Reroute).await
    }

    /// Fault injection for tests and the demo: drops this fraction of the
    /// datagrams (hellos included) to and from `peer`, as a lossy link
    /// would. 0 stops it. Logged, since it degrades a real link.
    pub fn inject_loss(&self, peer: NodeId, ratio: f64) -> Result<(), AgentError> {
        tracing::info!(%peer, ratio, "fault injection: dropping datagrams on the link");
        self.commands
            .send(Command::InjectLoss(peer, ratio.clamp(0.0, 1.0)))
            .map_err(|_| AgentError::Stopped)
    }

    /// Fault injection: the node stops working as a crashed or hung
    /// process would — it handles nothing and sends nothing, while its
    /// connections stay open so that no close frame tells the neighbours;
    /// their liveness detectors must notice. Only shutdown follows.
    pub fn hang(&self) -> Result<(), AgentError> {
        tracing::info!(node = %self.id(), "fault injection: the node hangs");
        self.commands
            .send(Command::Hang)
            .map_err(|_| AgentError::Stopped)
    }

    /// Fault injection: this node turns attacker and sends every neighbour
    /// an announcement claiming to come from `victim` but signed with its
    /// own key (a forgery the neighbours must refuse and report). Returns
    /// the links it was sent on.
    pub async fn inject_forged(&self, victim: NodeId) -> Result<usize, AgentError> {
        tracing::info!(node = %self.id(), %victim, "fault injection: forging announcements");
        self.ask(|tx| Command::Forge(victim, tx)).await
    }

    /// What the agent measures now.
    pub async fn telemetry(&self) -> Result<Telemetry, AgentError> {
        self.ask(Command::Telemetry).await
    }

    /// Dials `addr` once and returns the neighbour's id when the link is
    /// up (see [`Agent::connect`]).
    pub async fn connect(&self, addr: SocketAddr) -> Result<NodeId, AgentError> {
        let (tx, rx) = oneshot::channel();
        dial(&self.tls, addr, &self.commands, &self.shared, Some(tx)).await?;
        rx.await.map_err(|_| AgentError::Stopped)?
    }

    /// Presents `creds` (a renewed SVID) on every link made from now on;
    /// links already up keep the session they authenticated with.
    pub fn set_credentials(&self, creds: &SvidCredentials) -> Result<(), AgentError> {
        let (server, client) = quic::configs(creds, self.tls.verifier.clone())?;
        self.tls.endpoint.set_server_config(Some(server));
        *write(&self.tls.client) = client;
        tracing::info!(node = %self.id(), "new SVID in use for new links");
        Ok(())
    }

    /// The node whose mesh address is `addr`, among the roster's.
    pub fn node_at(&self, addr: &std::net::Ipv6Addr) -> Option<NodeId> {
        read(&self.shared.addresses).node(addr)
    }

    /// Puts `acl` in force on the data plane (`None`: allow everything).
    pub fn set_acl(&self, acl: Option<acl::Acl>) {
        match &acl {
            Some(a) => tracing::info!(
                version = a.version,
                rules = a.rules.len(),
                "network policy in force"
            ),
            None => tracing::info!("no network policy: all traffic allowed"),
        }
        *write(&self.shared.acl) = acl.map(Arc::new);
    }

    /// The network policy in force, if any.
    pub fn acl(&self) -> Option<Arc<acl::Acl>> {
        read(&self.shared.acl).clone()
    }

    /// Says where the network state comes from (shown by `weft status`).
    pub fn set_control_status(&self, status: impl Into<String>) {
        *write(&self.shared.control_status) = status.into();
    }

    /// What [`set_control_status`](Self::set_control_status) said last.
    pub fn control_status(&self) -> String {
        read(&self.shared.control_status).clone()
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, AgentError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .map_err(|_| AgentError::Stopped)?;
        rx.await.map_err(|_| AgentError::Stopped)
    }
}

/// A running agent. Dropping it does not stop it; call [`Agent::shutdown`].
pub struct Agent {
    id: NodeId,
    local_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    tls: Arc<LinkTls>,
    commands: mpsc::UnboundedSender<Command>,
    events: broadcast::Sender<Event>,
    deliveries: broadcast::Sender<Delivery>,
    shared: Arc<Shared>,
    metrics: Arc<metrics::AgentMetrics>,
    tasks: Vec<JoinHandle<()>>,
}

impl Agent {
    /// Starts the agent: binds the endpoint and runs the node. Must be
    /// called inside a tokio runtime.
    pub fn start(cfg: AgentConfig) -> Result<Agent, AgentError> {
        let key = cfg.key.clone();
        let unix_ms_at_zero = cfg.node.unix_ms_at_zero;
        let node = Node::new(
            cfg.key,
            cfg.node,
            cfg.roster.clone(),
            cfg.authority,
            Arc::new(DirectCheck),
        )?;
        let id = node.id();
        let mut e2e = E2e::new(id, cfg.kem, cfg.e2e);
        for (peer, key) in cfg.peer_kem_keys {
            e2e.set_peer_key(peer, key);
        }
        let shared = Arc::new(Shared {
            me: id,
            addresses: RwLock::new(Arc::new(tun::AddressBook::of_roster(&cfg.roster))),
            roster: RwLock::new(cfg.roster),
            acl: RwLock::new(None),
            revoked: RwLock::new(Default::default()),
            refusals: Refusals::default(),
            control_status: RwLock::new("no control plane configured".into()),
        });
        let policy = shared.clone();
        let verifier = SpiffePeerVerifier::new(
            SvidVerifier::new(cfg.bundle, RevokedSerials::default()),
            Arc::new(move |spiffe: &SpiffeId| policy.authorize(spiffe)),
        );
        let (endpoint, client) = quic::endpoint(cfg.listen, &cfg.svid, verifier.clone())?;
        let tls = Arc::new(LinkTls {
            endpoint: endpoint.clone(),
            verifier,
            client: RwLock::new(client),
        });
        let local_addr = endpoint.local_addr().map_err(|e| AgentError::Bind {
            addr: cfg.listen,
            reason: e.to_string(),
        })?;
        let (commands, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let (deliveries, _) = broadcast::channel(EVENT_CAPACITY);
        let metrics = Arc::new(metrics::AgentMetrics::new());
        let driver = Driver {
            node,
            key,
            unix_ms_at_zero,
            e2e,
            metrics: metrics.clone(),
            last_rx: HashMap::new(),
            vias: HashMap::new(),
            died: HashMap::new(),
            e2e_handshakes: 0,
            drained: Default::default(),
            loss: HashMap::new(),
            rng: {
                let mut seed = [0u8; 8];
                let _ = aws_lc_rs::rand::fill(&mut seed);
                u64::from_le_bytes(seed) | 1
            },
            deliveries: deliveries.clone(),
            start: Instant::now(),
            links: HashMap::new(),
            by_peer: HashMap::new(),
            next_link: 0,
            commands: commands.clone(),
            events: events.clone(),
            shared: shared.clone(),
        };
        let mut tasks = vec![tokio::spawn(driver.run(rx))];
        tasks.push(tokio::spawn(accept_loop(
            endpoint.clone(),
            commands.clone(),
            shared.clone(),
        )));
        tracing::info!(node = %id, addr = %local_addr, "agent started");
        Ok(Agent {
            id,
            local_addr,
            endpoint,
            tls,
            commands,
            events,
            deliveries,
            shared,
            metrics,
            tasks,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The UDP address links reach this agent at.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The agent's metrics (see [`metrics`]).
    pub fn metrics(&self) -> Arc<metrics::AgentMetrics> {
        self.metrics.clone()
    }

    /// See [`AgentHandle::refusals`].
    pub fn refusals(&self) -> RefusalCounts {
        self.shared.refusals.snapshot()
    }

    /// Subscribes to the node's events (routes, neighbours, revocations;
    /// `Delivered` events carry the sealed bytes).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Subscribes to datagrams delivered to this node, opened.
    pub fn deliveries(&self) -> broadcast::Receiver<Delivery> {
        self.deliveries.subscribe()
    }

    /// Dials `addr` once and returns the neighbour's id when the link is up.
    pub async fn connect(&self, addr: SocketAddr) -> Result<NodeId, AgentError> {
        self.handle().connect(addr).await
    }

    /// Keeps a link to `addr`: dials it now and again whenever the link is
    /// lost, with backoff, until the agent stops.
    pub fn add_peer(&mut self, addr: SocketAddr) {
        let tls = self.tls.clone();
        let (commands, shared) = (self.commands.clone(), self.shared.clone());
        self.tasks.push(tokio::spawn(async move {
            let mut delay = REDIAL_MIN;
            loop {
                match dial_and_wait(&tls, addr, &commands, &shared).await {
                    // The link lived: start over quickly.
                    Ok(()) => delay = REDIAL_MIN,
                    Err(AgentError::Stopped) => return,
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "dial failed");
                        delay = (delay * 2).min(REDIAL_MAX);
                    }
                }
                if commands.is_closed() {
                    return;
                }
                tokio::time::sleep(delay).await;
            }
        }));
    }

    /// See [`AgentHandle::send`].
    pub fn send(&self, dst: NodeId, payload: Vec<u8>) -> Result<(), AgentError> {
        self.handle().send(dst, payload)
    }

    /// A handle for other tasks.
    pub fn handle(&self) -> AgentHandle {
        AgentHandle {
            commands: self.commands.clone(),
            shared: self.shared.clone(),
            tls: self.tls.clone(),
        }
    }

    /// See [`AgentHandle::routes`].
    pub async fn routes(&self) -> Result<Vec<(NodeId, Route)>, AgentError> {
        self.handle().routes().await
    }

    /// See [`AgentHandle::peers`].
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, AgentError> {
        self.handle().peers().await
    }

    /// See [`AgentHandle::revoke`].
    pub async fn revoke(&self, list: RevocationList) -> Result<bool, AgentError> {
        self.handle().revoke(list).await
    }

    /// Stops the agent: closes every link (peers see the close at once
    /// rather than waiting for their detectors) and the endpoint.
    pub async fn shutdown(self) {
        let _ = self.commands.send(Command::Shutdown);
        self.endpoint
            .close(close_code::SHUTDOWN.into(), b"agent shutting down");
        for t in self.tasks {
            t.abort();
        }
        // Let the close frames leave before the socket goes.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Dials `addr`, and waits until the link so made closes.
async fn dial_and_wait(
    tls: &LinkTls,
    addr: SocketAddr,
    commands: &mpsc::UnboundedSender<Command>,
    shared: &Arc<Shared>,
) -> Result<(), AgentError> {
    let conn = dial(tls, addr, commands, shared, None).await?;
    conn.closed().await;
    Ok(())
}

/// Dials `addr`, authenticates the peer and hands the link to the driver.
async fn dial(
    tls: &LinkTls,
    addr: SocketAddr,
    commands: &mpsc::UnboundedSender<Command>,
    shared: &Arc<Shared>,
    ready: Option<oneshot::Sender<Result<NodeId, AgentError>>>,
) -> Result<quinn::Connection, AgentError> {
    if commands.is_closed() {
        return Err(AgentError::Stopped);
    }
    let failed = |reason: String| AgentError::Connect { addr, reason };
    let client = read(&tls.client).clone();
    let connecting = tls
        .endpoint
        .connect_with(client, addr, "weft-peer")
        .map_err(|e| failed(e.to_string()))?;
    let conn = connecting.await.map_err(|e| {
        if matches!(e, quinn::ConnectionError::TransportError(_)) {
            Refusals::count(&shared.refusals.handshake);
        }
        failed(e.to_string())
    })?;
    let peer = peer_node(&conn).map_err(failed)?;
    // The server checks our certificate after our side of the handshake
    // is done: the link exists only once its preamble answers ours.
    let (send, recv) = tokio::time::timeout(quic::STREAM_SETUP_TIMEOUT, async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(quic::STREAM_PREAMBLE)
            .await
            .map_err(|e| e.to_string())?;
        quic::read_preamble(&mut recv).await?;
        Ok::<_, String>((send, recv))
    })
    .await
    .map_err(|_| failed("the peer did not answer the link preamble".into()))?
    .map_err(|e| {
        if conn.close_reason().is_some() {
            Refusals::count(&shared.refusals.handshake);
        }
        failed(format!("the peer refused the link: {e}"))
    })?;
    commands
        .send(Command::LinkUp {
            conn: conn.clone(),
            send,
            recv,
            peer,
            dialed_by_us: true,
            ready,
        })
        .map_err(|_| AgentError::Stopped)?;
    Ok(conn)
}

fn peer_node(conn: &quinn::Connection) -> Result<NodeId, String> {
    let spiffe = quic::peer_spiffe_id(conn)?;
    NodeId::from_spiffe_id(&spiffe).ok_or_else(|| format!("{spiffe} does not name a node"))
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let (commands, shared) = (commands.clone(), shared.clone());
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            if let Err(reason) = accept_one(incoming, &commands, &shared).await {
                tracing::info!(%remote, %reason, "refused incoming link");
            }
        });
    }
}

async fn accept_one(
    incoming: quinn::Incoming,
    commands: &mpsc::UnboundedSender<Command>,
    shared: &Shared,
) -> Result<(), String> {
    let conn = incoming.await.map_err(|e| {
        if matches!(
            e,
            quinn::ConnectionError::TransportError(_) | quinn::ConnectionError::ConnectionClosed(_)
        ) {
            Refusals::count(&shared.refusals.handshake);
        }
        e.to_string()
    })?;
    let peer = peer_node(&conn)?;
    let accepted = tokio::time::timeout(quic::STREAM_SETUP_TIMEOUT, async {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        quic::read_preamble(&mut recv).await?;
        send.write_all(quic::STREAM_PREAMBLE)
            .await
            .map_err(|e| e.to_string())?;
        Ok((send, recv))
    })
    .await
    .map_err(|_| "the peer opened no stream in time".to_string())
    .and_then(|r| r);
    let (send, recv) = match accepted {
        Ok(s) => s,
        Err(reason) => {
            conn.close(close_code::MALFORMED.into(), reason.as_bytes());
            return Err(reason);
        }
    };
    commands
        .send(Command::LinkUp {
            conn,
            send,
            recv,
            peer,
            dialed_by_us: false,
            ready: None,
        })
        .map_err(|_| "the agent has stopped".to_string())
}

struct LinkHandle {
    conn: quinn::Connection,
    peer: NodeId,
    dialed_by_us: bool,
    writer: mpsc::Sender<Vec<u8>>,
    tasks: [JoinHandle<()>; 2],
}

/// How long after a neighbour's death a route moving away from it counts
/// as a reroute caused by it.
const REROUTE_WINDOW: Duration = Duration::from_secs(30);

struct Driver {
    node: Node,
    /// The node's signing key (fault injection forges with it).
    key: Arc<CompositeSigningKey>,
    /// The node's wall clock at start, Unix milliseconds.
    unix_ms_at_zero: u64,
    e2e: E2e,
    metrics: Arc<metrics::AgentMetrics>,
    /// When each neighbour last sent anything (detection time).
    last_rx: HashMap<NodeId, Instant>,
    /// Next hop of each selected route, from route events (reroute time).
    vias: HashMap<NodeId, NodeId>,
    /// Neighbours declared dead recently, and when.
    died: HashMap<NodeId, Instant>,
    e2e_handshakes: u64,
    /// Links drained through the API.
    drained: std::collections::BTreeSet<NodeId>,
    /// Fault injection: datagram drop ratio by peer.
    loss: HashMap<NodeId, f64>,
    rng: u64,
    deliveries: broadcast::Sender<Delivery>,
    start: Instant,
    links: HashMap<LinkId, LinkHandle>,
    by_peer: HashMap<NodeId, LinkId>,
    next_link: u64,
    commands: mpsc::UnboundedSender<Command>,
    events: broadcast::Sender<Event>,
    shared: Arc<Shared>,
}

impl Driver {
    fn now(&self) -> Time {
        Time(u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn instant(&self, t: Time) -> Instant {
        self.start + Duration::from_micros(t.0)
    }

    /// Ignores everything until shutdown, holding the links open.
    async fn hung(rx: &mut mpsc::UnboundedReceiver<Command>) {
        while let Some(c) = rx.recv().await {
            if matches!(c, Command::Shutdown) {
                return;
            }
        }
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        loop {
            let deadline = [self.node.next_deadline(), self.e2e.next_deadline()]
                .into_iter()
                .flatten()
                .min()
                .map(|t| self.instant(t));
            let command = tokio::select! {
                c = rx.recv() => match c {
                    Some(c) => Some(c),
                    None => break,
                },
                () = sleep_until(deadline) => None,
            };
            match command {
                Some(Command::Shutdown) => break,
                Some(Command::Hang) => {
                    Self::hung(&mut rx).await;
                    break;
                }
                Some(c) => self.handle(c),
                None => {
                    let now = self.now();
                    self.node.handle_timeout(now);
                    self.e2e.handle_timeout(now);
                }
            }
            // Under load, take what else is queued before carrying out the
            // outputs: one wake-up and one flush for a burst of packets.
            let (mut shutdown, mut hang) = (false, false);
            for _ in 0..BATCH {
                match rx.try_recv() {
                    Ok(Command::Shutdown) => {
                        shutdown = true;
                        break;
                    }
                    Ok(Command::Hang) => {
                        hang = true;
                        break;
                    }
                    Ok(c) => self.handle(c),
                    Err(_) => break,
                }
            }
            self.flush();
            if hang {
                Self::hung(&mut rx).await;
                break;
            }
            if shutdown {
                break;
            }
        }
        for (_, l) in self.links.drain() {
            l.conn
                .close(close_code::SHUTDOWN.into(), b"agent shutting down");
            for t in l.tasks {
                t.abort();
            }
        }
    }

    fn handle(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::LinkUp {
                conn,
                send,
                recv,
                peer,
                dialed_by_us,
                ready,
            } => {
                let result = self.link_up(conn, send, recv, peer, dialed_by_us);
                if let Some(ready) = ready {
                    let _ = ready.send(result.map(|()| peer));
                }
            }
            Command::Received { link, bytes } => {
                if let Some(l) = self.links.get(&link) {
                    self.last_rx.insert(l.peer, Instant::now());
                    self.node.handle(
                        now,
                        Input::Received {
                            link,
                            bytes: &bytes,
                        },
                    );
                }
            }
            Command::Datagram { link, bytes } => {
                if let Some(l) = self.links.get(&link) {
                    let peer = l.peer;
                    if self.injected_drop(&peer) {
                        return;
                    }
                    self.last_rx.insert(peer, Instant::now());
                    self.node.handle(
                        now,
                        Input::ReceivedDatagram {
                            link,
                            bytes: &bytes,
                        },
                    );
                }
            }
            Command::LinkClosed { link } => self.drop_link(link, now),
            Command::Drained { link, bytes } => {
                self.node.handle(now, Input::Drained { link, bytes });
            }
            Command::Send { dst, payload } => {
                if let Err(e) = self.e2e.seal(now, dst, payload) {
                    tracing::debug!(%dst, error = %e, "datagram not sealed");
                }
            }
            Command::Routes(tx) => {
                let roster = self.node.roster().clone();
                let routes = (0..roster.len())
                    .filter_map(|i| roster.id(weft_proto::roster::NodeIndex(i as u32)))
                    .filter_map(|id| self.node.route(&id).map(|r| (id, r)))
                    .collect();
                let _ = tx.send(routes);
            }
            Command::Peers(tx) => {
                let _ = tx.send(self.peer_infos());
            }
            Command::Revoke(list, tx) => {
                let _ = tx.send(self.node.revoke(now, list));
            }
            Command::SetNetwork(net, tx) => {
                let _ = tx.send(self.set_network(net));
            }
            Command::Drain(peer, drained, tx) => {
                // The drain belongs to the peer, not to one connection: it
                // is applied to the link held now, if any, and again to
                // every link to that peer that comes up later (a flapping
                // link comes back drained). A node outside the roster is
                // refused.
                let known = self.node.roster().index(&peer).is_some();
                let done = match self.by_peer.get(&peer) {
                    Some(&link) => self.node.set_drained(now, link, drained),
                    None => known,
                };
                if done && drained {
                    self.drained.insert(peer);
                } else if done {
                    self.drained.remove(&peer);
                }
                let _ = tx.send(done);
            }
            Command::Reroute(tx) => {
                let mut links: Vec<(NodeId, LinkId)> =
                    self.by_peer.iter().map(|(p, l)| (*p, *l)).collect();
                links.sort();
                let mut done = 0;
                for (peer, link) in links {
                    let drained = self.drained.contains(&peer);
                    done += usize::from(self.node.set_drained(now, link, drained));
                }
                let _ = tx.send(done);
            }
            Command::InjectLoss(peer, ratio) => {
                if ratio > 0.0 {
                    self.loss.insert(peer, ratio);
                } else {
                    self.loss.remove(&peer);
                }
            }
            Command::Telemetry(tx) => {
                let peers = self.peer_infos();
                let routes = self.node.table().selected_count();
                let refused_announcements = weft_proto::origin::Refusal::ALL
                    .iter()
                    .map(|r| (r.as_str().to_string(), self.node.refused(*r)))
                    .collect();
                let _ = tx.send(Telemetry {
                    peers,
                    routes,
                    refused_announcements,
                    drained: self.drained.iter().copied().collect(),
                });
            }
            Command::Forge(victim, tx) => {
                let _ = tx.send(self.forge(victim));
            }
            Command::Shutdown | Command::Hang => {}
        }
    }

    fn link_up(
        &mut self,
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        peer: NodeId,
        dialed_by_us: bool,
    ) -> Result<(), AgentError> {
        if read(&self.shared.revoked).contains(&peer) {
            conn.close(close_code::REVOKED.into(), b"revoked");
            return Err(AgentError::Connect {
                addr: conn.remote_address(),
                reason: format!("node {peer} is revoked"),
            });
        }
        if let Some(&existing) = self.by_peer.get(&peer) {
            // Both ends may dial each other at once. Both keep the
            // connection dialed by the smaller node id, so they agree.
            let keep_new = self
                .links
                .get(&existing)
                .is_some_and(|l| l.dialed_by_us != dialed_by_us)
                && dialed_by_us == (self.shared.me < peer);
            Refusals::count(&self.shared.refusals.duplicate);
            if !keep_new {
                conn.close(close_code::DUPLICATE.into(), b"already linked");
                return Err(AgentError::Connect {
                    addr: conn.remote_address(),
                    reason: format!("already linked to {peer}"),
                });
            }
            if let Some(old) = self.links.get(&existing) {
                old.conn
                    .close(close_code::DUPLICATE.into(), b"already linked");
            }
            let now = self.now();
            self.drop_link(existing, now);
        }
        let link = LinkId(self.next_link);
        self.next_link += 1;
        let (writer, queue) = mpsc::channel(LINK_QUEUE);
        let tasks = [
            tokio::spawn(write_loop(link, send, queue, self.commands.clone())),
            tokio::spawn(read_loop(link, conn.clone(), recv, self.commands.clone())),
        ];
        self.links.insert(
            link,
            LinkHandle {
                conn,
                peer,
                dialed_by_us,
                writer,
                tasks,
            },
        );
        self.by_peer.insert(peer, link);
        self.metrics.links_up.inc();
        let now = self.now();
        self.node.handle(now, Input::LinkUp { link, peer });
        if self.drained.contains(&peer) {
            self.node.set_drained(now, link, true);
        }
        tracing::info!(%peer, ?link, "link up");
        Ok(())
    }

    fn drop_link(&mut self, link: LinkId, now: Time) {
        let Some(l) = self.links.remove(&link) else {
            return;
        };
        if self.by_peer.get(&l.peer) == Some(&link) {
            self.by_peer.remove(&l.peer);
        }
        for t in l.tasks {
            t.abort();
        }
        self.node.handle(now, Input::LinkDown { link });
        tracing::info!(peer = %l.peer, ?link, "link down");
    }

    /// Carries out everything the node and the sessions asked for.
    fn flush(&mut self) {
        let mut overflowed = Vec::new();
        loop {
            while let Some((dst, payload)) = self.e2e.poll_transmit() {
                let now = self.now();
                self.node.handle(now, Input::Send { dst, payload });
            }
            let Some(output) = self.node.poll_output() else {
                break;
            };
            match output {
                Output::Transmit {
                    link,
                    bytes,
                    reliable,
                } => {
                    let Some(peer) = self.links.get(&link).map(|l| l.peer) else {
                        continue;
                    };
                    if !reliable && self.injected_drop(&peer) {
                        continue;
                    }
                    let Some(l) = self.links.get(&link) else {
                        continue;
                    };
                    // A datagram too big for one QUIC DATAGRAM frame (an
                    // end-to-end handshake message is 1.2 KB with its mesh
                    // header) takes the link's stream instead.
                    let fits = l
                        .conn
                        .max_datagram_size()
                        .is_some_and(|max| bytes.len() <= max);
                    if reliable || !fits {
                        if l.writer.try_send(bytes).is_err() {
                            overflowed.push(link);
                        }
                    } else if let Err(e) = l.conn.send_datagram(Bytes::from(bytes)) {
                        tracing::debug!(peer = %l.peer, error = %e, "datagram not sent");
                    }
                }
                Output::Close { link, reason } => {
                    if let Some(l) = self.links.get(&link) {
                        let code = match reason {
                            CloseReason::Dead => close_code::DEAD,
                            CloseReason::Revoked => close_code::REVOKED,
                            CloseReason::Malformed => close_code::MALFORMED,
                            CloseReason::TooManyLinks => close_code::TOO_MANY_LINKS,
                        };
                        l.conn.close(code.into(), format!("{reason:?}").as_bytes());
                    }
                    let now = self.now();
                    self.drop_link(link, now);
                }
                Output::Event(Event::Delivered { src, payload }) => {
                    let now = self.now();
                    match self.e2e.open(now, src, &payload) {
                        Ok(Some(payload)) => {
                            self.metrics.delivered.inc();
                            let _ = self.deliveries.send(Delivery { src, payload });
                        }
                        Ok(None) => {}
                        Err(e) => tracing::debug!(%src, error = %e, "datagram refused"),
                    }
                }
                Output::Event(e) => {
                    self.observe(&e);
                    if let Event::RevocationApplied { .. } = e {
                        // From the API or gossiped by a neighbour: the
                        // handshake refuses revoked nodes from now on.
                        let list = self.node.revocation().map(|l| l.revoked.clone());
                        write(&self.shared.revoked).extend(list.into_iter().flatten());
                    }
                    // Nobody listening is fine.
                    let _ = self.events.send(e);
                }
            }
        }
        let handshakes = self.e2e.stats().handshakes;
        self.metrics
            .e2e_handshakes
            .inc_by(handshakes.saturating_sub(self.e2e_handshakes));
        self.e2e_handshakes = handshakes;
        self.metrics.sync_sent(&self.node.stats().sent);
        for link in overflowed {
            if let Some(l) = self.links.get(&link) {
                tracing::warn!(peer = %l.peer, "link's send queue overflowed; closing it");
                l.conn
                    .close(close_code::OVERFLOW.into(), b"send queue overflow");
            }
            let now = self.now();
            self.drop_link(link, now);
        }
    }
}

impl Driver {
    /// See [`AgentHandle::inject_forged`].
    fn forge(&mut self, victim: NodeId) -> usize {
        // The node's own clock, so that the forgery passes the freshness
        // check and is refused for its signature.
        let unix_ms = self.unix_ms_at_zero + self.now().0 / 1000;
        let seqno = weft_proto::wire::Seqno(1000);
        let Ok(own) =
            weft_proto::origin::OwnOrigin::new(self.key.clone(), u32::MAX, seqno, unix_ms)
        else {
            return 0;
        };
        let Some(mut a) = own.announcement(seqno) else {
            return 0;
        };
        let mut cert = (*a.cert).clone();
        cert.origin = victim;
        a.cert = Arc::new(cert);
        let Ok(bytes) = weft_proto::wire::Message::Announcement(a).to_bytes() else {
            return 0;
        };
        self.links
            .values()
            .filter(|l| l.writer.try_send(bytes.clone()).is_ok())
            .count()
    }

    fn peer_infos(&self) -> Vec<PeerInfo> {
        self.links
            .iter()
            .map(|(id, l)| PeerInfo {
                id: l.peer,
                addr: l.conn.remote_address(),
                health: self.node.link_health(*id),
                metrics: self.node.link_metrics(*id),
            })
            .collect()
    }

    /// Whether fault injection drops this datagram on `peer`'s link.
    fn injected_drop(&mut self, peer: &NodeId) -> bool {
        let Some(&p) = self.loss.get(peer) else {
            return false;
        };
        // xorshift64: fast, and good enough to decide drops.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        (x >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn set_network(&mut self, net: network::Network) -> Result<(), AgentError> {
        let roster = net
            .roster()
            .map_err(|e| AgentError::Setup(format!("network file: {e}")))?;
        if roster.len() < self.node.roster().len() || !self.node.set_roster(roster.clone()) {
            return Err(AgentError::Setup(
                "the new network file does not extend the current roster (nodes reordered or removed)"
                    .into(),
            ));
        }
        for (id, key) in net.kem_keys() {
            self.e2e.set_peer_key(id, key);
        }
        *write(&self.shared.addresses) = Arc::new(tun::AddressBook::of_roster(&roster));
        *write(&self.shared.roster) = roster;
        Ok(())
    }

    /// Updates the metrics that events carry.
    fn observe(&mut self, e: &Event) {
        let now = Instant::now();
        match e {
            Event::NeighbourDead { peer } => {
                self.metrics.neighbours_dead.inc();
                if let Some(at) = self.last_rx.remove(peer) {
                    self.metrics
                        .detection
                        .observe(now.duration_since(at).as_secs_f64());
                }
                self.died
                    .retain(|_, at| now.duration_since(*at) < REROUTE_WINDOW);
                self.died.insert(*peer, now);
            }
            Event::RouteAdded { dst, via, .. } => {
                self.metrics.route_change("added");
                self.rerouted(*dst, *via, now);
            }
            Event::RouteChanged { dst, via, .. } => {
                self.metrics.route_change("changed");
                self.rerouted(*dst, *via, now);
            }
            Event::RouteLost { dst } => {
                self.metrics.route_change("lost");
                self.vias.remove(dst);
            }
            _ => {}
        }
    }

    fn rerouted(&mut self, dst: NodeId, via: NodeId, now: Instant) {
        if let Some(old) = self.vias.insert(dst, via)
            && old != via
            && let Some(at) = self.died.get(&old)
            && now.duration_since(*at) < REROUTE_WINDOW
        {
            self.metrics
                .reroute
                .observe(now.duration_since(*at).as_secs_f64());
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Writes the node's stream bytes in order, telling the driver as quinn
/// accepts them, so that the node's send window reopens only as fast as the
/// stream drains.
async fn write_loop(
    link: LinkId,
    mut send: quinn::SendStream,
    mut queue: mpsc::Receiver<Vec<u8>>,
    commands: mpsc::UnboundedSender<Command>,
) {
    while let Some(bytes) = queue.recv().await {
        if send.write_all(&bytes).await.is_err() {
            return;
        }
        let drained = Command::Drained {
            link,
            bytes: bytes.len(),
        };
        if commands.send(drained).is_err() {
            return;
        }
    }
}

/// Reads the link's stream and datagrams until the connection ends, then
/// tells the driver once.
async fn read_loop(
    link: LinkId,
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    commands: mpsc::UnboundedSender<Command>,
) {
    loop {
        let command = tokio::select! {
            chunk = recv.read_chunk(READ_CHUNK, true) => match chunk {
                Ok(Some(chunk)) => Command::Received { link, bytes: chunk.bytes },
                // The peer finished or reset its stream: the link cannot
                // carry control messages any more.
                Ok(None) | Err(_) => break,
            },
            datagram = conn.read_datagram() => match datagram {
                Ok(bytes) => Command::Datagram { link, bytes },
                Err(_) => break,
            },
        };
        if commands.send(command).is_err() {
            return;
        }
    }
    let _ = commands.send(Command::LinkClosed { link });
}
