//! Recent requests per destination: the seqno and route requests a node
//! sent, the seqno requests it relayed and which neighbours asked for them.
//!
//! Entries live for a second or two while a destination is being repaired;
//! at bootstrap and after a mass failure most destinations are being
//! repaired at once at every node, so entries are small: times are 32-bit
//! millisecond stamps, requests sent cost 8 bytes a destination, relayed
//! ones 12 with the neighbours that asked as a bitmask. (Maps with 64-bit
//! times and a vector of askers per origin cost a large mesh more than its
//! route tables at that moment.)

use std::time::Duration;

use crate::DetMap;
use crate::roster::NodeIndex;
use crate::route::LinkSlot;
use crate::time::Time;
use crate::wire::Seqno;

/// Link slots below this are remembered as askers of a relayed request
/// (one bit each); a neighbour on a higher slot is not answered along the
/// request's path and fetches the announcement as it would anyway.
pub const ASKER_SLOTS: u16 = 32;

/// A seqno request relayed for one destination, and who asked for it.
#[derive(Debug, Clone, Copy, Default)]
struct Relayed {
    /// Slots of the neighbours whose request this node relayed.
    askers: u32,
    at: u32,
    seqno: u16,
    /// The oldest seqno the askers asked for.
    asked_seqno: u16,
}

/// Milliseconds since the driver's origin, wrapping every 49 days: entries
/// are forgotten within seconds, so a wrapped difference is never
/// ambiguous.
fn stamp(t: Time) -> u32 {
    (t.0 / 1000) as u32
}

fn within(now: Time, at: u32, window: Duration) -> bool {
    u128::from(stamp(now).wrapping_sub(at)) < window.as_millis()
}

/// Recent requests by destination.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    seqno_sent: DetMap<NodeIndex, u32>,
    route_sent: DetMap<NodeIndex, u32>,
    relayed: DetMap<NodeIndex, Relayed>,
}

impl Requests {
    /// Whether a seqno request for `d` went out less than `spacing` ago.
    pub fn seqno_sent_within(&self, d: NodeIndex, now: Time, spacing: Duration) -> bool {
        self.seqno_sent
            .get(&d)
            .is_some_and(|&at| within(now, at, spacing))
    }

    /// Records a seqno request for `d` sent at `now`.
    pub fn seqno_sent(&mut self, d: NodeIndex, now: Time) {
        self.seqno_sent.insert(d, stamp(now));
    }

    /// Whether a route request for `d` went out less than `spacing` ago.
    pub fn route_sent_within(&self, d: NodeIndex, now: Time, spacing: Duration) -> bool {
        self.route_sent
            .get(&d)
            .is_some_and(|&at| within(now, at, spacing))
    }

    /// Records a route request for `d` sent at `now`.
    pub fn route_sent(&mut self, d: NodeIndex, now: Time) {
        self.route_sent.insert(d, stamp(now));
    }

    /// Whether a seqno request for `seqno` of `d` or a newer one was relayed
    /// less than `spacing` ago.
    pub fn relayed_within(&self, d: NodeIndex, seqno: Seqno, now: Time, spacing: Duration) -> bool {
        self.relayed.get(&d).is_some_and(|r| {
            r.at != NOT_RELAYED
                && !seqno.is_newer_than(Seqno(r.seqno))
                && within(now, r.at, spacing)
        })
    }

    /// Records a seqno request for `seqno` of `d` relayed at `now`.
    pub fn relayed(&mut self, d: NodeIndex, seqno: Seqno, now: Time) {
        let r = self.relayed.entry(d).or_insert(Relayed {
            at: NOT_RELAYED,
            ..Relayed::default()
        });
        r.at = stamp(now);
        r.seqno = seqno.0;
    }

    /// Remembers that the neighbour on `slot` asked for `seqno` of `d`
    /// (not remembered for slots from [`ASKER_SLOTS`] on). Askers wait only
    /// as long as the request they made relayed (see
    /// [`expire`](Self::expire)).
    pub fn add_asker(&mut self, d: NodeIndex, slot: LinkSlot, seqno: Seqno) {
        if slot.0 >= ASKER_SLOTS {
            return;
        }
        let r = self.relayed.entry(d).or_insert(Relayed {
            at: NOT_RELAYED,
            ..Relayed::default()
        });
        if r.askers == 0 || Seqno(r.asked_seqno).is_newer_than(seqno) {
            r.asked_seqno = seqno.0;
        }
        r.askers |= 1 << slot.0;
    }

