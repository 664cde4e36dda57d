//! The disk side of the embedded backend: stream directories, segment
//! files, the group-commit writer thread and recovery.
//!
//! ```text
//! <root>/streams/<name>/stream.json              configuration (atomic write)
//! <root>/streams/<name>/<base:020>.log           segments, named by first sequence
//! <root>/streams/<name>/consumers/<name>.json    consumer state (atomic write)
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak, mpsc};

use tokio::sync::{Notify, watch};

use super::Now;
use super::stream::{
    Consumer, ConsumerFile, Durable, Entry, Job, Loc, Pending, Shared, State, Storage, Stream, lock,
};
use crate::backend::{BusError, StreamConfig};
use crate::record::{Record, Tail, scan_segment};

/// Largest `stream.json` or consumer state file read.
const MAX_META_FILE: u64 = 16 << 20;

/// Sizes the disk backend works with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DiskLimits {
    pub segment_bytes: u64,
    pub max_batch_bytes: usize,
    /// Most bytes one unsynced commit batch can span (the torn region).
    pub torn_window: usize,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BusError + 'a {
    move |e| BusError::io(op, path, &e)
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename,
/// fsync of the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BusError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io("rename", path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), BusError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, BusError> {
    let f = File::open(path).map_err(io("open", path))?;
    let mut out = Vec::new();
    f.take(MAX_META_FILE + 1)
        .read_to_end(&mut out)
        .map_err(io("read", path))?;
    if out.len() as u64 > MAX_META_FILE {
        return Err(BusError::Corrupt {
            path: path.display().to_string(),
            offset: MAX_META_FILE,
            reason: format!("larger than the {MAX_META_FILE}-byte limit"),
        });
    }
    Ok(out)
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

