//! `weft incidents list|show` reads what the loop stored: after the loop
//! and its store are gone (a restart), the incidents come back from the
//! store with their full timelines and action outcomes.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::{Fleet, ring};
use weft_heal::query;
use weft_heal::{ActRequest, ActionKind, Policy, Step, StoreKnowledge, Time};
use weft_store::{SqliteStore, Store, StoreConfig};

fn policy() -> Policy {
    Policy::parse(
        r#"
[[policy]]
name = "overload"
kind = "overload"
[[policy.actions]]
action = "shed_load"
verify_after = "4s"
"#,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_incidents_are_listed_and_shown_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        query::open_store(None, dir.path())
            .await
            .unwrap_err()
            .to_string()
            .contains("no store at"),
        "an empty directory is not a store"
    );
    let store = SqliteStore::open(&dir.path().join("weft.db"), StoreConfig::default())
        .await
        .unwrap();
    let knowledge = StoreKnowledge::open(store, None).await.unwrap();
    let mut f = Fleet::with_knowledge(
        ring(20),
        policy(),
        knowledge,
        Time::from_millis(1_900_000_000_000),
    );
    f.idle(40);
    // Node 4 overloads and shedding helps: healed and verified.
    f.cpu[4] = 97.0;
    let mut shed = |f: &mut Fleet<StoreKnowledge<SqliteStore>>, r: &ActRequest| {
        if r.action == ActionKind::ShedLoad {
            f.cpu[4] = 40.0;
        }
        Ok(())
    };
    f.run(20, &mut shed);
    // Node 9 overloads and nothing answers yet: still open.
    f.cpu[9] = 97.0;
    f.idle(3);
    let healed = f
        .steps(Step::Resolved)
        .first()
        .map(|a| a.incident)
        .expect("the first overload resolved");
    f.engine.knowledge_mut().flush().await.unwrap();
    let old = f.engine.knowledge().store().clone();
    drop(f);
    old.close().await;

    // A new process reads the store.
    let store = query::open_store(Some("sqlite://weft.db"), dir.path())
        .await
        .unwrap();
    let all = query::list(&store, query::filter(None, None).unwrap(), 50)
        .await
        .unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0].status, "open", "newest first: {all:?}");
    assert_eq!(all[1].id, healed.to_string());
    assert_eq!(all[1].status, "resolved");
    assert!(all[1].resolved_at.is_some() && all.iter().all(|i| i.kind == "overload"));
    let open = query::list(&store, query::filter(Some("unresolved"), None).unwrap(), 50)
        .await
        .unwrap();
    assert_eq!(open.len(), 1);
    assert!(
        query::list(&store, query::filter(None, Some("node_down")).unwrap(), 50)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(query::filter(Some("sleeping"), None).is_err());
    let table = query::render_list(&all);
    assert!(table.contains(&healed.to_string()) && table.contains("resolved"));

    let inc = query::show(&store, &healed.to_string()).await.unwrap();
    let steps: Vec<Step> = inc.timeline.iter().map(|t| t.step).collect();
    for want in [
        Step::Detected,
        Step::Planned,
        Step::Acted,
        Step::Verified,
        Step::Resolved,
    ] {
        assert!(steps.contains(&want), "{want:?} missing from {steps:?}");
    }
    assert_eq!(inc.actions.len(), 1);
    assert_eq!(inc.actions[0].action, ActionKind::ShedLoad);
    assert_eq!(inc.actions[0].status, weft_heal::ActionStatus::Verified);
    let text = query::render_show(&inc);
    for word in [
        "detected",
        "planned",
        "acted",
        "verified",
        "resolved",
        "shed_load",
    ] {
        assert!(text.contains(word), "{word} missing from:\n{text}");
    }
    assert!(query::show(&store, "not-an-id").await.is_err());
    assert!(
        query::show(&store, &uuid::Uuid::now_v7().to_string())
            .await
            .is_err()
    );
}
