//! Crash safety: a child process publishes with acks to a disk log and
//! reports every acknowledged sequence on stdout; the parent kills it with
//! SIGKILL at seeded random points, reopens the log and checks that every
//! acknowledged message is present exactly once and that no corrupt record
//! is ever returned.
//!
//! The child is this test binary run again with `--exact crash_child` and
//! an environment variable naming the log directory.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use weft_bus::record::{Tail, scan_segment};
use weft_bus::subject::{Subject, SubjectFilter};
use weft_bus::{Backend, EmbeddedBus, EmbeddedConfig, OutgoingMessage, StreamConfig};

const CHILD_DIR: &str = "WEFT_BUS_CRASH_CHILD_DIR";
const CHILD_RUN: &str = "WEFT_BUS_CRASH_CHILD_RUN";
const RUNS: u64 = 20;
const PUBLISHERS: usize = 4;

fn config() -> EmbeddedConfig {
    EmbeddedConfig {
        // Small segments: kills also land around rotations.
        segment_bytes: 256 * 1024,
        ..EmbeddedConfig::default()
    }
}

fn stream_config() -> StreamConfig {
    StreamConfig::new("crash", vec![SubjectFilter::new("crash.>").unwrap()])
}

/// The child: publishes until killed. Does nothing in a normal test run.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let run: u64 = std::env::var(CHILD_RUN).unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let bus = EmbeddedBus::open(&dir, config()).unwrap();
        bus.create_stream(stream_config()).await.unwrap();
        let mut tasks = Vec::new();
        for p in 0..PUBLISHERS {
            let bus = bus.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = ChaCha8Rng::seed_from_u64(run * 100 + p as u64);
                for i in 0.. {
                    let id = format!("r{run}-p{p}-{i}");
                    let pad = "x".repeat(rng.random_range(0..3000));
                    let subject = Subject::new(&format!("crash.p{p}")).unwrap();
                    let msg = OutgoingMessage::new(subject, format!("{id}:{pad}"))
                        .with_msg_id(id.clone());
                    let ack = bus.publish(msg).await.unwrap();
                    assert!(!ack.duplicate);
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {} {id}", ack.sequence).unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn acknowledged_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed_b005);
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut total_kills_mid_stream = 0;
    let mut torn_tails = 0;
    for run in 0..RUNS {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_RUN, run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let kill_after: usize = rng.random_range(1..400);
        let extra_delay = Duration::from_micros(rng.random_range(0..3000));
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        let record = |line: &str, acked: &mut HashMap<String, u64>| {
            if let Some(rest) = line.strip_prefix("ACK ") {
                let (seq, id) = rest.split_once(' ').unwrap();
                let seq: u64 = seq.parse().unwrap();
                assert!(
                    acked.insert(id.to_owned(), seq).is_none(),
                    "id {id} acknowledged twice"
                );
                true
            } else {
                false
            }
        };
        for line in lines.by_ref() {
            if record(&line.unwrap(), &mut acked) {
                seen += 1;
                if seen >= kill_after {
                    break;
                }
            }
        }
        assert!(
            seen >= kill_after,
            "run {run}: the child stopped after {seen} acks"
        );
        std::thread::sleep(extra_delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Acks already written to the pipe before the kill count too.
        let before = acked.len();
        for line in lines {
            let Ok(line) = line else { break };
            record(&line, &mut acked);
        }
        if acked.len() > before {
            total_kills_mid_stream += 1;
        }
        if run % 2 == 1 {
            // SIGKILL rarely tears a write on Linux (the syscall completes),
            // so every other run also appends a torn record, as a power cut
            // mid-write would leave: the start of a valid record, or noise.
            tear_last_segment(dir.path(), &mut rng);
        }
        let before = segment_bytes(dir.path());
        verify(dir.path(), &acked, run);
        if segment_bytes(dir.path()) < before {
            torn_tails += 1;
        }
    }
    assert!(
        acked.len() > RUNS as usize,
        "too few acknowledged messages to mean anything"
    );
    eprintln!(
        "{} acknowledged messages over {RUNS} kills ({total_kills_mid_stream} with acks still in the pipe, \
         {torn_tails} torn tails truncated), all present once",
        acked.len()
    );
}

fn tear_last_segment(dir: &std::path::Path, rng: &mut ChaCha8Rng) {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("streams").join("crash"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    let last = segs.last().unwrap();
    let tail: Vec<u8> = if rng.random_bool(0.5) {
        // A record header promising more bytes than follow.
        let mut t = 500u32.to_le_bytes().to_vec();
        t.extend((0..rng.random_range(4..200)).map(|_| rng.random::<u8>()));
        t
    } else {
        (0..rng.random_range(1..100))
            .map(|_| rng.random::<u8>())
            .collect()
    };
    // Where the records end: segments are written in place over a
    // zero-filled file, so a torn write lands there, not at the file's end.
    let bytes = std::fs::read(last).unwrap();
    let end = scan_segment(&bytes, 0).valid_len as u64;
    let f = std::fs::OpenOptions::new().write(true).open(last).unwrap();
    f.write_all_at(&tail, end).unwrap();
}

/// Total bytes of the crash stream's segments.
fn segment_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir.join("streams").join("crash"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

fn verify(dir: &std::path::Path, acked: &HashMap<String, u64>, run: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let bus = EmbeddedBus::open(dir, config()).unwrap();
        let info = bus.stream_info("crash").await.unwrap();
        let mut count: HashMap<String, u32> = HashMap::new();
        let mut held = 0;
        for seq in info.state.first_seq..=info.state.last_seq {
            // Every held record decodes with a good CRC; a gap is a message
            // assigned a sequence but never acknowledged.
            let m = match bus.get_message("crash", seq).await {
                Ok(m) => m,
                Err(weft_bus::BusError::MessageNotFound { .. }) => continue,
                Err(e) => panic!("run {run}: message {seq} unreadable: {e}"),
            };
            held += 1;
            let id = m.msg_id.clone().unwrap();
            let text = std::str::from_utf8(&m.payload).unwrap();
            assert!(
                text.starts_with(&format!("{id}:")),
                "run {run}: payload of {id} does not match"
            );
            *count.entry(id).or_default() += 1;
        }
        for (id, seq) in acked {
            assert_eq!(
                count.get(id),
                Some(&1),
                "run {run}: acknowledged {id} (seq {seq}) not present exactly once"
            );
            let m = bus.get_message("crash", *seq).await.unwrap();
            assert_eq!(
                m.msg_id.as_deref(),
                Some(id.as_str()),
                "run {run}: seq {seq} holds another message"
            );
        }
        assert_eq!(held, info.state.messages);
        bus.close().await;
    });
    // After recovery every segment scans clean (the torn tail was cut): its
    // records run to its end or to the zero-filled end written ahead.
    let sdir = dir.join("streams").join("crash");
    let mut segs: Vec<_> = std::fs::read_dir(&sdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    let mut after = 0;
    for seg in segs {
        let bytes = std::fs::read(&seg).unwrap();
        let scan = scan_segment(&bytes, after);
        assert!(
            scan.tail == Tail::Clean || bytes[scan.valid_len..].iter().all(|&b| b == 0),
            "run {run}: {} not clean after recovery: {:?} at {} of {} bytes",
            seg.display(),
            scan.tail,
            scan.valid_len,
            bytes.len()
        );
        if let Some(last) = scan.records.iter().rev().find_map(|r| match &r.record {
            weft_bus::record::Record::Message(m) => Some(m.seq),
            _ => None,
        }) {
            after = last;
        }
    }
}
