//! The route table: distance vector with sequence numbers and the Babel
//! feasibility condition (RFC 8966 §2.4, §3.5), which keeps the forwarding
//! graph loop-free at every instant, not only after convergence.
//!
//! The table keeps a bounded number of routes heard per destination
//! (default [`DEFAULT_ROUTES_KEPT`]): the selected one, the best other
//! feasible ones and then the best unfeasible ones. When the selected next
//! hop dies another kept *feasible* route is selected at once (fast
//! reroute), before any new announcement arrives. When an offer is dropped
//! for lack of room the destination is marked, and if it later loses every
//! kept route the node asks its neighbours for their routes again (a route
//! request, RFC 8966 §3.8.1.1; see [`RouteTable::take_route_request`]).
//!
//! A heard route is usable only once the origin's announcement for its
//! seqno is verified (see [`RouteTable::set_verified`]); until then it is
//! kept but ignored, so an update never waits in a queue of its own.
//!
//! Layout: destinations are [`NodeIndex`]es from the roster and links are
//! small [`LinkSlot`]s, so the table is two flat arrays: per destination
//! 8 bytes of state plus 5 bytes per kept heard route (link slot, seqno,
//! metric), stored destination-major so that choosing a route reads one
//! cache line. With 5 routes kept that is 33 bytes per destination however
//! many links the node has: 330 KB per node in a mesh of 10 000 nodes.
//!
//! This module is pure data: no time, no I/O. The node feeds it updates
//! and link changes and reads back what changed.

use fixedbitset::FixedBitSet;

use crate::roster::NodeIndex;
use crate::wire::{Metric, Seqno};

/// Identifies a link within one node: a small index the node hands out at
/// link-up and reuses after link-down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkSlot(pub u16);

impl LinkSlot {
    /// Most link slots one node uses at once: a slot is stored in one byte
    /// in every kept route (see [`RouteTable`]), which keeps route state
    /// at 38 bytes per destination; a mesh node has tens of links, not
    /// hundreds.
    pub const MAX: usize = u8::MAX as usize;

    fn get(self) -> usize {
        usize::from(self.0)
    }
}

/// The feasibility distance of a source: the best (seqno, metric) this
/// node has ever advertised for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeasibilityDistance {
    /// Seqno of the advertised route.
    pub seqno: Seqno,
    /// Metric advertised with it.
    pub metric: Metric,
}

/// Whether an update `(seqno, metric)` is feasible against `fd`
/// (RFC 8966 §3.5.1): retractions always are; otherwise it must carry a
/// newer seqno, or the same seqno and a strictly smaller metric.
pub fn is_feasible(fd: Option<FeasibilityDistance>, seqno: Seqno, metric: Metric) -> bool {
    if metric.is_infinite() {
        return true;
    }
    match fd {
        None => true,
        Some(fd) => seqno.is_newer_than(fd.seqno) || (seqno == fd.seqno && metric < fd.metric),
    }
}

/// What one neighbour last advertised for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeardRoute {
    /// The neighbour's link.
    pub via: LinkSlot,
    /// Seqno the neighbour advertised.
    pub seqno: Seqno,
    /// Metric the neighbour advertised (its own distance); infinite for a
    /// retraction.
    pub metric: Metric,
}

/// The route a node uses for a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    /// Next hop.
    pub via: LinkSlot,
    /// Seqno of the route.
    pub seqno: Seqno,
    /// Our metric: the neighbour's plus the link cost.
    pub metric: Metric,
}

/// What a table operation changed for one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A route was selected where there was none.
    Added(NodeIndex, Selected),
    /// The selected route changed (next hop, seqno or metric).
    Changed(NodeIndex, Selected),
    /// No feasible route remains.
    Lost(NodeIndex),
}

/// Routes kept per destination unless configured otherwise. Each kept
/// route costs 5 bytes per destination, the largest share of a node's
/// memory in a large mesh: 5 keep the 1000-node scenario's reconvergence
/// p99 at 810 ms (720 ms with 6, 1220 ms with 4; `weft sim --nodes 1000
/// --kill 0.3`) and save 500 MB over 6 in a 10 000-node simulation.
pub const DEFAULT_ROUTES_KEPT: usize = 5;

/// What one neighbour advertised for one destination, packed into 5
/// bytes (`repr(packed)`: the kept ones per destination are most of a
/// node's memory in a large mesh). `via == NONE`: an empty place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed)]
struct Heard {
    via: u8,
    seqno: u16,
    metric: u16,
}

impl Heard {
    fn new(via: LinkSlot, seqno: Seqno, metric: Metric) -> Self {
        Self {
            via: via.0 as u8,
            seqno: seqno.0,
            metric: metric.0,
        }
    }

    fn via(self) -> u16 {
        u16::from(self.via)
    }

    fn seqno(self) -> Seqno {
        Seqno(self.seqno)
    }

    fn metric(self) -> Metric {
        Metric(self.metric)
    }

    fn is_empty(self) -> bool {
        self.via == NONE
    }

    fn route(self) -> HeardRoute {
        HeardRoute {
            via: LinkSlot(self.via()),
            seqno: self.seqno(),
            metric: self.metric(),
        }
    }
}

