//! The JSON bodies of the HTTP API (requests refuse unknown fields; every
//! string and list is bounded by the body size limit and checked again by
//! the store).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;
use weft_store::{ApiToken, AuditRecord, JoinToken, Node, Revocation};

/// RFC 3339 text of a time (UTC).
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// Liveness.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the process answers.
    pub status: String,
}

/// Readiness: the store and the bus answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// `ok`.
    pub store: String,
    /// `ok`.
    pub bus: String,
    /// The database schema version.
    pub schema_version: i64,
}

/// A join token to create.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJoinToken {
    /// How many nodes it may enroll (1 to 100,000; default 1).
    #[serde(default = "one")]
    pub uses: u32,
    /// Seconds until it expires (default 3600; at most the server's limit,
    /// 30 days unless configured otherwise).
    #[serde(default = "hour")]
    pub ttl_seconds: u64,
    /// Tags given to every node it enrolls.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Approve nodes at once (else they wait, pending, for an operator).
    #[serde(default)]
    pub auto_approve: bool,
    /// What it is for.
    #[serde(default)]
    pub description: String,
}

fn one() -> u32 {
    1
}

fn hour() -> u64 {
    3600
}

/// A join token as stored (no secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenView {
    /// Its id (the public part of the token).
    pub id: String,
    /// The network it admits to.
    pub network: String,
    /// What it is for.
    pub description: String,
    /// Uses in all.
    pub max_uses: u32,
    /// Uses left.
    pub uses_left: u32,
    /// When it expires (RFC 3339).
    pub expires_at: String,
    /// Tags of the nodes it enrolls.
    pub tags: Vec<String>,
    /// Whether its nodes are approved at once.
    pub auto_approve: bool,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// Who made it.
    pub created_by: String,
}

impl JoinTokenView {
    /// The view of a stored token.
    pub fn of(t: &JoinToken, network: &str) -> Self {
        Self {
            id: t.id.to_string(),
            network: network.to_owned(),
            description: t.description.clone(),
            max_uses: t.max_uses,
            uses_left: t.uses_left,
            expires_at: rfc3339(t.expires_at),
            tags: t.tags.iter().map(str::to_owned).collect(),
            auto_approve: t.auto_approve,
            created_at: rfc3339(t.created_at),
            created_by: t.created_by.clone(),
        }
    }
}

/// A join token just made: the secret is shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedJoinToken {
    /// The token to give to `weft agent enroll --token`. Not stored; it
    /// cannot be shown again.
    pub token: String,
    /// The token's record.
    pub join_token: JoinTokenView,
}

/// A page of join tokens.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenPage {
    /// The tokens, oldest first.
    pub items: Vec<JoinTokenView>,
    /// Cursor of the next page, if any.
    pub next: Option<String>,
}

/// An enrollment: the join token and the agent's two public keys with
/// proofs of possession (see `weft_control::proof`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The join token.
    pub token: String,
    /// The node identity's composite public key (ML-DSA-65 ‖ Ed25519), base64.
    pub identity_public_key: String,
    /// The SVID key's ML-DSA-65 public key, base64.
    pub svid_public_key: String,
    /// The node's X-Wing (ML-KEM-768 + X25519) public key, base64: what
    /// other nodes agree keys with; listed in the network's members.
    pub kem_public_key: String,
    /// Composite signature of the identity over the enrollment message, base64.
    pub signature: String,
    /// ML-DSA-65 signature of the SVID key over the enrollment message, base64.
    pub svid_key_signature: String,
}

/// A claim by an approved node for its first SVID.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// The node identity's composite public key, base64.
    pub identity_public_key: String,
    /// The SVID key's ML-DSA-65 public key, base64.
    pub svid_public_key: String,
    /// When the claim was signed (Unix seconds; within 5 minutes of the server's clock).
    pub issued_at: i64,
    /// Composite signature of the identity over the claim message, base64.
    pub signature: String,
    /// ML-DSA-65 signature of the SVID key over the claim message, base64.
    pub svid_key_signature: String,
}

/// What a node needs to join the mesh.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MeshSettings {
    /// The network's name.
    pub network: String,
    /// Its trust domain.
    pub trust_domain: String,
    /// The node's SPIFFE ID.
    pub spiffe_id: String,
    /// The node's id.
    pub node_id: String,
    /// The control plane's SPIFFE ID (what the node checks on the server).
    pub control_spiffe_id: String,
    /// SHA-256 of the ML-DSA-65 CA root, `sha256:<hex>`.
    pub ca_fingerprint: String,
    /// The public key that signs revocation lists (composite), base64.
    pub authority_public_key: String,
    /// The network's revocation epoch now.
    pub revocation_epoch: u64,
    /// Lifetime of the node's SVIDs, seconds.
    pub svid_ttl_seconds: u64,
}

