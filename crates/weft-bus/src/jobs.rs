//! Jobs on top of the bus: submit, pull with a per-worker concurrency
//! limit, heartbeat with progress (extends the lease), complete, fail with
//! retry and exponential backoff, timeout (an expired lease is
//! redelivered), cancel; a job that exhausts its attempts lands in the
//! dead-letter stream with the reason. Works over any [`Backend`].
//!
//! A queue `Q` is three streams:
//! - `JOB_Q`, a work queue capturing `jobs.Q.run.<kind>`: one message per
//!   job, its message id the job id (so a repeated submit of the same id
//!   within the duplicate window stores one job). Every worker fetches
//!   from the one durable consumer `workers`, so competing workers share
//!   the load; its `ack_wait` is the lease and its `max_deliver` the
//!   number of attempts;
//! - `JOBCTL_Q`, capturing `jobs.Q.ctl.cancel`: cancellations, which every
//!   worker reads before it hands out a job and on every heartbeat;
//! - `JOBEVT_Q`, capturing `jobs.Q.evt.<event>`: what happened to jobs
//!   (progress, completed, retrying, failed, cancelled), for observers.
//!
//! Retries: [`Job::fail`] with [`Retry::Yes`] naks the job with the
//! backoff delay `min(base * 2^(attempt-1), max)`; on the last attempt, or
//! with [`Retry::No`], it is terminated into `JOB_Q_DLQ` with the reason.
//! A job whose lease expires (no heartbeat, no outcome, the worker died)
//! is redelivered, and once past its last attempt dead-lettered by the
//! backend with reason `max_deliver reached`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::{
    AckKind, AckToken, Backend, BusError, ConsumerConfig, DeadLetter, FetchRequest,
    OutgoingMessage, Retention, StreamConfig, validate_msg_id, validate_name,
};
use crate::subject::{Subject, SubjectFilter};

/// The durable consumer every worker of a queue fetches from.
pub const WORKERS_CONSUMER: &str = "workers";
/// Most cancellations a worker remembers (older ones are read again from
/// the control stream when it is exceeded).
const MAX_CANCELS: usize = 100_000;
/// Longest progress or outcome note.
pub const MAX_NOTE_LEN: usize = 1024;

/// Errors of the job API.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// The bus refused or failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A queue setting is out of range.
    #[error("invalid job queue setting {what}: {reason}")]
    InvalidConfig {
        /// The setting.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A job kind is not one subject token.
    #[error(
        "job kind {kind:?} is invalid: {reason}; use one token of letters, digits, '-' and '_'"
    )]
    InvalidKind {
        /// The kind.
        kind: String,
        /// The rule broken.
        reason: String,
    },
}

/// How a queue runs its jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobQueueConfig {
    /// Queue name: 1 to 48 of `[A-Za-z0-9_-]`.
    pub name: String,
    /// How long a pulled job is a worker's before it is handed to another
    /// (each heartbeat starts it again).
    pub lease: Duration,
    /// Attempts before a job is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for each further attempt.
    pub backoff_base: Duration,
    /// Longest delay between attempts.
    pub backoff_max: Duration,
    /// How long cancellations and job events are kept.
    pub history: Duration,
}

