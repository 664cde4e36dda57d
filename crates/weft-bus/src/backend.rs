//! The backend trait that the embedded log and NATS JetStream implement,
//! and the types it speaks.
//!
//! The model is JetStream's, so the NATS backend maps it one to one:
//! - a **stream** captures the subjects matching its filters and keeps the
//!   messages by a retention policy (limits: max age, bytes, count; or work
//!   queue: a message is deleted once acknowledged);
//! - **publish** returns the stream sequence once the message is durable; a
//!   message id seen within the stream's duplicate window (JetStream's
//!   `Nats-Msg-Id`) returns the original sequence with `duplicate: true`;
//! - **durable pull consumers** fetch batches and acknowledge each message
//!   (ack, nak with delay, in progress, term); an unacknowledged message is
//!   redelivered after `ack_wait`; after `max_deliver` deliveries (or a term)
//!   it is moved to the stream's **dead-letter stream** (`<stream>_DLQ`) with
//!   the reason, the delivery count and its original headers. Both
//!   backends make that move when a fetch meets the message past
//!   `max_deliver` (NATS advisories are not stored, so one sent while no
//!   backend listens would lose the message silently).
//!
//! The trait uses `impl Future + Send` returns so implementations can be
//! written with `async fn` and driven from any tokio task.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::subject::{Subject, SubjectError, SubjectFilter};

/// Default duplicate window (JetStream's default too).
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Default largest message (payload plus headers), 1 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Longest stream or consumer name.
pub const MAX_NAME_LEN: usize = 64;
/// Longest message id.
pub const MAX_MSG_ID_LEN: usize = 128;
/// Most headers on one message.
pub const MAX_HEADERS: usize = 64;
/// Longest header name.
pub const MAX_HEADER_NAME_LEN: usize = 128;
/// Longest header value.
pub const MAX_HEADER_VALUE_LEN: usize = 4096;
/// Suffix of a dead-letter stream's name; user streams may not end with it.
pub const DLQ_SUFFIX: &str = "_DLQ";
/// Default `ack_wait`.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// Default `max_deliver`.
pub const DEFAULT_MAX_DELIVER: u32 = 5;
/// Default `max_ack_pending`.
pub const DEFAULT_MAX_ACK_PENDING: u32 = 1000;

/// Header names set on a dead letter (the original headers follow them).
pub mod dlq_headers {
    /// Why the message was dead-lettered.
    pub const REASON: &str = "Weft-Dlq-Reason";
    /// The stream it came from.
    pub const STREAM: &str = "Weft-Dlq-Stream";
    /// The consumer that gave up on it.
    pub const CONSUMER: &str = "Weft-Dlq-Consumer";
    /// Its sequence in the original stream.
    pub const SEQUENCE: &str = "Weft-Dlq-Sequence";
    /// The subject it was published to.
    pub const SUBJECT: &str = "Weft-Dlq-Subject";
    /// How many times it was delivered.
    pub const DELIVERIES: &str = "Weft-Dlq-Deliveries";
    /// Its original message id, if it had one.
    pub const MSG_ID: &str = "Weft-Dlq-Msg-Id";
    /// Prefix shared by all of them (reserved for the bus).
    pub const PREFIX: &str = "Weft-Dlq-";
}

