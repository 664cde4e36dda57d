//! The mesh wire format: versioned, length-prefixed frames with bounded
//! bodies. Decoding is total: any input yields a message, "need more
//! bytes", or an error naming what was wrong; never a panic.
//!
//! Frame layout (all integers big-endian):
//!
//! ```text
//! version (1) = 1 | type (1) | body length (2) | body
//! ```
//!
//! Links are reliable, ordered streams (QUIC), so a frame never spans two
//! transmissions in a way the decoder cannot reassemble: [`decode_frame`]
//! reports [`Decoded::NeedMore`] until a whole frame is buffered.
//!
//! Hand-written rather than serde + bincode/postcard: every length is
//! checked against a protocol limit before anything is allocated, the
//! encoded size of each message is known without encoding (the simulator
//! counts bytes), and the format is specified here byte for byte.

use std::fmt;

use weft_crypto::NodeId;
use weft_crypto::sign::SIGNATURE_LEN;

/// Wire format version.
pub const VERSION: u8 = 1;
/// Frame header length.
pub const HEADER_LEN: usize = 4;
/// Largest frame body accepted.
pub const MAX_BODY_LEN: usize = u16::MAX as usize;
/// Most route entries in one update frame.
pub const MAX_UPDATE_ENTRIES: usize = 1024;
/// Most revoked node ids in one revocation list.
pub const MAX_REVOKED: usize = 1024;
/// Largest datagram payload.
pub const MAX_PAYLOAD_LEN: usize = 16 * 1024;

/// A 16-bit sequence number compared modulo 2^16 (RFC 8966 §3.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Seqno(pub u16);

impl Seqno {
    /// `self` is strictly newer than `other` in modular order.
    pub fn is_newer_than(self, other: Seqno) -> bool {
        let d = self.0.wrapping_sub(other.0);
        d != 0 && d < 0x8000
    }

    /// The next seqno.
    pub fn next(self) -> Seqno {
        Seqno(self.0.wrapping_add(1))
    }
}

/// Route metric; [`Metric::INFINITY`] means unreachable (a retraction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Metric(pub u16);

impl Metric {
    /// Unreachable.
    pub const INFINITY: Metric = Metric(u16::MAX);

    /// Whether this is [`Metric::INFINITY`].
    pub fn is_infinite(self) -> bool {
        self == Self::INFINITY
    }

    /// `self + cost`, saturating below infinity.
    pub fn plus(self, cost: u16) -> Metric {
        if self.is_infinite() || cost == u16::MAX {
            return Metric::INFINITY;
        }
        Metric(self.0.saturating_add(cost).min(u16::MAX - 1))
    }
}

/// One route in an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination (the route's origin).
    pub origin: NodeId,
    /// The origin's seqno this route is for.
    pub seqno: Seqno,
    /// The sender's metric to the origin; infinity retracts.
    pub metric: Metric,
}

/// What an origin signs once per seqno chain: it exists, in this boot
/// epoch, with route seqnos `base ..= base + chain_len` proven by the
/// elements of the hash chain ending at `anchor` (see [`crate::chain`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginCert {
    /// The node announcing itself.
    pub origin: NodeId,
    /// Its boot epoch (incremented at every start, persisted).
    pub epoch: u32,
    /// First seqno the chain covers (proven by the anchor itself).
    pub base: Seqno,
    /// Seqnos covered beyond `base`.
    pub chain_len: u16,
    /// Last element of the seqno hash chain.
    pub anchor: [u8; 32],
    /// When it signed, unix milliseconds.
    pub timestamp_ms: u64,
    /// Composite ML-DSA-65+Ed25519 signature over [`OriginCert::signed_bytes`].
    pub signature: Box<[u8; SIGNATURE_LEN]>,
}

/// Length of [`OriginCert::signed_bytes`].
pub const CERT_SIGNED_LEN: usize = 32 + 4 + 2 + 2 + 32 + 8;

impl OriginCert {
    /// Signature context of origin certificates.
    pub const CONTEXT: &'static [u8] = b"weft/origin-cert/v1";

