//! The disk side of the embedded backend: stream directories, segment
//! files, the group-commit writer thread and recovery.
//!
//! ```text
//! <root>/streams/<name>/stream.json              configuration (atomic write)
//! <root>/streams/<name>/<base:020>.log           segments, named by first sequence
//! <root>/streams/<name>/prealloc.tmp             the next segment, being zero-filled
//! <root>/streams/<name>/consumers/<name>.json    consumer state (atomic write)
//! ```
//!
//! Segments are written in place, not appended: once the active segment
//! is half full, a helper thread fills the next one with zeros and syncs
//! it, and the rotation renames it into place. An `fdatasync` of records
//! written over blocks that are already allocated, written and synced
//! has no metadata to write (no new size, no new extents), so it costs
//! one device write and a flush instead of also writing the inode and
//! the allocation (on the 2-core development machine a bare loop of 128
//! records per `write` + `fdatasync` ran about twice as fast over a
//! zero-filled file as appending). A segment's records end at the first
//! length field that is zero with only zero bytes after it.
//!
//! A segment that is extended instead (the first of a stream, or one
//! started before the filling was done) is closed early, once the
//! zero-filled one is ready; the filling of that one starts when the
//! extended segment holds [`EARLY_PREALLOC_AFTER`] bytes.
//!
//! The log keeps out of the page cache where it can, because on the
//! virtual machines it is measured on, memory is the dearest thing it
//! touches: a page the host has taken back costs about 2.4 ms of CPU per
//! MiB to touch again, against about 0.3 for one that is reused. The
//! zero-filling writes with `O_DIRECT`; a zero-filled segment is written
//! with `O_DIRECT` too, each batch from the start of the page it begins
//! in to the end of the page it ends in (the partly used page's records
//! are kept in memory and written again, then the batch, then zeros);
//! and what the log wrote through the page cache anyway (an extended
//! segment, or a file system that refuses `O_DIRECT`) is dropped from it
//! once it lies [`CACHE_BEHIND`] behind the writer. Consumers read
//! through the page cache as before: the kernel keeps it coherent with
//! direct writes, and reads of recent records come from the pages their
//! own reads brought in.
//!
//! What a crash can do with that: a batch's write starts with records of
//! earlier batches that were acknowledged (those in its first page), but
//! it writes the very bytes they already have, so a torn write leaves
//! each sector either as it was or as it was meant to be, and both hold
//! those records unchanged; the torn region (after the last durable
//! record, at most one batch plus a page) is what recovery already cuts
//! off. There is still one write and one `fdatasync` in flight at a time,
//! so batches become durable, and are acknowledged, in sequence order.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use super::Now;
use super::queue::{Batch, Completion, Queue, QueueTx};
use super::stream::{
    Consumer, ConsumerFile, Durable, Entry, Loc, Pending, Shared, State, Storage, Stream, lock,
};
use crate::backend::{BusError, StreamConfig};
use crate::record::{Record, Tail, scan_segment};

/// Largest `stream.json` or consumer state file read.
const MAX_META_FILE: u64 = 16 << 20;

/// Segments up to this size are zero-filled ahead of use; larger ones are
/// extended as records arrive (filling them would take too long and hold
/// too much disk).
const MAX_PREALLOCATED_SEGMENT: u64 = 256 << 20;

/// The next segment while it is being zero-filled.
const PREALLOC_FILE: &str = "prealloc.tmp";

/// A segment that is being extended (not zero-filled ahead: the first one
/// of a stream, or one started while the filling was not done) is closed
/// early, in favour of a zero-filled one, once it holds this much: a
/// stream that carries real traffic soon writes in place, one that holds a
/// handful of messages (most dead-letter streams) never fills a segment.
const EARLY_PREALLOC_AFTER: u64 = 1 << 20;

/// The zero-filling syncs every this many bytes, so that it never has a
/// large amount of dirty data for one flush (which would stall the
/// commit batches' `fdatasync`s queued behind it on the device).
const ZERO_FILL_SYNC_EVERY: u64 = 4 << 20;

