//! weft's sans-IO mesh core.
//!
//! No sockets, threads or clocks live here: drivers (the agent on tokio,
//! the simulator on a virtual clock) feed inputs with the current time and
//! carry out the outputs.
//!
//! - [`wire`]: the versioned, bounded binary encoding of mesh messages.
//! - [`liveness`]: hellos, the loss-adaptive dead-neighbour detector, link cost.
//! - [`origin`]: signed route origins: acceptance rules, cache, refusal counters.
//! - [`route`]: the route table with Babel's feasibility condition.
//! - [`time`]: the driver-supplied clock.

pub mod liveness;
pub mod origin;
pub mod route;
pub mod time;
pub mod wire;
