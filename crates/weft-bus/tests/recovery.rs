//! Reopening a disk log: what survives, what is repaired, what is refused.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use weft_bus::subject::{Subject, SubjectFilter};
use weft_bus::{
    AckKind, Backend, BusError, ConsumerConfig, EmbeddedBus, EmbeddedConfig, FetchRequest,
    OutgoingMessage, Retention, StreamConfig,
};

fn config() -> EmbeddedConfig {
    EmbeddedConfig {
        segment_bytes: 4096,
        ..EmbeddedConfig::default()
    }
}

fn msg(subject: &str, payload: &str) -> OutgoingMessage {
    OutgoingMessage::new(Subject::new(subject).unwrap(), payload.to_owned())
}

fn segments(dir: &std::path::Path, stream: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("streams").join(stream))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn messages_consumers_and_dedup_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = EmbeddedBus::open(dir.path(), config()).unwrap();
        bus.create_stream(StreamConfig::new(
            "s",
            vec![SubjectFilter::new("s.>").unwrap()],
        ))
        .await
        .unwrap();
        for i in 0..50 {
            bus.publish(
                msg("s.x", &format!("m{i} {}", "p".repeat(200))).with_msg_id(format!("id{i}")),
            )
            .await
            .unwrap();
        }
        let mut c = ConsumerConfig::new("c");
        c.ack_wait = Duration::from_secs(60);
        bus.create_consumer("s", c).await.unwrap();
        let d = bus
            .fetch("s", "c", FetchRequest::new(5, Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(d.len(), 5);
        for x in &d[..3] {
            bus.ack(&x.ack_token, AckKind::Ack).await.unwrap();
        }
        bus.close().await;
    }
    assert!(
        segments(dir.path(), "s").len() > 1,
        "50 messages should span several 4 KiB segments"
    );
    let bus = EmbeddedBus::open(dir.path(), config()).unwrap();
    let info = bus.stream_info("s").await.unwrap();
    assert_eq!(
        (
            info.state.messages,
            info.state.first_seq,
            info.state.last_seq
        ),
        (50, 1, 50)
    );
    // The two delivered but unacknowledged come back first (second delivery), then the rest.
    let d = bus
        .fetch("s", "c", FetchRequest::new(100, Duration::ZERO))
        .await
        .unwrap();
    let got: Vec<(u64, u32)> = d
        .iter()
        .map(|x| (x.message.sequence, x.delivered))
        .collect();
    assert_eq!(&got[..2], &[(4, 2), (5, 2)]);
    assert_eq!(
        got[2..].iter().map(|g| g.0).collect::<Vec<_>>(),
        (6..=50).collect::<Vec<_>>()
    );
    // Dedup ids are rebuilt within the window.
    let dup = bus
        .publish(msg("s.x", "again").with_msg_id("id7"))
        .await
        .unwrap();
    assert!(dup.duplicate);
    assert_eq!(dup.sequence, 8);
    // New sequences continue after the old ones.
    assert_eq!(bus.publish(msg("s.x", "new")).await.unwrap().sequence, 51);
    bus.close().await;
}

#[tokio::test]
async fn torn_tail_is_truncated_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = EmbeddedBus::open(dir.path(), config()).unwrap();
        bus.create_stream(StreamConfig::new(
            "t",
            vec![SubjectFilter::new("t").unwrap()],
        ))
        .await
        .unwrap();
        for i in 0..3 {
            bus.publish(msg("t", &format!("m{i}"))).await.unwrap();
        }
        bus.close().await;
    }
    let last = segments(dir.path(), "t").pop().unwrap();
    let good = std::fs::metadata(&last).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&last)
            .unwrap();
        f.write_all(&[40, 0, 0, 0, 1, 2, 3]).unwrap();
    }
    let bus = EmbeddedBus::open(dir.path(), config()).unwrap();
    assert_eq!(
        std::fs::metadata(&last).unwrap().len(),
        good,
        "torn tail cut off"
    );
    assert_eq!(bus.stream_info("t").await.unwrap().state.messages, 3);
    assert_eq!(bus.publish(msg("t", "m3")).await.unwrap().sequence, 4);
    assert_eq!(&bus.get_message("t", 4).await.unwrap().payload[..], b"m3");
    bus.close().await;
}