/// An empty place in a destination's row.
const EMPTY_HEARD: Heard = Heard {
    via: NONE,
    seqno: 0,
    metric: Metric::INFINITY.0,
};

/// An empty place, or no route selected.
const NONE: u8 = u8::MAX;
const VERIFIED: u8 = 1;
/// A neighbour's offer was dropped for lack of room since the last route
/// request: the kept routes may not be all there is.
const OVERFLOWED: u8 = 4;

/// Per-destination state, packed into 8 bytes (an `Option` per field
/// would double it). The selected route is the place `sel` of the
/// destination's row (`NONE`: no route selected), its metric the heard
/// metric plus the link's cost; `fd_metric == INFINITY`: no feasibility
/// distance (a distance is never infinite).
#[derive(Debug, Clone, Copy)]
struct Dest {
    sel: u8,
    flags: u8,
    fd_seqno: u16,
    fd_metric: u16,
    verified: u16,
}

const EMPTY: Dest = Dest {
    sel: NONE,
    flags: 0,
    fd_seqno: 0,
    fd_metric: u16::MAX,
    verified: 0,
};

impl Dest {
    fn fd(&self) -> Option<FeasibilityDistance> {
        (self.fd_metric != u16::MAX).then_some(FeasibilityDistance {
            seqno: Seqno(self.fd_seqno),
            metric: Metric(self.fd_metric),
        })
    }

    fn verified(&self) -> Option<Seqno> {
        (self.flags & VERIFIED != 0).then_some(Seqno(self.verified))
    }

    /// Whether a route with `seqno` may be used: the origin's
    /// announcement for that seqno (or a newer one) is verified.
    fn usable(&self, seqno: Seqno) -> bool {
        self.flags & VERIFIED != 0 && !seqno.is_newer_than(Seqno(self.verified))
    }
}

/// The route table of one node.
#[derive(Debug, Clone)]
pub struct RouteTable {
    me: NodeIndex,
    dests: Vec<Dest>,
    /// Routes heard, `kept` places per destination:
    /// `heard[d * kept .. (d + 1) * kept]`, in no particular order.
    heard: Vec<Heard>,
    kept: usize,
    /// Cost per link slot; `u16::MAX` for an unknown or infinite cost, or
    /// a slot without a link.
    costs: Vec<u16>,
    /// Destinations left without a route while a neighbour offers one, a
    /// bit each: the only ones that can be starving, so the periodic
    /// starvation check never looks at the rest of the table.
    candidates: FixedBitSet,
}

impl RouteTable {
    /// An empty table for node `me`, keeping [`DEFAULT_ROUTES_KEPT`]
    /// routes per destination.
    pub fn new(me: NodeIndex) -> Self {
        Self::with_routes_kept(me, 0, DEFAULT_ROUTES_KEPT)
    }

    /// An empty table for node `me`, sized for `n` destinations (the
    /// roster's size) so that it never grows by doubling.
    pub fn with_destinations(me: NodeIndex, n: usize) -> Self {
        Self::with_routes_kept(me, n, DEFAULT_ROUTES_KEPT)
    }

    /// An empty table for node `me`, sized for `n` destinations, keeping
    /// at most `kept` heard routes per destination (at least 1).
    pub fn with_routes_kept(me: NodeIndex, n: usize, kept: usize) -> Self {
        let mut t = Self {
            me,
            dests: Vec::new(),
            heard: Vec::new(),
            kept: kept.clamp(1, 64),
            costs: Vec::new(),
            candidates: FixedBitSet::new(),
        };
        t.reserve_destinations(n);
        t
    }

    /// Heard routes kept per destination.
    pub fn routes_kept(&self) -> usize {
        self.kept
    }

    /// Sizes the table for `n` destinations exactly (a grown roster).
    pub fn reserve_destinations(&mut self, n: usize) {
        if n > self.dests.len() {
            self.dests.reserve_exact(n - self.dests.len());
            self.dests.resize(n, EMPTY);
            self.heard.reserve_exact(n * self.kept - self.heard.len());
            self.heard.resize(n * self.kept, EMPTY_HEARD);
        }
    }

    fn ensure_dest(&mut self, d: NodeIndex) {
        if d.get() >= self.dests.len() {
            self.reserve_destinations(d.get() + 1);
        }
    }

    fn ensure_slot(&mut self, slot: LinkSlot) {
        if slot.get() >= self.costs.len() {
            self.costs.resize(slot.get() + 1, u16::MAX);
        }
    }

    fn row(&self, d: usize) -> &[Heard] {
        &self.heard[d * self.kept..(d + 1) * self.kept]
    }

    fn cost(&self, slot: u16) -> u16 {
        self.costs
            .get(usize::from(slot))
            .copied()
            .unwrap_or(u16::MAX)
    }

    /// Destinations with a finite route heard over `slot`.
    fn routed_over(&self, slot: u16) -> Vec<usize> {
        self.heard
            .iter()
            .enumerate()
            .filter(|(_, h)| h.via() == slot && !h.metric().is_infinite())
            .map(|(i, _)| i / self.kept)
            .collect()
    }

