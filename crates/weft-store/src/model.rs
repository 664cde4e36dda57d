//! The records the store keeps, their ids, and the limits every input is
//! checked against.
//!
//! Times are [`OffsetDateTime`] in the API and microseconds since the Unix
//! epoch (UTC) in the database; they come back in UTC, truncated to the
//! microsecond.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;
use weft_crypto::{NodeId, SpiffeId, TrustDomain};

use crate::error::{Result, StoreError};

/// Limits on every input. A value over a limit is refused with
/// [`StoreError::InvalidInput`] naming the limit.
pub mod limits {
    /// Longest network name.
    pub const MAX_NETWORK_NAME_LEN: usize = 63;
    /// Largest CA certificate bundle (PEM).
    pub const MAX_CA_BUNDLE_LEN: usize = 64 * 1024;
    /// Largest CA key blob.
    pub const MAX_CA_KEY_LEN: usize = 64 * 1024;
    /// Most tags on a token or node.
    pub const MAX_TAGS: usize = 32;
    /// Longest tag.
    pub const MAX_TAG_LEN: usize = 64;
    /// Most uses of one join token.
    pub const MAX_TOKEN_USES: u32 = 100_000;
    /// Longest free-text description, name or reason.
    pub const MAX_TEXT_LEN: usize = 256;
    /// Longest actor (who) of an audit record or author of a change.
    pub const MAX_ACTOR_LEN: usize = 256;
    /// Longest audit action (what).
    pub const MAX_ACTION_LEN: usize = 64;
    /// Longest audit target.
    pub const MAX_TARGET_LEN: usize = 512;
    /// Longest audit detail.
    pub const MAX_DETAIL_LEN: usize = 4096;
    /// Longest SVID serial number (RFC 5280 allows 20 octets).
    pub const MAX_SERIAL_LEN: usize = 20;
    /// Largest heartbeat payload (JSON).
    pub const MAX_HEARTBEAT_LEN: usize = 64 * 1024;
    /// Largest policy document.
    pub const MAX_POLICY_LEN: usize = 256 * 1024;
    /// Largest page of a listing.
    pub const MAX_PAGE_SIZE: u32 = 1000;
    /// Page size when a caller has no preference.
    pub const DEFAULT_PAGE_SIZE: u32 = 100;
    /// Longest pagination cursor.
    pub const MAX_CURSOR_LEN: usize = 128;
    /// Most heartbeats kept per node.
    pub const MAX_HEARTBEAT_HISTORY: u32 = 10_000;
    /// Most heartbeats written in one batch (three bound parameters
    /// each, well within SQLite's 32,766 and PostgreSQL's 65,535). A
    /// writer that falls behind takes bigger batches, which cost less per
    /// heartbeat: a node's latest state and index pages are written once
    /// per batch however many of its heartbeats it holds.
    pub const MAX_HEARTBEAT_BATCH: usize = 4000;
    /// Heartbeats kept per node by default.
    pub const DEFAULT_HEARTBEAT_HISTORY: u32 = 120;
    /// Largest public key of a node (signing or KEM) recorded.
    pub const MAX_NODE_KEY_LEN: usize = 4096;
    /// Longest incident kind, severity, action name or outcome (a token of
    /// `a-z 0-9 _`).
    pub const MAX_INCIDENT_TOKEN_LEN: usize = 64;
    /// Largest incident document (JSON: evidence and timeline).
    pub const MAX_INCIDENT_DOCUMENT_LEN: usize = 256 * 1024;
    /// Most actions recorded for one incident.
    pub const MAX_INCIDENT_ACTIONS: usize = 64;
    /// Most (incident kind, action) pairs [`crate::Store::action_stats`]
    /// returns.
    pub const MAX_ACTION_STATS: usize = 1000;
}

use limits::*;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new id (UUIDv7: time-ordered).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = StoreError;
            fn from_str(s: &str) -> Result<Self> {
                if s.len() > 45 {
                    return Err(StoreError::invalid($what, "an id is a UUID (36 characters)"));
                }
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|e| StoreError::invalid($what, format!("{s:?} is not a UUID: {e}")))
            }
        }
    };
}

