//! `weft bench bus`: the bus measured against bare baselines in the same
//! run, so the ratios mean something on a busy machine.
//!
//! - `embedded_publish_msgs_per_sec`: durable publishes of `payload_bytes`
//!   messages to the embedded log on disk, `publishers` concurrent
//!   publishers (group commit batches what is in flight);
//! - `raw_append_msgs_per_sec`: the baseline, a bare loop appending the
//!   same number of records of the same encoded size to a file in the same
//!   directory, `publishers` records per `write` + `fdatasync` (the most a
//!   group commit of `publishers` publishers can batch);
//! - `memory_publish_msgs_per_sec`: the same publishes in memory mode;
//! - `e2e_p50_ms`, `e2e_p99_ms`: publish-to-delivery latency on the disk
//!   backend with messages offered at a fixed rate (open loop: each publish
//!   starts on its schedule whether earlier ones finished or not) and one
//!   consumer fetching and acknowledging;
//! - with a NATS server: `nats_publish_msgs_per_sec` through the NATS
//!   backend and `nats_ratio_vs_raw_client` against a bare `async-nats`
//!   request loop (publish and wait for the JetStream ack) with the same
//!   payloads and concurrency.
//!
//! Batching on the two sides: the baseline always writes full batches of
//! `publishers` records (256 by default) per `fdatasync`. The embedded
//! log's writer starts a batch as soon as the previous `fdatasync` returns
//! and takes whatever is queued then: with `publishers` publishers each
//! waiting for its ack before publishing again, the ones acknowledged by
//! one sync publish again while the next sync runs, so the batches settle
//! at about half of `publishers` (a mean of 128-132 records of 256
//! measured; the writer does not wait for more, which would add latency at
//! low load). The baseline is kept at the full `publishers`, the upper
//! bound of what the group commit could batch, not lowered to the batch
//! the log happens to form: the ratio then also charges the log for the
//! extra syncs of its smaller batches.
//!
//! The two sides also write differently, and the ratio includes that: the
//! baseline appends to a new file, as a naive log would, while the log
//! writes in place over segments it zero-filled ahead of use (on a helper
//! thread, during the measured run), so most of its syncs have no
//! metadata to write. The bench's stream is new: its first segment is
//! extended as records arrive, like the baseline's file, until a
//! zero-filled segment is ready (the filling starts once the first
//! segment holds 1 MiB, and the log moves to the filled segment as soon
//! as it is done, instead of extending the first one to its full 64 MiB,
//! a quarter of the run). Part of the ratio comes from writing in place
//! rather than from less work per message: in interleaved runs on the
//! development machine the in-place writes alone took the log's median
//! from 294,000 to 333,000 msg/s, and the batch queue and single wake-up
//! per batch (`embedded/queue.rs`) on top of them to 391,000.
//!
//! How the log writes since then (`embedded/disk.rs`): it keeps out of
//! the page cache. On this kind of virtual machine a page of memory that
//! the host took back (free page reporting) costs about 2.4 ms of CPU per
//! MiB to touch again, and the log used to take a fresh page for every
//! byte it wrote and every zero it wrote ahead: `perf` put over half of
//! the process's CPU in the zero-filling thread alone. The zero-filling
//! and the writes to zero-filled segments now use `O_DIRECT` (a batch is
//! written from the start of the page it begins in, its first page's
//! earlier records written again unchanged), and what still goes through
//! the page cache is dropped from it 16 MiB behind the writer. Measured
//! with `perf` and `time` on the embedded phase alone (200,000
//! publishes): the process's CPU went from about 1.1-1.35 s to about
//! 0.7-0.8 s, the zero-filling thread's share from 52-60 % of the
//! samples to 6 %. The baseline is unchanged: it appends through the page
//! cache, as a naive log would, and pays that cost on one thread that
//! does nothing else.
//!
//! What bounds the ratio: with every publisher waiting for its ack the
//! log syncs about half as many records per `fdatasync` as the baseline,
//! and on two cores the CPU per message (publisher task wake-up and
//! poll, encoding and CRC, the stream's and the queue's locks, the index
//! insert, the copy into the aligned write buffer) still competes with
//! the writer for the processors. Both figures also move with whatever
//! else uses the disk and the processors: the baseline uses almost no
//! CPU, the log a lot, so a machine that is busy compiling lowers the
//! ratio even when the disk is quiet, and a disk shared with other
//! writers makes every sync of either side several times slower.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::backend::{
    AckKind, Backend, ConsumerConfig, FetchRequest, Headers, OutgoingMessage, StreamConfig,
};
use crate::embedded::{EmbeddedBus, EmbeddedConfig};
use crate::nats::{NatsBus, NatsConfig};
use crate::record::MessageRecord;
use crate::subject::{Subject, SubjectFilter};

