//! Runs the conformance suite against the embedded backend, in memory (on a
//! paused tokio clock: time-dependent checks run instantly and
//! deterministically) and on disk (real time, a temporary directory).
#![allow(clippy::unwrap_used, clippy::panic)]

use weft_bus::conformance as c;
use weft_bus::{EmbeddedBus, EmbeddedConfig};

const MAX: usize = 64 * 1024;

fn config() -> EmbeddedConfig {
    EmbeddedConfig {
        max_message_bytes: MAX,
        // Small segments so rotation and compaction happen in the suite.
        segment_bytes: 16 * 1024,
        ..EmbeddedConfig::default()
    }
}

fn memory() -> EmbeddedBus {
    EmbeddedBus::memory(config()).unwrap()
}

fn disk() -> (tempfile::TempDir, EmbeddedBus) {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path(), config()).unwrap();
    (dir, bus)
}

macro_rules! suite {
    ($($name:ident $(, $extra:expr)?;)*) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    let bus = memory();
                    c::$name(&bus, "mem" $(, $extra)?).await;
                }
            )*
        }
        mod disk {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (_dir, bus) = disk();
                    c::$name(&bus, "disk" $(, $extra)?).await;
                    bus.close().await;
                }
            )*
        }
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
