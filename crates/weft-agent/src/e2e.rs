//! End-to-end sealed sessions between mesh nodes (sans-IO).
//!
//! Mesh datagrams cross relays; relays must see only the routing header.
//! So the payload of every application datagram is sealed to its
//! destination with a session set up by a KEM handshake in both
//! directions (the "KK" pattern with a post-quantum KEM, as in KEMTLS and
//! PQ-WireGuard):
//!
//! ```text
//! Init   (1)  sid_i u32 | ct_r (X-Wing to the responder's key)          1125 B
//! Accept (2)  sid_r u32 | sid_i u32 | ct_i (X-Wing to the initiator's key)
//!             | confirm tag 16                                          1145 B
//! Data   (3)  receiver sid u32 | counter u64 | AEAD(ciphertext) + tag 16
//! ```
//!
//! Keys: HKDF-SHA256 over `ss_r ‖ ss_i` with both node ids and both
//! ciphertexts as info, split into one AES-256-GCM key per direction.
//! Only the responder can decapsulate `ct_r` and only the initiator `ct_i`,
//! so a session key proves both identities without a signature (which, at
//! 3.4 KB for ML-DSA-65, would not fit a datagram). The Accept carries a
//! tag under the responder→initiator key so the initiator knows the
//! responder derived the same keys (X-Wing decapsulation never fails; a
//! tampered ciphertext just gives another secret).
//!
//! Nonces are the 64-bit send counter; a 2048-message sliding window
//! refuses replays. A session is replaced by a fresh handshake after
//! [`E2eConfig::rekey_after`] or [`E2eConfig::rekey_messages`]; the old
//! one still opens what was in flight for [`E2eConfig::old_session_grace`].
//!
//! Hand-written because no crate implements this composition over
//! aws-lc-rs and X-Wing; each primitive comes from those crates.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use weft_crypto::NodeId;
use weft_crypto::kem::{CIPHERTEXT_LEN, Ciphertext, DecapsulationKey, EncapsulationKey};
use weft_proto::time::Time;

const INIT: u8 = 1;
const ACCEPT: u8 = 2;
const DATA: u8 = 3;
/// Length of an Init message.
pub const INIT_LEN: usize = 1 + 4 + CIPHERTEXT_LEN;
/// Length of an Accept message.
pub const ACCEPT_LEN: usize = 1 + 4 + 4 + CIPHERTEXT_LEN + TAG_LEN;
/// Bytes a Data message adds to its payload.
pub const DATA_OVERHEAD: usize = 1 + 4 + 8 + TAG_LEN;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
/// Counter reserved for the Accept's confirmation tag.
const CONFIRM_COUNTER: u64 = u64::MAX;
/// Counters past this are never used (rekeying starts long before).
const COUNTER_LIMIT: u64 = 1 << 60;
const REPLAY_WINDOW: u64 = 2048;
const SALT: &[u8] = b"weft/e2e/v1";

/// Settings of end-to-end sessions.
#[derive(Debug, Clone)]
pub struct E2eConfig {
    /// Age after which the initiator side starts a new handshake.
    pub rekey_after: Duration,
    /// Messages sent after which a new handshake starts.
    pub rekey_messages: u64,
    /// How long a replaced session still opens messages.
    pub old_session_grace: Duration,
    /// How long an unanswered Init waits before it is sent again.
    pub handshake_retry: Duration,
    /// Payloads queued per destination while its handshake runs; the
    /// oldest are dropped beyond this.
    pub queue_limit: usize,
}

impl Default for E2eConfig {
    fn default() -> Self {
        Self {
            rekey_after: Duration::from_secs(120),
            rekey_messages: 1 << 32,
            old_session_grace: Duration::from_secs(10),
            handshake_retry: Duration::from_secs(1),
            queue_limit: 64,
        }
    }
}