impl JobQueueConfig {
    /// A queue with a 30 s lease, 5 attempts, backoff 1 s doubling to
    /// 5 min, 24 h of history.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            lease: Duration::from_secs(30),
            max_attempts: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            history: Duration::from_secs(24 * 3600),
        }
    }

    fn validate(&self) -> Result<(), JobError> {
        validate_name("job queue", &self.name)?;
        if self.name.len() > 48 {
            return Err(JobError::InvalidConfig {
                what: "name",
                reason: format!("at most 48 bytes, is {}", self.name.len()),
            });
        }
        if self.max_attempts == 0 {
            return Err(JobError::InvalidConfig {
                what: "max_attempts",
                reason: "must be at least 1".into(),
            });
        }
        if self.backoff_base.is_zero() || self.backoff_max < self.backoff_base {
            return Err(JobError::InvalidConfig {
                what: "backoff",
                reason: format!(
                    "base must be positive and max at least base (base {:?}, max {:?})",
                    self.backoff_base, self.backoff_max
                ),
            });
        }
        if self.history.is_zero() {
            return Err(JobError::InvalidConfig {
                what: "history",
                reason: "must be positive".into(),
            });
        }
        Ok(())
    }

    /// The delay before attempt `attempt + 1` after attempt `attempt`
    /// failed: `min(base * 2^(attempt-1), max)`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff_base
            .checked_mul(factor)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max)
    }

    /// The work-queue stream holding the jobs.
    pub fn job_stream(&self) -> String {
        format!("JOB_{}", self.name)
    }

    /// The stream holding cancellations.
    pub fn control_stream(&self) -> String {
        format!("JOBCTL_{}", self.name)
    }

    /// The stream holding job events.
    pub fn event_stream(&self) -> String {
        format!("JOBEVT_{}", self.name)
    }

    fn subject(&self, part: &str, token: &str) -> Result<Subject, BusError> {
        Ok(Subject::new(&format!("jobs.{}.{part}.{token}", self.name))?)
    }

    fn filter(&self, part: &str) -> Result<SubjectFilter, BusError> {
        Ok(SubjectFilter::new(&format!("jobs.{}.{part}.>", self.name))?)
    }
}

/// What happened to a job, as recorded in the event stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    /// Its sequence in the event stream.
    #[serde(skip)]
    pub sequence: u64,
    /// The job.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// The attempt it happened in (0 for a cancel request).
    pub attempt: u32,
    /// What happened.
    pub event: JobEventKind,
    /// The worker's note (progress text, result, failure reason).
    pub note: Option<String>,
    /// Units done, for progress.
    pub done: Option<u64>,
    /// Units in all, for progress.
    pub total: Option<u64>,
}

/// The kinds of [`JobEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobEventKind {
    /// A heartbeat carried progress.
    Progress,
    /// The job succeeded.
    Completed,
    /// The attempt failed; the job will be retried after the backoff.
    Retrying,
    /// The job failed for good and was moved to the dead-letter stream.
    Failed,
    /// The job was cancelled and removed.
    Cancelled,
}

impl JobEventKind {
    fn token(self) -> &'static str {
        match self {
            JobEventKind::Progress => "progress",
            JobEventKind::Completed => "completed",
            JobEventKind::Retrying => "retrying",
            JobEventKind::Failed => "failed",
            JobEventKind::Cancelled => "cancelled",
        }
    }
}

/// Progress reported with a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    /// Units done.
    pub done: u64,
    /// Units in all, if known.
    pub total: Option<u64>,
    /// A short note (cut to [`MAX_NOTE_LEN`] bytes).
    pub note: Option<String>,
}

/// Whether a failed job may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again after the backoff, unless this was the last attempt.
    Yes,
    /// Never: dead-letter it now.
    No,
}

/// What a worker should do after a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The lease was extended; go on.
    Continue,
    /// The job was cancelled and removed; stop working on it.
    Cancelled,
}

struct Shared<B> {
    bus: B,
    config: JobQueueConfig,
}

/// A job queue over a backend. Cheap to clone.
pub struct JobQueue<B> {
    shared: Arc<Shared<B>>,
}

impl<B> Clone for JobQueue<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<B> std::fmt::Debug for JobQueue<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobQueue")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

