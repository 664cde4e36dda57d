//! The store's error type. Each variant says what failed, with the value,
//! and what to do; the control plane maps them to HTTP problems.

use crate::model::NodeStatus;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record does not exist.
    #[error("{what} {id} does not exist")]
    NotFound {
        /// The kind of record ("network", "node", ...).
        what: &'static str,
        /// Its id as given.
        id: String,
    },
    /// The change conflicts with what is stored (a duplicate name, a stale
    /// version, a state that does not allow it).
    #[error("{what} {id}: {reason}")]
    Conflict {
        /// The kind of record.
        what: &'static str,
        /// Its id or name.
        id: String,
        /// What conflicts, and what to do.
        reason: String,
    },
    /// An input breaks a rule (length, count, characters, range).
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// The input ("tag", "page limit", ...).
        what: &'static str,
        /// The rule broken, with the value where it is short enough.
        reason: String,
    },
    /// A presented token is unknown, malformed or has the wrong secret. The
    /// three are not told apart, so a guesser learns nothing.
    #[error("the {kind} token is not valid; ask an operator for a new one")]
    TokenInvalid {
        /// "join" or "API".
        kind: &'static str,
    },
    /// The token is genuine but expired.
    #[error("{kind} token {id} expired at {expired_at}; ask an operator for a new one")]
    TokenExpired {
        /// "join" or "API".
        kind: &'static str,
        /// The token id.
        id: String,
        /// When it expired (RFC 3339).
        expired_at: String,
    },
    /// The join token is genuine but all its uses are spent.
    #[error("join token {id} has no uses left; ask an operator for a new one")]
    TokenExhausted {
        /// The token id.
        id: String,
    },
    /// The API token is genuine but was revoked.
    #[error("API token {id} was revoked; ask an administrator for a new one")]
    TokenRevoked {
        /// The token id.
        id: String,
    },
    /// The node's status does not allow the action.
    #[error("node {node_id} is {status}; it cannot {action}")]
    NodeState {
        /// The node.
        node_id: String,
        /// Its current status.
        status: NodeStatus,
        /// What was refused ("renew its SVID", "be approved", ...).
        action: &'static str,
    },
    /// A value read back from the database breaks the store's own rules
    /// (edited by hand, or written by a newer weft).
    #[error(
        "stored {what} {id} is unreadable: {reason}; the database was changed outside weft or by a newer version"
    )]
    Corrupt {
        /// The kind of record.
        what: &'static str,
        /// Its id, or "?" where the id itself is unreadable.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Applying or checking the schema migrations failed.
    #[error("database schema migration failed: {reason}")]
    Migration {
        /// What failed, and what to do.
        reason: String,
    },
    /// The database location is unusable (bad URL, missing directory).
    #[error("database location {location:?}: {reason}")]
    Location {
        /// The location as given.
        location: String,
        /// What is wrong, and what to do.
        reason: String,
    },
    /// The database failed or is unreachable.
    #[error("{context}: {source}; check that the database is reachable and healthy")]
    Database {
        /// What the store was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
}

impl StoreError {
    /// An [`StoreError::InvalidInput`].
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        StoreError::InvalidInput {
            what,
            reason: reason.into(),
        }
    }

    /// An [`StoreError::NotFound`].
    pub(crate) fn not_found(what: &'static str, id: impl ToString) -> Self {
        StoreError::NotFound {
            what,
            id: id.to_string(),
        }
    }

    /// An [`StoreError::Conflict`].
    pub(crate) fn conflict(
        what: &'static str,
        id: impl ToString,
        reason: impl Into<String>,
    ) -> Self {
        StoreError::Conflict {
            what,
            id: id.to_string(),
            reason: reason.into(),
        }
    }

    /// An [`StoreError::Corrupt`].
    pub(crate) fn corrupt(what: &'static str, id: impl ToString, reason: impl ToString) -> Self {
        StoreError::Corrupt {
            what,
            id: id.to_string(),
            reason: reason.to_string(),
        }
    }

    /// A closure that wraps a driver error with `context`.
    pub(crate) fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
        move |source| StoreError::Database { context, source }
    }

    /// Whether this is a unique-constraint violation reported by the
    /// database (a concurrent or repeated insert).
    pub(crate) fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Database { source: sqlx::Error::Database(e), .. } if e.is_unique_violation())
    }
}

/// Results of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