#[tokio::test]
async fn a_zero_filled_end_is_clean_and_written_over_in_place() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = EmbeddedBus::open(dir.path(), config()).unwrap();
        bus.create_stream(StreamConfig::new(
            "z",
            vec![SubjectFilter::new("z").unwrap()],
        ))
        .await
        .unwrap();
        for i in 0..3 {
            bus.publish(msg("z", &format!("m{i}"))).await.unwrap();
        }
        bus.close().await;
    }
    // The segment as the writer leaves one it zero-filled ahead of use.
    let last = segments(dir.path(), "z").pop().unwrap();
    let records = std::fs::metadata(&last).unwrap().len();
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.resize(4096, 0);
    std::fs::write(&last, &bytes).unwrap();
    {
        let bus = EmbeddedBus::open(dir.path(), config()).unwrap();
        assert_eq!(std::fs::metadata(&last).unwrap().len(), 4096, "nothing cut");
        assert_eq!(bus.stream_info("z").await.unwrap().state.messages, 3);
        assert_eq!(bus.publish(msg("z", "m3")).await.unwrap().sequence, 4);
        bus.close().await;
    }
    // The new record went over the zeros, right after the old ones.
    let bytes = std::fs::read(&last).unwrap();
    assert_eq!(bytes.len(), 4096);
    assert_ne!(bytes[records as usize], 0);
    let bus = EmbeddedBus::open(dir.path(), config()).unwrap();
    assert_eq!(bus.stream_info("z").await.unwrap().state.messages, 4);
    assert_eq!(&bus.get_message("z", 4).await.unwrap().payload[..], b"m3");
    bus.close().await;
}

#[tokio::test]
async fn a_torn_record_before_zeros_is_cut_and_data_after_zeros_is_refused() {
    let cfg = EmbeddedConfig {
        segment_bytes: 1 << 20,
        max_batch_bytes: 1024,
        max_message_bytes: 1024,
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = EmbeddedBus::open(dir.path(), cfg).unwrap();
        bus.create_stream(StreamConfig::new(
            "t",
            vec![SubjectFilter::new("t").unwrap()],
        ))
        .await
        .unwrap();
        for i in 0..3 {
            bus.publish(msg("t", &format!("m{i}"))).await.unwrap();
        }
        bus.close().await;
    }
    let last = segments(dir.path(), "t").pop().unwrap();
    let good = std::fs::read(&last).unwrap();
    // A torn write over a zero-filled end: the start of a record, zeros.
    let mut bytes = good.clone();
    bytes.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3]);
    bytes.resize(200_000, 0);
    std::fs::write(&last, &bytes).unwrap();
    {
        let bus = EmbeddedBus::open(dir.path(), cfg).unwrap();
        assert_eq!(std::fs::read(&last).unwrap(), good, "torn record cut off");
        assert_eq!(bus.stream_info("t").await.unwrap().state.messages, 3);
        bus.close().await;
    }
    // Bytes far past the zeros (more than a commit batch from the last
    // record) were never an unsynced batch: refused, nothing cut.
    let mut bytes = good.clone();
    bytes.resize(200_000, 0);
    bytes.push(7);
    std::fs::write(&last, &bytes).unwrap();
    assert!(matches!(
        EmbeddedBus::open(dir.path(), cfg),
        Err(BusError::Corrupt { .. })
    ));
    assert_eq!(std::fs::metadata(&last).unwrap().len(), 200_001);
}

