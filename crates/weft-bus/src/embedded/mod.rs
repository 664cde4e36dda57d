//! The embedded backend: a durable, segmented append-only log per stream on
//! local disk (the default), or the same code holding records in memory.
//!
//! Durability: a publish returns after its record is written and
//! `fdatasync`ed. Concurrent publishers are batched by one writer thread
//! per stream into one write and one fsync (group commit). Acks, naks that
//! change state and consumer creation are persisted the same way: the
//! consumer's state file is rewritten atomically in the batch, before the
//! ack returns. See `docs/bus.md` for the format and guarantees.

mod disk;
mod queue;
mod stream;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::backend::{
    AckKind, AckToken, Backend, BusCounters, BusError, ConsumerConfig, ConsumerInfo,
    DEFAULT_MAX_MESSAGE_BYTES, DLQ_SUFFIX, DeadLetter, Delivery, FetchRequest, Headers,
    OutgoingMessage, PublishAck, StoredMessage, StreamConfig, StreamCounters, StreamInfo,
    dlq_headers, dlq_stream_name, dlq_subject,
};
use crate::record::MAX_PAYLOAD_LEN;
use crate::subject::{Subject, SubjectFilter};
use disk::DiskLimits;
use stream::{DeadCandidate, Stream, lock};

/// Settings of the embedded backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbeddedConfig {
    /// Largest message (payload plus headers) accepted, default 1 MiB.
    pub max_message_bytes: usize,
    /// A segment is closed and a new one started past this size
    /// (default 64 MiB).
    pub segment_bytes: u64,
    /// Most bytes the writer puts in one write + fsync (default 4 MiB).
    pub max_batch_bytes: usize,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            segment_bytes: 64 << 20,
            max_batch_bytes: 4 << 20,
        }
    }
}

impl EmbeddedConfig {
    fn validate(&self) -> Result<(), BusError> {
        if self.max_message_bytes == 0 || self.max_message_bytes > MAX_PAYLOAD_LEN {
            return Err(BusError::InvalidConfig {
                what: "max_message_bytes",
                reason: format!(
                    "must be 1 to {MAX_PAYLOAD_LEN}, is {}",
                    self.max_message_bytes
                ),
            });
        }
        if self.segment_bytes < 4096 {
            return Err(BusError::InvalidConfig {
                what: "segment_bytes",
                reason: format!("must be at least 4096, is {}", self.segment_bytes),
            });
        }
        if self.max_batch_bytes == 0 {
            return Err(BusError::InvalidConfig {
                what: "max_batch_bytes",
                reason: "must be positive".into(),
            });
        }
        Ok(())
    }
}

/// The current time on both clocks the backend uses: tokio's (for
/// deadlines, so tests can pause it) and a wall clock derived from it (for
/// stored timestamps, ages and the dedup window).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub instant: Instant,
    pub wall_ns: u64,
}

#[derive(Debug, Clone, Copy)]
struct Clock {
    base_wall_ns: u64,
    base: Instant,
}

impl Clock {
    fn new() -> Self {
        let base_wall_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self {
            base_wall_ns,
            base: Instant::now(),
        }
    }