/// Why a message was not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum E2eError {
    /// The bytes are not a well-formed message.
    #[error("malformed end-to-end message: {0}")]
    Malformed(&'static str),
    /// No X-Wing key is known for the node.
    #[error("no key-encapsulation key known for node {0}")]
    UnknownPeer(NodeId),
    /// The message names a session this node does not have (expired, or
    /// from before a restart).
    #[error("no session {sid} with node {peer}")]
    UnknownSession {
        /// The sender.
        peer: NodeId,
        /// The session id named.
        sid: u32,
    },
    /// A message already received (or older than the replay window).
    #[error("replayed or too old message {counter} from {peer}")]
    Replay {
        /// The sender.
        peer: NodeId,
        /// Its counter.
        counter: u64,
    },
    /// Authentication failed: tampered, or sealed with another key.
    #[error("message from {0} failed authentication")]
    Forged(NodeId),
    /// The random number generator or key setup failed.
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
}

/// Counters of the end-to-end layer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct E2eStats {
    /// Handshakes completed (either side).
    pub handshakes: u64,
    /// Payloads sealed.
    pub sealed: u64,
    /// Payloads opened.
    pub opened: u64,
    /// Payloads dropped from a full handshake queue.
    pub queue_dropped: u64,
}

struct Session {
    local_sid: u32,
    remote_sid: u32,
    seal: LessSafeKey,
    open: LessSafeKey,
    next_counter: u64,
    /// Highest counter received and a bitmap of the window below it.
    replay_top: Option<u64>,
    replay_bits: [u64; (REPLAY_WINDOW / 64) as usize],
    created: Time,
    /// Whether the peer proved it holds the keys: by the Accept's tag for
    /// the initiator, by a first authentic Data message for the responder.
    /// Until then the session neither seals nor retires older ones, so a
    /// replayed Init cannot displace a working session.
    confirmed: bool,
    /// Set when a newer confirmed session replaced this one.
    retired_at: Option<Time>,
}

struct Initiating {
    sid: u32,
    ct: Ciphertext,
    secret: weft_crypto::kem::SharedSecret,
    sent_at: Time,
}

#[derive(Default)]
struct Peer {
    /// Sessions by local sid; the newest established one seals.
    sessions: Vec<Session>,
    initiating: Option<Initiating>,
    queued: VecDeque<Vec<u8>>,
}

/// End-to-end sessions of one node with every other.
pub struct E2e {
    me: NodeId,
    key: DecapsulationKey,
    keys: HashMap<NodeId, EncapsulationKey>,
    peers: HashMap<NodeId, Peer>,
    /// Local sid -> peer.
    sids: HashMap<u32, NodeId>,
    next_sid: u32,
    cfg: E2eConfig,
    out: VecDeque<(NodeId, Vec<u8>)>,
    stats: E2eStats,
}