uuid_id!(
    /// A network's id.
    NetworkId,
    "network id"
);
uuid_id!(
    /// A join token's id (the public part of the token).
    JoinTokenId,
    "join token id"
);
uuid_id!(
    /// An API token's id (the public part of the token).
    ApiTokenId,
    "API token id"
);
uuid_id!(
    /// An audit record's id.
    AuditId,
    "audit record id"
);
uuid_id!(
    /// An incident's id (made by the self-healing loop).
    IncidentId,
    "incident id"
);

/// Microseconds since the Unix epoch, as stored.
pub(crate) fn to_micros(t: OffsetDateTime) -> i64 {
    // OffsetDateTime spans at most ±9999 years, well inside i64 microseconds.
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(if t.year() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

/// The UTC time of stored microseconds.
pub(crate) fn from_micros(
    us: i64,
    what: &'static str,
    id: &dyn fmt::Display,
) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .map_err(|e| StoreError::corrupt(what, id, format!("timestamp {us} µs: {e}")))
}

/// `t` truncated to the microsecond, as the store gives it back.
pub fn truncate_to_micros(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .unwrap_or(t)
}

/// Refuses text longer than `max` bytes or holding control characters.
pub(crate) fn check_text(what: &'static str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(StoreError::invalid(
            what,
            format!("{} bytes; the limit is {max}", value.len()),
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(StoreError::invalid(
            what,
            format!("holds the control character {c:?}"),
        ));
    }
    Ok(())
}

/// Refuses empty text, then applies [`check_text`].
pub(crate) fn check_nonempty(what: &'static str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() {
        return Err(StoreError::invalid(what, "must not be empty"));
    }
    check_text(what, value, max)
}

/// A validated network name: 1 to 63 of `a-z 0-9 -`, starting with a
/// letter or digit.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NetworkName(String);

impl NetworkName {
    /// Validates a network name.
    pub fn new(name: &str) -> Result<Self> {
        let bad = |reason: &str| {
            StoreError::invalid(
                "network name",
                format!(
                    "{:?}: {reason}",
                    name.chars()
                        .take(MAX_NETWORK_NAME_LEN + 1)
                        .collect::<String>()
                ),
            )
        };
        if name.is_empty() || name.len() > MAX_NETWORK_NAME_LEN {
            return Err(bad("must be 1 to 63 characters"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad("only a-z, 0-9 and - are allowed"));
        }
        if name.starts_with('-') {
            return Err(bad("must start with a letter or digit"));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NetworkName {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self> {
        Self::new(&s)
    }
}

impl From<NetworkName> for String {
    fn from(n: NetworkName) -> String {
        n.0
    }
}

impl fmt::Display for NetworkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NetworkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkName({:?})", self.0)
    }
}

/// A validated set of tags: at most [`MAX_TAGS`], each 1 to
/// [`MAX_TAG_LEN`] of `a-z 0-9 . _ : = / -`, starting with a letter or
/// digit; kept sorted without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Tags(BTreeSet<String>);

impl Tags {
    /// No tags.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Validates tags; duplicates collapse into one.
    pub fn new<I, S>(tags: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = BTreeSet::new();
        for tag in tags {
            let tag = tag.as_ref();
            Self::check(tag)?;
            set.insert(tag.to_owned());
            if set.len() > MAX_TAGS {
                return Err(StoreError::invalid(
                    "tags",
                    format!("more than {MAX_TAGS} distinct tags"),
                ));
            }
        }
        Ok(Self(set))
    }

    fn check(tag: &str) -> Result<()> {
        let bad = |reason: &str| {
            StoreError::invalid(
                "tag",
                format!(
                    "{:?}: {reason}",
                    tag.chars().take(MAX_TAG_LEN + 1).collect::<String>()
                ),
            )
        };
        if tag.is_empty() || tag.len() > MAX_TAG_LEN {
            return Err(bad("must be 1 to 64 characters"));
        }
        if !tag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._:=/-".contains(&b))
        {
            return Err(bad("only a-z, 0-9 and . _ : = / - are allowed"));
        }
        if !tag.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(bad("must start with a letter or digit"));
        }
        Ok(())
    }

    /// Whether `tag` is in the set.
    pub fn contains(&self, tag: &str) -> bool {
        self.0.contains(tag)
    }

    /// The tags in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// How many tags.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The stored form: a JSON array of strings.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "[]".into())
    }