    /// Sets the cost of a link (infinite removes it from selection).
    /// Returns the destinations whose selection changed.
    pub fn set_link_cost(&mut self, link: LinkSlot, cost: u16) -> Vec<Change> {
        self.ensure_slot(link);
        if self.costs[link.get()] == cost {
            return Vec::new();
        }
        // What is selected now, before the cost moves the metrics.
        let affected: Vec<(usize, Option<Selected>)> = self
            .routed_over(link.0)
            .into_iter()
            .map(|d| (d, self.selected_at(d)))
            .collect();
        self.costs[link.get()] = cost;
        affected
            .into_iter()
            .filter_map(|(d, current)| self.reselect(NodeIndex(d as u32), current))
            .collect()
    }

    /// Forgets a link and every route through it; selection falls over to
    /// the best remaining feasible route at once. The slot may be reused.
    pub fn remove_link(&mut self, link: LinkSlot) -> Vec<Change> {
        if link.get() >= self.costs.len() {
            return Vec::new();
        }
        // What is selected now, before the routes through the link go.
        let affected: Vec<(usize, Option<Selected>)> = self
            .routed_over(link.0)
            .into_iter()
            .map(|d| (d, self.selected_at(d)))
            .collect();
        self.costs[link.get()] = u16::MAX;
        for h in self.heard.iter_mut() {
            if h.via() == link.0 {
                *h = EMPTY_HEARD;
            }
        }
        affected
            .into_iter()
            .filter_map(|(d, current)| self.reselect(NodeIndex(d as u32), current))
            .collect()
    }

    /// How a heard route ranks for keeping (lower is better): finite
    /// feasible routes first, then finite unfeasible ones, each by metric
    /// through the link (unknown costs last), then retractions.
    fn keep_rank(&self, fd: Option<FeasibilityDistance>, h: &Heard) -> (u8, u32) {
        if h.metric().is_infinite() {
            return (2, 0);
        }
        let class = u8::from(!is_feasible(fd, h.seqno(), h.metric()));
        let cost = self.cost(h.via());
        let through = if cost == u16::MAX {
            u32::from(h.metric) + 0x1_0000
        } else {
            u32::from(h.metric) + u32::from(cost)
        };
        (class, through)
    }

