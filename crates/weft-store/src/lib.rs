//! weft's control-plane persistence.
//!
//! - [`Store`]: the trait the control plane uses: networks and their CA,
//!   join tokens and enrollment, nodes and revocation, API tokens, audit,
//!   heartbeats, policies, and the self-healing loop's incidents.
//! - [`SqliteStore`]: the default backend, one SQLite file in WAL mode.
//! - [`PgStore`]: PostgreSQL, for more than one control-plane process.
//! - [`AnyStore`]: either, chosen at run time from a [`Location`]
//!   (`sqlite://…` or `postgres://…`).
//! - [`model`]: the records, their ids, and [`limits`] on every input.
//! - [`conformance`]: the checks both backends pass, run by the tests.
//!
//! Both backends apply their versioned migrations when opened and share
//! one implementation of the trait (the same SQL on both). Token secrets
//! are never stored, only salted HMACs; CA keys are stored as the opaque
//! blob the caller provides. No function panics on what it reads back: a
//! row that breaks the rules is [`StoreError::Corrupt`].
#![forbid(unsafe_code)]

pub mod any;
pub mod conformance;
pub mod error;
pub mod model;
pub mod postgres;
mod secret;
pub mod sqlite;
pub mod store;

use std::time::Duration;

pub use any::{AnyStore, Location};
pub use error::{Result, StoreError};
pub use model::limits;
pub use model::{
    ActionOutcome, ActionStats, ApiToken, ApiTokenId, AuditFilter, AuditId, AuditRecord,
    AuditResult, Cursor, Enrolled, Heartbeat, IncidentAction, IncidentFilter, IncidentId,
    IncidentRecord, IncidentStatus, IncidentSummary, JoinToken, JoinTokenId, Member,
    MembershipStamp, Network, NetworkId, NetworkName, NewApiToken, NewAuditRecord, NewJoinToken,
    NewNetwork, NewNode, NewPolicy, Node, NodeFilter, NodeKeys, NodeStatus, Page, PageRequest,
    Policy, PolicySummary, Revocation, Role, SecretBytes, SecretToken, SvidRecord, Tags,
};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use store::Store;

/// The schema version this build creates and expects: the newest migration
/// in `migrations/sqlite` and `migrations/postgres` (kept equal).
pub const SCHEMA_VERSION: i64 = 4;

/// Heartbeat history rows written per node since its history was last
/// pruned, in this process: history is pruned in bulk, a node at a time
/// once it has a quarter of its bound (at least one row) in excess.
///
/// A node's first count starts at an offset drawn from its id, so that
/// nodes sending at the same rate fall due in different batches: counted
/// from zero, a thousand agents started together all fell due in the same
/// batch every few seconds, and that batch's pruning held a core for a
/// few hundred milliseconds.
#[derive(Clone, Debug, Default)]
pub(crate) struct Unpruned(
    std::sync::Arc<std::sync::Mutex<std::collections::HashMap<weft_crypto::NodeId, u32>>>,
);

impl Unpruned {
    /// Counts `added` new rows for each node; returns the nodes now due
    /// for pruning (their counts reset), given the bound `keep`.
    pub(crate) fn add(
        &self,
        added: impl IntoIterator<Item = weft_crypto::NodeId>,
        keep: u32,
    ) -> Vec<weft_crypto::NodeId> {
        let slack = (keep / 4).max(1);
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut due = Vec::new();
        for id in added {
            let n = map.entry(id).or_insert_with(|| {
                // Node ids are SHA-256 digests: their bytes are uniform.
                u32::from_le_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]) % slack
            });
            *n += 1;
            if *n >= slack {
                *n = 0;
                due.push(id);
            }
        }
        due
    }
}

/// Settings shared by both backends.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Most connections (PostgreSQL), or most reading connections beside
    /// the one writer (SQLite); 1 to 256.
    pub max_connections: u32,
    /// How long to wait for a free connection, or for SQLite's write lock
    /// held by another process; up to 10 minutes.
    pub acquire_timeout: Duration,
    /// Heartbeats kept per node (1 to
    /// [`MAX_HEARTBEAT_HISTORY`](limits::MAX_HEARTBEAT_HISTORY)).
    pub heartbeat_history: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
            heartbeat_history: limits::DEFAULT_HEARTBEAT_HISTORY,
        }
    }
}

impl StoreConfig {
    /// Refuses out-of-range settings.
    pub fn check(&self) -> Result<()> {
        if !(1..=256).contains(&self.max_connections) {
            return Err(StoreError::invalid(
                "max_connections",
                format!("{}; it must be 1 to 256", self.max_connections),
            ));
        }
        if self.acquire_timeout.is_zero() || self.acquire_timeout > Duration::from_secs(600) {
            return Err(StoreError::invalid(
                "acquire_timeout",
                format!(
                    "{:?}; it must be above zero and at most 10 minutes",
                    self.acquire_timeout
                ),
            ));
        }
        if !(1..=limits::MAX_HEARTBEAT_HISTORY).contains(&self.heartbeat_history) {
            return Err(StoreError::invalid(
                "heartbeat_history",
                format!(
                    "{}; it must be 1 to {}",
                    self.heartbeat_history,
                    limits::MAX_HEARTBEAT_HISTORY
                ),
            ));
        }
        Ok(())
    }
}

/// Explains a failed migration run.
pub(crate) fn migrate_error(e: sqlx::migrate::MigrateError) -> StoreError {
    use sqlx::migrate::MigrateError as M;
    let reason = match e {
        M::VersionMissing(v) => format!(
            "the database has schema version {v}, which this weft does not know (it knows up to {SCHEMA_VERSION}); run a newer weft"
        ),
        M::VersionMismatch(v) => format!(
            "migration {v} applied to the database differs from this weft's; the database was made by another build"
        ),
        other => format!("{other}; check the database and its permissions"),
    };
    StoreError::Migration { reason }
}

#[cfg(test)]
mod tests {
    use super::Unpruned;
    use weft_crypto::NodeId;

    fn node(i: u32) -> NodeId {
        // Spread like digests: the offset is read from the first bytes.
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
        id[4..8].copy_from_slice(&i.to_le_bytes());
        NodeId(id)
    }

    #[test]
    fn nodes_at_the_same_rate_fall_due_in_different_batches() {
        let unpruned = Unpruned::default();
        let nodes: Vec<NodeId> = (0..1000).map(node).collect();
        // keep 120: a node is due every 30 rows; one row per node per batch.
        let mut due_per_batch = Vec::new();
        let mut times_due = std::collections::HashMap::new();
        for _ in 0..60 {
            let due = unpruned.add(nodes.iter().copied(), 120);
            for id in &due {
                *times_due.entry(*id).or_insert(0) += 1;
            }
            due_per_batch.push(due.len());
        }
        // Every node is pruned every 30 rows, once its first (shorter)
        // round is over.
        assert!(times_due.values().all(|&n| n == 2), "{times_due:?}");
        // Spread: no batch prunes many more than the 33 of an even spread.
        let most = due_per_batch.iter().max().copied().unwrap_or(0);
        assert!(most <= 80, "{due_per_batch:?}");
    }

    #[test]
    fn a_small_bound_prunes_at_every_row() {
        let unpruned = Unpruned::default();
        assert_eq!(unpruned.add([node(1), node(2)], 3), vec![node(1), node(2)]);
        assert_eq!(unpruned.add([node(1)], 3), vec![node(1)]);
    }
}