    /// Parses the stored form.
    pub(crate) fn from_json(text: &str, what: &'static str, id: &dyn fmt::Display) -> Result<Self> {
        if text.len() > MAX_TAGS * (MAX_TAG_LEN + 3) + 2 {
            return Err(StoreError::corrupt(what, id, "tags are too long"));
        }
        let list: Vec<String> = serde_json::from_str(text).map_err(|e| {
            StoreError::corrupt(
                what,
                id,
                format!("tags are not a JSON array of strings: {e}"),
            )
        })?;
        Self::new(list).map_err(|e| StoreError::corrupt(what, id, e))
    }
}

impl TryFrom<Vec<String>> for Tags {
    type Error = StoreError;
    fn try_from(v: Vec<String>) -> Result<Self> {
        Self::new(v)
    }
}

impl From<Tags> for Vec<String> {
    fn from(t: Tags) -> Vec<String> {
        t.0.into_iter().collect()
    }
}

/// Secret bytes (a CA key blob): never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Wraps secret bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

/// A token's secret form, shown to its holder once and never stored: never
/// printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(String);

impl SecretToken {
    pub(crate) fn new(s: String) -> Self {
        Self(s)
    }

    /// The token text to hand to its holder.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken(..)")
    }
}

// ---------------------------------------------------------------- networks

/// A network to create: one trust domain with its CA.
#[derive(Clone, Debug)]
pub struct NewNetwork {
    /// Its unique name.
    pub name: NetworkName,
    /// Its unique trust domain.
    pub trust_domain: TrustDomain,
    /// The CA certificates (PEM; the ML-DSA-65 root and the compat root).
    pub ca_bundle_pem: String,
    /// The CA private keys as an opaque blob the caller made (encrypted by
    /// the caller if it has a key to encrypt with); returned unchanged by
    /// [`crate::Store::network_ca_key`].
    pub ca_key: SecretBytes,
}

/// A stored network (without its CA key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// Its id.
    pub id: NetworkId,
    /// Its name.
    pub name: NetworkName,
    /// Its trust domain.
    pub trust_domain: TrustDomain,
    /// The CA certificates (PEM).
    pub ca_bundle_pem: String,
    /// The revocation-list epoch: 0, then one more per revocation.
    pub revocation_epoch: u64,
    /// When it was created.
    pub created_at: OffsetDateTime,
}

// ------------------------------------------------------------- join tokens

/// A join token to create.
#[derive(Clone, Debug)]
pub struct NewJoinToken {
    /// The network it admits to.
    pub network_id: NetworkId,
    /// What it is for (may be empty).
    pub description: String,
    /// How many nodes it may enroll (1 to [`MAX_TOKEN_USES`]).
    pub uses: u32,
    /// When it stops working; must be later than the creation time.
    pub expires_at: OffsetDateTime,
    /// Tags given to every node it enrolls.
    pub tags: Tags,
    /// Whether nodes it enrolls are approved at once (else pending).
    pub auto_approve: bool,
    /// Who made it.
    pub created_by: String,
}

/// A stored join token (its secret is not stored, only a salted hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// Its id.
    pub id: JoinTokenId,
    /// The network it admits to.
    pub network_id: NetworkId,
    /// What it is for.
    pub description: String,
    /// How many nodes it may enroll in all.
    pub max_uses: u32,
    /// How many more.
    pub uses_left: u32,
    /// When it stops working.
    pub expires_at: OffsetDateTime,
    /// Tags given to the nodes it enrolls.
    pub tags: Tags,
    /// Whether nodes it enrolls are approved at once.
    pub auto_approve: bool,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// Who made it.
    pub created_by: String,
}

