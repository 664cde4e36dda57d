//! The NATS JetStream backend: the [`Backend`] trait over a JetStream
//! server, spoken through its JSON API (`$JS.API.*`) on an `async-nats`
//! connection.
//!
//! Mapping:
//! - a stream is a JetStream stream with `allow_direct` (reads use
//!   `$JS.API.DIRECT.GET`); its dead-letter stream `<S>_DLQ` captures
//!   `$DLQ.<S>.>`. Settings JetStream has no field for (the per-stream
//!   message size limit, the duplicate window as asked) are kept in the
//!   stream's description as JSON;
//! - publish is a request with `Nats-Msg-Id` answered by the server's
//!   publish ack (a duplicate answers the original sequence);
//! - a consumer is a durable pull consumer with explicit acks; the ack
//!   token is the delivery's reply subject and acks are sent as requests,
//!   so an `ack` returns once the server has applied it;
//! - a fetch sends only `no_wait` pull requests (`CONSUMER.MSG.NEXT`) and
//!   waits on the client: between two requests it sleeps until a message
//!   is published on the consumer's subjects (a core subscription used as
//!   a hint) or a short poll interval (5 to 50 ms) passes, which is when
//!   redeliveries are picked up.
//!
//! **Why no pull request ever waits on the server.** nats-server (seen on
//! 2.9.10, and the code is the same in later releases) loses a delivery
//! when the only waiting pull request expires, or loses its subscriber,
//! at the moment a redelivery is due: the server takes the message off its
//! redelivery queue and counts the delivery, finds no valid request, drops
//! the request without a `408` (2.9) and "puts the message back" by moving
//! its new-message cursor one back — which is right only for a first
//! delivery. The redelivery is then lost until `ack_wait` passes again,
//! its delivery count is one too high (so it is dead-lettered after fewer
//! real deliveries than `max_deliver`), and the message before the cursor
//! is delivered once more. A `no_wait` request is answered at once when
//! nothing is pending and is otherwise served before the server looks for
//! the next message, so it never expires with a message in hand. The one
//! case where the server holds a `no_wait` request (something is pending
//! but cannot be delivered yet, e.g. `max_ack_pending` is reached) is
//! handled by never abandoning it: a background task keeps its subscription
//! and queues whatever it later receives for the next fetch of that
//! consumer, and no new request is sent for that consumer meanwhile.
//!
//! **Dead-lettering is done by the backend when a fetch sees a message
//! past `max_deliver`, not from the max-deliveries advisory.** The server
//! consumer is created with unlimited deliveries (our `max_deliver` is
//! kept in its description); when a fetch receives delivery
//! `max_deliver + 1` it stores the dead letter (with a dedup id, so a
//! repeat after a crash stores it once), then settles the message on the
//! server (term; ack on a work queue so it is deleted) and does not hand
//! it to the caller. Why: advisories are core NATS messages, not stored;
//! one sent while no backend listens is lost and the message with it (the
//! server stops delivering it after its own `max_deliver`), which breaks
//! "never dropped silently". Left pending on the server, the message is
//! redelivered until some fetch has moved it, across crashes. A term is
//! handled the same way in `ack`: dead letter first, then `+TERM`.
//!
//! Known differences from the embedded backend (see `docs/bus.md`):
//! counters are this process's own; the duplicate window is at most
//! `max_age` (JetStream refuses a longer one); a zero duplicate window is
//! refused (JetStream reads 0 as its 2 min default).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_nats::{Client, HeaderMap, HeaderName, HeaderValue, Message, StatusCode, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{
    AckKind, AckToken, Backend, BusCounters, BusError, ConsumerConfig, ConsumerInfo,
    DEFAULT_MAX_MESSAGE_BYTES, DLQ_SUFFIX, DeadLetter, DeliverPolicy, Delivery, FetchRequest,
    Headers, OutgoingMessage, PublishAck, Retention, StoredMessage, StreamConfig, StreamCounters,
    StreamInfo, StreamState, dlq_headers, dlq_stream_name, dlq_subject,
};
use crate::subject::{Subject, SubjectFilter};

/// Header the backend adds to keep the order of header names, which NATS
/// header maps do not preserve. It is in the bus's reserved `Weft-Dlq-`
/// namespace and is removed on every read.
const ORDER_HEADER: &str = "Weft-Dlq-Header-Order";
const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Shortest pause between two pull requests of a waiting fetch.
const POLL_MIN: Duration = Duration::from_millis(5);
/// Longest pause between two pull requests of a waiting fetch (the most a
/// due redelivery waits for a fetch that is already waiting).
const POLL_MAX: Duration = Duration::from_millis(50);
/// Least time a fetch gives the server to answer a `no_wait` request.
const ANSWER_MIN: Duration = Duration::from_millis(500);
/// Once a batch has started, the longest gap before the rest of the
/// request is handed to a drainer.
const BATCH_GAP: Duration = Duration::from_millis(50);
/// Longest a drainer keeps an unanswered request's subscription.
const DRAIN_MAX: Duration = Duration::from_secs(3600);

// JetStream API error codes (`err_code`).
const ERR_CONSUMER_NOT_FOUND: u64 = 10014;
const ERR_MSG_TOO_LARGE: u64 = 10054;
const ERR_STREAM_NAME_IN_USE: u64 = 10058;
const ERR_STREAM_NOT_FOUND: u64 = 10059;
const ERR_SUBJECTS_OVERLAP: u64 = 10065;
const ERR_WQ_FILTERED_NOT_UNIQUE: u64 = 10099;
const ERR_WQ_MULTIPLE_UNFILTERED: u64 = 10100;

/// How to reach the server and the bus-wide limits.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server address, e.g. `127.0.0.1:4222` or `nats://host:4222`.
    pub url: String,
    /// Largest message (payload plus headers), checked before sending.
    pub max_message_bytes: usize,
    /// Longest wait for an answer to one request.
    pub request_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "127.0.0.1:4222".into(),
            // The server's default max_payload (1 MiB) less the 64 KiB
            // kept for headers, so the default works with a default server.
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES - 64 * 1024,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// Why [`NatsBus::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsConnectError {
    /// The server could not be reached.
    #[error(
        "cannot connect to NATS at {url}: {message}; start `nats-server -js` there or point the bus at the right address"
    )]
    Connect {
        /// The address.
        url: String,
        /// The client's error.
        message: String,
    },
    /// The server answered but has no JetStream.
    #[error(
        "NATS at {url} does not answer JetStream requests: {message}; start the server with JetStream enabled (`nats-server -js`)"
    )]
    NoJetStream {
        /// The address.
        url: String,
        /// What happened.
        message: String,
    },
    /// The message size limit is out of range.
    #[error(
        "max_message_bytes {value} is out of range: must be 1 to the server's max_payload {server_max} minus 64 KiB for headers; lower it or raise max_payload in the server's configuration"
    )]
    MessageLimit {
        /// The configured value.
        value: usize,
        /// The server's `max_payload`.
        server_max: usize,
    },
}