#[tokio::test]
async fn corruption_before_the_last_segment_is_refused_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = EmbeddedBus::open(dir.path(), config()).unwrap();
        bus.create_stream(StreamConfig::new(
            "k",
            vec![SubjectFilter::new("k").unwrap()],
        ))
        .await
        .unwrap();
        for i in 0..40 {
            bus.publish(msg("k", &format!("message number {i} {}", "p".repeat(200))))
                .await
                .unwrap();
        }
        bus.close().await;
    }
    let first = segments(dir.path(), "k").remove(0);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[30] ^= 0x40;
    std::fs::write(&first, &bytes).unwrap();
    match EmbeddedBus::open(dir.path(), config()) {
        Err(BusError::Corrupt { path, offset, .. }) => {
            assert!(path.ends_with(".log"), "{path}");
            assert_eq!(offset, 0);
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

#[tokio::test]
async fn damage_far_before_the_end_of_the_last_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // One big segment, and commit batches capped small, so damage near the
    // start is provably not a torn write.
    let cfg = EmbeddedConfig {
        segment_bytes: 1 << 30,
        max_batch_bytes: 1024,
        max_message_bytes: 1024,
    };
    {
        let bus = EmbeddedBus::open(dir.path(), cfg).unwrap();
        bus.create_stream(StreamConfig::new(
            "m",
            vec![SubjectFilter::new("m").unwrap()],
        ))
        .await
        .unwrap();
        for i in 0..1000 {
            bus.publish(msg("m", &format!("{i:0200}"))).await.unwrap();
        }
        bus.close().await;
    }
    let seg = segments(dir.path(), "m").pop().unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    let len = bytes.len() as u64;
    assert!(matches!(
        EmbeddedBus::open(dir.path(), cfg),
        Err(BusError::Corrupt { offset: 0, .. })
    ));
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        len,
        "nothing truncated"
    );
}

#[tokio::test]
async fn work_queue_compaction_deletes_old_segments_and_keeps_sequences() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = EmbeddedBus::open(dir.path(), config()).unwrap();
        let mut cfg = StreamConfig::new("wq", vec![SubjectFilter::new("wq").unwrap()]);
        cfg.retention = Retention::WorkQueue;
        bus.create_stream(cfg).await.unwrap();
        bus.create_consumer("wq", ConsumerConfig::new("w"))
            .await
            .unwrap();
        let body = "y".repeat(500);
        for _ in 0..40 {
            bus.publish(msg("wq", &body)).await.unwrap();
        }
        let before = segments(dir.path(), "wq").len();
        assert!(before >= 4, "{before} segments");
        loop {
            let d = bus
                .fetch("wq", "w", FetchRequest::new(16, Duration::ZERO))
                .await
                .unwrap();
            if d.is_empty() {
                break;
            }
            for x in &d {
                bus.ack(&x.ack_token, AckKind::Ack).await.unwrap();
            }
        }
        assert_eq!(
            segments(dir.path(), "wq").len(),
            1,
            "all but the active segment deleted"
        );
        bus.close().await;
    }
    let bus = EmbeddedBus::open(dir.path(), config()).unwrap();
    let info = bus.stream_info("wq").await.unwrap();
    assert_eq!(
        info.state.messages, 0,
        "acknowledged work does not come back"
    );
    assert_eq!(info.state.last_seq, 40);
    assert_eq!(bus.publish(msg("wq", "next")).await.unwrap().sequence, 41);
    assert!(
        bus.fetch("wq", "w", FetchRequest::new(16, Duration::ZERO))
            .await
            .unwrap()
            .len()
            == 1
    );
    bus.close().await;
}

#[tokio::test]
async fn retention_floor_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = EmbeddedBus::open(dir.path(), config()).unwrap();
        let mut cfg = StreamConfig::new("lim", vec![SubjectFilter::new("lim").unwrap()]);
        cfg.max_messages = Some(3);
        cfg.retention = Retention::WorkQueue;
        bus.create_stream(cfg).await.unwrap();
        bus.create_consumer("lim", ConsumerConfig::new("c"))
            .await
            .unwrap();
        for i in 0..6 {
            bus.publish(msg("lim", &format!("m{i}"))).await.unwrap();
        }
        // Delete the newest of the three kept; without the floor record a
        // reopen would bring m2 back to fill the limit.
        let d = bus
            .fetch("lim", "c", FetchRequest::new(3, Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(
            d.iter().map(|x| x.message.sequence).collect::<Vec<_>>(),
            [4, 5, 6]
        );
        bus.ack(&d[2].ack_token, AckKind::Ack).await.unwrap();
        bus.close().await;
    }
    let bus = EmbeddedBus::open(dir.path(), config()).unwrap();
    let info = bus.stream_info("lim").await.unwrap();
    assert_eq!((info.state.messages, info.state.first_seq), (2, 4));
    bus.close().await;
}