/// The outcome of an enrollment or claim.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollResponse {
    /// The node as recorded (`approved` or `pending`).
    pub node: NodeView,
    /// The X.509-SVID (PEM), when the node is approved.
    pub svid_pem: Option<String>,
    /// The CA bundle (PEM): ML-DSA-65 root and ECDSA compat root.
    pub ca_bundle_pem: String,
    /// Mesh settings.
    pub settings: MeshSettings,
}

/// A renewed SVID.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RenewResponse {
    /// The new X.509-SVID (PEM), over the same key.
    pub svid_pem: String,
    /// The CA bundle (PEM).
    pub ca_bundle_pem: String,
    /// End of its validity (RFC 3339).
    pub not_after: String,
    /// Renew again after this many seconds (half its lifetime).
    pub renew_after_seconds: u64,
}

/// A node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    /// Its id.
    pub node_id: String,
    /// Its network's name.
    pub network: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// `pending`, `approved` or `revoked`.
    pub status: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// When it enrolled (RFC 3339).
    pub enrolled_at: String,
    /// When its status last changed (RFC 3339).
    pub status_changed_at: String,
    /// Serial of its current SVID (hex), if it holds one.
    pub svid_serial: Option<String>,
    /// End of its current SVID (RFC 3339), if it holds one.
    pub svid_not_after: Option<String>,
    /// Its latest heartbeat (RFC 3339), if any.
    pub last_seen: Option<String>,
}

impl NodeView {
    /// The view of a stored node.
    pub fn of(n: &Node, network: &str) -> Self {
        Self {
            node_id: n.node_id.to_string(),
            network: network.to_owned(),
            spiffe_id: n.spiffe_id.to_string(),
            status: n.status.as_str().to_owned(),
            tags: n.tags.iter().map(str::to_owned).collect(),
            enrolled_at: rfc3339(n.enrolled_at),
            status_changed_at: rfc3339(n.status_changed_at),
            svid_serial: n.svid.as_ref().map(|s| hex(&s.serial)),
            svid_not_after: n.svid.as_ref().map(|s| rfc3339(s.not_after)),
            last_seen: n.last_seen.map(rfc3339),
        }
    }
}

/// A page of nodes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodePage {
    /// The nodes, in node-id order.
    pub items: Vec<NodeView>,
    /// Cursor of the next page, if any.
    pub next: Option<String>,
}

/// Why a node is revoked.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// Free text, up to 256 bytes.
    #[serde(default)]
    pub reason: String,
}

/// A revocation done.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RevokeResponse {
    /// The node, now revoked.
    pub node: NodeView,
    /// The network's new revocation epoch.
    pub epoch: u64,
}

/// One revoked node.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RevocationEntry {
    /// The epoch its revocation created.
    pub epoch: u64,
    /// The node.
    pub node_id: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// The serial of the SVID it held (hex), if any.
    pub svid_serial: Option<String>,
    /// When (RFC 3339).
    pub revoked_at: String,
    /// Why.
    pub reason: String,
}

impl RevocationEntry {
    /// The view of a stored revocation.
    pub fn of(r: &Revocation) -> Self {
        Self {
            epoch: r.epoch,
            node_id: r.node_id.to_string(),
            spiffe_id: r.spiffe_id.to_string(),
            svid_serial: r.svid_serial.as_deref().map(hex),
            revoked_at: rfc3339(r.revoked_at),
            reason: r.reason.clone(),
        }
    }
}

/// The network's revocation list, signed by the revocation authority in
/// weft-proto's format: the signature covers `epoch`, `issued_ms` and the
/// node ids in `revoked` (in that order).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RevocationListView {
    /// The network.
    pub network: String,
    /// The epoch (0: nothing revoked yet).
    pub epoch: u64,
    /// When it was signed, Unix milliseconds.
    pub issued_ms: u64,
    /// The authority's public key (composite), base64.
    pub authority_public_key: String,
    /// Every revoked node id, oldest revocation first.
    pub revoked: Vec<String>,
    /// The composite signature, base64.
    pub signature: String,
    /// The whole list as one weft-proto frame (`Message::Revocation`), base64.
    pub wire: String,
    /// The revocations with their details, oldest first.
    pub entries: Vec<RevocationEntry>,
}