    /// The bytes the origin signs: every field but the signature, in wire order.
    pub fn signed_bytes(&self) -> [u8; CERT_SIGNED_LEN] {
        let mut out = [0u8; CERT_SIGNED_LEN];
        out[..32].copy_from_slice(&self.origin.0);
        out[32..36].copy_from_slice(&self.epoch.to_be_bytes());
        out[36..38].copy_from_slice(&self.base.0.to_be_bytes());
        out[38..40].copy_from_slice(&self.chain_len.to_be_bytes());
        out[40..72].copy_from_slice(&self.anchor);
        out[72..80].copy_from_slice(&self.timestamp_ms.to_be_bytes());
        out
    }

    /// Which certificate this is, in short.
    pub fn cert_ref(&self) -> CertRef {
        CertRef {
            epoch: self.epoch,
            base: self.base,
        }
    }

    /// The chain offset of `seqno`, if this certificate covers it.
    pub fn offset_of(&self, seqno: Seqno) -> Option<u16> {
        let d = seqno.0.wrapping_sub(self.base.0);
        (d <= self.chain_len).then_some(d)
    }
}

/// Names an origin certificate without carrying it: an origin signs at
/// most one chain per (epoch, base).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertRef {
    /// The certificate's epoch.
    pub epoch: u32,
    /// Its base seqno.
    pub base: Seqno,
}

/// A route seqno of an origin with its proof: the signed certificate and
/// the chain element for `seqno`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The origin's certificate (shared: one copy serves every seqno it covers).
    pub cert: std::sync::Arc<OriginCert>,
    /// The seqno proven.
    pub seqno: Seqno,
    /// Chain element for `seqno` (the anchor itself at `base`).
    pub proof: [u8; 32],
}

impl Announcement {
    /// The announcing node.
    pub fn origin(&self) -> &NodeId {
        &self.cert.origin
    }
}

/// A seqno proof alone, for a peer that already holds the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqnoProof {
    /// The origin.
    pub origin: NodeId,
    /// The certificate the proof belongs to.
    pub cert: CertRef,
    /// The seqno proven.
    pub seqno: Seqno,
    /// Its chain element.
    pub proof: [u8; 32],
}

/// A revocation list signed by the trust domain's CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationList {
    /// Monotonically increasing epoch; a list with a higher epoch replaces older ones.
    pub epoch: u64,
    /// When the CA issued it, unix milliseconds.
    pub issued_ms: u64,
    /// Revoked nodes.
    pub revoked: Vec<NodeId>,
    /// Composite signature of the CA over [`RevocationList::signed_bytes`].
    pub signature: Box<[u8; SIGNATURE_LEN]>,
}

impl RevocationList {
    /// Signature context of revocation lists.
    pub const CONTEXT: &'static [u8] = b"weft/revocation/v1";

    /// The bytes the CA signs.
    pub fn signed_bytes(epoch: u64, issued_ms: u64, revoked: &[NodeId]) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 32 * revoked.len());
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&issued_ms.to_be_bytes());
        for id in revoked {
            out.extend_from_slice(&id.0);
        }
        out
    }
}

/// A liveness probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Per-link hello counter (loss is counted from its gaps).
    pub seq: u16,
    /// The sender's current hello interval, milliseconds.
    pub interval_ms: u16,
    /// Sender's clock when sending, microseconds (wrapping).
    pub ts_us: u32,
    /// `ts_us` of the last hello received from the peer, 0 if none.
    pub echo_ts_us: u32,
    /// Time between receiving that hello and sending this one, in units
    /// of 100 µs (saturating at 6.5 s).
    pub echo_delay_100us: u16,
}