/// An event bus on a NATS JetStream server. Cheap to clone (one shared
/// connection).
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

struct Inner {
    client: Client,
    url: String,
    max_message_bytes: usize,
    timeout: Duration,
    streams: Mutex<HashMap<String, StreamConfig>>,
    consumers: Mutex<HashMap<(String, String), ConsumerConfig>>,
    counters: Mutex<BusCounters>,
    /// Deliveries received for a pull request after its fetch returned,
    /// by (stream, consumer); the next fetch hands them out first.
    held: Mutex<HashMap<(String, String), Held>>,
    /// Signalled when a drainer queues a delivery or ends.
    held_changed: Notify,
}

/// What a consumer's drainers hold.
#[derive(Default)]
struct Held {
    messages: VecDeque<Message>,
    /// Pull requests not yet finished by the server, each with a task
    /// reading its subscription.
    drainers: usize,
}

/// A failed JetStream API call: the bus error, or the server's refusal.
enum ApiError {
    Bus(BusError),
    Js { err_code: u64, description: String },
}

impl ApiError {
    fn into_bus(self, what: &'static str) -> BusError {
        match self {
            ApiError::Bus(e) => e,
            ApiError::Js {
                err_code,
                description,
            } => BusError::InvalidConfig {
                what,
                reason: format!("the NATS server refused it: {description} (err_code {err_code})"),
            },
        }
    }
}

/// What the reply subject of a JetStream delivery says.
struct AckMeta {
    stream: String,
    consumer: String,
    delivered: u64,
    stream_seq: u64,
    time_ns: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn opt_i64(v: Option<u64>) -> i64 {
    v.and_then(|x| i64::try_from(x).ok()).unwrap_or(-1)
}

fn positive(v: &Value) -> Option<u64> {
    v.as_i64()
        .and_then(|x| u64::try_from(x).ok())
        .filter(|x| *x > 0)
}

impl NatsBus {
    /// Connects and checks that the server speaks JetStream.
    pub async fn connect(config: NatsConfig) -> Result<Self, NatsConnectError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(config.request_timeout)
            .request_timeout(Some(config.request_timeout))
            .connect(config.url.as_str())
            .await
            .map_err(|e| NatsConnectError::Connect {
                url: config.url.clone(),
                message: e.to_string(),
            })?;
        let server_max = client.max_payload();
        if config.max_message_bytes == 0
            || config.max_message_bytes.saturating_add(64 * 1024) > server_max
        {
            return Err(NatsConnectError::MessageLimit {
                value: config.max_message_bytes,
                server_max,
            });
        }
        let bus = Self {
            inner: Arc::new(Inner {
                client,
                url: config.url.clone(),
                max_message_bytes: config.max_message_bytes,
                timeout: config.request_timeout,
                streams: Mutex::new(HashMap::new()),
                consumers: Mutex::new(HashMap::new()),
                counters: Mutex::new(BusCounters::default()),
                held: Mutex::new(HashMap::new()),
                held_changed: Notify::new(),
            }),
        };
        match bus.api("INFO", json!({})).await {
            Ok(_) => Ok(bus),
            Err(ApiError::Bus(e)) => Err(NatsConnectError::NoJetStream {
                url: config.url,
                message: e.to_string(),
            }),
            Err(ApiError::Js { description, .. }) => Err(NatsConnectError::NoJetStream {
                url: config.url,
                message: description,
            }),
        }
    }

