//! Signed route origins: which (origin, epoch, seqno) announcements a node
//! accepts, verified once and cached, with every refusal counted by reason.
//!
//! Rules, in order:
//! 1. the origin must be enrolled (its public key is in the [`Directory`]);
//! 2. it must not be revoked;
//! 3. `(epoch, seqno)` must not be older than the announcement held for it
//!    (an equal one is a duplicate and costs nothing);
//! 4. the timestamp must not be more than [`OriginPolicy::max_skew`] in the
//!    future; an announcement *pushed* with a seqno change must also not be
//!    older than `max_skew` (it was just signed). One *fetched* on request
//!    may be older: the origin signs only when its seqno changes, so a node
//!    joining later asks for announcements signed long ago;
//! 5. the composite signature must verify.
//!
//! Verification is deterministic, so a [`SignatureCheck`] may memoize
//! results across nodes (the simulator does), keeping the cost at one
//! verification per distinct signature.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use weft_crypto::NodeId;
use weft_crypto::sign::{CompositePublicKey, CompositeSignature};

use crate::wire::{Announcement, Seqno};

/// Public keys of the enrolled nodes (from the control plane).
pub trait Directory: Send + Sync {
    /// The composite public key of `node`, if it is enrolled.
    fn public_key(&self, node: &NodeId) -> Option<CompositePublicKey>;

    /// Whether `node` is enrolled.
    fn contains(&self, node: &NodeId) -> bool {
        self.public_key(node).is_some()
    }
}

impl<S: std::hash::BuildHasher + Send + Sync> Directory for HashMap<NodeId, CompositePublicKey, S> {
    fn public_key(&self, node: &NodeId) -> Option<CompositePublicKey> {
        self.get(node).cloned()
    }

    fn contains(&self, node: &NodeId) -> bool {
        self.contains_key(node)
    }
}

/// Verifies composite signatures; implementations may memoize.
pub trait SignatureCheck: Send + Sync {
    /// Whether `signature` over `message` under `context` verifies with `key`.
    fn verify(
        &self,
        key: &CompositePublicKey,
        message: &[u8],
        context: &[u8],
        signature: &[u8],
    ) -> bool;

    /// A shared copy of an accepted announcement. A node keeps one per
    /// origin (3.4 KB each, mostly signature); a simulator running many
    /// nodes returns the same copy to all of them.
    fn share(&self, a: &Announcement) -> Arc<Announcement> {
        Arc::new(a.clone())
    }
}

/// Verifies every time.
#[derive(Debug, Default, Clone, Copy)]
pub struct DirectCheck;

impl SignatureCheck for DirectCheck {
    fn verify(
        &self,
        key: &CompositePublicKey,
        message: &[u8],
        context: &[u8],
        signature: &[u8],
    ) -> bool {
        CompositeSignature::from_bytes(signature)
            .and_then(|sig| key.verify(message, context, &sig))
            .is_ok()
    }
}

/// Why an announcement was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// The origin is not enrolled.
    UnknownOrigin,
    /// The origin is revoked.
    RevokedOrigin,
    /// Older `(epoch, seqno)` than held, or a timestamp outside the window.
    Replayed,
    /// The signature does not verify.
    Forged,
}

impl Refusal {
    /// Label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownOrigin => "unknown_origin",
            Refusal::RevokedOrigin => "revoked_origin",
            Refusal::Replayed => "replayed",
            Refusal::Forged => "forged",
        }
    }
}

/// How an announcement reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Pushed by a neighbour because the seqno changed.
    Pushed,
    /// Sent in answer to our request.
    Fetched,
}

/// Outcome of offering an announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// New: the held announcement for the origin changed.
    New,
    /// The same as the one held.
    Duplicate,
}

/// Policy knobs.
#[derive(Debug, Clone, Copy)]
pub struct OriginPolicy {
    /// Clock tolerance for timestamps (±).
    pub max_skew: Duration,
}

impl Default for OriginPolicy {
    fn default() -> Self {
        Self {
            max_skew: Duration::from_secs(60),
        }
    }
}

/// The announcements one node holds, and its refusal counters.
pub struct OriginStore {
    directory: Arc<dyn Directory>,
    check: Arc<dyn SignatureCheck>,
    policy: OriginPolicy,
    held: crate::DetMap<NodeId, Arc<Announcement>>,
    revoked: std::collections::HashSet<NodeId>,
    refused: HashMap<Refusal, u64>,
}

