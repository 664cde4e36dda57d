//! Picking a backend from the control plane's `--db` option.
//!
//! [`Location`] parses `sqlite://PATH`, `sqlite:PATH` or a
//! `postgres://`/`postgresql://` URL; [`AnyStore`] opens either and
//! implements [`Store`] by handing each call to the backend, so the control
//! plane is written once against one concrete type.

use std::fmt;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;
use weft_crypto::NodeId;

use crate::StoreConfig;
use crate::error::{Result, StoreError};
use crate::model::{
    ActionStats, ApiToken, ApiTokenId, AuditFilter, AuditRecord, Enrolled, Heartbeat,
    IncidentFilter, IncidentId, IncidentRecord, IncidentSummary, JoinToken, JoinTokenId, Member,
    MembershipStamp, Network, NetworkId, NetworkName, NewApiToken, NewAuditRecord, NewJoinToken,
    NewNetwork, NewNode, NewPolicy, Node, NodeFilter, Page, PageRequest, Policy, PolicySummary,
    Revocation, SecretBytes, SecretToken, SvidRecord, Tags,
};
use crate::postgres::PgStore;
use crate::sqlite::{DEFAULT_FILE_NAME, SqliteStore};
use crate::store::Store;

/// Longest location accepted.
const MAX_LOCATION_LEN: usize = 4096;

/// Where the store lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (it may hold a password: `Debug` and `Display`
    /// hide it).
    Postgres(String),
}

impl Location {
    /// Parses `sqlite://PATH`, `sqlite:PATH`, `postgres://…` or
    /// `postgresql://…`. A relative SQLite path is taken relative to
    /// `data_dir`.
    pub fn parse(s: &str, data_dir: &Path) -> Result<Self> {
        let bad = |reason: &str| StoreError::Location {
            location: crate::postgres::redact(s),
            reason: reason.to_owned(),
        };
        if s.len() > MAX_LOCATION_LEN {
            return Err(bad("longer than 4096 bytes"));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Location::Postgres(s.to_owned()));
        }
        let Some(rest) = s.strip_prefix("sqlite:") else {
            return Err(bad(
                "expected sqlite://PATH or postgres://USER@HOST/DATABASE",
            ));
        };
        let path = rest.strip_prefix("//").unwrap_or(rest);
        if path.is_empty() || path.contains('?') {
            return Err(bad(
                "expected a file path after sqlite:// (no query parameters; the store sets its own)",
            ));
        }
        let path = Path::new(path);
        Ok(Location::Sqlite(if path.is_absolute() {
            path.to_owned()
        } else {
            data_dir.join(path)
        }))
    }

    /// The default: [`DEFAULT_FILE_NAME`] in `data_dir`.
    pub fn default_in(data_dir: &Path) -> Self {
        Location::Sqlite(data_dir.join(DEFAULT_FILE_NAME))
    }

    /// The backend's name: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            Location::Sqlite(_) => "sqlite",
            Location::Postgres(_) => "postgres",
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            Location::Postgres(url) => f.write_str(&crate::postgres::redact(url)),
        }
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Location({self})")
    }
}

/// Either backend, chosen at run time.
#[derive(Clone, Debug)]
pub enum AnyStore {
    /// SQLite.
    Sqlite(SqliteStore),
    /// PostgreSQL.
    Postgres(PgStore),
}

impl AnyStore {
    /// Opens the store at `location` and applies missing migrations.
    pub async fn open(location: &Location, config: StoreConfig) -> Result<Self> {
        Ok(match location {
            Location::Sqlite(path) => AnyStore::Sqlite(SqliteStore::open(path, config).await?),
            Location::Postgres(url) => AnyStore::Postgres(PgStore::connect(url, config).await?),
        })
    }

    /// The backend's name: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            AnyStore::Sqlite(_) => "sqlite",
            AnyStore::Postgres(_) => "postgres",
        }
    }
}

