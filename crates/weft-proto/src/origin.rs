//! Signed route origins: which (origin, epoch, seqno) announcements a node
//! accepts, verified once and cached, with every refusal counted by reason.
//!
//! An announcement is an origin certificate (signed once per seqno chain,
//! see [`crate::chain`]) plus the chain element proving one seqno. Rules
//! for a whole announcement, in order:
//! 1. the origin must be enrolled (its public key is in the [`Roster`]);
//! 2. it must not be revoked;
//! 3. `(epoch, seqno)` must not be older than the announcement held for it
//!    (an equal one is a duplicate and costs nothing);
//! 4. the certificate's timestamp must not be more than
//!    [`OriginPolicy::max_skew`] in the future; a certificate *pushed* by
//!    its origin must also not be older than `max_skew` (it was just
//!    signed). One *fetched* on request may be older: a node joining later
//!    asks for certificates signed long ago;
//! 5. the composite signature must verify (skipped when the certificate is
//!    the one already held), and the chain element must lead to the anchor
//!    (or to the element already held, which costs fewer hashes).
//!
//! A [`SeqnoProof`] alone raises the seqno under the certificate held: it
//! must be newer, covered by that certificate, and its element must lead
//! to the one held. Its freshness needs no timestamp: nobody but the
//! origin can compute an element before the origin reveals it.
//!
//! Verification is deterministic, so a [`SignatureCheck`] may memoize
//! results across nodes (the simulator does), keeping the cost at one
//! verification per distinct signature.

use std::sync::Arc;
use std::time::Duration;

use weft_crypto::NodeId;
use weft_crypto::sign::{
    CompositePublicKey, CompositeSignature, CompositeSigningKey, SignatureError,
};

use crate::chain::{self, CHAIN_LEN, Chain};
use crate::roster::{NodeIndex, Roster};
use crate::wire::{Announcement, OriginCert, Seqno, SeqnoProof};

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

    /// A shared copy of an accepted certificate. A node keeps one per
    /// origin (3.4 KB each, mostly signature); a simulator running many
    /// nodes returns the same copy to all of them.
    fn share_cert(&self, cert: &Arc<OriginCert>) -> Arc<OriginCert> {
        cert.clone()
    }

    /// A shared copy of an accepted announcement (its certificate already
    /// shared), for the same reason.
    fn share(&self, a: Announcement) -> Arc<Announcement> {
        Arc::new(a)
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
    /// The signature or the seqno proof does not verify.
    Forged,
}

impl Refusal {
    /// Every reason.
    pub const ALL: [Refusal; 4] = [
        Refusal::UnknownOrigin,
        Refusal::RevokedOrigin,
        Refusal::Replayed,
        Refusal::Forged,
    ];

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

/// Outcome of offering a [`SeqnoProof`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofOutcome {
    /// The held seqno rose.
    New,
    /// Not newer than the seqno held: nothing to do (proofs race along
    /// several paths, so this is normal and not counted as a replay).
    Stale,
    /// The proof is for a certificate this node does not hold: it must
    /// fetch the whole announcement.
    NeedCert,
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
    roster: Arc<Roster>,
    check: Arc<dyn SignatureCheck>,
    policy: OriginPolicy,
    /// Held announcements by roster index.
    held: Vec<Option<Arc<Announcement>>>,
    revoked: rustc_hash::FxHashSet<NodeId>,
    /// `revoked`, by roster index.
    revoked_at: Vec<bool>,
    refused: crate::DetMap<Refusal, u64>,
}

impl OriginStore {
    /// A store that trusts the keys in `roster` and verifies with `check`.
    pub fn new(roster: Arc<Roster>, check: Arc<dyn SignatureCheck>, policy: OriginPolicy) -> Self {
        let n = roster.len();
        Self {
            roster,
            check,
            policy,
            held: vec![None; n],
            revoked: Default::default(),
            revoked_at: Vec::new(),
            refused: Default::default(),
        }
    }

    /// The roster trusted.
    pub fn roster(&self) -> &Arc<Roster> {
        &self.roster
    }