// ------------------------------------------------------------------- nodes

/// A node's standing in its network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Enrolled, waiting for an operator.
    Pending,
    /// Admitted: may hold and renew an SVID.
    Approved,
    /// Revoked for good.
    Revoked,
}

impl NodeStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Pending => "pending",
            NodeStatus::Approved => "approved",
            NodeStatus::Revoked => "revoked",
        }
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(NodeStatus::Pending),
            "approved" => Ok(NodeStatus::Approved),
            "revoked" => Ok(NodeStatus::Revoked),
            _ => Err(StoreError::invalid(
                "node status",
                format!(
                    "{:?}: expected pending, approved or revoked",
                    s.chars().take(16).collect::<String>()
                ),
            )),
        }
    }
}

/// The SVID a node currently holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SvidRecord {
    /// Its serial number (1 to [`MAX_SERIAL_LEN`] bytes).
    pub serial: Vec<u8>,
    /// End of its validity.
    pub not_after: OffsetDateTime,
}

impl SvidRecord {
    pub(crate) fn check(&self) -> Result<()> {
        if self.serial.is_empty() || self.serial.len() > MAX_SERIAL_LEN {
            return Err(StoreError::invalid(
                "SVID serial",
                format!(
                    "{} bytes; a serial number is 1 to {MAX_SERIAL_LEN} bytes",
                    self.serial.len()
                ),
            ));
        }
        Ok(())
    }
}

/// A node to enroll with a join token.
#[derive(Clone, Debug)]
pub struct NewNode {
    /// Its id (from its public key).
    pub node_id: NodeId,
    /// Its SPIFFE ID; must be in the token's network's trust domain.
    pub spiffe_id: SpiffeId,
    /// The SVID the caller issued for it. Recorded only if the token
    /// approves the node at once; a pending node gets none (the caller
    /// discards it and issues one after approval).
    pub svid: Option<SvidRecord>,
    /// Its public keys, as it presented them (opaque to the store).
    pub keys: NodeKeys,
}

/// A node's public keys: what other nodes need to check its signatures and
/// to agree keys with it. The store keeps them as opaque bytes (1 to
/// [`MAX_NODE_KEY_LEN`] each); the control plane checks their form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeKeys {
    /// The identity's signing key (composite ML-DSA-65 + Ed25519).
    pub signing: Vec<u8>,
    /// The X-Wing encapsulation key.
    pub kem: Vec<u8>,
}

