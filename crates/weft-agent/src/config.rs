//! `agent.toml`: the agent's configuration file, with `WEFT_AGENT_*`
//! environment overrides, validated at start with a precise error for
//! every bad key.
//!
//! ```toml
//! data_dir = "/var/lib/weft"          # node.key, svid.pem, svid.key, bundle.pem, network.json
//! listen = "0.0.0.0:7946"             # UDP address of mesh links
//! peers = ["192.0.2.10:7946"]         # neighbours to keep links to
//! tun = true                          # carry IP packets over weft0
//! tun_name = "weft0"
//! admin_socket = "/run/weft/agent.sock" # default: <data_dir>/agent.sock
//! metrics_listen = "127.0.0.1:9464"   # Prometheus /metrics on localhost; omit to disable
//! advertise = "192.0.2.7:7946"        # where others link to this node (told to the control plane)
//! max_peers = 8                       # dial peers the control plane suggests while fewer links than this
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::tun::DEFAULT_TUN_NAME;

/// Largest configuration file read.
pub const MAX_CONFIG_LEN: u64 = 64 * 1024;
/// Default UDP port of mesh links.
pub const DEFAULT_PORT: u16 = 7946;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (it names the key and position).
        reason: String,
    },
    /// A value is well-typed but wrong.
    #[error("{key}: {reason}")]
    Invalid {
        /// The key (or environment variable).
        key: String,
        /// Why.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: PathBuf,
    listen: Option<String>,
    #[serde(default)]
    peers: Vec<String>,
    tun: Option<bool>,
    tun_name: Option<String>,
    admin_socket: Option<PathBuf>,
    metrics_listen: Option<String>,
    advertise: Option<String>,
    max_peers: Option<usize>,
}

/// A validated agent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSettings {
    /// Holds the identity, SVID, bundle, network file and state.
    pub data_dir: PathBuf,
    /// UDP address of mesh links.
    pub listen: SocketAddr,
    /// Neighbours to keep links to.
    pub peers: Vec<SocketAddr>,
    /// TUN interface name, if the data plane is on.
    pub tun: Option<String>,
    /// Unix socket of the local admin API.
    pub admin_socket: PathBuf,
    /// Address of the Prometheus endpoint, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Where other nodes can link to this one, told to the control plane
    /// (default: the listen address, unless it is unspecified).
    pub advertise: Option<SocketAddr>,
    /// While the agent has fewer links than this, it dials peers the
    /// control plane suggests (0: never).
    pub max_peers: usize,
}

/// Default [`AgentSettings::max_peers`].
pub const DEFAULT_MAX_PEERS: usize = 8;

impl AgentSettings {
    /// The address to tell the control plane: `advertise`, else the bound
    /// address `local` if it is not unspecified.
    pub fn advertised(&self, local: SocketAddr) -> Option<SocketAddr> {
        self.advertise
            .or_else(|| (!local.ip().is_unspecified()).then_some(local))
    }
}

fn addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|e| ConfigError::Invalid {
        key: key.into(),
        reason: format!(
            "{text:?} is not an address like 192.0.2.1:7946 or [2001:db8::1]:7946 ({e})"
        ),
    })
}

