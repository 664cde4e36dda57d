//! Runs the conformance suite against NATS JetStream at 127.0.0.1:4222
//! (CI starts `nats-server -js` there). Every check gets its own namespace
//! (a random suffix), so its streams and subjects are its own, and its
//! streams are deleted afterwards even when it fails. Time runs for real:
//! the windows are the suite's short ones.
//!
//! If the server is not reachable every test fails, naming the address.
#![allow(clippy::unwrap_used, clippy::panic)]

use weft_bus::conformance as c;
use weft_bus::{Backend, NatsBus, NatsConfig};

const ADDR: &str = "127.0.0.1:4222";
const MAX: usize = 64 * 1024;

async fn bus() -> NatsBus {
    let config = NatsConfig {
        url: ADDR.into(),
        max_message_bytes: MAX,
        ..NatsConfig::default()
    };
    NatsBus::connect(config).await.unwrap_or_else(|e| {
        panic!(
            "the NATS conformance tests need a JetStream server at {ADDR} (`nats-server -js`): {e}"
        )
    })
}

fn namespace() -> String {
    format!("n{}", uuid::Uuid::now_v7().simple())
}

/// Deletes every stream of the namespace (and with it its dead letters):
/// the checks' own (`<ns>_...`) and job queues' (`JOB_<ns>_...`).
async fn cleanup(bus: &NatsBus, ns: &str) {
    let prefix = format!("{ns}_");
    let ours = |name: &str| name.starts_with(&prefix) || name.contains(&format!("_{prefix}"));
    for name in bus.stream_names().await.unwrap() {
        if ours(&name) && !name.ends_with("_DLQ") {
            let _ = bus.delete_stream(&name).await;
        }
    }
    for name in bus.stream_names().await.unwrap() {
        if ours(&name) {
            let _ = bus.delete_stream(&name).await;
        }
    }
}

macro_rules! suite {
    ($($(#[$attr:meta])* $name:ident $(, $extra:expr)?;)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn $name() {
                let bus = bus().await;
                let ns = namespace();
                let run = {
                    let bus = bus.clone();
                    let ns = ns.clone();
                    tokio::spawn(async move { c::$name(&bus, &ns $(, $extra)?).await })
                };
                let result = run.await;
                cleanup(&bus, &ns).await;
                if let Err(e) = result {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        )*
    };
}

suite! {
    publish_and_consume_in_order;
    wildcard_filters;
    retention_max_messages;
    retention_max_bytes;
    retention_max_age;
    work_queue_deletes_on_ack;
    work_queue_competing_consumers;
    dedup_window;
    ack_nak_term;
    redelivery_after_ack_timeout;
    max_deliver_dead_letter_and_replay;
    refusals, MAX;
    deliver_policies;
    jobs_lifecycle;
    jobs_competing_workers;
}