impl NodeKeys {
    pub(crate) fn check(&self) -> Result<()> {
        for (what, key) in [("signing key", &self.signing), ("KEM key", &self.kem)] {
            if key.is_empty() || key.len() > MAX_NODE_KEY_LEN {
                return Err(StoreError::invalid(
                    what,
                    format!(
                        "{} bytes; a node's public key is 1 to {MAX_NODE_KEY_LEN} bytes",
                        key.len()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// An approved node as the network file lists it: its id, when it
/// enrolled (the order of the list) and its public keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its id.
    pub node_id: NodeId,
    /// When it became approved: members are listed in this order, and
    /// revoked ones stay, so the list only ever grows at its end.
    pub member_since: OffsetDateTime,
    /// Its tags (from its join token).
    pub tags: Tags,
    /// Its public keys.
    pub keys: NodeKeys,
}

/// What changes whenever a network's membership does: the number of
/// members and the latest status change of any of its nodes. Cheap to
/// read, so callers can tell whether a cached network file is still
/// current without reading every key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MembershipStamp {
    /// Approved nodes with keys on record.
    pub members: u64,
    /// The latest `status_changed_at` of any node of the network
    /// (microseconds since the Unix epoch), 0 with no nodes.
    pub last_change_us: i64,
}

/// A stored node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Its id.
    pub node_id: NodeId,
    /// Its network.
    pub network_id: NetworkId,
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Its standing.
    pub status: NodeStatus,
    /// Its tags.
    pub tags: Tags,
    /// When it enrolled.
    pub enrolled_at: OffsetDateTime,
    /// When its status last changed.
    pub status_changed_at: OffsetDateTime,
    /// The token it enrolled with (none once that token is deleted).
    pub join_token_id: Option<JoinTokenId>,
    /// Its current SVID, if it holds one.
    pub svid: Option<SvidRecord>,
    /// Its latest heartbeat time, if any.
    pub last_seen: Option<OffsetDateTime>,
}

/// Which nodes to list.
#[derive(Clone, Debug, Default)]
pub struct NodeFilter {
    /// Only nodes with this status.
    pub status: Option<NodeStatus>,
    /// Only nodes with this tag.
    pub tag: Option<String>,
}

/// The outcome of an enrollment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrolled {
    /// The node as recorded (approved with its SVID, or pending).
    pub node: Node,
    /// The token after this use.
    pub token: JoinToken,
}

/// A revocation-list entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    /// The network.
    pub network_id: NetworkId,
    /// The revoked node.
    pub node_id: NodeId,
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The serial of the SVID it held when revoked, if any.
    pub svid_serial: Option<Vec<u8>>,
    /// The epoch this revocation created.
    pub epoch: u64,
    /// When.
    pub revoked_at: OffsetDateTime,
    /// Why (may be empty).
    pub reason: String,
}

// -------------------------------------------------------------- API tokens

/// An operator role; each includes the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Viewer, plus day-to-day changes (approve, revoke, tokens for nodes).
    Operator,
    /// Everything, including API tokens.
    Admin,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Whether a holder of `self` may do what needs `required`.
    pub fn includes(self, required: Role) -> bool {
        self >= required
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(StoreError::invalid(
                "role",
                format!(
                    "{:?}: expected admin, operator or viewer",
                    s.chars().take(16).collect::<String>()
                ),
            )),
        }
    }
}

/// An API token to create.
#[derive(Clone, Debug)]
pub struct NewApiToken {
    /// A label (1 to [`MAX_TEXT_LEN`] bytes).
    pub name: String,
    /// Its role.
    pub role: Role,
    /// When it stops working, if ever; must be later than the creation time.
    pub expires_at: Option<OffsetDateTime>,
    /// Who made it.
    pub created_by: String,
}

/// A stored API token (its secret is not stored, only a salted hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiToken {
    /// Its id.
    pub id: ApiTokenId,
    /// Its label.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// Who made it.
    pub created_by: String,
    /// When it stops working, if ever.
    pub expires_at: Option<OffsetDateTime>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<OffsetDateTime>,
    /// When it was last used (updated at most once a minute).
    pub last_used_at: Option<OffsetDateTime>,
}

// ------------------------------------------------------------------- audit

/// How an audited request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditResult {
    /// It did what was asked.
    Success,
    /// Authentication or authorization refused it.
    Denied,
    /// It was allowed but failed.
    Failed,
}

impl AuditResult {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditResult::Success => "success",
            AuditResult::Denied => "denied",
            AuditResult::Failed => "failed",
        }
    }
}

impl fmt::Display for AuditResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuditResult {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "success" => Ok(AuditResult::Success),
            "denied" => Ok(AuditResult::Denied),
            "failed" => Ok(AuditResult::Failed),
            _ => Err(StoreError::invalid(
                "audit result",
                format!(
                    "{:?}: expected success, denied or failed",
                    s.chars().take(16).collect::<String>()
                ),
            )),
        }
    }
}

/// An audit record to append.
#[derive(Clone, Debug)]
pub struct NewAuditRecord {
    /// When the request happened.
    pub at: OffsetDateTime,
    /// Who: an API token id, a SPIFFE ID, `system` (1 to [`MAX_ACTOR_LEN`]).
    pub actor: String,
    /// What: a dotted action name such as `node.revoke` (1 to
    /// [`MAX_ACTION_LEN`] of `a-z 0-9 . _ -`).
    pub action: String,
    /// On what, if anything (up to [`MAX_TARGET_LEN`]).
    pub target: Option<String>,
    /// The network concerned, if one.
    pub network_id: Option<NetworkId>,
    /// How it ended.
    pub result: AuditResult,
    /// Details (up to [`MAX_DETAIL_LEN`]; may be empty).
    pub detail: String,
}