    /// Names of all streams on the server (dead-letter streams included).
    pub async fn stream_names(&self) -> Result<Vec<String>, BusError> {
        let mut names = Vec::new();
        loop {
            let v = self
                .api("STREAM.NAMES", json!({ "offset": names.len() }))
                .await
                .map_err(|e| e.into_bus("stream list"))?;
            let page: Vec<String> = v["streams"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let total = v["total"].as_u64().unwrap_or(0);
            if page.is_empty() {
                break;
            }
            names.extend(page);
            if names.len() as u64 >= total {
                break;
            }
        }
        Ok(names)
    }

    /// A direct get on stream `on` (`$JS.API.DIRECT.GET`); no responder
    /// means the stream `named` in the error does not exist.
    async fn direct_get(
        &self,
        on: &str,
        named: &str,
        request: Value,
    ) -> Result<async_nats::Message, BusError> {
        let subject = format!("$JS.API.DIRECT.GET.{on}");
        let body = Bytes::from(request.to_string());
        self.inner
            .client
            .request(subject.clone(), body)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => BusError::StreamNotFound {
                    name: named.to_owned(),
                },
                _ => self.unavailable(&subject, e),
            })
    }

    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> BusError {
        BusError::Unavailable {
            what: format!("NATS request {what}"),
            server: self.inner.url.clone(),
            message: format!("{e} (weft needs nats-server with JetStream: nats-server -js)"),
        }
    }

    fn refuse(&self, e: BusError) -> BusError {
        if let Some(r) = e.refusal_reason() {
            *lock(&self.inner.counters)
                .refusals
                .entry(r.to_owned())
                .or_default() += 1;
        }
        e
    }

    fn count(&self, stream: &str, f: impl FnOnce(&mut StreamCounters)) {
        f(lock(&self.inner.counters)
            .streams
            .entry(stream.to_owned())
            .or_default());
    }

    /// One JetStream API request; the answer's JSON, or its error.
    async fn api(&self, op: &str, body: Value) -> Result<Value, ApiError> {
        let subject = format!("$JS.API.{op}");
        let payload = Bytes::from(body.to_string());
        let reply = self
            .inner
            .client
            .request(subject.clone(), payload)
            .await
            .map_err(|e| ApiError::Bus(self.unavailable(&subject, e)))?;
        let v: Value = serde_json::from_slice(&reply.payload).map_err(|e| {
            ApiError::Bus(self.unavailable(&subject, format!("answer is not JSON: {e}")))
        })?;
        if let Some(err) = v.get("error") {
            return Err(ApiError::Js {
                err_code: err["err_code"].as_u64().unwrap_or(0),
                description: err["description"].as_str().unwrap_or("").to_owned(),
            });
        }
        Ok(v)
    }

    fn stream_json(c: &StreamConfig) -> Value {
        let window = match c.max_age {
            Some(age) => c.duplicate_window.min(age),
            None => c.duplicate_window,
        };
        let meta = json!({
            "weft": 1,
            "max_message_size": c.max_message_size,
            "duplicate_window_ns": nanos(c.duplicate_window),
        });
        json!({
            "name": c.name,
            "description": meta.to_string(),
            "subjects": c.subjects.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            "retention": match c.retention { Retention::Limits => "limits", Retention::WorkQueue => "workqueue" },
            "max_consumers": -1,
            "max_msgs": opt_i64(c.max_messages),
            "max_bytes": opt_i64(c.max_bytes),
            "max_age": c.max_age.map(nanos).unwrap_or(0),
            "max_msg_size": -1,
            "storage": "file",
            "discard": "old",
            "num_replicas": 1,
            "duplicate_window": nanos(window),
            "allow_direct": true,
        })
    }

    fn dlq_json(stream: &str) -> Value {
        json!({
            "name": dlq_stream_name(stream),
            "description": "weft dead letters",
            "subjects": [format!("$DLQ.{stream}.>")],
            "retention": "limits",
            "max_consumers": -1,
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": 0,
            "max_msg_size": -1,
            "storage": "file",
            "discard": "old",
            "num_replicas": 1,
            "duplicate_window": nanos(Duration::from_secs(120)),
            "allow_direct": true,
        })
    }

    fn stream_info_from(&self, v: &Value) -> Result<StreamInfo, BusError> {
        let c = &v["config"];
        let name = c["name"].as_str().unwrap_or("").to_owned();
        let bad = |reason: String| BusError::InvalidConfig {
            what: "stream",
            reason: format!("NATS stream {name:?} cannot be read as a weft stream: {reason}"),
        };
        let subjects = c["subjects"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        SubjectFilter::new(s.as_str().unwrap_or("")).map_err(|e| bad(e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let meta: Value = c["description"]
            .as_str()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(Value::Null);
        let duplicate_window = Duration::from_nanos(
            meta["duplicate_window_ns"]
                .as_u64()
                .or_else(|| c["duplicate_window"].as_u64())
                .unwrap_or(0),
        );
        let config = StreamConfig {
            subjects,
            retention: if c["retention"].as_str() == Some("workqueue") {
                Retention::WorkQueue
            } else {
                Retention::Limits
            },
            max_age: positive(&c["max_age"]).map(Duration::from_nanos),
            max_bytes: positive(&c["max_bytes"]),
            max_messages: positive(&c["max_msgs"]),
            max_message_size: meta["max_message_size"]
                .as_u64()
                .and_then(|x| usize::try_from(x).ok()),
            duplicate_window,
            name: name.clone(),
        };
        let s = &v["state"];
        let state = StreamState {
            messages: s["messages"].as_u64().unwrap_or(0),
            bytes: s["bytes"].as_u64().unwrap_or(0),
            first_seq: if s["messages"].as_u64().unwrap_or(0) == 0 {
                0
            } else {
                s["first_seq"].as_u64().unwrap_or(0)
            },
            last_seq: s["last_seq"].as_u64().unwrap_or(0),
        };
        let dead_letter_stream = (!name.ends_with(DLQ_SUFFIX)).then(|| dlq_stream_name(&name));
        if dead_letter_stream.is_some() {
            lock(&self.inner.streams).insert(name, config.clone());
        }
        Ok(StreamInfo {
            config,
            state,
            dead_letter_stream,
        })
    }

    /// The configuration of `name`, from the cache or the server.
    async fn stream_config(&self, name: &str) -> Result<StreamConfig, BusError> {
        if let Some(c) = lock(&self.inner.streams).get(name) {
            return Ok(c.clone());
        }
        Ok(self.stream_info(name).await?.config)
    }

    /// The stream capturing `subject`, with its configuration.
    async fn stream_for(&self, subject: &Subject) -> Result<StreamConfig, BusError> {
        let cached = lock(&self.inner.streams)
            .values()
            .find(|c| c.captures(subject))
            .cloned();
        if let Some(c) = cached {
            return Ok(c);
        }
        let v = self
            .api("STREAM.NAMES", json!({ "subject": subject.as_str() }))
            .await
            .map_err(|e| e.into_bus("stream lookup"))?;
        let name = v["streams"]
            .as_array()
            .and_then(|a| a.iter().find_map(|s| s.as_str()))
            .map(str::to_owned)
            .ok_or_else(|| BusError::NoStream {
                subject: subject.to_string(),
            })?;
        self.stream_config(&name).await
    }

    /// The filter to give the server for `filter` on a stream with
    /// `subjects`. JetStream (2.9) wants a consumer filter within one stream
    /// subject; ours may overlap several. A filter covering every stream
    /// subject becomes no filter, one overlapping a single stream subject
    /// becomes the intersection (same messages); anything else cannot be
    /// expressed with one server-side filter.
    fn server_filter(
        stream: &str,
        subjects: &[SubjectFilter],
        filter: &SubjectFilter,
    ) -> Result<Option<String>, BusError> {
        let f = filter.as_str();
        if subjects
            .iter()
            .all(|s| intersect(s.as_str(), f).as_deref() == Some(s.as_str()))
        {
            return Ok(None);
        }
        let parts: Vec<String> = subjects
            .iter()
            .filter_map(|s| intersect(s.as_str(), f))
            .collect();
        match parts.as_slice() {
            [] => Err(BusError::InvalidConfig {
                what: "filter_subject",
                reason: format!(
                    "{f} matches none of the subjects of stream {stream:?}; use a filter within them"
                ),
            }),
            [one] => Ok(Some(one.clone())),
            many => Err(BusError::InvalidConfig {
                what: "filter_subject",
                reason: format!(
                    "{f} overlaps {} subjects of stream {stream:?} ({}) without covering all of them; a NATS JetStream consumer takes one filter within one stream subject, so use a filter within one of them or one covering the whole stream",
                    many.len(),
                    many.join(", ")
                ),
            }),
        }
    }

    fn consumer_json(stream: &str, c: &ConsumerConfig, server_filter: Option<&str>) -> Value {
        let (policy, start) = match c.deliver_policy {
            DeliverPolicy::All => ("all", None),
            DeliverPolicy::New => ("new", None),
            DeliverPolicy::ByStartSequence(s) => ("by_start_sequence", Some(s)),
        };
        let mut config = json!({
            "durable_name": c.durable_name,
            "description": json!({
                "weft": 1,
                "max_deliver": c.max_deliver,
                "filter": c.filter_subject.as_ref().map(SubjectFilter::as_str),
            })
            .to_string(),
            "deliver_policy": policy,
            "ack_policy": "explicit",
            "ack_wait": nanos(c.ack_wait),
            "max_deliver": -1,
            "max_ack_pending": c.max_ack_pending,
            "replay_policy": "instant",
            "max_waiting": 512,
        });
        if let Some(s) = start {
            config["opt_start_seq"] = json!(s);
        }
        if let Some(f) = server_filter {
            config["filter_subject"] = json!(f);
        }
        json!({ "stream_name": stream, "config": config })
    }

    fn consumer_info_from(&self, stream: &str, v: &Value) -> Result<ConsumerInfo, BusError> {
        let c = &v["config"];
        let name = c["durable_name"].as_str().unwrap_or("").to_owned();
        let meta: Value = c["description"]
            .as_str()
            .and_then(|d| serde_json::from_str(d).ok())
            .unwrap_or(Value::Null);
        let max_deliver = meta["max_deliver"]
            .as_u64()
            .or_else(|| positive(&c["max_deliver"]))
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| BusError::InvalidConfig {
                what: "consumer",
                reason: format!(
                    "NATS consumer {name:?} on {stream:?} was not created by weft (no max_deliver in its description); delete it or use another name"
                ),
            })?;
        let filter_subject = match meta["filter"].as_str().or(c["filter_subject"].as_str()) {
            None | Some("") => None,
            Some(f) => Some(SubjectFilter::new(f)?),
        };
        let deliver_policy = match c["deliver_policy"].as_str() {
            Some("new") => DeliverPolicy::New,
            Some("by_start_sequence") => {
                DeliverPolicy::ByStartSequence(c["opt_start_seq"].as_u64().unwrap_or(0))
            }
            _ => DeliverPolicy::All,
        };
        let config = ConsumerConfig {
            durable_name: name.clone(),
            filter_subject,
            deliver_policy,
            ack_wait: Duration::from_nanos(c["ack_wait"].as_u64().unwrap_or(0)),
            max_deliver,
            max_ack_pending: c["max_ack_pending"]
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .unwrap_or(0),
        };
        lock(&self.inner.consumers).insert((stream.to_owned(), name), config.clone());
        Ok(ConsumerInfo {
            stream: stream.to_owned(),
            config,
            num_pending: v["num_pending"].as_u64().unwrap_or(0),
            num_ack_pending: v["num_ack_pending"].as_u64().unwrap_or(0),
            delivered_seq: v["delivered"]["stream_seq"].as_u64().unwrap_or(0),
        })
    }

    async fn consumer_config(&self, stream: &str, name: &str) -> Result<ConsumerConfig, BusError> {
        let cached = lock(&self.inner.consumers)
            .get(&(stream.to_owned(), name.to_owned()))
            .cloned();
        match cached {
            Some(c) => Ok(c),
            None => Ok(self.consumer_info(stream, name).await?.config),
        }
    }

    fn consumer_error(stream: &str, name: &str, e: ApiError) -> BusError {
        match e {
            ApiError::Js {
                err_code: ERR_CONSUMER_NOT_FOUND,
                ..
            } => BusError::ConsumerNotFound {
                stream: stream.to_owned(),
                name: name.to_owned(),
            },
            ApiError::Js {
                err_code: ERR_STREAM_NOT_FOUND,
                ..
            } => BusError::StreamNotFound {
                name: stream.to_owned(),
            },
            e => e.into_bus("consumer"),
        }
    }

    /// Builds NATS headers: the user's, the order header, the message id.
    fn nats_headers(headers: &Headers, msg_id: Option<&str>) -> Result<HeaderMap, BusError> {
        let mut map = HeaderMap::new();
        let mut order = Vec::with_capacity(headers.len());
        for (n, v) in headers.iter() {
            let bad = |e: String| BusError::InvalidHeader {
                name: n.to_owned(),
                reason: format!("NATS cannot carry it: {e}"),
            };
            let name = HeaderName::from_str(n).map_err(|e| bad(e.to_string()))?;
            let value = HeaderValue::from_str(v).map_err(|e| bad(e.to_string()))?;
            map.append(name, value);
            order.push(n);
        }
        if order.len() > 1 {
            let value =
                HeaderValue::from_str(&order.join(" ")).map_err(|e| BusError::InvalidHeader {
                    name: ORDER_HEADER.into(),
                    reason: e.to_string(),
                })?;
            map.append(HeaderName::from_static(ORDER_HEADER), value);
        }
        if let Some(id) = msg_id {
            let value = HeaderValue::from_str(id).map_err(|e| BusError::InvalidMsgId {
                reason: e.to_string(),
            })?;
            map.append(HeaderName::from_static(MSG_ID_HEADER), value);
        }
        Ok(map)
    }

    /// Reads NATS headers back: the message id, the user's headers in their
    /// original order, and every `Nats-` header by name.
    fn read_headers(
        map: Option<&HeaderMap>,
    ) -> (Option<String>, Headers, BTreeMap<String, String>) {
        let mut by_name: BTreeMap<String, VecDeque<String>> = BTreeMap::new();
        let mut nats = BTreeMap::new();
        let mut order = None;
        for (name, values) in map.into_iter().flat_map(HeaderMap::iter) {
            let n: &str = name.as_ref();
            if n.eq_ignore_ascii_case(ORDER_HEADER) {
                order = values.first().map(|v| v.as_str().to_owned());
            } else if crate::backend::starts_with_ignore_case(n, "Nats-") {
                if let Some(v) = values.first() {
                    nats.insert(n.to_owned(), v.as_str().to_owned());
                }
            } else {
                by_name
                    .entry(n.to_owned())
                    .or_default()
                    .extend(values.iter().map(|v| v.as_str().to_owned()));
            }
        }
        let mut headers = Headers::new();
        for n in order
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|n| !n.is_empty())
        {
            if let Some(v) = by_name.get_mut(n).and_then(VecDeque::pop_front) {
                headers.push_unchecked(n.to_owned(), v);
            }
        }
        for (n, vs) in by_name {
            for v in vs {
                headers.push_unchecked(n.clone(), v);
            }
        }
        let msg_id = nats
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(MSG_ID_HEADER))
            .map(|(_, v)| v.clone());
        (msg_id, headers, nats)
    }

    /// Publishes without the caller-input checks (dead letters carry
    /// reserved headers).
    async fn publish_raw(
        &self,
        subject: &str,
        headers: &Headers,
        msg_id: Option<&str>,
        payload: Bytes,
    ) -> Result<PublishAck, BusError> {
        let map = Self::nats_headers(headers, msg_id)?;
        let reply = self
            .inner
            .client
            .request_with_headers(subject.to_owned(), map, payload)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => BusError::NoStream {
                    subject: subject.to_owned(),
                },
                _ => self.unavailable(&format!("publish to {subject}"), e),
            })?;
        let v: Value = serde_json::from_slice(&reply.payload).map_err(|e| {
            self.unavailable(
                &format!("publish to {subject}"),
                format!("the answer is not a JetStream publish ack: {e}"),
            )
        })?;
        if let Some(err) = v.get("error") {
            let code = err["err_code"].as_u64().unwrap_or(0);
            let description = err["description"].as_str().unwrap_or("").to_owned();
            if code == ERR_MSG_TOO_LARGE {
                return Err(BusError::MessageTooLarge {
                    size: headers.byte_len(),
                    limit: self.inner.max_message_bytes,
                });
            }
            return Err(self.unavailable(
                &format!("publish to {subject}"),
                format!("the server refused it: {description} (err_code {code})"),
            ));
        }
        Ok(PublishAck {
            stream: v["stream"].as_str().unwrap_or("").to_owned(),
            sequence: v["seq"].as_u64().unwrap_or(0),
            duplicate: v["duplicate"].as_bool().unwrap_or(false),
        })
    }

    fn parse_token(&self, token: &AckToken) -> Result<AckMeta, BusError> {
        let bad = || {
            self.refuse(BusError::BadAckToken {
                token: token.0.chars().take(256).collect(),
            })
        };
        let parts: Vec<&str> = token.0.split('.').collect();
        if parts.len() < 9 || parts[0] != "$JS" || parts[1] != "ACK" {
            return Err(bad());
        }
        // v1: $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        // v2: $JS.ACK.<domain>.<account>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>]
        let at = match parts.len() {
            9 => 2,
            11 | 12 => 4,
            _ => return Err(bad()),
        };
        let num = |i: usize| parts[at + i].parse::<u64>().map_err(|_| bad());
        Ok(AckMeta {
            stream: parts[at].to_owned(),
            consumer: parts[at + 1].to_owned(),
            delivered: num(2)?,
            stream_seq: num(3)?,
            time_ns: num(5)?,
        })
    }

    /// Sends an ack body to a delivery's reply subject and waits for the
    /// server to confirm it.
    async fn send_ack(&self, token: &AckToken, body: Bytes) -> Result<(), BusError> {
        self.inner
            .client
            .request(token.0.clone(), body)
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(&format!("acknowledgement {}", token.0), e))
    }

    /// Moves a message to the dead-letter stream, then settles it on the
    /// server so it is not delivered again.
    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        token: &AckToken,
        meta: &AckMeta,
        message: Option<&StoredMessage>,
        deliveries: u64,
        reason: &str,
    ) -> Result<(), BusError> {
        let config = self.stream_config(&meta.stream).await?;
        if let Some(m) = message {
            let mut h = Headers::new();
            let reason: String = reason
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(1024)
                .collect();
            h.push_unchecked(dlq_headers::REASON.into(), reason);
            h.push_unchecked(dlq_headers::STREAM.into(), meta.stream.clone());
            h.push_unchecked(dlq_headers::CONSUMER.into(), meta.consumer.clone());
            h.push_unchecked(dlq_headers::SEQUENCE.into(), meta.stream_seq.to_string());
            h.push_unchecked(dlq_headers::SUBJECT.into(), m.subject.to_string());
            h.push_unchecked(dlq_headers::DELIVERIES.into(), deliveries.to_string());
            if let Some(id) = &m.msg_id {
                h.push_unchecked(dlq_headers::MSG_ID.into(), id.clone());
            }
            for (n, v) in m.headers.iter() {
                h.push_unchecked(n.to_owned(), v.to_owned());
            }
            let id = format!("dlq.{}.{}.{}", meta.stream, meta.consumer, meta.stream_seq);
            self.publish_raw(
                &dlq_subject(&meta.stream, &meta.consumer),
                &h,
                Some(&id),
                m.payload.clone(),
            )
            .await?;
            self.count(&meta.stream, |c| c.dead_lettered += 1);
        }
        let settle = match config.retention {
            // Term leaves a work-queue message in the stream; an ack deletes it.
            Retention::WorkQueue => Bytes::from_static(b"+ACK"),
            Retention::Limits => Bytes::from_static(b"+TERM"),
        };
        self.send_ack(token, settle).await
    }

    fn delivery_from(&self, m: &Message) -> Option<(AckToken, AckMeta, StoredMessage)> {
        let reply = m.reply.as_ref()?;
        let token = AckToken(reply.to_string());
        let meta = self.parse_token(&token).ok()?;
        let subject = Subject::new(m.subject.as_str()).ok()?;
        let (msg_id, headers, _) = Self::read_headers(m.headers.as_ref());
        let stored = StoredMessage {
            stream: meta.stream.clone(),
            sequence: meta.stream_seq,
            subject,
            time_ns: meta.time_ns,
            msg_id,
            headers,
            payload: m.payload.clone(),
        };
        Some((token, meta, stored))
    }

    /// One `no_wait` pull request for up to `batch` messages; the messages
    /// it delivered. Waits for the server's answer until `answer_by`; a
    /// request the server has not finished by then (it holds one when
    /// something is pending that it cannot deliver yet) is handed to a
    /// drainer rather than abandoned.
    async fn pull(
        &self,
        stream: &str,
        consumer: &str,
        batch: usize,
        answer_by: Instant,
    ) -> Result<Vec<Message>, BusError> {
        let subject = format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}");
        let inbox = self.inner.client.new_inbox();
        let mut sub = self
            .inner
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| self.unavailable(&subject, e))?;
        let body = json!({ "batch": batch, "no_wait": true });
        self.inner
            .client
            .publish_with_reply(subject.clone(), inbox, Bytes::from(body.to_string()))
            .await
            .map_err(|e| self.unavailable(&subject, e))?;
        // The server ends the request with a status (404: nothing pending,
        // 408: delivered what there was) or when the batch is full.
        let mut out = Vec::new();
        while out.len() < batch {
            let until = if out.is_empty() {
                answer_by
            } else {
                answer_by.min(Instant::now() + BATCH_GAP)
            };
            match tokio::time::timeout_at(until, sub.next()).await {
                Ok(Some(m)) => match m.status {
                    None => out.push(m),
                    Some(StatusCode::IDLE_HEARTBEAT) => {}
                    Some(StatusCode::NO_RESPONDERS) => {
                        // No consumer (or stream) answers this subject.
                        self.consumer_info(stream, consumer).await?;
                        break;
                    }
                    Some(_) => break,
                },
                // The connection is closed; the next request reports it.
                Ok(None) => break,
                Err(_) => {
                    self.drain_later(stream, consumer, sub, batch - out.len());
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Keeps reading an unfinished pull request's subscription in the
    /// background and queues what it receives for the next fetch, so no
    /// delivery the server counts is dropped by this client.
    fn drain_later(&self, stream: &str, consumer: &str, mut sub: Subscriber, mut left: usize) {
        let key = (stream.to_owned(), consumer.to_owned());
        lock(&self.inner.held)
            .entry(key.clone())
            .or_default()
            .drainers += 1;
        let inner: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let deadline = Instant::now() + DRAIN_MAX;
            while left > 0 {
                let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await else {
                    break;
                };
                match m.status {
                    None => {
                        let Some(inner) = inner.upgrade() else { break };
                        lock(&inner.held)
                            .entry(key.clone())
                            .or_default()
                            .messages
                            .push_back(m);
                        inner.held_changed.notify_waiters();
                        left -= 1;
                    }
                    Some(StatusCode::IDLE_HEARTBEAT) => {}
                    Some(_) => break,
                }
            }
            if let Some(inner) = inner.upgrade() {
                if let Some(h) = lock(&inner.held).get_mut(&key) {
                    h.drainers = h.drainers.saturating_sub(1);
                }
                inner.held_changed.notify_waiters();
            }
        });
    }

    /// Up to `max` deliveries held for (stream, consumer), and whether a
    /// pull request of that consumer is still unfinished.
    fn take_held(&self, stream: &str, consumer: &str, max: usize) -> (Vec<Message>, bool) {
        let key = (stream.to_owned(), consumer.to_owned());
        let mut held = lock(&self.inner.held);
        let Some(h) = held.get_mut(&key) else {
            return (Vec::new(), false);
        };
        let n = h.messages.len().min(max);
        let out: Vec<Message> = h.messages.drain(..n).collect();
        let draining = h.drainers > 0;
        if h.messages.is_empty() && !draining {
            held.remove(&key);
        }
        (out, draining)
    }

    /// Core subscriptions on the subjects a consumer reads: a publish
    /// there wakes a waiting fetch (a hint; correctness never depends on it).
    async fn wake_subscription(
        &self,
        stream: &str,
        config: &ConsumerConfig,
    ) -> Result<futures_util::stream::SelectAll<Subscriber>, BusError> {
        let subjects: Vec<String> = match &config.filter_subject {
            Some(f) => vec![f.as_str().to_owned()],
            None => self
                .stream_config(stream)
                .await?
                .subjects
                .iter()
                .map(|f| f.as_str().to_owned())
                .collect(),
        };
        let mut subs = Vec::with_capacity(subjects.len());
        for s in subjects {
            subs.push(
                self.inner
                    .client
                    .subscribe(s.clone())
                    .await
                    .map_err(|e| self.unavailable(&format!("subscribe to {s}"), e))?,
            );
        }
        Ok(futures_util::stream::select_all(subs))
    }

    /// Turns pulled messages into deliveries, dead-lettering those past
    /// `max_deliver`.
    async fn deliveries(
        &self,
        stream: &str,
        consumer: &str,
        max_deliver: u32,
        pulled: Vec<Message>,
    ) -> Result<Vec<Delivery>, BusError> {
        let mut out = Vec::with_capacity(pulled.len());
        for m in pulled {
            let Some((token, meta, stored)) = self.delivery_from(&m) else {
                continue;
            };
            if meta.delivered > u64::from(max_deliver) {
                let reason = format!(
                    "max_deliver reached: delivered {} times (max_deliver {max_deliver}), not acknowledged",
                    meta.delivered - 1
                );
                self.dead_letter(&token, &meta, Some(&stored), meta.delivered - 1, &reason)
                    .await?;
                continue;
            }
            self.count(stream, |c| {
                c.delivered += 1;
                if meta.delivered > 1 {
                    c.redelivered += 1;
                }
            });
            out.push(Delivery {
                message: stored,
                consumer: consumer.to_owned(),
                delivered: u32::try_from(meta.delivered).unwrap_or(u32::MAX),
                ack_token: token,
            });
        }
        Ok(out)
    }
}

