//! weft's sans-IO mesh core.
//!
//! No sockets, threads or clocks live here: drivers (the agent on tokio,
//! the simulator on a virtual clock) feed inputs with the current time and
//! carry out the outputs.
//!
//! - [`wire`]: the versioned, bounded binary encoding of mesh messages.
//! - [`liveness`]: hellos, the loss-adaptive dead-neighbour detector, link cost.
//! - [`node`]: one mesh node, tying the pieces together.
//! - [`origin`]: signed route origins: acceptance rules, cache, refusal counters.
//! - [`route`]: the route table with Babel's feasibility condition.
//! - [`time`]: the driver-supplied clock.

pub mod liveness;
pub mod node;
pub mod origin;
pub mod route;
pub mod time;
pub mod wire;

/// A hash map whose iteration order depends only on what was inserted
/// (fixed SipHash keys), so that runs with the same inputs produce the
/// same outputs in the same order: the simulator's traces depend on it.
pub type DetMap<K, V> = std::collections::HashMap<
    K,
    V,
    std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>,
>;
