//! A deterministic discrete-event simulator that drives many `weft-proto`
//! nodes on a virtual clock, over links with latency, jitter, loss and
//! bandwidth. The same seed and scenario always give the same trace.
//!
//! Signatures are made and checked for real. Verification is
//! deterministic, so one [`MemoCheck`] is shared by every node: its cost
//! grows with the number of distinct signatures rather than with N².

pub mod hooks;
pub mod scenario;
pub mod topology;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::digest;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap;
use weft_crypto::NodeId;
use weft_crypto::sign::{CompositePublicKey, CompositeSigningKey};
use weft_proto::node::LinkId;
use weft_proto::node::{Event, Input, Node, NodeConfig, Output};
use weft_proto::origin::{DirectCheck, SignatureCheck};
use weft_proto::time::Time;
use weft_proto::wire::{Announcement, CERT_SIGNED_LEN, OriginCert, RevocationList};

/// Length-prefixed (key, context, message, signature) and the verdict.
type MemoEntry = (Box<[u8]>, bool);
/// (address of the shared certificate, seqno, chain element).
type SharedAnnouncementKey = (usize, u16, [u8; 32]);

/// A memo of signature verifications shared by all simulated nodes, keyed
/// by the exact bytes verified (key, context, message, signature): a forged
/// signature can never hit the entry of a valid one. It also hands out one
/// shared copy of each accepted certificate and announcement.
#[derive(Debug, Default)]
pub struct MemoCheck {
    memo: Mutex<FxHashMap<u64, Vec<MemoEntry>>>,
    /// Accepted certificates by signed bytes (several only if an origin
    /// signed the same fields twice).
    certs: Mutex<FxHashMap<[u8; CERT_SIGNED_LEN], Vec<Arc<OriginCert>>>>,
    /// Accepted announcements by (shared certificate, seqno, proof).
    announcements: Mutex<FxHashMap<SharedAnnouncementKey, Arc<Announcement>>>,
    verifications: AtomicU64,
}

impl MemoCheck {
    /// Real verifications performed (cache misses).
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }
}

/// Whether `stored` is the length-prefixed concatenation of `parts`.
fn same_parts(stored: &[u8], parts: &[&[u8]]) -> bool {
    let mut rest = stored;
    for part in parts {
        let Some((len, tail)) = rest.split_first_chunk::<8>() else {
            return false;
        };
        if u64::from_be_bytes(*len) != part.len() as u64 || !tail.starts_with(part) {
            return false;
        }
        rest = &tail[part.len()..];
    }
    rest.is_empty()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SignatureCheck for MemoCheck {
    fn verify(
        &self,
        key: &CompositePublicKey,
        message: &[u8],
        context: &[u8],
        signature: &[u8],
    ) -> bool {
        let parts = [key.as_bytes().as_slice(), context, message, signature];
        // A fast hash picks the bucket; the stored bytes are compared in
        // full, so only an exact repeat hits.
        let mut h = rustc_hash::FxHasher::default();
        for part in parts {
            h.write_usize(part.len());
            h.write(part);
        }
        let k = h.finish();
        if let Some(ok) = lock(&self.memo)
            .get(&k)
            .and_then(|v| v.iter().find(|(stored, _)| same_parts(stored, &parts)))
            .map(|(_, ok)| *ok)
        {
            return ok;
        }
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let ok = DirectCheck.verify(key, message, context, signature);
        let mut stored = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
        for part in parts {
            stored.extend_from_slice(&(part.len() as u64).to_be_bytes());
            stored.extend_from_slice(part);
        }
        lock(&self.memo)
            .entry(k)
            .or_default()
            .push((stored.into_boxed_slice(), ok));
        ok
    }

    fn share_cert(&self, cert: &Arc<OriginCert>) -> Arc<OriginCert> {
        let mut certs = lock(&self.certs);
        let same = certs.entry(cert.signed_bytes()).or_default();
        if let Some(c) = same.iter().find(|c| c.signature == cert.signature) {
            return c.clone();
        }
        same.push(cert.clone());
        cert.clone()
    }

    fn share(&self, a: Announcement) -> Arc<Announcement> {
        // Certificates come from `share_cert`, which keeps them alive, so
        // their addresses identify them.
        let key = (Arc::as_ptr(&a.cert) as usize, a.seqno.0, a.proof);
        lock(&self.announcements)
            .entry(key)
            .or_insert_with(|| Arc::new(a))
            .clone()
    }
}

/// Properties of a simulated link (the same both ways).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkSpec {
    /// One-way propagation delay.
    pub latency: Duration,
    /// Uniform extra delay in `[0, jitter]` for unreliable frames.
    pub jitter: Duration,
    /// Probability that one transmission is lost.
    pub loss: f64,
    /// Bits per second per direction.
    pub bandwidth_bps: u64,
}

