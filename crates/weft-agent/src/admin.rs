//! The local admin API: a Unix socket (mode 0600, so only the agent's
//! user and root) answering one JSON request per line with one JSON line.
//!
//! ```text
//! > {"cmd":"status"}      < {"node_id":"…","mesh_address":"fd…",…}
//! > {"cmd":"peers"}       < [{"id":"…","addr":"…","health":"up"},…]
//! > {"cmd":"routes"}      < [{"dst":"…","next_hop":"…","metric":…,"seqno":…},…]
//! > {"cmd":"drain","peer":"…"}    < {"drained":true}
//! > {"cmd":"undrain","peer":"…"}  < {"drained":false}
//! > {"cmd":"reroute"}     < {"links":3}
//! ```
//!
//! `drain` and `undrain` are the self-healing loop's actuators for a link
//! (cost to infinity, or back to what liveness measures), kept for the
//! peer across reconnects (and set for a peer not linked now, for when it
//! links); they fail for a node outside the network. `reroute` forces
//! route re-selection over every link now; it fails if there is no link.
//!
//! Errors come back as `{"error":"…"}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::tun::TunStats;
use crate::{AgentError, AgentHandle};

/// Longest request line read.
const MAX_REQUEST: usize = 4096;
/// Longest response read by the client (a route table of 65 000 nodes).
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// Facts the status command reports besides what the node knows.
#[derive(Clone)]
pub struct StatusContext {
    /// UDP address of mesh links.
    pub listen: std::net::SocketAddr,
    /// The node's mesh IPv6 address.
    pub mesh_address: std::net::Ipv6Addr,
    /// Nodes in the network file.
    pub network_nodes: usize,
    /// The TUN data plane's counters, if it runs.
    pub tun: Option<(String, Arc<TunStats>)>,
    /// When the agent started.
    pub started: Instant,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    cmd: String,
    /// The neighbour, for `drain` and `undrain`.
    #[serde(default)]
    peer: Option<String>,
}

/// What `status` answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    /// This node.
    pub node_id: String,
    /// Its mesh address.
    pub mesh_address: String,
    /// UDP address of mesh links.
    pub listen: String,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Current neighbours.
    pub peers: usize,
    /// Destinations with a route.
    pub routes: usize,
    /// Nodes in the network.
    pub network_nodes: usize,
    /// Where network state comes from.
    pub control_plane: String,
    /// The network policy version in force (`None`: no policy, all
    /// traffic allowed).
    pub policy_version: Option<u32>,
    /// Refused peers by reason.
    pub refusals: std::collections::BTreeMap<String, u64>,
    /// TUN interface and its counters, if any.
    pub tun: Option<std::collections::BTreeMap<String, serde_json::Value>>,
}

/// A running admin socket; removes the socket file when stopped.
pub struct AdminServer {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `path` (mode 0600) and serves requests about `agent`.
    pub fn start(
        path: &Path,
        agent: AgentHandle,
        ctx: StatusContext,
    ) -> Result<AdminServer, AgentError> {
        let fail = |reason: String| AgentError::Admin(format!("{}: {reason}", path.display()));
        if path.exists() {
            // A socket left by a killed agent; a live one would answer.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(fail("another agent is serving this socket".into()));
            }
            std::fs::remove_file(path).map_err(|e| fail(e.to_string()))?;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| fail(e.to_string()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| fail(e.to_string()))?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (agent, ctx) = (agent.clone(), ctx.clone());
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, &agent, &ctx).await {
                        tracing::debug!(error = %e, "admin connection ended");
                    }
                });
            }
        });
        Ok(AdminServer {
            path: path.to_path_buf(),
            task,
        })
    }

    /// Stops serving and removes the socket file.
    pub fn stop(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve(
    stream: UnixStream,
    agent: &AgentHandle,
    ctx: &StatusContext,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read.take(MAX_REQUEST as u64 + 1)).lines();
    while let Some(line) = lines.next_line().await? {
        let answer = match serde_json::from_str::<Request>(&line) {
            Ok(r) => answer(&r, agent, ctx).await,
            Err(e) => Err(format!(
                "bad request {line:?}: {e}; send {{\"cmd\":\"status\"}}"
            )),
        };
        let mut out = match answer {
            Ok(v) => v.to_string(),
            Err(e) => serde_json::json!({ "error": e }).to_string(),
        };
        out.push('\n');
        write.write_all(out.as_bytes()).await?;
    }
    Ok(())
}