    /// Trusts a grown roster; refused (returns false) unless it keeps
    /// every index of the current one.
    pub fn set_roster(&mut self, roster: Arc<Roster>) -> bool {
        if !self.roster.is_prefix_of(&roster) {
            return false;
        }
        self.roster = roster;
        let n = self.roster.len();
        if n > self.held.len() {
            self.held.reserve_exact(n - self.held.len());
            self.held.resize(n, None);
        }
        for id in &self.revoked {
            if let Some(i) = self.roster.index(id) {
                mark(&mut self.revoked_at, i);
            }
        }
        true
    }

    fn slot(&mut self, i: NodeIndex) -> &mut Option<Arc<Announcement>> {
        if i.get() >= self.held.len() {
            self.held.resize(i.get() + 1, None);
        }
        &mut self.held[i.get()]
    }

    fn held_arc(&self, origin: &NodeId) -> Option<&Arc<Announcement>> {
        self.roster
            .index(origin)
            .and_then(|i| self.held.get(i.get()))
            .and_then(Option::as_ref)
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
            Ok(Some(cert)) => {
                let shared = self.check.share(Announcement {
                    cert,
                    seqno: a.seqno,
                    proof: a.proof,
                });
                if let Some(i) = self.roster.index(a.origin()) {
                    *self.slot(i) = Some(shared);
                }
                Ok(Accepted::New)
            }
            Ok(None) => Ok(Accepted::Duplicate),
            Err(r) => {
                *self.refused.entry(r).or_default() += 1;
                Err(r)
            }
        }
    }

    /// The origin's key, if it is enrolled and not revoked.
    fn admit(&self, origin: &NodeId) -> Result<&CompositePublicKey, Refusal> {
        let key = self
            .roster
            .index(origin)
            .and_then(|i| self.roster.key(i))
            .ok_or(Refusal::UnknownOrigin)?;
        if self.revoked.contains(origin) {
            return Err(Refusal::RevokedOrigin);
        }
        Ok(key)
    }

    /// `Ok(Some(cert))` to accept (with the certificate to keep),
    /// `Ok(None)` for a duplicate.
    fn judge(
        &self,
        a: &Announcement,
        arrival: Arrival,
        now_ms: u64,
    ) -> Result<Option<Arc<OriginCert>>, Refusal> {
        let key = self.admit(a.origin())?;
        let held = self.held_arc(a.origin());
        if let Some(h) = held {
            if **h == *a {
                return Ok(None);
            }
            let newer = a.cert.epoch > h.cert.epoch
                || (a.cert.epoch == h.cert.epoch && a.seqno.is_newer_than(h.seqno));
            if !newer {
                return Err(Refusal::Replayed);
            }
        }
        let Some(offset) = a.cert.offset_of(a.seqno) else {
            // Only a forger sends a seqno its certificate does not cover.
            return Err(Refusal::Forged);
        };
        let same_cert = held.filter(|h| h.cert == a.cert);
        if let Some(h) = same_cert {
            // The certificate is verified already; only the chain is new.
            let known = h.cert.offset_of(h.seqno).unwrap_or(0);
            return if chain::verify_from(
                a.origin(),
                h.cert.chain_len,
                offset,
                &a.proof,
                known,
                &h.proof,
            ) {
                Ok(Some(h.cert.clone()))
            } else {
                Err(Refusal::Forged)
            };
        }
        let skew = u64::try_from(self.policy.max_skew.as_millis()).unwrap_or(u64::MAX);
        if a.cert.timestamp_ms > now_ms.saturating_add(skew) {
            return Err(Refusal::Replayed);
        }
        if arrival == Arrival::Pushed && a.cert.timestamp_ms.saturating_add(skew) < now_ms {
            return Err(Refusal::Replayed);
        }
        if !chain::verify(
            a.origin(),
            &a.cert.anchor,
            a.cert.chain_len,
            offset,
            &a.proof,
        ) {
            return Err(Refusal::Forged);
        }
        if !self.check.verify(
            key,
            &a.cert.signed_bytes(),
            OriginCert::CONTEXT,
            &a.cert.signature[..],
        ) {
            return Err(Refusal::Forged);
        }
        Ok(Some(self.check.share_cert(&a.cert)))
    }

    /// Offers a seqno proof for the certificate held.
    pub fn offer_proof(&mut self, p: &SeqnoProof) -> Result<ProofOutcome, Refusal> {
        let result = self.judge_proof(p);
        match result {
            Ok(ProofOutcome::New) => {
                if let Some(h) = self.held_arc(&p.origin) {
                    let shared = self.check.share(Announcement {
                        cert: h.cert.clone(),
                        seqno: p.seqno,
                        proof: p.proof,
                    });
                    if let Some(i) = self.roster.index(&p.origin) {
                        *self.slot(i) = Some(shared);
                    }
                }
            }
            Err(r) => *self.refused.entry(r).or_default() += 1,
            Ok(_) => {}
        }
        result
    }

    fn judge_proof(&self, p: &SeqnoProof) -> Result<ProofOutcome, Refusal> {
        self.admit(&p.origin)?;
        let Some(h) = self.held_arc(&p.origin) else {
            return Ok(ProofOutcome::NeedCert);
        };
        if h.cert.cert_ref() != p.cert {
            let older = p.cert.epoch < h.cert.epoch
                || (p.cert.epoch == h.cert.epoch && !p.seqno.is_newer_than(h.seqno));
            return Ok(if older {
                ProofOutcome::Stale
            } else {
                ProofOutcome::NeedCert
            });
        }
        if !p.seqno.is_newer_than(h.seqno) {
            return Ok(ProofOutcome::Stale);
        }
        let (Some(offset), Some(known)) = (h.cert.offset_of(p.seqno), h.cert.offset_of(h.seqno))
        else {
            return Err(Refusal::Forged);
        };
        if chain::verify_from(
            &p.origin,
            h.cert.chain_len,
            offset,
            &p.proof,
            known,
            &h.proof,
        ) {
            Ok(ProofOutcome::New)
        } else {
            Err(Refusal::Forged)
        }
    }

    /// Whether `origin` is enrolled (its key is in the roster).
    pub fn is_enrolled(&self, origin: &NodeId) -> bool {
        self.roster.contains(origin)
    }

    /// Counts a refusal made outside [`offer`](Self::offer).
    pub fn count_refusal(&mut self, reason: Refusal) {
        *self.refused.entry(reason).or_default() += 1;
    }

    /// The announcement held for `origin`.
    pub fn held(&self, origin: &NodeId) -> Option<&Announcement> {
        self.held_arc(origin).map(|a| &**a)
    }

    /// The announcement held for the node at roster index `i`.
    pub fn held_at(&self, i: NodeIndex) -> Option<&Announcement> {
        self.held.get(i.get()).and_then(Option::as_deref)
    }

    /// Whether `(origin, seqno)` is covered by a verified announcement.
    pub fn is_verified(&self, origin: &NodeId, seqno: Seqno) -> bool {
        self.held(origin).is_some_and(|a| a.seqno == seqno)
    }

    /// The proof of the held seqno of the node at `i`, for a peer holding
    /// its certificate.
    pub fn proof_at(&self, i: NodeIndex) -> Option<SeqnoProof> {
        self.held_at(i).map(|a| SeqnoProof {
            origin: *a.origin(),
            cert: a.cert.cert_ref(),
            seqno: a.seqno,
            proof: a.proof,
        })
    }

    /// Marks `origin` revoked and forgets its announcement.
    pub fn revoke(&mut self, origin: NodeId) {
        if let Some(i) = self.roster.index(&origin) {
            *self.slot(i) = None;
            mark(&mut self.revoked_at, i);
        }
        self.revoked.insert(origin);
    }

    /// Whether `origin` is revoked.
    pub fn is_revoked(&self, origin: &NodeId) -> bool {
        self.revoked.contains(origin)
    }

    /// Whether the node at roster index `i` is revoked.
    pub fn is_revoked_at(&self, i: NodeIndex) -> bool {
        self.revoked_at.get(i.get()).copied().unwrap_or(false)
    }

    /// Refusals so far, by reason.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused.get(&reason).copied().unwrap_or(0)
    }
}