/// Errors of the bus. Each says what failed, with the value, and what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// No stream captures the subject.
    #[error("no stream captures subject {subject:?}; create a stream whose subjects match it")]
    NoStream {
        /// The subject published to.
        subject: String,
    },
    /// The named stream does not exist.
    #[error("stream {name:?} does not exist")]
    StreamNotFound {
        /// The name.
        name: String,
    },
    /// A stream with this name exists with another configuration.
    #[error(
        "stream {name:?} already exists with a different configuration; delete it first or use another name"
    )]
    StreamExists {
        /// The name.
        name: String,
    },
    /// Two streams would capture the same subjects.
    #[error(
        "subjects {filter:?} of stream {stream:?} overlap {other_filter:?} of stream {other:?}; a subject must belong to one stream"
    )]
    SubjectsOverlap {
        /// The new stream.
        stream: String,
        /// Its overlapping filter.
        filter: String,
        /// The existing stream.
        other: String,
        /// The existing stream's filter.
        other_filter: String,
    },
    /// The named consumer does not exist.
    #[error("consumer {name:?} does not exist on stream {stream:?}")]
    ConsumerNotFound {
        /// The stream.
        stream: String,
        /// The consumer.
        name: String,
    },
    /// A consumer with this name exists with another configuration.
    #[error(
        "consumer {name:?} on stream {stream:?} already exists with a different configuration; delete it first"
    )]
    ConsumerExists {
        /// The stream.
        stream: String,
        /// The consumer.
        name: String,
    },
    /// A work-queue stream allows one consumer per subject.
    #[error(
        "work-queue stream {stream:?}: consumer {name:?} would share subjects with consumer {other:?}; give them disjoint filter subjects"
    )]
    WorkQueueOverlap {
        /// The stream.
        stream: String,
        /// The new consumer.
        name: String,
        /// The existing consumer.
        other: String,
    },
    /// A name breaks the naming rule.
    #[error("{kind} name {name:?} is invalid: {reason}")]
    InvalidName {
        /// "stream" or "consumer".
        kind: &'static str,
        /// The name.
        name: String,
        /// The rule broken.
        reason: String,
    },
    /// A configuration value is out of range.
    #[error("invalid {what}: {reason}")]
    InvalidConfig {
        /// The setting.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A subject or filter is invalid.
    #[error(transparent)]
    Subject(#[from] SubjectError),
    /// The message is over the size limit.
    #[error(
        "message is {size} bytes (payload plus headers); the limit is {limit}; send large data by reference or raise the limit"
    )]
    MessageTooLarge {
        /// Its size.
        size: usize,
        /// The limit that applied.
        limit: usize,
    },
    /// A header is invalid.
    #[error("header {name:?} is invalid: {reason}")]
    InvalidHeader {
        /// The header name (shortened).
        name: String,
        /// The rule broken.
        reason: String,
    },
    /// A message id is invalid.
    #[error("message id is invalid: {reason}")]
    InvalidMsgId {
        /// The rule broken.
        reason: String,
    },
    /// An ack token that this backend did not issue.
    #[error("ack token {token:?} is malformed; pass the token of a delivery unchanged")]
    BadAckToken {
        /// The token.
        token: String,
    },
    /// The message is not in the stream (never was, or removed).
    #[error("stream {stream:?} has no message {sequence}")]
    MessageNotFound {
        /// The stream.
        stream: String,
        /// The sequence.
        sequence: u64,
    },
    /// A dead letter could not be read as one.
    #[error("message {sequence} of dead-letter stream {stream:?} is not a dead letter: {reason}")]
    NotADeadLetter {
        /// The dead-letter stream.
        stream: String,
        /// The sequence.
        sequence: u64,
        /// What is missing.
        reason: String,
    },
    /// The bus server (NATS) could not be reached or did not answer.
    #[error("{what} at {server} failed: {message}; check that the server is running and reachable")]
    Unavailable {
        /// The request that failed.
        what: String,
        /// The server's address.
        server: String,
        /// What the client reported.
        message: String,
    },
    /// A file operation failed.
    #[error("{op} {path}: {message}; check the disk and permissions, then reopen the bus")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
    /// Stored data is corrupt somewhere recovery cannot repair by truncation.
    #[error(
        "{path} is corrupt at byte {offset}: {reason}; restore the stream from a backup or move the file away to drop it"
    )]
    Corrupt {
        /// The file.
        path: String,
        /// Byte offset of the bad data.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// An earlier write or fsync failed; nothing more is accepted.
    #[error(
        "stream {stream:?} stopped accepting writes after a failed write: {reason}; fix the disk and reopen the bus (the outcome of publishes in flight is unknown)"
    )]
    Poisoned {
        /// The stream.
        stream: String,
        /// The first failure.
        reason: String,
    },
    /// The stream was deleted or the bus closed while waiting.
    #[error("stream {stream:?} was closed or deleted")]
    Closed {
        /// The stream.
        stream: String,
    },
}