/// An audit record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    /// Its id.
    pub id: String,
    /// When (RFC 3339).
    pub at: String,
    /// Who: `api-token:<id>`, a SPIFFE ID, `join-token:<id>` or `anonymous@<address>`.
    pub actor: String,
    /// What (`node.revoke`, ...).
    pub action: String,
    /// On what.
    pub target: Option<String>,
    /// The network concerned.
    pub network_id: Option<String>,
    /// `success`, `denied` or `failed`.
    pub result: String,
    /// Details.
    pub detail: String,
}

impl AuditView {
    /// The view of a stored record.
    pub fn of(r: &AuditRecord) -> Self {
        Self {
            id: r.id.to_string(),
            at: rfc3339(r.at),
            actor: r.actor.clone(),
            action: r.action.clone(),
            target: r.target.clone(),
            network_id: r.network_id.map(|n| n.to_string()),
            result: r.result.as_str().to_owned(),
            detail: r.detail.clone(),
        }
    }
}

/// A page of audit records.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// The records, newest first.
    pub items: Vec<AuditView>,
    /// Cursor of the next page, if any.
    pub next: Option<String>,
}

/// An API token to create.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiToken {
    /// A label (1 to 256 bytes).
    pub name: String,
    /// `admin`, `operator` or `viewer`.
    pub role: String,
    /// Seconds until it expires; none: never.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

/// An API token as stored (no secret).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiTokenView {
    /// Its id.
    pub id: String,
    /// Its label.
    pub name: String,
    /// Its role.
    pub role: String,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// Who made it.
    pub created_by: String,
    /// When it expires (RFC 3339), if ever.
    pub expires_at: Option<String>,
    /// When it was revoked (RFC 3339), if it was.
    pub revoked_at: Option<String>,
    /// When it was last used (RFC 3339, to the minute).
    pub last_used_at: Option<String>,
}

impl ApiTokenView {
    /// The view of a stored token.
    pub fn of(t: &ApiToken) -> Self {
        Self {
            id: t.id.to_string(),
            name: t.name.clone(),
            role: t.role.as_str().to_owned(),
            created_at: rfc3339(t.created_at),
            created_by: t.created_by.clone(),
            expires_at: t.expires_at.map(rfc3339),
            revoked_at: t.revoked_at.map(rfc3339),
            last_used_at: t.last_used_at.map(rfc3339),
        }
    }
}

/// An API token just made: the secret is shown this once.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiToken {
    /// The bearer token. Not stored; it cannot be shown again.
    pub token: String,
    /// The token's record.
    pub api_token: ApiTokenView,
}

/// A page of API tokens.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiTokenPage {
    /// The tokens, oldest first.
    pub items: Vec<ApiTokenView>,
    /// Cursor of the next page, if any.
    pub next: Option<String>,
}

/// Version of the network file format served at
/// `GET /v1/networks/{network}/members`.
pub const NETWORK_FILE_VERSION: u32 = 1;

/// A network's members as the agent's network file (`network.json`, read
/// by `weft_agent::network::Network::from_json`): the trust domain, the
/// key that signs revocation lists, and the public keys and tags of every
/// node approved so far, in order of approval (an append-only roster).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkFile {
    /// The format version, 1.
    pub version: u32,
    /// The network's trust domain.
    pub trust_domain: String,
    /// The revocation authority's composite public key, base64.
    pub authority: String,
    /// Every node approved so far (revoked ones too: the list only grows),
    /// in order of approval.
    pub nodes: Vec<NetworkFileNode>,
}

/// One member of a network file.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkFileNode {
    /// The node identity's composite public key (ML-DSA-65 ‖ Ed25519), base64.
    pub signing: String,
    /// The node's X-Wing public key, base64.
    pub kem: String,
    /// Its tags (policy `tag:` selectors match them); absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// A network (trust domain) to create.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateNetwork {
    /// Its name: 1 to 63 of `a-z 0-9 -`.
    pub name: String,
    /// Its SPIFFE trust domain (`mesh.example.net`), unique.
    pub trust_domain: String,
}

/// A network.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NetworkView {
    /// Its name.
    pub name: String,
    /// Its trust domain.
    pub trust_domain: String,
    /// Its revocation epoch.
    pub revocation_epoch: u64,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// SHA-256 of its ML-DSA-65 CA root, `sha256:<hex>`.
    pub ca_fingerprint: Option<String>,
    /// Whether this control plane serves it (enrolls its nodes).
    pub served: bool,
}

/// A page of networks.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NetworkPage {
    /// The networks, in name order.
    pub items: Vec<NetworkView>,
    /// Cursor of the next page, if any.
    pub next: Option<String>,
}