impl std::fmt::Debug for OriginStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OriginStore")
            .field("held", &self.held.iter().flatten().count())
            .field("revoked", &self.revoked.len())
            .finish_non_exhaustive()
    }
}

fn mark(flags: &mut Vec<bool>, i: NodeIndex) {
    if i.get() >= flags.len() {
        flags.resize(i.get() + 1, false);
    }
    flags[i.get()] = true;
}

/// A node's own origin: its current certificate and the chain behind it.
pub struct OwnOrigin {
    key: Arc<CompositeSigningKey>,
    epoch: u32,
    chain: Chain,
    cert: Arc<OriginCert>,
}

impl OwnOrigin {
    /// Signs a first certificate with base `seqno` at `now_ms`.
    pub fn new(
        key: Arc<CompositeSigningKey>,
        epoch: u32,
        seqno: Seqno,
        now_ms: u64,
    ) -> Result<Self, SignatureError> {
        let (chain, cert) = sign_cert(&key, epoch, seqno, CHAIN_LEN, now_ms)?;
        Ok(Self {
            key,
            epoch,
            chain,
            cert: Arc::new(cert),
        })
    }

    /// The current certificate.
    pub fn cert(&self) -> &Arc<OriginCert> {
        &self.cert
    }

    /// The announcement of `seqno`, if the current certificate covers it.
    pub fn announcement(&self, seqno: Seqno) -> Option<Announcement> {
        let proof = self.chain.proof(self.cert.offset_of(seqno)?)?;
        Some(Announcement {
            cert: self.cert.clone(),
            seqno,
            proof,
        })
    }