impl BusError {
    /// The refusal reason this error is counted under, for errors caused by
    /// the caller's input (none for failures of the bus itself).
    pub fn refusal_reason(&self) -> Option<&'static str> {
        Some(match self {
            BusError::NoStream { .. } => "no_stream",
            BusError::Subject(_) => "bad_subject",
            BusError::MessageTooLarge { .. } => "too_large",
            BusError::InvalidHeader { .. } => "bad_header",
            BusError::InvalidMsgId { .. } => "bad_msg_id",
            BusError::BadAckToken { .. } => "bad_ack_token",
            _ => return None,
        })
    }

    /// An [`BusError::Io`] for `op` on `path`.
    pub fn io(op: &'static str, path: &std::path::Path, e: &std::io::Error) -> Self {
        BusError::Io {
            op,
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}

/// Validates a stream or consumer name: 1 to [`MAX_NAME_LEN`] of
/// `[A-Za-z0-9_-]`.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), BusError> {
    let bad = |reason: String| BusError::InvalidName {
        kind,
        name: name.chars().take(MAX_NAME_LEN + 8).collect(),
        reason,
    };
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(bad(format!(
            "must be 1 to {MAX_NAME_LEN} bytes, is {}",
            name.len()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(bad(format!(
            "contains {c:?}; allowed are A-Z, a-z, 0-9, '_' and '-'"
        )));
    }
    Ok(())
}

/// Validates a message id: 1 to [`MAX_MSG_ID_LEN`] visible ASCII bytes.
pub fn validate_msg_id(id: &str) -> Result<(), BusError> {
    if id.is_empty() || id.len() > MAX_MSG_ID_LEN {
        return Err(BusError::InvalidMsgId {
            reason: format!("must be 1 to {MAX_MSG_ID_LEN} bytes, is {}", id.len()),
        });
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(BusError::InvalidMsgId {
            reason: "may contain only visible ASCII characters".into(),
        });
    }
    Ok(())
}

/// Validates one header: the name is 1 to [`MAX_HEADER_NAME_LEN`] visible
/// ASCII bytes without `:`; the value at most [`MAX_HEADER_VALUE_LEN`]
/// bytes without CR, LF or NUL.
pub fn validate_header(name: &str, value: &str) -> Result<(), BusError> {
    let bad = |reason: String| BusError::InvalidHeader {
        name: name.chars().take(MAX_HEADER_NAME_LEN).collect(),
        reason,
    };
    if name.is_empty() || name.len() > MAX_HEADER_NAME_LEN {
        return Err(bad(format!(
            "name must be 1 to {MAX_HEADER_NAME_LEN} bytes"
        )));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err(bad("name may hold only visible ASCII other than ':'".into()));
    }
    if value.len() > MAX_HEADER_VALUE_LEN {
        return Err(bad(format!(
            "value is {} bytes; at most {MAX_HEADER_VALUE_LEN}",
            value.len()
        )));
    }
    if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(bad("value may not contain CR, LF or NUL".into()));
    }
    Ok(())
}

/// Message headers: ordered name/value pairs, names may repeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a header after validating it.
    pub fn append(&mut self, name: &str, value: &str) -> Result<(), BusError> {
        validate_header(name, value)?;
        if self.0.len() >= MAX_HEADERS {
            return Err(BusError::InvalidHeader {
                name: name.to_owned(),
                reason: format!("a message may carry at most {MAX_HEADERS} headers"),
            });
        }
        self.0.push((name.to_owned(), value.to_owned()));
        Ok(())
    }

    pub(crate) fn push_unchecked(&mut self, name: String, value: String) {
        self.0.push((name, value));
    }

    /// The first value of a header (names compare case-insensitively).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes the headers take (names plus values).
    pub fn byte_len(&self) -> usize {
        self.0.iter().map(|(n, v)| n.len() + v.len()).sum()
    }

    /// Checks every header and the count (for headers built by deserializing).
    pub fn validate(&self) -> Result<(), BusError> {
        if self.0.len() > MAX_HEADERS {
            return Err(BusError::InvalidHeader {
                name: String::new(),
                reason: format!("{} headers; at most {MAX_HEADERS}", self.0.len()),
            });
        }
        self.0.iter().try_for_each(|(n, v)| validate_header(n, v))
    }

    /// The headers without those whose name starts with `prefix`.
    pub fn without_prefix(&self, prefix: &str) -> Headers {
        Headers(
            self.0
                .iter()
                .filter(|(n, _)| !starts_with_ignore_case(n, prefix))
                .cloned()
                .collect(),
        )
    }
}