/// How much of the newest log the writer leaves in the page cache: what
/// lies further back is dropped from it once synced (in steps of
/// [`DROP_BEHIND_STEP`]). Consumers that keep up read recent records
/// from memory; older ones are read from disk, as with any log larger
/// than memory. Without the drop every byte written takes a new page of
/// memory, and on a virtual machine whose host takes free memory back
/// that costs more CPU than all the rest of a publish (see
/// [`Writer::drop_behind`]).
const CACHE_BEHIND: u64 = 16 << 20;

/// The page cache is dropped behind the writer this much at a time.
const DROP_BEHIND_STEP: u64 = 4 << 20;

/// Writes in place are padded with zeros to a multiple of this (the page
/// size of the page cache), so that they cover whole pages.
const PAGE: u64 = 4096;

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

/// Writes a file of `len` zero bytes and syncs it, data and size (in
/// steps of [`ZERO_FILL_SYNC_EVERY`]).
///
/// The zeros are written with `O_DIRECT` where the file system takes it:
/// through the page cache, every page of the new segment is a page of
/// memory taken and filled by this thread, and on a virtual machine whose
/// host takes back the guest's free memory that is the most expensive
/// part of the whole log (about 2.4 ms of CPU per MiB when the memory
/// comes fresh from the host, over half of the bench's CPU time before
/// this). A direct write leaves nothing in the page cache; the writer's
/// writes cover whole pages (direct, or padded with the zeros on disk,
/// see [`Writer::commit`]), so it never has to read the zeros back.
fn zero_fill(path: &Path, len: u64) -> std::io::Result<()> {
    if len.is_multiple_of(DIRECT_ALIGN as u64) {
        match zero_fill_direct(path, len) {
            Ok(()) => return Ok(()),
            // O_DIRECT refused (tmpfs, some network file systems): the
            // page cache it is.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {}
            Err(e) => return Err(e),
        }
    }
    zero_fill_buffered(path, len)
}

/// Alignment of `O_DIRECT` buffers, offsets and lengths (the largest
/// logical block size in common use).
const DIRECT_ALIGN: usize = 4096;

fn zero_fill_direct(path: &Path, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)?;
    const CHUNK: usize = 1 << 20;
    let raw = vec![0u8; CHUNK + DIRECT_ALIGN];
    let off = raw.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
    let zeros = &raw[off..off + CHUNK];
    zero_fill_loop(&mut f, zeros, len, false)
}

fn zero_fill_buffered(path: &Path, len: u64) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    let zeros = vec![0u8; 1 << 20];
    zero_fill_loop(&mut f, &zeros, len, true)
}

/// Writes `len` zeros from `zeros` (chunk by chunk), syncing every
/// [`ZERO_FILL_SYNC_EVERY`] bytes; `drop_cached` drops the synced pages
/// from the page cache (as the writer does behind itself, see
/// [`drop_cached`]).
fn zero_fill_loop(f: &mut File, zeros: &[u8], len: u64, drop_cache: bool) -> std::io::Result<()> {
    let mut left = len;
    let mut unsynced = 0;
    let mut synced = 0;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
        unsynced += n as u64;
        if unsynced >= ZERO_FILL_SYNC_EVERY {
            f.sync_data()?;
            if drop_cache {
                drop_cached(f, synced, len - left - synced);
            }
            synced = len - left;
            unsynced = 0;
        }
    }
    f.sync_all()
}