    /// The announcement of `seqno`, signing a new certificate based at
    /// `seqno` when the current chain does not reach it.
    pub fn advance(&mut self, seqno: Seqno, now_ms: u64) -> Result<Announcement, SignatureError> {
        if let Some(a) = self.announcement(seqno) {
            return Ok(a);
        }
        let (chain, cert) = sign_cert(&self.key, self.epoch, seqno, CHAIN_LEN, now_ms)?;
        self.chain = chain;
        self.cert = Arc::new(cert);
        Ok(Announcement {
            cert: self.cert.clone(),
            seqno,
            proof: self.chain.anchor(),
        })
    }
}

impl std::fmt::Debug for OwnOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnOrigin")
            .field("cert", &self.cert.cert_ref())
            .finish_non_exhaustive()
    }
}

/// Builds a seqno chain of `chain_len` steps for `key`'s node and signs a
/// certificate for it with base `base`. The chain's seed is derived from
/// the key, the epoch, the base and the time, so it is secret, and never
/// reused for another certificate.
pub fn sign_cert(
    key: &CompositeSigningKey,
    epoch: u32,
    base: Seqno,
    chain_len: u16,
    now_ms: u64,
) -> Result<(Chain, OriginCert), SignatureError> {
    let origin = NodeId::of(key.public_key());
    let mut label = Vec::with_capacity(64);
    label.extend_from_slice(b"seqno-chain");
    label.extend_from_slice(&epoch.to_be_bytes());
    label.extend_from_slice(&base.0.to_be_bytes());
    label.extend_from_slice(&now_ms.to_be_bytes());
    let chain = Chain::new(&origin, key.derive_secret(&label), chain_len);
    let mut cert = OriginCert {
        origin,
        epoch,
        base,
        chain_len,
        anchor: chain.anchor(),
        timestamp_ms: now_ms,
        signature: Box::new([0; weft_crypto::sign::SIGNATURE_LEN]),
    };
    let sig = key.sign(&cert.signed_bytes(), OriginCert::CONTEXT)?;
    cert.signature = Box::new(*sig.as_bytes());
    Ok((chain, cert))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::CertRef;

    const NOW: u64 = 1_800_000_000_000;

    fn setup() -> (Arc<CompositeSigningKey>, OriginStore) {
        let key = Arc::new(CompositeSigningKey::generate().unwrap());
        let roster = Roster::of([key.public_key().clone()]).unwrap();
        let store = OriginStore::new(
            Arc::new(roster),
            Arc::new(DirectCheck),
            OriginPolicy::default(),
        );
        (key, store)
    }

    fn own(key: &Arc<CompositeSigningKey>, epoch: u32, base: u16, at: u64) -> OwnOrigin {
        OwnOrigin::new(key.clone(), epoch, Seqno(base), at).unwrap()
    }

    #[test]
    fn accepts_fresh_and_newer_announcements_once() {
        let (key, mut s) = setup();
        let mut o = own(&key, 1, 1, NOW);
        let a1 = o.announcement(Seqno(1)).unwrap();
        assert_eq!(s.offer(&a1, Arrival::Pushed, NOW), Ok(Accepted::New));
        assert_eq!(s.offer(&a1, Arrival::Pushed, NOW), Ok(Accepted::Duplicate));
        assert!(s.is_verified(a1.origin(), Seqno(1)));
        // A raise under the same certificate: no new signature.
        let a2 = o.advance(Seqno(2), NOW + 5).unwrap();
        assert!(Arc::ptr_eq(&a2.cert, &a1.cert));
        assert_eq!(s.offer(&a2, Arrival::Pushed, NOW + 10), Ok(Accepted::New));
        // Past the chain's end a new certificate is signed.
        let far = Seqno(1 + CHAIN_LEN + 1);
        let a3 = o.advance(far, NOW + 20).unwrap();
        assert_eq!(a3.cert.base, far);
        assert_eq!(s.offer(&a3, Arrival::Pushed, NOW + 20), Ok(Accepted::New));
        // A new boot epoch resets seqnos.
        let b = own(&key, 2, 0, NOW + 30).announcement(Seqno(0)).unwrap();
        assert_eq!(s.offer(&b, Arrival::Pushed, NOW + 30), Ok(Accepted::New));
    }

    #[test]
    fn seqno_proofs_raise_the_held_seqno_under_the_same_certificate() {
        let (key, mut s) = setup();
        let mut o = own(&key, 1, 10, NOW);
        let a = o.announcement(Seqno(10)).unwrap();
        let origin = *a.origin();
        let proof_of = |a: &Announcement| SeqnoProof {
            origin,
            cert: a.cert.cert_ref(),
            seqno: a.seqno,
            proof: a.proof,
        };
        // Without the certificate, a proof cannot be judged.
        let a12 = o.advance(Seqno(12), NOW).unwrap();
        assert_eq!(s.offer_proof(&proof_of(&a12)), Ok(ProofOutcome::NeedCert));
        s.offer(&a, Arrival::Fetched, NOW).unwrap();
        assert_eq!(s.offer_proof(&proof_of(&a12)), Ok(ProofOutcome::New));
        assert!(s.is_verified(&origin, Seqno(12)));
        assert_eq!(s.proof_at(NodeIndex(0)), Some(proof_of(&a12)));
        // Older or equal: stale, not a refusal.
        let a11 = o.announcement(Seqno(11)).unwrap();
        assert_eq!(s.offer_proof(&proof_of(&a11)), Ok(ProofOutcome::Stale));
        assert_eq!(s.offer_proof(&proof_of(&a12)), Ok(ProofOutcome::Stale));
        // A guessed element for a newer seqno is forged.
        let mut guess = proof_of(&o.announcement(Seqno(13)).unwrap());
        guess.proof[0] ^= 1;
        assert_eq!(s.offer_proof(&guess), Err(Refusal::Forged));
        // An element claimed for another seqno than its own is forged.
        let mut shifted = proof_of(&o.announcement(Seqno(13)).unwrap());
        shifted.seqno = Seqno(14);
        assert_eq!(s.offer_proof(&shifted), Err(Refusal::Forged));
        // Past the certificate's range: forged.
        let mut beyond = proof_of(&a12);
        beyond.seqno = Seqno(10 + CHAIN_LEN + 1);
        assert_eq!(s.offer_proof(&beyond), Err(Refusal::Forged));
        // A proof under another (newer) certificate needs that certificate.
        let mut other = proof_of(&a12);
        other.cert = CertRef {
            epoch: 2,
            base: Seqno(0),
        };
        other.seqno = Seqno(1);
        assert_eq!(s.offer_proof(&other), Ok(ProofOutcome::NeedCert));
        assert_eq!(s.refused(Refusal::Forged), 3);
        assert_eq!(s.refused(Refusal::Replayed), 0);
    }

    #[test]
    fn refuses_forged_replayed_unknown_and_revoked() {
        let (key, mut s) = setup();
        let o = own(&key, 1, 2, NOW);
        let a2 = o.announcement(Seqno(2)).unwrap();
        s.offer(&a2, Arrival::Pushed, NOW).unwrap();

        // Replay of an older seqno (another certificate based lower).
        let a1 = own(&key, 1, 1, NOW).announcement(Seqno(1)).unwrap();
        assert_eq!(s.offer(&a1, Arrival::Fetched, NOW), Err(Refusal::Replayed));
        // Pushed but signed long ago; and from the far future.
        let old = own(&key, 1, 3, NOW - 61_000)
            .announcement(Seqno(3))
            .unwrap();
        assert_eq!(s.offer(&old, Arrival::Pushed, NOW), Err(Refusal::Replayed));
        let future = own(&key, 1, 3, NOW + 61_000)
            .announcement(Seqno(3))
            .unwrap();
        assert_eq!(
            s.offer(&future, Arrival::Fetched, NOW),
            Err(Refusal::Replayed)
        );
        // Fetched on request, an old signature is fine.
        assert_eq!(s.offer(&old, Arrival::Fetched, NOW), Ok(Accepted::New));

        // Forged: a bit flipped in the signature, a field changed after
        // signing, a wrong chain element, a seqno outside the chain.
        let o9 = own(&key, 1, 9, NOW);
        let mut forged = o9.announcement(Seqno(9)).unwrap();
        let mut c = (*forged.cert).clone();
        c.signature[100] ^= 1;
        forged.cert = Arc::new(c);
        assert_eq!(s.offer(&forged, Arrival::Pushed, NOW), Err(Refusal::Forged));
        let mut moved = o9.announcement(Seqno(9)).unwrap();
        let mut c = (*moved.cert).clone();
        c.base = Seqno(10);
        moved.cert = Arc::new(c);
        moved.seqno = Seqno(10);
        assert_eq!(s.offer(&moved, Arrival::Pushed, NOW), Err(Refusal::Forged));
        let mut bad_proof = o9.announcement(Seqno(11)).unwrap();
        bad_proof.proof[5] ^= 1;
        assert_eq!(
            s.offer(&bad_proof, Arrival::Pushed, NOW),
            Err(Refusal::Forged)
        );
        let mut outside = o9.announcement(Seqno(9)).unwrap();
        outside.seqno = Seqno(9 + CHAIN_LEN + 1);
        assert_eq!(
            s.offer(&outside, Arrival::Pushed, NOW),
            Err(Refusal::Forged)
        );

        // Unknown origin: a valid signature by a key that is not enrolled.
        let stranger = Arc::new(CompositeSigningKey::generate().unwrap());
        let x = own(&stranger, 1, 1, NOW).announcement(Seqno(1)).unwrap();
        assert_eq!(
            s.offer(&x, Arrival::Pushed, NOW),
            Err(Refusal::UnknownOrigin)
        );

        // Revoked.
        s.revoke(*a2.origin());
        let a11 = own(&key, 1, 11, NOW).announcement(Seqno(11)).unwrap();
        assert_eq!(
            s.offer(&a11, Arrival::Pushed, NOW),
            Err(Refusal::RevokedOrigin)
        );
        assert!(s.held(a2.origin()).is_none());

        assert_eq!(s.refused(Refusal::Replayed), 3);
        assert_eq!(s.refused(Refusal::Forged), 4);
        assert_eq!(s.refused(Refusal::UnknownOrigin), 1);
        assert_eq!(s.refused(Refusal::RevokedOrigin), 1);
    }
}
