//! One stream of the embedded backend: the in-memory index over its log,
//! dedup ids, retention and the state of its consumers. The same code
//! serves the disk and the memory mode; only [`Storage`] differs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use super::Now;
use super::queue::{Batch, BatchEntry, Completion, QueueTx};
use crate::backend::{
    BusError, ConsumerConfig, ConsumerInfo, DeliverPolicy, OutgoingMessage, Retention,
    StoredMessage, StreamConfig, StreamInfo, StreamState,
};
use crate::record::{Decoded, MessageRecord, Record, decode_record, encode_message, encode_record};
use crate::subject::{Subject, SubjectFilter};

/// Locks a mutex, recovering the data if a holder panicked (the state is
/// kept consistent by never panicking while holding it).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Completion of a job sent to the writer, to await (none in memory mode).
pub(crate) type Waiter = Option<oneshot::Receiver<Completion>>;

/// Where a message's bytes live.
#[derive(Debug, Clone)]
pub(crate) enum Loc {
    /// In memory (memory mode).
    Memory(Arc<MessageRecord>),
    /// In a segment file.
    Disk {
        /// Segment base sequence.
        segment: u64,
        /// Byte offset of the record.
        offset: u64,
        /// Encoded record length.
        len: u32,
    },
}

/// Index entry of a held message.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub subject: Subject,
    pub time_ns: u64,
    pub size: u64,
    pub loc: Loc,
}

/// How the stream stores records.
pub(crate) enum Storage {
    Memory,
    Disk(QueueTx),
    Closed,
}

/// A delivery awaiting acknowledgement, or a nak'd one awaiting redelivery.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub deliveries: u32,
    pub deadline: Instant,
    pub last: &'static str,
    /// Being moved to the dead-letter stream; not delivered again.
    pub dead_lettering: bool,
}

/// A durable consumer's state.
#[derive(Debug, Clone)]
pub(crate) struct Consumer {
    pub config: ConsumerConfig,
    /// Next stream sequence to consider for a first delivery.
    pub cursor: u64,
    pub pending: BTreeMap<u64, Pending>,
    pub dirty: bool,
}

/// A consumer's state file.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ConsumerFile {
    pub version: u32,
    pub config: ConsumerConfig,
    pub cursor: u64,
    /// (sequence, deliveries) of messages delivered and not acknowledged.
    pub pending: Vec<(u64, u32)>,
}

/// Highest sequence made visible, and whether the log failed.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Durable {
    pub seq: u64,
    pub poisoned: bool,
}

/// Everything guarded by the stream's lock.
pub(crate) struct State {
    pub msgs: BTreeMap<u64, Entry>,
    pub bytes: u64,
    pub next_seq: u64,
    /// Every message below this is gone.
    pub floor: u64,
    pub dedup: HashMap<String, (u64, u64)>,
    pub dedup_order: VecDeque<(u64, String)>,
    pub consumers: BTreeMap<String, Consumer>,
    /// Open segment files for reads, by base sequence.
    pub segments: BTreeMap<u64, (Arc<File>, PathBuf)>,
    pub storage: Storage,
    pub poisoned: Option<String>,
}

impl State {
    pub fn new(storage: Storage) -> Self {
        Self {
            msgs: BTreeMap::new(),
            bytes: 0,
            next_seq: 1,
            floor: 1,
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            consumers: BTreeMap::new(),
            segments: BTreeMap::new(),
            storage,
            poisoned: None,
        }
    }

    pub fn insert(&mut self, seq: u64, entry: Entry) {
        self.bytes += entry.size;
        if let Some(old) = self.msgs.insert(seq, entry) {
            self.bytes -= old.size;
        }
    }

    pub fn remove(&mut self, seq: u64) -> bool {
        match self.msgs.remove(&seq) {
            Some(e) => {
                self.bytes -= e.size;
                true
            }
            None => false,
        }
    }

    /// Lowest sequence still needed on disk.
    pub fn min_live(&self) -> u64 {
        self.msgs.keys().next().copied().unwrap_or(self.next_seq)
    }

    pub fn remember_id(&mut self, id: String, seq: u64, time_ns: u64) {
        self.dedup.insert(id.clone(), (seq, time_ns));
        self.dedup_order.push_back((time_ns, id));
    }