/// Asks the kernel to drop `len` bytes of `f` from `offset` from the page
/// cache (`len` 0: to the end). Only advice: clean pages go, dirty ones
/// stay, and an error changes nothing that matters, so it is ignored.
fn drop_cached(f: &File, offset: u64, len: u64) {
    let _ = rustix::fs::fadvise(
        f,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    );
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

/// A zero-filled segment written with `O_DIRECT`: each batch is written
/// from the start of the page it begins in to the end of the page it ends
/// in, so `tail` keeps the records already in that first page (they are
/// written again, the same bytes over the same bytes).
struct Direct {
    file: File,
    /// The bytes from the start of the last, partly used page to the end
    /// of the records (`active_len % PAGE` of them).
    tail: Vec<u8>,
}

impl Direct {
    /// Opens `path` for direct writes; `None` where the file system
    /// refuses them (the page cache is used then).
    fn open(path: &Path, tail: Vec<u8>) -> Option<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path);
        match file {
            Ok(file) => Some(Self { file, tail }),
            Err(e) => {
                tracing::debug!(segment = %path.display(), error = %e, "no direct writes; writing through the page cache");
                None
            }
        }
    }

    /// Writes `bytes` at `start` (where the records end): the partly used
    /// page before it, the bytes, and zeros to the end of the last page,
    /// from the page-aligned `buf`. Returns where the written range ends.
    fn write(&mut self, raw: &mut Vec<u8>, start: u64, bytes: &[u8]) -> std::io::Result<u64> {
        let page = PAGE as usize;
        let head = self.tail.len();
        if start % PAGE != head as u64 {
            return Err(std::io::Error::from_raw_os_error(
                rustix::io::Errno::INVAL.raw_os_error(),
            ));
        }
        let total = head + bytes.len();
        let padded = total.next_multiple_of(page);
        if raw.len() < padded + page {
            raw.resize(padded + page, 0);
        }
        let off = raw.as_ptr().align_offset(page);
        let Some(buf) = raw.get_mut(off..off + padded) else {
            return Err(std::io::Error::from_raw_os_error(
                rustix::io::Errno::INVAL.raw_os_error(),
            ));
        };
        buf[..head].copy_from_slice(&self.tail);
        buf[head..total].copy_from_slice(bytes);
        buf[total..].fill(0);
        let page_start = start - head as u64;
        self.file.write_all_at(buf, page_start)?;
        self.tail.clear();
        self.tail
            .extend_from_slice(&buf[total - total % page..total]);
        Ok(page_start + padded as u64)
    }
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
    queue: Arc<Queue>,
    active: File,
    /// Where the records of the active segment end (its file may be
    /// longer: zeros written ahead).
    active_len: u64,
    /// The active segment was zero-filled ahead of use (written in place)
    /// rather than extended by each batch.
    active_filled: bool,
    /// Length of the active segment's file (for a zero-filled one, where
    /// the zeros end).
    active_size: u64,
    /// Where the part of the active segment that may be in the page
    /// cache starts (everything before was dropped from it).
    cached_from: u64,
    /// The previous segment and where its cached part starts: dropped
    /// from the page cache once the active one holds [`CACHE_BEHIND`].
    retired: Option<(File, u64)>,
    /// The active segment opened for direct writes, when it was
    /// zero-filled and the file system takes `O_DIRECT`.
    direct: Option<Direct>,
    /// The aligned staging buffer of direct writes, kept across batches.
    direct_buf: Vec<u8>,
    segs: Vec<SegMeta>,
    limits: DiskLimits,
    /// The zero-filling of the next segment, once started.
    prealloc: Option<std::thread::JoinHandle<std::io::Result<()>>>,
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
    // A zero-filling cut short by a crash; it is started again when needed.
    let stray = dir.join(PREALLOC_FILE);
    if stray.exists() {
        fs::remove_file(&stray).map_err(io("delete", &stray))?;
    }
    if bases.is_empty() {
        let seg = segment_path(dir, 1);
        File::create(&seg)
            .and_then(|f| f.sync_all())
            .map_err(io("create", &seg))?;
        sync_dir(dir)?;
        bases.push(1);
    }

    let queue = Queue::new(limits.max_batch_bytes);
    let mut st = State::new(Storage::Disk(QueueTx(queue.clone())));
    let window = u64::try_from(config.duplicate_window.as_nanos()).unwrap_or(u64::MAX);
    let mut segs = Vec::new();
    let mut last_msg = 0u64;
    let count = bases.len();
    let mut active_len = 0;
    let mut active_filled = false;
    let mut active_size = 0;
    let mut active_tail = Vec::new();
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(dir, base);
        let bytes = fs::read(&path).map_err(io("read", &path))?;
        let scan = scan_segment(&bytes, last_msg);
        // Zeros after the records: the segment was filled ahead of use.
        active_filled = bytes.len() > scan.valid_len;
        active_size = bytes.len() as u64;
        // Where the bytes that are not zero end.
        let data_end = match &scan.tail {
            Tail::Clean => bytes.len(),
            Tail::Corrupt { at, .. } | Tail::Incomplete { at } => {
                at + bytes[*at..]
                    .iter()
                    .rposition(|&b| b != 0)
                    .map_or(0, |p| p + 1)
            }
        };
        active_len = scan.valid_len as u64;
        match &scan.tail {
            Tail::Clean => {}
            // Only zeros after the last record: the unused end of a
            // zero-filled segment.
            Tail::Corrupt { at, .. } | Tail::Incomplete { at } if data_end == *at => {}
            Tail::Corrupt { at, .. } | Tail::Incomplete { at }
                if i + 1 == count && data_end - at > limits.torn_window =>
            {
                // Only the last commit batch can be torn, and it ends where
                // the data ends (zeros after it are the zero-filled end): bad
                // bytes further back were durable once.
                return Err(BusError::Corrupt {
                    path: path.display().to_string(),
                    offset: *at as u64,
                    reason: format!(
                        "{:?} with {} bytes of data after it, more than one commit batch ({}) can span, \
                         so this is damage to durable data rather than a torn write",
                        scan.tail,
                        data_end - at,
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
                // Zeros written ahead went with the torn tail.
                active_filled = false;
                active_size = scan.valid_len as u64;
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
        if i + 1 == count {
            let end = scan.valid_len;
            active_tail = bytes[end - end % PAGE as usize..end].to_vec();
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
        .write(true)
        .open(&active_path)
        .map_err(io("open", &active_path))?;
    let direct = if active_filled {
        Direct::open(&active_path, active_tail)
    } else {
        None
    };
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
        shared: Arc::new(Shared::new(st, durable)),
        writer: Mutex::new(None),
        counters: std::sync::OnceLock::new(),
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
        queue,
        active,
        active_len,
        active_filled,
        active_size,
        cached_from: 0,
        retired: None,
        direct,
        direct_buf: Vec::new(),
        segs,
        limits,
        prealloc: None,
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
        while let Some(mut batch) = self.queue.take() {
            let Some(shared) = self.shared.upgrade() else {
                break;
            };
            let result = self.commit(&shared, &mut batch);
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
            Completion::deliver(result, std::mem::take(&mut batch.waiters));
            self.queue.recycle(batch);
            self.prepare_next_segment();
        }
        // Not left writing into a directory that may be deleted next.
        if let Some(h) = self.prealloc.take() {
            let _ = h.join();
        }
    }

    /// Starts zero-filling the next segment (on a thread of its own, off
    /// the commit path) once the active one is half full, or, when the
    /// active one is being extended, once it holds
    /// [`EARLY_PREALLOC_AFTER`] bytes.
    fn prepare_next_segment(&mut self) {
        let size = self.limits.segment_bytes;
        let due = if self.active_filled {
            self.active_len >= size / 2
        } else {
            self.active_len >= EARLY_PREALLOC_AFTER.min(size / 2)
        };
        if self.prealloc.is_some() || size > MAX_PREALLOCATED_SEGMENT || !due {
            return;
        }
        let path = self.dir.join(PREALLOC_FILE);
        let spawned = std::thread::Builder::new()
            .name(format!("weft-bus-{}-prealloc", self.name))
            .spawn(move || zero_fill(&path, size));
        match spawned {
            Ok(h) => self.prealloc = Some(h),
            Err(e) => {
                tracing::warn!(stream = %self.name, error = %e, "could not start zero-filling the next segment; it will be extended as records arrive");
            }
        }
    }

    /// Writes and syncs one batch (one `write`, one `fdatasync`), then
    /// makes its messages visible and persists consumer state.
    fn commit(&mut self, shared: &Shared, batch: &mut Batch) -> Result<(), BusError> {
        if lock(&shared.state).poisoned.is_some() {
            return Err(BusError::Poisoned {
                stream: self.name.clone(),
                reason: lock(&shared.state).poisoned.clone().unwrap_or_default(),
            });
        }
        // A full segment is closed; one being extended is closed early
        // as soon as a zero-filled one is ready to take its place.
        let full = self.active_len >= self.limits.segment_bytes;
        let filled_ready =
            !self.active_filled && self.prealloc.as_ref().is_some_and(|h| h.is_finished());
        if (full || filled_ready)
            && let Some(first) = batch.entries.first()
        {
            self.rotate(shared, first.seq)?;
        }
        let active_base = self.segs.last().map_or(1, |s| s.base);
        let start = self.active_len;
        if !batch.bytes.is_empty() {
            let active_path = segment_path(&self.dir, active_base);
            let len = batch.bytes.len();
            let end = start + len as u64;
            let mut written_to = None;
            if let Some(direct) = &mut self.direct {
                match direct.write(&mut self.direct_buf, start, &batch.bytes) {
                    Ok(to) => written_to = Some(to),
                    // Refused (alignment the device wants larger, a file
                    // system without O_DIRECT writes): the page cache it
                    // is, for the rest of this segment. Nothing was
                    // written.
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                        tracing::warn!(stream = %self.name, error = %e, "direct write refused; writing through the page cache");
                        self.direct = None;
                    }
                    Err(e) => return Err(BusError::io("write", &active_path, &e)),
                }
            }
            if written_to.is_none() {
                // In place, the write goes on with the zeros already there
                // up to the end of its last page: a write that covers a
                // page in part makes the kernel read that page from the
                // disk first when it is not cached, and the zero-filling
                // (direct) and the drop behind the writer leave the pages
                // ahead uncached. The zeros written are the ones on disk,
                // and recovery treats zeros after the records as the
                // unused end of the segment.
                if self.active_filled {
                    let padded = end.next_multiple_of(PAGE).min(self.active_size);
                    batch
                        .bytes
                        .resize(len + padded.saturating_sub(end) as usize, 0);
                }
                let written = self
                    .active
                    .write_all_at(&batch.bytes, start)
                    .map_err(io("write", &active_path));
                batch.bytes.truncate(len);
                written?;
            }
            self.active.sync_data().map_err(io("fsync", &active_path))?;
            self.active_len = end;
            self.active_size = self.active_size.max(written_to.unwrap_or(end));
            self.drop_behind();
            if let (Some(seg), Some(last)) = (self.segs.last_mut(), batch.entries.last()) {
                seg.last_msg = Some(last.seq);
            }
        }
        let (snapshots, min_live) = {
            let mut st = lock(&shared.state);
            let mut last = None;
            for e in batch.entries.drain(..) {
                // A message deleted or dropped by limits before it became
                // visible is not inserted.
                if e.seq >= st.floor {
                    st.insert(
                        e.seq,
                        Entry {
                            subject: e.subject,
                            time_ns: e.time_ns,
                            size: u64::from(e.len),
                            loc: Loc::Disk {
                                segment: active_base,
                                offset: start + e.offset as u64,
                                len: e.len,
                            },
                        },
                    );
                }
                last = Some(e.seq);
            }
            if let Some(seq) = last {
                shared.durable.send_modify(|d| d.seq = d.seq.max(seq));
            }
            (st.take_dirty_consumers(), st.min_live())
        };
        shared.wake_fetchers();
        let cdir = self.dir.join("consumers");
        for (name, bytes) in snapshots {
            write_atomic(&cdir.join(format!("{name}.json")), &bytes)?;
        }
        for name in &batch.delete_consumers {
            let path = cdir.join(format!("{name}.json"));
            match fs::remove_file(&path) {
                Ok(()) => sync_dir(&cdir)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(BusError::io("delete", &path, &e)),
            }
        }
        self.compact(shared, min_live);
        Ok(())
    }

    /// Drops what lies more than [`CACHE_BEHIND`] behind the end of the
    /// log from the page cache (it is synced, so the pages are clean).
    ///
    /// Pages the log no longer needs then go back to the kernel's free
    /// lists at once and the next writes reuse them. Without it the log's
    /// page cache grows by every byte written, each byte on a page of
    /// memory the kernel has to find: on a virtual machine whose host takes
    /// back the guest's free memory (free page reporting), touching such a
    /// page costs a fault on the host, and a bare loop writing 64 MiB took
    /// about 0.15 s of CPU that way against 0.03 s with the drop.
    fn drop_behind(&mut self) {
        let keep_from = self.active_len.saturating_sub(CACHE_BEHIND) / PAGE * PAGE;
        if keep_from >= self.cached_from + DROP_BEHIND_STEP {
            drop_cached(&self.active, self.cached_from, keep_from - self.cached_from);
            self.cached_from = keep_from;
        }
        if self.active_len >= CACHE_BEHIND
            && let Some((old, from)) = self.retired.take()
        {
            drop_cached(&old, from, 0);
        }
    }

    fn rotate(&mut self, shared: &Shared, base: u64) -> Result<(), BusError> {
        let path = segment_path(&self.dir, base);
        let prepared = match self.prealloc.take() {
            Some(h) if h.is_finished() => match h.join() {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::warn!(stream = %self.name, error = %e, "zero-filling the next segment failed; it will be extended as records arrive");
                    false
                }
                Err(_) => false,
            },
            // Still filling: this segment is extended as records arrive,
            // the filled file serves the next rotation.
            running => {
                self.prealloc = running;
                false
            }
        };
        let file = if prepared {
            let tmp = self.dir.join(PREALLOC_FILE);
            if path.exists() {
                return Err(BusError::Io {
                    op: "create",
                    path: path.display().to_string(),
                    message: "segment already exists".into(),
                });
            }
            fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
            OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io("open", &path))?
        } else {
            OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(&path)
                .map_err(io("create", &path))?
        };
        sync_dir(&self.dir)?;
        let reader = File::open(&path).map_err(io("open", &path))?;
        lock(&shared.state)
            .segments
            .insert(base, (Arc::new(reader), path.clone()));
        self.direct = if prepared {
            Direct::open(&path, Vec::new())
        } else {
            None
        };
        let old = std::mem::replace(&mut self.active, file);
        if let Some((older, from)) = self.retired.replace((old, self.cached_from)) {
            drop_cached(&older, from, 0);
        }
        self.active_len = 0;
        self.active_size = if prepared {
            self.limits.segment_bytes
        } else {
            0
        };
        self.cached_from = 0;
        self.active_filled = prepared;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn zero_fill_writes_exactly_len_zeros_direct_or_not() {
        let dir = tempfile::tempdir().unwrap();
        // A multiple of the direct alignment (direct where the file system
        // takes it), one that is not (through the page cache), and one
        // that spans several sync steps.
        for len in [3 * 4096, 5000, ZERO_FILL_SYNC_EVERY * 2 + 4096] {
            let path = dir.path().join("z");
            // Whatever was there is replaced.
            std::fs::write(&path, [7u8; 100]).unwrap();
            zero_fill(&path, len).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len() as u64, len);
            assert!(bytes.iter().all(|&b| b == 0), "len {len}");
        }
    }
}