impl Backend for NatsBus {
    async fn create_stream(&self, config: StreamConfig) -> Result<StreamInfo, BusError> {
        config.validate()?;
        if config.duplicate_window.is_zero() {
            return Err(BusError::InvalidConfig {
                what: "duplicate_window",
                reason: "zero cannot be expressed on NATS (JetStream reads 0 as its 2 min default); use a short window such as 1 ms".into(),
            });
        }
        let name = config.name.clone();
        let created = self
            .api(&format!("STREAM.CREATE.{name}"), Self::stream_json(&config))
            .await;
        let v = match created {
            Ok(v) => v,
            Err(ApiError::Js {
                err_code: ERR_STREAM_NAME_IN_USE,
                ..
            }) => return Err(BusError::StreamExists { name }),
            Err(ApiError::Js {
                err_code: ERR_SUBJECTS_OVERLAP,
                description,
            }) => {
                for f in &config.subjects {
                    let found = self
                        .api("STREAM.NAMES", json!({ "subject": f.as_str() }))
                        .await
                        .ok();
                    let other = found
                        .as_ref()
                        .and_then(|v| v["streams"].as_array())
                        .and_then(|a| a.iter().filter_map(|s| s.as_str()).find(|s| *s != name))
                        .map(str::to_owned);
                    if let Some(other) = other {
                        let other_filter = match self.stream_config(&other).await {
                            Ok(c) => c
                                .subjects
                                .iter()
                                .find(|o| o.overlaps(f))
                                .map(ToString::to_string)
                                .unwrap_or_default(),
                            Err(_) => String::new(),
                        };
                        return Err(BusError::SubjectsOverlap {
                            stream: name,
                            filter: f.to_string(),
                            other,
                            other_filter,
                        });
                    }
                }
                return Err(BusError::SubjectsOverlap {
                    stream: name,
                    filter: config
                        .subjects
                        .first()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    other: "(unknown)".into(),
                    other_filter: description,
                });
            }
            Err(e) => return Err(e.into_bus("stream")),
        };
        self.api(
            &format!("STREAM.CREATE.{}", dlq_stream_name(&name)),
            Self::dlq_json(&name),
        )
        .await
        .map_err(|e| e.into_bus("dead-letter stream"))?;
        self.stream_info_from(&v)
    }