/// A mesh message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Liveness probe, sent periodically on every link by both ends.
    Hello(Hello),
    /// Routes (full table at link-up, changes afterwards).
    Update(Vec<RouteEntry>),
    /// Ask the origin (relayed hop by hop) for a seqno at least `seqno`.
    SeqnoRequest {
        /// The origin asked.
        origin: NodeId,
        /// Seqno wanted.
        seqno: Seqno,
        /// Hops left.
        hop_count: u8,
    },
    /// Ask a neighbour for the announcement of (origin, seqno).
    AnnouncementRequest {
        /// The origin.
        origin: NodeId,
        /// Its seqno.
        seqno: Seqno,
        /// The certificate the asker holds for the origin, if any: when it
        /// is the right one, the answer is a [`SeqnoProof`] alone.
        have: Option<CertRef>,
    },
    /// An origin certificate with the proof of one seqno.
    Announcement(Announcement),
    /// The proof of a newer seqno under a certificate the peer holds.
    SeqnoProof(SeqnoProof),
    /// A CA-signed revocation list.
    Revocation(RevocationList),
    /// A mesh datagram.
    Datagram {
        /// Sender.
        src: NodeId,
        /// Destination.
        dst: NodeId,
        /// Hops left; dropped at zero.
        hop_limit: u8,
        /// Payload (sealed end to end by the agent).
        payload: Vec<u8>,
    },
    /// No route to `dst` at `reporter`, sent back to `src`.
    Unreachable {
        /// The node without a route.
        reporter: NodeId,
        /// The original sender.
        src: NodeId,
        /// The destination it could not reach.
        dst: NodeId,
    },
    /// Ask a neighbour for its current route to `origin` (RFC 8966
    /// §3.8.1.1): sent by a node that lost its route to `origin` after
    /// dropping some neighbour's offer for lack of room in its table. The
    /// answer is an update entry (a retraction if the neighbour has no route).
    RouteRequest {
        /// The destination asked about.
        origin: NodeId,
    },
}

mod ty {
    pub const HELLO: u8 = 1;
    pub const UPDATE: u8 = 2;
    pub const SEQNO_REQUEST: u8 = 3;
    pub const ANNOUNCEMENT_REQUEST: u8 = 4;
    pub const ANNOUNCEMENT: u8 = 5;
    pub const REVOCATION: u8 = 6;
    pub const DATAGRAM: u8 = 7;
    pub const UNREACHABLE: u8 = 8;
    pub const SEQNO_PROOF: u8 = 9;
    pub const ROUTE_REQUEST: u8 = 10;
    pub const LAST: u8 = ROUTE_REQUEST;
}

pub(crate) const ROUTE_ENTRY_LEN: usize = 32 + 2 + 2;
const ANNOUNCEMENT_REQUEST_LEN: usize = 32 + 2 + 1 + 4 + 2;
const ANNOUNCEMENT_LEN: usize = CERT_SIGNED_LEN + SIGNATURE_LEN + 2 + 32;
const SEQNO_PROOF_LEN: usize = 32 + 4 + 2 + 2 + 32;

