//! weft's event bus.
//!
//! - [`envelope`]: the event envelope (CloudEvents 1.0 attribute names) and
//!   its strict, bounded parser.
#![forbid(unsafe_code)]

pub mod envelope;
