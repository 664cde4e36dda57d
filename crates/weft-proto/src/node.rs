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

use crate::DetMap;
use crate::liveness::{HelloTimer, LinkHealth, LinkLiveness, LivenessConfig};
use crate::origin::{
    Accepted, Arrival, Directory, OriginPolicy, OriginStore, OwnOrigin, ProofOutcome, Refusal,
    SignatureCheck,
};
use crate::route::{Change, LinkId, RouteTable};
use crate::time::Time;
use crate::wire::{
    Announcement, Decoded, Hello, MAX_UPDATE_ENTRIES, Message, Metric, RevocationList, RouteEntry,
    Seqno, SeqnoProof, WireError, decode_frame,
};

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
    },
    /// A newer revocation list was accepted.
    RevocationApplied {
        /// Its epoch.
        epoch: u64,
    },
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
    peer: NodeId,
    live: LinkLiveness,
    /// Cost last given to the route table.
    cost: u16,
    /// Bytes received that do not yet form a whole frame.
    rx_buf: Vec<u8>,
    /// Newest announcement seqno the peer is known to hold, per origin.
    peer_has: DetMap<NodeId, Seqno>,
    /// Route entries to send at the next flush, one per origin.
    pending: DetMap<NodeId, RouteEntry>,
    /// Announcements to send at the next flush (before the entries).
    pending_ann: Vec<NodeId>,
    /// Encoded frames for the reliable stream, written out at the end of
    /// the input being handled.
    tx: Vec<u8>,
}

impl Link {
    /// Queues a route entry for the next flush.
    fn queue_entry(&mut self, e: RouteEntry) {
        // A seqno change travels with its proof (a 32-byte chain element)
        // to every neighbour known to hold an older announcement of the
        // origin, ahead of the entry, so the entry is usable on arrival.
        // Whole certificates are not pushed by relays: a neighbour without
        // one fetches it once from whoever advertised the route.
        if !e.metric.is_infinite()
            && self
                .peer_has
                .get(&e.origin)
                .is_some_and(|s| e.seqno.is_newer_than(*s))
        {
            self.peer_has.insert(e.origin, e.seqno);
            self.pending_ann.push(e.origin);
        }
        // A newer entry for the same origin replaces a pending one.
        self.pending.insert(e.origin, e);
    }
}

/// Records that a peer holds the announcement of `origin` at `seqno`.
fn note_has(peer_has: &mut DetMap<NodeId, Seqno>, origin: NodeId, seqno: Seqno) {
    match peer_has.get_mut(&origin) {
        Some(s) if !seqno.is_newer_than(*s) => {}
        Some(s) => *s = seqno,
        None => {
            peer_has.insert(origin, seqno);
        }
    }
}

/// Least time between two seqno requests for one destination.
const SEQNO_REQUEST_SPACING: std::time::Duration = std::time::Duration::from_millis(250);
/// Neighbours asked by one seqno request.
const SEQNO_REQUEST_FANOUT: usize = 2;
/// How often starving destinations are looked for.
const STARVATION_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Pending-update capacity a link keeps between flushes.
const PENDING_KEPT_CAPACITY: usize = 64;

/// Limit on buffered partial frames per link.
const MAX_RX_BUFFER: usize = 4 * crate::wire::MAX_BODY_LEN;

