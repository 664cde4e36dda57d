//! `weft bench control` runs end to end and reports every figure (a few
//! agents, short phases; the figures themselves are not judged here).
#![allow(clippy::unwrap_used, clippy::panic)]

use weft_control::bench::{BenchConfig, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_bench_runs_on_both_backends_without_errors() {
    let report = run(&BenchConfig {
        agents: 4,
        seconds: 0.5,
        target_rate: 40,
        ..BenchConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(report.suite, "control");
    for name in ["sqlite", "postgres"] {
        let b = &report.backends[name];
        assert_eq!(b.agents, 4);
        for p in [&b.baseline, &b.saturated, &b.paced] {
            assert_eq!(p.errors, 0, "{name}: {:?}", p.first_error);
            assert!(p.ok > 0, "{name}");
            assert!(p.p99_ms >= p.p50_ms);
        }
        assert!(b.heartbeats_per_sec > 0.0 && b.ratio_vs_baseline > 0.0);
        let json = serde_json::to_value(b).unwrap();
        for key in [
            "heartbeats_per_sec",
            "heartbeat_p99_ms",
            "ratio_vs_baseline",
        ] {
            assert!(json[key].is_number(), "{key}");
        }
    }
}
