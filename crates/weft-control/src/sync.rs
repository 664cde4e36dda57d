//! The agent's side of the control plane at run time: what `weft agent
//! run` does around the mesh when its data directory holds an enrollment
//! (`enrollment.json`).
//!
//! Before the agent starts, the network file is fetched from the control
//! plane (`GET /v1/networks/{network}/members`); if the control plane
//! cannot be reached, the copy in the data directory is used. Then, every
//! heartbeat interval (the control plane says how long; 10 s by default):
//!
//! - a heartbeat with the agent's CPU, memory, links, routes and the
//!   address where others can link to it;
//! - peers: while the agent has fewer links than `max_peers`, it dials
//!   nodes the control plane lists as up with an address, nearest node
//!   ids first (XOR distance, so that the mesh's links spread out rather
//!   than all landing on the same few nodes);
//! - the signed revocation list: a newer one is handed to the agent, which
//!   closes the revoked nodes' links and gossips the list over the mesh;
//! - the network file: nodes enrolled since are added to the roster and
//!   written to the data directory;
//! - the network policy: a new version is compiled against the members
//!   (tags, node ids, SPIFFE IDs) and put in force on the data plane;
//! - the SVID is renewed over mTLS once half of its lifetime has passed,
//!   and new links present the new one.
//!
//! Nothing here stops the mesh: when the control plane is unreachable the
//! agent runs on its cached state and `weft status` says so, with the
//! time of the last successful sync.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use data_encoding::BASE64;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use weft_agent::AgentHandle;
use weft_agent::acl::{Acl, AclRule, Nodes, Transport};
use weft_agent::config::AgentSettings;
use weft_agent::daemon::Daemon;
use weft_agent::network::{NETWORK_FILE, Network};
use weft_crypto::NodeId;
use weft_crypto::files::write_file_atomic;
use weft_crypto::tls::SvidCredentials;
use weft_proto::wire::{Message, RevocationList};

use crate::agent::{AgentPaths, AgentState};
use crate::api::RevocationListView;
use crate::client::{ClientError, ControlClient};
use crate::policy::{Action, PolicyView, Protocol};
use crate::telemetry::{HeartbeatRequest, LinkReport, MAX_LINKS};

/// Fewest seconds between syncs, whatever the control plane asks.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Most seconds between syncs.
const MAX_INTERVAL: Duration = Duration::from_secs(300);
/// How long one sync may take before it counts as a failure.
const SYNC_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the enrolled agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The enrollment state or the agent's files.
    #[error(transparent)]
    Enrollment(#[from] crate::agent::AgentError),
    /// The agent itself.
    #[error(transparent)]
    Agent(#[from] weft_agent::AgentError),
    /// No network file, and the control plane could not give one.
    #[error(
        "no network file in {dir} and the control plane gave none ({reason}); the agent needs it once to start"
    )]
    NoNetwork {
        /// The data directory.
        dir: String,
        /// What the control plane answered.
        reason: String,
    },
}

/// An agent that follows its control plane.
pub struct EnrolledAgent {
    /// The agent and everything around it.
    pub daemon: Daemon,
    sync: JoinHandle<()>,
}

impl EnrolledAgent {
    /// Fetches the network file (or falls back to the cached one), starts
    /// the agent as `settings` says and the sync loop beside it.
    pub async fn start(settings: &AgentSettings) -> Result<EnrolledAgent, SyncError> {
        let paths = AgentPaths::new(&settings.data_dir);
        let state = paths.load_state()?;
        let mut sync = Sync::new(paths, state)?;
        let fetched = sync.fetch_network().await;
        let network_path = settings.data_dir.join(NETWORK_FILE);
        match &fetched {
            Ok(_) => {}
            Err(e) if network_path.exists() => {
                tracing::warn!(error = %e, "control plane unreachable at start: using the cached network file");
                sync.failing_since = Some(SystemTime::now());
                sync.last_error = Some(e.to_string());
            }
            Err(e) => {
                return Err(SyncError::NoNetwork {
                    dir: settings.data_dir.display().to_string(),
                    reason: e.to_string(),
                });
            }
        }
        // Renew before starting if the SVID is past half its life (or
        // expired while the agent was down).
        if sync.renewal_due()
            && let Err(e) = sync.renew().await
        {
            tracing::warn!(error = %e, "SVID renewal at start failed");
        }
        let daemon = Daemon::start(settings).await?;
        let handle = daemon.agent.handle();
        sync.network = Network::load(&network_path).ok();
        sync.advertise = settings.advertised(daemon.agent.local_addr());
        sync.max_peers = settings.max_peers;
        sync.set_status(&handle);
        let task = tokio::spawn(sync.run(handle));
        Ok(EnrolledAgent { daemon, sync: task })
    }