pub(crate) fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Where it goes; the stream is the one capturing this subject.
    pub subject: Subject,
    /// Headers. Names starting with `Nats-` or `Weft-Dlq-` are reserved.
    pub headers: Headers,
    /// Dedup id (JetStream `Nats-Msg-Id`).
    pub msg_id: Option<String>,
    /// The payload.
    pub payload: Bytes,
}

impl OutgoingMessage {
    /// A message with no headers and no id.
    pub fn new(subject: Subject, payload: impl Into<Bytes>) -> Self {
        Self {
            subject,
            headers: Headers::new(),
            msg_id: None,
            payload: payload.into(),
        }
    }

    /// Sets the dedup id.
    pub fn with_msg_id(mut self, id: impl Into<String>) -> Self {
        self.msg_id = Some(id.into());
        self
    }

    /// Replaces the headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Size counted against the message limit: payload plus headers.
    pub fn size(&self) -> usize {
        self.payload.len() + self.headers.byte_len()
    }

    /// Checks id, headers and reserved header names.
    pub fn validate(&self) -> Result<(), BusError> {
        if let Some(id) = &self.msg_id {
            validate_msg_id(id)?;
        }
        self.headers.validate()?;
        for (n, _) in self.headers.iter() {
            if starts_with_ignore_case(n, "Nats-")
                || starts_with_ignore_case(n, dlq_headers::PREFIX)
            {
                return Err(BusError::InvalidHeader {
                    name: n.to_owned(),
                    reason: "names starting with Nats- or Weft-Dlq- are reserved for the bus"
                        .into(),
                });
            }
        }
        Ok(())
    }
}

/// How a stream keeps messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Retention {
    /// Keep messages until a limit (age, bytes, count) drops the oldest.
    #[default]
    Limits,
    /// Delete each message once a consumer acknowledges it (the limits
    /// still apply). One consumer per subject.
    WorkQueue,
}

/// A stream's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamConfig {
    /// Name: 1 to 64 of `[A-Za-z0-9_-]`, not ending in `_DLQ`.
    pub name: String,
    /// Subjects captured (filters; must not overlap another stream's).
    pub subjects: Vec<SubjectFilter>,
    /// Retention policy.
    pub retention: Retention,
    /// Drop messages older than this.
    pub max_age: Option<Duration>,
    /// Drop the oldest messages while the stream holds more bytes.
    pub max_bytes: Option<u64>,
    /// Drop the oldest messages while the stream holds more.
    pub max_messages: Option<u64>,
    /// Largest message (payload plus headers) for this stream; the bus-wide
    /// limit applies too.
    pub max_message_size: Option<usize>,
    /// Window in which a repeated message id is a duplicate.
    pub duplicate_window: Duration,
}

impl StreamConfig {
    /// A limits stream with no limits and the default duplicate window.
    pub fn new(name: impl Into<String>, subjects: Vec<SubjectFilter>) -> Self {
        Self {
            name: name.into(),
            subjects,
            retention: Retention::Limits,
            max_age: None,
            max_bytes: None,
            max_messages: None,
            max_message_size: None,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
        }
    }

    /// Checks names, subjects and ranges.
    pub fn validate(&self) -> Result<(), BusError> {
        validate_name("stream", &self.name)?;
        if self.name.ends_with(DLQ_SUFFIX) {
            return Err(BusError::InvalidName {
                kind: "stream",
                name: self.name.clone(),
                reason: format!(
                    "names ending in {DLQ_SUFFIX} are reserved for dead-letter streams"
                ),
            });
        }
        self.validate_limits()
    }

    pub(crate) fn validate_limits(&self) -> Result<(), BusError> {
        if self.subjects.is_empty() || self.subjects.len() > 64 {
            return Err(BusError::InvalidConfig {
                what: "subjects",
                reason: format!(
                    "a stream needs 1 to 64 subject filters, got {}",
                    self.subjects.len()
                ),
            });
        }
        for (i, a) in self.subjects.iter().enumerate() {
            for b in &self.subjects[i + 1..] {
                if a.overlaps(b) {
                    return Err(BusError::InvalidConfig {
                        what: "subjects",
                        reason: format!("filters {a} and {b} of the same stream overlap"),
                    });
                }
            }
        }
        if self.duplicate_window > Duration::from_secs(24 * 3600) {
            return Err(BusError::InvalidConfig {
                what: "duplicate_window",
                reason: format!("{:?} is over the 24 h maximum", self.duplicate_window),
            });
        }
        if self.max_messages == Some(0)
            || self.max_bytes == Some(0)
            || self.max_age == Some(Duration::ZERO)
        {
            return Err(BusError::InvalidConfig {
                what: "limits",
                reason: "max_messages, max_bytes and max_age must be positive when set".into(),
            });
        }
        if self
            .max_message_size
            .is_some_and(|s| s == 0 || s > crate::record::MAX_PAYLOAD_LEN)
        {
            return Err(BusError::InvalidConfig {
                what: "max_message_size",
                reason: format!("must be 1 to {} bytes", crate::record::MAX_PAYLOAD_LEN),
            });
        }
        Ok(())
    }

