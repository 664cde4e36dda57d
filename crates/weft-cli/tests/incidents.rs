//! `weft incidents list|show` end to end: a loop records incidents in a
//! data directory's store; a later `weft` process lists and shows them
//! with their timelines.

#![allow(clippy::unwrap_used, clippy::panic)] // test code: a failed setup step should fail the test

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use weft_crypto::NodeId;
use weft_heal::{
    ActionResult, Config, Engine, Input, MemoryKnowledge, Metric, Output as HealOutput, Policy,
    Telemetry, Time,
};
use weft_store::{SqliteStore, Store, StoreConfig};

fn weft(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .current_dir(dir)
        .env_remove("WEFT_LOG")
        .env_remove("WEFT_LOG_FORMAT")
        .env_remove("WEFT_DATA_DIR")
        .env_remove("WEFT_DB")
        .output()
        .unwrap()
}

fn ok_json(args: &[&str], dir: &Path) -> serde_json::Value {
    let out = weft(args, dir);
    assert!(
        out.status.success(),
        "weft {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn id(i: usize) -> NodeId {
    let mut b = [0u8; 32];
    b[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    NodeId(b)
}

/// Twenty nodes report CPU each second; node 3 overloads at 40 s and
/// shedding helps: one incident, detected, acted on, verified, resolved.
fn healed_overload() -> weft_heal::Incident {
    let policy = Policy::parse(
        r#"
[[policy]]
name = "overload"
kind = "overload"
[[policy.actions]]
action = "shed_load"
verify_after = "4s"
"#,
    )
    .unwrap();
    let start = Time::from_millis(1_900_000_000_000);
    let mut engine =
        Engine::new(Config::default(), policy, MemoryKnowledge::default(), start).unwrap();
    let mut overloaded = false;
    for s in 0..70u64 {
        let now = start.saturating_add(Duration::from_secs(s));
        if s == 40 {
            overloaded = true;
        }
        for i in 0..20 {
            let wiggle = ((s * 7 + i as u64 * 13) % 5) as f64;
            let cpu = if i == 3 && overloaded {
                97.0
            } else {
                40.0 + wiggle
            };
            engine
                .handle_input(
                    now,
                    Input::Telemetry(Telemetry {
                        node: id(i),
                        at: now,
                        values: vec![(Metric::Cpu, cpu)],
                    }),
                )
                .unwrap();
        }
        engine.handle_timeout(now);
        let mut answers = Vec::new();
        while let Some(out) = engine.poll_output() {
            if let HealOutput::Act(req) = out {
                overloaded = false;
                answers.push(Input::ActionResult(ActionResult {
                    id: req.id,
                    outcome: Ok(()),
                }));
            }
        }
        for a in answers {
            engine.handle_input(now, a).unwrap();
        }
    }
    let incidents: Vec<_> = engine.knowledge().incidents().cloned().collect();
    assert_eq!(incidents.len(), 1, "{incidents:?}");
    incidents[0].clone()
}

#[test]
fn incidents_list_and_show_read_the_store_after_the_loop_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let err = weft(&["incidents", "list", "--data-dir", d], dir.path());
    assert!(!err.status.success());
    let msg = String::from_utf8_lossy(&err.stderr);
    assert!(msg.contains("no store at"), "{msg}");

    let incident = healed_overload();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(&dir.path().join("weft.db"), StoreConfig::default())
            .await
            .unwrap();
        assert!(
            store
                .put_incident(incident.to_record(None).unwrap())
                .await
                .unwrap()
        );
        store.close().await;
    });

    let list = ok_json(
        &["incidents", "list", "--data-dir", d, "--json"],
        dir.path(),
    );
    let items = list.as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], incident.id.to_string());
    assert_eq!(items[0]["kind"], "overload");
    assert_eq!(items[0]["status"], "resolved");
    assert_eq!(items[0]["target"], format!("node:{}", id(3)));
    let none = ok_json(
        &[
            "incidents",
            "list",
            "--data-dir",
            d,
            "--status",
            "open",
            "--json",
        ],
        dir.path(),
    );
    assert_eq!(none.as_array().unwrap().len(), 0);

    let id_s = incident.id.to_string();
    let shown = ok_json(
        &["incidents", "show", &id_s, "--data-dir", d, "--json"],
        dir.path(),
    );
    let steps: Vec<&str> = shown["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["step"].as_str().unwrap())
        .collect();
    for want in ["detected", "planned", "acted", "verified", "resolved"] {
        assert!(steps.contains(&want), "{want} missing from {steps:?}");
    }
    assert_eq!(shown["actions"][0]["action"], "shed_load");
    assert_eq!(shown["actions"][0]["status"], "verified");

    // The table forms, with --db instead of --data-dir.
    let table = weft(
        &[
            "incidents",
            "show",
            &id_s,
            "--db",
            "sqlite://weft.db",
            "--data-dir",
            d,
        ],
        dir.path(),
    );
    assert!(table.status.success());
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("shed_load") && text.contains("verified"),
        "{text}"
    );
    let listing = weft(&["incidents", "list", "--data-dir", d], dir.path());
    assert!(String::from_utf8(listing.stdout).unwrap().contains(&id_s));
    let bad = weft(&["incidents", "show", "nope", "--data-dir", d], dir.path());
    assert!(!bad.status.success());
}
