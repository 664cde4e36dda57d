//! The on-disk record format of the embedded log, as pure functions
//! (sans-IO): encode a record into bytes, decode one record from bytes, scan
//! a whole segment. Nothing here touches a file, so the fuzzer and the
//! tests drive exactly the code that recovery runs.
//!
//! ```text
//! record  = len:u32le  crc:u32le  body[len]          crc = CRC32C(body)
//! body    = kind:u8  seq:u64le  time_ns:u64le  rest
//! rest    = (kind 1, message)  subject_len:u16le subject
//!                              msg_id_len:u8 msg_id          (0 = none)
//!                              header_count:u16le (name_len:u16le name value_len:u16le value)*
//!                              payload_len:u32le payload
//!         | (kind 2, delete)   nothing: `seq` is the message deleted
//!         | (kind 3, floor)    nothing: every message below `seq` is gone
//! ```
//!
//! Every length is bounded before anything is allocated; the body must be
//! consumed exactly; strings are UTF-8 and the subject and headers obey the
//! same rules as at publish time, so a decoded record is always one the bus
//! could have written.

use bytes::Bytes;

use crate::backend::{Headers, validate_header, validate_msg_id};
use crate::subject::{MAX_SUBJECT_LEN, Subject};

/// Bytes before the body: length and CRC.
pub const RECORD_PREFIX_LEN: usize = 8;
/// Fixed part of every body: kind, sequence, timestamp.
pub const BODY_FIXED_LEN: usize = 17;
/// Largest payload a record may carry (hard limit; the configured message
/// limit must be below it).
pub const MAX_PAYLOAD_LEN: usize = 16 << 20;
/// Largest body: payload plus room for subject, id and headers.
pub const MAX_BODY_LEN: usize = MAX_PAYLOAD_LEN + (1 << 20);

/// Most headers in a record: a publisher's limit plus the dead-letter
/// headers the bus adds.
pub const MAX_RECORD_HEADERS: usize = crate::backend::MAX_HEADERS + 16;

const KIND_MESSAGE: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_FLOOR: u8 = 3;

/// A stored message as the log holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    /// Stream sequence.
    pub seq: u64,
    /// Publish time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// The subject it was published to.
    pub subject: Subject,
    /// Dedup id given by the publisher.
    pub msg_id: Option<String>,
    /// Headers, in publish order.
    pub headers: Headers,
    /// The payload.
    pub payload: Bytes,
}

impl MessageRecord {
    /// Encoded size in bytes, prefix included.
    pub fn encoded_len(&self) -> usize {
        RECORD_PREFIX_LEN
            + BODY_FIXED_LEN
            + 2
            + self.subject.as_str().len()
            + 1
            + self.msg_id.as_ref().map_or(0, String::len)
            + 2
            + self
                .headers
                .iter()
                .map(|(n, v)| 4 + n.len() + v.len())
                .sum::<usize>()
            + 4
            + self.payload.len()
    }
}

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A published message.
    Message(MessageRecord),
    /// Message `seq` was deleted (work-queue ack, dead-letter replay).
    Delete {
        /// The deleted message.
        seq: u64,
        /// When.
        time_ns: u64,
    },
    /// Every message below `seq` is gone (retention limits).
    Floor {
        /// The new lowest sequence that may still exist.
        seq: u64,
        /// When.
        time_ns: u64,
    },
}

impl Record {
    /// The sequence number the record carries.
    pub fn seq(&self) -> u64 {
        match self {
            Record::Message(m) => m.seq,
            Record::Delete { seq, .. } | Record::Floor { seq, .. } => *seq,
        }
    }

    /// Encoded size in bytes, prefix included.
    pub fn encoded_len(&self) -> usize {
        match self {
            Record::Message(m) => m.encoded_len(),
            _ => RECORD_PREFIX_LEN + BODY_FIXED_LEN,
        }
    }
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The length field is outside the allowed range.
    #[error("record length {len} is outside {BODY_FIXED_LEN}..={MAX_BODY_LEN}")]
    BadLength {
        /// The length field.
        len: u32,
    },
    /// The CRC does not match the body.
    #[error("record CRC32C is {found:#010x} but the body hashes to {computed:#010x}")]
    Crc {
        /// CRC stored in the record.
        found: u32,
        /// CRC of the body as read.
        computed: u32,
    },
    /// Unknown record kind.
    #[error("unknown record kind {0}")]
    Kind(u8),
    /// A field runs past the end of the body.
    #[error("field {field} runs past the end of the record body")]
    Truncated {
        /// The field.
        field: &'static str,
    },
    /// Bytes left after the last field.
    #[error("{0} bytes left after the last field of the record body")]
    Trailing(usize),
    /// A field breaks its rule.
    #[error("field {field} is invalid: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A message sequence did not increase within a segment.
    #[error("message sequence {seq} follows {previous}; sequences must increase")]
    OutOfOrder {
        /// The sequence found.
        seq: u64,
        /// The previous message sequence.
        previous: u64,
    },
    /// A message cannot be encoded within the limits.
    #[error("record would be {size} bytes; the hard limit is {MAX_BODY_LEN}")]
    TooLarge {
        /// Encoded body size.
        size: usize,
    },
}