fn cut(note: &str) -> String {
    let mut end = note.len().min(MAX_NOTE_LEN);
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

impl<B: Backend> JobQueue<B> {
    /// Opens a queue, creating its streams and consumer if they do not
    /// exist (an existing queue must have the same settings).
    pub async fn open(bus: B, config: JobQueueConfig) -> Result<Self, JobError> {
        config.validate()?;
        let mut jobs = StreamConfig::new(config.job_stream(), vec![config.filter("run")?]);
        jobs.retention = Retention::WorkQueue;
        bus.create_stream(jobs).await?;
        for (name, part) in [
            (config.control_stream(), "ctl"),
            (config.event_stream(), "evt"),
        ] {
            let mut c = StreamConfig::new(name, vec![config.filter(part)?]);
            c.max_age = Some(config.history);
            c.max_messages = Some(MAX_CANCELS as u64);
            bus.create_stream(c).await?;
        }
        let mut consumer = ConsumerConfig::new(WORKERS_CONSUMER);
        consumer.ack_wait = config.lease;
        consumer.max_deliver = config.max_attempts;
        bus.create_consumer(&config.job_stream(), consumer).await?;
        Ok(Self {
            shared: Arc::new(Shared { bus, config }),
        })
    }

    /// The queue's settings.
    pub fn config(&self) -> &JobQueueConfig {
        &self.shared.config
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.shared.bus
    }

    /// Submits a job with a new id (UUIDv7); returns the id.
    pub async fn submit(&self, kind: &str, payload: impl Into<Bytes>) -> Result<String, JobError> {
        let id = uuid::Uuid::now_v7().to_string();
        self.submit_with_id(&id, kind, payload).await?;
        Ok(id)
    }

    /// Submits a job with the caller's id; a second submit of the same id
    /// within the duplicate window stores nothing and returns `true`.
    pub async fn submit_with_id(
        &self,
        id: &str,
        kind: &str,
        payload: impl Into<Bytes>,
    ) -> Result<bool, JobError> {
        validate_msg_id(id)?;
        validate_name("job kind", kind).map_err(|e| JobError::InvalidKind {
            kind: kind.chars().take(64).collect(),
            reason: e.to_string(),
        })?;
        let subject = self.shared.config.subject("run", kind)?;
        let ack = self
            .shared
            .bus
            .publish(OutgoingMessage::new(subject, payload).with_msg_id(id))
            .await?;
        Ok(ack.duplicate)
    }

    /// Cancels a job: a worker that pulls it removes it instead of running
    /// it; a worker running it learns it on its next heartbeat.
    pub async fn cancel(&self, id: &str) -> Result<(), JobError> {
        validate_msg_id(id)?;
        let subject = self.shared.config.subject("ctl", "cancel")?;
        self.shared
            .bus
            .publish(
                OutgoingMessage::new(subject, Bytes::from(id.to_owned()))
                    .with_msg_id(format!("cancel.{id}")),
            )
            .await?;
        Ok(())
    }

    /// Job events from `from_sequence` on, at most `limit`.
    pub async fn events(
        &self,
        from_sequence: u64,
        limit: usize,
    ) -> Result<Vec<JobEvent>, JobError> {
        let stream = self.shared.config.event_stream();
        let info = self.shared.bus.stream_info(&stream).await?;
        let mut out = Vec::new();
        let mut seq = from_sequence.max(info.state.first_seq).max(1);
        while seq <= info.state.last_seq && out.len() < limit {
            match self.shared.bus.get_message(&stream, seq).await {
                Ok(m) => {
                    if let Ok(mut e) = serde_json::from_slice::<JobEvent>(&m.payload) {
                        e.sequence = m.sequence;
                        out.push(e);
                    }
                }
                Err(BusError::MessageNotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            seq += 1;
        }
        Ok(out)
    }

    /// Jobs that failed for good, from `from_dlq_sequence` on.
    pub async fn dead_letters(
        &self,
        from_dlq_sequence: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, JobError> {
        Ok(self
            .shared
            .bus
            .dlq_list(&self.shared.config.job_stream(), from_dlq_sequence, limit)
            .await?)
    }

    /// A worker running at most `concurrency` jobs at once.
    pub fn worker(&self, concurrency: usize) -> Result<Worker<B>, JobError> {
        if concurrency == 0 || concurrency > 10_000 {
            return Err(JobError::InvalidConfig {
                what: "concurrency",
                reason: format!("must be 1 to 10000, is {concurrency}"),
            });
        }
        Ok(Worker {
            shared: Arc::new(WorkerShared {
                queue: self.shared.clone(),
                slots: Arc::new(Semaphore::new(concurrency)),
                cancels: Mutex::new(Cancels::default()),
            }),
        })
    }

    async fn record(
        &self,
        id: &str,
        kind: &str,
        attempt: u32,
        event: JobEventKind,
        note: Option<&str>,
        progress: Option<(u64, Option<u64>)>,
    ) -> Result<(), BusError> {
        let e = JobEvent {
            sequence: 0,
            id: id.to_owned(),
            kind: kind.to_owned(),
            attempt,
            event,
            note: note.map(cut),
            done: progress.map(|p| p.0),
            total: progress.and_then(|p| p.1),
        };
        let payload = serde_json::to_vec(&e).map_err(|err| BusError::InvalidConfig {
            what: "job event",
            reason: err.to_string(),
        })?;
        let subject = self.shared.config.subject("evt", event.token())?;
        self.shared
            .bus
            .publish(OutgoingMessage::new(subject, payload))
            .await?;
        Ok(())
    }
}

#[derive(Default)]
struct Cancels {
    ids: HashSet<String>,
    /// Next control-stream sequence to read.
    next: u64,
}

struct WorkerShared<B> {
    queue: Arc<Shared<B>>,
    slots: Arc<Semaphore>,
    cancels: Mutex<Cancels>,
}

/// One worker: pulls jobs up to its concurrency limit. Cheap to clone.
pub struct Worker<B> {
    shared: Arc<WorkerShared<B>>,
}

impl<B> Clone for Worker<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<B> std::fmt::Debug for Worker<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("queue", &self.shared.queue.config.name)
            .field("free_slots", &self.shared.slots.available_permits())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<B: Backend> Worker<B> {
    fn queue(&self) -> JobQueue<B> {
        JobQueue {
            shared: self.shared.queue.clone(),
        }
    }

    /// Jobs this worker may still take before its limit.
    pub fn free_slots(&self) -> usize {
        self.shared.slots.available_permits()
    }

    /// Up to `max` jobs (never more than the free slots), waiting up to
    /// `wait` for a slot and then for the first job. Cancelled jobs are
    /// removed, not returned.
    pub async fn pull(&self, max: usize, wait: Duration) -> Result<Vec<Job<B>>, JobError> {
        let deadline = tokio::time::Instant::now() + wait;
        let first = match tokio::time::timeout_at(
            deadline,
            self.shared.slots.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(p)) => p,
            // Closed never happens (the semaphore is never closed); a
            // timeout means every slot is busy.
            _ => return Ok(Vec::new()),
        };
        let mut permits = vec![first];
        while permits.len() < max {
            match self.shared.slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let config = &self.shared.queue.config;
        let stream = config.job_stream();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let deliveries = self
                .shared
                .queue
                .bus
                .fetch(
                    &stream,
                    WORKERS_CONSUMER,
                    FetchRequest::new(permits.len(), left),
                )
                .await?;
            if deliveries.is_empty() {
                return Ok(Vec::new());
            }
            self.refresh_cancels().await?;
            let mut jobs = Vec::with_capacity(deliveries.len());
            for d in deliveries {
                let id = d.message.msg_id.clone().unwrap_or_default();
                let kind = d
                    .message
                    .subject
                    .as_str()
                    .rsplit('.')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                if lock(&self.shared.cancels).ids.contains(&id) {
                    self.shared
                        .queue
                        .bus
                        .ack(&d.ack_token, AckKind::Ack)
                        .await?;
                    self.queue()
                        .record(&id, &kind, d.delivered, JobEventKind::Cancelled, None, None)
                        .await?;
                    continue;
                }
                let Some(permit) = permits.pop() else { break };
                jobs.push(Job {
                    id,
                    kind,
                    payload: d.message.payload,
                    attempt: d.delivered,
                    max_attempts: config.max_attempts,
                    submitted_ns: d.message.time_ns,
                    token: d.ack_token,
                    worker: self.clone(),
                    _slot: permit,
                });
            }
            if !jobs.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(jobs);
            }
        }
    }

    /// Reads cancellations published since the last look.
    async fn refresh_cancels(&self) -> Result<(), BusError> {
        let bus = &self.shared.queue.bus;
        let stream = self.shared.queue.config.control_stream();
        let info = bus.stream_info(&stream).await?;
        let mut seq = {
            let mut c = lock(&self.shared.cancels);
            if c.ids.len() > MAX_CANCELS {
                c.ids.clear();
                c.next = 0;
            }
            c.next.max(info.state.first_seq).max(1)
        };
        while seq <= info.state.last_seq {
            match bus.get_message(&stream, seq).await {
                Ok(m) => {
                    if let Ok(id) = std::str::from_utf8(&m.payload) {
                        lock(&self.shared.cancels).ids.insert(id.to_owned());
                    }
                }
                Err(BusError::MessageNotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            seq += 1;
        }
        let mut c = lock(&self.shared.cancels);
        c.next = c.next.max(seq);
        Ok(())
    }
}

/// A job pulled by a worker. It holds one of the worker's slots until it
/// is completed, failed or dropped; a job dropped without an outcome is
/// redelivered when its lease expires.
pub struct Job<B: Backend> {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Its payload.
    pub payload: Bytes,
    /// This attempt (1 for the first).
    pub attempt: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// When it was submitted, nanoseconds since the Unix epoch.
    pub submitted_ns: u64,
    token: AckToken,
    worker: Worker<B>,
    _slot: OwnedSemaphorePermit,
}

impl<B: Backend> std::fmt::Debug for Job<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("attempt", &self.attempt)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> Job<B> {
    fn bus(&self) -> &B {
        &self.worker.shared.queue.bus
    }

    /// Extends the lease and records `progress` if given. Returns
    /// [`Heartbeat::Cancelled`] (and removes the job) if it was cancelled.
    pub async fn heartbeat(&self, progress: Option<Progress>) -> Result<Heartbeat, JobError> {
        self.worker.refresh_cancels().await?;
        let queue = self.worker.queue();
        if lock(&self.worker.shared.cancels).ids.contains(&self.id) {
            self.bus().ack(&self.token, AckKind::Ack).await?;
            queue
                .record(
                    &self.id,
                    &self.kind,
                    self.attempt,
                    JobEventKind::Cancelled,
                    None,
                    None,
                )
                .await?;
            return Ok(Heartbeat::Cancelled);
        }
        self.bus().ack(&self.token, AckKind::InProgress).await?;
        if let Some(p) = progress {
            queue
                .record(
                    &self.id,
                    &self.kind,
                    self.attempt,
                    JobEventKind::Progress,
                    p.note.as_deref(),
                    Some((p.done, p.total)),
                )
                .await?;
        }
        Ok(Heartbeat::Continue)
    }

    /// The job succeeded: it is removed from the queue.
    pub async fn complete(self, note: Option<&str>) -> Result<(), JobError> {
        self.bus().ack(&self.token, AckKind::Ack).await?;
        self.worker
            .queue()
            .record(
                &self.id,
                &self.kind,
                self.attempt,
                JobEventKind::Completed,
                note,
                None,
            )
            .await?;
        Ok(())
    }

    /// This attempt failed with `reason`. With [`Retry::Yes`] and attempts
    /// left it is redelivered after the backoff; otherwise it is moved to
    /// the dead-letter stream with the reason.
    pub async fn fail(self, reason: &str, retry: Retry) -> Result<(), JobError> {
        let config = &self.worker.shared.queue.config;
        let queue = self.worker.queue();
        if retry == Retry::Yes && self.attempt < config.max_attempts {
            let delay = config.backoff(self.attempt);
            self.bus()
                .ack(&self.token, AckKind::Nak(Some(delay)))
                .await?;
            queue
                .record(
                    &self.id,
                    &self.kind,
                    self.attempt,
                    JobEventKind::Retrying,
                    Some(reason),
                    None,
                )
                .await?;
        } else {
            let why = format!(
                "job failed on attempt {} of {}: {}",
                self.attempt,
                config.max_attempts,
                cut(reason)
            );
            self.bus()
                .ack(&self.token, AckKind::Term(Some(why)))
                .await?;
            queue
                .record(
                    &self.id,
                    &self.kind,
                    self.attempt,
                    JobEventKind::Failed,
                    Some(reason),
                    None,
                )
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut c = JobQueueConfig::new("q");
        c.backoff_base = Duration::from_millis(100);
        c.backoff_max = Duration::from_millis(700);
        let got: Vec<u128> = (1..=6).map(|a| c.backoff(a).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 700, 700, 700]);
        assert_eq!(c.backoff(u32::MAX), Duration::from_millis(700));
    }

    #[test]
    fn config_checks() {
        assert!(JobQueueConfig::new("ok-queue_1").validate().is_ok());
        assert!(JobQueueConfig::new("bad.name").validate().is_err());
        assert!(JobQueueConfig::new("x".repeat(49)).validate().is_err());
        let mut c = JobQueueConfig::new("q");
        c.max_attempts = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn notes_are_cut_and_cleaned() {
        let long = "é".repeat(MAX_NOTE_LEN);
        assert!(cut(&long).len() <= MAX_NOTE_LEN);
        assert_eq!(cut("a\nb"), "a b");
    }
}