impl Default for LinkSpec {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(5),
            jitter: Duration::from_millis(1),
            loss: 0.0,
            bandwidth_bps: 100_000_000,
        }
    }
}

struct SimLink {
    ends: [usize; 2],
    spec: LinkSpec,
    up: bool,
    /// Per direction (0: ends[0] -> ends[1]): when the sender's queue drains.
    busy_until: [Time; 2],
    /// Per direction: delivery time of the last reliable frame (stream order).
    stream_tail: [Time; 2],
    /// Drained by an operator (or a healing loop): kept drained at both
    /// ends whenever it comes up again.
    drained: bool,
}

struct SimNode {
    node: Node,
    timer_at: Option<Time>,
    control_bytes: u64,
}

#[derive(Debug)]
enum Action {
    Timer(usize),
    LinkDown {
        to: usize,
        link: usize,
    },
    Deliver {
        to: usize,
        link: usize,
        bytes: Vec<u8>,
        reliable: bool,
    },
}

/// The event queue: actions ordered by time and then by the order they
/// were scheduled in (which makes equal times deterministic). The heap
/// holds only (time, order, slot), 24 bytes, and the actions wait in a
/// slab: popping moves small entries, which matters when millions pass.
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(u64, u64, u32)>>,
    slots: Vec<Option<Action>>,
    free: Vec<u32>,
    next_seq: u64,
}

impl Queue {
    fn push(&mut self, at: Time, action: Action) {
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(action);
                i
            }
            None => {
                self.slots.push(Some(action));
                (self.slots.len() - 1) as u32
            }
        };
        self.heap.push(Reverse((at.0, self.next_seq, slot)));
        self.next_seq += 1;
    }

    fn peek_time(&self) -> Option<Time> {
        self.heap.peek().map(|Reverse((at, _, _))| Time(*at))
    }

    fn pop(&mut self) -> Option<(Time, Action)> {
        let Reverse((at, _, slot)) = self.heap.pop()?;
        let action = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        Some((Time(at), action))
    }
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When.
    pub at: Time,
    /// Node index.
    pub node: usize,
    /// What.
    pub event: Event,
}

/// The simulated network.
pub struct Sim {
    now: Time,
    rng: ChaCha8Rng,
    nodes: Vec<SimNode>,
    /// Whether each node is alive, apart from the nodes themselves: the
    /// loop check reads it at every hop of a chain, and a `SimNode` is
    /// hundreds of bytes (a cache miss per hop).
    alive: Vec<bool>,
    ids: Vec<NodeId>,
    links: Vec<SimLink>,
    queue: Queue,
    /// `next[dst * n + i]`: the neighbour node `i` forwards to for `dst`
    /// ([`NO_ROUTE`] if none), kept from the nodes' route events so that
    /// the loop check at every route change walks a compact array.
    next: Vec<u16>,
    trace: digest::Context,
    records: Vec<Record>,
    memo: Arc<MemoCheck>,
    authority: Arc<CompositeSigningKey>,
    keys: Vec<Arc<CompositeSigningKey>>,
    index: rustc_hash::FxHashMap<NodeId, usize>,
    loops: u64,
    events: u64,
    /// Bytes of frames scheduled for delivery and not delivered yet.
    in_flight: u64,
    peak_in_flight: u64,
}

/// Most nodes in one simulation (node indices are stored as `u16`).
pub const MAX_NODES: usize = NO_ROUTE as usize;
const NO_ROUTE: u16 = u16::MAX;