/// Appends the encoding of `record` to `out`.
pub fn encode_record(record: &Record, out: &mut Vec<u8>) -> Result<(), RecordError> {
    match record {
        Record::Message(m) => encode_message(m, out),
        Record::Delete { seq, time_ns } => encode(KIND_DELETE, *seq, *time_ns, None, out),
        Record::Floor { seq, time_ns } => encode(KIND_FLOOR, *seq, *time_ns, None, out),
    }
}

/// Appends the encoding of a message record to `out` (the same bytes as
/// [`encode_record`] of `Record::Message`).
pub fn encode_message(m: &MessageRecord, out: &mut Vec<u8>) -> Result<(), RecordError> {
    encode(KIND_MESSAGE, m.seq, m.time_ns, Some(m), out)
}

fn encode(
    kind: u8,
    seq: u64,
    time_ns: u64,
    message: Option<&MessageRecord>,
    out: &mut Vec<u8>,
) -> Result<(), RecordError> {
    let total = message.map_or(
        RECORD_PREFIX_LEN + BODY_FIXED_LEN,
        MessageRecord::encoded_len,
    );
    let body_len = total - RECORD_PREFIX_LEN;
    if body_len > MAX_BODY_LEN {
        return Err(RecordError::TooLarge { size: body_len });
    }
    let start = out.len();
    out.reserve(total);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.push(kind);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&time_ns.to_le_bytes());
    if let Some(m) = message {
        let field = |field: &'static str, reason: String| RecordError::Field { field, reason };
        let subject = m.subject.as_str().as_bytes();
        out.extend_from_slice(&(subject.len() as u16).to_le_bytes());
        out.extend_from_slice(subject);
        let id = m.msg_id.as_deref().unwrap_or("");
        let id_len = u8::try_from(id.len())
            .map_err(|_| field("msg_id", format!("is {} bytes; at most 255", id.len())))?;
        out.push(id_len);
        out.extend_from_slice(id.as_bytes());
        let count =
            u16::try_from(m.headers.len()).map_err(|_| field("headers", "too many".into()))?;
        out.extend_from_slice(&count.to_le_bytes());
        for (n, v) in m.headers.iter() {
            let nl = u16::try_from(n.len()).map_err(|_| field("header name", "too long".into()))?;
            let vl =
                u16::try_from(v.len()).map_err(|_| field("header value", "too long".into()))?;
            out.extend_from_slice(&nl.to_le_bytes());
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(&vl.to_le_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(&(m.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&m.payload);
    }
    let crc = crc32c::crc32c(&out[start + RECORD_PREFIX_LEN..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len() - start, total);
    Ok(())
}

/// Result of decoding from the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A record and the number of bytes it used.
    Record(Record, usize),
    /// The buffer holds only the start of a record (`need` bytes in all).
    Incomplete {
        /// Bytes needed for the whole record, when known.
        need: usize,
    },
}

/// Decodes one record from the front of `buf`.
pub fn decode_record(buf: &[u8]) -> Result<Decoded, RecordError> {
    if buf.len() < RECORD_PREFIX_LEN {
        return Ok(Decoded::Incomplete {
            need: RECORD_PREFIX_LEN,
        });
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let body_len = len as usize;
    if !(BODY_FIXED_LEN..=MAX_BODY_LEN).contains(&body_len) {
        return Err(RecordError::BadLength { len });
    }
    let total = RECORD_PREFIX_LEN + body_len;
    if buf.len() < total {
        return Ok(Decoded::Incomplete { need: total });
    }
    let found = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[RECORD_PREFIX_LEN..total];
    let computed = crc32c::crc32c(body);
    if found != computed {
        return Err(RecordError::Crc { found, computed });
    }
    Ok(Decoded::Record(decode_body(body)?, total))
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], RecordError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(RecordError::Truncated { field })?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, RecordError> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, RecordError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, RecordError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, RecordError> {
        let b = self.take(8, field)?;
        let mut a = [0; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn str(&mut self, n: usize, field: &'static str) -> Result<&'a str, RecordError> {
        std::str::from_utf8(self.take(n, field)?).map_err(|e| RecordError::Field {
            field,
            reason: format!("not UTF-8: {e}"),
        })
    }
}

fn decode_body(body: &[u8]) -> Result<Record, RecordError> {
    let mut r = Reader { buf: body, at: 0 };
    let kind = r.u8("kind")?;
    let seq = r.u64("seq")?;
    let time_ns = r.u64("time")?;
    if seq == 0 {
        return Err(RecordError::Field {
            field: "seq",
            reason: "is 0; sequences start at 1".into(),
        });
    }
    let record = match kind {
        KIND_MESSAGE => {
            let sl = r.u16("subject length")? as usize;
            if sl > MAX_SUBJECT_LEN {
                return Err(RecordError::Field {
                    field: "subject",
                    reason: format!("is {sl} bytes; at most {MAX_SUBJECT_LEN}"),
                });
            }
            let subject = Subject::new(r.str(sl, "subject")?).map_err(|e| RecordError::Field {
                field: "subject",
                reason: e.to_string(),
            })?;
            let il = r.u8("msg_id length")? as usize;
            let msg_id = if il == 0 {
                None
            } else {
                let id = r.str(il, "msg_id")?;
                validate_msg_id(id).map_err(|e| RecordError::Field {
                    field: "msg_id",
                    reason: e.to_string(),
                })?;
                Some(id.to_owned())
            };
            let count = r.u16("header count")? as usize;
            if count > MAX_RECORD_HEADERS {
                return Err(RecordError::Field {
                    field: "headers",
                    reason: format!("{count} headers; at most {MAX_RECORD_HEADERS}"),
                });
            }
            let mut headers = Headers::new();
            for _ in 0..count {
                let nl = r.u16("header name length")? as usize;
                let name = r.str(nl, "header name")?;
                let vl = r.u16("header value length")? as usize;
                let value = r.str(vl, "header value")?;
                validate_header(name, value).map_err(|e| RecordError::Field {
                    field: "header",
                    reason: e.to_string(),
                })?;
                headers.push_unchecked(name.to_owned(), value.to_owned());
            }
            let pl = r.u32("payload length")? as usize;
            if pl > MAX_PAYLOAD_LEN {
                return Err(RecordError::Field {
                    field: "payload",
                    reason: format!("is {pl} bytes; at most {MAX_PAYLOAD_LEN}"),
                });
            }
            let payload = Bytes::copy_from_slice(r.take(pl, "payload")?);
            Record::Message(MessageRecord {
                seq,
                time_ns,
                subject,
                msg_id,
                headers,
                payload,
            })
        }
        KIND_DELETE => Record::Delete { seq, time_ns },
        KIND_FLOOR => Record::Floor { seq, time_ns },
        other => return Err(RecordError::Kind(other)),
    };
    if r.at != body.len() {
        return Err(RecordError::Trailing(body.len() - r.at));
    }
    Ok(record)
}

/// How a segment scan ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// Every byte belonged to a valid record.
    Clean,
    /// The last record is cut short (a torn write).
    Incomplete {
        /// Offset where it starts.
        at: usize,
    },
    /// Bytes at `at` are not a valid record.
    Corrupt {
        /// Offset of the bad record.
        at: usize,
        /// Why.
        error: RecordError,
    },
}

/// A record found by a scan, with its place in the segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// Byte offset of the record in the segment.
    pub offset: usize,
    /// Encoded length.
    pub len: usize,
    /// The record.
    pub record: Record,
}

/// The result of scanning a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The valid records, in order.
    pub records: Vec<Located>,
    /// Length of the valid prefix; recovery truncates the file here.
    pub valid_len: usize,
    /// How the scan ended.
    pub tail: Tail,
}

/// Scans a whole segment. Records are accepted while they decode and
/// message sequences increase (and are above `after`, the last message
/// sequence of the previous segment); the scan stops at the first bad or
/// incomplete record.
pub fn scan_segment(bytes: &[u8], after: u64) -> Scan {
    let mut records = Vec::new();
    let mut at = 0;
    let mut previous = after;
    let tail = loop {
        if at == bytes.len() {
            break Tail::Clean;
        }
        match decode_record(&bytes[at..]) {
            Ok(Decoded::Record(record, used)) => {
                if let Record::Message(m) = &record {
                    if m.seq <= previous {
                        break Tail::Corrupt {
                            at,
                            error: RecordError::OutOfOrder {
                                seq: m.seq,
                                previous,
                            },
                        };
                    }
                    previous = m.seq;
                }
                records.push(Located {
                    offset: at,
                    len: used,
                    record,
                });
                at += used;
            }
            Ok(Decoded::Incomplete { .. }) => break Tail::Incomplete { at },
            Err(error) => break Tail::Corrupt { at, error },
        }
    };
    Scan {
        records,
        valid_len: at,
        tail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(seq: u64, payload: &[u8]) -> Record {
        let mut headers = Headers::new();
        headers.append("Trace", "abc").unwrap();
        Record::Message(MessageRecord {
            seq,
            time_ns: seq.wrapping_mul(7),
            subject: Subject::new("telemetry.node.a").unwrap(),
            msg_id: Some(format!("id-{seq}")),
            headers,
            payload: Bytes::copy_from_slice(payload),
        })
    }

    fn encode(r: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(r, &mut out).unwrap();
        out
    }

    #[test]
    fn round_trip_each_kind() {
        for r in [
            message(1, b"hello"),
            message(2, b""),
            Record::Delete { seq: 7, time_ns: 9 },
            Record::Floor { seq: 3, time_ns: 9 },
        ] {
            let bytes = encode(&r);
            assert_eq!(bytes.len(), r.encoded_len());
            assert_eq!(
                decode_record(&bytes),
                Ok(Decoded::Record(r.clone(), bytes.len()))
            );
        }
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let bytes = encode(&message(5, b"payload"));
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            match decode_record(&b) {
                Ok(Decoded::Record(r, _)) => panic!("bit {i} flipped yet decoded {r:?}"),
                Ok(Decoded::Incomplete { .. }) | Err(_) => {}
            }
        }
    }

    #[test]
    fn scan_stops_at_a_torn_tail() {
        let mut seg = Vec::new();
        for s in 1..=3 {
            encode_record(&message(s, b"x"), &mut seg).unwrap();
        }
        let full = seg.len();
        let fourth = encode(&message(4, b"yyyy"));
        seg.extend_from_slice(&fourth[..fourth.len() - 3]);
        let scan = scan_segment(&seg, 0);
        assert_eq!(scan.records.len(), 3);
        assert_eq!(scan.valid_len, full);
        assert_eq!(scan.tail, Tail::Incomplete { at: full });
        // Zeroes after the valid prefix (preallocated or never written) are corrupt, not records.
        let mut z = seg[..full].to_vec();
        z.extend_from_slice(&[0; 64]);
        assert!(matches!(scan_segment(&z, 0).tail, Tail::Corrupt { at, .. } if at == full));
    }

    #[test]
    fn scan_refuses_sequences_that_do_not_increase() {
        let mut seg = encode(&message(5, b"a"));
        let first = seg.len();
        encode_record(&message(5, b"b"), &mut seg).unwrap();
        let scan = scan_segment(&seg, 0);
        assert_eq!(scan.records.len(), 1);
        assert!(
            matches!(scan.tail, Tail::Corrupt { at, error: RecordError::OutOfOrder { seq: 5, previous: 5 } } if at == first)
        );
        assert!(matches!(
            scan_segment(&encode(&message(3, b"")), 3).tail,
            Tail::Corrupt { .. }
        ));
    }

    #[test]
    fn lengths_are_bounded_before_allocation() {
        let mut b = vec![0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0];
        b.extend_from_slice(&[0; 32]);
        assert!(matches!(
            decode_record(&b),
            Err(RecordError::BadLength { .. })
        ));
        assert_eq!(
            decode_record(&[1, 2]),
            Ok(Decoded::Incomplete {
                need: RECORD_PREFIX_LEN
            })
        );
    }

    proptest! {
        #[test]
        fn decoder_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(Decoded::Record(r, used)) = decode_record(&bytes) {
                prop_assert_eq!(&encode(&r)[..], &bytes[..used]);
            }
            let scan = scan_segment(&bytes, 0);
            prop_assert!(scan.valid_len <= bytes.len());
        }

        #[test]
        fn messages_round_trip(seq in 1u64.., payload in proptest::collection::vec(any::<u8>(), 0..300), cut in any::<usize>()) {
            let r = message(seq, &payload);
            let bytes = encode(&r);
            prop_assert_eq!(decode_record(&bytes), Ok(Decoded::Record(r, bytes.len())));
            let cut = cut % bytes.len();
            let incomplete = matches!(decode_record(&bytes[..cut]), Ok(Decoded::Incomplete { .. }));
            prop_assert!(incomplete);
        }
    }
}