impl Message {
    /// Short name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Update(_) => "update",
            Message::SeqnoRequest { .. } => "seqno_request",
            Message::AnnouncementRequest { .. } => "announcement_request",
            Message::Announcement(_) => "announcement",
            Message::SeqnoProof(_) => "seqno_proof",
            Message::Revocation(_) => "revocation",
            Message::Datagram { .. } => "datagram",
            Message::Unreachable { .. } => "unreachable",
            Message::RouteRequest { .. } => "route_request",
        }
    }

    fn type_byte(&self) -> u8 {
        match self {
            Message::Hello(_) => ty::HELLO,
            Message::Update(_) => ty::UPDATE,
            Message::SeqnoRequest { .. } => ty::SEQNO_REQUEST,
            Message::AnnouncementRequest { .. } => ty::ANNOUNCEMENT_REQUEST,
            Message::Announcement(_) => ty::ANNOUNCEMENT,
            Message::SeqnoProof(_) => ty::SEQNO_PROOF,
            Message::Revocation(_) => ty::REVOCATION,
            Message::Datagram { .. } => ty::DATAGRAM,
            Message::Unreachable { .. } => ty::UNREACHABLE,
            Message::RouteRequest { .. } => ty::ROUTE_REQUEST,
        }
    }

    /// Body length in bytes (without the frame header).
    pub fn body_len(&self) -> usize {
        match self {
            Message::Hello(_) => 2 + 2 + 4 + 4 + 2,
            Message::Update(entries) => 2 + entries.len() * ROUTE_ENTRY_LEN,
            Message::SeqnoRequest { .. } => 32 + 2 + 1,
            Message::AnnouncementRequest { .. } => ANNOUNCEMENT_REQUEST_LEN,
            Message::Announcement(_) => ANNOUNCEMENT_LEN,
            Message::SeqnoProof(_) => SEQNO_PROOF_LEN,
            Message::Revocation(r) => 8 + 8 + 2 + 32 * r.revoked.len() + SIGNATURE_LEN,
            Message::Datagram { payload, .. } => 32 + 32 + 1 + 2 + payload.len(),
            Message::Unreachable { .. } => 3 * 32,
            Message::RouteRequest { .. } => 32,
        }
    }

    /// Encoded length including the frame header.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    /// Appends the encoded frame to `out`. Fails only when the message
    /// exceeds a protocol limit (the caller built something invalid).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        self.check_limits()?;
        let body_len = self.body_len();
        let body_len_u16 = u16::try_from(body_len).map_err(|_| WireError::TooLong {
            what: "frame body",
            len: body_len,
            max: MAX_BODY_LEN,
        })?;
        out.reserve(HEADER_LEN + body_len);
        out.push(VERSION);
        out.push(self.type_byte());
        out.extend_from_slice(&body_len_u16.to_be_bytes());
        match self {
            Message::Hello(Hello {
                seq,
                interval_ms,
                ts_us,
                echo_ts_us,
                echo_delay_100us,
            }) => {
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&interval_ms.to_be_bytes());
                out.extend_from_slice(&ts_us.to_be_bytes());
                out.extend_from_slice(&echo_ts_us.to_be_bytes());
                out.extend_from_slice(&echo_delay_100us.to_be_bytes());
            }
            Message::Update(entries) => {
                out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
                for e in entries {
                    out.extend_from_slice(&e.origin.0);
                    out.extend_from_slice(&e.seqno.0.to_be_bytes());
                    out.extend_from_slice(&e.metric.0.to_be_bytes());
                }
            }
            Message::SeqnoRequest {
                origin,
                seqno,
                hop_count,
            } => {
                out.extend_from_slice(&origin.0);
                out.extend_from_slice(&seqno.0.to_be_bytes());
                out.push(*hop_count);
            }
            Message::AnnouncementRequest {
                origin,
                seqno,
                have,
            } => {
                out.extend_from_slice(&origin.0);
                out.extend_from_slice(&seqno.0.to_be_bytes());
                let (flag, r) = have.map_or(
                    (
                        0,
                        CertRef {
                            epoch: 0,
                            base: Seqno(0),
                        },
                    ),
                    |r| (1, r),
                );
                out.push(flag);
                out.extend_from_slice(&r.epoch.to_be_bytes());
                out.extend_from_slice(&r.base.0.to_be_bytes());
            }
            Message::Announcement(a) => {
                out.extend_from_slice(&a.cert.signed_bytes());
                out.extend_from_slice(&a.cert.signature[..]);
                out.extend_from_slice(&a.seqno.0.to_be_bytes());
                out.extend_from_slice(&a.proof);
            }
            Message::SeqnoProof(p) => {
                out.extend_from_slice(&p.origin.0);
                out.extend_from_slice(&p.cert.epoch.to_be_bytes());
                out.extend_from_slice(&p.cert.base.0.to_be_bytes());
                out.extend_from_slice(&p.seqno.0.to_be_bytes());
                out.extend_from_slice(&p.proof);
            }
            Message::Revocation(r) => {
                out.extend_from_slice(&r.epoch.to_be_bytes());
                out.extend_from_slice(&r.issued_ms.to_be_bytes());
                out.extend_from_slice(&(r.revoked.len() as u16).to_be_bytes());
                for id in &r.revoked {
                    out.extend_from_slice(&id.0);
                }
                out.extend_from_slice(&r.signature[..]);
            }
            Message::Datagram {
                src,
                dst,
                hop_limit,
                payload,
            } => {
                out.extend_from_slice(&src.0);
                out.extend_from_slice(&dst.0);
                out.push(*hop_limit);
                out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
                out.extend_from_slice(payload);
            }
            Message::Unreachable { reporter, src, dst } => {
                out.extend_from_slice(&reporter.0);
                out.extend_from_slice(&src.0);
                out.extend_from_slice(&dst.0);
            }
            Message::RouteRequest { origin } => out.extend_from_slice(&origin.0),
        }
        Ok(())
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out)?;
        Ok(out)
    }

    fn check_limits(&self) -> Result<(), WireError> {
        let check = |what, len, max| {
            if len > max {
                Err(WireError::TooLong { what, len, max })
            } else {
                Ok(())
            }
        };
        match self {
            Message::Update(e) => check("update entries", e.len(), MAX_UPDATE_ENTRIES),
            Message::Revocation(r) => check("revoked ids", r.revoked.len(), MAX_REVOKED),
            Message::Datagram { payload, .. } => {
                check("datagram payload", payload.len(), MAX_PAYLOAD_LEN)
            }
            _ => Ok(()),
        }
    }
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A version this build does not speak.
    #[error("unsupported wire version {0}; this weft speaks version {VERSION}")]
    Version(u8),
    /// An unknown message type.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// A length beyond a protocol limit.
    #[error("{what} is {len}, more than the limit of {max}")]
    TooLong {
        /// What.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field holds a value the format does not allow.
    #[error("{what} is {value}, which the format does not allow")]
    BadValue {
        /// The field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// The body length does not match what the type requires.
    #[error("{kind} body is {got} bytes; expected {expected}")]
    BodyLength {
        /// The message kind.
        kind: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
}

/// Result of decoding from a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A message and the number of bytes it used.
    Message(Message, usize),
    /// The buffer holds only part of a frame.
    NeedMore,
}

/// A cursor over a body whose length was already checked; reads cannot
/// run past the end because every caller checks the exact length first.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = &self.buf[n..];
        out
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.buf.len());
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        head
    }
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take())
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take())
    }
    fn node(&mut self) -> NodeId {
        NodeId(self.take())
    }
    fn signature(&mut self) -> Box<[u8; SIGNATURE_LEN]> {
        let mut sig = Box::new([0u8; SIGNATURE_LEN]);
        let src = self.bytes(SIGNATURE_LEN);
        sig[..src.len()].copy_from_slice(src);
        sig
    }
}