    /// Stops the sync loop and the agent.
    pub async fn stop(self) {
        self.sync.abort();
        self.daemon.stop().await;
    }
}

/// The sync loop's state.
struct Sync {
    paths: AgentPaths,
    state: AgentState,
    client: ControlClient,
    interval: Duration,
    heartbeat_seq: u64,
    revocation_epoch: u64,
    /// The policy version in force (0: none).
    policy_version: u32,
    /// The entity tag of the network file held.
    members_etag: Option<String>,
    /// Where others can link to this node (told in heartbeats).
    advertise: Option<std::net::SocketAddr>,
    /// Dial suggested peers while fewer links than this.
    max_peers: usize,
    network: Option<Network>,
    cpu: CpuMeter,
    started: Instant,
    last_sync: Option<SystemTime>,
    failing_since: Option<SystemTime>,
    last_error: Option<String>,
    /// The control plane answered but refused this node (401/403: revoked,
    /// or its SVID no longer valid), rather than not answering.
    refused: bool,
}

impl Sync {
    fn new(paths: AgentPaths, state: AgentState) -> Result<Sync, SyncError> {
        let client = mtls_client(&paths, &state)?;
        Ok(Sync {
            paths,
            state,
            client,
            interval: crate::telemetry::HEARTBEAT_INTERVAL,
            heartbeat_seq: 0,
            revocation_epoch: 0,
            policy_version: 0,
            members_etag: None,
            advertise: None,
            max_peers: 0,
            network: None,
            cpu: CpuMeter::new(),
            started: Instant::now(),
            last_sync: None,
            failing_since: None,
            last_error: None,
            refused: false,
        })
    }

    async fn run(mut self, handle: AgentHandle) {
        loop {
            let outcome = tokio::time::timeout(SYNC_TIMEOUT, self.sync_once(&handle)).await;
            match outcome {
                Ok(Ok(())) => {
                    if self.failing_since.take().is_some() {
                        tracing::info!(control = %self.state.control_url, "control plane reachable again");
                    }
                    self.last_sync = Some(SystemTime::now());
                    self.last_error = None;
                    self.refused = false;
                }
                Ok(Err(e)) => self.failed(e),
                Err(_) => self.failed(format!("no answer within {}s", SYNC_TIMEOUT.as_secs())),
            }
            self.set_status(&handle);
            // Wake for the renewal if it falls before the next heartbeat.
            let pause = match self.until_renewal() {
                Some(left) => self.interval.min(left.max(MIN_INTERVAL)),
                None => self.interval,
            };
            tokio::time::sleep(pause).await;
        }
    }

    fn failed(&mut self, error: String) {
        if self.failing_since.is_none() {
            tracing::warn!(control = %self.state.control_url, %error, "control plane unreachable: running on cached state");
            self.failing_since = Some(SystemTime::now());
        }
        self.last_error = Some(error);
    }

