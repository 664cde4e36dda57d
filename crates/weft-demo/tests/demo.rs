//! The demo end to end: every injected fault is detected, repaired by a
//! real action and verified.

#![allow(clippy::unwrap_used, clippy::panic)] // test code: a failed setup step should fail the test

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_healed_and_verified() {
    let cfg = weft_demo::DemoConfig::default();
    let (report, demo) = weft_demo::run(&cfg, &|line| eprintln!("{line}"))
        .await
        .unwrap();
    // The loop's incidents, with their timelines, are in the control
    // plane's store, where `weft incidents` reads them.
    use weft_store::Store as _;
    let stored = demo
        .store()
        .list_incidents(
            weft_store::IncidentFilter::default(),
            weft_store::PageRequest::first(100),
        )
        .await
        .unwrap();
    demo.stop().await;
    assert!(
        stored.items.len() >= 4,
        "{} incidents stored",
        stored.items.len()
    );
    assert_eq!(report.faults.len(), 5);
    for f in &report.faults {
        assert!(f.detected_ms.is_some(), "{} not detected", f.fault);
        assert!(
            f.verified && f.healed_ms.is_some(),
            "{} not healed: {f:?}",
            f.fault
        );
    }
    assert!(report.all_healed);
    let actions: Vec<&str> = report.faults.iter().map(|f| f.action.as_str()).collect();
    assert_eq!(
        &actions[..4],
        [
            "restart_process",
            "drain_link",
            "shed_load",
            "quarantine_node"
        ]
    );
}