    fn now(&self) -> Now {
        let instant = Instant::now();
        let since = u64::try_from(instant.duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        Now {
            instant,
            wall_ns: self.base_wall_ns.saturating_add(since),
        }
    }
}

/// A stream's counters, updated without a lock (a publish adds to one
/// of them).
#[derive(Default)]
pub(crate) struct AtomicCounters {
    published: AtomicU64,
    duplicates: AtomicU64,
    delivered: AtomicU64,
    redelivered: AtomicU64,
    acked: AtomicU64,
    naked: AtomicU64,
    terminated: AtomicU64,
    dead_lettered: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl AtomicCounters {
    fn snapshot(&self) -> StreamCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StreamCounters {
            published: get(&self.published),
            duplicates: get(&self.duplicates),
            delivered: get(&self.delivered),
            redelivered: get(&self.redelivered),
            acked: get(&self.acked),
            naked: get(&self.naked),
            terminated: get(&self.terminated),
            dead_lettered: get(&self.dead_lettered),
        }
    }
}

/// The bus's counters: per stream name (kept when a stream is deleted, and
/// continued when one of the same name is created again) and refusals.
#[derive(Default)]
struct Counters {
    streams: Mutex<BTreeMap<String, Arc<AtomicCounters>>>,
    refusals: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    /// The counters of stream `s`, looked up by name once per stream.
    fn of<'a>(&self, s: &'a Stream) -> &'a AtomicCounters {
        s.counters.get_or_init(|| {
            lock(&self.streams)
                .entry(s.name.clone())
                .or_default()
                .clone()
        })
    }

    fn refuse(&self, reason: &str) {
        *lock(&self.refusals).entry(reason.to_owned()).or_default() += 1;
    }

    /// Counts an error if it is a refusal of the caller's input.
    fn check<T>(&self, r: Result<T, BusError>) -> Result<T, BusError> {
        if let Err(e) = &r
            && let Some(reason) = e.refusal_reason()
        {
            self.refuse(reason);
        }
        r
    }

    fn snapshot(&self) -> BusCounters {
        BusCounters {
            streams: lock(&self.streams)
                .iter()
                .map(|(n, c)| (n.clone(), c.snapshot()))
                .collect(),
            refusals: lock(&self.refusals).clone(),
        }
    }
}

struct Inner {
    root: Option<PathBuf>,
    config: EmbeddedConfig,
    clock: Clock,
    streams: RwLock<BTreeMap<String, Arc<Stream>>>,
    counters: Counters,
}