    /// One round: heartbeat, revocations, network, renewal.
    async fn sync_once(&mut self, handle: &AgentHandle) -> Result<(), String> {
        self.heartbeat(handle).await?;
        self.follow_revocations(handle).await?;
        match self.fetch_network().await {
            Ok(Some(network)) => {
                if let Err(e) = handle.set_network(network.clone()).await {
                    // Not an extension of the roster in use: the agent must
                    // restart to take it (it was written to disk).
                    return Err(format!(
                        "the control plane's network file cannot be applied while running: {e}"
                    ));
                }
                tracing::info!(nodes = network.nodes.len(), "network file updated");
                self.network = Some(network);
                // Its selectors may name the new members: compile again.
                self.policy_version = 0;
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        self.follow_policy(handle).await?;
        // After the network file: a suggested peer enrolled since the last
        // round is in the roster by now, so its handshake is accepted.
        self.follow_peers(handle).await?;
        if self.renewal_due() {
            let creds = self.renew().await.map_err(|e| e.to_string())?;
            handle.set_credentials(&creds).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn heartbeat(&mut self, handle: &AgentHandle) -> Result<(), String> {
        let telemetry = handle.telemetry().await.map_err(|e| e.to_string())?;
        self.heartbeat_seq += 1;
        let links = telemetry
            .peers
            .iter()
            .take(MAX_LINKS)
            .filter_map(|p| {
                let m = p.metrics.as_ref()?;
                Some(LinkReport {
                    peer: p.id.to_string(),
                    up: matches!(
                        m.health,
                        weft_proto::liveness::LinkHealth::Up
                            | weft_proto::liveness::LinkHealth::Degraded
                    ),
                    rtt_ms: m
                        .srtt
                        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
                        .min(600_000.0),
                    loss: m.loss.clamp(0.0, 1.0),
                    cost: u32::from(m.cost),
                })
            })
            .collect();
        let report = HeartbeatRequest {
            seq: self.heartbeat_seq,
            cpu_percent: self.cpu.percent(),
            memory_bytes: resident_bytes(),
            uptime_seconds: Some(self.started.elapsed().as_secs()),
            routes: Some(u32::try_from(telemetry.routes).unwrap_or(u32::MAX)),
            links,
            versions: [("weft".to_string(), env!("CARGO_PKG_VERSION").to_string())].into(),
            endpoint: self.advertise.map(|a| a.to_string()),
        };
        let ack = self.client.heartbeat(&report).await.map_err(|e| {
            self.refused = matches!(e.status(), Some(401 | 403));
            format!("heartbeat: {e}")
        })?;
        self.interval = Duration::from_secs(ack.interval_seconds).clamp(MIN_INTERVAL, MAX_INTERVAL);
        Ok(())
    }

    /// Dials peers the control plane suggests while the agent has fewer
    /// links than `max_peers` (each dial in its own task; the next round
    /// tries again whatever did not link).
    async fn follow_peers(&mut self, handle: &AgentHandle) -> Result<(), String> {
        if self.max_peers == 0 {
            return Ok(());
        }
        let linked: std::collections::HashSet<NodeId> = handle
            .peers()
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .map(|p| p.id)
            .collect();
        if linked.len() >= self.max_peers {
            return Ok(());
        }
        let list = self
            .client
            .peers(&self.state.settings.network)
            .await
            .map_err(|e| format!("peers: {e}"))?;
        let me = handle.id();
        let mut candidates: Vec<(NodeId, std::net::SocketAddr)> = list
            .peers
            .iter()
            .filter_map(|p| Some((p.node_id.parse().ok()?, p.endpoint.parse().ok()?)))
            .filter(|(id, _)| *id != me && !linked.contains(id))
            .collect();
        candidates.sort_by_key(|(id, _)| xor_distance(&me, id));
        for (id, addr) in candidates.into_iter().take(self.max_peers - linked.len()) {
            let h = handle.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), h.connect(addr)).await {
                    Ok(Ok(got)) if got == id => {
                        tracing::info!(peer = %id, %addr, "linked to a peer the control plane suggested");
                    }
                    Ok(Ok(got)) => {
                        tracing::warn!(expected = %id, %got, %addr, "a suggested peer's address answered as another node");
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %id, %addr, error = %e, "suggested peer not linked")
                    }
                    Err(_) => tracing::debug!(peer = %id, %addr, "suggested peer did not answer"),
                }
            });
        }
        Ok(())
    }

    async fn follow_revocations(&mut self, handle: &AgentHandle) -> Result<(), String> {
        let view = self
            .client
            .revocations(&self.state.settings.network)
            .await
            .map_err(|e| format!("revocation list: {e}"))?;
        if view.epoch <= self.revocation_epoch {
            return Ok(());
        }
        let list = revocation_list(&view)?;
        // `false`: the agent already held it (a neighbour gossiped it).
        let newer = handle.revoke(list).await.map_err(|e| e.to_string())?;
        tracing::info!(
            epoch = view.epoch,
            revoked = view.revoked.len(),
            newer,
            "revocation list from the control plane"
        );
        self.revocation_epoch = view.epoch;
        Ok(())
    }

    async fn follow_policy(&mut self, handle: &AgentHandle) -> Result<(), String> {
        let view = match self
            .client
            .get_policy(&self.state.settings.network, None)
            .await
        {
            Ok(view) => view,
            // No policy set: everything is allowed.
            Err(ClientError::Problem { status: 404, .. }) => {
                if self.policy_version != 0 {
                    handle.set_acl(None);
                    self.policy_version = 0;
                }
                return Ok(());
            }
            Err(e) => return Err(format!("policy: {e}")),
        };
        if view.version == self.policy_version {
            return Ok(());
        }
        let network = self
            .network
            .as_ref()
            .ok_or("policy: no network file to resolve its selectors against")?;
        handle.set_acl(Some(compile_policy(&view, network)));
        self.policy_version = view.version;
        Ok(())
    }

    /// Fetches the network file (a 304 when the ETag still matches);
    /// writes it to the data directory and returns it when it differs from
    /// the one held.
    async fn fetch_network(&mut self) -> Result<Option<Network>, ClientError> {
        let Some(answer) = self
            .client
            .poll_members(&self.state.settings.network, self.members_etag.as_deref())
            .await?
        else {
            return Ok(None);
        };
        let unexpected = |reason: String| ClientError::Unexpected {
            status: 200,
            url: format!(
                "{}/v1/networks/{}/members",
                self.client.base(),
                self.state.settings.network
            ),
            reason,
        };
        let network = Network::from_json(answer.json.as_bytes())
            .map_err(|e| unexpected(format!("not a network file: {e}")))?;
        if network.trust_domain.as_str() != self.state.settings.trust_domain {
            return Err(unexpected(format!(
                "the network file is for trust domain {}, this node is in {}",
                network.trust_domain.as_str(),
                self.state.settings.trust_domain
            )));
        }
        self.members_etag = answer.etag;
        let file = self.paths.dir.join(NETWORK_FILE);
        if std::fs::read(&file).is_ok_and(|old| old == answer.json.as_bytes()) {
            return Ok(None);
        }
        write_file_atomic(&file, answer.json.as_bytes(), 0o644, true)
            .map_err(|e| unexpected(format!("cannot write {}: {e}", file.display())))?;
        Ok(Some(network))
    }

    /// How long until half the SVID's lifetime has passed (zero if it
    /// has); `None` if the state records no SVID.
    fn until_renewal(&self) -> Option<Duration> {
        let not_after = self.state.svid_not_after.as_deref().and_then(|t| {
            OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })?;
        let ttl = time::Duration::seconds(
            i64::try_from(self.state.settings.svid_ttl_seconds).unwrap_or(i64::MAX),
        );
        let due = not_after - ttl / 2;
        let left = due - OffsetDateTime::now_utc();
        Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
    }

    /// Whether half the SVID's lifetime has passed.
    fn renewal_due(&self) -> bool {
        self.until_renewal() == Some(Duration::ZERO)
    }

    /// Renews the SVID, reloads the state and the client, and returns the
    /// new credentials.
    async fn renew(&mut self) -> Result<SvidCredentials, crate::agent::AgentError> {
        self.state = crate::agent::renew(&self.paths.dir).await?;
        self.client = mtls_client(&self.paths, &self.state)?;
        tracing::info!(until = ?self.state.svid_not_after, "SVID renewed");
        SvidCredentials::load(&self.paths.svid_dir())
            .map_err(|e| crate::agent::AgentError::Local(e.to_string()))
    }

    fn set_status(&self, handle: &AgentHandle) {
        let url = &self.state.control_url;
        let cached = match &self.network {
            Some(n) => format!("network file of {} nodes", n.nodes.len()),
            None => "the network file in the data directory".into(),
        };
        let since = |t: Option<SystemTime>| {
            t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .and_then(|d| OffsetDateTime::from_unix_timestamp(d.as_secs() as i64).ok())
                .map_or_else(|| "never".into(), crate::api::rfc3339)
        };
        let svid = self.state.svid_not_after.as_deref().unwrap_or("unknown");
        let text = match self.failing_since {
            None => format!(
                "connected to {url}: last sync {}, revocation epoch {}, {cached}, SVID valid until {svid}",
                since(self.last_sync),
                self.revocation_epoch
            ),
            Some(t) => format!(
                "{} {url} since {} ({}): running on cached state ({cached}, revocation epoch {}), last sync {}, SVID valid until {svid}",
                if self.refused {
                    "REFUSED by"
                } else {
                    "UNREACHABLE"
                },
                since(Some(t)),
                self.last_error.as_deref().unwrap_or("no answer"),
                self.revocation_epoch,
                since(self.last_sync)
            ),
        };
        handle.set_control_status(text);
    }
}