    /// The neighbours to tell that `d` reached `seqno`, forgotten: all the
    /// askers once the oldest seqno asked for is reached (an asker that
    /// wanted a newer one asks again), none before.
    pub fn take_askers(&mut self, d: NodeIndex, seqno: Seqno) -> Vec<LinkSlot> {
        let Some(r) = self.relayed.get_mut(&d) else {
            return Vec::new();
        };
        if r.askers == 0 || Seqno(r.asked_seqno).is_newer_than(seqno) {
            return Vec::new();
        }
        let askers = std::mem::take(&mut r.askers);
        (0..ASKER_SLOTS)
            .filter(|s| askers & (1 << s) != 0)
            .map(LinkSlot)
            .collect()
    }

    /// Forgets who asked for `d`.
    pub fn forget_askers(&mut self, d: NodeIndex) {
        if let Some(r) = self.relayed.get_mut(&d) {
            r.askers = 0;
        }
    }

    /// Forgets a link that went down (its slot will be reused).
    pub fn forget_slot(&mut self, slot: LinkSlot) {
        if slot.0 >= ASKER_SLOTS {
            return;
        }
        for r in self.relayed.values_mut() {
            r.askers &= !(1 << slot.0);
        }
    }

    /// Forgets requests sent more than `sent_ttl` ago and relayed ones
    /// (with their askers) more than `relayed_ttl` ago, and gives back the
    /// room a burst of requests left.
    pub fn expire(&mut self, now: Time, sent_ttl: Duration, relayed_ttl: Duration) {
        self.seqno_sent.retain(|_, at| within(now, *at, sent_ttl));
        self.route_sent.retain(|_, at| within(now, *at, sent_ttl));
        self.relayed
            .retain(|_, r| r.at != NOT_RELAYED && within(now, r.at, relayed_ttl));
        shrink(&mut self.seqno_sent);
        shrink(&mut self.route_sent);
        shrink(&mut self.relayed);
    }

    /// Destinations with an entry.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.seqno_sent.len() + self.route_sent.len() + self.relayed.len()
    }
}

/// Marks a [`Relayed`] made by an asker before any request was relayed
/// (forgotten at the next expiry, as a relayed request would be).
const NOT_RELAYED: u32 = u32::MAX;

/// Gives back a map's room once it holds a quarter of it: a burst leaves
/// a large table behind at every node.
fn shrink<V>(map: &mut DetMap<NodeIndex, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn entries_stay_small() {
        assert_eq!(std::mem::size_of::<Relayed>(), 12);
    }

    #[test]
    fn sent_requests_are_spaced_and_expire() {
        let mut r = Requests::default();
        let d = NodeIndex(7);
        let t0 = Time::from_secs(3);
        r.seqno_sent(d, t0);
        assert!(r.seqno_sent_within(d, t0 + 100 * MS, 250 * MS));
        assert!(!r.seqno_sent_within(d, t0 + 250 * MS, 250 * MS));
        assert!(!r.route_sent_within(d, t0, 250 * MS));
        r.route_sent(d, t0 + 500 * MS);
        r.expire(t0 + 1200 * MS, 1000 * MS, 2000 * MS);
        assert!(!r.seqno_sent_within(d, t0 + 1200 * MS, 10_000 * MS));
        assert!(r.route_sent_within(d, t0 + 1200 * MS, 10_000 * MS));
        r.expire(t0 + 1600 * MS, 1000 * MS, 2000 * MS);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn relayed_requests_cover_older_seqnos() {
        let mut r = Requests::default();
        let d = NodeIndex(1);
        let t0 = Time::from_secs(1);
        r.relayed(d, Seqno(10), t0);
        assert!(r.relayed_within(d, Seqno(9), t0, 250 * MS));
        assert!(r.relayed_within(d, Seqno(10), t0, 250 * MS));
        assert!(!r.relayed_within(d, Seqno(11), t0, 250 * MS));
        assert!(!r.relayed_within(d, Seqno(10), t0 + 300 * MS, 250 * MS));
    }

    #[test]
    fn askers_are_answered_once_the_oldest_seqno_asked_arrives() {
        let mut r = Requests::default();
        let d = NodeIndex(4);
        r.relayed(d, Seqno(5), Time::ZERO);
        r.add_asker(d, LinkSlot(2), Seqno(6));
        r.add_asker(d, LinkSlot(0), Seqno(5));
        r.add_asker(d, LinkSlot(ASKER_SLOTS), Seqno(5));
        assert!(r.take_askers(d, Seqno(4)).is_empty());
        assert_eq!(r.take_askers(d, Seqno(5)), vec![LinkSlot(0), LinkSlot(2)]);
        assert!(r.take_askers(d, Seqno(6)).is_empty());
        r.add_asker(d, LinkSlot(3), Seqno(8));
        r.forget_slot(LinkSlot(3));
        assert!(r.take_askers(d, Seqno(9)).is_empty());
        // Askers go with the relayed request they waited on.
        r.add_asker(d, LinkSlot(1), Seqno(8));
        r.expire(
            Time::from_secs(3),
            Duration::from_secs(1),
            Duration::from_secs(2),
        );
        assert_eq!(r.len(), 0);
    }
}