impl OriginStore {
    /// A store that trusts `directory` and verifies with `check`.
    pub fn new(
        directory: Arc<dyn Directory>,
        check: Arc<dyn SignatureCheck>,
        policy: OriginPolicy,
    ) -> Self {
        Self {
            directory,
            check,
            policy,
            held: crate::DetMap::default(),
            revoked: Default::default(),
            refused: HashMap::new(),
        }
    }

    /// Offers an announcement received at wall-clock `now_unix_ms`.
    pub fn offer(
        &mut self,
        a: &Announcement,
        arrival: Arrival,
        now_unix_ms: u64,
    ) -> Result<Accepted, Refusal> {
        let result = self.judge(a, arrival, now_unix_ms);
        match result {
            Ok(Accepted::New) => {
                self.held.insert(a.origin, self.check.share(a));
            }
            Err(r) => *self.refused.entry(r).or_default() += 1,
            Ok(Accepted::Duplicate) => {}
        }
        result
    }

    fn judge(&self, a: &Announcement, arrival: Arrival, now_ms: u64) -> Result<Accepted, Refusal> {
        let key = self
            .directory
            .public_key(&a.origin)
            .ok_or(Refusal::UnknownOrigin)?;
        if self.revoked.contains(&a.origin) {
            return Err(Refusal::RevokedOrigin);
        }
        if let Some(h) = self.held.get(&a.origin) {
            if **h == *a {
                return Ok(Accepted::Duplicate);
            }
            let newer = a.epoch > h.epoch || (a.epoch == h.epoch && a.seqno.is_newer_than(h.seqno));
            if !newer {
                return Err(Refusal::Replayed);
            }
        }
        let skew = u64::try_from(self.policy.max_skew.as_millis()).unwrap_or(u64::MAX);
        if a.timestamp_ms > now_ms.saturating_add(skew) {
            return Err(Refusal::Replayed);
        }
        if arrival == Arrival::Pushed && a.timestamp_ms.saturating_add(skew) < now_ms {
            return Err(Refusal::Replayed);
        }
        let msg = Announcement::signed_bytes(&a.origin, a.seqno, a.epoch, a.timestamp_ms);
        if !self
            .check
            .verify(&key, &msg, Announcement::CONTEXT, &a.signature[..])
        {
            return Err(Refusal::Forged);
        }
        Ok(Accepted::New)
    }

    /// Whether `origin` is enrolled (its key is in the directory).
    pub fn is_enrolled(&self, origin: &NodeId) -> bool {
        self.directory.contains(origin)
    }

    /// Counts a refusal made outside [`offer`](Self::offer).
    pub fn count_refusal(&mut self, reason: Refusal) {
        *self.refused.entry(reason).or_default() += 1;
    }

    /// The announcement held for `origin`.
    pub fn held(&self, origin: &NodeId) -> Option<&Announcement> {
        self.held.get(origin).map(|a| &**a)
    }

    /// Whether `(origin, seqno)` is covered by a verified announcement.
    pub fn is_verified(&self, origin: &NodeId, seqno: Seqno) -> bool {
        self.held.get(origin).is_some_and(|a| a.seqno == seqno)
    }

    /// Marks `origin` revoked and forgets its announcement.
    pub fn revoke(&mut self, origin: NodeId) {
        self.held.remove(&origin);
        self.revoked.insert(origin);
    }

    /// Whether `origin` is revoked.
    pub fn is_revoked(&self, origin: &NodeId) -> bool {
        self.revoked.contains(origin)
    }

    /// Refusals so far, by reason.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused.get(&reason).copied().unwrap_or(0)
    }
}

impl std::fmt::Debug for OriginStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginStore")
            .field("held", &self.held.len())
            .field("revoked", &self.revoked.len())
            .finish_non_exhaustive()
    }
}