fn mtls_client(
    paths: &AgentPaths,
    state: &AgentState,
) -> Result<ControlClient, crate::agent::AgentError> {
    let creds = SvidCredentials::load(&paths.svid_dir()).map_err(|e| {
        crate::agent::AgentError::Local(format!("SVID in {}: {e}", paths.dir.display()))
    })?;
    Ok(ControlClient::new(
        &state.control_url,
        paths.trust()?,
        Some(creds),
        None,
    )?)
}

/// Resolves a policy's selectors against the network's members: `*`,
/// `node:<id>`, a SPIFFE ID of the trust domain, `tag:<tag>` (the nodes
/// enrolled with that tag). A selector naming no member matches nobody.
pub fn compile_policy(view: &PolicyView, network: &Network) -> Acl {
    let members: Vec<NodeId> = network.nodes.iter().map(|n| n.node_id()).collect();
    let resolve = |selectors: &[String]| -> Nodes {
        if selectors.iter().any(|s| s == "*") {
            return Nodes::Any;
        }
        let mut set = std::collections::HashSet::new();
        for s in selectors {
            if let Some(tag) = s.strip_prefix("tag:") {
                set.extend(members.iter().filter(|id| {
                    network
                        .tags
                        .get(id)
                        .is_some_and(|t| t.iter().any(|t| t == tag))
                }));
            } else if let Some(id) = s.strip_prefix("node:") {
                set.extend(id.parse::<NodeId>().ok());
            } else if let Ok(spiffe) = s.parse::<weft_crypto::SpiffeId>() {
                set.extend(NodeId::from_spiffe_id(&spiffe));
            }
        }
        Nodes::Only(set)
    };
    let ports = |items: &[String]| -> Option<Vec<std::ops::RangeInclusive<u16>>> {
        if items.iter().any(|p| p == "*") {
            return None;
        }
        // The control plane validated them: `N` or `A-B`, 1 to 65535.
        Some(
            items
                .iter()
                .filter_map(|p| match p.split_once('-') {
                    Some((a, b)) => Some(a.parse().ok()?..=b.parse().ok()?),
                    None => p.parse().ok().map(|n| n..=n),
                })
                .collect(),
        )
    };
    Acl {
        version: view.version,
        rules: view
            .document
            .rules
            .iter()
            .map(|r| AclRule {
                from: resolve(&r.from),
                to: resolve(&r.to),
                ports: ports(&r.ports),
                transport: match r.protocol {
                    Protocol::Tcp => Transport::Tcp,
                    Protocol::Udp => Transport::Udp,
                    Protocol::Any => Transport::Any,
                },
                allow: r.action == Action::Allow,
            })
            .collect(),
        default_allow: view.document.default == Action::Allow,
    }
}