    pub fn prune_dedup(&mut self, window_ns: u64, now_ns: u64) {
        while let Some((t, _)) = self.dedup_order.front() {
            if t.saturating_add(window_ns) > now_ns {
                break;
            }
            if let Some((t, id)) = self.dedup_order.pop_front()
                && self.dedup.get(&id).is_some_and(|&(_, at)| at == t)
            {
                self.dedup.remove(&id);
            }
        }
    }

    /// Applies the limits; returns the new floor if it moved.
    pub fn apply_limits(&mut self, config: &StreamConfig, now_ns: u64) -> Option<u64> {
        let mut dropped = None;
        let mut pop = |st: &mut State| {
            if let Some((seq, e)) = st.msgs.pop_first() {
                st.bytes -= e.size;
                dropped = Some(seq);
            }
        };
        if let Some(max) = config.max_messages {
            while self.msgs.len() as u64 > max {
                pop(self);
            }
        }
        if let Some(max) = config.max_bytes {
            while self.bytes > max {
                pop(self);
            }
        }
        if let Some(age) = config.max_age {
            let cutoff = now_ns.saturating_sub(u64::try_from(age.as_nanos()).unwrap_or(u64::MAX));
            while self
                .msgs
                .first_key_value()
                .is_some_and(|(_, e)| e.time_ns < cutoff)
            {
                pop(self);
            }
        }
        let seq = dropped?;
        self.floor = self.floor.max(seq + 1);
        Some(self.floor)
    }

    pub fn stream_state(&self) -> StreamState {
        StreamState {
            messages: self.msgs.len() as u64,
            bytes: self.bytes,
            first_seq: self.msgs.keys().next().copied().unwrap_or(0),
            last_seq: self.next_seq - 1,
        }
    }

    pub fn consumer_info(&self, stream: &str, c: &Consumer) -> ConsumerInfo {
        let num_pending = self
            .msgs
            .range(c.cursor..)
            .filter(|(_, e)| {
                c.config
                    .filter_subject
                    .as_ref()
                    .is_none_or(|f| f.matches(&e.subject))
            })
            .count() as u64;
        ConsumerInfo {
            stream: stream.to_owned(),
            config: c.config.clone(),
            num_pending,
            num_ack_pending: c.pending.len() as u64,
            delivered_seq: c.cursor.saturating_sub(1),
        }
    }

    /// Adds a submission to the writer's open batch (disk; `fill` appends
    /// to it) or does nothing (memory). Returns a receiver to await when
    /// `wait`.
    pub fn submit(
        &mut self,
        stream: &str,
        fill: impl FnOnce(&mut Batch) -> Result<(), BusError>,
        wait: bool,
    ) -> Result<Waiter, BusError> {
        match &self.storage {
            Storage::Memory => Ok(None),
            Storage::Closed => Err(BusError::Closed {
                stream: stream.to_owned(),
            }),
            Storage::Disk(q) => q.0.submit(stream, fill, wait),
        }
    }

    /// Persists a control record (delete or floor) and/or dirty consumer state.
    pub fn submit_record(
        &mut self,
        stream: &str,
        record: Option<Record>,
        wait: bool,
    ) -> Result<Waiter, BusError> {
        self.submit(
            stream,
            |b| match record {
                Some(r) => encode_record(&r, &mut b.bytes).map_err(encode_error),
                None => Ok(()),
            },
            wait,
        )
    }

    /// Serializes and clears the dirty consumers.
    pub fn take_dirty_consumers(&mut self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for (name, c) in self.consumers.iter_mut().filter(|(_, c)| c.dirty) {
            c.dirty = false;
            let file = ConsumerFile {
                version: 1,
                config: c.config.clone(),
                cursor: c.cursor,
                pending: c.pending.iter().map(|(s, p)| (*s, p.deliveries)).collect(),
            };
            if let Ok(bytes) = serde_json::to_vec(&file) {
                out.push((name.clone(), bytes));
            }
        }
        out
    }
}

/// A message chosen for delivery.
pub(crate) struct Pick {
    pub seq: u64,
    pub delivered: u32,
}

