//! The network file: what an agent must know about its mesh besides its
//! own identity: the enrolled nodes' public keys (in enrollment order, the
//! roster) and the key that signs revocation lists. The control plane
//! hands it out at enrollment and serves updates; the agent keeps the last
//! copy in its data directory so the mesh keeps running when the control
//! plane is unreachable.
//!
//! JSON, because operators read it and the control plane serves it:
//!
//! ```json
//! { "version": 1, "trust_domain": "mesh.example",
//!   "authority": "<base64 composite public key>",
//!   "nodes": [ { "signing": "<base64>", "kem": "<base64>", "tags": ["role=web"] } ] }
//! ```
//!
//! `tags` (optional) are the tags the node was enrolled with; the network
//! policy's `tag:` selectors resolve against them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use data_encoding::BASE64;
use serde::{Deserialize, Serialize};
use weft_crypto::kem::EncapsulationKey;
use weft_crypto::sign::CompositePublicKey;
use weft_crypto::{NodeId, NodePublicIdentity, TrustDomain};
use weft_proto::roster::Roster;

/// File name of the network file in an agent's data directory.
pub const NETWORK_FILE: &str = "network.json";
/// Largest network file read (about 4 KB per node: 65 000 nodes).
pub const MAX_NETWORK_FILE_LEN: u64 = 256 * 1024 * 1024;
const VERSION: u32 = 1;
/// Most tags per node in a network file.
pub const MAX_TAGS: usize = 32;
/// Longest tag in a network file, bytes.
pub const MAX_TAG_LEN: usize = 128;