/// How much work the bench does.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Directory for the on-disk runs (a subdirectory is created and
    /// removed); it decides which disk is measured.
    pub dir: PathBuf,
    /// Messages per publish-rate run.
    pub messages: usize,
    /// Payload size.
    pub payload_bytes: usize,
    /// Concurrent publishers.
    pub publishers: usize,
    /// Offered rate of the latency run, messages per second.
    pub e2e_rate: u32,
    /// Length of the latency run.
    pub e2e_duration: Duration,
    /// NATS server to measure, if any (skipped when unreachable).
    pub nats_url: Option<String>,
    /// Messages per NATS publish-rate run.
    pub nats_messages: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("."),
            messages: 200_000,
            payload_bytes: 1024,
            publishers: 256,
            e2e_rate: 10_000,
            e2e_duration: Duration::from_secs(3),
            nats_url: Some("127.0.0.1:4222".into()),
            nats_messages: 50_000,
        }
    }
}

/// Results of `weft bench bus`.
#[derive(Debug, Clone, Serialize)]
pub struct BusBench {
    /// Durable publishes per second, embedded log on disk.
    pub embedded_publish_msgs_per_sec: f64,
    /// The bare write + fdatasync loop, records per second.
    pub raw_append_msgs_per_sec: f64,
    /// embedded / raw append; target ≥ 0.7.
    pub embedded_ratio_vs_raw_append: f64,
    /// Publishes per second in memory mode; target ≥ 1,000,000.
    pub memory_publish_msgs_per_sec: f64,
    /// Median publish-to-delivery latency at the offered rate.
    pub e2e_p50_ms: f64,
    /// 99th percentile publish-to-delivery latency; target ≤ 5 ms.
    pub e2e_p99_ms: f64,
    /// Publishes per second through the NATS backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_publish_msgs_per_sec: Option<f64>,
    /// NATS backend / bare client; target ≥ 0.8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_ratio_vs_raw_client: Option<f64>,
    /// The bare client's publishes per second (shown in the table).
    #[serde(skip)]
    pub nats_raw_client_msgs_per_sec: Option<f64>,
    /// Why NATS was not measured, if it was not (shown in the table).
    #[serde(skip)]
    pub nats_skipped: Option<String>,
}

