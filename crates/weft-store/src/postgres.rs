//! The PostgreSQL backend, for control planes that outgrow one SQLite
//! file or run as more than one process.
//!
//! Every transaction runs at READ COMMITTED; the operations that must not
//! race (spending a join-token use, bumping a revocation epoch, the first
//! admin token, the next policy version) are single conditional updates or
//! inserts guarded by a unique key, which PostgreSQL serializes by row lock.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::error::{Result, StoreError};
use crate::{StoreConfig, migrate_error};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

type Db = sqlx::Postgres;
type Backend = PgStore;

// The shared implementation, compiled once per backend against this
// module's `Db` and `Backend` (see `shared.rs`); the duplicate is the point.
#[allow(clippy::duplicate_mod)]
#[path = "shared.rs"]
mod shared;

/// A store in a PostgreSQL database.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// The heartbeat batches' own connection, made by its first user.
    /// A connection's socket belongs to the runtime of the task that
    /// opened it: the control plane writes heartbeats from a thread of
    /// its own, and a connection opened there but shared through `pool`
    /// had the request handlers' reads waiting on that thread's runtime
    /// (and the batches' writes on the handlers' one, when the handlers
    /// had opened it).
    heartbeats: PgPool,
    config: StoreConfig,
    unpruned: crate::Unpruned,
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/database`, with the
    /// libpq parameters sqlx understands, e.g. `sslmode=verify-full`) and
    /// applies the migrations the database lacks.
    pub async fn connect(url: &str, config: StoreConfig) -> Result<Self> {
        let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::Location {
            location: redact(url),
            reason: format!("not a PostgreSQL URL: {e}"),
        })?;
        Self::connect_with(options, config).await
    }

    /// Connects with explicit options and applies the migrations the
    /// database lacks.
    pub async fn connect_with(options: PgConnectOptions, config: StoreConfig) -> Result<Self> {
        config.check()?;
        let heartbeats = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(config.acquire_timeout)
            .connect_lazy_with(options.clone());
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(StoreError::db("connect to PostgreSQL"))?;
        MIGRATOR.run(&pool).await.map_err(migrate_error)?;
        shared::key_history(&pool).await?;
        tracing::debug!("opened the PostgreSQL store");
        Ok(Self {
            pool,
            heartbeats,
            config,
            unpruned: crate::Unpruned::default(),
        })
    }

    /// The settings it was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn unpruned(&self) -> &crate::Unpruned {
        &self.unpruned
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    /// Nothing to do after a heartbeat batch (PostgreSQL checkpoints on
    /// its own).
    fn wrote_heartbeats(&self) {}

    async fn close_background(&self) {
        self.heartbeats.close().await;
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Db>> {
        self.pool
            .begin()
            .await
            .map_err(StoreError::db("begin a transaction"))
    }

    /// A transaction for a heartbeat batch, on the batches' own connection.
    async fn begin_heartbeats(&self) -> Result<sqlx::Transaction<'static, Db>> {
        self.heartbeats
            .begin()
            .await
            .map_err(StoreError::db("begin a heartbeat transaction"))
    }
}

/// `url` without its password, for error messages.
pub(crate) fn redact(url: &str) -> String {
    let short: String = url.chars().take(200).collect();
    match (short.find("://"), short.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme + 3 => {
            let userinfo = &short[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &short[..scheme + 3], &short[at..])
        }
        _ => short,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_version_is_the_newest_migration() {
        assert_eq!(
            MIGRATOR.iter().map(|m| m.version).max(),
            Some(crate::SCHEMA_VERSION)
        );
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
    }
}
