//! `weft agent run`: loads the data directory, starts the agent, its
//! persistent peers, the TUN data plane and the admin socket.
//!
//! The data directory holds what enrollment wrote: `node.key` (the node
//! identity, 0600), `svid.pem`/`svid.key`/`bundle.pem` (its X.509-SVID
//! and the trust bundle), `network.json` (see [`crate::network`]), and
//! `state.json`, the boot epoch, raised at every start so that the node's
//! route announcements after a restart are newer than before it.

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use weft_crypto::svid::{TrustBundle, spiffe_id_from_der};
use weft_crypto::tls::SvidCredentials;
use weft_crypto::{NodeId, NodeIdentity};
use weft_proto::node::NodeConfig;

use crate::admin::{AdminServer, StatusContext};
use crate::config::AgentSettings;
use crate::network::{NETWORK_FILE, Network};
use crate::tun::{Tun, mesh_address};
use crate::{Agent, AgentConfig, AgentError};

/// File name of the node identity in the data directory.
pub const NODE_KEY_FILE: &str = "node.key";
/// File name of the persisted state.
pub const STATE_FILE: &str = "state.json";

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct State {
    epoch: u32,
}

/// A running agent with everything around it.
pub struct Daemon {
    /// The agent.
    pub agent: Agent,
    tun: Option<Tun>,
    admin: AdminServer,
    metrics: Option<tokio::task::JoinHandle<()>>,
}

fn setup(what: &str, path: &Path, e: impl std::fmt::Display) -> AgentError {
    AgentError::Setup(format!("{what} {}: {e}", path.display()))
}

/// Reads the boot epoch, raises it and writes it back before use, so a
/// crash after start can never reuse an epoch.
fn next_epoch(dir: &Path) -> Result<u32, AgentError> {
    let path = dir.join(STATE_FILE);
    let state: State = match std::fs::read(&path) {
        Ok(bytes) if bytes.len() <= 4096 => serde_json::from_slice(&bytes)
            .map_err(|e| setup("state file", &path, format!("{e}; delete it to start over")))?,
        Ok(_) => return Err(setup("state file", &path, "larger than 4 KiB")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
        Err(e) => return Err(setup("cannot read", &path, e)),
    };
    let epoch = state
        .epoch
        .checked_add(1)
        .ok_or_else(|| setup("state file", &path, "boot epoch exhausted"))?;
    let text = serde_json::to_vec(&State { epoch }).unwrap_or_default();
    weft_crypto::files::write_file_atomic(&path, &text, 0o600, true)
        .map_err(|e| setup("cannot write", &path, e))?;
    Ok(epoch)
}

impl Daemon {
    /// Starts everything `settings` asks for.
    pub async fn start(settings: &AgentSettings) -> Result<Daemon, AgentError> {
        let started = Instant::now();
        let dir = &settings.data_dir;
        let key_path = dir.join(NODE_KEY_FILE);
        let identity =
            NodeIdentity::load(&key_path).map_err(|e| setup("node identity", &key_path, e))?;
        let svid = SvidCredentials::load(dir).map_err(|e| setup("SVID in", dir, e))?;
        let bundle_path = dir.join(weft_crypto::ca::layout::BUNDLE);
        let bundle_pem = weft_crypto::files::read_public_file(&bundle_path, 1024 * 1024)
            .map_err(|e| setup("trust bundle", &bundle_path, e))?;
        let bundle = TrustBundle::from_pem(&bundle_pem)
            .map_err(|e| setup("trust bundle", &bundle_path, e))?;
        let network_path = dir.join(NETWORK_FILE);
        if !network_path.exists() {
            return Err(setup(
                "no network file at",
                &network_path,
                "it lists the enrolled nodes' public keys in enrollment order and the \
                 revocation authority's key (format in docs/agent.md); an enrolled agent \
                 fetches it from its control plane, otherwise provide it with the node's files",
            ));
        }
        let network = Network::load(&network_path).map_err(|e| setup("", &network_path, e))?;

        // The SVID must name this identity, or every peer will refuse it.
        let id = identity.node_id();
        let svid_id = svid
            .chain
            .first()
            .ok_or_else(|| setup("SVID in", dir, "empty certificate chain"))
            .and_then(|leaf| spiffe_id_from_der(leaf).map_err(|e| setup("SVID in", dir, e)))?;
        if NodeId::from_spiffe_id(&svid_id) != Some(id) {
            return Err(setup(
                "SVID in",
                dir,
                format!("it names {svid_id}, not this node ({id}); enroll again"),
            ));
        }
        if !svid_id.is_member_of(&network.trust_domain) {
            return Err(setup(
                "SVID in",
                dir,
                format!(
                    "{svid_id} is not in the network's trust domain {}",
                    network.trust_domain.as_str()
                ),
            ));
        }
        let roster = network.roster().map_err(|e| setup("", &network_path, e))?;
        if !roster.contains(&id) {
            return Err(setup(
                "",
                &network_path,
                format!("this node ({id}) is not in the network file; is enrollment approved?"),
            ));
        }

        let epoch = next_epoch(dir)?;
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let node = NodeConfig {
            epoch,
            unix_ms_at_zero: unix_ms,
            ..NodeConfig::default()
        };
        // The agent owns its key; the identity file keeps the seeds.
        let signing =
            weft_crypto::sign::CompositeSigningKey::from_bytes(&identity.signing_key().to_bytes())
                .map_err(|e| setup("node identity", &key_path, e))?;
        let mut agent = Agent::start(AgentConfig {
            key: std::sync::Arc::new(signing),
            kem: weft_crypto::kem::DecapsulationKey::from_seed(*identity.kem_key().seed()),
            peer_kem_keys: network.kem_keys(),
            svid,
            bundle,
            roster,
            authority: network.authority.clone(),
            listen: settings.listen,
            node,
            e2e: Default::default(),
        })?;
        for peer in &settings.peers {
            agent.add_peer(*peer);
        }
        let tun = match &settings.tun {
            Some(name) => Some(Tun::start(&agent, name)?),
            None => None,
        };
        let ctx = StatusContext {
            listen: agent.local_addr(),
            mesh_address: mesh_address(&id),
            network_nodes: network.nodes.len(),
            tun: tun.as_ref().map(|t| (t.name.clone(), t.stats.clone())),
            started,
        };
        agent.handle().set_control_status(
            "not configured: running on the network file in the data directory",
        );
        let admin = AdminServer::start(&settings.admin_socket, agent.handle(), ctx)?;
        let metrics = match settings.metrics_listen {
            Some(addr) => {
                let (local, task) =
                    crate::metrics::serve(addr, agent.handle(), agent.metrics()).await?;
                tracing::info!(%local, "metrics at http://{local}/metrics");
                Some(task)
            }
            None => None,
        };
        tracing::info!(node = %id, epoch, "agent running");
        Ok(Daemon {
            agent,
            tun,
            admin,
            metrics,
        })
    }

    /// Stops everything.
    pub async fn stop(self) {
        self.admin.stop();
        if let Some(m) = self.metrics {
            m.abort();
        }
        if let Some(t) = self.tun {
            t.stop();
        }
        self.agent.shutdown().await;
    }
}