/// Why a network file was refused.
#[derive(Debug, thiserror::Error)]
pub enum NetworkFileError {
    /// Reading failed.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Larger than [`MAX_NETWORK_FILE_LEN`].
    #[error("network file is {len} bytes; at most {MAX_NETWORK_FILE_LEN} are read")]
    TooLarge {
        /// Its length.
        len: u64,
    },
    /// Not the expected JSON.
    #[error("network file is not valid: {0}")]
    Json(String),
    /// A field holds a bad value.
    #[error("network file field {field}: {reason}")]
    Field {
        /// Which field (`nodes[3].kem`).
        field: String,
        /// Why.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkJson {
    version: u32,
    trust_domain: String,
    authority: String,
    nodes: Vec<NodeJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeJson {
    signing: String,
    kem: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tags: Vec<String>,
}

/// A parsed network file.
#[derive(Clone)]
pub struct Network {
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// Key of the revocation-list signer.
    pub authority: CompositePublicKey,
    /// Enrolled nodes in enrollment order.
    pub nodes: Vec<NodePublicIdentity>,
    /// Nodes' tags (nodes without tags are absent).
    pub tags: HashMap<NodeId, Vec<String>>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("trust_domain", &self.trust_domain)
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl Network {
    /// Parses a network file's bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, NetworkFileError> {
        if bytes.len() as u64 > MAX_NETWORK_FILE_LEN {
            return Err(NetworkFileError::TooLarge {
                len: bytes.len() as u64,
            });
        }
        let json: NetworkJson =
            serde_json::from_slice(bytes).map_err(|e| NetworkFileError::Json(e.to_string()))?;
        let field = |field: String, reason: String| NetworkFileError::Field { field, reason };
        if json.version != VERSION {
            return Err(field(
                "version".into(),
                format!(
                    "{} is not supported; this agent reads {VERSION}",
                    json.version
                ),
            ));
        }
        let trust_domain = TrustDomain::new(&json.trust_domain)
            .map_err(|e| field("trust_domain".into(), e.to_string()))?;
        let decode = |name: String, text: &str| {
            BASE64
                .decode(text.as_bytes())
                .map_err(|e| field(name, format!("not base64: {e}")))
        };
        let authority =
            CompositePublicKey::from_bytes(&decode("authority".into(), &json.authority)?)
                .map_err(|e| field("authority".into(), e.to_string()))?;
        let mut nodes = Vec::with_capacity(json.nodes.len());
        let mut tags = HashMap::new();
        for (i, n) in json.nodes.iter().enumerate() {
            if n.tags.len() > MAX_TAGS {
                return Err(field(
                    format!("nodes[{i}].tags"),
                    format!("{} tags; at most {MAX_TAGS}", n.tags.len()),
                ));
            }
            if let Some((j, _)) = n
                .tags
                .iter()
                .enumerate()
                .find(|(_, t)| t.is_empty() || t.len() > MAX_TAG_LEN)
            {
                return Err(field(
                    format!("nodes[{i}].tags[{j}]"),
                    format!("a tag has 1 to {MAX_TAG_LEN} bytes"),
                ));
            }
            let signing =
                CompositePublicKey::from_bytes(&decode(format!("nodes[{i}].signing"), &n.signing)?)
                    .map_err(|e| field(format!("nodes[{i}].signing"), e.to_string()))?;
            let kem = EncapsulationKey::from_bytes(&decode(format!("nodes[{i}].kem"), &n.kem)?)
                .map_err(|e| field(format!("nodes[{i}].kem"), e.to_string()))?;
            let node = NodePublicIdentity { signing, kem };
            if !n.tags.is_empty() {
                tags.insert(node.node_id(), n.tags.clone());
            }
            nodes.push(node);
        }
        Ok(Self {
            trust_domain,
            authority,
            nodes,
            tags,
        })
    }

    /// Reads and parses a network file.
    pub fn load(path: &Path) -> Result<Self, NetworkFileError> {
        let read = |reason: String| NetworkFileError::Read {
            path: path.display().to_string(),
            reason,
        };
        let len = std::fs::metadata(path)
            .map_err(|e| read(e.to_string()))?
            .len();
        if len > MAX_NETWORK_FILE_LEN {
            return Err(NetworkFileError::TooLarge { len });
        }
        let bytes = std::fs::read(path).map_err(|e| read(e.to_string()))?;
        Self::from_json(&bytes)
    }

    /// The JSON encoding.
    pub fn to_json(&self) -> String {
        let json = NetworkJson {
            version: VERSION,
            trust_domain: self.trust_domain.as_str().to_string(),
            authority: BASE64.encode(self.authority.as_bytes()),
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeJson {
                    signing: BASE64.encode(n.signing.as_bytes()),
                    kem: BASE64.encode(&n.kem.to_bytes()),
                    tags: self.tags.get(&n.node_id()).cloned().unwrap_or_default(),
                })
                .collect(),
        };
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string_pretty(&json).unwrap_or_default()
    }

    /// The roster of the nodes' signing keys.
    pub fn roster(&self) -> Result<Arc<Roster>, NetworkFileError> {
        Roster::of(self.nodes.iter().map(|n| n.signing.clone()))
            .map(Arc::new)
            .map_err(|e| NetworkFileError::Field {
                field: "nodes".into(),
                reason: e.to_string(),
            })
    }

    /// Every node's X-Wing key by node id.
    pub fn kem_keys(&self) -> HashMap<NodeId, EncapsulationKey> {
        self.nodes
            .iter()
            .map(|n| (n.node_id(), n.kem.clone()))
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use weft_crypto::NodeIdentity;

    fn sample(n: usize) -> Network {
        Network {
            trust_domain: TrustDomain::new("mesh.example").unwrap(),
            authority: weft_crypto::sign::CompositeSigningKey::generate()
                .unwrap()
                .public_key()
                .clone(),
            nodes: (0..n)
                .map(|_| NodeIdentity::generate().unwrap().public())
                .collect(),
            tags: HashMap::new(),
        }
    }

    #[test]
    fn round_trips_and_builds_the_roster() {
        let net = sample(3);
        let back = Network::from_json(net.to_json().as_bytes()).unwrap();
        assert_eq!(back.nodes.len(), 3);
        let roster = back.roster().unwrap();
        for n in &net.nodes {
            assert!(roster.contains(&n.node_id()));
        }
        assert_eq!(back.kem_keys().len(), 3);
    }

    #[test]
    fn bad_files_name_the_field() {
        let net = sample(1);
        let text = net.to_json();
        let err = Network::from_json(text.replace("\"version\": 1", "\"version\": 9").as_bytes())
            .unwrap_err();
        assert!(err.to_string().contains("version"), "{err}");
        let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["nodes"][0]["kem"] = "AAAA".into();
        let err = Network::from_json(json.to_string().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("nodes[0].kem"), "{err}");
        json["extra"] = 1.into();
        assert!(Network::from_json(json.to_string().as_bytes()).is_err());
        for junk in [&b""[..], b"{", b"[]", b"\xff\xfe"] {
            assert!(Network::from_json(junk).is_err());
        }
    }

    #[test]
    fn duplicate_nodes_are_refused() {
        let mut net = sample(1);
        net.nodes.push(net.nodes[0].clone());
        let back = Network::from_json(net.to_json().as_bytes()).unwrap();
        assert!(back.roster().is_err());
    }
}