/// Reads the u16 count at `at` (0 when the body is too short: the exact
/// length check that follows reports that) and checks it against `max`.
fn count_at(body: &[u8], at: usize, what: &'static str, max: usize) -> Result<usize, WireError> {
    let n = body
        .get(at..at + 2)
        .map_or(0, |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    if n > max {
        return Err(WireError::TooLong { what, len: n, max });
    }
    Ok(n)
}

fn expect_len(kind: &'static str, body: &[u8], expected: usize) -> Result<(), WireError> {
    if body.len() == expected {
        Ok(())
    } else {
        Err(WireError::BodyLength {
            kind,
            expected,
            got: body.len(),
        })
    }
}

/// Decodes one frame from the front of `buf`.
pub fn decode_frame(buf: &[u8]) -> Result<Decoded, WireError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        // Fail fast on a wrong version even before the header is complete.
        if let Some(&v) = buf.first()
            && v != VERSION
        {
            return Err(WireError::Version(v));
        }
        return Ok(Decoded::NeedMore);
    };
    if header[0] != VERSION {
        return Err(WireError::Version(header[0]));
    }
    let kind = header[1];
    if !(ty::HELLO..=ty::LAST).contains(&kind) {
        return Err(WireError::UnknownType(kind));
    }
    let body_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + body_len) else {
        return Ok(Decoded::NeedMore);
    };
    let msg = decode_body(kind, body)?;
    Ok(Decoded::Message(msg, HEADER_LEN + body_len))
}

/// Decodes a buffer that must hold exactly one frame (a datagram).
pub fn decode_exact(buf: &[u8]) -> Result<Message, WireError> {
    match decode_frame(buf)? {
        Decoded::Message(m, used) if used == buf.len() => Ok(m),
        Decoded::Message(_, used) => Err(WireError::BodyLength {
            kind: "datagram frame",
            expected: used,
            got: buf.len(),
        }),
        Decoded::NeedMore => Err(WireError::BodyLength {
            kind: "truncated frame",
            expected: HEADER_LEN
                + buf
                    .get(2..4)
                    .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
                    .unwrap_or(0),
            got: buf.len(),
        }),
    }
}