/// A stored audit record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    /// Its id.
    pub id: AuditId,
    /// When the request happened.
    pub at: OffsetDateTime,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: Option<String>,
    /// The network concerned.
    pub network_id: Option<NetworkId>,
    /// How it ended.
    pub result: AuditResult,
    /// Details.
    pub detail: String,
}

/// Which audit records to list; every set field must match.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Exactly this actor.
    pub actor: Option<String>,
    /// Exactly this action.
    pub action: Option<String>,
    /// Exactly this target.
    pub target: Option<String>,
    /// This network.
    pub network_id: Option<NetworkId>,
    /// This result.
    pub result: Option<AuditResult>,
    /// At or after this time.
    pub since: Option<OffsetDateTime>,
    /// Before this time.
    pub until: Option<OffsetDateTime>,
}

// --------------------------------------------------------------- telemetry

/// A node's heartbeat: its time and its payload (a JSON object the
/// control plane defines: CPU, memory, links, routes, versions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The node.
    pub node_id: NodeId,
    /// When it was received.
    pub at: OffsetDateTime,
    /// The JSON object (up to [`MAX_HEARTBEAT_LEN`] bytes).
    pub payload: String,
}

// ---------------------------------------------------------------- policies

/// A policy document to store as a network's next version.
#[derive(Clone, Debug)]
pub struct NewPolicy {
    /// The network.
    pub network_id: NetworkId,
    /// The document (validated by the control plane; up to
    /// [`MAX_POLICY_LEN`] bytes).
    pub document: String,
    /// Who wrote it.
    pub author: String,
    /// The version the edit was based on: `Some(v)` is refused with a
    /// conflict unless the latest version is `v` (`Some(0)`: there is none
    /// yet); `None` appends regardless.
    pub base_version: Option<u32>,
}

/// A stored policy version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The network.
    pub network_id: NetworkId,
    /// Its version: 1, 2, ...
    pub version: u32,
    /// The document.
    pub document: String,
    /// Who wrote it.
    pub author: String,
    /// When it was stored.
    pub created_at: OffsetDateTime,
}

/// A policy version without its document, for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySummary {
    /// Its version.
    pub version: u32,
    /// Who wrote it.
    pub author: String,
    /// When it was stored.
    pub created_at: OffsetDateTime,
    /// The document's size in bytes.
    pub size: u64,
}

// --------------------------------------------------------------- incidents

/// Where an incident stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IncidentStatus {
    /// Detected; the self-healing loop is handling it.
    Open,
    /// Still present, but the loop has no action left to try: an operator
    /// must look.
    Escalated,
    /// Over: its symptoms cleared.
    Resolved,
}

impl IncidentStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Open => "open",
            IncidentStatus::Escalated => "escalated",
            IncidentStatus::Resolved => "resolved",
        }
    }
}

impl fmt::Display for IncidentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IncidentStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "open" => Ok(IncidentStatus::Open),
            "escalated" => Ok(IncidentStatus::Escalated),
            "resolved" => Ok(IncidentStatus::Resolved),
            _ => Err(StoreError::invalid(
                "incident status",
                format!(
                    "{:?}: expected open, escalated or resolved",
                    s.chars().take(16).collect::<String>()
                ),
            )),
        }
    }
}

/// How one action taken on an incident ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionOutcome {
    /// Not known yet (acting or verifying).
    Pending,
    /// It was taken and verified to help.
    Succeeded,
    /// It failed, or did not help (and was rolled back where possible).
    Failed,
}

impl ActionOutcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionOutcome::Pending => "pending",
            ActionOutcome::Succeeded => "succeeded",
            ActionOutcome::Failed => "failed",
        }
    }
}

impl fmt::Display for ActionOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ActionOutcome {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(ActionOutcome::Pending),
            "succeeded" => Ok(ActionOutcome::Succeeded),
            "failed" => Ok(ActionOutcome::Failed),
            _ => Err(StoreError::invalid(
                "action outcome",
                format!(
                    "{:?}: expected pending, succeeded or failed",
                    s.chars().take(16).collect::<String>()
                ),
            )),
        }
    }
}