/// A message to move to the dead-letter stream.
#[derive(Debug, Clone)]
pub(crate) struct DeadCandidate {
    pub seq: u64,
    pub deliveries: u32,
    pub reason: String,
}

/// What one pass of a fetch found.
pub(crate) struct Picked {
    pub deliver: Vec<Pick>,
    pub dead: Vec<DeadCandidate>,
    pub next_wake: Option<Instant>,
}

/// Shared between the stream handle and its writer thread.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    /// Woken on new messages and on naks.
    pub notify: Notify,
    pub durable: watch::Sender<Durable>,
    /// Fetches between registering for `notify` and returning (see
    /// [`Shared::wake_fetchers`]).
    pub fetchers: AtomicUsize,
}

impl Shared {
    pub fn new(state: State, durable: Durable) -> Self {
        Self {
            state: Mutex::new(state),
            notify: Notify::new(),
            durable: watch::Sender::new(durable),
            fetchers: AtomicUsize::new(0),
        }
    }

    /// Wakes the fetches waiting for new messages, if there are any: call
    /// after the messages were made visible and the state's lock released.
    ///
    /// A fetch counts itself in `fetchers` before it looks at the state
    /// (under the lock). If this reads no fetcher, a fetch that counts
    /// itself afterwards takes the lock after the messages were inserted,
    /// so it sees them without a wake-up. This spares a publish in memory
    /// mode the `Notify`'s lock when nobody is fetching.
    pub fn wake_fetchers(&self) {
        if self.fetchers.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }
}

/// A fetch counted in [`Shared::fetchers`] while it lives.
pub(crate) struct FetchGuard<'a>(&'a Shared);

