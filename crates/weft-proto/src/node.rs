//! One mesh node as a sans-IO state machine: liveness on every link,
//! routing with feasibility, signed origins, revocation gossip and
//! datagram forwarding.
//!
//! Drivers call [`Node::handle`] for each input and
//! [`Node::handle_timeout`] when [`Node::next_deadline`] passes, always with
//! the current [`Time`], then drain [`Node::poll_output`]. Links are assumed
//! authenticated (the peer's NodeId is given at link-up) and reliable and
//! ordered (QUIC streams): the transport below makes them so.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use weft_crypto::NodeId;
use weft_crypto::sign::{CompositePublicKey, CompositeSigningKey, SignatureError};

use fixedbitset::FixedBitSet;

use crate::liveness::{HelloTimer, LinkHealth, LinkLiveness, LivenessConfig};
use crate::origin::{
    Accepted, Arrival, OriginPolicy, OriginStore, OwnOrigin, ProofOutcome, Refusal, SignatureCheck,
};
use crate::pending::Pending;
use crate::requests::Requests;
use crate::roster::{NodeIndex, Roster};
use crate::route::{Change, LinkSlot, RouteTable};
use crate::time::Time;
use crate::wire::{
    Announcement, Decoded, Hello, MAX_UPDATE_ENTRIES, Message, Metric, RevocationList, RouteEntry,
    Seqno, SeqnoProof, WireError, decode_frame,
};

/// Identifies a link: chosen by the driver, unique among a node's links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

/// Why a node could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The node's own key is not in the roster it was given.
    #[error("node {0} is not in its roster: enroll it before starting it")]
    NotEnrolled(NodeId),
    /// Its first announcement could not be signed.
    #[error("signing the node's first announcement failed: {0}")]
    Sign(#[from] SignatureError),
}

/// Node settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Liveness detector.
    pub liveness: LivenessConfig,
    /// Announcement acceptance.
    pub origin: OriginPolicy,
    /// Hop limit of datagrams this node originates.
    pub hop_limit: u8,
    /// Hop count of seqno requests this node originates.
    pub seqno_request_hops: u8,
    /// Relative change of a link cost below which routes are not reselected
    /// (damps route flapping on noisy RTT).
    pub cost_hysteresis: f64,
    /// Unix milliseconds at [`Time::ZERO`]: the node's wall clock, for
    /// announcement timestamps.
    pub unix_ms_at_zero: u64,
    /// Boot epoch, persisted and incremented by the driver at every start.
    pub epoch: u32,
    /// Route updates are held this long and sent together, so that a route
    /// that improves several times in a burst (bootstrap, a repair) is
    /// advertised once and one frame carries many entries; zero sends at
    /// once. The default, 2 ms, cut update frames eightfold and update
    /// bytes by a third in the 1000-node chaos run, for about 80 ms more
    /// reconvergence at p99.
    pub update_delay: std::time::Duration,
    /// Routes heard kept per destination (the selected one, the best other
    /// feasible ones, then the best unfeasible ones); offers beyond are
    /// dropped and asked for again with a route request if the kept ones
    /// all fail. Bounds route state at about 8 + 5 × this many bytes per
    /// destination whatever the node's degree. Default 6: in the 1000-node
    /// chaos run (degree 8, 30 % killed) 4 kept put reconvergence p99 at
    /// 1.41 s, 5 at 850 ms, 6 at 710 ms, 8 at 640 ms.
    pub routes_kept: usize,
    /// Most bytes of this node's reliable stream in flight per link: sent
    /// to the driver and not yet reported drained with
    /// [`Input::Drained`]. Route entries, then bulk transfers (the table
    /// dump at link-up and certificates fetched by the peer) wait while the
    /// window is full, as a QUIC stream's send window makes them; small,
    /// urgent messages (seqno requests and proofs, hellos) are never held.
    /// Default 16 KiB: over the simulator's 5 ms links that still moves
    /// 2.6 MB/s per link, and it bounds what a 10 000-node bootstrap keeps
    /// in flight to ~1.3 GB.
    pub send_window: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            liveness: LivenessConfig::default(),
            origin: OriginPolicy::default(),
            hop_limit: 64,
            seqno_request_hops: 64,
            cost_hysteresis: 0.25,
            unix_ms_at_zero: 0,
            epoch: 1,
            update_delay: std::time::Duration::from_millis(2),
            routes_kept: crate::route::DEFAULT_ROUTES_KEPT,
            send_window: 16 * 1024,
        }
    }
}

/// What the driver feeds in.
#[derive(Debug)]
pub enum Input<'a> {
    /// The transport established an authenticated link to `peer`.
    LinkUp {
        /// The link.
        link: LinkId,
        /// The peer's authenticated node id.
        peer: NodeId,
    },
    /// The transport lost the link.
    LinkDown {
        /// The link.
        link: LinkId,
    },
    /// Bytes arrived on a link's reliable stream (any number of frames,
    /// possibly ending in part of one).
    Received {
        /// The link.
        link: LinkId,
        /// The bytes.
        bytes: &'a [u8],
    },
    /// One unreliable datagram arrived on a link (exactly one frame).
    ReceivedDatagram {
        /// The link.
        link: LinkId,
        /// The frame.
        bytes: &'a [u8],
    },
    /// The transport reports that `bytes` more bytes of this node's
    /// reliable stream on a link were delivered (or acknowledged, or
    /// accepted into a bounded send buffer): they leave the link's send
    /// window (see [`NodeConfig::send_window`]).
    Drained {
        /// The link.
        link: LinkId,
        /// Bytes drained.
        bytes: usize,
    },
    /// The local application sends a datagram.
    Send {
        /// Destination.
        dst: NodeId,
        /// Payload.
        payload: Vec<u8>,
    },
}

/// What the driver must do or may observe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send bytes on a link.
    Transmit {
        /// The link.
        link: LinkId,
        /// Encoded frame.
        bytes: Vec<u8>,
        /// Whether the transport must deliver it reliably and in order (a
        /// QUIC stream). Hellos and datagrams are unreliable (QUIC DATAGRAM
        /// frames): a lost hello is information, and a retransmitted one
        /// would hide loss from the detector.
        reliable: bool,
    },
    /// Close a link (dead, revoked or misbehaving peer).
    Close {
        /// The link.
        link: LinkId,
        /// Why.
        reason: CloseReason,
    },
    /// Something happened.
    Event(Event),
}

/// Why a link must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The liveness detector declared the neighbour dead.
    Dead,
    /// The peer is revoked.
    Revoked,
    /// The peer sent bytes that do not decode.
    Malformed,
    /// The node has [`LinkSlot::MAX`] links already.
    TooManyLinks,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// No route to the destination.
    NoRoute,
    /// Hop limit reached zero.
    HopLimit,
    /// Source or destination is revoked.
    Revoked,
}