async fn answer(
    req: &Request,
    agent: &AgentHandle,
    ctx: &StatusContext,
) -> Result<serde_json::Value, String> {
    match req.cmd.as_str() {
        "status" => {
            let peers = agent.peers().await.map_err(|e| e.to_string())?;
            let routes = agent.routes().await.map_err(|e| e.to_string())?;
            let r = agent.refusals();
            let refusals = [
                ("not_a_node", r.not_a_node),
                ("not_enrolled", r.not_enrolled),
                ("revoked", r.revoked),
                ("own_identity", r.own_identity),
                ("handshake", r.handshake),
                ("duplicate", r.duplicate),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let tun = ctx.tun.as_ref().map(|(name, s)| {
                use std::sync::atomic::Ordering::Relaxed;
                [
                    ("interface", serde_json::json!(name)),
                    ("sent", s.sent.load(Relaxed).into()),
                    ("received", s.received.load(Relaxed).into()),
                    ("dropped_not_ours", s.dropped_not_ours.load(Relaxed).into()),
                    ("dropped_no_node", s.dropped_no_node.load(Relaxed).into()),
                    ("dropped_spoofed", s.dropped_spoofed.load(Relaxed).into()),
                    ("dropped_lagged", s.dropped_lagged.load(Relaxed).into()),
                    ("dropped_policy", s.dropped_policy.load(Relaxed).into()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
            });
            let status = Status {
                node_id: agent.id().to_string(),
                mesh_address: ctx.mesh_address.to_string(),
                listen: ctx.listen.to_string(),
                uptime_s: ctx.started.elapsed().as_secs(),
                peers: peers.len(),
                routes: routes.len(),
                network_nodes: ctx.network_nodes,
                control_plane: agent.control_status(),
                policy_version: agent.acl().map(|a| a.version),
                refusals,
                tun,
            };
            serde_json::to_value(&status).map_err(|e| e.to_string())
        }
        "peers" => {
            let peers = agent.peers().await.map_err(|e| e.to_string())?;
            Ok(serde_json::Value::Array(
                peers
                    .into_iter()
                    .map(|p| {
                        serde_json::json!({
                            "id": p.id.to_string(),
                            "addr": p.addr.to_string(),
                            "health": p.health.map(|h| format!("{h:?}").to_lowercase()),
                            "rtt_ms": p.metrics.and_then(|m| m.srtt).map(|d| d.as_secs_f64() * 1000.0),
                            "loss": p.metrics.map(|m| m.loss),
                            "cost": p.metrics.map(|m| m.cost),
                        })
                    })
                    .collect(),
            ))
        }
        "routes" => {
            let routes = agent.routes().await.map_err(|e| e.to_string())?;
            Ok(serde_json::Value::Array(
                routes
                    .into_iter()
                    .map(|(dst, r)| {
                        serde_json::json!({
                            "dst": dst.to_string(),
                            "mesh_address": crate::tun::mesh_address(&dst).to_string(),
                            "next_hop": r.next_hop.to_string(),
                            "metric": r.metric.0,
                            "seqno": r.seqno.0,
                        })
                    })
                    .collect(),
            ))
        }
        cmd @ ("drain" | "undrain") => {
            let drained = cmd == "drain";
            let peer = req
                .peer
                .as_deref()
                .ok_or_else(|| format!("{cmd} needs \"peer\": the neighbour's node id"))?;
            let peer: weft_crypto::NodeId = peer.parse().map_err(|e| {
                format!(
                    "peer {:?} is not a node id: {e}",
                    peer.chars().take(80).collect::<String>()
                )
            })?;
            if agent
                .drain(peer, drained)
                .await
                .map_err(|e| e.to_string())?
            {
                Ok(serde_json::json!({ "drained": drained }))
            } else {
                Err(format!("{peer} is not a node of this network"))
            }
        }
        "reroute" => match agent.reroute().await.map_err(|e| e.to_string())? {
            0 => Err("no link to re-evaluate".into()),
            links => Ok(serde_json::json!({ "links": links })),
        },
        other => Err(format!(
            "unknown command {other:?}; the commands are status, peers, routes, drain, undrain, reroute"
        )),
    }
}

/// Sends `cmd` to the agent at `socket` and returns its answer.
pub async fn request(socket: &Path, cmd: &str) -> Result<serde_json::Value, AgentError> {
    send(socket, serde_json::json!({ "cmd": cmd })).await
}

/// Drains (`drained`) or undrains the agent's link to `peer` through the
/// admin socket; an error if the agent has no link to it.
pub async fn drain(
    socket: &Path,
    peer: &weft_crypto::NodeId,
    drained: bool,
) -> Result<(), AgentError> {
    let cmd = if drained { "drain" } else { "undrain" };
    send(
        socket,
        serde_json::json!({ "cmd": cmd, "peer": peer.to_string() }),
    )
    .await
    .map(|_| ())
}

/// Forces route re-selection through the admin socket; returns the links
/// re-evaluated.
pub async fn reroute(socket: &Path) -> Result<u64, AgentError> {
    let v = send(socket, serde_json::json!({ "cmd": "reroute" })).await?;
    Ok(v.get("links")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0))
}

/// Sends one request line to the agent at `socket` and returns its answer.
async fn send(socket: &Path, request: serde_json::Value) -> Result<serde_json::Value, AgentError> {
    let fail = |reason: String| AgentError::Admin(format!("{}: {reason}", socket.display()));
    let stream = UnixStream::connect(socket).await.map_err(|e| {
        fail(format!(
            "{e}; is the agent running (weft agent run), and is this its admin_socket?"
        ))
    })?;
    let (read, mut write) = stream.into_split();
    let line = request.to_string() + "\n";
    write
        .write_all(line.as_bytes())
        .await
        .map_err(|e| fail(e.to_string()))?;
    write.shutdown().await.map_err(|e| fail(e.to_string()))?;
    let mut text = String::new();
    read.take(MAX_RESPONSE as u64)
        .read_to_string(&mut text)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(text.trim()).map_err(|e| fail(format!("bad answer: {e}")))?;
    if let Some(e) = value.get("error").and_then(|e| e.as_str()) {
        return Err(fail(e.to_string()));
    }
    Ok(value)
}
