//! A control plane on 127.0.0.1 with port 0, over SQLite in a temporary
//! directory or over its own PostgreSQL database at 127.0.0.1:5432 (user
//! `postgres`, trust auth), dropped when the harness is dropped.
#![allow(clippy::unwrap_used, clippy::panic, dead_code)]

use std::path::PathBuf;

use sqlx::Connection;
use weft_control::api::CreateJoinToken;
use weft_control::client::{ControlClient, Trust};
use weft_control::{ControlConfig, Running};

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub struct Harness {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub admin: String,
    pub pg_db: Option<String>,
}

pub enum Db {
    Sqlite,
    Postgres,
}

pub fn config(dir: &std::path::Path) -> ControlConfig {
    let mut config = ControlConfig::new(dir.join("control")).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.limits.auth_failures_per_minute = 10_000;
    config.limits.rate_per_second = 10_000;
    config.limits.rate_burst = 10_000;
    config
}

pub async fn pg_create() -> String {
    let name = format!("weft_control_{}", uuid::Uuid::now_v7().simple());
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

pub async fn pg_drop(name: &str) {
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
}

impl Harness {
    pub async fn start(db: Db) -> Self {
        Self::start_with(db, |_| {}).await
    }

    pub async fn start_with(db: Db, tweak: impl FnOnce(&mut ControlConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        let pg_db = match db {
            Db::Sqlite => None,
            Db::Postgres => {
                let name = pg_create().await;
                config.db = Some(format!("postgres://postgres@127.0.0.1:5432/{name}"));
                Some(name)
            }
        };
        tweak(&mut config);
        let running = weft_control::start(config).await.unwrap();
        let admin = running
            .info()
            .admin_token
            .clone()
            .expect("first start makes an admin token");
        Self {
            running: Some(running),
            dir,
            admin,
            pg_db,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub fn url(&self) -> String {
        self.running().info().url.clone()
    }

    pub fn trust(&self) -> Trust {
        Trust::fingerprint(&self.running().info().ca_fingerprint).unwrap()
    }

    pub fn bundle_trust(&self) -> Trust {
        Trust::Bundle(std::fs::read(&self.running().info().bundle_path).unwrap())
    }

    pub fn client(&self, token: Option<&str>) -> ControlClient {
        ControlClient::new(&self.url(), self.trust(), None, token.map(str::to_owned)).unwrap()
    }

    pub fn admin(&self) -> ControlClient {
        self.client(Some(&self.admin))
    }

    pub fn agent_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("control")
    }

    pub fn store(&self) -> &weft_store::AnyStore {
        self.running().store()
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        if let Some(db) = self.pg_db.take() {
            pg_drop(&db).await;
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // A failed test still drops its database.
        if let Some(db) = self.pg_db.take() {
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(pg_drop(&db));
            })
            .join();
        }
    }
}

/// Settings of an agent on loopback with its data and admin socket in `dir`.
pub fn agent_settings(
    dir: &std::path::Path,
    peers: Vec<std::net::SocketAddr>,
) -> weft_agent::config::AgentSettings {
    weft_agent::config::AgentSettings {
        data_dir: dir.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        peers,
        tun: None,
        admin_socket: dir.join("agent.sock"),
        metrics_listen: None,
        advertise: None,
        max_peers: 8,
    }
}

/// A request for an auto-approved join token valid for ten minutes.
pub fn auto_approve_token(uses: u32, tags: Vec<String>, description: &str) -> CreateJoinToken {
    CreateJoinToken {
        uses,
        ttl_seconds: 600,
        tags,
        auto_approve: true,
        description: description.into(),
    }
}