/// Observable events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A neighbour's first hello arrived.
    NeighbourUp {
        /// The neighbour.
        peer: NodeId,
    },
    /// A neighbour was declared dead (or its link went down).
    NeighbourDead {
        /// The neighbour.
        peer: NodeId,
    },
    /// A route was selected for a destination that had none.
    RouteAdded {
        /// Destination.
        dst: NodeId,
        /// Next hop.
        via: NodeId,
        /// Metric.
        metric: Metric,
    },
    /// The selected route changed.
    RouteChanged {
        /// Destination.
        dst: NodeId,
        /// Next hop.
        via: NodeId,
        /// Metric.
        metric: Metric,
    },
    /// No route remains.
    RouteLost {
        /// Destination.
        dst: NodeId,
    },
    /// A datagram for this node.
    Delivered {
        /// Sender.
        src: NodeId,
        /// Payload.
        payload: Vec<u8>,
    },
    /// A datagram was dropped here.
    Dropped {
        /// Sender.
        src: NodeId,
        /// Destination.
        dst: NodeId,
        /// Why.
        reason: DropReason,
    },
    /// A datagram this node sent could not be delivered.
    Unreachable {
        /// The destination.
        dst: NodeId,
        /// The node that reported it.
        reporter: NodeId,
    },
    /// An announcement was refused.
    AnnouncementRefused {
        /// Its origin.
        origin: NodeId,
        /// Why.
        reason: Refusal,
        /// The neighbour that sent it (which may only have relayed it).
        from: NodeId,
    },
    /// A newer revocation list was accepted.
    RevocationApplied {
        /// Its epoch.
        epoch: u64,
    },
}

/// A link as its liveness detector sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkMetrics {
    /// Health.
    pub health: LinkHealth,
    /// Smoothed round-trip time, once measured.
    pub srtt: Option<std::time::Duration>,
    /// Hello loss rate (EWMA, 0 to 1).
    pub loss: f64,
    /// Link cost given to routing (`u16::MAX`: unusable).
    pub cost: u16,
}

/// Counters a node keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames and bytes sent, by message kind.
    pub sent: BTreeMap<&'static str, (u64, u64)>,
    /// Frames received that did not decode.
    pub malformed: u64,
    /// Revocation lists refused (bad signature or stale).
    pub revocations_refused: u64,
    /// Times this node raised its own seqno (answering seqno requests).
    pub seqno_bumps: u64,
    /// Own announcements that could not be signed.
    pub signing_failures: u64,
    /// Messages that could not be encoded (over a protocol limit).
    pub encode_failures: u64,
}

struct Link {
    id: LinkId,
    peer: NodeId,
    live: LinkLiveness,
    /// Cost last given to the route table.
    cost: u16,
    /// Drained by the operator or the healing loop: carries no routes
    /// (cost infinite) while liveness keeps being measured.
    drained: bool,
    /// Bytes received that do not yet form a whole frame.
    rx_buf: Vec<u8>,
    /// The link is new and the whole table is going out in window-sized
    /// pieces: the next destination index to send; `None` once done.
    dump: Option<u32>,
    /// Whole announcements the peer fetched, waiting for send window:
    /// (origin, seqno asked), 8 bytes each.
    answers: VecDeque<(NodeIndex, Seqno)>,
    /// Reliable bytes handed to the driver not yet reported drained.
    unacked: usize,
    /// Destinations whose route goes out on this link as soon as the send
    /// window allows (route changes, answers to route and seqno
    /// requests), one bit each: a burst of changes costs the link no more
    /// than a bit per destination, however slow the peer, and a route
    /// that changes again before it goes out is sent once, as it stands.
    pending: Pending,
    /// Of the pending destinations, those whose entry carries a seqno newer
    /// than this node advertised before: their proof goes ahead of them.
    proofs: FixedBitSet,
    /// Encoded frames for the reliable stream, written out at the end of
    /// the input being handled.
    tx: Vec<u8>,
}

/// An announcement fetch in flight for one origin: the seqno asked for and
/// the link asked. `via == NO_SLOT`: none.
#[derive(Debug, Clone, Copy)]
struct Fetch {
    seqno: u16,
    via: u16,
}

const NO_SLOT: u16 = u16::MAX;
const NO_FETCH: Fetch = Fetch {
    seqno: 0,
    via: NO_SLOT,
};

/// Least time between two seqno requests for one destination.
const SEQNO_REQUEST_SPACING: std::time::Duration = std::time::Duration::from_millis(250);
/// Neighbours asked by one seqno request.
const SEQNO_REQUEST_FANOUT: usize = 2;
/// How long a relayed seqno request waits for its answer: past this the
/// relay forgets who asked (the askers ask again if still starving), so
/// requests for origins that died are not remembered forever.
const RELAYED_REQUEST_TTL: std::time::Duration = std::time::Duration::from_secs(2);
/// Least time between two route requests for one destination.
const ROUTE_REQUEST_SPACING: std::time::Duration = std::time::Duration::from_millis(250);
/// How often starving destinations are looked for.
const STARVATION_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Output queue capacity a node keeps between inputs.
const OUT_KEPT_CAPACITY: usize = 64;

/// Limit on buffered partial frames per link.
const MAX_RX_BUFFER: usize = 4 * crate::wire::MAX_BODY_LEN;