/// Errors building a simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// More nodes than the simulator can index.
    #[error("{n} nodes asked for; the simulator runs at most {MAX_NODES}")]
    TooManyNodes {
        /// Nodes asked for.
        n: usize,
    },
    /// Key generation or signing failed.
    #[error("signature setup failed: {0}")]
    Sign(#[from] weft_crypto::sign::SignatureError),
    /// A node could not be built (its roster or first announcement).
    #[error("node setup failed: {0}")]
    Node(#[from] weft_proto::node::NodeError),
    /// The roster could not hold the nodes (two with the same key).
    #[error("roster setup failed: {0}")]
    Roster(#[from] weft_proto::roster::RosterError),
    /// A link names a node that does not exist.
    #[error("link {a}-{b} names a node outside 0..{n}")]
    BadLink {
        /// One end.
        a: usize,
        /// Other end.
        b: usize,
        /// Node count.
        n: usize,
    },
}

impl Sim {
    /// A network of `n` nodes with fresh identities, all enrolled, none linked yet.
    pub fn new(n: usize, seed: u64, cfg: NodeConfig) -> Result<Self, SimError> {
        if n > MAX_NODES {
            return Err(SimError::TooManyNodes { n });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Keys from the seeded RNG: the same seed gives the same node ids.
        let keygen = |rng: &mut ChaCha8Rng| {
            let mut seeds = [0u8; 64];
            rng.fill(&mut seeds);
            CompositeSigningKey::from_bytes(&seeds).map(Arc::new)
        };
        let authority = keygen(&mut rng)?;
        let keys = (0..n)
            .map(|_| keygen(&mut rng))
            .collect::<Result<Vec<_>, _>>()?;
        let roster = Arc::new(weft_proto::roster::Roster::of(
            keys.iter().map(|k| k.public_key().clone()),
        )?);
        let memo = Arc::new(MemoCheck::default());
        let mut nodes = Vec::with_capacity(n);
        for key in &keys {
            let node = Node::new(
                key.clone(),
                cfg.clone(),
                roster.clone(),
                authority.public_key().clone(),
                memo.clone(),
            )?;
            nodes.push(SimNode {
                node,
                timer_at: None,
                control_bytes: 0,
            });
        }
        let ids: Vec<NodeId> = keys.iter().map(|k| NodeId::of(k.public_key())).collect();
        let index = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        Ok(Self {
            now: Time::ZERO,
            rng,
            nodes,
            alive: vec![true; n],
            ids,
            links: Vec::new(),
            queue: Queue::default(),
            next: vec![NO_ROUTE; n * n],
            trace: digest::Context::new(&digest::SHA256),
            records: Vec::new(),
            memo,
            authority,
            keys,
            index,
            loops: 0,
            events: 0,
            in_flight: 0,
            peak_in_flight: 0,
        })
    }

    /// Current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Node ids by index.
    pub fn ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// A node.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i].node
    }

    /// Signing key of node `i` (to build attacks in tests).
    pub fn key(&self, i: usize) -> &Arc<CompositeSigningKey> {
        &self.keys[i]
    }

    /// Whether node `i` is alive.
    pub fn is_alive(&self, i: usize) -> bool {
        self.alive[i]
    }

    /// Everything recorded so far, except route events (see [`Sim::trace_hash`]).
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Real signature verifications performed so far.
    pub fn verifications(&self) -> u64 {
        self.memo.verifications()
    }

    /// Control bytes sent by node `i` (frames without transport headers).
    pub fn control_bytes(&self, i: usize) -> u64 {
        self.nodes[i].control_bytes
    }

    /// SHA-256 over every event in order: equal for equal seeds and scenarios.
    pub fn trace_hash(&self) -> String {
        let h = self.trace.clone().finish();
        h.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Connects nodes `a` and `b` now; returns the link index.
    pub fn connect(&mut self, a: usize, b: usize, spec: LinkSpec) -> Result<usize, SimError> {
        let n = self.nodes.len();
        if a >= n || b >= n || a == b {
            return Err(SimError::BadLink { a, b, n });
        }
        let id = self.links.len();
        self.links.push(SimLink {
            ends: [a, b],
            spec,
            up: true,
            busy_until: [self.now; 2],
            stream_tail: [self.now; 2],
            drained: false,
        });
        let now = self.now;
        let (pa, pb) = (self.ids[a], self.ids[b]);
        self.input(a, |node| {
            node.handle(
                now,
                Input::LinkUp {
                    link: LinkId(id as u64),
                    peer: pb,
                },
            )
        });
        self.input(b, |node| {
            node.handle(
                now,
                Input::LinkUp {
                    link: LinkId(id as u64),
                    peer: pa,
                },
            )
        });
        Ok(id)
    }

    /// Kills node `i`: it stops sending and receiving, and nothing tells
    /// its neighbours; they must notice.
    pub fn kill(&mut self, i: usize) {
        self.alive[i] = false;
        self.nodes[i].timer_at = None;
    }

    /// Changes a link's properties from now on.
    pub fn set_link(&mut self, link: usize, spec: LinkSpec) {
        if let Some(l) = self.links.get_mut(link) {
            l.spec = spec;
        }
    }

    /// Sends a datagram from node `from` to node `to` now.
    pub fn send_datagram(&mut self, from: usize, to: usize, payload: Vec<u8>) {
        let now = self.now;
        let dst = self.ids[to];
        self.input(from, |node| node.handle(now, Input::Send { dst, payload }));
    }

    /// Hands node `i` a revocation list, as its control-plane client would.
    pub fn revoke(
        &mut self,
        at_node: usize,
        revoked: &[usize],
        epoch: u64,
    ) -> Result<(), SimError> {
        let list = self.signed_revocation(revoked, epoch)?;
        let now = self.now;
        self.input(at_node, |node| {
            node.revoke(now, list);
        });
        Ok(())
    }

    /// A revocation list of the nodes at `revoked` (indices out of range
    /// are left out), signed by the simulated authority now.
    pub(crate) fn signed_revocation(
        &self,
        revoked: &[usize],
        epoch: u64,
    ) -> Result<RevocationList, SimError> {
        let ids: Vec<NodeId> = revoked
            .iter()
            .filter_map(|&i| self.ids.get(i).copied())
            .collect();
        let issued_ms = self.now.0 / 1000;
        let msg = RevocationList::signed_bytes(epoch, issued_ms, &ids);
        let sig = self.authority.sign(&msg, RevocationList::CONTEXT)?;
        Ok(RevocationList {
            epoch,
            issued_ms,
            revoked: ids,
            signature: Box::new(*sig.as_bytes()),
        })
    }

    /// Injects raw bytes on link `link` towards node `to`, as if its peer
    /// had sent them (an attacker on an authenticated link).
    pub fn inject(&mut self, to: usize, link: usize, bytes: Vec<u8>) {
        let now = self.now;
        self.input(to, |node| {
            node.handle(
                now,
                Input::Received {
                    link: LinkId(link as u64),
                    bytes: &bytes,
                },
            )
        });
    }

    /// The neighbour node `i` forwards to for destination node `dst`, as
    /// its route events said.
    pub fn next_hop(&self, i: usize, dst: usize) -> Option<usize> {
        let n = self.nodes.len();
        match self.next.get(dst * n + i) {
            Some(&hop) if hop != NO_ROUTE => Some(usize::from(hop)),
            _ => None,
        }
    }

    /// The neighbour node `i` forwards to for `dst`, read from its route table.
    pub fn next_hop_in_table(&self, i: usize, dst: usize) -> Option<usize> {
        let route = self.nodes[i].node.route(&self.ids[dst])?;
        let l = self.links.get(route.link.0 as usize)?;
        Some(if l.ends[0] == i { l.ends[1] } else { l.ends[0] })
    }

    /// Pairs (node, destination) where the next hops kept from route events
    /// differ from the route tables: empty unless a node failed to report
    /// a route change (tests check it).
    pub fn next_hop_mismatches(&self) -> Vec<(usize, usize)> {
        let n = self.nodes.len();
        let mut out = Vec::new();
        for i in 0..n {
            for dst in 0..n {
                if i != dst && self.next_hop(i, dst) != self.next_hop_in_table(i, dst) {
                    out.push((i, dst));
                }
            }
        }
        out
    }

    /// Feeds one event into the trace hash in a compact binary form: time,
    /// node, kind, and node indices (not ids) for the nodes it names.
    fn hash_event(&mut self, i: usize, event: &Event) {
        let idx = |id: &NodeId| self.index.get(id).map_or(u32::MAX, |&x| x as u32);
        let (kind, a, b, m): (u8, u32, u32, u64) = match event {
            Event::NeighbourUp { peer } => (1, idx(peer), 0, 0),
            Event::NeighbourDead { peer } => (2, idx(peer), 0, 0),
            Event::RouteAdded { dst, via, metric } => (3, idx(dst), idx(via), u64::from(metric.0)),
            Event::RouteChanged { dst, via, metric } => {
                (4, idx(dst), idx(via), u64::from(metric.0))
            }
            Event::RouteLost { dst } => (5, idx(dst), 0, 0),
            Event::Delivered { src, payload } => (6, idx(src), payload.len() as u32, 0),
            Event::Dropped { src, dst, reason } => (7, idx(src), idx(dst), *reason as u64),
            Event::Unreachable { dst, reporter } => (8, idx(dst), idx(reporter), 0),
            Event::AnnouncementRefused { origin, reason, .. } => {
                (9, idx(origin), 0, *reason as u64)
            }
            Event::RevocationApplied { epoch } => (10, 0, 0, *epoch),
        };
        let mut buf = [0u8; 29];
        buf[..8].copy_from_slice(&self.now.0.to_be_bytes());
        buf[8..12].copy_from_slice(&(i as u32).to_be_bytes());
        buf[12] = kind;
        buf[13..17].copy_from_slice(&a.to_be_bytes());
        buf[17..21].copy_from_slice(&b.to_be_bytes());
        buf[21..29].copy_from_slice(&m.to_be_bytes());
        self.trace.update(&buf);
    }

    /// Whether following next hops from `src` towards `dst` revisits a node.
    fn chain_loops(&self, src: usize, dst: usize) -> bool {
        let mut at = src;
        let mut hops = 0;
        while at != dst && self.alive[at] {
            // A chain longer than the node count must revisit a node.
            if hops > self.nodes.len() {
                return true;
            }
            hops += 1;
            match self.next_hop(at, dst) {
                Some(next) => at = next,
                None => return false,
            }
        }
        false
    }

    /// Most bytes of frames on the simulated links at once so far (sent
    /// and not yet delivered or dropped).
    pub fn peak_in_flight_bytes(&self) -> u64 {
        self.peak_in_flight
    }

    /// Events taken off the queue so far.
    pub fn events_processed(&self) -> u64 {
        self.events
    }

    /// Forwarding loops seen so far: checked on every route selection
    /// change (the only moment a loop can form), from the changed node.
    pub fn loops_seen(&self) -> u64 {
        self.loops
    }

    /// Forwarding loops right now: (source, destination) pairs whose chain
    /// of next hops among live nodes revisits a node. Loop-freedom must
    /// hold at every instant, so callers check this as often as they like.
    pub fn forwarding_loops(&self) -> Vec<(usize, usize)> {
        let n = self.nodes.len();
        let mut loops = Vec::new();
        let mut seen = vec![u32::MAX; n];
        let mut stamp = 0u32;
        for dst in 0..n {
            for src in 0..n {
                if src == dst || !self.alive[src] {
                    continue;
                }
                stamp = stamp.wrapping_add(1);
                let mut at = src;
                while at != dst && self.alive[at] {
                    if seen[at] == stamp {
                        loops.push((src, dst));
                        break;
                    }
                    seen[at] = stamp;
                    match self.next_hop(at, dst) {
                        Some(next) => at = next,
                        None => break,
                    }
                }
            }
        }
        loops
    }

    /// Runs until virtual time `until`.
    pub fn run_until(&mut self, until: Time) {
        while self.queue.peek_time().is_some_and(|at| at <= until) {
            let Some((at, action)) = self.queue.pop() else {
                break;
            };
            self.now = at;
            self.events += 1;
            match action {
                Action::Timer(i) => {
                    if self.nodes[i].timer_at != Some(at) || !self.alive[i] {
                        continue;
                    }
                    self.nodes[i].timer_at = None;
                    self.input(i, |node| node.handle_timeout(at));
                }
                Action::LinkDown { to, link } => {
                    self.input(to, |node| {
                        node.handle(
                            at,
                            Input::LinkDown {
                                link: LinkId(link as u64),
                            },
                        )
                    });
                }
                Action::Deliver {
                    to,
                    link,
                    bytes,
                    reliable,
                } => {
                    self.in_flight = self.in_flight.saturating_sub(bytes.len() as u64);
                    if !self.alive[to] || !self.links[link].up {
                        continue;
                    }
                    let l = LinkId(link as u64);
                    let len = bytes.len();
                    self.input(to, |node| {
                        if reliable {
                            node.handle(
                                at,
                                Input::Received {
                                    link: l,
                                    bytes: &bytes,
                                },
                            )
                        } else {
                            node.handle(
                                at,
                                Input::ReceivedDatagram {
                                    link: l,
                                    bytes: &bytes,
                                },
                            )
                        }
                    });
                    if reliable {
                        // Delivered: the bytes leave the sender's send
                        // window (a stream's flow-control credit).
                        let ends = self.links[link].ends;
                        let from = if ends[0] == to { ends[1] } else { ends[0] };
                        self.input(from, |node| {
                            node.handle(
                                at,
                                Input::Drained {
                                    link: l,
                                    bytes: len,
                                },
                            )
                        });
                    }
                }
            }
        }
        self.now = self.now.max(until);
    }

    fn schedule(&mut self, at: Time, action: Action) {
        self.queue.push(at, action);
    }

    /// Runs `f` on node `i` (if alive) and carries out its outputs.
    fn input(&mut self, i: usize, f: impl FnOnce(&mut Node)) {
        if !self.alive[i] {
            return;
        }
        f(&mut self.nodes[i].node);
        while let Some(out) = self.nodes[i].node.poll_output() {
            match out {
                Output::Transmit {
                    link,
                    bytes,
                    reliable,
                } => self.transmit(i, link.0 as usize, bytes, reliable),
                Output::Close { link, .. } => {
                    if let Some(l) = self.links.get_mut(link.0 as usize) {
                        l.up = false;
                        let other = if l.ends[0] == i { l.ends[1] } else { l.ends[0] };
                        // The transport tells the other end, one latency later.
                        let at = self.now + l.spec.latency;
                        self.schedule(
                            at,
                            Action::LinkDown {
                                to: other,
                                link: link.0 as usize,
                            },
                        );
                    }
                }
                Output::Event(event) => {
                    match &event {
                        Event::RouteAdded { dst, via, .. }
                        | Event::RouteChanged { dst, via, .. } => {
                            if let (Some(&d), Some(&v)) = (self.index.get(dst), self.index.get(via))
                            {
                                let n = self.nodes.len();
                                self.next[d * n + i] = v as u16;
                                if self.chain_loops(i, d) {
                                    self.loops += 1;
                                }
                            }
                        }
                        Event::RouteLost { dst } => {
                            if let Some(&d) = self.index.get(dst) {
                                let n = self.nodes.len();
                                self.next[d * n + i] = NO_ROUTE;
                            }
                        }
                        _ => {}
                    }
                    self.hash_event(i, &event);
                    // Route events are many (N² at bootstrap) and only feed
                    // the trace and the loop check; the rest are kept.
                    if !matches!(
                        event,
                        Event::RouteAdded { .. }
                            | Event::RouteChanged { .. }
                            | Event::RouteLost { .. }
                    ) {
                        self.records.push(Record {
                            at: self.now,
                            node: i,
                            event,
                        });
                    }
                }
            }
        }
        if let Some(at) = self.nodes[i].node.next_deadline()
            && self.nodes[i].timer_at != Some(at)
        {
            self.nodes[i].timer_at = Some(at);
            self.schedule(at, Action::Timer(i));
        }
    }

    fn transmit(&mut self, from: usize, link: usize, bytes: Vec<u8>, reliable: bool) {
        let Some(l) = self.links.get(link) else {
            return;
        };
        if !l.up {
            return;
        }
        self.nodes[from].control_bytes += bytes.len() as u64;
        let dir = usize::from(l.ends[0] != from);
        let to = l.ends[1 - dir];
        let spec = l.spec;
        let serialize = Duration::from_nanos(
            (bytes.len() as u64 * 8).saturating_mul(1_000_000_000) / spec.bandwidth_bps.max(1),
        );
        let start = self.now.max(self.links[link].busy_until[dir]);
        let sent = start + serialize;
        self.links[link].busy_until[dir] = sent;
        let mut at = sent + spec.latency;
        if reliable {
            // A stream retransmits: each loss costs about one RTO (3 × RTT here),
            // and frames stay in order.
            while spec.loss > 0.0 && self.rng.random::<f64>() < spec.loss {
                at = at + spec.latency.mul_f64(6.0);
            }
            at = at.max(self.links[link].stream_tail[dir]);
            self.links[link].stream_tail[dir] = at;
        } else {
            if spec.loss > 0.0 && self.rng.random::<f64>() < spec.loss {
                return;
            }
            if !spec.jitter.is_zero() {
                at = at + spec.jitter.mul_f64(self.rng.random::<f64>());
            }
        }
        self.in_flight += bytes.len() as u64;
        self.peak_in_flight = self.peak_in_flight.max(self.in_flight);
        self.schedule(
            at,
            Action::Deliver {
                to,
                link,
                bytes,
                reliable,
            },
        );
    }
}