#[tokio::test]
async fn an_extended_segment_is_closed_early_for_a_zero_filled_one() {
    // 256 KiB segments: the filling of the next one starts once the first
    // (extended) segment holds half of that, and the first batch after it
    // finished moves to it, long before the first segment is full.
    let cfg = EmbeddedConfig {
        segment_bytes: 256 << 10,
        ..EmbeddedConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let body = "p".repeat(1000);
    let mut published = 0u64;
    {
        let bus = EmbeddedBus::open(dir.path(), cfg).unwrap();
        bus.create_stream(StreamConfig::new(
            "e",
            vec![SubjectFilter::new("e").unwrap()],
        ))
        .await
        .unwrap();
        // Each publish waits for its fsync, so the filling (256 KiB, one
        // fsync, on its own thread) finishes long before the ~120
        // publishes after it started are done; 240 records are 254 KiB,
        // so a second segment before them all means an early close.
        while published < 240 && segments(dir.path(), "e").len() < 2 {
            bus.publish(msg("e", &body)).await.unwrap();
            published += 1;
        }
        assert_eq!(segments(dir.path(), "e").len(), 2, "no early move");
        for _ in 0..5 {
            bus.publish(msg("e", &body)).await.unwrap();
            published += 1;
        }
        bus.close().await;
    }
    let segs = segments(dir.path(), "e");
    let first = std::fs::metadata(&segs[0]).unwrap().len();
    let second = std::fs::metadata(&segs[1]).unwrap().len();
    assert!(
        first < 256 << 10,
        "first segment {first} bytes, closed early"
    );
    assert_eq!(second, 256 << 10, "the second was zero-filled ahead of use");
    let bus = EmbeddedBus::open(dir.path(), cfg).unwrap();
    let info = bus.stream_info("e").await.unwrap();
    assert_eq!(info.state.messages, published);
    assert_eq!(info.state.last_seq, published);
    let last = bus.get_message("e", published).await.unwrap();
    assert_eq!(last.payload.len(), 1000);
    bus.close().await;
}

#[tokio::test]
async fn records_written_in_place_read_back_at_once_and_after_reopen() {
    // Zero-filled segments are written a batch at a time from the start
    // of the page the batch begins in (the records already in that page
    // are written again): reading each message right after its publish
    // puts the page in the page cache just before the next write goes
    // over it, and every record must still read back, then and after a
    // reopen (which picks the partly used page up from the file).
    let cfg = EmbeddedConfig {
        segment_bytes: 16 << 10,
        ..EmbeddedConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let body = |i: u64| format!("{i:04}-{}", "q".repeat((i as usize * 37) % 700));
    let mut seq = 0;
    for round in 0..2 {
        let bus = EmbeddedBus::open(dir.path(), cfg).unwrap();
        if round == 0 {
            bus.create_stream(StreamConfig::new(
                "w",
                vec![SubjectFilter::new("w").unwrap()],
            ))
            .await
            .unwrap();
        }
        for _ in 0..150 {
            seq += 1;
            let ack = bus.publish(msg("w", &body(seq))).await.unwrap();
            assert_eq!(ack.sequence, seq);
            for s in seq.saturating_sub(2).max(1)..=seq {
                let m = bus.get_message("w", s).await.unwrap();
                assert_eq!(&m.payload[..], body(s).as_bytes(), "message {s}");
            }
        }
        bus.close().await;
    }
    // Several zero-filled segments were written in place (whole pages,
    // the last batch of one may go past its end).
    let segs = segments(dir.path(), "w");
    let filled = segs
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .filter(|&len| len >= 16 << 10 && len.is_multiple_of(4096))
        .count();
    let lens: Vec<u64> = segs
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    assert!(
        filled >= 2,
        "{filled} zero-filled segments of {}: {lens:?}",
        segs.len()
    );
    let bus = EmbeddedBus::open(dir.path(), cfg).unwrap();
    assert_eq!(bus.stream_info("w").await.unwrap().state.messages, seq);
    for s in 1..=seq {
        let m = bus.get_message("w", s).await.unwrap();
        assert_eq!(&m.payload[..], body(s).as_bytes(), "message {s}");
    }
    bus.close().await;
}