/// One mesh node.
///
/// Per-destination state lives in arrays indexed by the destination's
/// [`NodeIndex`] in the roster (see [`crate::roster`]), links in a small
/// array indexed by [`LinkSlot`]: with the default
/// [`NodeConfig::routes_kept`] a node keeps 33 bytes of routes per
/// destination, 8 for the announcement held and 4 for a fetch in flight,
/// plus two bits per destination per link (about 470 KB in a 10 000-node
/// mesh at degree 8), and short-lived request records while destinations
/// are being repaired.
pub struct Node {
    id: NodeId,
    me: NodeIndex,
    own: OwnOrigin,
    cfg: NodeConfig,
    seqno: Seqno,
    /// Links by slot; `None`: a free slot.
    links: Vec<Option<Link>>,
    /// Slots by the driver's link ids.
    slots: BTreeMap<LinkId, LinkSlot>,
    table: RouteTable,
    origins: OriginStore,
    authority: CompositePublicKey,
    check: Arc<dyn SignatureCheck>,
    revocation: Option<RevocationList>,
    /// Announcement fetches in flight, by origin.
    fetches: Vec<Fetch>,
    /// Recent seqno and route requests sent, seqno requests relayed and
    /// the neighbours that asked for them, by destination.
    requests: Requests,
    /// Destinations whose route changed since the last flush (sent to
    /// every link), and the same as flags by index.
    dirty: Vec<NodeIndex>,
    is_dirty: FixedBitSet,
    /// Our own seqno as last advertised.
    own_advertised: Option<Seqno>,
    out: VecDeque<Output>,
    stats: Stats,
    hellos: HelloTimer,
    /// When queued route updates go out.
    update_due: Option<Time>,
    /// The time of the input being handled.
    now: Time,
    /// Route requests held back by the spacing, retried by the periodic
    /// starvation check.
    route_retry: Vec<NodeIndex>,
    /// When to look for starving destinations next.
    next_starvation_check: Time,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("links", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// A route as the driver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The link to the next hop.
    pub link: LinkId,
    /// The next hop.
    pub next_hop: NodeId,
    /// Seqno of the route.
    pub seqno: Seqno,
    /// Metric.
    pub metric: Metric,
}

impl Node {
    /// A node with identity `key`, trusting the keys in `roster` (which
    /// must hold its own) for route origins and `authority` for
    /// revocation lists.
    pub fn new(
        key: Arc<CompositeSigningKey>,
        cfg: NodeConfig,
        roster: Arc<Roster>,
        authority: CompositePublicKey,
        check: Arc<dyn SignatureCheck>,
    ) -> Result<Self, NodeError> {
        let id = NodeId::of(key.public_key());
        let me = roster.index(&id).ok_or(NodeError::NotEnrolled(id))?;
        let n = roster.len();
        let mut origins = OriginStore::new(roster, check.clone(), cfg.origin);
        let own = OwnOrigin::new(key, cfg.epoch, Seqno(0), cfg.unix_ms_at_zero)?;
        // Our own announcement is held like any other, so neighbours can fetch it.
        if let Some(a) = own.announcement(Seqno(0)) {
            let _ = origins.offer(&a, Arrival::Fetched, cfg.unix_ms_at_zero);
        }
        Ok(Self {
            id,
            me,
            own,
            seqno: Seqno(0),
            links: Vec::new(),
            slots: BTreeMap::new(),
            table: RouteTable::with_routes_kept(me, n, cfg.routes_kept),
            origins,
            authority,
            check,
            revocation: None,
            fetches: vec![NO_FETCH; n],
            requests: Requests::default(),
            dirty: Vec::new(),
            is_dirty: FixedBitSet::with_capacity(n),
            own_advertised: None,
            out: VecDeque::new(),
            stats: Stats::default(),
            update_due: None,
            now: Time::ZERO,
            route_retry: Vec::new(),
            next_starvation_check: Time::ZERO,
            // Jitter seeded by the node id: reproducible, and different per node.
            hellos: HelloTimer::new(
                Time::ZERO,
                u64::from_le_bytes([
                    id.0[0], id.0[1], id.0[2], id.0[3], id.0[4], id.0[5], id.0[6], id.0[7],
                ]),
            ),
            cfg,
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The route table (indexed by roster index and link slot).
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// The roster this node trusts.
    pub fn roster(&self) -> &Arc<Roster> {
        self.origins.roster()
    }

    /// Trusts a grown roster (new enrollments); refused (returns false)
    /// unless it keeps every index of the current one.
    pub fn set_roster(&mut self, roster: Arc<Roster>) -> bool {
        let n = roster.len();
        if !self.origins.set_roster(roster) {
            return false;
        }
        self.table.reserve_destinations(n);
        self.fetches.resize(n.max(self.fetches.len()), NO_FETCH);
        self.is_dirty.grow(n);
        true
    }

    /// The route selected to `dst`.
    pub fn route(&self, dst: &NodeId) -> Option<Route> {
        let d = self.roster().index(dst)?;
        let s = self.table.selected(d)?;
        let l = self.link(s.via)?;
        Some(Route {
            link: l.id,
            next_hop: l.peer,
            seqno: s.seqno,
            metric: s.metric,
        })
    }

    /// The peer on a link.
    pub fn peer(&self, link: LinkId) -> Option<NodeId> {
        self.link_by_id(link).map(|l| l.peer)
    }

    /// Health of a link.
    pub fn link_health(&self, link: LinkId) -> Option<LinkHealth> {
        self.link_by_id(link).map(|l| l.live.health())
    }

    /// What the liveness detector measured on a link.
    pub fn link_metrics(&self, link: LinkId) -> Option<LinkMetrics> {
        self.link_by_id(link).map(|l| LinkMetrics {
            health: l.live.health(),
            srtt: l.live.srtt(),
            loss: l.live.loss(),
            cost: l.live.cost(),
        })
    }

    /// Drains a link (no route uses it; liveness is still measured) or
    /// puts it back. Returns false for an unknown link.
    pub fn set_drained(&mut self, now: Time, link: LinkId, drained: bool) -> bool {
        self.now = now;
        let Some(&slot) = self.slots.get(&link) else {
            return false;
        };
        let Some(l) = self.link_mut(slot) else {
            return false;
        };
        l.drained = drained;
        let cost = if drained { u16::MAX } else { l.live.cost() };
        l.cost = cost;
        let changes = self.table.set_link_cost(slot, cost);
        self.apply_changes(changes);
        self.finish(now);
        true
    }

    /// The newest revocation list accepted (from the driver or a neighbour).
    pub fn revocation(&self) -> Option<&RevocationList> {
        self.revocation.as_ref()
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The verified announcement held for `origin`.
    pub fn held_announcement(&self, origin: &NodeId) -> Option<&Announcement> {
        self.origins.held(origin)
    }

    /// Refusals of announcements by reason.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.origins.refused(reason)
    }

    /// The next output to carry out.
    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.out.pop_front();
        if out.is_none() && self.out.capacity() > OUT_KEPT_CAPACITY {
            // A burst (a full table arriving) leaves a large queue behind;
            // kept by every node of a big mesh, it would cost more than
            // the route table.
            self.out.shrink_to(OUT_KEPT_CAPACITY);
        }
        out
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn next_deadline(&self) -> Option<Time> {
        if self.slots.is_empty() {
            return None;
        }
        let dead = self
            .links
            .iter()
            .flatten()
            .filter_map(|l| l.live.dead_deadline())
            .min();
        let next = dead.map_or(self.hellos.next_at(), |d| d.min(self.hellos.next_at()));
        Some(self.update_due.map_or(next, |u| u.min(next)))
    }

    fn unix_ms(&self, now: Time) -> u64 {
        self.cfg.unix_ms_at_zero.saturating_add(now.0 / 1000)
    }

    fn link(&self, slot: LinkSlot) -> Option<&Link> {
        self.links.get(usize::from(slot.0)).and_then(Option::as_ref)
    }

    fn link_mut(&mut self, slot: LinkSlot) -> Option<&mut Link> {
        self.links
            .get_mut(usize::from(slot.0))
            .and_then(Option::as_mut)
    }

    fn link_by_id(&self, link: LinkId) -> Option<&Link> {
        self.slots.get(&link).and_then(|&s| self.link(s))
    }

    /// Slots of the live links, in order.
    fn live_slots(&self) -> Vec<LinkSlot> {
        self.links
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_some())
            .map(|(s, _)| LinkSlot(s as u16))
            .collect()
    }

    /// Handles one input at `now`.
    pub fn handle(&mut self, now: Time, input: Input<'_>) {
        self.now = now;
        match input {
            Input::LinkUp { link, peer } => self.link_up(now, link, peer),
            Input::LinkDown { link } => {
                if let Some(&slot) = self.slots.get(&link) {
                    self.link_down(slot);
                }
            }
            Input::Received { link, bytes } => {
                if let Some(&slot) = self.slots.get(&link) {
                    self.received(now, slot, bytes);
                }
            }
            Input::ReceivedDatagram { link, bytes } => {
                if let Some(&slot) = self.slots.get(&link) {
                    self.received_datagram(now, slot, bytes);
                }
            }
            Input::Drained { link, bytes } => {
                if let Some(l) = self.slots.get(&link).and_then(|&s| {
                    self.links
                        .get_mut(usize::from(s.0))
                        .and_then(Option::as_mut)
                }) {
                    l.unacked = l.unacked.saturating_sub(bytes);
                }
            }
            Input::Send { dst, payload } => {
                let hop_limit = self.cfg.hop_limit;
                self.forward(self.id, dst, hop_limit.saturating_add(1), payload);
            }
        }
        self.finish(now);
    }

    /// Sends due hellos and declares silent neighbours dead.
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = now;
        self.check_starving();
        let cfg = self.cfg.liveness.clone();
        let hellos_due = self.hellos.due(now, &cfg);
        let mut dead = Vec::new();
        let mut hellos = Vec::new();
        for (s, link) in self.links.iter_mut().enumerate() {
            let Some(link) = link else { continue };
            let slot = LinkSlot(s as u16);
            if link.live.check_dead(now) {
                dead.push(slot);
                continue;
            }
            if hellos_due {
                hellos.push((slot, link.live.hello(now, &cfg)));
            }
        }
        for (slot, h) in hellos {
            self.send(slot, &Message::Hello(h));
        }
        for slot in dead {
            self.close(slot, CloseReason::Dead);
        }
        self.finish(now);
    }

    /// Tells the driver to close a link, and forgets it.
    fn close(&mut self, slot: LinkSlot, reason: CloseReason) {
        if let Some(l) = self.link(slot) {
            self.out.push_back(Output::Close { link: l.id, reason });
            self.link_down(slot);
        }
    }

    fn link_up(&mut self, now: Time, link: LinkId, peer: NodeId) {
        if self.origins.is_revoked(&peer) {
            self.out.push_back(Output::Close {
                link,
                reason: CloseReason::Revoked,
            });
            return;
        }
        if self.slots.contains_key(&link) {
            // The driver reused a live link's id: treat it as a new link.
            if let Some(&slot) = self.slots.get(&link) {
                self.link_down(slot);
            }
        }
        let slot = match self.links.iter().position(Option::is_none) {
            Some(s) => s,
            None if self.links.len() < LinkSlot::MAX => {
                self.links.push(None);
                self.links.len() - 1
            }
            None => {
                self.out.push_back(Output::Close {
                    link,
                    reason: CloseReason::TooManyLinks,
                });
                return;
            }
        };
        let slot = LinkSlot(slot as u16);
        self.links[usize::from(slot.0)] = Some(Link {
            id: link,
            peer,
            live: LinkLiveness::new(&self.cfg.liveness),
            cost: u16::MAX,
            drained: false,
            rx_buf: Vec::new(),
            // The full table, once, at the next flush: our own route and
            // every selected route.
            dump: Some(0),
            answers: VecDeque::new(),
            unacked: 0,
            pending: Pending::default(),
            proofs: FixedBitSet::new(),
            tx: Vec::new(),
        });
        self.slots.insert(link, slot);
        self.table.set_link_cost(slot, u16::MAX);
        if let Some(list) = self.revocation.clone() {
            self.send(slot, &Message::Revocation(list));
        }
        // The first hello goes out at once.
        self.send_hello(now, slot);
    }

    /// Sends a hello on one link now, outside the node-wide hello timer.
    fn send_hello(&mut self, now: Time, slot: LinkSlot) {
        let cfg = self.cfg.liveness.clone();
        if let Some(l) = self.link_mut(slot) {
            let h = l.live.hello(now, &cfg);
            self.send(slot, &Message::Hello(h));
        }
    }

    fn link_down(&mut self, slot: LinkSlot) {
        let Some(l) = self
            .links
            .get_mut(usize::from(slot.0))
            .and_then(Option::take)
        else {
            return;
        };
        self.slots.remove(&l.id);
        self.event(Event::NeighbourDead { peer: l.peer });
        let changes = self.table.remove_link(slot);
        // The slot will be reused: nothing may still point at it.
        for f in &mut self.fetches {
            if f.via == slot.0 {
                *f = NO_FETCH;
            }
        }
        self.requests.forget_slot(slot);
        self.apply_changes(changes);
    }

    fn received(&mut self, now: Time, slot: LinkSlot, bytes: &[u8]) {
        let Some(l) = self.link_mut(slot) else {
            return;
        };
        // Whole frames are decoded straight from `bytes`; only a partial
        // frame is copied into the link's buffer.
        let mut buf = std::mem::take(&mut l.rx_buf);
        let input: &[u8] = if buf.is_empty() {
            bytes
        } else {
            buf.extend_from_slice(bytes);
            &buf
        };
        let mut at = 0;
        let mut malformed: Option<WireError> = None;
        let mut messages = Vec::new();
        while at < input.len() {
            match decode_frame(&input[at..]) {
                Ok(Decoded::Message(m, used)) => {
                    messages.push(m);
                    at += used;
                }
                Ok(Decoded::NeedMore) => break,
                Err(e) => {
                    malformed = Some(e);
                    break;
                }
            }
        }
        let rest = input[at..].to_vec();
        buf.clear();
        buf.extend_from_slice(&rest);
        if let Some(l) = self.link_mut(slot) {
            l.rx_buf = buf;
        }
        for m in messages {
            // A message may close the link (a revoked peer): the rest of
            // its bytes are dropped with it.
            if self.link(slot).is_none() {
                return;
            }
            self.on_message(now, slot, m);
        }
        let overflow = self
            .link(slot)
            .is_some_and(|l| l.rx_buf.len() > MAX_RX_BUFFER);
        if malformed.is_some() || overflow {
            self.stats.malformed += 1;
            self.close(slot, CloseReason::Malformed);
        }
    }

    fn received_datagram(&mut self, now: Time, slot: LinkSlot, bytes: &[u8]) {
        match crate::wire::decode_exact(bytes) {
            // Only hellos and datagrams travel unreliably; anything else
            // here is a confused or hostile peer, ignored and counted.
            Ok(m @ (Message::Hello(_) | Message::Datagram { .. })) => self.on_message(now, slot, m),
            Ok(_) | Err(_) => self.stats.malformed += 1,
        }
    }

    fn on_message(&mut self, now: Time, slot: LinkSlot, msg: Message) {
        match msg {
            Message::Hello(h) => self.on_hello(now, slot, &h),
            Message::Update(entries) => {
                for e in entries {
                    self.on_entry(slot, e);
                }
            }
            Message::SeqnoRequest {
                origin,
                seqno,
                hop_count,
            } => self.on_seqno_request(now, slot, origin, seqno, hop_count),
            Message::AnnouncementRequest {
                origin,
                seqno,
                have,
            } => {
                if let Some(a) = self.origins.held(&origin)
                    && (a.seqno == seqno || a.seqno.is_newer_than(seqno))
                {
                    // The proof alone, at once, when the asker holds the
                    // right certificate; the whole announcement when the
                    // send window allows (see `pump`).
                    if have == Some(a.cert.cert_ref()) {
                        let msg = Message::SeqnoProof(SeqnoProof {
                            origin,
                            cert: a.cert.cert_ref(),
                            seqno: a.seqno,
                            proof: a.proof,
                        });
                        self.send(slot, &msg);
                    } else if let Some(o) = self.roster().index(&origin) {
                        let cap = 2 * self.roster().len().max(1024);
                        if let Some(l) = self.link_mut(slot)
                            && l.answers.len() < cap
                        {
                            l.answers.push_back((o, seqno));
                        }
                    }
                }
            }
            Message::Announcement(a) => self.on_announcement(now, slot, a),
            Message::SeqnoProof(p) => self.on_seqno_proof(slot, p),
            Message::Revocation(list) => self.on_revocation(slot, list),
            Message::Datagram {
                src,
                dst,
                hop_limit,
                payload,
            } => self.forward(src, dst, hop_limit, payload),
            Message::RouteRequest { origin } => {
                // Answered with our entry as it stands, at the next flush.
                if let Some(o) = self.roster().index(&origin)
                    && !self.origins.is_revoked_at(o)
                {
                    self.advertise_on(slot, o);
                }
            }
            Message::Unreachable { reporter, src, dst } => {
                if src == self.id {
                    self.event(Event::Unreachable { dst, reporter });
                } else if let Some(sel) = self.selected(&src) {
                    self.send(sel.via, &Message::Unreachable { reporter, src, dst });
                }
            }
        }
    }

    /// The route selected to `dst`, by node id.
    fn selected(&self, dst: &NodeId) -> Option<crate::route::Selected> {
        self.roster()
            .index(dst)
            .and_then(|d| self.table.selected(d))
    }

    fn on_hello(&mut self, now: Time, slot: LinkSlot, h: &Hello) {
        let cfg = self.cfg.liveness.clone();
        let hysteresis = self.cfg.cost_hysteresis;
        let Some(l) = self.link_mut(slot) else {
            return;
        };
        let was = l.live.health();
        l.live.on_hello(now, &cfg, h);
        let cost = if l.drained { u16::MAX } else { l.live.cost() };
        let old = l.cost;
        let peer = l.peer;
        let significant = (old == u16::MAX && cost != u16::MAX)
            || (cost == u16::MAX && old != u16::MAX)
            || (f64::from(cost) - f64::from(old)).abs() > hysteresis * f64::from(old);
        if significant {
            l.cost = cost;
        }
        if was == LinkHealth::Pending {
            self.event(Event::NeighbourUp { peer });
            // Answer the first hello at once: its echo gives the peer an RTT
            // sample (and so a link cost) within one round trip, instead of
            // whenever our next hello is due. Links that get costs at
            // scattered times make routes form over whichever came first and
            // then improve many times over.
            self.send_hello(now, slot);
        }
        if significant {
            let changes = self.table.set_link_cost(slot, cost);
            self.apply_changes(changes);
        }
    }

    fn on_entry(&mut self, slot: LinkSlot, e: RouteEntry) {
        if e.origin == self.id {
            return;
        }
        // Routes to nodes that are not enrolled are dropped at once: they
        // could never be verified, and holding them would let a neighbour
        // fill our memory with invented origins.
        let Some(o) = self.roster().index(&e.origin) else {
            self.origins.count_refusal(Refusal::UnknownOrigin);
            return;
        };
        if self.origins.is_revoked_at(o) {
            return;
        }
        if !e.metric.is_infinite() {
            // A route with a seqno newer than the verified announcement is
            // kept but unusable until the announcement is verified: fetch
            // it from the sender, once per origin unless a newer seqno
            // shows up (a lost link frees the fetch).
            let held = self.origins.held_at(o);
            let needs = held.is_none_or(|a| e.seqno.is_newer_than(a.seqno));
            if needs {
                let have = held.map(|a| a.cert.cert_ref());
                if o.get() >= self.fetches.len() {
                    self.fetches.resize(o.get() + 1, NO_FETCH);
                }
                let f = &mut self.fetches[o.get()];
                if f.via == NO_SLOT || e.seqno.is_newer_than(Seqno(f.seqno)) {
                    *f = Fetch {
                        seqno: e.seqno.0,
                        via: slot.0,
                    };
                    self.send(
                        slot,
                        &Message::AnnouncementRequest {
                            origin: e.origin,
                            seqno: e.seqno,
                            have,
                        },
                    );
                }
            }
        }
        if let Some(change) = self.table.on_update(slot, o, e.seqno, e.metric) {
            self.apply_changes(vec![change]);
        }
        // Left with no route and no kept offer after dropping some: ask
        // every neighbour again (a retraction may have replaced the last
        // kept offer after the route was lost).
        if self.table.selected(o).is_none() {
            self.request_route(o, e.origin);
        }
        // An unfeasible offer while we have no route: ask for a newer seqno.
        if !e.metric.is_infinite() && self.table.selected(o).is_none() {
            self.request_seqno(o);
        }
    }

    /// The fetch in flight for `o`, if any.
    fn fetch(&self, o: NodeIndex) -> Option<(Seqno, LinkSlot)> {
        self.fetches
            .get(o.get())
            .filter(|f| f.via != NO_SLOT)
            .map(|f| (Seqno(f.seqno), LinkSlot(f.via)))
    }

    fn on_announcement(&mut self, now: Time, slot: LinkSlot, a: Announcement) {
        let origin = *a.origin();
        let index = self.roster().index(&origin);
        let requested = index
            .and_then(|o| self.fetch(o))
            .is_some_and(|(s, _)| s == a.seqno);
        let arrival = if requested {
            Arrival::Fetched
        } else {
            Arrival::Pushed
        };
        match (self.origins.offer(&a, arrival, self.unix_ms(now)), index) {
            (Ok(Accepted::New), Some(o)) => self.on_new_seqno(o, a.seqno),
            (Ok(_), _) => {}
            (Err(reason), _) => self.refused_announcement(slot, origin, a.seqno, reason),
        }
    }

    fn on_seqno_proof(&mut self, slot: LinkSlot, p: SeqnoProof) {
        match self.origins.offer_proof(&p) {
            Ok(ProofOutcome::New) => {
                if let Some(o) = self.roster().index(&p.origin) {
                    self.on_new_seqno(o, p.seqno);
                }
            }
            // NeedCert: the update naming the seqno will fetch the whole
            // announcement.
            Ok(_) => {}
            Err(reason) => self.refused_announcement(slot, p.origin, p.seqno, reason),
        }
    }

    fn refused_announcement(
        &mut self,
        slot: LinkSlot,
        origin: NodeId,
        seqno: Seqno,
        reason: Refusal,
    ) {
        let from = self.link(slot).map_or(self.id, |l| l.peer);
        self.event(Event::AnnouncementRefused {
            origin,
            reason,
            from,
        });
        // The fetch failed: the next update naming the seqno asks again.
        if let Some(o) = self.roster().index(&origin)
            && self.fetch(o) == Some((seqno, slot))
        {
            self.fetches[o.get()] = NO_FETCH;
        }
    }

    /// A newer seqno of `o` is verified: pass it to the neighbours whose
    /// seqno request we relayed, and let the routes waiting for it be used.
    fn on_new_seqno(&mut self, o: NodeIndex, seqno: Seqno) {
        for slot in self.requests.take_askers(o, seqno) {
            self.push_announcement(slot, o);
        }
        if self.fetch(o).is_some_and(|(s, _)| !s.is_newer_than(seqno)) {
            self.fetches[o.get()] = NO_FETCH;
        }
        if let Some(change) = self.table.set_verified(o, seqno) {
            self.apply_changes(vec![change]);
        }
        if self.table.selected(o).is_none() {
            self.request_seqno(o);
        }
    }

    fn on_seqno_request(
        &mut self,
        now: Time,
        slot: LinkSlot,
        origin: NodeId,
        seqno: Seqno,
        hops: u8,
    ) {
        if origin == self.id {
            if seqno.is_newer_than(self.seqno) || seqno == self.seqno.next() {
                self.bump_seqno(now);
            }
            let me = self.me;
            self.advertise_on(slot, me);
            return;
        }
        let Some(o) = self.roster().index(&origin) else {
            return;
        };
        match self.table.selected(o) {
            Some(sel) if !seqno.is_newer_than(sel.seqno) => {
                self.push_announcement(slot, o);
                self.advertise_on(slot, o);
            }
            Some(sel) if hops > 1 && sel.via != slot => {
                // Remember who asked: the new announcement goes back along
                // the request's path as soon as it arrives, sparing each hop
                // a fetch round trip while the route is being repaired.
                self.requests.add_asker(o, slot, seqno);
                // A request for the same or an older seqno relayed recently
                // is on its way already (RFC 8966 §3.8.1.2): after a mass
                // failure many nodes ask for the same origin at once.
                if self
                    .requests
                    .relayed_within(o, seqno, now, SEQNO_REQUEST_SPACING)
                {
                    return;
                }
                self.requests.relayed(o, seqno, now);
                self.send(
                    sel.via,
                    &Message::SeqnoRequest {
                        origin,
                        seqno,
                        hop_count: hops - 1,
                    },
                );
            }
            _ => {}
        }
    }

    /// Advertises our route to `d` on one link as soon as its send window
    /// allows.
    fn advertise_on(&mut self, slot: LinkSlot, d: NodeIndex) {
        if let Some(l) = self.link_mut(slot) {
            l.pending.insert(d.get());
        }
    }

    /// Sends the proof of the held seqno of `o` on a link unless the peer
    /// is known to hold it already. Only a peer that asked for a newer
    /// seqno gets this, and it asked because it holds verified routes to
    /// `o`, so it holds a certificate; should it be an older one, the
    /// proof is refused as needing the certificate and the update naming
    /// the seqno makes the peer fetch the whole announcement.
    fn push_announcement(&mut self, slot: LinkSlot, o: NodeIndex) {
        let Some(a) = self.origins.held_at(o) else {
            return;
        };
        let msg = match self.table.heard_from(slot, o) {
            Some(h) if !a.seqno.is_newer_than(h.seqno) => return,
            _ => self.origins.proof_at(o).map(Message::SeqnoProof),
        };
        if let Some(msg) = msg {
            self.send(slot, &msg);
        }
    }

    fn bump_seqno(&mut self, now: Time) {
        let next = self.seqno.next();
        match self.own.advance(next, self.unix_ms(now)) {
            Ok(a) => {
                self.stats.seqno_bumps += 1;
                self.seqno = next;
                let _ = self.origins.offer(&a, Arrival::Fetched, self.unix_ms(now));
                let me = self.me;
                self.mark_dirty(me);
            }
            Err(_) => {
                // Signing cannot fail with a valid key; if aws-lc ever does,
                // keep the old seqno and let the requester ask again.
                self.stats.signing_failures += 1;
            }
        }
    }

    fn on_revocation(&mut self, from: LinkSlot, list: RevocationList) {
        if self.accepts_revocation(&list) {
            self.apply_revocation(Some(from), list);
        }
    }

    /// Applies a revocation list issued by the authority (the control plane
    /// hands it to the agent, which passes it here); it is then gossiped.
    /// Returns whether it was newer than the one held and validly signed.
    pub fn revoke(&mut self, now: Time, list: RevocationList) -> bool {
        self.now = now;
        if !self.accepts_revocation(&list) {
            return false;
        }
        self.apply_revocation(None, list);
        self.finish(now);
        true
    }

    /// A list is taken when its epoch is newer and the authority signed it.
    fn accepts_revocation(&mut self, list: &RevocationList) -> bool {
        if self
            .revocation
            .as_ref()
            .is_some_and(|r| r.epoch >= list.epoch)
        {
            return false;
        }
        let msg = RevocationList::signed_bytes(list.epoch, list.issued_ms, &list.revoked);
        let valid = self.check.verify(
            &self.authority,
            &msg,
            RevocationList::CONTEXT,
            &list.signature[..],
        );
        if !valid {
            self.stats.revocations_refused += 1;
        }
        valid
    }

    fn apply_revocation(&mut self, from: Option<LinkSlot>, list: RevocationList) {
        let epoch = list.epoch;
        let mut changes = Vec::new();
        for id in &list.revoked {
            self.origins.revoke(*id);
            if let Some(o) = self.roster().index(id) {
                if let Some(f) = self.fetches.get_mut(o.get()) {
                    *f = NO_FETCH;
                }
                self.requests.forget_askers(o);
                changes.extend(self.table.purge(o));
            }
        }
        let slots = self.live_slots();
        let (revoked_links, gossip): (Vec<LinkSlot>, Vec<LinkSlot>) = slots
            .into_iter()
            .partition(|&s| self.link(s).is_some_and(|l| list.revoked.contains(&l.peer)));
        self.revocation = Some(list.clone());
        for slot in gossip.into_iter().filter(|&s| Some(s) != from) {
            self.send(slot, &Message::Revocation(list.clone()));
        }
        for slot in revoked_links {
            self.close(slot, CloseReason::Revoked);
        }
        self.event(Event::RevocationApplied { epoch });
        self.apply_changes(changes);
    }

    fn forward(&mut self, src: NodeId, dst: NodeId, hop_limit: u8, payload: Vec<u8>) {
        if dst == self.id {
            self.event(Event::Delivered { src, payload });
            return;
        }
        if self.origins.is_revoked(&dst) || self.origins.is_revoked(&src) {
            self.event(Event::Dropped {
                src,
                dst,
                reason: DropReason::Revoked,
            });
            return;
        }
        if hop_limit <= 1 {
            self.event(Event::Dropped {
                src,
                dst,
                reason: DropReason::HopLimit,
            });
            return;
        }
        match self.selected(&dst) {
            Some(sel) => self.send(
                sel.via,
                &Message::Datagram {
                    src,
                    dst,
                    hop_limit: hop_limit - 1,
                    payload,
                },
            ),
            None => {
                self.event(Event::Dropped {
                    src,
                    dst,
                    reason: DropReason::NoRoute,
                });
                let report = Message::Unreachable {
                    reporter: self.id,
                    src,
                    dst,
                };
                if src == self.id {
                    self.event(Event::Unreachable {
                        dst,
                        reporter: self.id,
                    });
                } else if let Some(back) = self.selected(&src) {
                    self.send(back.via, &report);
                }
            }
        }
    }

    fn apply_changes(&mut self, changes: Vec<Change>) {
        for change in changes {
            let (d, selected) = match change {
                Change::Added(d, s) | Change::Changed(d, s) => (d, Some(s)),
                Change::Lost(d) => (d, None),
            };
            let Some(dst) = self.roster().id(d) else {
                continue;
            };
            match selected {
                Some(s) => {
                    let via = self.link(s.via).map_or(dst, |l| l.peer);
                    let metric = s.metric;
                    self.event(if matches!(change, Change::Added(..)) {
                        Event::RouteAdded { dst, via, metric }
                    } else {
                        Event::RouteChanged { dst, via, metric }
                    });
                }
                None => {
                    self.event(Event::RouteLost { dst });
                    self.request_seqno(d);
                    self.request_route(d, dst);
                }
            }
            self.mark_dirty(d);
        }
    }

    /// Queues our route to `d` for every link at the next flush.
    fn mark_dirty(&mut self, d: NodeIndex) {
        if !self.is_dirty.contains(d.get()) {
            self.is_dirty.grow_and_insert(d.get());
            self.dirty.push(d);
        }
    }

    /// Asks for a newer seqno of `dst` when only unfeasible routes to it
    /// remain (RFC 8966 §3.8.2.1), from the neighbours that offer them.
    /// At most once per [`SEQNO_REQUEST_SPACING`] per destination; the
    /// periodic starvation check resends, since a request can be dropped
    /// by a relay that had no route at that moment.
    fn request_seqno(&mut self, dst: NodeIndex) {
        if self.origins.is_revoked_at(dst) {
            return;
        }
        // Only the neighbours with the best unfeasible offers are asked:
        // after a mass failure most destinations starve at once, and asking
        // every neighbour multiplied requests mesh-wide. The periodic
        // starvation check asks again if the answer does not come.
        let mut offers: Vec<(Metric, LinkSlot)> = self
            .table
            .unfeasible_offers(dst)
            .into_iter()
            .map(|r| (r.metric, r.via))
            .collect();
        if offers.is_empty() || self.table.selected(dst).is_some() {
            return;
        }
        offers.sort_unstable();
        let now = self.now;
        if self
            .requests
            .seqno_sent_within(dst, now, SEQNO_REQUEST_SPACING)
        {
            return;
        }
        let Some(origin) = self.roster().id(dst) else {
            return;
        };
        self.requests.seqno_sent(dst, now);
        let seqno = self
            .table
            .feasibility_distance(dst)
            .map(|fd| fd.seqno)
            .unwrap_or_default();
        let req = Message::SeqnoRequest {
            origin,
            seqno: seqno.next(),
            hop_count: self.cfg.seqno_request_hops,
        };
        for (_, via) in offers.into_iter().take(SEQNO_REQUEST_FANOUT) {
            self.send(via, &req);
        }
    }

    /// Asks the neighbours whose offers for `d` the table may have dropped
    /// (those it keeps nothing from: the others keep it informed) for
    /// their routes to `d`, when `d` is left without a route or any kept
    /// offer after the table dropped offers for lack of room (see
    /// [`RouteTable::take_route_request`]). At most once per
    /// [`SEQNO_REQUEST_SPACING`] per destination: a destination that dies
    /// is lost many times over while its ghost routes drain, and each loss
    /// asking every neighbour multiplied requests mesh-wide. A request held
    /// back by the spacing is retried by the periodic starvation check.
    fn request_route(&mut self, d: NodeIndex, origin: NodeId) {
        if self.origins.is_revoked_at(d) {
            return;
        }
        let now = self.now;
        if self
            .requests
            .route_sent_within(d, now, ROUTE_REQUEST_SPACING)
        {
            if !self.route_retry.contains(&d) {
                self.route_retry.push(d);
            }
            return;
        }
        if !self.table.take_route_request(d) {
            return;
        }
        self.requests.route_sent(d, now);
        for slot in self.live_slots() {
            if self.table.heard_from(slot, d).is_none() {
                self.send(slot, &Message::RouteRequest { origin });
            }
        }
    }

    /// Resends seqno requests for destinations still starving.
    fn check_starving(&mut self) {
        if self.now < self.next_starvation_check {
            return;
        }
        self.next_starvation_check = self.now + STARVATION_CHECK_INTERVAL;
        self.requests
            .expire(self.now, STARVATION_CHECK_INTERVAL, RELAYED_REQUEST_TTL);
        for d in std::mem::take(&mut self.route_retry) {
            if let Some(origin) = self.roster().id(d) {
                self.request_route(d, origin);
            }
        }
        for dst in self.table.starving() {
            self.request_seqno(dst);
        }
    }

    /// The entry advertising our route to `d` as it stands: our own route,
    /// the selected route, or a retraction.
    fn entry_for(&self, d: NodeIndex) -> Option<RouteEntry> {
        if d == self.me {
            return Some(RouteEntry {
                origin: self.id,
                seqno: self.seqno,
                metric: Metric(0),
            });
        }
        let origin = self.roster().id(d)?;
        Some(match self.table.selected(d) {
            Some(s) => RouteEntry {
                origin,
                seqno: s.seqno,
                metric: s.metric,
            },
            None => RouteEntry {
                origin,
                seqno: self
                    .table
                    .feasibility_distance(d)
                    .map(|fd| fd.seqno)
                    .unwrap_or_default(),
                metric: Metric::INFINITY,
            },
        })
    }

    /// Whether `e` advertises a seqno of `d` newer than the one this node
    /// advertised last, so that neighbours need its proof.
    fn is_new_seqno(&self, d: NodeIndex, e: &RouteEntry) -> bool {
        if e.metric.is_infinite() {
            return false;
        }
        let last = if d == self.me {
            self.own_advertised
        } else {
            self.table.feasibility_distance(d).map(|fd| fd.seqno)
        };
        last.is_some_and(|s| e.seqno.is_newer_than(s))
    }

    /// Queues the changed routes for every link once
    /// [`NodeConfig::update_delay`] has passed since the first changed; they
    /// go out as each link's send window allows (see [`pump`](Self::pump)).
    ///
    /// Each entry is computed from the table when it goes out, so a route
    /// that changed several times meanwhile goes out once. A seqno change
    /// travels with its proof (a 32-byte chain element) to every neighbour
    /// that advertised an older seqno of the origin, ahead of the entry, so
    /// the entry is usable on arrival; a neighbour that never advertised the
    /// origin fetches what it lacks. Our own new certificate is pushed
    /// whole while fresh (less than half the skew window old, since peers
    /// refuse stale pushed certificates as replays).
    fn flush(&mut self, now: Time) {
        if self.dirty.is_empty() {
            self.update_due = None;
            return;
        }
        match self.update_due {
            None if !self.cfg.update_delay.is_zero() => {
                self.update_due = Some(now + self.cfg.update_delay);
                return;
            }
            Some(due) if now < due => return,
            _ => self.update_due = None,
        }
        let dirty = std::mem::take(&mut self.dirty);
        // Whether each entry carries a new seqno is judged now, before
        // advertising moves the distances.
        let queued: Vec<(usize, bool)> = dirty
            .iter()
            .filter_map(|&d| {
                self.is_dirty.set(d.get(), false);
                let e = self.entry_for(d)?;
                Some((d.get(), self.is_new_seqno(d, &e)))
            })
            .collect();
        let n = self.table_len();
        for l in self.links.iter_mut().flatten() {
            l.pending.grow(n);
            l.proofs.grow(n);
            for &(d, new_seqno) in &queued {
                l.pending.insert(d);
                if new_seqno {
                    l.proofs.grow_and_insert(d);
                }
            }
        }
    }

    /// Sends up to `most` of a link's pending route entries, each as the
    /// table has it now, with the proofs of new seqnos ahead of them.
    fn send_pending(&mut self, slot: LinkSlot, most: usize) {
        let Some(l) = self.link_mut(slot) else {
            return;
        };
        let due: Vec<(usize, bool)> = l
            .pending
            .take_lowest(most)
            .into_iter()
            .map(|d| (d, l.proofs.contains(d)))
            .collect();
        for &(d, proof) in &due {
            if proof {
                l.proofs.set(d, false);
            }
        }
        let now_ms = self.unix_ms(self.now);
        let fresh_ms = u64::try_from(self.cfg.origin.max_skew.as_millis() / 2).unwrap_or(u64::MAX);
        let mut entries = Vec::with_capacity(due.len());
        for (d, proof) in due {
            let d = NodeIndex(d as u32);
            let Some(e) = self.entry_for(d) else {
                continue;
            };
            if proof && !e.metric.is_infinite() {
                self.push_new_seqno(slot, d, &e, now_ms, fresh_ms);
            }
            // Advertising is what sets the feasibility distance (RFC 8966 §3.7.3).
            if d == self.me {
                self.own_advertised = Some(e.seqno);
            } else {
                self.table.advertised(d, e.seqno, e.metric);
            }
            entries.push(e);
        }
        if !entries.is_empty() {
            self.send(slot, &Message::Update(entries));
        }
    }

    /// Sends what waits for a link's send window while it has room: the
    /// pending route entries first (they repair routes), then the
    /// certificates the peer fetched, then the next piece of the table
    /// dump. Each piece is computed from the table as it stands, so what
    /// waits goes out current.
    fn pump(&mut self, slot: LinkSlot) {
        let window = self.cfg.send_window.max(1);
        loop {
            let Some(l) = self.link_mut(slot) else {
                return;
            };
            let used = l.unacked + l.tx.len();
            if used >= window {
                return;
            }
            let room = window - used;
            let most = (room / crate::wire::ROUTE_ENTRY_LEN + 1).min(MAX_UPDATE_ENTRIES);
            if !l.pending.is_empty() {
                self.send_pending(slot, most);
                continue;
            }
            if let Some((o, seqno)) = l.answers.pop_front() {
                // Held announcements only move forward, so the one held
                // still answers the request (or a newer one does).
                if let Some(a) = self.origins.held_at(o)
                    && !seqno.is_newer_than(a.seqno)
                {
                    let msg = Message::Announcement(a.clone());
                    self.send(slot, &msg);
                }
                continue;
            }
            let Some(from) = l.dump else {
                return;
            };
            let n = self.table_len();
            let mut entries = Vec::new();
            let mut d = from as usize;
            while d < n && entries.len() < most {
                let i = NodeIndex(d as u32);
                d += 1;
                let e = if i == self.me {
                    self.entry_for(i)
                } else {
                    self.table.selected(i).and_then(|_| self.entry_for(i))
                };
                if let Some(e) = e {
                    if i == self.me {
                        self.own_advertised = Some(e.seqno);
                    } else {
                        self.table.advertised(i, e.seqno, e.metric);
                    }
                    entries.push(e);
                }
            }
            if let Some(l) = self.link_mut(slot) {
                l.dump = (d < n).then_some(d as u32);
            }
            if !entries.is_empty() {
                self.send(slot, &Message::Update(entries));
            }
        }
    }

    /// Destinations the table is sized for (the roster's length).
    fn table_len(&self) -> usize {
        self.is_dirty.len().max(self.roster().len())
    }

    /// Sends ahead of entry `e` what the peer needs to use its new seqno.
    fn push_new_seqno(
        &mut self,
        slot: LinkSlot,
        d: NodeIndex,
        e: &RouteEntry,
        now_ms: u64,
        fresh_ms: u64,
    ) {
        let msg = if d == self.me {
            let Some(a) = self.origins.held_at(d) else {
                return;
            };
            if a.seqno != a.cert.base {
                self.origins.proof_at(d).map(Message::SeqnoProof)
            } else if a.cert.timestamp_ms.saturating_add(fresh_ms) >= now_ms {
                Some(Message::Announcement(a.clone()))
            } else {
                // Too old to push: the peers will fetch it.
                None
            }
        } else {
            // A neighbour whose route the table does not keep (dropped for
            // lack of room) most likely holds the certificate too, as every
            // node of a converged mesh does: the 72-byte proof spares it a
            // fetch round trip per hop while a seqno raise repairs routes.
            // Without the certificate it fetches, as it would have anyway.
            match self.table.heard_from(slot, d) {
                Some(h) if !e.seqno.is_newer_than(h.seqno) => None,
                _ => self.origins.proof_at(d).map(Message::SeqnoProof),
            }
        };
        if let Some(msg) = msg {
            self.send(slot, &msg);
        }
    }

    /// Sends `msg` on a link: hellos and datagrams at once as unreliable
    /// transmissions; everything else into the link's stream buffer,
    /// written out as one transmission when the input is handled.
    fn send(&mut self, slot: LinkSlot, msg: &Message) {
        let reliable = !matches!(msg, Message::Hello(_) | Message::Datagram { .. });
        let Some(l) = self
            .links
            .get_mut(usize::from(slot.0))
            .and_then(Option::as_mut)
        else {
            // The link is gone: nothing to send on.
            return;
        };
        let encoded = if reliable {
            msg.encode(&mut l.tx).map(|()| msg.encoded_len())
        } else {
            let link = l.id;
            msg.to_bytes().map(|bytes| {
                let len = bytes.len();
                self.out.push_back(Output::Transmit {
                    link,
                    bytes,
                    reliable: false,
                });
                len
            })
        };
        match encoded {
            Ok(len) => {
                let s = self.stats.sent.entry(msg.kind()).or_default();
                s.0 += 1;
                s.1 += len as u64;
            }
            Err(_) => {
                // Only a message built past a protocol limit fails to encode;
                // count it rather than send something peers must refuse.
                self.stats.encode_failures += 1;
            }
        }
    }

    /// Flushes due route updates, then hands each link's buffered frames
    /// to the driver as one stream write.
    fn finish(&mut self, now: Time) {
        self.flush(now);
        for slot in self.live_slots() {
            self.pump(slot);
        }
        for l in self.links.iter_mut().flatten() {
            if !l.tx.is_empty() {
                l.unacked += l.tx.len();
                self.out.push_back(Output::Transmit {
                    link: l.id,
                    bytes: std::mem::take(&mut l.tx),
                    reliable: true,
                });
            }
        }
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }
}
