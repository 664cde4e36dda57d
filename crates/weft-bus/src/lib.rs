//! weft's event bus.
//!
//! - [`envelope`]: the event envelope (CloudEvents 1.0 attribute names) and
//!   its strict, bounded parser.
//! - [`schema`]: JSON Schema per (event type, version), validation with the
//!   exact instance path and rule, upcasters.
//! - [`subject`]: subjects and filters with NATS wildcard semantics.
//! - [`backend`]: the backend trait (streams, publish with dedup, durable
//!   pull consumers, dead letters) that every backend implements.
//! - [`record`]: the embedded log's on-disk record format (pure functions).
//! - [`embedded`]: the embedded backend, on disk or in memory.
//! - [`nats`]: the NATS JetStream backend.
//! - [`admin`]: either backend chosen at run time, and what the `weft bus`
//!   commands do.
//! - [`bench`]: `weft bench bus`, the bus against raw baselines.
//! - [`conformance`]: the checks every backend must pass.
//! - [`events`]: typed events over any backend (schema checks on both
//!   ends, upcasting, unreadable messages dead-lettered).
//! - [`metrics`]: Prometheus metrics (counters by stream, consumer lag,
//!   publish latency, refusals by reason) in the text format.
//! - [`jobs`]: jobs over any backend (submit, pull with a concurrency
//!   limit, heartbeat, complete, fail with backoff, timeout, cancel).
#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod bench;
pub mod conformance;
pub mod embedded;
pub mod envelope;
pub mod events;
pub mod jobs;
pub mod metrics;
pub mod nats;
pub mod record;
pub mod schema;
pub mod subject;

pub use backend::{
    AckKind, AckToken, Backend, BusCounters, BusError, ConsumerConfig, ConsumerInfo, DeadLetter,
    DeliverPolicy, Delivery, FetchRequest, Headers, OutgoingMessage, PublishAck, Retention,
    StoredMessage, StreamConfig, StreamInfo,
};
pub use embedded::{EmbeddedBus, EmbeddedConfig};
pub use nats::{NatsBus, NatsConfig, NatsConnectError};