fn decode_body(kind: u8, body: &[u8]) -> Result<Message, WireError> {
    let mut r = Reader { buf: body };
    let msg = match kind {
        ty::HELLO => {
            expect_len("hello", body, 14)?;
            Message::Hello(Hello {
                seq: r.u16(),
                interval_ms: r.u16(),
                ts_us: r.u32(),
                echo_ts_us: r.u32(),
                echo_delay_100us: r.u16(),
            })
        }
        ty::UPDATE => {
            let count = count_at(body, 0, "update entries", MAX_UPDATE_ENTRIES)?;
            expect_len("update", body, 2 + count * ROUTE_ENTRY_LEN)?;
            r.u16();
            let entries = (0..count)
                .map(|_| RouteEntry {
                    origin: r.node(),
                    seqno: Seqno(r.u16()),
                    metric: Metric(r.u16()),
                })
                .collect();
            Message::Update(entries)
        }
        ty::SEQNO_REQUEST => {
            expect_len("seqno request", body, 35)?;
            Message::SeqnoRequest {
                origin: r.node(),
                seqno: Seqno(r.u16()),
                hop_count: r.u8(),
            }
        }
        ty::ANNOUNCEMENT_REQUEST => {
            expect_len("announcement request", body, ANNOUNCEMENT_REQUEST_LEN)?;
            let origin = r.node();
            let seqno = Seqno(r.u16());
            let flag = r.u8();
            let cert = CertRef {
                epoch: r.u32(),
                base: Seqno(r.u16()),
            };
            // Without a certificate the fields must be zero: one message,
            // one encoding (the fuzzer found the other reading).
            let have = match flag {
                0 if cert.epoch == 0 && cert.base.0 == 0 => None,
                0 => {
                    return Err(WireError::BadValue {
                        what: "announcement request certificate fields without the flag",
                        value: u64::from(cert.epoch) << 16 | u64::from(cert.base.0),
                    });
                }
                1 => Some(cert),
                v => {
                    return Err(WireError::BadValue {
                        what: "announcement request certificate flag",
                        value: u64::from(v),
                    });
                }
            };
            Message::AnnouncementRequest {
                origin,
                seqno,
                have,
            }
        }
        ty::ANNOUNCEMENT => {
            expect_len("announcement", body, ANNOUNCEMENT_LEN)?;
            let cert = OriginCert {
                origin: r.node(),
                epoch: r.u32(),
                base: Seqno(r.u16()),
                chain_len: r.u16(),
                anchor: r.take(),
                timestamp_ms: r.u64(),
                signature: r.signature(),
            };
            Message::Announcement(Announcement {
                cert: std::sync::Arc::new(cert),
                seqno: Seqno(r.u16()),
                proof: r.take(),
            })
        }
        ty::SEQNO_PROOF => {
            expect_len("seqno proof", body, SEQNO_PROOF_LEN)?;
            Message::SeqnoProof(SeqnoProof {
                origin: r.node(),
                cert: CertRef {
                    epoch: r.u32(),
                    base: Seqno(r.u16()),
                },
                seqno: Seqno(r.u16()),
                proof: r.take(),
            })
        }
        ty::REVOCATION => {
            let count = count_at(body, 16, "revoked ids", MAX_REVOKED)?;
            expect_len("revocation", body, 18 + 32 * count + SIGNATURE_LEN)?;
            let epoch = r.u64();
            let issued_ms = r.u64();
            r.u16();
            let revoked = (0..count).map(|_| r.node()).collect();
            Message::Revocation(RevocationList {
                epoch,
                issued_ms,
                revoked,
                signature: r.signature(),
            })
        }
        ty::DATAGRAM => {
            let len = count_at(body, 65, "datagram payload", MAX_PAYLOAD_LEN)?;
            expect_len("datagram", body, 67 + len)?;
            Message::Datagram {
                src: r.node(),
                dst: r.node(),
                hop_limit: r.u8(),
                payload: {
                    r.u16();
                    r.bytes(len).to_vec()
                },
            }
        }
        ty::UNREACHABLE => {
            expect_len("unreachable", body, 96)?;
            Message::Unreachable {
                reporter: r.node(),
                src: r.node(),
                dst: r.node(),
            }
        }
        ty::ROUTE_REQUEST => {
            expect_len("route request", body, 32)?;
            Message::RouteRequest { origin: r.node() }
        }
        other => return Err(WireError::UnknownType(other)),
    };
    Ok(msg)
}