impl AgentSettings {
    /// Reads `path` and applies the environment's overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read = |reason: String| ConfigError::Read {
            path: path.display().to_string(),
            reason,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| read(e.to_string()))?
            .len();
        if len > MAX_CONFIG_LEN {
            return Err(read(format!(
                "{len} bytes; at most {MAX_CONFIG_LEN} are read"
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
        Self::parse(&text, &path.display().to_string(), |k| {
            std::env::var(k).ok()
        })
    }

    /// Parses configuration text; `env` looks up overrides.
    pub fn parse(
        text: &str,
        origin: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.into(),
            reason: e.to_string(),
        })?;
        let data_dir = env("WEFT_AGENT_DATA_DIR").map_or(file.data_dir, PathBuf::from);
        if data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "data_dir".into(),
                reason: "must not be empty".into(),
            });
        }
        let listen = match env("WEFT_AGENT_LISTEN") {
            Some(v) => addr("WEFT_AGENT_LISTEN", &v)?,
            None => match &file.listen {
                Some(v) => addr("listen", v)?,
                None => SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            },
        };
        let peers = match env("WEFT_AGENT_PEERS") {
            Some(v) => v
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| addr("WEFT_AGENT_PEERS", p.trim()))
                .collect::<Result<_, _>>()?,
            None => file
                .peers
                .iter()
                .enumerate()
                .map(|(i, p)| addr(&format!("peers[{i}]"), p))
                .collect::<Result<_, _>>()?,
        };
        let tun_on = match env("WEFT_AGENT_TUN") {
            Some(v) => match v.as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "WEFT_AGENT_TUN".into(),
                        reason: format!("{v:?} is not true or false"),
                    });
                }
            },
            None => file.tun.unwrap_or(true),
        };
        let tun_name = file.tun_name.unwrap_or_else(|| DEFAULT_TUN_NAME.into());
        // Linux interface names: 1..15 bytes, no '/', no whitespace.
        if tun_name.is_empty() || tun_name.len() > 15 || tun_name.contains(['/', ' ', '\t', '\n']) {
            return Err(ConfigError::Invalid {
                key: "tun_name".into(),
                reason: format!(
                    "{tun_name:?} is not an interface name (1-15 bytes, no '/' or spaces)"
                ),
            });
        }
        let admin_socket = file
            .admin_socket
            .unwrap_or_else(|| data_dir.join("agent.sock"));
        let metrics_listen = file
            .metrics_listen
            .as_deref()
            .map(|m| addr("metrics_listen", m))
            .transpose()?;
        let advertise = match env("WEFT_AGENT_ADVERTISE") {
            Some(v) => Some(addr("WEFT_AGENT_ADVERTISE", &v)?),
            None => file
                .advertise
                .as_deref()
                .map(|a| addr("advertise", a))
                .transpose()?,
        };
        if let Some(a) = advertise
            && (a.ip().is_unspecified() || a.ip().is_multicast() || a.port() == 0)
        {
            return Err(ConfigError::Invalid {
                key: "advertise".into(),
                reason: format!("{a} cannot be dialed: give this node's own address and port"),
            });
        }
        let max_peers = file.max_peers.unwrap_or(DEFAULT_MAX_PEERS);
        if max_peers > 256 {
            return Err(ConfigError::Invalid {
                key: "max_peers".into(),
                reason: format!("{max_peers}; at most 256"),
            });
        }
        Ok(Self {
            data_dir,
            listen,
            peers,
            tun: tun_on.then_some(tun_name),
            admin_socket,
            metrics_listen,
            advertise,
            max_peers,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentSettings, ConfigError> {
        AgentSettings::parse(text, "agent.toml", |_| None)
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let s = parse("data_dir = \"/var/lib/weft\"").unwrap();
        assert_eq!(s.listen, "0.0.0.0:7946".parse().unwrap());
        assert!(s.peers.is_empty());
        assert_eq!(s.tun.as_deref(), Some("weft0"));
        assert_eq!(s.admin_socket, PathBuf::from("/var/lib/weft/agent.sock"));
        assert_eq!(s.metrics_listen, None);
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        let err = parse("data_dir = \"/x\"\nlisen = \"1.2.3.4:1\"").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        let err = parse("data_dir = \"/x\"\npeers = [\"nope\"]").unwrap_err();
        assert!(err.to_string().contains("peers[0]"), "{err}");
        let err = parse("data_dir = \"/x\"\ntun_name = \"a/b\"").unwrap_err();
        assert!(err.to_string().contains("tun_name"), "{err}");
        assert!(parse("").is_err());
        assert!(parse("data_dir = 3").is_err());
    }

    #[test]
    fn environment_overrides_the_file() {
        let s = AgentSettings::parse(
            "data_dir = \"/x\"\nlisten = \"10.0.0.1:1\"",
            "agent.toml",
            |k| match k {
                "WEFT_AGENT_LISTEN" => Some("10.0.0.2:2".into()),
                "WEFT_AGENT_PEERS" => Some("10.0.0.3:3, 10.0.0.4:4".into()),
                "WEFT_AGENT_TUN" => Some("false".into()),
                _ => None,
            },
        )
        .unwrap();
        assert_eq!(s.listen, "10.0.0.2:2".parse().unwrap());
        assert_eq!(s.peers.len(), 2);
        assert_eq!(s.tun, None);
    }
}