/// One action taken on an incident.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncidentAction {
    /// Its place among the incident's actions: 0, 1, ... (unique within
    /// the incident).
    pub seq: u32,
    /// The action (a token of `a-z 0-9 _`, such as `drain_link`).
    pub action: String,
    /// What it acted on (1 to [`MAX_TARGET_LEN`] bytes).
    pub target: String,
    /// How it ended.
    pub outcome: ActionOutcome,
    /// When it was taken.
    pub started_at: OffsetDateTime,
    /// When its outcome was known, once it is.
    pub finished_at: Option<OffsetDateTime>,
}

/// An incident of the self-healing loop, as stored: the fields to query
/// by, the loop's own document (evidence and timeline, JSON) and the
/// actions taken, whose outcomes give [`crate::Store::action_stats`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncidentRecord {
    /// Its id.
    pub id: IncidentId,
    /// The network, if the loop serves one.
    pub network_id: Option<NetworkId>,
    /// Its kind (a token of `a-z 0-9 _`, such as `node_down`).
    pub kind: String,
    /// Where it stands.
    pub status: IncidentStatus,
    /// Its severity (a token, such as `major`).
    pub severity: String,
    /// What it is about (1 to [`MAX_TARGET_LEN`] bytes).
    pub target: String,
    /// When it was detected.
    pub opened_at: OffsetDateTime,
    /// When it last changed; a write older than the stored one is ignored.
    pub updated_at: OffsetDateTime,
    /// When it was resolved: set exactly when the status is resolved.
    pub resolved_at: Option<OffsetDateTime>,
    /// The loop's document, a JSON object (up to
    /// [`MAX_INCIDENT_DOCUMENT_LEN`] bytes).
    pub document: String,
    /// The actions taken, in `seq` order (up to [`MAX_INCIDENT_ACTIONS`]).
    pub actions: Vec<IncidentAction>,
}

/// An incident without its document and actions, for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncidentSummary {
    /// Its id.
    pub id: IncidentId,
    /// The network, if any.
    pub network_id: Option<NetworkId>,
    /// Its kind.
    pub kind: String,
    /// Where it stands.
    pub status: IncidentStatus,
    /// Its severity.
    pub severity: String,
    /// What it is about.
    pub target: String,
    /// When it was detected.
    pub opened_at: OffsetDateTime,
    /// When it last changed.
    pub updated_at: OffsetDateTime,
    /// When it was resolved.
    pub resolved_at: Option<OffsetDateTime>,
}

/// Which incidents to list; every set field must match.
#[derive(Clone, Debug, Default)]
pub struct IncidentFilter {
    /// Exactly this status.
    pub status: Option<IncidentStatus>,
    /// Only incidents not resolved (open or escalated).
    pub unresolved: bool,
    /// Exactly this kind.
    pub kind: Option<String>,
    /// This network.
    pub network_id: Option<NetworkId>,
}

/// How often an action helped with incidents of one kind: the actions
/// with a known outcome that are still stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionStats {
    /// The incident kind.
    pub incident_kind: String,
    /// The action.
    pub action: String,
    /// Times it was verified to help.
    pub succeeded: u64,
    /// Times it failed or did not help.
    pub failed: u64,
}

// ------------------------------------------------------------------- pages

/// Where a listing continues: an opaque string from [`Page::next`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cursor(pub(crate) String);

