//! Incidents survive a restart: an engine with store-backed knowledge
//! opens an incident and acts, the process "restarts" (engine and store
//! dropped, the store opened again), and the new engine takes the
//! incident up, still deduplicating it, and finishes it. On SQLite and on
//! PostgreSQL at 127.0.0.1:5432 (user postgres, trust), where the test
//! makes its own database and drops it.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::{Fleet, id, ring};
use sqlx::Connection;
use weft_heal::{
    ActRequest, ActionKind, IncidentKind, IncidentStatus, Knowledge, Phase, Policy, Step,
    StoreKnowledge, Target, Time,
};
use weft_store::{ActionOutcome, IncidentFilter, PageRequest, PgStore, SqliteStore, Store};

fn policy() -> Policy {
    Policy::parse(
        r#"
[[policy]]
name = "overload"
kind = "overload"
[[policy.actions]]
action = "shed_load"
verify_after = "10s"
"#,
    )
    .unwrap()
}

async fn survive_restart<S: Store, F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = S>,
{
    let start = Time::from_millis(1_900_000_000_000);
    let knowledge = StoreKnowledge::open(open().await, None).await.unwrap();
    let mut f = Fleet::with_knowledge(ring(20), policy(), knowledge, start);
    f.idle(40);
    f.cpu[4] = 97.0;
    f.idle(5);
    // Acted, and the restart comes while the action is being verified.
    let mut ok = |_: &mut Fleet<StoreKnowledge<S>>, _: &ActRequest| Ok(());
    f.answer(&mut ok);
    let before: Vec<_> = f.engine.incidents().cloned().collect();
    assert_eq!(before.len(), 1);
    let incident = before[0].clone();
    assert!(matches!(incident.phase, Phase::Verifying { .. }));
    assert!(f.engine.knowledge_mut().flush().await.unwrap() >= 1);
    let (adj, now, cpu) = (f.adj.clone(), f.now, f.cpu.clone());
    let Fleet { engine, .. } = f;
    let old_store = engine.knowledge().store().clone();
    drop(engine);
    old_store.close().await;

    // The new process.
    let knowledge = StoreKnowledge::open(open().await, None).await.unwrap();
    assert_eq!(knowledge.open_incidents().len(), 1);
    let engine =
        weft_heal::Engine::new(weft_heal::Config::default(), policy(), knowledge, now).unwrap();
    let restored = engine.incident(incident.id).unwrap().clone();
    assert_eq!(restored.kind, IncidentKind::Overload);
    assert_eq!(restored.target, Target::Node(id(4)));
    assert_eq!(restored.detected_at, incident.detected_at);
    assert_eq!(restored.actions, {
        let mut a = incident.actions.clone();
        a[0].status = weft_heal::ActionStatus::Verifying;
        a
    });
    assert_eq!(
        restored.timeline[..incident.timeline.len()],
        incident.timeline[..]
    );
    assert_eq!(restored.timeline.last().unwrap().step, Step::Restored);
    let mut f = Fleet::around(engine, adj, now);
    f.cpu = cpu;
    // The overload is still there: more evidence, not a new incident. The
    // action is judged again after its window: it did not help (nothing
    // changed), so it is rolled back.
    f.idle(15);
    assert!(f.detected().is_empty(), "{:?}", f.detected());
    assert!(
        f.steps(Step::NotImproved)
            .iter()
            .any(|a| a.incident == incident.id)
    );
    let mut ok = |_: &mut Fleet<StoreKnowledge<S>>, _: &ActRequest| Ok(());
    f.answer(&mut ok);
    assert!(f.steps(Step::RolledBack).len() == 1);
    // Fixed by hand; resolves.
    f.cpu[4] = 40.0;
    f.idle(30);
    assert_eq!(f.steps(Step::Resolved).len(), 1);
    f.engine.knowledge_mut().flush().await.unwrap();

    let store = f.engine.knowledge().store().clone();
    let stored = store.get_incident(incident.id).await.unwrap();
    assert_eq!(stored.status, IncidentStatus::Resolved);
    assert_eq!(stored.kind, "overload");
    assert_eq!(stored.actions.len(), 1);
    assert_eq!(stored.actions[0].action, "shed_load");
    assert_eq!(stored.actions[0].outcome, ActionOutcome::Failed);
    let back = weft_heal::Incident::from_record(&stored).unwrap();
    assert!(back.timeline.iter().any(|t| t.step == Step::RolledBack));
    let stats = store.action_stats(Some("overload")).await.unwrap();
    assert_eq!((stats[0].succeeded, stats[0].failed), (0, 1));
    let open_left = store
        .list_incidents(
            IncidentFilter {
                unresolved: true,
                ..IncidentFilter::default()
            },
            PageRequest::first(10),
        )
        .await
        .unwrap();
    assert!(open_left.items.is_empty());

    // A third start ranks shed_load by that failure.
    let knowledge = StoreKnowledge::open(open().await, None).await.unwrap();
    let o = knowledge.outcomes(IncidentKind::Overload, ActionKind::ShedLoad);
    assert_eq!((o.succeeded, o.failed), (0, 1));
    assert!(knowledge.open_incidents().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_survive_a_restart_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.db");
    survive_restart(|| async {
        SqliteStore::open(&path, weft_store::StoreConfig::default())
            .await
            .unwrap()
    })
    .await;
}

const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_survive_a_restart_postgres() {
    let name = format!("weft_heal_{}", uuid::Uuid::now_v7().simple());
    let mut admin = sqlx::PgConnection::connect(PG_ADMIN_URL)
        .await
        .unwrap_or_else(|e| panic!("the PostgreSQL test needs a server at {PG_ADMIN_URL}: {e}"));
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    let run = {
        let url = url.clone();
        tokio::spawn(async move {
            survive_restart(|| async {
                PgStore::connect(&url, weft_store::StoreConfig::default())
                    .await
                    .unwrap()
            })
            .await;
        })
    };
    let result = run.await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_incident_does_not_block_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(
        &dir.path().join("weft.db"),
        weft_store::StoreConfig::default(),
    )
    .await
    .unwrap();
    // Stored under a network that does not exist: the store refuses it.
    let mut knowledge = StoreKnowledge::open(store, Some(weft_store::NetworkId::new()))
        .await
        .unwrap();
    let mut f = Fleet::new(ring(20), policy());
    f.idle(40);
    f.cpu[4] = 97.0;
    f.idle(5);
    let incident = f.engine.incidents().next().unwrap().clone();
    knowledge.record(&incident);
    assert_eq!(knowledge.pending(), 1);
    let err = knowledge.flush().await.unwrap_err();
    assert!(err.to_string().contains("network"), "{err}");
    assert_eq!(knowledge.pending(), 0);
    assert_eq!(knowledge.flush().await.unwrap(), 0);
}