    async fn delete_stream(&self, name: &str) -> Result<(), BusError> {
        if let Some(source) = name.strip_suffix(DLQ_SUFFIX)
            && self.stream_info(source).await.is_ok()
        {
            return Err(BusError::InvalidConfig {
                what: "stream",
                reason: format!(
                    "{name} is the dead-letter stream of {source}; delete {source} to delete both"
                ),
            });
        }
        lock(&self.inner.streams).remove(name);
        lock(&self.inner.consumers).retain(|(s, _), _| s != name);
        match self.api(&format!("STREAM.DELETE.{name}"), json!({})).await {
            Ok(_) => {}
            Err(ApiError::Js {
                err_code: ERR_STREAM_NOT_FOUND,
                ..
            }) => {
                return Err(BusError::StreamNotFound {
                    name: name.to_owned(),
                });
            }
            Err(e) => return Err(e.into_bus("stream")),
        }
        if !name.ends_with(DLQ_SUFFIX) {
            match self
                .api(
                    &format!("STREAM.DELETE.{}", dlq_stream_name(name)),
                    json!({}),
                )
                .await
            {
                Ok(_)
                | Err(ApiError::Js {
                    err_code: ERR_STREAM_NOT_FOUND,
                    ..
                }) => {}
                Err(e) => return Err(e.into_bus("dead-letter stream")),
            }
        }
        Ok(())
    }