/// Creates a new stream directory with its configuration and first segment.
pub(crate) fn create_stream_dir(dir: &Path, config: &StreamConfig) -> Result<(), BusError> {
    if dir.exists() {
        return Err(BusError::Io {
            op: "create",
            path: dir.display().to_string(),
            message: "directory already exists but holds no loadable stream".into(),
        });
    }
    fs::create_dir_all(dir.join("consumers")).map_err(io("create directory", dir))?;
    let json = serde_json::to_vec_pretty(config).map_err(|e| BusError::InvalidConfig {
        what: "stream",
        reason: e.to_string(),
    })?;
    let seg = segment_path(dir, 1);
    File::create(&seg)
        .and_then(|f| f.sync_all())
        .map_err(io("create", &seg))?;
    write_atomic(&dir.join("stream.json"), &json)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Reads a stream's configuration.
pub(crate) fn read_stream_config(dir: &Path) -> Result<StreamConfig, BusError> {
    let path = dir.join("stream.json");
    let bytes = read_bounded(&path)?;
    let config: StreamConfig = serde_json::from_slice(&bytes).map_err(|e| BusError::Corrupt {
        path: path.display().to_string(),
        offset: 0,
        reason: e.to_string(),
    })?;
    config.validate_limits()?;
    Ok(config)
}

struct SegMeta {
    base: u64,
    last_msg: Option<u64>,
    path: PathBuf,
}

/// The group-commit writer of one stream.
struct Writer {
    name: String,
    dir: PathBuf,
    shared: Weak<Shared>,
    rx: mpsc::Receiver<Job>,
    active: File,
    active_len: u64,
    segs: Vec<SegMeta>,
    limits: DiskLimits,
    buf: Vec<u8>,
}

/// Opens (recovers) a stream directory and starts its writer thread.
pub(crate) fn open_stream(
    dir: &Path,
    dlq: Option<String>,
    limits: DiskLimits,
    now: Now,
) -> Result<Arc<Stream>, BusError> {
    let config = read_stream_config(dir)?;
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("list", dir))? {
        let entry = entry.map_err(io("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".log")
            && stem.len() == 20
            && let Ok(base) = stem.parse::<u64>()
        {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    if bases.is_empty() {
        let seg = segment_path(dir, 1);
        File::create(&seg)
            .and_then(|f| f.sync_all())
            .map_err(io("create", &seg))?;
        sync_dir(dir)?;
        bases.push(1);
    }

    let (tx, rx) = mpsc::channel();
    let mut st = State::new(Storage::Disk(tx));
    let window = u64::try_from(config.duplicate_window.as_nanos()).unwrap_or(u64::MAX);
    let mut segs = Vec::new();
    let mut last_msg = 0u64;
    let count = bases.len();
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(dir, base);
        let bytes = fs::read(&path).map_err(io("read", &path))?;
        let scan = scan_segment(&bytes, last_msg);
        match &scan.tail {
            Tail::Clean => {}
            Tail::Corrupt { at, .. } | Tail::Incomplete { at }
                if i + 1 == count && bytes.len() - at > limits.torn_window =>
            {
                // Only the last commit batch can be torn, and it ends at the
                // end of the file: bad bytes further back were durable once.
                return Err(BusError::Corrupt {
                    path: path.display().to_string(),
                    offset: *at as u64,
                    reason: format!(
                        "{:?} with {} bytes after it, more than one commit batch ({}) can span, so this is \
                         damage to durable data rather than a torn write",
                        scan.tail,
                        bytes.len() - at,
                        limits.torn_window
                    ),
                });
            }
            tail if i + 1 == count => {
                tracing::warn!(
                    stream = %config.name,
                    segment = %path.display(),
                    valid = scan.valid_len,
                    dropped = bytes.len() - scan.valid_len,
                    ?tail,
                    "truncating the torn tail of the last segment"
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io("open", &path))?;
                f.set_len(scan.valid_len as u64)
                    .map_err(io("truncate", &path))?;
                f.sync_all().map_err(io("fsync", &path))?;
            }
            Tail::Corrupt { at, error } => {
                return Err(BusError::Corrupt {
                    path: path.display().to_string(),
                    offset: *at as u64,
                    reason: format!(
                        "{error} (in a segment that is not the last, so not a torn write)"
                    ),
                });
            }
            Tail::Incomplete { at } => {
                return Err(BusError::Corrupt {
                    path: path.display().to_string(),
                    offset: *at as u64,
                    reason: "record cut short in a segment that is not the last".into(),
                });
            }
        }
        let mut seg_last = None;
        for located in scan.records {
            match located.record {
                Record::Message(m) => {
                    last_msg = m.seq;
                    seg_last = Some(m.seq);
                    st.next_seq = st.next_seq.max(m.seq + 1);
                    if let Some(id) = m.msg_id
                        && m.time_ns.saturating_add(window) > now.wall_ns
                    {
                        st.remember_id(id, m.seq, m.time_ns);
                    }
                    if m.seq >= st.floor {
                        st.insert(
                            m.seq,
                            Entry {
                                subject: m.subject,
                                time_ns: m.time_ns,
                                size: located.len as u64,
                                loc: Loc::Disk {
                                    segment: base,
                                    offset: located.offset as u64,
                                    len: located.len as u32,
                                },
                            },
                        );
                    }
                }
                Record::Delete { seq, .. } => {
                    st.remove(seq);
                }
                Record::Floor { seq, .. } => {
                    st.floor = st.floor.max(seq);
                    while st.msgs.first_key_value().is_some_and(|(&s, _)| s < seq) {
                        if let Some((_, e)) = st.msgs.pop_first() {
                            st.bytes -= e.size;
                        }
                    }
                }
            }
        }
        let file = File::open(&path).map_err(io("open", &path))?;
        st.segments.insert(base, (Arc::new(file), path.clone()));
        segs.push(SegMeta {
            base,
            last_msg: seg_last,
            path,
        });
    }
    let last_base = bases.last().copied().unwrap_or(1);
    st.next_seq = st.next_seq.max(last_base).max(st.floor);
    st.dedup_order.make_contiguous().sort_by_key(|(t, _)| *t);
    st.prune_dedup(window, now.wall_ns);

    // Consumers.
    let cdir = dir.join("consumers");
    fs::create_dir_all(&cdir).map_err(io("create directory", &cdir))?;
    for entry in fs::read_dir(&cdir).map_err(io("list", &cdir))? {
        let entry = entry.map_err(io("list", &cdir))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            let _ = fs::remove_file(&path);
            continue;
        }
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let bytes = read_bounded(&path)?;
        let file: ConsumerFile = serde_json::from_slice(&bytes).map_err(|e| BusError::Corrupt {
            path: path.display().to_string(),
            offset: 0,
            reason: e.to_string(),
        })?;
        file.config.validate()?;
        let mut pending = BTreeMap::new();
        for (seq, deliveries) in file.pending {
            if st.msgs.contains_key(&seq) {
                pending.insert(
                    seq,
                    Pending {
                        deliveries,
                        // Redeliver at once: the process that had it is gone.
                        deadline: now.instant,
                        last: "restart",
                        dead_lettering: false,
                    },
                );
            }
        }
        let name = file.config.durable_name.clone();
        st.consumers.insert(
            name,
            Consumer {
                config: file.config,
                cursor: file.cursor.min(st.next_seq),
                pending,
                dirty: false,
            },
        );
    }

    let active_path = segment_path(dir, last_base);
    let active = OpenOptions::new()
        .append(true)
        .open(&active_path)
        .map_err(io("open", &active_path))?;
    let active_len = active.metadata().map_err(io("stat", &active_path))?.len();
    let durable = Durable {
        seq: st.next_seq - 1,
        poisoned: false,
    };
    let name = config.name.clone();
    let stream = Arc::new(Stream {
        name: name.clone(),
        config,
        dlq,
        dir: Some(dir.to_owned()),
        shared: Arc::new(Shared {
            state: Mutex::new(st),
            notify: Notify::new(),
            durable: watch::Sender::new(durable),
        }),
        writer: Mutex::new(None),
    });
    {
        // Persist limits that recovery applied (e.g. max age passed while down).
        let mut st = stream.state();
        stream.enforce_limits(&mut st, now)?;
    }
    let writer = Writer {
        name: name.clone(),
        dir: dir.to_owned(),
        shared: Arc::downgrade(&stream.shared),
        rx,
        active,
        active_len,
        segs,
        limits,
        buf: Vec::new(),
    };
    let handle = std::thread::Builder::new()
        .name(format!("weft-bus-{name}"))
        .spawn(move || writer.run())
        .map_err(|e| BusError::Io {
            op: "spawn writer thread for",
            path: name.clone(),
            message: e.to_string(),
        })?;
    *lock(&stream.writer) = Some(handle);
    Ok(stream)
}

impl Writer {
    fn run(mut self) {
        while let Ok(first) = self.rx.recv() {
            let mut size = first.bytes.len();
            let mut jobs = vec![first];
            while size < self.limits.max_batch_bytes {
                match self.rx.try_recv() {
                    Ok(j) => {
                        size += j.bytes.len();
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            let result = self.commit(&shared, &mut jobs);
            if let Err(e) = &result {
                tracing::error!(stream = %self.name, error = %e, "log write failed; the stream refuses writes until reopened");
                let mut st = lock(&shared.state);
                if st.poisoned.is_none() {
                    st.poisoned = Some(e.to_string());
                }
                drop(st);
                shared.durable.send_modify(|d| d.poisoned = true);
                shared.notify.notify_waiters();
            }
            for job in jobs {
                if let Some(done) = job.done {
                    let _ = done.send(result.clone());
                }
            }
        }
    }

    fn commit(&mut self, shared: &Shared, jobs: &mut [Job]) -> Result<(), BusError> {
        if lock(&shared.state).poisoned.is_some() {
            return Err(BusError::Poisoned {
                stream: self.name.clone(),
                reason: lock(&shared.state).poisoned.clone().unwrap_or_default(),
            });
        }
        if self.active_len >= self.limits.segment_bytes
            && let Some((seq, ..)) = jobs.iter().find_map(|j| j.entry.as_ref())
        {
            self.rotate(shared, *seq)?;
        }
        let active_base = self.segs.last().map_or(1, |s| s.base);
        self.buf.clear();
        let mut visible = Vec::new();
        for job in jobs.iter_mut() {
            let offset = self.active_len + self.buf.len() as u64;
            if let Some((seq, subject, time_ns, size)) = job.entry.take() {
                visible.push((
                    seq,
                    Entry {
                        subject,
                        time_ns,
                        size,
                        loc: Loc::Disk {
                            segment: active_base,
                            offset,
                            len: job.bytes.len() as u32,
                        },
                    },
                ));
            }
            self.buf.extend_from_slice(&job.bytes);
        }
        let active_path = segment_path(&self.dir, active_base);
        if !self.buf.is_empty() {
            self.active
                .write_all(&self.buf)
                .map_err(io("write", &active_path))?;
            self.active.sync_data().map_err(io("fsync", &active_path))?;
            self.active_len += self.buf.len() as u64;
            if let (Some(seg), Some((seq, _))) = (self.segs.last_mut(), visible.last()) {
                seg.last_msg = Some(*seq);
            }
        }
        let (snapshots, min_live) = {
            let mut st = lock(&shared.state);
            let mut last = None;
            for (seq, entry) in visible {
                // A message deleted or dropped by limits before it became
                // visible is not inserted.
                if seq >= st.floor {
                    st.insert(seq, entry);
                }
                last = Some(seq);
            }
            if let Some(seq) = last {
                shared.durable.send_modify(|d| d.seq = d.seq.max(seq));
            }
            (st.take_dirty_consumers(), st.min_live())
        };
        shared.notify.notify_waiters();
        let cdir = self.dir.join("consumers");
        for (name, bytes) in snapshots {
            write_atomic(&cdir.join(format!("{name}.json")), &bytes)?;
        }
        for job in jobs.iter() {
            if let Some(name) = &job.delete_consumer {
                let path = cdir.join(format!("{name}.json"));
                match fs::remove_file(&path) {
                    Ok(()) => sync_dir(&cdir)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(BusError::io("delete", &path, &e)),
                }
            }
        }
        self.compact(shared, min_live);
        Ok(())
    }

    fn rotate(&mut self, shared: &Shared, base: u64) -> Result<(), BusError> {
        let path = segment_path(&self.dir, base);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io("create", &path))?;
        sync_dir(&self.dir)?;
        let reader = File::open(&path).map_err(io("open", &path))?;
        lock(&shared.state)
            .segments
            .insert(base, (Arc::new(reader), path.clone()));
        self.active = file;
        self.active_len = 0;
        self.segs.push(SegMeta {
            base,
            last_msg: None,
            path,
        });
        Ok(())
    }

    /// Deletes whole segments at the front whose messages are all gone.
    fn compact(&mut self, shared: &Shared, min_live: u64) {
        while self.segs.len() > 1 {
            let seg = &self.segs[0];
            if seg.last_msg.is_some_and(|l| l >= min_live) {
                break;
            }
            lock(&shared.state).segments.remove(&seg.base);
            if let Err(e) = fs::remove_file(&seg.path) {
                tracing::warn!(segment = %seg.path.display(), error = %e, "could not delete a compacted segment");
                break;
            }
            tracing::debug!(stream = %self.name, segment = %seg.path.display(), "deleted compacted segment");
            self.segs.remove(0);
        }
    }
}