    /// Whether the stream captures `subject`.
    pub fn captures(&self, subject: &Subject) -> bool {
        self.subjects.iter().any(|f| f.matches(subject))
    }
}

/// What a stream holds now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    /// Messages held.
    pub messages: u64,
    /// Bytes held (encoded records).
    pub bytes: u64,
    /// Lowest sequence held (0 when empty).
    pub first_seq: u64,
    /// Highest sequence ever assigned (0 when none).
    pub last_seq: u64,
}

/// A stream's configuration and state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// Configuration.
    pub config: StreamConfig,
    /// State.
    pub state: StreamState,
    /// Name of its dead-letter stream (none for a dead-letter stream).
    pub dead_letter_stream: Option<String>,
}

/// The answer to a publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishAck {
    /// The stream that stored it.
    pub stream: String,
    /// Its stream sequence (the original one for a duplicate).
    pub sequence: u64,
    /// The id was seen within the duplicate window; nothing new was stored.
    pub duplicate: bool,
}

/// A message as a stream holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The stream.
    pub stream: String,
    /// Its sequence.
    pub sequence: u64,
    /// The subject it was published to.
    pub subject: Subject,
    /// When it was stored, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// Its dedup id.
    pub msg_id: Option<String>,
    /// Headers.
    pub headers: Headers,
    /// Payload.
    pub payload: Bytes,
}

/// Where a new consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DeliverPolicy {
    /// From the first message held.
    #[default]
    All,
    /// Only messages published after the consumer was created.
    New,
    /// From this sequence.
    ByStartSequence(u64),
}

/// A durable pull consumer's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerConfig {
    /// Durable name: 1 to 64 of `[A-Za-z0-9_-]`.
    pub durable_name: String,
    /// Only messages whose subject matches (all of the stream's if none).
    pub filter_subject: Option<SubjectFilter>,
    /// Where to start.
    pub deliver_policy: DeliverPolicy,
    /// Time to acknowledge a delivery before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries before a message is dead-lettered (at least 1).
    pub max_deliver: u32,
    /// Most deliveries awaiting acknowledgement at once.
    pub max_ack_pending: u32,
}

impl ConsumerConfig {
    /// A consumer over the whole stream with the defaults.
    pub fn new(durable_name: impl Into<String>) -> Self {
        Self {
            durable_name: durable_name.into(),
            filter_subject: None,
            deliver_policy: DeliverPolicy::All,
            ack_wait: DEFAULT_ACK_WAIT,
            max_deliver: DEFAULT_MAX_DELIVER,
            max_ack_pending: DEFAULT_MAX_ACK_PENDING,
        }
    }

    /// Checks the name and ranges.
    pub fn validate(&self) -> Result<(), BusError> {
        validate_name("consumer", &self.durable_name)?;
        if self.max_deliver == 0 {
            return Err(BusError::InvalidConfig {
                what: "max_deliver",
                reason: "must be at least 1".into(),
            });
        }
        if self.max_ack_pending == 0 || self.max_ack_pending > 1_000_000 {
            return Err(BusError::InvalidConfig {
                what: "max_ack_pending",
                reason: format!("must be 1 to 1000000, is {}", self.max_ack_pending),
            });
        }
        if self.ack_wait < Duration::from_millis(1)
            || self.ack_wait > Duration::from_secs(24 * 3600)
        {
            return Err(BusError::InvalidConfig {
                what: "ack_wait",
                reason: format!("must be 1 ms to 24 h, is {:?}", self.ack_wait),
            });
        }
        Ok(())
    }
}

