//! `weft incidents list|show`: the healing loop's incidents as stored in
//! a control plane's store (weft-heal's `query`), as a table or JSON.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use weft_heal::query;

/// Where the incidents are stored.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Data directory of a control plane (its `weft.db` is read).
    #[arg(long, default_value = "weft-data", env = "WEFT_DATA_DIR")]
    data_dir: PathBuf,
    /// The store instead: sqlite://PATH (relative to --data-dir) or
    /// postgres://USER@HOST/DATABASE.
    #[arg(long, env = "WEFT_DB")]
    db: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `weft incidents …`.
#[derive(Debug, Subcommand)]
pub enum IncidentsCommand {
    /// List incidents, most recently opened first.
    List {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this status: open, escalated, resolved, or unresolved.
        #[arg(long)]
        status: Option<String>,
        /// Only this kind (node_down, link_degraded, overload, ...).
        #[arg(long)]
        kind: Option<String>,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Show one incident: its timeline (detected, planned, acted,
    /// verified, resolved), actions with their outcomes, and evidence.
    Show {
        #[command(flatten)]
        store: StoreArgs,
        /// The incident's id, as `weft incidents list` prints it.
        id: String,
    },
}

/// Runs `weft incidents …`.
pub fn incidents(cmd: IncidentsCommand) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        match cmd {
            IncidentsCommand::List {
                store,
                status,
                kind,
                limit,
            } => {
                let filter = query::filter(status.as_deref(), kind.as_deref())?;
                let db = query::open_store(store.db.as_deref(), &store.data_dir).await?;
                let items = query::list(&db, filter, limit).await?;
                if store.json {
                    println!("{}", serde_json::to_string_pretty(&items)?);
                } else {
                    print!("{}", query::render_list(&items));
                }
            }
            IncidentsCommand::Show { store, id } => {
                let db = query::open_store(store.db.as_deref(), &store.data_dir).await?;
                let incident = query::show(&db, &id)
                    .await
                    .with_context(|| format!("incident {id}"))?;
                if store.json {
                    println!("{}", serde_json::to_string_pretty(&incident)?);
                } else {
                    print!("{}", query::render_show(&incident));
                }
            }
        }
        Ok(())
    })
}