impl Cursor {
    /// A cursor handed back by a caller (checked for length here, and for
    /// form by the listing it is passed to).
    pub fn parse(s: &str) -> Result<Self> {
        if s.is_empty() || s.len() > MAX_CURSOR_LEN || !s.is_ascii() {
            return Err(StoreError::invalid(
                "cursor",
                "not a cursor this store handed out; start the listing again",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The cursor as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which page of a listing to fetch.
#[derive(Clone, Debug)]
pub struct PageRequest {
    /// Continue after this cursor; `None` starts at the beginning.
    pub after: Option<Cursor>,
    /// At most this many items (1 to [`MAX_PAGE_SIZE`]).
    pub limit: u32,
}

impl PageRequest {
    /// The first page of `limit` items.
    pub fn first(limit: u32) -> Self {
        Self { after: None, limit }
    }

    /// The page after `cursor`.
    pub fn after(cursor: Cursor, limit: u32) -> Self {
        Self {
            after: Some(cursor),
            limit,
        }
    }

    pub(crate) fn checked_limit(&self) -> Result<i64> {
        if self.limit == 0 || self.limit > MAX_PAGE_SIZE {
            return Err(StoreError::invalid(
                "page limit",
                format!("{}; it must be 1 to {MAX_PAGE_SIZE}", self.limit),
            ));
        }
        Ok(i64::from(self.limit))
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        Self::first(DEFAULT_PAGE_SIZE)
    }
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in the listing's order.
    pub items: Vec<T>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

impl<T> Page<T> {
    /// A page from `limit + 1` fetched rows: the extra row only tells that
    /// another page exists; `key` makes the cursor of the last item kept.
    pub(crate) fn from_rows(mut items: Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|last| Cursor(key(last)))
        } else {
            None
        };
        Self { items, next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_validated_sorted_and_deduplicated() {
        let t = Tags::new(["b", "a", "b", "role=db", "zone:eu-1"]).unwrap();
        assert_eq!(
            t.iter().collect::<Vec<_>>(),
            ["a", "b", "role=db", "zone:eu-1"]
        );
        assert_eq!(Tags::from_json(&t.to_json(), "node", &"x").unwrap(), t);
        for bad in ["", "A", "-a", "a b", "ä", &"a".repeat(65)] {
            assert!(
                matches!(
                    Tags::new([bad]),
                    Err(StoreError::InvalidInput { what: "tag", .. })
                ),
                "{bad:?} must be refused"
            );
        }
        let many: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
        assert!(Tags::new(&many).is_err());
        assert!(Tags::new(&many[..32]).is_ok());
    }

    #[test]
    fn stored_tags_that_break_the_rules_are_corrupt() {
        for bad in ["", "{", "[1]", "[\"UPPER\"]", "null"] {
            assert!(
                matches!(
                    Tags::from_json(bad, "node", &"n1"),
                    Err(StoreError::Corrupt { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn network_names() {
        assert!(NetworkName::new("default").is_ok());
        assert!(NetworkName::new("eu-1").is_ok());
        for bad in ["", "-a", "Eu", "a_b", &"a".repeat(64)] {
            assert!(NetworkName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.includes(Role::Operator));
        assert!(Role::Operator.includes(Role::Viewer));
        assert!(!Role::Viewer.includes(Role::Operator));
        for r in [Role::Admin, Role::Operator, Role::Viewer] {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn micros_round_trip_and_out_of_range_is_corrupt() {
        let t = time::macros::datetime!(2031-02-03 04:05:06.123456789 UTC);
        let back = from_micros(to_micros(t), "x", &"1").unwrap();
        assert_eq!(back, truncate_to_micros(t));
        assert_eq!(back.nanosecond(), 123_456_000);
        assert!(from_micros(i64::MAX, "x", &"1").is_err());
    }

    #[test]
    fn page_limits() {
        assert!(PageRequest::first(0).checked_limit().is_err());
        assert!(
            PageRequest::first(MAX_PAGE_SIZE + 1)
                .checked_limit()
                .is_err()
        );
        assert_eq!(PageRequest::first(5).checked_limit().unwrap(), 5);
        let p = Page::from_rows(vec![1, 2, 3], 2, |i| i.to_string());
        assert_eq!(p.items, [1, 2]);
        assert_eq!(p.next.unwrap().as_str(), "2");
        assert!(
            Page::from_rows(vec![1, 2], 2, |i| i.to_string())
                .next
                .is_none()
        );
        assert!(Cursor::parse("").is_err());
        assert!(Cursor::parse(&"x".repeat(129)).is_err());
    }
}