/// A consumer's configuration and progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerInfo {
    /// The stream.
    pub stream: String,
    /// Configuration.
    pub config: ConsumerConfig,
    /// Matching messages not yet delivered.
    pub num_pending: u64,
    /// Deliveries awaiting acknowledgement (or redelivery).
    pub num_ack_pending: u64,
    /// Highest stream sequence delivered at least once.
    pub delivered_seq: u64,
}

/// How many messages a fetch asks for and how long it waits for the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchRequest {
    /// Most messages returned.
    pub max_messages: usize,
    /// Longest wait when nothing is available; zero returns at once.
    pub expires: Duration,
}

impl FetchRequest {
    /// Up to `max_messages`, waiting at most `expires`.
    pub fn new(max_messages: usize, expires: Duration) -> Self {
        Self {
            max_messages,
            expires,
        }
    }
}

/// An opaque token naming one delivery, passed back to [`Backend::ack`].
/// (Embedded: stream, consumer, sequence, delivery count; NATS: the reply
/// subject of the delivery.)
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AckToken(pub String);

impl fmt::Display for AckToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One delivery of a message to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The message.
    pub message: StoredMessage,
    /// The consumer.
    pub consumer: String,
    /// Which delivery this is (1 for the first).
    pub delivered: u32,
    /// Pass to [`Backend::ack`].
    pub ack_token: AckToken,
}

/// How a delivery is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckKind {
    /// Processed; never deliver again (work queue: delete it).
    Ack,
    /// Not processed; redeliver after the delay (at once if none).
    Nak(Option<Duration>),
    /// Still working: restart the ack timer.
    InProgress,
    /// Cannot be processed, ever: move it to the dead-letter stream with
    /// this reason.
    Term(Option<String>),
}

/// The dead-letter reason recorded for a [`AckKind::Term`] with `reason`.
pub fn term_reason(reason: Option<&str>) -> String {
    match reason {
        Some(r) => format!("terminated by consumer: {r}"),
        None => "terminated by consumer".to_owned(),
    }
}

/// A message moved to a dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream (for show and replay).
    pub dlq_sequence: u64,
    /// When it was dead-lettered, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// The stream it came from.
    pub stream: String,
    /// The consumer that gave up.
    pub consumer: String,
    /// Its sequence in the original stream.
    pub original_sequence: u64,
    /// The subject it was published to.
    pub original_subject: Subject,
    /// Its original message id.
    pub original_msg_id: Option<String>,
    /// Why it was dead-lettered.
    pub reason: String,
    /// How many times it was delivered.
    pub deliveries: u32,
    /// Its original headers.
    pub headers: Headers,
    /// Its payload.
    pub payload: Bytes,
}

impl DeadLetter {
    /// Reads a dead letter from a message of a dead-letter stream.
    pub fn from_message(m: &StoredMessage) -> Result<Self, BusError> {
        let bad = |reason: String| BusError::NotADeadLetter {
            stream: m.stream.clone(),
            sequence: m.sequence,
            reason,
        };
        let get = |h: &'static str| {
            m.headers
                .get(h)
                .ok_or_else(|| bad(format!("header {h} is missing")))
        };
        let num = |h: &'static str| -> Result<u64, BusError> {
            get(h)?
                .parse::<u64>()
                .map_err(|e| bad(format!("header {h}: {e}")))
        };
        Ok(Self {
            dlq_sequence: m.sequence,
            time_ns: m.time_ns,
            stream: get(dlq_headers::STREAM)?.to_owned(),
            consumer: get(dlq_headers::CONSUMER)?.to_owned(),
            original_sequence: num(dlq_headers::SEQUENCE)?,
            original_subject: Subject::new(get(dlq_headers::SUBJECT)?)
                .map_err(|e| bad(e.to_string()))?,
            original_msg_id: m.headers.get(dlq_headers::MSG_ID).map(str::to_owned),
            reason: get(dlq_headers::REASON)?.to_owned(),
            deliveries: u32::try_from(num(dlq_headers::DELIVERIES)?)
                .map_err(|e| bad(e.to_string()))?,
            headers: m.headers.without_prefix(dlq_headers::PREFIX),
            payload: m.payload.clone(),
        })
    }
}