impl fmt::Display for Seqno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node() -> impl Strategy<Value = NodeId> {
        any::<[u8; 32]>().prop_map(NodeId)
    }

    fn sig() -> impl Strategy<Value = Box<[u8; SIGNATURE_LEN]>> {
        (any::<u8>(), any::<u64>()).prop_map(|(fill, salt)| {
            let mut s = Box::new([fill; SIGNATURE_LEN]);
            s[..8].copy_from_slice(&salt.to_be_bytes());
            s
        })
    }

    fn cert_ref() -> impl Strategy<Value = CertRef> {
        (any::<u32>(), any::<u16>()).prop_map(|(epoch, base)| CertRef {
            epoch,
            base: Seqno(base),
        })
    }

    fn message() -> impl Strategy<Value = Message> {
        let entry = (node(), any::<u16>(), any::<u16>()).prop_map(|(origin, s, m)| RouteEntry {
            origin,
            seqno: Seqno(s),
            metric: Metric(m),
        });
        prop_oneof![
            (
                any::<u16>(),
                any::<u16>(),
                any::<u32>(),
                any::<u32>(),
                any::<u16>()
            )
                .prop_map(|(seq, interval_ms, ts_us, echo_ts_us, echo_delay_100us)| {
                    Message::Hello(Hello {
                        seq,
                        interval_ms,
                        ts_us,
                        echo_ts_us,
                        echo_delay_100us,
                    })
                }),
            proptest::collection::vec(entry, 0..40).prop_map(Message::Update),
            (node(), any::<u16>(), any::<u8>()).prop_map(|(origin, s, hop_count)| {
                Message::SeqnoRequest {
                    origin,
                    seqno: Seqno(s),
                    hop_count,
                }
            }),
            (node(), any::<u16>(), proptest::option::of(cert_ref())).prop_map(
                |(origin, s, have)| Message::AnnouncementRequest {
                    origin,
                    seqno: Seqno(s),
                    have,
                }
            ),
            (
                (node(), any::<u32>(), any::<u16>(), any::<u16>()),
                (any::<[u8; 32]>(), any::<u64>(), sig()),
                (any::<u16>(), any::<[u8; 32]>())
            )
                .prop_map(
                    |(
                        (origin, epoch, base, chain_len),
                        (anchor, timestamp_ms, signature),
                        (s, proof),
                    )| {
                        Message::Announcement(Announcement {
                            cert: std::sync::Arc::new(OriginCert {
                                origin,
                                epoch,
                                base: Seqno(base),
                                chain_len,
                                anchor,
                                timestamp_ms,
                                signature,
                            }),
                            seqno: Seqno(s),
                            proof,
                        })
                    }
                ),
            (node(), cert_ref(), any::<u16>(), any::<[u8; 32]>()).prop_map(
                |(origin, cert, s, proof)| Message::SeqnoProof(SeqnoProof {
                    origin,
                    cert,
                    seqno: Seqno(s),
                    proof,
                })
            ),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(node(), 0..20),
                sig()
            )
                .prop_map(|(epoch, issued_ms, revoked, signature)| {
                    Message::Revocation(RevocationList {
                        epoch,
                        issued_ms,
                        revoked,
                        signature,
                    })
                }),
            (
                node(),
                node(),
                any::<u8>(),
                proptest::collection::vec(any::<u8>(), 0..1500)
            )
                .prop_map(|(src, dst, hop_limit, payload)| Message::Datagram {
                    src,
                    dst,
                    hop_limit,
                    payload
                }),
            (node(), node(), node()).prop_map(|(reporter, src, dst)| Message::Unreachable {
                reporter,
                src,
                dst
            }),
            node().prop_map(|origin| Message::RouteRequest { origin }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(msg in message()) {
            let bytes = msg.to_bytes().unwrap();
            prop_assert_eq!(bytes.len(), msg.encoded_len());
            prop_assert_eq!(decode_exact(&bytes).unwrap(), msg.clone());
            // Every strict prefix asks for more bytes rather than failing or panicking.
            for cut in [0, 1, 3, bytes.len() / 2, bytes.len() - 1] {
                prop_assert_eq!(decode_frame(&bytes[..cut]).unwrap(), Decoded::NeedMore);
            }
        }

        #[test]
        fn stream_of_frames_decodes_in_order(msgs in proptest::collection::vec(message(), 1..8)) {
            let mut buf = Vec::new();
            for m in &msgs {
                m.encode(&mut buf).unwrap();
            }
            let mut at = 0;
            let mut out = Vec::new();
            while at < buf.len() {
                match decode_frame(&buf[at..]).unwrap() {
                    Decoded::Message(m, used) => { out.push(m); at += used; }
                    Decoded::NeedMore => prop_assert!(false, "complete buffer reported NeedMore"),
                }
            }
            prop_assert_eq!(out, msgs);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4000)) {
            let _ = decode_frame(&bytes);
            let _ = decode_exact(&bytes);
        }

        #[test]
        fn seqno_order_is_antisymmetric(a in any::<u16>(), b in any::<u16>()) {
            let (a, b) = (Seqno(a), Seqno(b));
            prop_assert!(!(a.is_newer_than(b) && b.is_newer_than(a)));
            prop_assert!(!a.is_newer_than(a));
            prop_assert!(a.next().is_newer_than(a));
        }
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(decode_frame(&[2, 1, 0, 0]), Err(WireError::Version(2)));
        assert_eq!(decode_frame(&[9]), Err(WireError::Version(9)));
        assert_eq!(
            decode_frame(&[1, 99, 0, 0]),
            Err(WireError::UnknownType(99))
        );
        assert_eq!(
            decode_frame(&[1, ty::HELLO, 0, 2, 0, 0]),
            Err(WireError::BodyLength {
                kind: "hello",
                expected: 14,
                got: 2
            })
        );
        let mut too_many = vec![1, ty::UPDATE, 0, 2];
        too_many.extend_from_slice(&(MAX_UPDATE_ENTRIES as u16 + 1).to_be_bytes());
        assert!(matches!(
            decode_frame(&too_many),
            Err(WireError::TooLong { .. })
        ));
        let big = Message::Datagram {
            src: NodeId([0; 32]),
            dst: NodeId([0; 32]),
            hop_limit: 1,
            payload: vec![0; MAX_PAYLOAD_LEN + 1],
        };
        assert!(matches!(big.to_bytes(), Err(WireError::TooLong { .. })));
        assert!(decode_exact(&[1, ty::HELLO, 0]).is_err());
        let mut req = Message::AnnouncementRequest {
            origin: NodeId([0; 32]),
            seqno: Seqno(1),
            have: None,
        }
        .to_bytes()
        .unwrap();
        let mut stray = req.clone();
        stray[HEADER_LEN + 40] = 7;
        assert!(matches!(
            decode_exact(&stray),
            Err(WireError::BadValue { .. })
        ));
        req[HEADER_LEN + 34] = 2;
        assert_eq!(
            decode_exact(&req),
            Err(WireError::BadValue {
                what: "announcement request certificate flag",
                value: 2
            })
        );
    }

    #[test]
    fn seqno_wraps_modulo_2_16() {
        assert!(Seqno(0).is_newer_than(Seqno(u16::MAX)));
        assert!(Seqno(0x7fff).is_newer_than(Seqno(0)));
        assert!(!Seqno(0x8000).is_newer_than(Seqno(0)));
        assert_eq!(Metric(10).plus(5), Metric(15));
        assert_eq!(Metric::INFINITY.plus(1), Metric::INFINITY);
        assert_eq!(Metric(u16::MAX - 2).plus(10), Metric(u16::MAX - 1));
    }
}
