//! The SQLite backend: one database file (in the control plane's data
//! directory), WAL journal, foreign keys on.
//!
//! All writes go through one connection, so write transactions never race
//! each other in this process (SQLite allows one writer at a time anyway)
//! and each starts with `BEGIN IMMEDIATE`, so another process holding the
//! write lock is waited for (up to `acquire_timeout`) instead of failing a
//! transaction half way. Reads use a pool of read-only connections that
//! see each committed write at once (WAL).

use std::path::Path;

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

/// A store in one SQLite file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    reader: SqlitePool,
    writer: SqlitePool,
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
        let options = SqliteConnectOptions::new()
            .filename(path)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(config.acquire_timeout);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options.clone())
            .await
            .map_err(StoreError::db("open the SQLite database"))?;
        MIGRATOR.run(&writer).await.map_err(migrate_error)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options.read_only(true))
            .await
            .map_err(StoreError::db("open the SQLite database for reading"))?;
        tracing::debug!(path = %path.display(), "opened the SQLite store");
        Ok(Self {
            reader,
            writer,
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

    async fn begin(&self) -> Result<sqlx::Transaction<'static, Db>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::db("begin a write transaction"))
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