/// The embedded backend. Cheap to clone (one shared handle).
#[derive(Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBus")
            .field("root", &self.inner.root)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl EmbeddedBus {
    /// Opens (or creates) a bus stored under `root`, recovering every
    /// stream: torn tails are truncated, indices, dedup ids and consumer
    /// state rebuilt. Only one process may open a root at a time.
    pub fn open(root: impl AsRef<Path>, config: EmbeddedConfig) -> Result<Self, BusError> {
        config.validate()?;
        let root = root.as_ref().to_owned();
        let sdir = root.join("streams");
        fs::create_dir_all(&sdir).map_err(|e| BusError::io("create directory", &sdir, &e))?;
        let clock = Clock::new();
        let mut streams = BTreeMap::new();
        let mut dirs: Vec<PathBuf> = fs::read_dir(&sdir)
            .map_err(|e| BusError::io("list", &sdir, &e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("stream.json").is_file())
            .collect();
        dirs.sort();
        for dir in dirs {
            let name = dir
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            let dlq = (!name.ends_with(DLQ_SUFFIX)).then(|| dlq_stream_name(&name));
            let stream = disk::open_stream(&dir, dlq, limits(&config), clock.now())?;
            if stream.name != name {
                return Err(BusError::Corrupt {
                    path: dir.join("stream.json").display().to_string(),
                    offset: 0,
                    reason: format!(
                        "names stream {:?} but lives in directory {name:?}",
                        stream.name
                    ),
                });
            }
            streams.insert(name, stream);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                root: Some(root),
                config,
                clock,
                streams: RwLock::new(streams),
                counters: Counters::default(),
            }),
        })
    }

    /// A bus that keeps everything in memory (tests, ephemeral use): the
    /// same code minus the disk; everything is lost when it is dropped.
    pub fn memory(config: EmbeddedConfig) -> Result<Self, BusError> {
        config.validate()?;
        Ok(Self {
            inner: Arc::new(Inner {
                root: None,
                config,
                clock: Clock::new(),
                streams: RwLock::new(BTreeMap::new()),
                counters: Counters::default(),
            }),
        })
    }

    /// Names of all streams (dead-letter streams included), sorted.
    pub fn stream_names(&self) -> Vec<String> {
        self.streams_read().keys().cloned().collect()
    }

    /// Where the bus is stored (none in memory mode).
    pub fn root(&self) -> Option<&Path> {
        self.inner.root.as_deref()
    }

    /// Stops every writer thread after the work already queued; later
    /// calls fail with [`BusError::Closed`].
    pub async fn close(&self) {
        let streams: Vec<Arc<Stream>> = self.streams_read().values().cloned().collect();
        let _ = tokio::task::spawn_blocking(move || streams.iter().for_each(|s| s.close())).await;
    }

    fn streams_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Stream>>> {
        self.inner
            .streams
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn streams_write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Stream>>> {
        self.inner
            .streams
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now(&self) -> Now {
        self.inner.clock.now()
    }

    fn stream(&self, name: &str) -> Result<Arc<Stream>, BusError> {
        self.streams_read()
            .get(name)
            .cloned()
            .ok_or_else(|| BusError::StreamNotFound {
                name: name.to_owned(),
            })
    }

    fn stream_for(&self, subject: &Subject) -> Result<Arc<Stream>, BusError> {
        self.streams_read()
            .values()
            .find(|s| s.config.captures(subject))
            .cloned()
            .ok_or_else(|| BusError::NoStream {
                subject: subject.to_string(),
            })
    }

    fn create_one(
        &self,
        config: StreamConfig,
        dlq: Option<String>,
    ) -> Result<Arc<Stream>, BusError> {
        let mut streams = self.streams_write();
        if let Some(s) = streams.get(&config.name) {
            if s.config == config {
                return Ok(s.clone());
            }
            return Err(BusError::StreamExists { name: config.name });
        }
        for other in streams.values() {
            for f in &config.subjects {
                if let Some(of) = other.config.subjects.iter().find(|o| o.overlaps(f)) {
                    return Err(BusError::SubjectsOverlap {
                        stream: config.name.clone(),
                        filter: f.to_string(),
                        other: other.name.clone(),
                        other_filter: of.to_string(),
                    });
                }
            }
        }
        let stream = match &self.inner.root {
            None => Stream::memory(config, dlq),
            Some(root) => {
                let dir = root.join("streams").join(&config.name);
                disk::create_stream_dir(&dir, &config)?;
                disk::open_stream(&dir, dlq, limits(&self.inner.config), self.now())?
            }
        };
        streams.insert(stream.name.clone(), stream.clone());
        Ok(stream)
    }

    /// Publishes without the publisher checks (for the bus's own dead
    /// letters and replays, whose headers and sizes were checked when first
    /// published).
    async fn publish_internal(&self, msg: OutgoingMessage) -> Result<PublishAck, BusError> {
        let stream = self.stream_for(&msg.subject)?;
        self.publish_to(&stream, msg).await
    }

    /// Publishes to `stream`, the one that captures the message's subject.
    async fn publish_to(
        &self,
        stream: &Arc<Stream>,
        msg: OutgoingMessage,
    ) -> Result<PublishAck, BusError> {
        let (sequence, duplicate) = stream.publish(msg, self.now()).await?;
        let c = self.inner.counters.of(stream);
        add(
            if duplicate {
                &c.duplicates
            } else {
                &c.published
            },
            1,
        );
        Ok(PublishAck {
            stream: stream.name.clone(),
            sequence,
            duplicate,
        })
    }

    async fn publish_checked(&self, msg: OutgoingMessage) -> Result<PublishAck, BusError> {
        msg.validate()?;
        if msg.subject.as_str().starts_with("$DLQ.") {
            return Err(BusError::InvalidHeader {
                name: "subject".into(),
                reason: format!(
                    "{} is reserved for dead letters; use dlq replay to move them",
                    msg.subject
                ),
            });
        }
        let size = msg.size();
        let limit = self.inner.config.max_message_bytes;
        if size > limit {
            return Err(BusError::MessageTooLarge { size, limit });
        }
        let stream = self.stream_for(&msg.subject)?;
        if let Some(limit) = stream.config.max_message_size
            && size > limit
        {
            return Err(BusError::MessageTooLarge { size, limit });
        }
        // The stream found above: one lookup per publish.
        self.publish_to(&stream, msg).await
    }

    /// Moves one message to the dead-letter stream, then lets the consumer
    /// forget it. If the move fails the message stays pending.
    async fn dead_letter(
        &self,
        s: &Arc<Stream>,
        consumer: &str,
        cand: DeadCandidate,
    ) -> Result<(), BusError> {
        let result = self.dead_letter_inner(s, consumer, &cand).await;
        if result.is_err() {
            s.abort_dead(consumer, cand.seq);
        }
        result
    }

    async fn dead_letter_inner(
        &self,
        s: &Arc<Stream>,
        consumer: &str,
        cand: &DeadCandidate,
    ) -> Result<(), BusError> {
        let message = match s.read(cand.seq) {
            Ok(m) => Some(m),
            Err(BusError::MessageNotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        if let (Some(m), Some(dlq)) = (message, &s.dlq) {
            let mut headers = Headers::new();
            let reason: String = cand
                .reason
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(1024)
                .collect();
            let mut push = |n: &str, v: String| headers.push_unchecked(n.to_owned(), v);
            push(dlq_headers::REASON, reason);
            push(dlq_headers::STREAM, s.name.clone());
            push(dlq_headers::CONSUMER, consumer.to_owned());
            push(dlq_headers::SEQUENCE, cand.seq.to_string());
            push(dlq_headers::SUBJECT, m.subject.to_string());
            push(dlq_headers::DELIVERIES, cand.deliveries.to_string());
            if let Some(id) = &m.msg_id {
                push(dlq_headers::MSG_ID, id.clone());
            }
            for (n, v) in m.headers.iter() {
                push(n, v.to_owned());
            }
            let subject = Subject::new(&dlq_subject(&s.name, consumer))?;
            let out = OutgoingMessage {
                subject,
                headers,
                msg_id: Some(format!("dlq.{}.{consumer}.{}", s.name, cand.seq)),
                payload: m.payload,
            };
            let dstream = self.stream(dlq)?;
            dstream.publish(out, self.now()).await?;
            add(&self.inner.counters.of(&dstream).published, 1);
            add(&self.inner.counters.of(s).dead_lettered, 1);
        } else if s.dlq.is_none() {
            tracing::warn!(stream = %s.name, consumer, seq = cand.seq, reason = %cand.reason,
                "message of a dead-letter stream given up by its consumer; it stays in the stream");
        }
        s.finish_dead(consumer, cand.seq, self.now()).await
    }

    fn parse_token(token: &AckToken) -> Result<(&str, &str, u64), BusError> {
        let bad = || BusError::BadAckToken {
            token: token.0.chars().take(200).collect(),
        };
        let mut parts = token.0.split('.');
        let (Some(stream), Some(consumer), Some(seq), Some(_delivered), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        let seq = seq.parse::<u64>().map_err(|_| bad())?;
        Ok((stream, consumer, seq))
    }
}

fn limits(c: &EmbeddedConfig) -> DiskLimits {
    DiskLimits {
        segment_bytes: c.segment_bytes,
        max_batch_bytes: c.max_batch_bytes,
        // A batch stops growing past max_batch_bytes, so it spans at most
        // that plus one record: a message (payload and headers) with its
        // subject, id, dead-letter headers and framing (well under 64 KiB).
        torn_window: c.max_batch_bytes + c.max_message_bytes + (64 << 10),
    }
}

impl Backend for EmbeddedBus {
    async fn create_stream(&self, config: StreamConfig) -> Result<StreamInfo, BusError> {
        self.inner.counters.check(config.validate())?;
        let dlq_name = dlq_stream_name(&config.name);
        let mut dlq = StreamConfig::new(
            dlq_name.clone(),
            vec![SubjectFilter::new(&format!("$DLQ.{}.>", config.name))?],
        );
        dlq.duplicate_window = config.duplicate_window;
        let this = self.clone();
        let main = tokio::task::spawn_blocking(move || {
            this.create_one(dlq, None)?;
            this.create_one(config, Some(dlq_name))
        })
        .await
        .map_err(|e| BusError::Io {
            op: "create stream",
            path: String::new(),
            message: e.to_string(),
        })??;
        main.info(self.now())
    }

    async fn delete_stream(&self, name: &str) -> Result<(), BusError> {
        let removed: Vec<Arc<Stream>> = {
            let mut streams = self.streams_write();
            if let Some(source) = name.strip_suffix(DLQ_SUFFIX)
                && streams.contains_key(source)
            {
                return Err(BusError::InvalidConfig {
                    what: "stream",
                    reason: format!(
                        "{name} is the dead-letter stream of {source}; delete {source} to delete both"
                    ),
                });
            }
            let main = streams
                .remove(name)
                .ok_or_else(|| BusError::StreamNotFound {
                    name: name.to_owned(),
                })?;
            let mut out = vec![main.clone()];
            if let Some(d) = main.dlq.as_ref().and_then(|d| streams.remove(d)) {
                out.push(d);
            }
            out
        };
        tokio::task::spawn_blocking(move || {
            for s in removed {
                s.close();
                if let Some(dir) = &s.dir {
                    fs::remove_dir_all(dir).map_err(|e| BusError::io("delete", dir, &e))?;
                    if let Some(parent) = dir.parent() {
                        disk::sync_dir(parent)?;
                    }
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| BusError::Io {
            op: "delete stream",
            path: name.to_owned(),
            message: e.to_string(),
        })?
    }

    async fn stream_info(&self, name: &str) -> Result<StreamInfo, BusError> {
        self.stream(name)?.info(self.now())
    }

    async fn publish(&self, message: OutgoingMessage) -> Result<PublishAck, BusError> {
        let r = self.publish_checked(message).await;
        self.inner.counters.check(r)
    }

    async fn get_message(&self, stream: &str, sequence: u64) -> Result<StoredMessage, BusError> {
        self.stream(stream)?.read(sequence)
    }

    async fn create_consumer(
        &self,
        stream: &str,
        config: ConsumerConfig,
    ) -> Result<ConsumerInfo, BusError> {
        let s = self.stream(stream)?;
        let (info, rx) = s.create_consumer(config, self.now())?;
        s.await_done(rx).await?;
        Ok(info)
    }

    async fn consumer_info(&self, stream: &str, name: &str) -> Result<ConsumerInfo, BusError> {
        self.stream(stream)?.consumer_info(name)
    }

    async fn delete_consumer(&self, stream: &str, name: &str) -> Result<(), BusError> {
        self.stream(stream)?.delete_consumer(name).await
    }

    async fn fetch(
        &self,
        stream: &str,
        consumer: &str,
        request: FetchRequest,
    ) -> Result<Vec<Delivery>, BusError> {
        if request.max_messages == 0 || request.max_messages > 10_000 {
            return Err(BusError::InvalidConfig {
                what: "max_messages",
                reason: format!("must be 1 to 10000, is {}", request.max_messages),
            });
        }
        let s = self.stream(stream)?;
        let deadline = Instant::now() + request.expires.min(Duration::from_secs(3600));
        // Counted before the first look at the stream (see `wake_fetchers`).
        let _fetching = stream::FetchGuard::new(&s.shared);
        loop {
            let notified = s.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.now();
            let picked = s.pick(consumer, request.max_messages, now)?;
            let had_dead = !picked.dead.is_empty();
            for cand in picked.dead {
                self.dead_letter(&s, consumer, cand).await?;
            }
            if !picked.deliver.is_empty() {
                let mut out = Vec::with_capacity(picked.deliver.len());
                for p in picked.deliver {
                    let message = match s.read(p.seq) {
                        Ok(m) => m,
                        // Dropped by a limit since it was picked.
                        Err(BusError::MessageNotFound { .. }) => continue,
                        Err(e) => return Err(e),
                    };
                    out.push(Delivery {
                        message,
                        consumer: consumer.to_owned(),
                        delivered: p.delivered,
                        ack_token: AckToken(format!(
                            "{}.{consumer}.{}.{}",
                            s.name, p.seq, p.delivered
                        )),
                    });
                }
                let c = self.inner.counters.of(&s);
                add(&c.delivered, out.len() as u64);
                add(
                    &c.redelivered,
                    out.iter().filter(|d| d.delivered > 1).count() as u64,
                );
                if !out.is_empty() {
                    return Ok(out);
                }
                continue;
            }
            if had_dead {
                continue;
            }
            if now.instant >= deadline {
                return Ok(Vec::new());
            }
            let wake = picked.next_wake.map_or(deadline, |w| w.min(deadline));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn ack(&self, token: &AckToken, kind: AckKind) -> Result<(), BusError> {
        let (stream, consumer, seq) = self.inner.counters.check(Self::parse_token(token))?;
        let s = self.stream(stream)?;
        let now = self.now();
        match kind {
            AckKind::Ack => {
                let (was, rx) = s.ack(consumer, seq, now)?;
                s.await_done(rx).await?;
                if was {
                    add(&self.inner.counters.of(&s).acked, 1);
                }
                Ok(())
            }
            AckKind::Nak(delay) => {
                let delay = delay
                    .unwrap_or(Duration::ZERO)
                    .min(Duration::from_secs(24 * 3600));
                if s.reschedule(consumer, seq, now.instant + delay, "nak")? {
                    add(&self.inner.counters.of(&s).naked, 1);
                }
                Ok(())
            }
            AckKind::InProgress => {
                let ack_wait = s.ack_wait(consumer)?;
                s.reschedule(consumer, seq, now.instant + ack_wait, "in progress")?;
                Ok(())
            }
            AckKind::Term(reason) => {
                let reason = crate::backend::term_reason(reason.as_deref());
                if let Some(cand) = s.begin_term(consumer, seq, reason)? {
                    add(&self.inner.counters.of(&s).terminated, 1);
                    self.dead_letter(&s, consumer, cand).await?;
                }
                Ok(())
            }
        }
    }

    async fn dlq_list(
        &self,
        stream: &str,
        from_dlq_sequence: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        let s = self.stream(stream)?;
        let d = self.stream(s.dlq.as_deref().ok_or_else(|| BusError::InvalidConfig {
            what: "stream",
            reason: format!(
                "{stream} is a dead-letter stream; list the dead letters of its source stream"
            ),
        })?)?;
        let mut out = Vec::new();
        for seq in d.sequences_from(from_dlq_sequence, limit.min(10_000)) {
            match d.read(seq) {
                Ok(m) => out.push(DeadLetter::from_message(&m)?),
                Err(BusError::MessageNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn dlq_show(&self, stream: &str, dlq_sequence: u64) -> Result<DeadLetter, BusError> {
        let s = self.stream(stream)?;
        let d = self.stream(&s.dlq.clone().unwrap_or_else(|| dlq_stream_name(stream)))?;
        DeadLetter::from_message(&d.read(dlq_sequence)?)
    }

    async fn dlq_replay(&self, stream: &str, dlq_sequence: u64) -> Result<PublishAck, BusError> {
        let dl = self.dlq_show(stream, dlq_sequence).await?;
        let dlq = dlq_stream_name(stream);
        let out = OutgoingMessage {
            subject: dl.original_subject.clone(),
            headers: dl.headers.clone(),
            msg_id: Some(format!("replay.{dlq}.{dlq_sequence}")),
            payload: dl.payload.clone(),
        };
        let ack = self.publish_internal(out).await?;
        match self
            .stream(&dlq)?
            .delete_message(dlq_sequence, self.now())
            .await
        {
            // Replayed concurrently by someone else: the dedup id kept it single.
            Ok(()) | Err(BusError::MessageNotFound { .. }) => Ok(ack),
            Err(e) => Err(e),
        }
    }

    fn counters(&self) -> BusCounters {
        self.inner.counters.snapshot()
    }
}