    async fn stream_info(&self, name: &str) -> Result<StreamInfo, BusError> {
        match self.api(&format!("STREAM.INFO.{name}"), json!({})).await {
            Ok(v) => self.stream_info_from(&v),
            Err(ApiError::Js {
                err_code: ERR_STREAM_NOT_FOUND,
                ..
            }) => {
                lock(&self.inner.streams).remove(name);
                Err(BusError::StreamNotFound {
                    name: name.to_owned(),
                })
            }
            Err(e) => Err(e.into_bus("stream")),
        }
    }

    async fn publish(&self, message: OutgoingMessage) -> Result<PublishAck, BusError> {
        message.validate().map_err(|e| self.refuse(e))?;
        let stream = self
            .stream_for(&message.subject)
            .await
            .map_err(|e| self.refuse(e))?;
        let limit = stream
            .max_message_size
            .map_or(self.inner.max_message_bytes, |s| {
                s.min(self.inner.max_message_bytes)
            });
        if message.size() > limit {
            return Err(self.refuse(BusError::MessageTooLarge {
                size: message.size(),
                limit,
            }));
        }
        let ack = self
            .publish_raw(
                message.subject.as_str(),
                &message.headers,
                message.msg_id.as_deref(),
                message.payload,
            )
            .await
            .map_err(|e| {
                if matches!(e, BusError::NoStream { .. }) {
                    lock(&self.inner.streams).remove(&stream.name);
                }
                self.refuse(e)
            })?;
        self.count(&ack.stream, |c| {
            if ack.duplicate {
                c.duplicates += 1;
            } else {
                c.published += 1;
            }
        });
        Ok(ack)
    }