/// Signs an announcement for `key`'s node.
pub fn sign_announcement(
    key: &weft_crypto::sign::CompositeSigningKey,
    seqno: Seqno,
    epoch: u32,
    timestamp_ms: u64,
) -> Result<Announcement, weft_crypto::sign::SignatureError> {
    let origin = NodeId::of(key.public_key());
    let msg = Announcement::signed_bytes(&origin, seqno, epoch, timestamp_ms);
    let sig = key.sign(&msg, Announcement::CONTEXT)?;
    Ok(Announcement {
        origin,
        seqno,
        epoch,
        timestamp_ms,
        signature: Box::new(*sig.as_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_crypto::sign::CompositeSigningKey;

    const NOW: u64 = 1_800_000_000_000;

    fn setup() -> (CompositeSigningKey, OriginStore) {
        let key = CompositeSigningKey::generate().unwrap();
        let mut dir = HashMap::new();
        dir.insert(NodeId::of(key.public_key()), key.public_key().clone());
        let store = OriginStore::new(
            Arc::new(dir),
            Arc::new(DirectCheck),
            OriginPolicy::default(),
        );
        (key, store)
    }

    #[test]
    fn accepts_fresh_and_newer_announcements_once() {
        let (key, mut s) = setup();
        let a1 = sign_announcement(&key, Seqno(1), 1, NOW).unwrap();
        assert_eq!(s.offer(&a1, Arrival::Pushed, NOW), Ok(Accepted::New));
        assert_eq!(s.offer(&a1, Arrival::Pushed, NOW), Ok(Accepted::Duplicate));
        assert!(s.is_verified(&a1.origin, Seqno(1)));
        let a2 = sign_announcement(&key, Seqno(2), 1, NOW + 5).unwrap();
        assert_eq!(s.offer(&a2, Arrival::Pushed, NOW + 10), Ok(Accepted::New));
        // A new boot epoch resets seqnos.
        let b = sign_announcement(&key, Seqno(0), 2, NOW + 20).unwrap();
        assert_eq!(s.offer(&b, Arrival::Pushed, NOW + 20), Ok(Accepted::New));
    }

    #[test]
    fn refuses_forged_replayed_unknown_and_revoked() {
        let (key, mut s) = setup();
        let a2 = sign_announcement(&key, Seqno(2), 1, NOW).unwrap();
        s.offer(&a2, Arrival::Pushed, NOW).unwrap();

        // Replay of an older seqno.
        let a1 = sign_announcement(&key, Seqno(1), 1, NOW).unwrap();
        assert_eq!(s.offer(&a1, Arrival::Fetched, NOW), Err(Refusal::Replayed));
        // Pushed but signed long ago; and from the far future.
        let old = sign_announcement(&key, Seqno(3), 1, NOW - 61_000).unwrap();
        assert_eq!(s.offer(&old, Arrival::Pushed, NOW), Err(Refusal::Replayed));
        let future = sign_announcement(&key, Seqno(3), 1, NOW + 61_000).unwrap();
        assert_eq!(
            s.offer(&future, Arrival::Fetched, NOW),
            Err(Refusal::Replayed)
        );
        // Fetched on request, an old signature is fine.
        assert_eq!(s.offer(&old, Arrival::Fetched, NOW), Ok(Accepted::New));

        // Forged: a bit flipped, or a seqno changed after signing.
        let mut forged = sign_announcement(&key, Seqno(9), 1, NOW).unwrap();
        forged.signature[100] ^= 1;
        assert_eq!(s.offer(&forged, Arrival::Pushed, NOW), Err(Refusal::Forged));
        let mut bumped = sign_announcement(&key, Seqno(9), 1, NOW).unwrap();
        bumped.seqno = Seqno(10);
        assert_eq!(s.offer(&bumped, Arrival::Pushed, NOW), Err(Refusal::Forged));

        // Unknown origin: a valid signature by a key that is not enrolled.
        let stranger = CompositeSigningKey::generate().unwrap();
        let x = sign_announcement(&stranger, Seqno(1), 1, NOW).unwrap();
        assert_eq!(
            s.offer(&x, Arrival::Pushed, NOW),
            Err(Refusal::UnknownOrigin)
        );

        // Revoked.
        s.revoke(a2.origin);
        let a11 = sign_announcement(&key, Seqno(11), 1, NOW).unwrap();
        assert_eq!(
            s.offer(&a11, Arrival::Pushed, NOW),
            Err(Refusal::RevokedOrigin)
        );
        assert!(s.held(&a2.origin).is_none());

        assert_eq!(s.refused(Refusal::Replayed), 3);
        assert_eq!(s.refused(Refusal::Forged), 2);
        assert_eq!(s.refused(Refusal::UnknownOrigin), 1);
        assert_eq!(s.refused(Refusal::RevokedOrigin), 1);
    }
}