/// One mesh node.
pub struct Node {
    id: NodeId,
    own: OwnOrigin,
    cfg: NodeConfig,
    seqno: Seqno,
    links: BTreeMap<LinkId, Link>,
    table: RouteTable,
    origins: OriginStore,
    authority: CompositePublicKey,
    check: Arc<dyn SignatureCheck>,
    revocation: Option<RevocationList>,
    /// Updates waiting for their origin's announcement: origin -> (link, entry).
    waiting: DetMap<NodeId, Vec<(LinkId, RouteEntry)>>,
    /// Neighbours whose seqno request for an origin this node relayed:
    /// origin -> (link, seqno asked).
    asked_by: DetMap<NodeId, Vec<(LinkId, Seqno)>>,
    /// Announcements requested and not yet received: (origin, seqno) -> link asked.
    requested: DetMap<(NodeId, u16), LinkId>,
    /// Seqno requests relayed towards an origin: origin -> (seqno, when).
    relayed: DetMap<NodeId, (Seqno, Time)>,
    out: VecDeque<Output>,
    stats: Stats,
    hellos: HelloTimer,
    /// When queued route updates go out.
    update_due: Option<Time>,
    /// The time of the input being handled.
    now: Time,
    /// Last seqno request per destination.
    seqno_requested: DetMap<NodeId, Time>,
    /// When to look for starving destinations next.
    next_starvation_check: Time,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("links", &self.links.len())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node with identity `key`, trusting `directory` for enrolled keys
    /// and `authority` for revocation lists.
    pub fn new(
        key: Arc<CompositeSigningKey>,
        cfg: NodeConfig,
        directory: Arc<dyn Directory>,
        authority: CompositePublicKey,
        check: Arc<dyn SignatureCheck>,
    ) -> Result<Self, SignatureError> {
        let id = NodeId::of(key.public_key());
        let mut origins = OriginStore::new(directory, check.clone(), cfg.origin);
        let own = OwnOrigin::new(key, cfg.epoch, Seqno(0), cfg.unix_ms_at_zero)?;
        // Our own announcement is held like any other, so neighbours can fetch it.
        if let Some(a) = own.announcement(Seqno(0)) {
            let _ = origins.offer(&a, Arrival::Fetched, cfg.unix_ms_at_zero);
        }
        Ok(Self {
            id,
            own,
            seqno: Seqno(0),
            links: BTreeMap::new(),
            table: RouteTable::new(id),
            origins,
            authority,
            check,
            revocation: None,
            waiting: DetMap::default(),
            requested: DetMap::default(),
            relayed: DetMap::default(),
            asked_by: DetMap::default(),
            out: VecDeque::new(),
            stats: Stats::default(),
            // Jitter seeded by the node id: reproducible, and different per node.
            update_due: None,
            now: Time::ZERO,
            seqno_requested: DetMap::default(),
            next_starvation_check: Time::ZERO,
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

    /// The route table.
    pub fn table(&self) -> &RouteTable {
        &self.table
    }

    /// The peer on a link.
    pub fn peer(&self, link: LinkId) -> Option<NodeId> {
        self.links.get(&link).map(|l| l.peer)
    }

    /// Health of a link.
    pub fn link_health(&self, link: LinkId) -> Option<LinkHealth> {
        self.links.get(&link).map(|l| l.live.health())
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
        self.out.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn next_deadline(&self) -> Option<Time> {
        if self.links.is_empty() {
            return None;
        }
        let dead = self
            .links
            .values()
            .filter_map(|l| l.live.dead_deadline())
            .min();
        let next = dead.map_or(self.hellos.next_at(), |d| d.min(self.hellos.next_at()));
        Some(self.update_due.map_or(next, |u| u.min(next)))
    }

    fn unix_ms(&self, now: Time) -> u64 {
        self.cfg.unix_ms_at_zero.saturating_add(now.0 / 1000)
    }

    /// Handles one input at `now`.
    pub fn handle(&mut self, now: Time, input: Input<'_>) {
        self.now = now;
        match input {
            Input::LinkUp { link, peer } => self.link_up(now, link, peer),
            Input::LinkDown { link } => self.link_down(link),
            Input::Received { link, bytes } => self.received(now, link, bytes),
            Input::ReceivedDatagram { link, bytes } => self.received_datagram(now, link, bytes),
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
        for (&id, link) in &mut self.links {
            if link.live.check_dead(now) {
                dead.push(id);
                continue;
            }
            if hellos_due {
                hellos.push((id, link.live.hello(now, &cfg)));
            }
        }
        for (link, h) in hellos {
            self.send(link, &Message::Hello(h));
        }
        for link in dead {
            self.out.push_back(Output::Close {
                link,
                reason: CloseReason::Dead,
            });
            self.link_down(link);
        }
        self.finish(now);
    }

    fn link_up(&mut self, now: Time, link: LinkId, peer: NodeId) {
        if self.origins.is_revoked(&peer) {
            self.out.push_back(Output::Close {
                link,
                reason: CloseReason::Revoked,
            });
            return;
        }
        self.links.insert(
            link,
            Link {
                peer,
                live: LinkLiveness::new(&self.cfg.liveness),
                cost: u16::MAX,
                rx_buf: Vec::new(),
                peer_has: DetMap::default(),
                pending: DetMap::default(),
                pending_ann: Vec::new(),
                tx: Vec::new(),
            },
        );
        self.table.set_link_cost(link, u16::MAX);
        // The full table, once: our own route, every selected route, and
        // the revocation list if we hold one.
        if let Some(list) = self.revocation.clone() {
            self.send(link, &Message::Revocation(list));
        }
        let mut entries = vec![RouteEntry {
            origin: self.id,
            seqno: self.seqno,
            metric: Metric(0),
        }];
        let mut routes: Vec<_> = self
            .table
            .selected_routes()
            .map(|(d, s)| RouteEntry {
                origin: *d,
                seqno: s.seqno,
                metric: s.metric,
            })
            .collect();
        routes.sort_by_key(|e| e.origin);
        entries.extend(routes);
        for e in entries {
            self.queue_entry(link, e);
        }
        // The first hello goes out at once.
        self.send_hello(now, link);
    }

    /// Sends a hello on one link now, outside the node-wide hello timer.
    fn send_hello(&mut self, now: Time, link: LinkId) {
        let cfg = self.cfg.liveness.clone();
        if let Some(l) = self.links.get_mut(&link) {
            let h = l.live.hello(now, &cfg);
            self.send(link, &Message::Hello(h));
        }
    }

    fn link_down(&mut self, link: LinkId) {
        let Some(l) = self.links.remove(&link) else {
            return;
        };
        self.event(Event::NeighbourDead { peer: l.peer });
        let changes = self.table.remove_link(link);
        self.waiting
            .values_mut()
            .for_each(|v| v.retain(|(via, _)| *via != link));
        self.apply_changes(changes);
    }

    fn received(&mut self, now: Time, link: LinkId, bytes: &[u8]) {
        let Some(l) = self.links.get_mut(&link) else {
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
        if let Some(l) = self.links.get_mut(&link) {
            l.rx_buf = buf;
        }
        for m in messages {
            self.on_message(now, link, m);
        }
        let overflow = self
            .links
            .get(&link)
            .is_some_and(|l| l.rx_buf.len() > MAX_RX_BUFFER);
        if malformed.is_some() || overflow {
            self.stats.malformed += 1;
            self.out.push_back(Output::Close {
                link,
                reason: CloseReason::Malformed,
            });
            self.link_down(link);
        }
    }

    fn received_datagram(&mut self, now: Time, link: LinkId, bytes: &[u8]) {
        if !self.links.contains_key(&link) {
            return;
        }
        match crate::wire::decode_exact(bytes) {
            // Only hellos and datagrams travel unreliably; anything else
            // here is a confused or hostile peer, ignored and counted.
            Ok(m @ (Message::Hello(_) | Message::Datagram { .. })) => self.on_message(now, link, m),
            Ok(_) | Err(_) => self.stats.malformed += 1,
        }
    }

    fn on_message(&mut self, now: Time, link: LinkId, msg: Message) {
        match msg {
            Message::Hello(h) => self.on_hello(now, link, &h),
            Message::Update(entries) => {
                for e in entries {
                    self.on_entry(link, e);
                }
            }
            Message::SeqnoRequest {
                origin,
                seqno,
                hop_count,
            } => self.on_seqno_request(now, link, origin, seqno, hop_count),
            Message::AnnouncementRequest {
                origin,
                seqno,
                have,
            } => {
                if let Some(a) = self.origins.held(&origin)
                    && (a.seqno == seqno || a.seqno.is_newer_than(seqno))
                {
                    // The proof alone when the asker holds the right certificate.
                    let msg = if have == Some(a.cert.cert_ref()) {
                        self.origins.proof(&origin).map(Message::SeqnoProof)
                    } else {
                        Some(Message::Announcement(a.clone()))
                    };
                    let held = a.seqno;
                    if let Some(l) = self.links.get_mut(&link) {
                        note_has(&mut l.peer_has, origin, held);
                    }
                    if let Some(msg) = msg {
                        self.send(link, &msg);
                    }
                }
            }
            Message::Announcement(a) => self.on_announcement(now, link, a),
            Message::SeqnoProof(p) => self.on_seqno_proof(link, p),
            Message::Revocation(list) => self.on_revocation(link, list),
            Message::Datagram {
                src,
                dst,
                hop_limit,
                payload,
            } => self.forward(src, dst, hop_limit, payload),
            Message::Unreachable { reporter, src, dst } => {
                if src == self.id {
                    self.event(Event::Unreachable { dst, reporter });
                } else if let Some(sel) = self.table.selected(&src) {
                    self.send(sel.via, &Message::Unreachable { reporter, src, dst });
                }
            }
        }
    }

    fn on_hello(&mut self, now: Time, link: LinkId, h: &Hello) {
        let cfg = self.cfg.liveness.clone();
        let hysteresis = self.cfg.cost_hysteresis;
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let was = l.live.health();
        l.live.on_hello(now, &cfg, h);
        let cost = l.live.cost();
        let old = l.cost;
        let peer = l.peer;
        let significant = old == u16::MAX
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
            self.send_hello(now, link);
        }
        if significant {
            let changes = self.table.set_link_cost(link, cost);
            self.apply_changes(changes);
        }
    }

    fn on_entry(&mut self, link: LinkId, e: RouteEntry) {
        if e.origin == self.id {
            return;
        }
        if self.origins.is_revoked(&e.origin) {
            return;
        }
        // Routes to nodes that are not enrolled are dropped at once: they
        // could never be verified, and holding them would let a neighbour
        // fill our memory with invented origins.
        if !self.origins.is_enrolled(&e.origin) {
            self.origins.count_refusal(Refusal::UnknownOrigin);
            return;
        }
        if !e.metric.is_infinite() {
            // A route with a seqno newer than the verified announcement needs
            // the announcement first: ask the sender for it, hold the entry.
            let held = self.origins.held(&e.origin).map(|a| a.seqno);
            let needs = held.is_none_or(|s| e.seqno.is_newer_than(s));
            if needs {
                self.waiting.entry(e.origin).or_default().push((link, e));
                // One request per (origin, seqno) at a time, whichever
                // neighbour advertised it first; a lost link frees it.
                if let std::collections::hash_map::Entry::Vacant(v) =
                    self.requested.entry((e.origin, e.seqno.0))
                {
                    v.insert(link);
                    let have = self.origins.held(&e.origin).map(|a| a.cert.cert_ref());
                    self.send(
                        link,
                        &Message::AnnouncementRequest {
                            origin: e.origin,
                            seqno: e.seqno,
                            have,
                        },
                    );
                }
                return;
            }
        }
        if let Some(l) = self.links.get_mut(&link)
            && !e.metric.is_infinite()
        {
            // It advertises the route, so it holds the announcement.
            note_has(&mut l.peer_has, e.origin, e.seqno);
        }
        if let Some(change) = self.table.on_update(link, e.origin, e.seqno, e.metric) {
            self.apply_changes(vec![change]);
        }
        // An unfeasible offer while we have no route: ask for a newer seqno.
        if !e.metric.is_infinite() && self.table.selected(&e.origin).is_none() {
            self.request_seqno(e.origin);
        }
    }

    fn on_announcement(&mut self, now: Time, link: LinkId, a: Announcement) {
        let origin = *a.origin();
        let requested = self.requested.remove(&(origin, a.seqno.0)).is_some();
        let arrival = if requested {
            Arrival::Fetched
        } else {
            Arrival::Pushed
        };
        match self.origins.offer(&a, arrival, self.unix_ms(now)) {
            Ok(accepted) => {
                if let Some(l) = self.links.get_mut(&link) {
                    note_has(&mut l.peer_has, origin, a.seqno);
                }
                if accepted == Accepted::New {
                    self.on_new_seqno(origin, a.seqno);
                }
            }
            Err(reason) => self.refused_announcement(link, origin, a.seqno, reason),
        }
    }

    fn on_seqno_proof(&mut self, link: LinkId, p: SeqnoProof) {
        match self.origins.offer_proof(&p) {
            Ok(outcome) => {
                if outcome != ProofOutcome::NeedCert
                    && let Some(l) = self.links.get_mut(&link)
                {
                    note_has(&mut l.peer_has, p.origin, p.seqno);
                }
                if outcome == ProofOutcome::New {
                    self.requested.remove(&(p.origin, p.seqno.0));
                    self.on_new_seqno(p.origin, p.seqno);
                }
                // NeedCert: the update naming the seqno will fetch the
                // whole announcement.
            }
            Err(reason) => self.refused_announcement(link, p.origin, p.seqno, reason),
        }
    }

    fn refused_announcement(
        &mut self,
        link: LinkId,
        origin: NodeId,
        seqno: Seqno,
        reason: Refusal,
    ) {
        self.event(Event::AnnouncementRefused { origin, reason });
        if let Some(v) = self.waiting.get_mut(&origin) {
            v.retain(|(via, e)| !(*via == link && e.seqno == seqno));
        }
    }

    /// A newer seqno of `origin` is verified: pass it to the neighbours
    /// whose seqno request we relayed, and release the entries waiting for it.
    fn on_new_seqno(&mut self, origin: NodeId, seqno: Seqno) {
        if let Some(asked) = self.asked_by.remove(&origin) {
            let (done, waiting): (Vec<_>, Vec<_>) = asked
                .into_iter()
                .partition(|(_, s)| !s.is_newer_than(seqno));
            if !waiting.is_empty() {
                self.asked_by.insert(origin, waiting);
            }
            for (l, _) in done {
                self.push_announcement(l, origin);
            }
        }
        let waiting = self.waiting.remove(&origin).unwrap_or_default();
        let (ready, still): (Vec<_>, Vec<_>) = waiting
            .into_iter()
            .partition(|(_, e)| !e.seqno.is_newer_than(seqno));
        if !still.is_empty() {
            self.waiting.insert(origin, still);
        }
        for (via, e) in ready {
            if self.links.contains_key(&via) {
                self.on_entry(via, e);
            }
        }
    }

    fn on_seqno_request(
        &mut self,
        now: Time,
        link: LinkId,
        origin: NodeId,
        seqno: Seqno,
        hops: u8,
    ) {
        if origin == self.id {
            if seqno.is_newer_than(self.seqno) || seqno == self.seqno.next() {
                self.bump_seqno(now);
            }
            let own = RouteEntry {
                origin: self.id,
                seqno: self.seqno,
                metric: Metric(0),
            };
            self.queue_entry(link, own);
            return;
        }
        match self.table.selected(&origin) {
            Some(sel) if !seqno.is_newer_than(sel.seqno) => {
                let e = RouteEntry {
                    origin,
                    seqno: sel.seqno,
                    metric: sel.metric,
                };
                self.push_announcement(link, origin);
                self.queue_entry(link, e);
            }
            Some(sel) if hops > 1 && sel.via != link => {
                // Remember who asked: the new announcement goes back along
                // the request's path as soon as it arrives, sparing each hop
                // a fetch round trip while the route is being repaired.
                let asked = self.asked_by.entry(origin).or_default();
                if asked.len() < 64 && !asked.iter().any(|(l, s)| *l == link && *s == seqno) {
                    asked.push((link, seqno));
                }
                // A request for the same or an older seqno relayed recently
                // is on its way already (RFC 8966 §3.8.1.2): after a mass
                // failure many nodes ask for the same origin at once.
                if self.relayed.get(&origin).is_some_and(|&(s, at)| {
                    !seqno.is_newer_than(s) && now < at + SEQNO_REQUEST_SPACING
                }) {
                    return;
                }
                self.relayed.insert(origin, (seqno, now));
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

    /// Sends the held announcement of `origin` on `link` unless the peer is
    /// known to hold it already: the proof alone if the peer holds an
    /// announcement of the origin (so most likely its certificate),
    /// otherwise the whole announcement.
    fn push_announcement(&mut self, link: LinkId, origin: NodeId) {
        let Some(a) = self.origins.held(&origin) else {
            return;
        };
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let msg = match l.peer_has.get(&origin) {
            Some(s) if !a.seqno.is_newer_than(*s) => return,
            Some(_) => self.origins.proof(&origin).map(Message::SeqnoProof),
            None => Some(Message::Announcement(a.clone())),
        };
        note_has(&mut l.peer_has, origin, a.seqno);
        if let Some(msg) = msg {
            self.send(link, &msg);
        }
    }

    fn bump_seqno(&mut self, now: Time) {
        let next = self.seqno.next();
        match self.own.advance(next, self.unix_ms(now)) {
            Ok(a) => {
                self.stats.seqno_bumps += 1;
                self.seqno = next;
                let _ = self.origins.offer(&a, Arrival::Fetched, self.unix_ms(now));
                let own = RouteEntry {
                    origin: self.id,
                    seqno: next,
                    metric: Metric(0),
                };
                let links: Vec<LinkId> = self.links.keys().copied().collect();
                for link in links {
                    self.queue_entry(link, own);
                }
            }
            Err(_) => {
                // Signing cannot fail with a valid key; if aws-lc ever does,
                // keep the old seqno and let the requester ask again.
                self.stats.signing_failures += 1;
            }
        }
    }

    fn on_revocation(&mut self, from: LinkId, list: RevocationList) {
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

    fn apply_revocation(&mut self, from: Option<LinkId>, list: RevocationList) {
        let epoch = list.epoch;
        let mut changes = Vec::new();
        for id in &list.revoked {
            self.origins.revoke(*id);
            self.waiting.remove(id);
            changes.extend(self.table.purge(id));
        }
        let revoked_links: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| list.revoked.contains(&l.peer))
            .map(|(id, _)| *id)
            .collect();
        let gossip: Vec<LinkId> = self
            .links
            .keys()
            .copied()
            .filter(|l| Some(*l) != from && !revoked_links.contains(l))
            .collect();
        self.revocation = Some(list.clone());
        for link in gossip {
            self.send(link, &Message::Revocation(list.clone()));
        }
        for link in revoked_links {
            self.out.push_back(Output::Close {
                link,
                reason: CloseReason::Revoked,
            });
            self.link_down(link);
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
        match self.table.selected(&dst) {
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
                } else if let Some(back) = self.table.selected(&src) {
                    self.send(back.via, &report);
                }
            }
        }
    }

    fn apply_changes(&mut self, changes: Vec<Change>) {
        for change in changes {
            let entry = match change {
                Change::Added(dst, s) | Change::Changed(dst, s) => {
                    let via = self.links.get(&s.via).map(|l| l.peer).unwrap_or(dst);
                    let ev = if matches!(change, Change::Added(..)) {
                        Event::RouteAdded {
                            dst,
                            via,
                            metric: s.metric,
                        }
                    } else {
                        Event::RouteChanged {
                            dst,
                            via,
                            metric: s.metric,
                        }
                    };
                    self.event(ev);
                    RouteEntry {
                        origin: dst,
                        seqno: s.seqno,
                        metric: s.metric,
                    }
                }
                Change::Lost(dst) => {
                    self.event(Event::RouteLost { dst });
                    let seqno = self
                        .table
                        .feasibility_distance(&dst)
                        .map(|fd| fd.seqno)
                        .unwrap_or_default();
                    self.request_seqno(dst);
                    RouteEntry {
                        origin: dst,
                        seqno,
                        metric: Metric::INFINITY,
                    }
                }
            };
            for l in self.links.values_mut() {
                l.queue_entry(entry);
            }
        }
    }

    /// Asks for a newer seqno of `dst` when only unfeasible routes to it
    /// remain (RFC 8966 §3.8.2.1), from the neighbours that offer them.
    /// At most once per [`SEQNO_REQUEST_SPACING`] per destination; the
    /// periodic starvation check resends, since a request can be dropped
    /// by a relay that had no route at that moment.
    fn request_seqno(&mut self, dst: NodeId) {
        if self.origins.is_revoked(&dst) || !self.table.is_starving(&dst) {
            return;
        }
        // Only the neighbours with the best unfeasible offers are asked:
        // after a mass failure most destinations starve at once, and asking
        // every neighbour multiplied requests mesh-wide. The periodic
        // starvation check asks again if the answer does not come.
        let mut offers: Vec<(Metric, LinkId)> = self
            .table
            .heard(&dst)
            .iter()
            .filter(|r| !r.metric.is_infinite())
            .map(|r| (r.metric, r.via))
            .collect();
        offers.sort_unstable();
        let vias: Vec<LinkId> = offers
            .into_iter()
            .take(SEQNO_REQUEST_FANOUT)
            .map(|(_, via)| via)
            .collect();
        if vias.is_empty() {
            return;
        }
        let now = self.now;
        if self
            .seqno_requested
            .get(&dst)
            .is_some_and(|&at| now < at + SEQNO_REQUEST_SPACING)
        {
            return;
        }
        self.seqno_requested.insert(dst, now);
        let seqno = self
            .table
            .feasibility_distance(&dst)
            .map(|fd| fd.seqno)
            .unwrap_or_default();
        let req = Message::SeqnoRequest {
            origin: dst,
            seqno: seqno.next(),
            hop_count: self.cfg.seqno_request_hops,
        };
        for via in vias {
            self.send(via, &req);
        }
    }

    /// Resends seqno requests for destinations still starving.
    fn check_starving(&mut self) {
        if self.now < self.next_starvation_check {
            return;
        }
        self.next_starvation_check = self.now + STARVATION_CHECK_INTERVAL;
        self.seqno_requested
            .retain(|_, at| self.now < *at + STARVATION_CHECK_INTERVAL);
        let mut starving: Vec<NodeId> = self.table.starving().copied().collect();
        starving.sort();
        for dst in starving {
            self.request_seqno(dst);
        }
    }

    fn queue_entry(&mut self, link: LinkId, e: RouteEntry) {
        if let Some(l) = self.links.get_mut(&link) {
            l.queue_entry(e);
        }
    }

    /// Sends the queued announcements and route entries of every link once
    /// [`NodeConfig::update_delay`] has passed since the first was queued.
    ///
    /// Queued seqno changes go as proofs, except that an origin pushes a
    /// certificate it has just signed whole (while fresh: less than half
    /// the skew window old, since peers refuse stale pushed certificates
    /// as replays).
    fn flush(&mut self, now: Time) {
        let queued = self
            .links
            .values()
            .any(|l| !l.pending.is_empty() || !l.pending_ann.is_empty());
        if !queued {
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
        let now_ms = self.unix_ms(now);
        let fresh_ms = u64::try_from(self.cfg.origin.max_skew.as_millis() / 2).unwrap_or(u64::MAX);
        let links: Vec<LinkId> = self.links.keys().copied().collect();
        for link in links {
            let Some(l) = self.links.get_mut(&link) else {
                continue;
            };
            if l.pending.is_empty() && l.pending_ann.is_empty() {
                continue;
            }
            let anns = std::mem::take(&mut l.pending_ann);
            // Drained rather than taken: the map keeps some capacity for the
            // next burst instead of growing again from nothing, but not a
            // whole table's worth per link (memory grows with links × routes).
            let mut entries: Vec<RouteEntry> = l.pending.drain().map(|(_, e)| e).collect();
            l.pending.shrink_to(PENDING_KEPT_CAPACITY);
            for origin in anns {
                let Some(a) = self.origins.held(&origin) else {
                    continue;
                };
                let new_cert = origin == self.id && a.seqno == a.cert.base;
                if !new_cert {
                    if let Some(p) = self.origins.proof(&origin) {
                        self.send(link, &Message::SeqnoProof(p));
                    }
                } else if a.cert.timestamp_ms.saturating_add(fresh_ms) >= now_ms {
                    let a = a.clone();
                    self.send(link, &Message::Announcement(a));
                } else if let Some(l) = self.links.get_mut(&link) {
                    // Too old to push: the peer will fetch it.
                    l.peer_has.remove(&origin);
                }
            }
            entries.sort_unstable_by_key(|e| e.origin);
            // Advertising is what sets the feasibility distance (RFC 8966 §3.7.3).
            for e in &entries {
                self.table.advertised(e.origin, e.seqno, e.metric);
            }
            for chunk in entries.chunks(MAX_UPDATE_ENTRIES) {
                self.send(link, &Message::Update(chunk.to_vec()));
            }
        }
    }

    /// Sends `msg` on `link`: hellos and datagrams at once as unreliable
    /// transmissions; everything else into the link's stream buffer,
    /// written out as one transmission when the input is handled.
    fn send(&mut self, link: LinkId, msg: &Message) {
        let reliable = !matches!(msg, Message::Hello(_) | Message::Datagram { .. });
        let encoded = if reliable {
            match self.links.get_mut(&link) {
                Some(l) => msg.encode(&mut l.tx).map(|()| msg.encoded_len()),
                // The link is gone: nothing to send on.
                None => return,
            }
        } else {
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
        for (&link, l) in &mut self.links {
            if !l.tx.is_empty() {
                self.out.push_back(Output::Transmit {
                    link,
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