/// Per-stream counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCounters {
    /// Messages stored.
    pub published: u64,
    /// Publishes answered as duplicates.
    pub duplicates: u64,
    /// Deliveries (first and later).
    pub delivered: u64,
    /// Deliveries after the first.
    pub redelivered: u64,
    /// Acknowledgements.
    pub acked: u64,
    /// Negative acknowledgements.
    pub naked: u64,
    /// Terminations.
    pub terminated: u64,
    /// Messages moved to the dead-letter stream.
    pub dead_lettered: u64,
}

/// Counters the metrics layer reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusCounters {
    /// By stream name.
    pub streams: BTreeMap<String, StreamCounters>,
    /// Refused inputs by reason (`too_large`, `no_stream`, `bad_header`,
    /// `malformed_envelope`, `schema_violation`, ...).
    pub refusals: BTreeMap<String, u64>,
}

/// An event-bus backend. Both the embedded log and NATS JetStream
/// implement it with the same semantics; `crate::conformance` checks them.
pub trait Backend: Send + Sync {
    /// Creates a stream (and its dead-letter stream). Creating it again
    /// with the same configuration returns its info.
    fn create_stream(
        &self,
        config: StreamConfig,
    ) -> impl Future<Output = Result<StreamInfo, BusError>> + Send;

    /// Deletes a stream, its consumers and its dead-letter stream.
    fn delete_stream(&self, name: &str) -> impl Future<Output = Result<(), BusError>> + Send;

    /// A stream's configuration and state.
    fn stream_info(&self, name: &str) -> impl Future<Output = Result<StreamInfo, BusError>> + Send;

    /// Stores a message in the stream capturing its subject; returns once
    /// it is durable.
    fn publish(
        &self,
        message: OutgoingMessage,
    ) -> impl Future<Output = Result<PublishAck, BusError>> + Send;

    /// Reads one message by sequence.
    fn get_message(
        &self,
        stream: &str,
        sequence: u64,
    ) -> impl Future<Output = Result<StoredMessage, BusError>> + Send;

    /// Creates a durable pull consumer. Creating it again with the same
    /// configuration returns its info.
    fn create_consumer(
        &self,
        stream: &str,
        config: ConsumerConfig,
    ) -> impl Future<Output = Result<ConsumerInfo, BusError>> + Send;

    /// A consumer's configuration and progress.
    fn consumer_info(
        &self,
        stream: &str,
        name: &str,
    ) -> impl Future<Output = Result<ConsumerInfo, BusError>> + Send;

    /// Deletes a consumer (its unacknowledged messages stay in the stream).
    fn delete_consumer(
        &self,
        stream: &str,
        name: &str,
    ) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Up to `max_messages` deliveries: due redeliveries first, then new
    /// messages in stream order. Waits up to `expires` for the first.
    fn fetch(
        &self,
        stream: &str,
        consumer: &str,
        request: FetchRequest,
    ) -> impl Future<Output = Result<Vec<Delivery>, BusError>> + Send;

    /// Acknowledges a delivery. Acknowledging a message that is no longer
    /// pending (already acknowledged, dead-lettered) does nothing.
    fn ack(
        &self,
        token: &AckToken,
        kind: AckKind,
    ) -> impl Future<Output = Result<(), BusError>> + Send;

    /// Dead letters of a stream from `from_dlq_sequence` on, at most `limit`.
    fn dlq_list(
        &self,
        stream: &str,
        from_dlq_sequence: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, BusError>> + Send;

    /// One dead letter.
    fn dlq_show(
        &self,
        stream: &str,
        dlq_sequence: u64,
    ) -> impl Future<Output = Result<DeadLetter, BusError>> + Send;

    /// Publishes a dead letter again to its original subject (with its
    /// original headers and payload) and removes it from the dead-letter
    /// stream. Replaying the same dead letter twice within the duplicate
    /// window stores it once.
    fn dlq_replay(
        &self,
        stream: &str,
        dlq_sequence: u64,
    ) -> impl Future<Output = Result<PublishAck, BusError>> + Send;

    /// A snapshot of the counters.
    fn counters(&self) -> BusCounters;
}

/// The dead-letter stream of `stream`.
pub fn dlq_stream_name(stream: &str) -> String {
    format!("{stream}{DLQ_SUFFIX}")
}

/// The subject dead letters of (stream, consumer) are stored under.
pub fn dlq_subject(stream: &str, consumer: &str) -> String {
    format!("$DLQ.{stream}.{consumer}")
}
