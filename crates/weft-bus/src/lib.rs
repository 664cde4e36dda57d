//! weft's event bus.
//!
//! - [`envelope`]: the event envelope (CloudEvents 1.0 attribute names) and
//!   its strict, bounded parser.
//! - [`schema`]: JSON Schema per (event type, version), validation with the
//!   exact instance path and rule, upcasters.
//! - [`subject`]: subjects and filters with NATS wildcard semantics.
#![forbid(unsafe_code)]

pub mod envelope;
pub mod schema;
pub mod subject;
