//! weft's sans-IO mesh core.
//!
//! No sockets, threads or clocks live here: drivers (the agent on tokio,
//! the simulator on a virtual clock) feed inputs with the current time and
//! carry out the outputs.
//!
//! - [`wire`]: the versioned, bounded binary encoding of mesh messages.
//! - [`chain`]: seqno hash chains, so one signature covers many seqnos.
//! - [`liveness`]: hellos, the loss-adaptive dead-neighbour detector, link cost.
//! - [`node`]: one mesh node, tying the pieces together.
//! - [`origin`]: signed route origins: acceptance rules, cache, refusal counters.
//! - `pending`: the route entries waiting for a link's send window.
//! - `requests`: recent seqno and route requests per destination.
//! - [`roster`]: the enrolled nodes under dense local indices.
//! - [`route`]: the route table with Babel's feasibility condition.
//! - [`time`]: the driver-supplied clock.

pub mod chain;
pub mod liveness;
pub mod node;
pub mod origin;
mod pending;
mod requests;
pub mod roster;
pub mod route;
pub mod time;
pub mod wire;

/// A hash map whose iteration order depends only on what was inserted
/// (FxHash has no random keys), so that runs with the same inputs produce
/// the same outputs in the same order: the simulator's traces depend on it.
/// Keys are node ids (hashes already) and small integers, so a fast
/// non-cryptographic hash is enough; a peer cannot choose ids that collide
/// because ids of unenrolled nodes are refused before they reach a map.
pub type DetMap<K, V> = rustc_hash::FxHashMap<K, V>;
