//! The SQLite backend: one database file (in the control plane's data
//! directory), WAL journal, foreign keys on.
//!
//! All writes go through one connection, so write transactions never race
//! each other in this process (SQLite allows one writer at a time anyway)
//! and each starts with `BEGIN IMMEDIATE`, so another process holding the
//! write lock is waited for (up to `acquire_timeout`) instead of failing a
//! transaction half way. Reads use a pool of read-only connections that
//! see each committed write at once (WAL).
//!
//! Checkpoints (copying the WAL into the database file and syncing it) are
//! mostly made off the writer: after a heartbeat batch, a third connection
//! runs a passive checkpoint (at most one at a time, at most one every
//! 100 ms), concurrently with the writer's next transactions. The writer
//! still checkpoints itself once the WAL reaches 64 MiB (SQLite's
//! auto-checkpoint, which is also what lets
//! the WAL start over from its beginning); by then most pages are already
//! copied, so that checkpoint is short.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::error::{Result, StoreError};
use crate::{StoreConfig, migrate_error};

/// The file name the control plane gives the database in its data
/// directory.
pub const DEFAULT_FILE_NAME: &str = "weft.db";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

type Db = sqlx::Sqlite;
type Backend = SqliteStore;

// The shared implementation, compiled once per backend against this
// module's `Db` and `Backend` (see `shared.rs`); the duplicate is the point.
#[allow(clippy::duplicate_mod)]
#[path = "shared.rs"]
mod shared;

/// Pages (of 4 KiB) the WAL may grow to before the writer checkpoints it
/// itself: 64 MiB.
const WAL_BACKSTOP_PAGES: u32 = 16384;
/// The writer's page cache, KiB: a heartbeat batch dirties a few MiB
/// (latest states, history, its index), more than SQLite's default 2 MiB
/// cache, which then spills to the WAL in the middle of the transaction
/// and reads pages back from the file.
const WRITER_CACHE_KIB: u32 = 64 * 1024;
/// Least time between two background checkpoints.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(1000);

/// The background checkpoint's connection and whether one is running.
#[derive(Debug)]
struct Checkpointer {
    pool: SqlitePool,
    /// Whether a checkpoint is running, and when the last one started.
    state: Mutex<(bool, Option<Instant>)>,
}

/// A store in one SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    reader: SqlitePool,
    writer: SqlitePool,
    checkpointer: Arc<Checkpointer>,
    config: StoreConfig,
    unpruned: crate::Unpruned,
}

impl SqliteStore {
    /// Opens (creating if missing, readable by its owner only) the database
    /// file at `path` and applies the migrations it lacks. The directory
    /// must exist.
    pub async fn open(path: &Path, config: StoreConfig) -> Result<Self> {
        config.check()?;
        let location = || path.display().to_string();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(StoreError::Location {
                location: location(),
                reason: format!(
                    "directory {} does not exist; create it first",
                    dir.display()
                ),
            });
        }
        create_private(path).map_err(|e| StoreError::Location {
            location: location(),
            reason: format!("cannot create the database file: {e}"),
        })?;
        // WAL with synchronous=NORMAL: a commit is not synced to disk; the
        // WAL is synced at each checkpoint. A committed transaction
        // survives a crash of the process; a power loss or OS crash can
        // lose the transactions committed since the last checkpoint, but
        // never corrupts the database. For heartbeats, soft state that
        // every agent sends again each interval, that is durable enough,
        // and a sync per batch would bound their rate by the disk's sync
        // latency. The setting is per database, so it applies to the
        // other tables too.
        let options = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(config.acquire_timeout);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(
                options
                    .clone()
                    .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"))
                    .pragma("wal_autocheckpoint", WAL_BACKSTOP_PAGES.to_string()),
            )
            .await
            .map_err(StoreError::db("open the SQLite database"))?;
        MIGRATOR.run(&writer).await.map_err(migrate_error)?;
        shared::key_history(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options.clone().read_only(true))
            .await
            .map_err(StoreError::db("open the SQLite database for reading"))?;
        // Connected at its first checkpoint.
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(config.acquire_timeout)
            .connect_lazy_with(options);
        tracing::debug!(path = %path.display(), "opened the SQLite store");
        Ok(Self {
            reader,
            writer,
            checkpointer: Arc::new(Checkpointer {
                pool: checkpointer,
                state: Mutex::new((false, None)),
            }),
            config,
            unpruned: crate::Unpruned::default(),
        })
    }

    /// The settings it was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    fn unpruned(&self) -> &crate::Unpruned {
        &self.unpruned
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// Starts a background checkpoint after a heartbeat batch, unless one
    /// is running or the last started less than [`CHECKPOINT_EVERY`] ago.
    fn wrote_heartbeats(&self) {
        {
            let mut state = self
                .checkpointer
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if state.0 || state.1.is_some_and(|t| t.elapsed() < CHECKPOINT_EVERY) {
                return;
            }
            *state = (true, Some(Instant::now()));
        }
        let checkpointer = self.checkpointer.clone();
        tokio::spawn(async move {
            // PASSIVE: copies what no reader needs, never waits for the
            // writer or blocks it.
            if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_optional(&checkpointer.pool)
                .await
            {
                tracing::warn!(%error, "background WAL checkpoint failed; the writer checkpoints instead");
            }
            checkpointer
                .state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .0 = false;
        });
    }

    async fn close_background(&self) {
        self.checkpointer.pool.close().await;
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Db>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::db("begin a write transaction"))
    }

    /// A heartbeat batch's transaction: on the one writer, as every write
    /// (SQLite has one writer at a time; its connection's I/O runs on a
    /// thread of sqlx's, not on a runtime).
    async fn begin_heartbeats(&self) -> Result<sqlx::Transaction<'static, Db>> {
        self.begin().await
    }
}

/// Creates `path` with mode 0600 if it does not exist: the database holds
/// CA key material. SQLite gives its WAL and shared-memory files the same
/// mode.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
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
}