/// Kademlia's XOR distance between two node ids.
fn xor_distance(a: &NodeId, b: &NodeId) -> [u8; 32] {
    std::array::from_fn(|i| a.0[i] ^ b.0[i])
}

/// The weft-proto revocation list inside a control plane's answer.
pub fn revocation_list(view: &RevocationListView) -> Result<RevocationList, String> {
    let wire = BASE64
        .decode(view.wire.as_bytes())
        .map_err(|e| format!("revocation list: not base64: {e}"))?;
    match weft_proto::wire::decode_exact(&wire) {
        Ok(Message::Revocation(list)) => Ok(list),
        Ok(other) => Err(format!(
            "expected a revocation list, got a {} frame",
            other.kind()
        )),
        Err(e) => Err(format!("revocation list: {e}")),
    }
}

/// The process's CPU use between two calls, percent of one core, from the
/// scheduler's run time of every thread (`/proc/self/task/*/schedstat`,
/// nanoseconds, so no clock-tick assumption).
struct CpuMeter {
    last: Option<(Instant, u64)>,
}

impl CpuMeter {
    fn new() -> Self {
        let mut meter = CpuMeter { last: None };
        meter.last = process_cpu_ns().map(|ns| (Instant::now(), ns));
        meter
    }

    fn percent(&mut self) -> Option<f64> {
        let now = (Instant::now(), process_cpu_ns()?);
        let previous = self.last.replace(now)?;
        let wall = now.0.duration_since(previous.0).as_nanos() as f64;
        (wall > 0.0)
            .then(|| (100.0 * now.1.saturating_sub(previous.1) as f64 / wall).min(100_000.0))
    }
}