impl<'a> FetchGuard<'a> {
    pub fn new(shared: &'a Shared) -> Self {
        shared.fetchers.fetch_add(1, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for FetchGuard<'_> {
    fn drop(&mut self) {
        self.0.fetchers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One stream.
pub(crate) struct Stream {
    pub name: String,
    pub config: StreamConfig,
    /// Its dead-letter stream (none for a dead-letter stream).
    pub dlq: Option<String>,
    pub dir: Option<PathBuf>,
    pub shared: Arc<Shared>,
    pub writer: Mutex<Option<JoinHandle<()>>>,
    /// Its counters, shared with the bus's table by name (set on first use).
    pub counters: std::sync::OnceLock<Arc<super::AtomicCounters>>,
}

fn subject_matches(filter: Option<&SubjectFilter>, subject: &Subject) -> bool {
    filter.is_none_or(|f| f.matches(subject))
}

impl Stream {
    pub fn memory(config: StreamConfig, dlq: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            name: config.name.clone(),
            config,
            dlq,
            dir: None,
            shared: Arc::new(Shared::new(State::new(Storage::Memory), Durable::default())),
            writer: Mutex::new(None),
            counters: std::sync::OnceLock::new(),
        })
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    pub fn info(&self, now: Now) -> Result<StreamInfo, BusError> {
        let mut st = self.state();
        self.enforce_limits(&mut st, now)?;
        Ok(StreamInfo {
            config: self.config.clone(),
            state: st.stream_state(),
            dead_letter_stream: self.dlq.clone(),
        })
    }

    /// Applies the limits and persists a moved floor (without waiting).
    pub fn enforce_limits(&self, st: &mut State, now: Now) -> Result<(), BusError> {
        if let Some(floor) = st.apply_limits(&self.config, now.wall_ns) {
            st.submit_record(
                &self.name,
                Some(Record::Floor {
                    seq: floor,
                    time_ns: now.wall_ns,
                }),
                false,
            )?;
        }
        Ok(())
    }

    fn poisoned(&self, st: &State) -> Result<(), BusError> {
        match &st.poisoned {
            Some(reason) => Err(BusError::Poisoned {
                stream: self.name.clone(),
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Stores a message; returns (sequence, duplicate) once durable.
    pub async fn publish(&self, msg: OutgoingMessage, now: Now) -> Result<(u64, bool), BusError> {
        enum Step {
            Done(u64),
            Duplicate(u64),
            Wait(u64, oneshot::Receiver<Completion>),
        }
        let window = u64::try_from(self.config.duplicate_window.as_nanos()).unwrap_or(u64::MAX);
        let step = {
            let mut st = self.state();
            self.poisoned(&st)?;
            st.prune_dedup(window, now.wall_ns);
            if let Some(&(seq, _)) = msg.msg_id.as_ref().and_then(|id| st.dedup.get(id)) {
                Step::Duplicate(seq)
            } else {
                let seq = st.next_seq;
                let record = MessageRecord {
                    seq,
                    time_ns: now.wall_ns,
                    subject: msg.subject,
                    msg_id: msg.msg_id,
                    headers: msg.headers,
                    payload: msg.payload,
                };
                let size = record.encoded_len() as u64;
                match &st.storage {
                    Storage::Memory => {
                        st.next_seq += 1;
                        if let Some(id) = record.msg_id.clone() {
                            st.remember_id(id, seq, now.wall_ns);
                        }
                        let entry = Entry {
                            subject: record.subject.clone(),
                            time_ns: now.wall_ns,
                            size,
                            loc: Loc::Memory(Arc::new(record)),
                        };
                        st.insert(seq, entry);
                        st.apply_limits(&self.config, now.wall_ns);
                        // Visible now: nothing waits on `durable` in memory
                        // mode (see `wait_durable`).
                        drop(st);
                        self.shared.wake_fetchers();
                        Step::Done(seq)
                    }
                    Storage::Closed => {
                        return Err(BusError::Closed {
                            stream: self.name.clone(),
                        });
                    }
                    Storage::Disk(_) => {
                        let id = record.msg_id.clone();
                        // Encoded straight into the writer's open batch; the
                        // subject moves on to the index entry.
                        let fill = |b: &mut Batch| {
                            let offset = b.bytes.len();
                            encode_message(&record, &mut b.bytes).map_err(encode_error)?;
                            b.entries.push(BatchEntry {
                                seq,
                                subject: record.subject,
                                time_ns: now.wall_ns,
                                offset,
                                len: (b.bytes.len() - offset) as u32,
                            });
                            Ok(())
                        };
                        let rx = st.submit(&self.name, fill, true)?;
                        st.next_seq += 1;
                        if let Some(id) = id {
                            st.remember_id(id, seq, now.wall_ns);
                        }
                        match rx {
                            Some(rx) => Step::Wait(seq, rx),
                            None => Step::Done(seq),
                        }
                    }
                }
            }
        };
        match step {
            Step::Done(seq) => Ok((seq, false)),
            Step::Duplicate(seq) => {
                self.wait_durable(seq).await?;
                Ok((seq, true))
            }
            Step::Wait(seq, rx) => {
                self.await_done(Some(rx)).await?;
                // Only a count, size or age limit can drop anything.
                let c = &self.config;
                if c.max_messages.is_some() || c.max_bytes.is_some() || c.max_age.is_some() {
                    let mut st = self.state();
                    self.enforce_limits(&mut st, now)?;
                }
                Ok((seq, false))
            }
        }
    }

    async fn wait_durable(&self, seq: u64) -> Result<(), BusError> {
        if matches!(self.state().storage, Storage::Memory) {
            // A message is visible as soon as it is stored.
            return Ok(());
        }
        let mut rx = self.shared.durable.subscribe();
        let d = *rx
            .wait_for(|d| d.seq >= seq || d.poisoned)
            .await
            .map_err(|_| BusError::Closed {
                stream: self.name.clone(),
            })?;
        if d.poisoned && d.seq < seq {
            return Err(BusError::Poisoned {
                stream: self.name.clone(),
                reason: self.state().poisoned.clone().unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Reads a held message, checking its CRC again for disk records.
    pub fn read(&self, seq: u64) -> Result<StoredMessage, BusError> {
        let not_found = || BusError::MessageNotFound {
            stream: self.name.clone(),
            sequence: seq,
        };
        let (segment, offset, len, file, path) = {
            let st = self.state();
            let entry = st.msgs.get(&seq).ok_or_else(not_found)?;
            match &entry.loc {
                Loc::Memory(r) => return Ok(self.stored(r)),
                Loc::Disk {
                    segment,
                    offset,
                    len,
                } => {
                    let (file, path) =
                        st.segments
                            .get(segment)
                            .cloned()
                            .ok_or_else(|| BusError::Corrupt {
                                path: format!("{}/segment {segment}", self.name),
                                offset: *offset,
                                reason: "segment missing for a held message".into(),
                            })?;
                    (*segment, *offset, *len, file, path)
                }
            }
        };
        let _ = segment;
        let mut buf = vec![0; len as usize];
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| BusError::io("read", &path, &e))?;
        let corrupt = |reason: String| BusError::Corrupt {
            path: path.display().to_string(),
            offset,
            reason,
        };
        match decode_record(&buf) {
            Ok(Decoded::Record(Record::Message(m), used)) if used == buf.len() && m.seq == seq => {
                Ok(self.stored(&m))
            }
            Ok(Decoded::Record(r, _)) => Err(corrupt(format!(
                "expected message {seq}, found record {}",
                r.seq()
            ))),
            Ok(Decoded::Incomplete { .. }) => Err(corrupt("record cut short".into())),
            Err(e) => Err(corrupt(e.to_string())),
        }
    }

    fn stored(&self, m: &MessageRecord) -> StoredMessage {
        StoredMessage {
            stream: self.name.clone(),
            sequence: m.seq,
            subject: m.subject.clone(),
            time_ns: m.time_ns,
            msg_id: m.msg_id.clone(),
            headers: m.headers.clone(),
            payload: m.payload.clone(),
        }
    }

    /// Removes a message durably (dead-letter replay).
    pub async fn delete_message(&self, seq: u64, now: Now) -> Result<(), BusError> {
        let rx = {
            let mut st = self.state();
            self.poisoned(&st)?;
            if !st.remove(seq) {
                return Err(BusError::MessageNotFound {
                    stream: self.name.clone(),
                    sequence: seq,
                });
            }
            st.submit_record(
                &self.name,
                Some(Record::Delete {
                    seq,
                    time_ns: now.wall_ns,
                }),
                true,
            )?
        };
        self.await_done(rx).await
    }

    pub async fn await_done(&self, rx: Waiter) -> Result<(), BusError> {
        match rx {
            None => Ok(()),
            Some(rx) => rx
                .await
                .map_err(|_| BusError::Closed {
                    stream: self.name.clone(),
                })?
                .fan_out(),
        }
    }

    /// Sequences held from `from` on, at most `limit`.
    pub fn sequences_from(&self, from: u64, limit: usize) -> Vec<u64> {
        self.state()
            .msgs
            .range(from..)
            .take(limit)
            .map(|(s, _)| *s)
            .collect()
    }

    pub fn create_consumer(
        &self,
        config: ConsumerConfig,
        now: Now,
    ) -> Result<(ConsumerInfo, Waiter), BusError> {
        config.validate()?;
        if let Some(f) = &config.filter_subject
            && !self.config.subjects.iter().any(|s| f.overlaps(s))
        {
            return Err(BusError::InvalidConfig {
                what: "filter_subject",
                reason: format!("{f} matches no subject of stream {:?}", self.name),
            });
        }
        let mut st = self.state();
        self.poisoned(&st)?;
        if let Some(c) = st.consumers.get(&config.durable_name) {
            if c.config == config {
                return Ok((st.consumer_info(&self.name, c), None));
            }
            return Err(BusError::ConsumerExists {
                stream: self.name.clone(),
                name: config.durable_name,
            });
        }
        if self.config.retention == Retention::WorkQueue {
            for (name, other) in &st.consumers {
                let overlap = match (&config.filter_subject, &other.config.filter_subject) {
                    (Some(a), Some(b)) => a.overlaps(b),
                    _ => true,
                };
                if overlap {
                    return Err(BusError::WorkQueueOverlap {
                        stream: self.name.clone(),
                        name: config.durable_name,
                        other: name.clone(),
                    });
                }
            }
        }
        let cursor = match config.deliver_policy {
            DeliverPolicy::All => 1,
            DeliverPolicy::New => st.next_seq,
            DeliverPolicy::ByStartSequence(s) => s.max(1),
        };
        let _ = now;
        let name = config.durable_name.clone();
        let c = Consumer {
            config,
            cursor,
            pending: BTreeMap::new(),
            dirty: true,
        };
        let info = st.consumer_info(&self.name, &c);
        st.consumers.insert(name, c);
        let rx = st.submit_record(&self.name, None, true)?;
        Ok((info, rx))
    }

    pub fn consumer_info(&self, name: &str) -> Result<ConsumerInfo, BusError> {
        let st = self.state();
        let c = st
            .consumers
            .get(name)
            .ok_or_else(|| self.no_consumer(name))?;
        Ok(st.consumer_info(&self.name, c))
    }

    pub fn ack_wait(&self, name: &str) -> Result<std::time::Duration, BusError> {
        let st = self.state();
        let c = st
            .consumers
            .get(name)
            .ok_or_else(|| self.no_consumer(name))?;
        Ok(c.config.ack_wait)
    }

    pub fn no_consumer(&self, name: &str) -> BusError {
        BusError::ConsumerNotFound {
            stream: self.name.clone(),
            name: name.to_owned(),
        }
    }

    pub async fn delete_consumer(&self, name: &str) -> Result<(), BusError> {
        let rx = {
            let mut st = self.state();
            if st.consumers.remove(name).is_none() {
                return Err(self.no_consumer(name));
            }
            st.submit(
                &self.name,
                |b| {
                    b.delete_consumers.push(name.to_owned());
                    Ok(())
                },
                true,
            )?
        };
        self.await_done(rx).await
    }

    /// One pass of a fetch: due redeliveries, then new messages.
    pub fn pick(&self, consumer: &str, max: usize, now: Now) -> Result<Picked, BusError> {
        let mut st = self.state();
        self.poisoned(&st)?;
        self.enforce_limits(&mut st, now)?;
        let State {
            msgs, consumers, ..
        } = &mut *st;
        let c = consumers
            .get_mut(consumer)
            .ok_or_else(|| self.no_consumer(consumer))?;
        let mut out = Picked {
            deliver: Vec::new(),
            dead: Vec::new(),
            next_wake: None,
        };
        let ack_wait = c.config.ack_wait;
        let max_deliver = c.config.max_deliver;
        let before = c.pending.len();
        c.pending.retain(|seq, _| msgs.contains_key(seq));
        let mut changed = before != c.pending.len();
        for (&seq, p) in c.pending.iter_mut() {
            if p.dead_lettering {
                continue;
            }
            if p.deadline > now.instant {
                out.next_wake = Some(out.next_wake.map_or(p.deadline, |w| w.min(p.deadline)));
                continue;
            }
            if p.deliveries >= max_deliver {
                p.dead_lettering = true;
                out.dead.push(DeadCandidate {
                    seq,
                    deliveries: p.deliveries,
                    reason: format!(
                        "max_deliver reached: delivered {} times, last ended by {}",
                        p.deliveries, p.last
                    ),
                });
                continue;
            }
            if out.deliver.len() < max {
                p.deliveries += 1;
                p.deadline = now.instant + ack_wait;
                p.last = "ack timeout";
                changed = true;
                out.deliver.push(Pick {
                    seq,
                    delivered: p.deliveries,
                });
            }
        }
        while out.deliver.len() < max && c.pending.len() < c.config.max_ack_pending as usize {
            let filter = c.config.filter_subject.as_ref();
            let next = msgs
                .range(c.cursor..)
                .find(|(_, e)| subject_matches(filter, &e.subject))
                .map(|(s, _)| *s);
            let Some(seq) = next else {
                // Nothing matches up to the newest held message.
                if let Some((&last, _)) = msgs.last_key_value()
                    && last >= c.cursor
                {
                    c.cursor = last + 1;
                    changed = true;
                }
                break;
            };
            c.cursor = seq + 1;
            c.pending.insert(
                seq,
                Pending {
                    deliveries: 1,
                    deadline: now.instant + ack_wait,
                    last: "ack timeout",
                    dead_lettering: false,
                },
            );
            changed = true;
            out.deliver.push(Pick { seq, delivered: 1 });
        }
        if changed {
            c.dirty = true;
        }
        for p in c.pending.values() {
            if !p.dead_lettering && p.deadline > now.instant {
                out.next_wake = Some(out.next_wake.map_or(p.deadline, |w| w.min(p.deadline)));
            }
        }
        Ok(out)
    }

    /// Acknowledges `seq`; returns whether it was pending and a receiver
    /// to await for durability.
    pub fn ack(&self, consumer: &str, seq: u64, now: Now) -> Result<(bool, Waiter), BusError> {
        let mut st = self.state();
        self.poisoned(&st)?;
        let c = st
            .consumers
            .get_mut(consumer)
            .ok_or_else(|| self.no_consumer(consumer))?;
        if c.pending.get(&seq).is_none_or(|p| p.dead_lettering) {
            return Ok((false, None));
        }
        c.pending.remove(&seq);
        c.dirty = true;
        let rx = self.submit_settled(&mut st, seq, now)?;
        Ok((true, rx))
    }

    /// Writes what settling `seq` changes once the consumer has forgotten
    /// it (and marked itself dirty): a delete on a work queue, and the
    /// consumer's state.
    fn submit_settled(&self, st: &mut State, seq: u64, now: Now) -> Result<Waiter, BusError> {
        let record = if self.config.retention == Retention::WorkQueue && st.remove(seq) {
            Some(Record::Delete {
                seq,
                time_ns: now.wall_ns,
            })
        } else {
            None
        };
        st.submit_record(&self.name, record, true)
    }

    /// Sets a pending delivery's deadline (nak or in progress); returns
    /// whether it was pending.
    pub fn reschedule(
        &self,
        consumer: &str,
        seq: u64,
        deadline: Instant,
        why: &'static str,
    ) -> Result<bool, BusError> {
        let mut st = self.state();
        let c = st
            .consumers
            .get_mut(consumer)
            .ok_or_else(|| self.no_consumer(consumer))?;
        let Some(p) = c.pending.get_mut(&seq).filter(|p| !p.dead_lettering) else {
            return Ok(false);
        };
        p.deadline = deadline;
        if why == "nak" {
            p.last = "nak";
        }
        drop(st);
        self.shared.notify.notify_waiters();
        Ok(true)
    }

    /// Marks a pending delivery as being dead-lettered (term).
    pub fn begin_term(
        &self,
        consumer: &str,
        seq: u64,
        reason: String,
    ) -> Result<Option<DeadCandidate>, BusError> {
        let mut st = self.state();
        let c = st
            .consumers
            .get_mut(consumer)
            .ok_or_else(|| self.no_consumer(consumer))?;
        let Some(p) = c.pending.get_mut(&seq).filter(|p| !p.dead_lettering) else {
            return Ok(None);
        };
        p.dead_lettering = true;
        Ok(Some(DeadCandidate {
            seq,
            deliveries: p.deliveries,
            reason,
        }))
    }

    /// Finishes a dead-lettering: the consumer forgets the message and a
    /// work queue deletes it.
    pub async fn finish_dead(&self, consumer: &str, seq: u64, now: Now) -> Result<(), BusError> {
        let rx = {
            let mut st = self.state();
            self.poisoned(&st)?;
            let Some(c) = st.consumers.get_mut(consumer) else {
                return Ok(());
            };
            c.pending.remove(&seq);
            c.dirty = true;
            self.submit_settled(&mut st, seq, now)?
        };
        self.await_done(rx).await
    }

    /// Puts a candidate back if dead-lettering it failed.
    pub fn abort_dead(&self, consumer: &str, seq: u64) {
        let mut st = self.state();
        if let Some(p) = st
            .consumers
            .get_mut(consumer)
            .and_then(|c| c.pending.get_mut(&seq))
        {
            p.dead_lettering = false;
        }
    }

    /// Stops the writer (disk) and waits for it to exit.
    pub fn close(&self) {
        {
            let mut st = self.state();
            st.storage = Storage::Closed;
        }
        self.shared.notify.notify_waiters();
        if let Some(handle) = lock(&self.writer).take() {
            let _ = handle.join();
        }
    }
}

/// A record the bus built could not be encoded (a hard limit of the
/// record format was hit).
pub(crate) fn encode_error(e: crate::record::RecordError) -> BusError {
    match e {
        crate::record::RecordError::TooLarge { size } => BusError::MessageTooLarge {
            size,
            limit: crate::record::MAX_BODY_LEN,
        },
        other => BusError::InvalidHeader {
            name: String::new(),
            reason: other.to_string(),
        },
    }
}