impl std::fmt::Debug for E2e {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2e")
            .field("me", &self.me)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

/// HKDF output length marker for two directional keys.
struct TwoKeys;
impl KeyType for TwoKeys {
    fn len(&self) -> usize {
        2 * KEY_LEN
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; NONCE_LEN];
    n[NONCE_LEN - 8..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

impl E2e {
    /// Sessions for node `me`, whose X-Wing private key is `key`.
    pub fn new(me: NodeId, key: DecapsulationKey, cfg: E2eConfig) -> Self {
        let mut seed = [0u8; 4];
        // Session ids only need to differ from those of a previous run.
        let _ = aws_lc_rs::rand::fill(&mut seed);
        Self {
            me,
            key,
            keys: HashMap::new(),
            peers: HashMap::new(),
            sids: HashMap::new(),
            next_sid: u32::from_be_bytes(seed),
            cfg,
            out: VecDeque::new(),
            stats: E2eStats::default(),
        }
    }

    /// Learns (or replaces) the X-Wing public key of `node`.
    pub fn set_peer_key(&mut self, node: NodeId, key: EncapsulationKey) {
        self.keys.insert(node, key);
    }

    /// Counters.
    pub fn stats(&self) -> &E2eStats {
        &self.stats
    }

    /// The next message to send as a mesh datagram: (destination, bytes).
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Vec<u8>)> {
        self.out.pop_front()
    }

    /// Seals `payload` for `dst`: at once if a session exists, else after
    /// the handshake this starts (the payload waits in a bounded queue).
    pub fn seal(&mut self, now: Time, dst: NodeId, payload: Vec<u8>) -> Result<(), E2eError> {
        if !self.keys.contains_key(&dst) {
            return Err(E2eError::UnknownPeer(dst));
        }
        let cfg = self.cfg.clone();
        let peer = self.peers.entry(dst).or_default();
        let usable = peer
            .sessions
            .iter()
            .rposition(|s| s.confirmed && s.retired_at.is_none());
        let Some(i) = usable else {
            if peer.queued.len() >= cfg.queue_limit {
                peer.queued.pop_front();
                self.stats.queue_dropped += 1;
            }
            peer.queued.push_back(payload);
            return self.start_handshake(now, dst);
        };
        let s = &mut peer.sessions[i];
        let stale = now.saturating_since(s.created) >= cfg.rekey_after
            || s.next_counter >= cfg.rekey_messages;
        let bytes = seal_data(s, &payload)?;
        self.out.push_back((dst, bytes));
        self.stats.sealed += 1;
        if stale && peer.initiating.is_none() {
            self.start_handshake(now, dst)?;
        }
        Ok(())
    }

    fn start_handshake(&mut self, now: Time, dst: NodeId) -> Result<(), E2eError> {
        let peer = self.peers.entry(dst).or_default();
        if peer.initiating.is_some() {
            return Ok(());
        }
        let key = self.keys.get(&dst).ok_or(E2eError::UnknownPeer(dst))?;
        let (ct, secret) = key
            .encapsulate()
            .map_err(|_| E2eError::Crypto("X-Wing encapsulation"))?;
        let sid = self.next_sid;
        self.next_sid = self.next_sid.wrapping_add(1);
        let mut msg = Vec::with_capacity(INIT_LEN);
        msg.push(INIT);
        msg.extend_from_slice(&sid.to_be_bytes());
        msg.extend_from_slice(ct.as_bytes());
        peer.initiating = Some(Initiating {
            sid,
            ct,
            secret,
            sent_at: now,
        });
        self.out.push_back((dst, msg));
        Ok(())
    }

    /// Handles a message from `src`; returns the payload of a Data message.
    /// Handshake messages return `Ok(None)` and may queue messages to send.
    pub fn open(
        &mut self,
        now: Time,
        src: NodeId,
        bytes: &[u8],
    ) -> Result<Option<Vec<u8>>, E2eError> {
        match bytes.first() {
            Some(&INIT) => self.on_init(now, src, bytes).map(|()| None),
            Some(&ACCEPT) => self.on_accept(now, src, bytes).map(|()| None),
            Some(&DATA) => self.on_data(now, src, bytes).map(Some),
            Some(_) => Err(E2eError::Malformed("unknown message type")),
            None => Err(E2eError::Malformed("empty message")),
        }
    }

    fn on_init(&mut self, now: Time, src: NodeId, bytes: &[u8]) -> Result<(), E2eError> {
        if bytes.len() != INIT_LEN {
            return Err(E2eError::Malformed("Init has the wrong length"));
        }
        let their_sid = read_u32(&bytes[1..5]);
        let ct_r = Ciphertext::from_bytes(&bytes[5..])
            .map_err(|_| E2eError::Malformed("Init ciphertext"))?;
        let key = self.keys.get(&src).ok_or(E2eError::UnknownPeer(src))?;
        let ss_r = self.key.decapsulate(&ct_r);
        let (ct_i, ss_i) = key
            .encapsulate()
            .map_err(|_| E2eError::Crypto("X-Wing encapsulation"))?;
        // Keys are labelled initiator -> responder: src initiated.
        let (to_responder, to_initiator) = derive(&ss_r, &ss_i, &src, &self.me, &ct_r, &ct_i)?;
        let sid = self.next_sid;
        self.next_sid = self.next_sid.wrapping_add(1);
        let confirm = to_initiator
            .seal_in_place_separate_tag(nonce(CONFIRM_COUNTER), Aad::from(&[]), &mut [])
            .map_err(|_| E2eError::Crypto("AEAD seal"))?;
        let mut msg = Vec::with_capacity(ACCEPT_LEN);
        msg.push(ACCEPT);
        msg.extend_from_slice(&sid.to_be_bytes());
        msg.extend_from_slice(&their_sid.to_be_bytes());
        msg.extend_from_slice(ct_i.as_bytes());
        msg.extend_from_slice(confirm.as_ref());
        self.out.push_back((src, msg));
        self.install(
            now,
            src,
            Session::new(sid, their_sid, to_initiator, to_responder, now, false),
        );
        Ok(())
    }

    fn on_accept(&mut self, now: Time, src: NodeId, bytes: &[u8]) -> Result<(), E2eError> {
        if bytes.len() != ACCEPT_LEN {
            return Err(E2eError::Malformed("Accept has the wrong length"));
        }
        let their_sid = read_u32(&bytes[1..5]);
        let our_sid = read_u32(&bytes[5..9]);
        let ct_i = Ciphertext::from_bytes(&bytes[9..9 + CIPHERTEXT_LEN])
            .map_err(|_| E2eError::Malformed("Accept ciphertext"))?;
        let tag = &bytes[9 + CIPHERTEXT_LEN..];
        let peer = self.peers.get_mut(&src);
        let Some(pending) = peer.and_then(|p| p.initiating.take_if(|i| i.sid == our_sid)) else {
            return Err(E2eError::UnknownSession {
                peer: src,
                sid: our_sid,
            });
        };
        let ss_i = self.key.decapsulate(&ct_i);
        let (to_responder, to_initiator) =
            derive(&pending.secret, &ss_i, &self.me, &src, &pending.ct, &ct_i)?;
        let mut tag_buf = tag.to_vec();
        if to_initiator
            .open_in_place(nonce(CONFIRM_COUNTER), Aad::from(&[]), &mut tag_buf)
            .is_err()
        {
            // Keep waiting: a forged Accept must not cancel the handshake.
            if let Some(p) = self.peers.get_mut(&src) {
                p.initiating = Some(pending);
            }
            return Err(E2eError::Forged(src));
        }
        self.install(
            now,
            src,
            Session::new(our_sid, their_sid, to_responder, to_initiator, now, true),
        );
        Ok(())
    }

    fn install(&mut self, now: Time, peer_id: NodeId, session: Session) {
        self.sids.insert(session.local_sid, peer_id);
        let peer = self.peers.entry(peer_id).or_default();
        if !session.confirmed {
            // At most one unconfirmed session per peer.
            let sids = &mut self.sids;
            peer.sessions.retain(|s| {
                s.confirmed || {
                    sids.remove(&s.local_sid);
                    false
                }
            });
        }
        let confirmed = session.confirmed;
        peer.sessions.push(session);
        if confirmed {
            self.confirmed(now, peer_id);
        }
    }

    /// The newest session with `peer_id` is confirmed: it retires the
    /// older ones and sends what waited for it.
    fn confirmed(&mut self, now: Time, peer_id: NodeId) {
        self.stats.handshakes += 1;
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let newest = peer.sessions.len().saturating_sub(1);
        for (i, s) in peer.sessions.iter_mut().enumerate() {
            if i != newest && s.confirmed {
                s.retired_at.get_or_insert(now);
            }
        }
        let queued: Vec<_> = peer.queued.drain(..).collect();
        for payload in queued {
            let _ = self.seal(now, peer_id, payload);
        }
    }

    fn on_data(&mut self, now: Time, src: NodeId, bytes: &[u8]) -> Result<Vec<u8>, E2eError> {
        if bytes.len() < DATA_OVERHEAD {
            return Err(E2eError::Malformed("Data shorter than its header and tag"));
        }
        let sid = read_u32(&bytes[1..5]);
        let counter = u64::from_be_bytes(
            bytes[5..13]
                .try_into()
                .map_err(|_| E2eError::Malformed("Data counter"))?,
        );
        let unknown = E2eError::UnknownSession { peer: src, sid };
        if self.sids.get(&sid) != Some(&src) {
            return Err(unknown);
        }
        let s = self
            .peers
            .get_mut(&src)
            .and_then(|p| p.sessions.iter_mut().find(|s| s.local_sid == sid))
            .ok_or(unknown)?;
        if counter >= COUNTER_LIMIT || !s.replay_fresh(counter) {
            return Err(E2eError::Replay { peer: src, counter });
        }
        let mut buf = bytes[13..].to_vec();
        let plain_len = s
            .open
            .open_in_place(nonce(counter), Aad::from(&bytes[..13]), &mut buf)
            .map_err(|_| E2eError::Forged(src))?
            .len();
        // Only an authentic message moves the window.
        s.replay_mark(counter);
        buf.truncate(plain_len);
        self.stats.opened += 1;
        if !s.confirmed {
            s.confirmed = true;
            // Move it last: the newest confirmed session seals.
            if let Some(peer) = self.peers.get_mut(&src)
                && let Some(i) = peer.sessions.iter().position(|s| s.local_sid == sid)
            {
                let s = peer.sessions.remove(i);
                peer.sessions.push(s);
            }
            self.confirmed(now, src);
        }
        Ok(buf)
    }

    /// Sends unanswered Inits again and forgets retired sessions past
    /// their grace period.
    pub fn handle_timeout(&mut self, now: Time) {
        let cfg = &self.cfg;
        let mut retry = Vec::new();
        for (id, peer) in &mut self.peers {
            peer.sessions.retain(|s| {
                let keep = s
                    .retired_at
                    .is_none_or(|at| now.saturating_since(at) < cfg.old_session_grace);
                if !keep {
                    self.sids.remove(&s.local_sid);
                }
                keep
            });
            if peer
                .initiating
                .as_ref()
                .is_some_and(|i| now.saturating_since(i.sent_at) >= cfg.handshake_retry)
            {
                peer.initiating = None;
                retry.push(*id);
            }
        }
        for id in retry {
            let _ = self.start_handshake(now, id);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run.
    pub fn next_deadline(&self) -> Option<Time> {
        let cfg = &self.cfg;
        self.peers
            .values()
            .flat_map(|p| {
                let retry = p
                    .initiating
                    .as_ref()
                    .map(|i| i.sent_at + cfg.handshake_retry);
                let expiry = p
                    .sessions
                    .iter()
                    .filter_map(|s| s.retired_at.map(|at| at + cfg.old_session_grace));
                retry.into_iter().chain(expiry)
            })
            .min()
    }
}

impl Session {
    fn new(
        local_sid: u32,
        remote_sid: u32,
        seal: LessSafeKey,
        open: LessSafeKey,
        now: Time,
        confirmed: bool,
    ) -> Self {
        Self {
            local_sid,
            remote_sid,
            seal,
            open,
            next_counter: 0,
            replay_top: None,
            replay_bits: [0; (REPLAY_WINDOW / 64) as usize],
            created: now,
            confirmed,
            retired_at: None,
        }
    }

    fn replay_fresh(&self, counter: u64) -> bool {
        match self.replay_top {
            None => true,
            Some(top) if counter > top => true,
            Some(top) if top - counter >= REPLAY_WINDOW => false,
            Some(_) => {
                let bit = counter % REPLAY_WINDOW;
                self.replay_bits[(bit / 64) as usize] & (1 << (bit % 64)) == 0
            }
        }
    }

    fn replay_mark(&mut self, counter: u64) {
        let top = self.replay_top.unwrap_or(0);
        if self.replay_top.is_none() || counter > top {
            // Clear the bits of the counters the window slides past.
            let from = self.replay_top.map_or(0, |t| t + 1);
            if counter - from >= REPLAY_WINDOW {
                self.replay_bits = [0; (REPLAY_WINDOW / 64) as usize];
            } else {
                for c in from..counter {
                    let bit = c % REPLAY_WINDOW;
                    self.replay_bits[(bit / 64) as usize] &= !(1 << (bit % 64));
                }
            }
            self.replay_top = Some(counter);
        }
        let bit = counter % REPLAY_WINDOW;
        self.replay_bits[(bit / 64) as usize] |= 1 << (bit % 64);
    }
}

fn seal_data(s: &mut Session, payload: &[u8]) -> Result<Vec<u8>, E2eError> {
    if s.next_counter >= COUNTER_LIMIT {
        return Err(E2eError::Crypto("session counter exhausted"));
    }
    let counter = s.next_counter;
    s.next_counter += 1;
    let mut out = Vec::with_capacity(DATA_OVERHEAD + payload.len());
    out.push(DATA);
    out.extend_from_slice(&s.remote_sid.to_be_bytes());
    out.extend_from_slice(&counter.to_be_bytes());
    let header_len = out.len();
    out.extend_from_slice(payload);
    let (header, body) = out.split_at_mut(header_len);
    let tag = s
        .seal
        .seal_in_place_separate_tag(nonce(counter), Aad::from(&*header), body)
        .map_err(|_| E2eError::Crypto("AEAD seal"))?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

fn read_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

/// The two directional keys: (initiator -> responder, responder -> initiator).
fn derive(
    ss_r: &weft_crypto::kem::SharedSecret,
    ss_i: &weft_crypto::kem::SharedSecret,
    initiator: &NodeId,
    responder: &NodeId,
    ct_r: &Ciphertext,
    ct_i: &Ciphertext,
) -> Result<(LessSafeKey, LessSafeKey), E2eError> {
    let mut ikm = [0u8; 64];
    ikm[..32].copy_from_slice(&ss_r.0);
    ikm[32..].copy_from_slice(&ss_i.0);
    let prk = Salt::new(HKDF_SHA256, SALT).extract(&ikm);
    ikm.fill(0);
    let info: [&[u8]; 4] = [&initiator.0, &responder.0, ct_r.as_bytes(), ct_i.as_bytes()];
    let okm = prk
        .expand(&info, TwoKeys)
        .map_err(|_| E2eError::Crypto("HKDF expand"))?;
    let mut keys = [0u8; 2 * KEY_LEN];
    okm.fill(&mut keys)
        .map_err(|_| E2eError::Crypto("HKDF fill"))?;
    let make = |k: &[u8]| {
        UnboundKey::new(&AES_256_GCM, k)
            .map(LessSafeKey::new)
            .map_err(|_| E2eError::Crypto("AEAD key"))
    };
    let pair = (make(&keys[..KEY_LEN])?, make(&keys[KEY_LEN..])?);
    keys.fill(0);
    Ok(pair)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn pair() -> (E2e, E2e) {
        let (ka, kb) = (
            DecapsulationKey::generate().unwrap(),
            DecapsulationKey::generate().unwrap(),
        );
        let (ida, idb) = (NodeId([1; 32]), NodeId([2; 32]));
        let (eka, ekb) = (ka.encapsulation_key(), kb.encapsulation_key());
        let mut a = E2e::new(ida, ka, E2eConfig::default());
        let mut b = E2e::new(idb, kb, E2eConfig::default());
        a.set_peer_key(idb, ekb);
        b.set_peer_key(ida, eka);
        (a, b)
    }

    /// Delivers everything queued between the two until both are quiet;
    /// returns the payloads each opened.
    fn run(a: &mut E2e, b: &mut E2e, now: Time) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        loop {
            let mut moved = false;
            while let Some((dst, msg)) = a.poll_transmit() {
                assert_eq!(dst, b.me);
                if let Some(p) = b.open(now, a.me, &msg).unwrap() {
                    got_b.push(p);
                }
                moved = true;
            }
            while let Some((dst, msg)) = b.poll_transmit() {
                assert_eq!(dst, a.me);
                if let Some(p) = a.open(now, b.me, &msg).unwrap() {
                    got_a.push(p);
                }
                moved = true;
            }
            if !moved {
                return (got_a, got_b);
            }
        }
    }

    #[test]
    fn payloads_cross_after_one_handshake_both_ways() {
        let (mut a, mut b) = pair();
        let t = Time::from_secs(1);
        a.seal(t, b.me, b"first".to_vec()).unwrap();
        a.seal(t, b.me, b"second".to_vec()).unwrap();
        let (_, got_b) = run(&mut a, &mut b, t);
        assert_eq!(got_b, vec![b"first".to_vec(), b"second".to_vec()]);
        b.seal(t, a.me, b"reply".to_vec()).unwrap();
        let (got_a, _) = run(&mut a, &mut b, t);
        assert_eq!(got_a, vec![b"reply".to_vec()]);
        assert_eq!(a.stats().handshakes, 1);
        assert_eq!(b.stats().handshakes, 1);
    }

    #[test]
    fn simultaneous_handshakes_both_deliver() {
        let (mut a, mut b) = pair();
        let t = Time::from_secs(1);
        a.seal(t, b.me, b"from a".to_vec()).unwrap();
        b.seal(t, a.me, b"from b".to_vec()).unwrap();
        let (got_a, got_b) = run(&mut a, &mut b, t);
        assert_eq!(got_a, vec![b"from b".to_vec()]);
        assert_eq!(got_b, vec![b"from a".to_vec()]);
    }

    #[test]
    fn replays_tampering_and_garbage_are_refused() {
        let (mut a, mut b) = pair();
        let t = Time::from_secs(1);
        a.seal(t, b.me, b"x".to_vec()).unwrap();
        run(&mut a, &mut b, t);
        a.seal(t, b.me, b"payload".to_vec()).unwrap();
        let (_, msg) = a.poll_transmit().unwrap();
        assert_eq!(b.open(t, a.me, &msg).unwrap(), Some(b"payload".to_vec()));
        assert!(matches!(
            b.open(t, a.me, &msg),
            Err(E2eError::Replay { .. })
        ));
        let mut tampered = msg.clone();
        *tampered.last_mut().unwrap() ^= 1;
        tampered[5..13].copy_from_slice(&99u64.to_be_bytes());
        assert_eq!(b.open(t, a.me, &tampered), Err(E2eError::Forged(a.me)));
        // The same message claimed by another node names no session of it.
        assert!(matches!(
            b.open(t, NodeId([9; 32]), &msg),
            Err(E2eError::UnknownSession { .. })
        ));
        for junk in [&[][..], &[3, 0, 0], &[7; 40], &[1; 10], &[2; 1145]] {
            assert!(b.open(t, a.me, junk).is_err());
        }
    }

    #[test]
    fn the_replay_window_accepts_reordering_within_it() {
        let (mut a, mut b) = pair();
        let t = Time::from_secs(1);
        a.seal(t, b.me, b"x".to_vec()).unwrap();
        run(&mut a, &mut b, t);
        let msgs: Vec<_> = (0..3000)
            .map(|i| {
                a.seal(t, b.me, vec![i as u8]).unwrap();
                a.poll_transmit().unwrap().1
            })
            .collect();
        // Newest first, then older ones: those within 2048 are accepted once.
        assert!(b.open(t, a.me, &msgs[2999]).is_ok());
        assert!(b.open(t, a.me, &msgs[1000]).is_ok());
        assert!(b.open(t, a.me, &msgs[1000]).is_err());
        assert!(matches!(
            b.open(t, a.me, &msgs[900]),
            Err(E2eError::Replay { .. })
        ));
    }

    #[test]
    fn sessions_are_rekeyed_and_the_old_one_drains() {
        let (mut a, mut b) = pair();
        let t0 = Time::from_secs(1);
        a.seal(t0, b.me, b"x".to_vec()).unwrap();
        run(&mut a, &mut b, t0);
        // Sealed under the first session, still in flight at the rekey.
        a.seal(t0, b.me, b"late".to_vec()).unwrap();
        let (_, late) = a.poll_transmit().unwrap();
        let t1 = t0 + Duration::from_secs(121);
        a.seal(t1, b.me, b"triggers rekey".to_vec()).unwrap();
        let (_, got_b) = run(&mut a, &mut b, t1);
        assert_eq!(got_b, vec![b"triggers rekey".to_vec()]);
        assert_eq!(a.stats().handshakes, 2);
        assert_eq!(b.open(t1, a.me, &late).unwrap(), Some(b"late".to_vec()));
        // After the grace period the old session is gone.
        let t2 = t1 + Duration::from_secs(11);
        a.handle_timeout(t2);
        b.handle_timeout(t2);
        a.seal(t2, b.me, b"new".to_vec()).unwrap();
        let (_, got_b) = run(&mut a, &mut b, t2);
        assert_eq!(got_b, vec![b"new".to_vec()]);
        // b retired its first session when the new one proved itself.
        b.handle_timeout(t2 + Duration::from_secs(11));
        assert_eq!(b.peers[&a.me].sessions.len(), 1);
    }

    #[test]
    fn a_lost_init_is_sent_again() {
        let (mut a, mut b) = pair();
        let t = Time::from_secs(1);
        a.seal(t, b.me, b"queued".to_vec()).unwrap();
        let (_, init) = a.poll_transmit().unwrap();
        assert_eq!(init.len(), INIT_LEN);
        drop(init);
        assert_eq!(a.next_deadline(), Some(t + Duration::from_secs(1)));
        let t1 = t + Duration::from_secs(1);
        a.handle_timeout(t1);
        let (_, got_b) = run(&mut a, &mut b, t1);
        assert_eq!(got_b, vec![b"queued".to_vec()]);
    }
}
