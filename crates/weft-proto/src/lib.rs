//! weft's sans-IO mesh core.
//!
//! No sockets, threads or clocks live here: drivers (the agent on tokio,
//! the simulator on a virtual clock) feed inputs with the current time and
//! carry out the outputs.
//!
//! - [`wire`]: the versioned, bounded binary encoding of mesh messages.

pub mod wire;