/// Errors of the bench.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A setting is out of range.
    #[error("invalid bench setting: {0}")]
    Config(String),
    /// The bus failed.
    #[error("bus operation failed during the bench: {0}")]
    Bus(#[from] crate::backend::BusError),
    /// A bench subject is invalid.
    #[error(transparent)]
    Subject(#[from] crate::subject::SubjectError),
    /// A file operation of the baseline failed.
    #[error("{op} {path}: {message}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
    /// The bench's own runtime or tasks failed.
    #[error("bench runtime failed: {0}")]
    Runtime(String),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl Fn(std::io::Error) -> BenchError + 'a {
    move |e| BenchError::Io {
        op,
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn runtime<E: std::fmt::Display>(e: E) -> BenchError {
    BenchError::Runtime(e.to_string())
}

/// Runs the bench.
pub fn run(cfg: &BenchConfig) -> Result<BusBench, BenchError> {
    if cfg.messages == 0
        || cfg.publishers == 0
        || cfg.payload_bytes < 16
        || cfg.payload_bytes > crate::backend::DEFAULT_MAX_MESSAGE_BYTES
        || cfg.e2e_rate == 0
        || cfg.e2e_duration.is_zero()
    {
        return Err(BenchError::Config(
            "messages, publishers, rate and duration must be positive; payload 16 B to 1 MiB"
                .into(),
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(runtime)?;
    let work = cfg
        .dir
        .join(format!("weft-bench-bus-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(io("create directory", &work))?;
    let result = rt.block_on(run_all(cfg, &work));
    let _ = std::fs::remove_dir_all(&work);
    result
}

async fn run_all(cfg: &BenchConfig, work: &Path) -> Result<BusBench, BenchError> {
    let payload = Bytes::from(vec![0x5a; cfg.payload_bytes]);
    let subject = Subject::new("bench.publish")?;
    let record_len = MessageRecord {
        seq: 1,
        time_ns: 0,
        subject: subject.clone(),
        msg_id: None,
        headers: Headers::new(),
        payload: payload.clone(),
    }
    .encoded_len();
    let publishers = cfg.publishers.min(cfg.messages);

    let raw_dir = work.join("raw");
    std::fs::create_dir_all(&raw_dir).map_err(io("create directory", &raw_dir))?;
    let raw = {
        let dir = raw_dir.clone();
        let (n, batch) = (cfg.messages, publishers);
        tokio::task::spawn_blocking(move || raw_append(&dir, n, record_len, batch))
            .await
            .map_err(runtime)??
    };

    let disk = EmbeddedBus::open(work.join("embedded"), EmbeddedConfig::default())?;
    let embedded = publish_rate(&disk, &subject, cfg.messages, publishers, &payload).await?;
    disk.close().await;

    let memory = EmbeddedBus::memory(EmbeddedConfig::default())?;
    let mem = publish_rate(&memory, &subject, cfg.messages, publishers, &payload).await?;

    let e2e_bus = EmbeddedBus::open(work.join("e2e"), EmbeddedConfig::default())?;
    let (p50, p99) = e2e(&e2e_bus, cfg).await?;
    e2e_bus.close().await;

    let mut out = BusBench {
        embedded_publish_msgs_per_sec: embedded,
        raw_append_msgs_per_sec: raw,
        embedded_ratio_vs_raw_append: embedded / raw,
        memory_publish_msgs_per_sec: mem,
        e2e_p50_ms: p50,
        e2e_p99_ms: p99,
        nats_publish_msgs_per_sec: None,
        nats_ratio_vs_raw_client: None,
        nats_raw_client_msgs_per_sec: None,
        nats_skipped: None,
    };
    match &cfg.nats_url {
        None => out.nats_skipped = Some("no NATS address given".into()),
        Some(url) => match nats(url, cfg, &payload).await {
            Ok((ours, bare)) => {
                out.nats_publish_msgs_per_sec = Some(ours);
                out.nats_raw_client_msgs_per_sec = Some(bare);
                out.nats_ratio_vs_raw_client = Some(ours / bare);
            }
            Err(NatsSkip::Unreachable(why)) => out.nats_skipped = Some(why),
            Err(NatsSkip::Failed(e)) => return Err(e),
        },
    }
    Ok(out)
}

/// The baseline: `n` records of `record_len` bytes, `batch` per write and
/// fdatasync, to a new file in `dir`. `batch` is the number of publishers:
/// every fdatasync carries as many records as the group commit ever could
/// (see the module documentation for what the log actually batches).
fn raw_append(dir: &Path, n: usize, record_len: usize, batch: usize) -> Result<f64, BenchError> {
    use std::io::Write;
    let path = dir.join("raw.log");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(io("create", &path))?;
    let buf = vec![0xa5u8; record_len * batch];
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(batch);
        f.write_all(&buf[..k * record_len])
            .map_err(io("write", &path))?;
        f.sync_data().map_err(io("fdatasync", &path))?;
        left -= k;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

async fn publish_rate<B: Backend + Clone + 'static>(
    bus: &B,
    subject: &Subject,
    n: usize,
    publishers: usize,
    payload: &Bytes,
) -> Result<f64, BenchError> {
    let name = subject
        .as_str()
        .split('.')
        .next()
        .unwrap_or("bench")
        .to_owned();
    let _ = bus.delete_stream(&name).await;
    bus.create_stream(StreamConfig::new(
        &name,
        vec![SubjectFilter::new(&format!("{name}.>"))?],
    ))
    .await?;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..publishers {
        let count = n / publishers + usize::from(i < n % publishers);
        let (bus, subject, payload) = (bus.clone(), subject.clone(), payload.clone());
        tasks.spawn(async move {
            for _ in 0..count {
                bus.publish(OutgoingMessage::new(subject.clone(), payload.clone()))
                    .await?;
            }
            Ok::<_, crate::backend::BusError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(runtime)??;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    bus.delete_stream(&name).await?;
    Ok(rate)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Publish-to-delivery latency in ms (p50, p99) at the offered rate.
async fn e2e(bus: &EmbeddedBus, cfg: &BenchConfig) -> Result<(f64, f64), BenchError> {
    bus.create_stream(StreamConfig::new("e2e", vec![SubjectFilter::new("e2e.>")?]))
        .await?;
    let mut c = ConsumerConfig::new("c");
    c.deliver_policy = crate::backend::DeliverPolicy::New;
    c.max_ack_pending = 100_000;
    bus.create_consumer("e2e", c).await?;
    let total = ((cfg.e2e_rate as f64) * cfg.e2e_duration.as_secs_f64()).ceil() as usize;
    let interval = Duration::from_secs_f64(1.0 / f64::from(cfg.e2e_rate));
    let origin = Instant::now();
    let subject = Subject::new("e2e.m")?;
    let size = cfg.payload_bytes;
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut inflight = tokio::task::JoinSet::new();
            for i in 0..total {
                tokio::time::sleep_until(start + interval * u32::try_from(i).unwrap_or(u32::MAX))
                    .await;
                let mut p = vec![0u8; size];
                let sent = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
                p[..8].copy_from_slice(&sent.to_le_bytes());
                let (bus, subject) = (bus.clone(), subject.clone());
                inflight.spawn(async move {
                    bus.publish(OutgoingMessage::new(subject, Bytes::from(p)))
                        .await
                        .map(|_| ())
                });
                while let Some(r) = inflight.try_join_next() {
                    r.map_err(runtime)??;
                }
            }
            while let Some(r) = inflight.join_next().await {
                r.map_err(runtime)??;
            }
            Ok::<_, BenchError>(())
        })
    };
    let mut lat = Vec::with_capacity(total);
    let acker = Arc::new(tokio::sync::Semaphore::new(64));
    let mut acks = tokio::task::JoinSet::new();
    let give_up = Instant::now() + cfg.e2e_duration + Duration::from_secs(30);
    while lat.len() < total && Instant::now() < give_up {
        let got = bus
            .fetch(
                "e2e",
                "c",
                FetchRequest::new(1024, Duration::from_millis(200)),
            )
            .await?;
        let now = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut tokens = Vec::with_capacity(got.len());
        for d in got {
            let sent = d
                .message
                .payload
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(now, u64::from_le_bytes);
            lat.push(now.saturating_sub(sent) as f64 / 1e6);
            tokens.push(d.ack_token);
        }
        let permit = acker.clone().acquire_owned().await.map_err(runtime)?;
        let bus = bus.clone();
        acks.spawn(async move {
            for t in tokens {
                bus.ack(&t, AckKind::Ack).await?;
            }
            drop(permit);
            Ok::<_, crate::backend::BusError>(())
        });
        while let Some(r) = acks.try_join_next() {
            r.map_err(runtime)??;
        }
    }
    publisher.await.map_err(runtime)??;
    while let Some(r) = acks.join_next().await {
        r.map_err(runtime)??;
    }
    if lat.len() < total {
        return Err(BenchError::Runtime(format!(
            "only {} of {total} messages were delivered",
            lat.len()
        )));
    }
    // The first tenth warms the disk and the runtime up.
    let mut steady = lat.split_off(total / 10);
    steady.sort_by(f64::total_cmp);
    Ok((percentile(&steady, 0.5), percentile(&steady, 0.99)))
}

enum NatsSkip {
    Unreachable(String),
    Failed(BenchError),
}

impl<E: Into<BenchError>> From<E> for NatsSkip {
    fn from(e: E) -> Self {
        NatsSkip::Failed(e.into())
    }
}

/// (our backend, bare client) publishes per second.
async fn nats(url: &str, cfg: &BenchConfig, payload: &Bytes) -> Result<(f64, f64), NatsSkip> {
    let config = NatsConfig {
        url: url.to_owned(),
        ..NatsConfig::default()
    };
    let bus = NatsBus::connect(config)
        .await
        .map_err(|e| NatsSkip::Unreachable(e.to_string()))?;
    let ns = format!("weftbench{}", uuid::Uuid::now_v7().simple());
    let subject = Subject::new(&format!("{ns}.m")).map_err(crate::backend::BusError::from)?;
    let publishers = cfg.publishers.min(cfg.nats_messages).max(1);
    let n = cfg.nats_messages.max(1);
    let bare_client = async_nats::ConnectOptions::new()
        .connect(url)
        .await
        .map_err(|e| NatsSkip::Unreachable(e.to_string()))?;
    // The bare loop first, into a stream made the same way.
    bus.create_stream(StreamConfig::new(
        &ns,
        vec![SubjectFilter::new(&format!("{ns}.>")).map_err(crate::backend::BusError::from)?],
    ))
    .await?;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..publishers {
        let count = n / publishers + usize::from(i < n % publishers);
        let (client, subject, payload) =
            (bare_client.clone(), subject.to_string(), payload.clone());
        tasks.spawn(async move {
            for _ in 0..count {
                let reply = client
                    .request(subject.clone(), payload.clone())
                    .await
                    .map_err(|e| BenchError::Runtime(format!("bare NATS publish: {e}")))?;
                if reply.payload.windows(7).any(|w| w == b"\"error\"") {
                    return Err(BenchError::Runtime(format!(
                        "bare NATS publish refused: {}",
                        String::from_utf8_lossy(&reply.payload)
                    )));
                }
            }
            Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(runtime)??;
    }
    let bare = n as f64 / start.elapsed().as_secs_f64();
    bus.delete_stream(&ns).await?;
    let ours = publish_rate(&bus, &subject, n, publishers, payload).await?;
    Ok((ours, bare))
}