/// Implements each listed [`Store`] method by calling the backend's.
macro_rules! delegate {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        impl Store for AnyStore {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        AnyStore::Sqlite(s) => s.$name($($arg),*).await,
                        AnyStore::Postgres(s) => s.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

delegate! {
    fn ping(&self) -> Result<()>;
    fn schema_version(&self) -> Result<i64>;
    fn close(&self) -> ();
    fn create_network(&self, network: NewNetwork, now: OffsetDateTime) -> Result<Network>;
    fn get_network(&self, id: NetworkId) -> Result<Network>;
    fn get_network_by_name(&self, name: &NetworkName) -> Result<Network>;
    fn list_networks(&self, page: PageRequest) -> Result<Page<Network>>;
    fn network_ca_key(&self, id: NetworkId) -> Result<SecretBytes>;
    fn create_join_token(&self, token: NewJoinToken, now: OffsetDateTime) -> Result<(JoinToken, SecretToken)>;
    fn get_join_token(&self, id: JoinTokenId) -> Result<JoinToken>;
    fn list_join_tokens(&self, network_id: NetworkId, page: PageRequest) -> Result<Page<JoinToken>>;
    fn delete_join_token(&self, id: JoinTokenId) -> Result<()>;
    fn enroll_node(&self, token: &str, node: NewNode, now: OffsetDateTime) -> Result<Enrolled>;
    fn get_node(&self, node_id: &NodeId) -> Result<Node>;
    fn get_nodes(&self, node_ids: &[NodeId]) -> Result<Vec<Node>>;
    fn list_nodes(&self, network_id: NetworkId, filter: NodeFilter, page: PageRequest) -> Result<Page<Node>>;
    fn approve_node(&self, node_id: &NodeId, now: OffsetDateTime) -> Result<Node>;
    fn set_node_tags(&self, node_id: &NodeId, tags: Tags) -> Result<Node>;
    fn record_svid(&self, node_id: &NodeId, svid: SvidRecord) -> Result<Node>;
    fn revoke_node(&self, node_id: &NodeId, reason: &str, now: OffsetDateTime) -> Result<Revocation>;
    fn list_revocations(&self, network_id: NetworkId, after_epoch: u64, limit: u32) -> Result<Vec<Revocation>>;
    fn list_members(&self, network_id: NetworkId, page: PageRequest) -> Result<Page<Member>>;
    fn membership_stamp(&self, network_id: NetworkId) -> Result<MembershipStamp>;
    fn create_api_token(&self, token: NewApiToken, now: OffsetDateTime) -> Result<(ApiToken, SecretToken)>;
    fn bootstrap_admin_token(&self, name: &str, now: OffsetDateTime) -> Result<Option<(ApiToken, SecretToken)>>;
    fn authenticate_api_token(&self, token: &str, now: OffsetDateTime) -> Result<ApiToken>;
    fn get_api_token(&self, id: ApiTokenId) -> Result<ApiToken>;
    fn list_api_tokens(&self, page: PageRequest) -> Result<Page<ApiToken>>;
    fn revoke_api_token(&self, id: ApiTokenId, now: OffsetDateTime) -> Result<ApiToken>;
    fn append_audit(&self, record: NewAuditRecord) -> Result<AuditRecord>;
    fn list_audit(&self, filter: AuditFilter, page: PageRequest) -> Result<Page<AuditRecord>>;
    fn prune_audit(&self, before: OffsetDateTime) -> Result<u64>;
    fn record_heartbeat(&self, heartbeat: Heartbeat) -> Result<()>;
    fn record_heartbeats(&self, batch: &[Heartbeat]) -> Result<Vec<Result<()>>>;
    fn latest_heartbeat(&self, node_id: &NodeId) -> Result<Option<Heartbeat>>;
    fn latest_heartbeats(&self, network_id: NetworkId, page: PageRequest) -> Result<Page<Heartbeat>>;
    fn heartbeat_history(&self, node_id: &NodeId, limit: u32) -> Result<Vec<Heartbeat>>;
    fn put_policy(&self, policy: NewPolicy, now: OffsetDateTime) -> Result<Policy>;
    fn get_policy(&self, network_id: NetworkId, version: Option<u32>) -> Result<Policy>;
    fn list_policies(&self, network_id: NetworkId, page: PageRequest) -> Result<Page<PolicySummary>>;
    fn put_incident(&self, incident: IncidentRecord) -> Result<bool>;
    fn get_incident(&self, id: IncidentId) -> Result<IncidentRecord>;
    fn list_incidents(&self, filter: IncidentFilter, page: PageRequest) -> Result<Page<IncidentSummary>>;
    fn action_stats(&self, incident_kind: Option<&str>) -> Result<Vec<ActionStats>>;
    fn prune_incidents(&self, before: OffsetDateTime) -> Result<u64>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        let dir = Path::new("/data");
        assert_eq!(
            Location::parse("sqlite://weft.db", dir).unwrap(),
            Location::Sqlite(dir.join("weft.db"))
        );
        assert_eq!(
            Location::parse("sqlite:///abs/x.db", dir).unwrap(),
            Location::Sqlite(PathBuf::from("/abs/x.db"))
        );
        assert_eq!(
            Location::parse("sqlite:x.db", dir).unwrap(),
            Location::Sqlite(dir.join("x.db"))
        );
        let pg = Location::parse("postgres://u:pw@db/weft", dir).unwrap();
        assert_eq!(pg.backend(), "postgres");
        assert!(!format!("{pg} {pg:?}").contains("pw"));
        for bad in [
            "",
            "mysql://x",
            "sqlite://",
            "sqlite://x.db?mode=ro",
            "weft.db",
        ] {
            assert!(
                matches!(Location::parse(bad, dir), Err(StoreError::Location { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(
            Location::default_in(dir),
            Location::Sqlite(dir.join(DEFAULT_FILE_NAME))
        );
    }
}