/// CPU time used so far by the process's live threads, nanoseconds.
pub(crate) fn process_cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir("/proc/self/task").ok()? {
        let path = entry.ok()?.path().join("schedstat");
        // A thread may exit between the listing and the read.
        if let Ok(text) = std::fs::read_to_string(&path) {
            total += text.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// Resident memory from `/proc/self/status` (`VmRSS`, kB).
fn resident_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Whether `dir` holds an enrollment, so that `weft agent run` should
/// follow a control plane.
pub fn is_enrolled(dir: &Path) -> bool {
    AgentPaths::new(dir).state().exists()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::policy::{PolicyDocument, Rule};
    use weft_crypto::{NodeIdentity, TrustDomain};

    fn packet(protocol: u8, port: u16) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[6] = protocol;
        p[42..44].copy_from_slice(&port.to_be_bytes());
        p
    }

    #[test]
    fn policies_compile_against_the_members() {
        let td = TrustDomain::new("mesh.example").unwrap();
        let ids: Vec<NodeIdentity> = (0..4).map(|_| NodeIdentity::generate().unwrap()).collect();
        let n: Vec<NodeId> = ids.iter().map(|i| i.node_id()).collect();
        let network = Network {
            trust_domain: td.clone(),
            authority: ids[0].public().signing,
            nodes: ids.iter().map(|i| i.public()).collect(),
            tags: [
                (n[0], vec!["role=web".to_string()]),
                (n[1], vec!["role=db".to_string()]),
            ]
            .into(),
        };
        let rule = |from: &[&str], to: &[&str], ports: &[&str], protocol, action| Rule {
            from: from.iter().map(|s| s.to_string()).collect(),
            to: to.iter().map(|s| s.to_string()).collect(),
            ports: ports.iter().map(|s| s.to_string()).collect(),
            protocol,
            action,
        };
        let view = PolicyView {
            network: "default".into(),
            version: 3,
            author: "test".into(),
            created_at: "2026-11-30T00:00:00Z".into(),
            document: PolicyDocument {
                default: Action::Deny,
                rules: vec![
                    rule(
                        &["tag:role=web"],
                        &["tag:role=db"],
                        &["5432"],
                        Protocol::Tcp,
                        Action::Allow,
                    ),
                    rule(
                        &[&n[2].spiffe_id(&td).to_string()],
                        &[&format!("node:{}", n[3])],
                        &["8000-8100"],
                        Protocol::Any,
                        Action::Allow,
                    ),
                    rule(&["*"], &["*"], &["*"], Protocol::Any, Action::Deny),
                ],
            },
        };
        let acl = compile_policy(&view, &network);
        assert_eq!(acl.version, 3);
        assert!(acl.allows(&n[0], &n[1], &packet(6, 5432)));
        assert!(
            !acl.allows(&n[0], &n[1], &packet(17, 5432)),
            "UDP is not in the rule"
        );
        assert!(
            !acl.allows(&n[2], &n[1], &packet(6, 5432)),
            "n2 has no web tag"
        );
        assert!(acl.allows(&n[2], &n[3], &packet(17, 8050)));
        assert!(!acl.allows(&n[2], &n[3], &packet(17, 8101)));
        assert!(
            !acl.allows(&n[3], &n[2], &packet(17, 8050)),
            "rules have a direction"
        );
    }
}