    async fn get_message(&self, stream: &str, sequence: u64) -> Result<StoredMessage, BusError> {
        let reply = self
            .direct_get(stream, stream, json!({ "seq": sequence }))
            .await?;
        message_from_direct(stream, sequence, &reply)
    }

    async fn create_consumer(
        &self,
        stream: &str,
        config: ConsumerConfig,
    ) -> Result<ConsumerInfo, BusError> {
        config.validate()?;
        let sc = self.stream_info(stream).await?.config;
        let server_filter = match &config.filter_subject {
            Some(f) => Self::server_filter(stream, &sc.subjects, f)?,
            None => None,
        };
        let name = config.durable_name.clone();
        match self.consumer_info(stream, &name).await {
            Ok(info) if info.config == config => return Ok(info),
            Ok(_) => {
                return Err(BusError::ConsumerExists {
                    stream: stream.to_owned(),
                    name,
                });
            }
            Err(BusError::ConsumerNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let created = self
            .api(
                &format!("CONSUMER.DURABLE.CREATE.{stream}.{name}"),
                Self::consumer_json(stream, &config, server_filter.as_deref()),
            )
            .await;
        match created {
            Ok(v) => self.consumer_info_from(stream, &v),
            Err(ApiError::Js {
                err_code: ERR_WQ_FILTERED_NOT_UNIQUE | ERR_WQ_MULTIPLE_UNFILTERED,
                ..
            }) => {
                let names = self
                    .api(&format!("CONSUMER.NAMES.{stream}"), json!({}))
                    .await
                    .ok();
                let other = names
                    .as_ref()
                    .and_then(|v| v["consumers"].as_array())
                    .and_then(|a| a.iter().filter_map(|s| s.as_str()).find(|s| *s != name))
                    .unwrap_or("(unknown)")
                    .to_owned();
                Err(BusError::WorkQueueOverlap {
                    stream: stream.to_owned(),
                    name,
                    other,
                })
            }
            Err(e) => Err(Self::consumer_error(stream, &name, e)),
        }
    }

    async fn consumer_info(&self, stream: &str, name: &str) -> Result<ConsumerInfo, BusError> {
        match self
            .api(&format!("CONSUMER.INFO.{stream}.{name}"), json!({}))
            .await
        {
            Ok(v) => self.consumer_info_from(stream, &v),
            Err(e) => {
                lock(&self.inner.consumers).remove(&(stream.to_owned(), name.to_owned()));
                Err(Self::consumer_error(stream, name, e))
            }
        }
    }

    async fn delete_consumer(&self, stream: &str, name: &str) -> Result<(), BusError> {
        lock(&self.inner.consumers).remove(&(stream.to_owned(), name.to_owned()));
        self.api(&format!("CONSUMER.DELETE.{stream}.{name}"), json!({}))
            .await
            .map(|_| ())
            .map_err(|e| Self::consumer_error(stream, name, e))
    }

    async fn fetch(
        &self,
        stream: &str,
        consumer: &str,
        request: FetchRequest,
    ) -> Result<Vec<Delivery>, BusError> {
        if request.max_messages == 0 || request.max_messages > 10_000 {
            return Err(BusError::InvalidConfig {
                what: "fetch batch",
                reason: format!("must be 1 to 10000 messages, is {}", request.max_messages),
            });
        }
        if request.expires > Duration::from_secs(3600) {
            return Err(BusError::InvalidConfig {
                what: "fetch wait",
                reason: format!("must be at most 1 h, is {:?}", request.expires),
            });
        }
        let config = self.consumer_config(stream, consumer).await?;
        let max_deliver = config.max_deliver;
        let max = request.max_messages;
        let deadline = Instant::now() + request.expires;
        let mut wake = None;
        let mut pause = POLL_MIN;
        loop {
            let changed = self.inner.held_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // Deliveries a drainer received for an earlier request first.
            let (held, draining) = self.take_held(stream, consumer, max);
            let mut got = self.deliveries(stream, consumer, max_deliver, held).await?;
            // While a request of this consumer is unfinished the server
            // serves it first; another would only queue behind it.
            if got.len() < max && !draining {
                let answer_by = deadline.max(Instant::now() + ANSWER_MIN);
                let answer_by = answer_by.min(Instant::now() + self.inner.timeout.max(ANSWER_MIN));
                let pulled = self
                    .pull(stream, consumer, max - got.len(), answer_by)
                    .await?;
                got.extend(
                    self.deliveries(stream, consumer, max_deliver, pulled)
                        .await?,
                );
            }
            if !got.is_empty() {
                return Ok(got);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let Some(sub) = wake.as_mut() else {
                // Subscribe, then ask again at once: a message published
                // between the last request and the subscription is not
                // missed.
                wake = Some(self.wake_subscription(stream, &config).await?);
                continue;
            };
            tokio::select! {
                woke = sub.next() => {
                    if woke.is_some() {
                        // The stream may not have stored it yet: look soon.
                        pause = POLL_MIN;
                    } else {
                        // No hints (connection closing): poll.
                        tokio::time::sleep_until(deadline.min(now + pause)).await;
                    }
                }
                _ = &mut changed => {}
                _ = tokio::time::sleep_until(deadline.min(now + pause)) => {
                    pause = (pause * 2).min(POLL_MAX);
                }
            }
        }
    }

    async fn ack(&self, token: &AckToken, kind: AckKind) -> Result<(), BusError> {
        let meta = self.parse_token(token)?;
        match kind {
            AckKind::Ack => {
                self.send_ack(token, Bytes::from_static(b"+ACK")).await?;
                self.count(&meta.stream, |c| c.acked += 1);
            }
            AckKind::Nak(delay) => {
                let body = match delay {
                    None => Bytes::from_static(b"-NAK"),
                    Some(d) => Bytes::from(format!("-NAK {}", json!({ "delay": nanos(d) }))),
                };
                self.send_ack(token, body).await?;
                self.count(&meta.stream, |c| c.naked += 1);
            }
            AckKind::InProgress => {
                self.send_ack(token, Bytes::from_static(b"+WPI")).await?;
            }
            AckKind::Term(reason) => {
                let message = match self.get_message(&meta.stream, meta.stream_seq).await {
                    Ok(m) => Some(m),
                    Err(BusError::MessageNotFound { .. }) => None,
                    Err(e) => return Err(e),
                };
                let reason = crate::backend::term_reason(reason.as_deref());
                self.dead_letter(token, &meta, message.as_ref(), meta.delivered, &reason)
                    .await?;
                self.count(&meta.stream, |c| c.terminated += 1);
            }
        }
        Ok(())
    }

    async fn dlq_list(
        &self,
        stream: &str,
        from_dlq_sequence: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        let dlq = dlq_stream_name(stream);
        let filter = format!("$DLQ.{stream}.>");
        let mut seq = from_dlq_sequence.max(1);
        let mut out = Vec::new();
        while out.len() < limit {
            let reply = self
                .direct_get(&dlq, stream, json!({ "seq": seq, "next_by_subj": filter }))
                .await?;
            let m = match message_from_direct(&dlq, seq, &reply) {
                Ok(m) => m,
                Err(BusError::MessageNotFound { .. }) => break,
                Err(e) => return Err(e),
            };
            seq = m.sequence + 1;
            out.push(DeadLetter::from_message(&m)?);
        }
        Ok(out)
    }

    async fn dlq_show(&self, stream: &str, dlq_sequence: u64) -> Result<DeadLetter, BusError> {
        let m = self
            .get_message(&dlq_stream_name(stream), dlq_sequence)
            .await?;
        DeadLetter::from_message(&m)
    }

    async fn dlq_replay(&self, stream: &str, dlq_sequence: u64) -> Result<PublishAck, BusError> {
        let dl = self.dlq_show(stream, dlq_sequence).await?;
        let dlq = dlq_stream_name(stream);
        let message = OutgoingMessage {
            subject: dl.original_subject.clone(),
            headers: dl.headers.clone(),
            msg_id: Some(format!("replay.{dlq}.{dlq_sequence}")),
            payload: dl.payload.clone(),
        };
        let ack = self.publish(message).await?;
        match self
            .api(
                &format!("STREAM.MSG.DELETE.{dlq}"),
                json!({ "seq": dlq_sequence }),
            )
            .await
        {
            Ok(_) => Ok(ack),
            Err(e) => Err(e.into_bus("dead letter removal")),
        }
    }

    fn counters(&self) -> BusCounters {
        lock(&self.inner.counters).clone()
    }
}

/// The subjects matched by both filters, as one filter (none if disjoint).
fn intersect(a: &str, b: &str) -> Option<String> {
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    let mut out: Vec<&str> = Vec::new();
    for i in 0.. {
        match (a.get(i), b.get(i)) {
            (None, None) => break,
            (Some(&">"), _) => {
                let rest = b.get(i..).unwrap_or_default();
                if rest.is_empty() {
                    return None;
                }
                out.extend(rest);
                break;
            }
            (_, Some(&">")) => {
                let rest = a.get(i..).unwrap_or_default();
                if rest.is_empty() {
                    return None;
                }
                out.extend(rest);
                break;
            }
            (Some(&"*"), Some(t)) | (Some(t), Some(&"*")) => out.push(t),
            (Some(x), Some(y)) if x == y => out.push(x),
            _ => return None,
        }
    }
    Some(out.join("."))
}

/// Reads the answer to a direct get.
fn message_from_direct(
    stream: &str,
    sequence: u64,
    reply: &Message,
) -> Result<StoredMessage, BusError> {
    let not_found = || BusError::MessageNotFound {
        stream: stream.to_owned(),
        sequence,
    };
    if reply.status.is_some_and(|s| s != StatusCode::OK) {
        return Err(not_found());
    }
    let (msg_id, headers, nats) = NatsBus::read_headers(reply.headers.as_ref());
    let get = |n: &str| {
        nats.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_str())
    };
    let corrupt = |what: &str| BusError::InvalidConfig {
        what: "direct get answer",
        reason: format!(
            "message {sequence} of stream {stream:?}: {what}; the server may be older than 2.9 (direct get) — upgrade it"
        ),
    };
    let seq = get("Nats-Sequence")
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| corrupt("no Nats-Sequence header"))?;
    let subject = get("Nats-Subject")
        .and_then(|s| Subject::new(s).ok())
        .ok_or_else(|| corrupt("no valid Nats-Subject header"))?;
    let time_ns = get("Nats-Time-Stamp")
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .and_then(|t| u64::try_from(t.unix_timestamp_nanos()).ok())
        .unwrap_or(0);
    Ok(StoredMessage {
        stream: stream.to_owned(),
        sequence: seq,
        subject,
        time_ns,
        msg_id,
        headers,
        payload: reply.payload.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::intersect;

    #[test]
    fn filter_intersections() {
        assert_eq!(intersect("a.*.cpu", "a.x.*").as_deref(), Some("a.x.cpu"));
        assert_eq!(intersect("a.>", "a.b.*").as_deref(), Some("a.b.*"));
        assert_eq!(intersect("a.b.*", "a.>").as_deref(), Some("a.b.*"));
        assert_eq!(intersect("a.>", "a.>").as_deref(), Some("a.>"));
        assert_eq!(intersect("a.>", "a"), None);
        assert_eq!(intersect("a.*", "a.b.c"), None);
        assert_eq!(intersect("a.b", "a.c"), None);
        assert_eq!(intersect("a.*.>", "a.x.y").as_deref(), Some("a.x.y"));
    }
}