    /// Records an update from a neighbour. Returns the change in selection, if any.
    ///
    /// When the destination's row is full, the worst kept route other
    /// than the selected one makes room, unless the new one ranks worse
    /// still; either way an offer is dropped and the destination is
    /// marked for a route request should it lose its route.
    pub fn on_update(
        &mut self,
        via: LinkSlot,
        origin: NodeIndex,
        seqno: Seqno,
        metric: Metric,
    ) -> Option<Change> {
        if origin == self.me {
            return None;
        }
        self.ensure_slot(via);
        self.ensure_dest(origin);
        let d = origin.get();
        let new = Heard::new(via, seqno, metric);
        let base = d * self.kept;
        let row = self.row(d);
        let place = match row.iter().position(|h| h.via() == via.0) {
            Some(i) => Some(i),
            None => match row.iter().position(|h| h.is_empty()) {
                Some(i) => Some(i),
                // A retraction from a neighbour whose offer is not kept
                // changes nothing.
                None if metric.is_infinite() => None,
                None => {
                    let dest = self.dests[d];
                    let fd = dest.fd();
                    let worst = row
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != usize::from(dest.sel))
                        .max_by_key(|(i, h)| (self.keep_rank(fd, h), *i))
                        .map(|(i, h)| (i, self.keep_rank(fd, h)));
                    self.dests[d].flags |= OVERFLOWED;
                    match worst {
                        Some((i, rank)) if self.keep_rank(fd, &new) < rank => Some(i),
                        _ => None,
                    }
                }
            },
        };
        let i = place?;
        let old = self.heard[base + i];
        if old.metric().is_infinite() && metric.is_infinite() {
            // A retraction replacing a retraction or an empty place.
            self.heard[base + i] = new;
            return None;
        }
        let current = self.selected_at(d);
        self.heard[base + i] = new;
        self.reselect(origin, current)
    }

    /// Whether `origin` should be asked about again (a route request to
    /// every neighbour): no route is selected, no kept route offers one,
    /// and an offer was dropped for lack of room since the last time this
    /// returned true. Clears the mark.
    pub fn take_route_request(&mut self, origin: NodeIndex) -> bool {
        let Some(d) = self.dests.get(origin.get()) else {
            return false;
        };
        let wanted = d.flags & OVERFLOWED != 0
            && d.sel == NONE
            && self
                .row(origin.get())
                .iter()
                .all(|h| h.metric().is_infinite());
        if wanted {
            self.dests[origin.get()].flags &= !OVERFLOWED;
        }
        wanted
    }

    /// Records that the origin's announcement is verified up to `seqno`:
    /// routes heard with that seqno or an older one become usable.
    pub fn set_verified(&mut self, origin: NodeIndex, seqno: Seqno) -> Option<Change> {
        if origin == self.me {
            return None;
        }
        self.ensure_dest(origin);
        let current = self.selected_at(origin.get());
        let d = &mut self.dests[origin.get()];
        if d.verified().is_some_and(|v| !seqno.is_newer_than(v)) {
            return None;
        }
        d.verified = seqno.0;
        d.flags |= VERIFIED;
        self.reselect(origin, current)
    }

    /// The newest verified seqno of `origin`.
    pub fn verified(&self, origin: NodeIndex) -> Option<Seqno> {
        self.dests.get(origin.get()).and_then(Dest::verified)
    }

    /// Drops every route to `origin` (a revoked node) and what is known of it.
    pub fn purge(&mut self, origin: NodeIndex) -> Option<Change> {
        let i = origin.get();
        let had = self.selected_at(i);
        let d = self.dests.get_mut(i)?;
        *d = EMPTY;
        let kept = self.kept;
        self.heard[i * kept..(i + 1) * kept].fill(EMPTY_HEARD);
        had.map(|_| Change::Lost(origin))
    }

    /// Records that this node advertised `(seqno, metric)` for `origin`,
    /// lowering its feasibility distance (RFC 8966 §3.7.3).
    pub fn advertised(&mut self, origin: NodeIndex, seqno: Seqno, metric: Metric) {
        if metric.is_infinite() || origin == self.me {
            return;
        }
        self.ensure_dest(origin);
        let d = &mut self.dests[origin.get()];
        let better = match d.fd() {
            None => true,
            Some(fd) => seqno.is_newer_than(fd.seqno) || (seqno == fd.seqno && metric < fd.metric),
        };
        if better {
            d.fd_seqno = seqno.0;
            d.fd_metric = metric.0;
        }
    }

    /// The feasibility distance of `origin`.
    pub fn feasibility_distance(&self, origin: NodeIndex) -> Option<FeasibilityDistance> {
        self.dests.get(origin.get()).and_then(Dest::fd)
    }

    /// How many destinations have a selected route.
    pub fn selected_count(&self) -> usize {
        self.dests.iter().filter(|d| d.sel != NONE).count()
    }

    /// The route selected for `origin`, if any.
    pub fn selected(&self, origin: NodeIndex) -> Option<Selected> {
        self.selected_at(origin.get())
    }

    /// The route selected for destination `d`: the place `sel` of its row,
    /// with the link's cost added to the metric heard.
    fn selected_at(&self, d: usize) -> Option<Selected> {
        let sel = self.dests.get(d)?.sel;
        if sel == NONE {
            return None;
        }
        let h = *self.row(d).get(usize::from(sel))?;
        (!h.is_empty()).then(|| Selected {
            via: LinkSlot(h.via()),
            seqno: h.seqno(),
            metric: h.metric().plus(self.cost(h.via())),
        })
    }

    /// Every selected route, in index order.
    pub fn selected_routes(&self) -> impl Iterator<Item = (NodeIndex, Selected)> + '_ {
        (0..self.dests.len()).filter_map(|i| self.selected_at(i).map(|s| (NodeIndex(i as u32), s)))
    }

    /// The kept routes heard for `origin` (retractions included), whether
    /// usable yet or not, by link slot.
    pub fn heard(&self, origin: NodeIndex) -> impl Iterator<Item = HeardRoute> + '_ {
        let mut row: Vec<HeardRoute> = if origin.get() < self.dests.len() {
            self.row(origin.get())
                .iter()
                .filter(|h| !h.is_empty())
                .map(|h| h.route())
                .collect()
        } else {
            Vec::new()
        };
        row.sort_unstable_by_key(|r| r.via);
        row.into_iter()
    }

    /// What the neighbour on `link` last advertised for `origin`, if it is
    /// kept.
    pub fn heard_from(&self, link: LinkSlot, origin: NodeIndex) -> Option<HeardRoute> {
        if origin.get() >= self.dests.len() {
            return None;
        }
        self.row(origin.get())
            .iter()
            .find(|h| h.via() == link.0)
            .map(|h| h.route())
    }

    /// Routes to `origin` that could be selected but for the feasibility
    /// condition: finite, verified, over a link with a known cost.
    pub fn unfeasible_offers(&self, origin: NodeIndex) -> Vec<HeardRoute> {
        let Some(d) = self.dests.get(origin.get()) else {
            return Vec::new();
        };
        let fd = d.fd();
        self.heard(origin)
            .filter(|r| {
                !r.metric.is_infinite()
                    && d.usable(r.seqno)
                    && self.cost(r.via.0) != u16::MAX
                    && !is_feasible(fd, r.seqno, r.metric)
            })
            .collect()
    }

    /// Whether `origin` is starving: no route selected, yet a neighbour on
    /// a usable link offers a verified route that only the feasibility
    /// condition rules out (a newer seqno from the origin would unblock
    /// it). Routes over links whose cost is not known yet do not count.
    pub fn is_starving(&self, origin: NodeIndex) -> bool {
        self.dests.get(origin.get()).is_some_and(|d| d.sel == NONE)
            && !self.unfeasible_offers(origin).is_empty()
    }

    /// Every starving destination, in index order (see
    /// [`is_starving`](Self::is_starving)). Walks only the destinations
    /// that lost their route or never had one while offered.
    pub fn starving(&mut self) -> Vec<NodeIndex> {
        let listed: Vec<usize> = self.candidates.ones().collect();
        let mut starving = Vec::new();
        for d in listed {
            let still =
                self.dests[d].sel == NONE && self.row(d).iter().any(|h| !h.metric().is_infinite());
            if !still {
                self.candidates.set(d, false);
            } else if self.is_starving(NodeIndex(d as u32)) {
                starving.push(NodeIndex(d as u32));
            }
        }
        starving
    }

    /// Selects the best usable feasible route to `origin` and reports how
    /// the selection changed from `current`, the route selected before the
    /// input that calls this (the caller reads it first: the selected
    /// route's metric is computed from the row and the link costs, which
    /// the input may have moved).
    fn reselect(&mut self, origin: NodeIndex, current: Option<Selected>) -> Option<Change> {
        let i = origin.get();
        let d = self.dests[i];
        let fd = d.fd();
        let mut best: Option<(Selected, bool, usize)> = None;
        let mut offered = false;
        for (place, h) in self.row(i).iter().enumerate() {
            if h.metric().is_infinite() {
                continue;
            }
            offered = true;
            if !d.usable(h.seqno()) || !is_feasible(fd, h.seqno(), h.metric()) {
                continue;
            }
            let metric = h.metric().plus(self.cost(h.via()));
            if metric.is_infinite() {
                continue;
            }
            let cand = Selected {
                via: LinkSlot(h.via()),
                seqno: h.seqno(),
                metric,
            };
            // Prefer the current next hop on ties to avoid needless churn;
            // then the lowest slot (the row is in no order).
            let is_current = current.is_some_and(|c| c.via == cand.via);
            let better = match best {
                None => true,
                Some((b, b_current, _)) => {
                    metric < b.metric
                        || (metric == b.metric
                            && ((is_current && !b_current)
                                || (is_current == b_current && cand.via < b.via)))
                }
            };
            if better {
                best = Some((cand, is_current, place));
            }
        }
        let dm = &mut self.dests[i];
        // A row has at most 64 places, so a place fits the byte.
        dm.sel = best.map_or(NONE, |(_, _, place)| place as u8);
        let best = best.map(|(s, _, _)| s);
        if best.is_none() && offered {
            self.candidates.grow_and_insert(i);
        }
        match (current, best) {
            (None, Some(s)) => Some(Change::Added(origin, s)),
            (Some(p), Some(s)) if p != s => Some(Change::Changed(origin, s)),
            (Some(_), None) => Some(Change::Lost(origin)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(i: u32) -> NodeIndex {
        NodeIndex(i)
    }

    /// A table for node 0 in which every seqno of the given origins is verified.
    fn table(verified: &[u32]) -> RouteTable {
        let mut t = RouteTable::new(n(0));
        for &o in verified {
            t.set_verified(n(o), Seqno(0x7fff));
        }
        t
    }

    #[test]
    fn feasibility_condition() {
        let fd = Some(FeasibilityDistance {
            seqno: Seqno(10),
            metric: Metric(100),
        });
        assert!(is_feasible(None, Seqno(0), Metric(5)));
        assert!(is_feasible(fd, Seqno(11), Metric(1000)), "newer seqno");
        assert!(
            is_feasible(fd, Seqno(10), Metric(99)),
            "same seqno, better metric"
        );
        assert!(
            !is_feasible(fd, Seqno(10), Metric(100)),
            "same metric is not feasible"
        );
        assert!(!is_feasible(fd, Seqno(9), Metric(1)), "older seqno");
        assert!(
            is_feasible(fd, Seqno(9), Metric::INFINITY),
            "retractions always"
        );
        let wrap = Some(FeasibilityDistance {
            seqno: Seqno(u16::MAX),
            metric: Metric(50),
        });
        assert!(is_feasible(wrap, Seqno(0), Metric(500)), "seqno wraps");
    }

    #[test]
    fn selects_the_cheapest_feasible_route_and_fails_over_at_once() {
        let mut t = table(&[9]);
        let (a, b) = (LinkSlot(0), LinkSlot(1));
        t.set_link_cost(a, 10);
        t.set_link_cost(b, 10);
        assert_eq!(
            t.on_update(a, n(9), Seqno(1), Metric(20)),
            Some(Change::Added(
                n(9),
                Selected {
                    via: a,
                    seqno: Seqno(1),
                    metric: Metric(30)
                }
            ))
        );
        t.advertised(n(9), Seqno(1), Metric(30));
        // b offers a worse but feasible route (25 < FD 30).
        assert_eq!(t.on_update(b, n(9), Seqno(1), Metric(25)), None);
        // a dies: b is selected immediately.
        let changes = t.remove_link(a);
        assert_eq!(
            changes,
            vec![Change::Changed(
                n(9),
                Selected {
                    via: b,
                    seqno: Seqno(1),
                    metric: Metric(35)
                }
            )]
        );
        assert_eq!(t.heard_from(a, n(9)), None, "a freed slot starts empty");
    }

    #[test]
    fn unverified_routes_wait_for_their_announcement() {
        let mut t = RouteTable::new(n(0));
        t.set_link_cost(LinkSlot(0), 10);
        assert_eq!(t.on_update(LinkSlot(0), n(4), Seqno(3), Metric(5)), None);
        assert!(!t.is_starving(n(4)), "waiting for a fetch is not starving");
        // Verified up to an older seqno: still unusable.
        assert_eq!(t.set_verified(n(4), Seqno(2)), None);
        assert!(matches!(
            t.set_verified(n(4), Seqno(3)),
            Some(Change::Added(
                _,
                Selected {
                    metric: Metric(15),
                    ..
                }
            ))
        ));
        // Lowering the verified seqno is ignored.
        assert_eq!(t.set_verified(n(4), Seqno(1)), None);
        assert_eq!(t.verified(n(4)), Some(Seqno(3)));
    }

    #[test]
    fn infeasible_alternate_is_not_used_until_a_newer_seqno() {
        let mut t = table(&[9]);
        let (a, b) = (LinkSlot(0), LinkSlot(1));
        t.set_link_cost(a, 10);
        t.set_link_cost(b, 10);
        t.on_update(a, n(9), Seqno(1), Metric(20));
        t.advertised(n(9), Seqno(1), Metric(30));
        // b's route (metric 40 >= FD 30) might lead back through us: unusable.
        t.on_update(b, n(9), Seqno(1), Metric(40));
        assert_eq!(t.remove_link(a), vec![Change::Lost(n(9))]);
        assert_eq!(t.starving(), vec![n(9)]);
        assert_eq!(t.unfeasible_offers(n(9)).len(), 1);
        // A newer seqno makes it feasible again.
        assert!(matches!(
            t.on_update(b, n(9), Seqno(2), Metric(40)),
            Some(Change::Added(
                _,
                Selected {
                    seqno: Seqno(2),
                    ..
                }
            ))
        ));
        assert_eq!(t.starving(), vec![]);
    }

    #[test]
    fn retraction_and_purge() {
        let mut t = table(&[3, 4]);
        t.set_link_cost(LinkSlot(1), 5);
        t.on_update(LinkSlot(1), n(3), Seqno(4), Metric(1));
        assert_eq!(
            t.on_update(LinkSlot(1), n(3), Seqno(4), Metric::INFINITY),
            Some(Change::Lost(n(3)))
        );
        // The retraction is remembered (the neighbour holds seqno 4) but
        // offers nothing.
        assert_eq!(
            t.heard_from(LinkSlot(1), n(3)).map(|h| h.seqno),
            Some(Seqno(4))
        );
        assert!(t.unfeasible_offers(n(3)).is_empty());
        t.on_update(LinkSlot(1), n(4), Seqno(4), Metric(1));
        assert_eq!(t.purge(n(4)), Some(Change::Lost(n(4))));
        assert_eq!(t.selected(n(4)), None);
        assert_eq!(t.heard(n(4)).count(), 0);
        assert_eq!(t.verified(n(4)), None);
        // Routes to ourselves are ignored.
        assert_eq!(t.on_update(LinkSlot(1), n(0), Seqno(1), Metric(1)), None);
    }

    #[test]
    fn link_cost_changes_reselect() {
        let mut t = table(&[5]);
        t.set_link_cost(LinkSlot(1), 10);
        t.set_link_cost(LinkSlot(2), 10);
        t.on_update(LinkSlot(1), n(5), Seqno(1), Metric(10));
        t.on_update(LinkSlot(2), n(5), Seqno(1), Metric(12));
        assert_eq!(t.selected(n(5)).map(|s| s.via), Some(LinkSlot(1)));
        // Link 1 degrades: link 2 wins (no FD yet, both feasible).
        let ch = t.set_link_cost(LinkSlot(1), 100);
        assert!(matches!(
            ch.as_slice(),
            [Change::Changed(
                _,
                Selected {
                    via: LinkSlot(2),
                    ..
                }
            )]
        ));
    }

    #[test]
    fn rows_widen_when_a_node_gets_more_links() {
        let mut t = table(&[1, 2]);
        t.set_link_cost(LinkSlot(0), 1);
        t.on_update(LinkSlot(0), n(1), Seqno(1), Metric(1));
        t.on_update(LinkSlot(0), n(2), Seqno(1), Metric(2));
        t.set_link_cost(LinkSlot(7), 1);
        t.on_update(LinkSlot(7), n(2), Seqno(1), Metric(1));
        assert_eq!(t.selected(n(1)).map(|s| s.via), Some(LinkSlot(0)));
        assert_eq!(t.selected(n(2)).map(|s| s.via), Some(LinkSlot(7)));
        assert_eq!(t.heard(n(2)).count(), 2);
    }

    #[test]
    fn a_full_row_keeps_the_best_routes_and_asks_again_when_they_are_gone() {
        let mut t = RouteTable::with_routes_kept(n(0), 10, 2);
        t.set_verified(n(9), Seqno(0x7fff));
        for s in 0..4 {
            t.set_link_cost(LinkSlot(s), 10);
        }
        t.on_update(LinkSlot(0), n(9), Seqno(1), Metric(30));
        t.advertised(n(9), Seqno(1), Metric(40));
        t.on_update(LinkSlot(1), n(9), Seqno(1), Metric(20));
        assert_eq!(t.selected(n(9)).map(|s| s.via), Some(LinkSlot(1)));
        t.advertised(n(9), Seqno(1), Metric(30));
        // The row is full: a worse offer is dropped, a better one evicts
        // the worst route that is not selected.
        assert_eq!(t.on_update(LinkSlot(2), n(9), Seqno(1), Metric(50)), None);
        assert_eq!(t.heard_from(LinkSlot(2), n(9)), None);
        t.on_update(LinkSlot(3), n(9), Seqno(1), Metric(5));
        assert_eq!(t.selected(n(9)).map(|s| s.via), Some(LinkSlot(3)));
        assert_eq!(t.heard_from(LinkSlot(0), n(9)), None, "the worst went");
        assert!(t.heard_from(LinkSlot(1), n(9)).is_some());
        // While a route is kept, nothing needs asking.
        assert!(!t.take_route_request(n(9)));
        t.remove_link(LinkSlot(3));
        assert_eq!(t.selected(n(9)).map(|s| s.via), Some(LinkSlot(1)));
        assert!(!t.take_route_request(n(9)));
        t.remove_link(LinkSlot(1));
        assert_eq!(t.selected(n(9)), None);
        // Every kept route is gone but offers were dropped: ask, once.
        assert!(t.take_route_request(n(9)));
        assert!(!t.take_route_request(n(9)));
        // A table that never dropped an offer has nothing to ask.
        let mut u = table(&[9]);
        u.set_link_cost(LinkSlot(0), 1);
        u.on_update(LinkSlot(0), n(9), Seqno(1), Metric(1));
        u.remove_link(LinkSlot(0));
        assert!(!u.take_route_request(n(9)));
    }

    #[test]
    fn the_selected_route_is_never_evicted() {
        let mut t = RouteTable::with_routes_kept(n(0), 10, 1);
        t.set_verified(n(9), Seqno(0x7fff));
        t.set_link_cost(LinkSlot(0), 10);
        t.on_update(LinkSlot(0), n(9), Seqno(1), Metric(30));
        // Unknown cost on link 1: its offer cannot be selected, and the
        // selected route keeps its place.
        assert_eq!(t.on_update(LinkSlot(1), n(9), Seqno(1), Metric(1)), None);
        assert_eq!(t.selected(n(9)).map(|s| s.via), Some(LinkSlot(0)));
        assert_eq!(t.heard(n(9)).count(), 1);
    }

    #[test]
    fn state_stays_packed() {
        assert_eq!(std::mem::size_of::<Dest>(), 8);
        assert_eq!(std::mem::size_of::<Heard>(), 5);
    }

    /// Babel's invariant, checked on random event sequences over a small
    /// network of tables wired by hand: following selected next hops never
    /// revisits a node, whatever order updates arrive in, and however few
    /// routes each table keeps (dropped offers are asked for again with a
    /// route request when a node loses its route).
    #[derive(Debug, Clone)]
    enum Ev {
        Deliver(usize),
        LinkDown(usize),
        Bump,
    }

    /// A ring of 6 nodes plus two chords; node 0 is the destination.
    const EDGES: [(usize, usize); 8] = [
        (0, 1),
        (1, 2),
        (2, 3),
        (3, 4),
        (4, 5),
        (5, 0),
        (1, 4),
        (2, 5),
    ];

    /// Pending updates: (to node, via edge, seqno, metric).
    type Pending = Vec<(usize, usize, Seqno, Metric)>;

    /// What `node` advertises now (recording it), sent to `to` or, when
    /// `to` is `None`, to every neighbour over live edges.
    fn advertise(
        tables: &mut [RouteTable],
        node: usize,
        own: Seqno,
        to: Option<usize>,
        up: &[bool; 8],
        queue: &mut Pending,
    ) {
        let dest = n(0);
        let (s, m) = if node == 0 {
            (own, Metric(0))
        } else {
            let t = &mut tables[node];
            let (s, m) = t.selected(dest).map(|s| (s.seqno, s.metric)).unwrap_or((
                t.feasibility_distance(dest).map_or(Seqno(0), |fd| fd.seqno),
                Metric::INFINITY,
            ));
            t.advertised(dest, s, m);
            (s, m)
        };
        for (e, &(x, y)) in EDGES.iter().enumerate() {
            if !up[e] {
                continue;
            }
            let other = if x == node {
                y
            } else if y == node {
                x
            } else {
                continue;
            };
            if to.is_none_or(|t| t == other) {
                queue.push((other, e, s, m));
            }
        }
    }

    /// After an update or a link loss at `node`: advertise if the
    /// selection changed, and ask every neighbour again if the node is left
    /// without any route having dropped offers.
    fn changed(
        tables: &mut [RouteTable],
        node: usize,
        own: Seqno,
        up: &[bool; 8],
        queue: &mut Pending,
        change: bool,
    ) {
        if change {
            advertise(tables, node, own, None, up, queue);
        }
        if tables[node].take_route_request(n(0)) {
            for (e, &(x, y)) in EDGES.iter().enumerate() {
                if up[e] && (x == node || y == node) {
                    let other = if x == node { y } else { x };
                    advertise(tables, other, own, Some(node), up, queue);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn no_forwarding_loop_at_any_instant(
            kept in 1usize..=4,
            events in proptest::collection::vec(
            prop_oneof![
                (0usize..64).prop_map(Ev::Deliver),
                (0usize..8).prop_map(Ev::LinkDown),
                Just(Ev::Bump),
            ], 1..300)) {
            let mut tables: Vec<RouteTable> = (0..6).map(|i| {
                let mut t = RouteTable::with_routes_kept(n(i), 6, kept);
                t.set_verified(n(0), Seqno(0x7fff));
                t
            }).collect();
            let mut up = [true; 8];
            // Link slot for (node, edge index).
            let link = |e: usize| LinkSlot(e as u16);
            for (e, &(x, y)) in EDGES.iter().enumerate() {
                tables[x].set_link_cost(link(e), 1 + (e as u16 % 3));
                tables[y].set_link_cost(link(e), 1 + (e as u16 % 3));
            }
            let dest = n(0);
            let mut seqno = Seqno(1);
            let mut queue: Pending = Vec::new();
            advertise(&mut tables, 0, seqno, None, &up, &mut queue);
            for ev in events {
                match ev {
                    Ev::Deliver(i) if !queue.is_empty() => {
                        // Links are ordered streams: pick a link at random,
                        // deliver its oldest message.
                        let (to, e, _, _) = queue[i % queue.len()];
                        let first = queue.iter().position(|q| q.0 == to && q.1 == e).unwrap_or(0);
                        let (to, e, s, m) = queue.remove(first);
                        if !up[e] || to == 0 { continue; }
                        let change = tables[to].on_update(link(e), dest, s, m).is_some();
                        changed(&mut tables, to, seqno, &up, &mut queue, change);
                    }
                    Ev::LinkDown(e) => {
                        if up[e] {
                            up[e] = false;
                            let (x, y) = EDGES[e];
                            for node in [x, y] {
                                if node == 0 { continue; }
                                let change = !tables[node].remove_link(link(e)).is_empty();
                                changed(&mut tables, node, seqno, &up, &mut queue, change);
                            }
                        }
                    }
                    Ev::Bump => {
                        seqno = seqno.next();
                        advertise(&mut tables, 0, seqno, None, &up, &mut queue);
                    }
                    Ev::Deliver(_) => {}
                }
                // Invariant: from every node, following next hops reaches
                // the destination or a node without a route, never a cycle.
                for start in 1..6 {
                    let mut at = start;
                    let mut seen = [false; 6];
                    while at != 0 {
                        prop_assert!(!seen[at], "forwarding loop through node {}", at);
                        seen[at] = true;
                        let Some(sel) = tables[at].selected(dest) else { break };
                        prop_assert!(tables[at].heard_from(sel.via, dest).is_some(),
                            "node {} selected a route it does not keep", at);
                        let (x, y) = EDGES[usize::from(sel.via.0)];
                        at = if x == at { y } else { x };
                    }
                }
            }
        }

        /// Once updates stop, every node connected to the destination has
        /// a route, however few routes each table keeps: dropped offers are
        /// recovered by route requests, and starvation by seqno bumps.
        #[test]
        fn converges_with_few_routes_kept(
            kept in 1usize..=3,
            down in proptest::collection::vec(0usize..8, 0..3),
            order in proptest::collection::vec(0usize..64, 0..400),
        ) {
            let mut tables: Vec<RouteTable> = (0..6).map(|i| {
                let mut t = RouteTable::with_routes_kept(n(i), 6, kept);
                t.set_verified(n(0), Seqno(0x7fff));
                t
            }).collect();
            let mut up = [true; 8];
            let link = |e: usize| LinkSlot(e as u16);
            for (e, &(x, y)) in EDGES.iter().enumerate() {
                tables[x].set_link_cost(link(e), 1 + (e as u16 % 3));
                tables[y].set_link_cost(link(e), 1 + (e as u16 % 3));
            }
            let dest = n(0);
            let mut seqno = Seqno(1);
            let mut queue: Pending = Vec::new();
            advertise(&mut tables, 0, seqno, None, &up, &mut queue);
            let mut order = order.into_iter();
            let mut downs = down.into_iter();
            let mut steps = 0;
            loop {
                steps += 1;
                prop_assert!(steps < 100_000, "no convergence");
                if queue.is_empty() {
                    if let Some(e) = downs.next() {
                        if up[e] {
                            up[e] = false;
                            let (x, y) = EDGES[e];
                            for node in [x, y] {
                                if node != 0 {
                                    let change = !tables[node].remove_link(link(e)).is_empty();
                                    changed(&mut tables, node, seqno, &up, &mut queue, change);
                                }
                            }
                        }
                        continue;
                    }
                    // Starving nodes ask the destination for a newer seqno.
                    if (1..6).any(|i| tables[i].is_starving(dest)) {
                        seqno = seqno.next();
                        advertise(&mut tables, 0, seqno, None, &up, &mut queue);
                        continue;
                    }
                    break;
                }
                let i = order.next().unwrap_or(0);
                let (to, e, _, _) = queue[i % queue.len()];
                let first = queue.iter().position(|q| q.0 == to && q.1 == e).unwrap_or(0);
                let (to, e, s, m) = queue.remove(first);
                if !up[e] || to == 0 { continue; }
                let change = tables[to].on_update(link(e), dest, s, m).is_some();
                changed(&mut tables, to, seqno, &up, &mut queue, change);
            }
            // Reachability of node 0 over live edges.
            let mut reach = [false; 6];
            reach[0] = true;
            for _ in 0..6 {
                for (e, &(x, y)) in EDGES.iter().enumerate() {
                    if up[e] && (reach[x] || reach[y]) {
                        reach[x] = true;
                        reach[y] = true;
                    }
                }
            }
            for i in 1..6 {
                prop_assert_eq!(tables[i].selected(dest).is_some(), reach[i],
                    "node {} route vs reachability", i);
            }
        }
    }
}
