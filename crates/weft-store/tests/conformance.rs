//! Runs the conformance suite against both backends: SQLite in a temporary
//! directory, and PostgreSQL at 127.0.0.1:5432 (user `postgres`, trust
//! authentication, as in CI), where every test creates its own database
//! and drops it afterwards, even when the check fails.
//!
//! If PostgreSQL is not reachable the PostgreSQL tests fail, naming the
//! address.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};

use sqlx::Connection;
use weft_store::conformance as c;
use weft_store::{AnyStore, Location, PgStore, SqliteStore, StoreConfig};

/// Heartbeats kept per node in these tests (small, so pruning shows).
const HISTORY: u32 = 5;

fn config() -> StoreConfig {
    StoreConfig {
        heartbeat_history: HISTORY,
        ..StoreConfig::default()
    }
}

async fn sqlite_at(path: PathBuf) -> SqliteStore {
    SqliteStore::open(&path, config()).await.unwrap()
}

/// Runs `sql` on the SQLite database at `path`, behind its store's back.
async fn sqlite_exec(path: PathBuf, sql: String) {
    let url = format!("sqlite://{}", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query(&sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

fn pg_url(db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/{db}")
}

/// Creates a uniquely named database and returns its name.
async fn pg_create() -> String {
    let name = format!("weft_store_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL)
        .await
        .unwrap_or_else(|e| {
            panic!("the PostgreSQL tests need a server at {PG_ADMIN_URL} (user postgres, trust auth): {e}")
        });
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    name
}

async fn pg_drop(name: &str) {
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
}

macro_rules! suite {
    ($($name:ident $(, $extra:expr)*;)*) => {
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = sqlite_at(dir.path().join("weft.db")).await;
                    c::$name(&store $(, $extra)*).await;
                    weft_store::Store::close(&store).await;
                }
            )*

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn corrupt_rows_are_errors() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("weft.db");
                let store = sqlite_at(path.clone()).await;
                c::corrupt_rows_are_errors(&store, |sql| sqlite_exec(path.clone(), sql)).await;
                weft_store::Store::close(&store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn migrations_idempotent() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("weft.db");
                c::migrations_idempotent(|| sqlite_at(path.clone())).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn history_before_schema_4_is_keyed_at_open() {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("weft.db");
                c::history_before_schema_4_is_keyed_at_open(
                    || sqlite_at(path.clone()),
                    |sql| sqlite_exec(path.clone(), sql),
                )
                .await;
            }
        }
        /// The same checks through `AnyStore`, opened from a location.
        mod any_sqlite {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let location = Location::parse("sqlite://weft.db", dir.path()).unwrap();
                    let store = AnyStore::open(&location, config()).await.unwrap();
                    assert_eq!(store.backend(), "sqlite");
                    c::$name(&store $(, $extra)*).await;
                    weft_store::Store::close(&store).await;
                }
            )*
        }
        mod postgres {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = pg_create().await;
                    let run = {
                        let db = db.clone();
                        tokio::spawn(async move {
                            let store = PgStore::connect(&pg_url(&db), config()).await.unwrap();
                            c::$name(&store $(, $extra)*).await;
                            weft_store::Store::close(&store).await;
                        })
                    };
                    let result = run.await;
                    pg_drop(&db).await;
                    if let Err(e) = result {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
            )*

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn corrupt_rows_are_errors() {
                let db = pg_create().await;
                let run = {
                    let db = db.clone();
                    tokio::spawn(async move {
                        let store = PgStore::connect(&pg_url(&db), config()).await.unwrap();
                        c::corrupt_rows_are_errors(&store, |sql| {
                            let url = pg_url(&db);
                            async move {
                                let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                                sqlx::query(&sql).execute(&mut conn).await.unwrap();
                                conn.close().await.unwrap();
                            }
                        })
                        .await;
                        weft_store::Store::close(&store).await;
                    })
                };
                let result = run.await;
                pg_drop(&db).await;
                if let Err(e) = result {
                    std::panic::resume_unwind(e.into_panic());
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn migrations_idempotent() {
                let db = pg_create().await;
                let run = {
                    let db = db.clone();
                    tokio::spawn(async move {
                        // Opened through `AnyStore`, as the control plane's
                        // `--db postgres://…` does.
                        let location = Location::parse(&pg_url(&db), Path::new(".")).unwrap();
                        c::migrations_idempotent(|| async {
                            let store = AnyStore::open(&location, config()).await.unwrap();
                            assert_eq!(store.backend(), "postgres");
                            store
                        })
                        .await;
                    })
                };
                let result = run.await;
                pg_drop(&db).await;
                if let Err(e) = result {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    };
}

suite! {
    networks;
    enrollment;
    concurrent_redemption, 5, 24;
    revocation_epochs;
    node_listing;
    members;
    api_tokens;
    audit_pagination;
    heartbeat_history, HISTORY;
    policies;
    incidents;
}
