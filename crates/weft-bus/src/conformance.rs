//! The conformance suite: async checks generic over [`Backend`], run
//! against every backend unchanged (the embedded log on disk and in memory
//! now, NATS JetStream later).
//!
//! Each check takes the backend and a namespace `ns` (`[A-Za-z0-9_-]`,
//! unique per run) and names its streams `<ns>_<what>` and subjects
//! `<ns>.<what>...`, deleting its streams at the end, so many checks can
//! share one NATS server. Time-dependent checks use short real durations
//! (a few hundred ms) through `tokio::time`, so they pass on a paused tokio
//! clock (instantly) and on a real server.
//!
//! A failed check panics with what was expected, like a test assertion.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;

use crate::backend::{
    AckKind, Backend, BusError, ConsumerConfig, DeliverPolicy, Delivery, FetchRequest, Headers,
    OutgoingMessage, Retention, StreamConfig, dlq_headers,
};
use crate::subject::{Subject, SubjectFilter};

const ACK_WAIT: Duration = Duration::from_millis(300);

fn subject(s: &str) -> Subject {
    Subject::new(s).expect("test subject is valid")
}

fn filter(s: &str) -> SubjectFilter {
    SubjectFilter::new(s).expect("test filter is valid")
}

fn msg(s: &str, payload: &str) -> OutgoingMessage {
    OutgoingMessage::new(subject(s), Bytes::from(payload.to_owned()))
}

async fn fresh_stream<B: Backend>(bus: &B, config: StreamConfig) {
    let _ = bus.delete_stream(&config.name).await;
    bus.create_stream(config).await.expect("create stream");
}

async fn fetch<B: Backend>(
    bus: &B,
    stream: &str,
    consumer: &str,
    max: usize,
    wait: Duration,
) -> Vec<Delivery> {
    bus.fetch(stream, consumer, FetchRequest::new(max, wait))
        .await
        .expect("fetch")
}

fn payloads(d: &[Delivery]) -> Vec<String> {
    d.iter()
        .map(|d| String::from_utf8_lossy(&d.message.payload).into_owned())
        .collect()
}

async fn ack_all<B: Backend>(bus: &B, d: &[Delivery]) {
    for d in d {
        bus.ack(&d.ack_token, AckKind::Ack).await.expect("ack");
    }
}

/// Polls `check` until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publish returns increasing sequences; a consumer gets the messages in
/// order, with their subject, headers and payload.
pub async fn publish_and_consume_in_order<B: Backend>(bus: &B, ns: &str) {
    let name = format!("{ns}_order");
    fresh_stream(
        bus,
        StreamConfig::new(&name, vec![filter(&format!("{ns}.order.>"))]),
    )
    .await;
    let mut last = 0;
    for i in 0..20 {
        let mut h = Headers::new();
        h.append("X-Index", &i.to_string()).expect("header");
        let ack = bus
            .publish(msg(&format!("{ns}.order.a"), &format!("m{i}")).with_headers(h))
            .await
            .expect("publish");
        assert_eq!(ack.stream, name);
        assert!(!ack.duplicate);
        assert!(
            ack.sequence > last,
            "sequences must increase: {} after {last}",
            ack.sequence
        );
        last = ack.sequence;
    }
    bus.create_consumer(&name, ConsumerConfig::new("c"))
        .await
        .expect("consumer");
    let mut got = Vec::new();
    while got.len() < 20 {
        let d = fetch(bus, &name, "c", 7, Duration::from_millis(500)).await;
        assert!(
            !d.is_empty(),
            "fetch returned nothing with {} of 20 received",
            got.len()
        );
        for x in &d {
            assert_eq!(x.delivered, 1);
            assert_eq!(x.message.subject.as_str(), format!("{ns}.order.a"));
            assert_eq!(
                x.message.headers.get("X-Index"),
                Some(got.len().to_string()).as_deref()
            );
            got.push(String::from_utf8_lossy(&x.message.payload).into_owned());
        }
        ack_all(bus, &d).await;
    }
    assert_eq!(got, (0..20).map(|i| format!("m{i}")).collect::<Vec<_>>());
    assert!(fetch(bus, &name, "c", 10, Duration::ZERO).await.is_empty());
    let info = bus.stream_info(&name).await.expect("info");
    assert_eq!(info.state.messages, 20);
    let m = bus.get_message(&name, last).await.expect("get");
    assert_eq!(&m.payload[..], b"m19");
    assert!(matches!(
        bus.get_message(&name, last + 1).await,
        Err(BusError::MessageNotFound { .. })
    ));
    bus.delete_stream(&name).await.expect("delete");
}

/// Streams and consumers select by NATS wildcards; a subject no stream
/// captures is refused; overlapping streams are refused.
pub async fn wildcard_filters<B: Backend>(bus: &B, ns: &str) {
    let name = format!("{ns}_wild");
    fresh_stream(
        bus,
        StreamConfig::new(
            &name,
            vec![
                filter(&format!("{ns}.tele.*.cpu")),
                filter(&format!("{ns}.inc.>")),
            ],
        ),
    )
    .await;
    for s in ["tele.a.cpu", "tele.b.cpu", "inc.x", "inc.x.y.z"] {
        bus.publish(msg(&format!("{ns}.{s}"), s))
            .await
            .expect("publish");
    }
    for s in ["tele.a.mem", "tele.a.b.cpu", "inc", "other.x"] {
        let r = bus.publish(msg(&format!("{ns}.{s}"), s)).await;
        assert!(matches!(r, Err(BusError::NoStream { .. })), "{s}: {r:?}");
    }
    let overlapping = StreamConfig::new(
        format!("{ns}_wild2"),
        vec![filter(&format!("{ns}.tele.a.*"))],
    );
    assert!(matches!(
        bus.create_stream(overlapping).await,
        Err(BusError::SubjectsOverlap { .. })
    ));

    let mut c = ConsumerConfig::new("inc");
    c.filter_subject = Some(filter(&format!("{ns}.inc.>")));
    bus.create_consumer(&name, c).await.expect("consumer");
    let mut c = ConsumerConfig::new("tele_a");
    c.filter_subject = Some(filter(&format!("{ns}.tele.a.*")));
    bus.create_consumer(&name, c).await.expect("consumer");
    assert_eq!(
        payloads(&fetch(bus, &name, "inc", 10, Duration::from_millis(200)).await),
        ["inc.x", "inc.x.y.z"]
    );
    assert_eq!(
        payloads(&fetch(bus, &name, "tele_a", 10, Duration::from_millis(200)).await),
        ["tele.a.cpu"]
    );
    let mut c = ConsumerConfig::new("nothing");
    c.filter_subject = Some(filter(&format!("{ns}.zzz")));
    assert!(matches!(
        bus.create_consumer(&name, c).await,
        Err(BusError::InvalidConfig { .. })
    ));
    bus.delete_stream(&name).await.expect("delete");
}

/// max_messages keeps the newest N.
pub async fn retention_max_messages<B: Backend>(bus: &B, ns: &str) {
    let name = format!("{ns}_maxmsgs");
    let mut cfg = StreamConfig::new(&name, vec![filter(&format!("{ns}.maxmsgs"))]);
    cfg.max_messages = Some(5);
    fresh_stream(bus, cfg).await;
    for i in 0..12 {
        bus.publish(msg(&format!("{ns}.maxmsgs"), &format!("m{i}")))
            .await
            .expect("publish");
    }
    let info = bus.stream_info(&name).await.expect("info");
    assert_eq!(info.state.messages, 5);
    assert_eq!(info.state.last_seq - info.state.first_seq + 1, 5);
    bus.create_consumer(&name, ConsumerConfig::new("c"))
        .await
        .expect("consumer");
    assert_eq!(
        payloads(&fetch(bus, &name, "c", 10, Duration::from_millis(200)).await),
        ["m7", "m8", "m9", "m10", "m11"]
    );
    bus.delete_stream(&name).await.expect("delete");
}

/// max_bytes drops the oldest until the stream fits.
pub async fn retention_max_bytes<B: Backend>(bus: &B, ns: &str) {
    let name = format!("{ns}_maxbytes");
    let mut cfg = StreamConfig::new(&name, vec![filter(&format!("{ns}.maxbytes"))]);
    cfg.max_bytes = Some(4 * 1024);
    fresh_stream(bus, cfg).await;
    let body = "x".repeat(1000);
    for _ in 0..10 {
        bus.publish(msg(&format!("{ns}.maxbytes"), &body))
            .await
            .expect("publish");
    }
    let info = bus.stream_info(&name).await.expect("info");
    assert!(
        info.state.bytes <= 4 * 1024,
        "{} bytes held over a 4096 limit",
        info.state.bytes
    );
    assert!(
        (2..=4).contains(&info.state.messages),
        "{} messages held",
        info.state.messages
    );
    assert_eq!(
        info.state.last_seq,
        info.state.first_seq + info.state.messages - 1,
        "the newest are kept"
    );
    bus.delete_stream(&name).await.expect("delete");
}

/// max_age drops messages older than the limit.
pub async fn retention_max_age<B: Backend>(bus: &B, ns: &str) {
    let name = format!("{ns}_maxage");
    let mut cfg = StreamConfig::new(&name, vec![filter(&format!("{ns}.maxage"))]);
    cfg.max_age = Some(Duration::from_secs(1));
    fresh_stream(bus, cfg).await;
    bus.publish(msg(&format!("{ns}.maxage"), "old"))
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(600)).await;
    bus.publish(msg(&format!("{ns}.maxage"), "new"))
        .await
        .expect("publish");
    assert_eq!(
        bus.stream_info(&name).await.expect("info").state.messages,
        2
    );
    let gone = eventually(Duration::from_secs(3), || async {
        bus.stream_info(&name).await.expect("info").state.messages == 1
    })
    .await;
    assert!(gone, "the old message outlived max_age");
    bus.create_consumer(&name, ConsumerConfig::new("c"))
        .await
        .expect("consumer");
    assert_eq!(
        payloads(&fetch(bus, &name, "c", 10, Duration::from_millis(200)).await),
        ["new"]
    );
    let empty = eventually(Duration::from_secs(3), || async {
        bus.stream_info(&name).await.expect("info").state.messages == 0
    })
    .await;
    assert!(empty, "the new message outlived max_age");
    bus.delete_stream(&name).await.expect("delete");
}

/// A work queue deletes each message once acknowledged and lets one
/// consumer per subject exist.
pub async fn work_queue_deletes_on_ack<B: Backend>(bus: &B, ns: &str) {
    let name = format!("{ns}_wq");
    let mut cfg = StreamConfig::new(&name, vec![filter(&format!("{ns}.wq.>"))]);
    cfg.retention = Retention::WorkQueue;
    fresh_stream(bus, cfg).await;
    for i in 0..4 {
        bus.publish(msg(&format!("{ns}.wq.job"), &format!("j{i}")))
            .await
            .expect("publish");
    }
    bus.create_consumer(&name, ConsumerConfig::new("w"))
        .await
        .expect("consumer");
    assert!(matches!(
        bus.create_consumer(&name, ConsumerConfig::new("w2")).await,
        Err(BusError::WorkQueueOverlap { .. })
    ));
    let d = fetch(bus, &name, "w", 2, Duration::from_millis(200)).await;
    assert_eq!(d.len(), 2);
    ack_all(bus, &d).await;
    let info = bus.stream_info(&name).await.expect("info");
    assert_eq!(
        info.state.messages, 2,
        "acknowledged work-queue messages are deleted"
    );
    for x in &d {
        assert!(matches!(
            bus.get_message(&name, x.message.sequence).await,
            Err(BusError::MessageNotFound { .. })
        ));
    }
    bus.delete_stream(&name).await.expect("delete");
}

/// Competing fetchers on one work-queue consumer receive each message once.
pub async fn work_queue_competing_consumers<B: Backend + Clone + 'static>(bus: &B, ns: &str) {
    let name = format!("{ns}_compete");
    let mut cfg = StreamConfig::new(&name, vec![filter(&format!("{ns}.compete"))]);
    cfg.retention = Retention::WorkQueue;
    fresh_stream(bus, cfg).await;
    let mut c = ConsumerConfig::new("workers");
    c.ack_wait = Duration::from_secs(30);
    bus.create_consumer(&name, c).await.expect("consumer");
    const N: usize = 200;
    let mut workers = Vec::new();
    for _ in 0..4 {
        let bus = bus.clone();
        let name = name.clone();
        workers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut idle = 0;
            while idle < 3 {
                let d = bus
                    .fetch(
                        &name,
                        "workers",
                        FetchRequest::new(8, Duration::from_millis(300)),
                    )
                    .await
                    .expect("fetch");
                if d.is_empty() {
                    idle += 1;
                    continue;
                }
                idle = 0;
                for x in &d {
                    assert_eq!(
                        x.delivered, 1,
                        "no redelivery expected with a 30 s ack wait"
                    );
                    seen.push(String::from_utf8_lossy(&x.message.payload).into_owned());
                    bus.ack(&x.ack_token, AckKind::Ack).await.expect("ack");
                    // The "work": lets the other workers run on a
                    // single-threaded runtime too.
                    tokio::task::yield_now().await;
                }
            }
            seen
        }));
    }
    for i in 0..N {
        bus.publish(msg(&format!("{ns}.compete"), &format!("j{i}")))
            .await
            .expect("publish");
    }
    let mut all = Vec::new();
    let mut busy = 0;
    for w in workers {
        let seen = w.await.expect("worker");
        if !seen.is_empty() {
            busy += 1;
        }
        all.extend(seen);
    }
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), N, "each message delivered exactly once in total");
    assert_eq!(unique.len(), N, "no message delivered twice");
    assert!(
        busy >= 2,
        "the load was shared ({busy} workers got messages)"
    );
    assert_eq!(
        bus.stream_info(&name).await.expect("info").state.messages,
        0
    );
    bus.delete_stream(&name).await.expect("delete");
}

/// A repeated message id within the window returns the original sequence
/// with `duplicate: true`; after the window it is stored again.
pub async fn dedup_window<B: Backend>(bus: &B, ns: &str) {
    let name = format!("{ns}_dedup");
    let mut cfg = StreamConfig::new(&name, vec![filter(&format!("{ns}.dedup"))]);
    cfg.duplicate_window = Duration::from_secs(1);
    fresh_stream(bus, cfg).await;
    let s = format!("{ns}.dedup");
    let a = bus
        .publish(msg(&s, "one").with_msg_id("id-1"))
        .await
        .expect("publish");
    let b = bus
        .publish(msg(&s, "two").with_msg_id("id-2"))
        .await
        .expect("publish");
    let dup = bus
        .publish(msg(&s, "one again").with_msg_id("id-1"))
        .await
        .expect("publish");
    assert!(!a.duplicate && !b.duplicate);
    assert!(dup.duplicate);
    assert_eq!(dup.sequence, a.sequence);
    assert_eq!(
        bus.stream_info(&name).await.expect("info").state.messages,
        2
    );
    assert_eq!(
        &bus.get_message(&name, a.sequence)
            .await
            .expect("get")
            .payload[..],
        b"one"
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let again = bus
        .publish(msg(&s, "one later").with_msg_id("id-1"))
        .await
        .expect("publish");
    assert!(
        !again.duplicate,
        "the id is accepted again after the window"
    );
    assert!(again.sequence > b.sequence);
    bus.delete_stream(&name).await.expect("delete");
}

/// Ack removes a message from the consumer; nak redelivers (after its
/// delay); term dead-letters at once with the reason.
pub async fn ack_nak_term<B: Backend>(bus: &B, ns: &str) {
    let name = format!("{ns}_acks");
    fresh_stream(
        bus,
        StreamConfig::new(&name, vec![filter(&format!("{ns}.acks"))]),
    )
    .await;
    for p in ["a", "b", "c"] {
        bus.publish(msg(&format!("{ns}.acks"), p))
            .await
            .expect("publish");
    }
    let mut c = ConsumerConfig::new("c");
    c.ack_wait = Duration::from_secs(30);
    bus.create_consumer(&name, c).await.expect("consumer");
    let d = fetch(bus, &name, "c", 3, Duration::from_millis(200)).await;
    assert_eq!(payloads(&d), ["a", "b", "c"]);
    bus.ack(&d[0].ack_token, AckKind::Ack).await.expect("ack");
    bus.ack(&d[1].ack_token, AckKind::Nak(None))
        .await
        .expect("nak");
    bus.ack(&d[2].ack_token, AckKind::Term(Some("bad input".into())))
        .await
        .expect("term");
    let again = fetch(bus, &name, "c", 3, Duration::from_millis(500)).await;
    assert_eq!(payloads(&again), ["b"], "only the nak'd message comes back");
    assert_eq!(again[0].delivered, 2);
    // Nak with a delay: not before it.
    bus.ack(
        &again[0].ack_token,
        AckKind::Nak(Some(Duration::from_millis(400))),
    )
    .await
    .expect("nak");
    assert!(fetch(bus, &name, "c", 3, Duration::ZERO).await.is_empty());
    let later = fetch(bus, &name, "c", 3, Duration::from_secs(2)).await;
    assert_eq!(payloads(&later), ["b"]);
    assert_eq!(later[0].delivered, 3);
    bus.ack(&later[0].ack_token, AckKind::Ack)
        .await
        .expect("ack");
    // Acking twice is harmless.
    bus.ack(&later[0].ack_token, AckKind::Ack)
        .await
        .expect("second ack");
    let found = eventually(Duration::from_secs(2), || async {
        bus.dlq_list(&name, 0, 10).await.expect("dlq list").len() == 1
    })
    .await;
    assert!(
        found,
        "the terminated message reaches the dead-letter stream"
    );
    let dl = &bus.dlq_list(&name, 0, 10).await.expect("dlq list")[0];
    assert_eq!(&dl.payload[..], b"c");
    assert!(dl.reason.contains("bad input"), "reason: {}", dl.reason);
    assert_eq!(dl.deliveries, 1);
    assert!(
        fetch(bus, &name, "c", 3, Duration::from_millis(100))
            .await
            .is_empty()
    );
    bus.delete_stream(&name).await.expect("delete");
}

/// An unacknowledged delivery comes back after ack_wait (not before);
/// in-progress pushes the deadline out.
pub async fn redelivery_after_ack_timeout<B: Backend>(bus: &B, ns: &str) {
    let name = format!("{ns}_redeliver");
    fresh_stream(
        bus,
        StreamConfig::new(&name, vec![filter(&format!("{ns}.redeliver"))]),
    )
    .await;
    bus.publish(msg(&format!("{ns}.redeliver"), "x"))
        .await
        .expect("publish");
    let mut c = ConsumerConfig::new("c");
    c.ack_wait = ACK_WAIT;
    bus.create_consumer(&name, c).await.expect("consumer");
    let first = fetch(bus, &name, "c", 1, Duration::from_millis(200)).await;
    assert_eq!(first.len(), 1);
    assert!(
        fetch(bus, &name, "c", 1, Duration::ZERO).await.is_empty(),
        "redelivered before ack_wait"
    );
    let second = fetch(bus, &name, "c", 1, ACK_WAIT * 4).await;
    assert_eq!(second.len(), 1, "not redelivered after ack_wait");
    assert_eq!(second[0].delivered, 2);
    assert_eq!(second[0].message.sequence, first[0].message.sequence);
    // In progress: keep it for longer than one ack_wait in total.
    tokio::time::sleep(ACK_WAIT * 2 / 3).await;
    bus.ack(&second[0].ack_token, AckKind::InProgress)
        .await
        .expect("in progress");
    tokio::time::sleep(ACK_WAIT * 2 / 3).await;
    assert!(
        fetch(bus, &name, "c", 1, Duration::ZERO).await.is_empty(),
        "in progress did not extend the deadline"
    );
    bus.ack(&second[0].ack_token, AckKind::Ack)
        .await
        .expect("ack");
    assert!(
        fetch(bus, &name, "c", 1, ACK_WAIT * 2).await.is_empty(),
        "redelivered after ack"
    );
    bus.delete_stream(&name).await.expect("delete");
}

/// After max_deliver deliveries the message moves to the dead-letter
/// stream with the reason, delivery count and original headers; a
/// replay puts it back on its subject once.
pub async fn max_deliver_dead_letter_and_replay<B: Backend>(bus: &B, ns: &str) {
    let name = format!("{ns}_dlq");
    fresh_stream(
        bus,
        StreamConfig::new(&name, vec![filter(&format!("{ns}.dlq.>"))]),
    )
    .await;
    let mut h = Headers::new();
    h.append(
        "Traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    .expect("header");
    h.append("X-Tenant", "blue").expect("header");
    let orig = bus
        .publish(
            msg(&format!("{ns}.dlq.job"), "poison")
                .with_headers(h.clone())
                .with_msg_id("poison-1"),
        )
        .await
        .expect("publish");
    bus.publish(msg(&format!("{ns}.dlq.job"), "fine"))
        .await
        .expect("publish");
    let mut c = ConsumerConfig::new("worker");
    c.ack_wait = ACK_WAIT;
    c.max_deliver = 3;
    bus.create_consumer(&name, c).await.expect("consumer");
    let mut deliveries = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut moved = false;
    while !moved && tokio::time::Instant::now() < deadline {
        for d in fetch(bus, &name, "worker", 10, ACK_WAIT).await {
            if &d.message.payload[..] == b"fine" {
                bus.ack(&d.ack_token, AckKind::Ack).await.expect("ack");
            } else {
                deliveries += 1;
                assert!(
                    d.delivered <= 3,
                    "delivered {} times with max_deliver 3",
                    d.delivered
                );
                if d.delivered == 2 {
                    bus.ack(&d.ack_token, AckKind::Nak(None))
                        .await
                        .expect("nak");
                }
            }
        }
        moved = !bus.dlq_list(&name, 0, 10).await.expect("dlq").is_empty();
    }
    assert!(moved, "the message never reached the dead-letter stream");
    assert_eq!(deliveries, 3);
    let dls = bus.dlq_list(&name, 0, 10).await.expect("dlq");
    assert_eq!(dls.len(), 1);
    let dl = &dls[0];
    assert_eq!(dl.stream, name);
    assert_eq!(dl.consumer, "worker");
    assert_eq!(dl.original_sequence, orig.sequence);
    assert_eq!(dl.original_subject.as_str(), format!("{ns}.dlq.job"));
    assert_eq!(dl.original_msg_id.as_deref(), Some("poison-1"));
    assert_eq!(dl.deliveries, 3);
    assert!(dl.reason.contains("max_deliver"), "reason: {}", dl.reason);
    assert_eq!(dl.headers, h, "original headers kept, in order");
    assert_eq!(&dl.payload[..], b"poison");
    let shown = bus.dlq_show(&name, dl.dlq_sequence).await.expect("show");
    assert_eq!(&shown, dl);
    let raw = bus
        .get_message(
            &format!("{name}{}", crate::backend::DLQ_SUFFIX),
            dl.dlq_sequence,
        )
        .await
        .expect("raw dead letter");
    assert_eq!(raw.headers.get(dlq_headers::DELIVERIES), Some("3"));
    assert!(
        fetch(bus, &name, "worker", 10, ACK_WAIT * 2)
            .await
            .is_empty(),
        "dead-lettered message delivered again"
    );
    assert!(
        bus.delete_stream(&format!("{name}{}", crate::backend::DLQ_SUFFIX))
            .await
            .is_err(),
        "a dead-letter stream cannot be deleted under its source"
    );

    // Replay: back on its subject, once, and gone from the DLQ.
    let r1 = bus
        .dlq_replay(&name, dl.dlq_sequence)
        .await
        .expect("replay");
    assert_eq!(r1.stream, name);
    assert!(r1.sequence > orig.sequence);
    assert!(bus.dlq_list(&name, 0, 10).await.expect("dlq").is_empty());
    assert!(
        bus.dlq_replay(&name, dl.dlq_sequence).await.is_err(),
        "a replayed dead letter is gone"
    );
    let d = fetch(bus, &name, "worker", 10, Duration::from_millis(500)).await;
    assert_eq!(payloads(&d), ["poison"]);
    assert_eq!(d[0].delivered, 1);
    assert_eq!(d[0].message.headers, h);
    ack_all(bus, &d).await;
    let counters = bus.counters();
    if let Some(c) = counters.streams.get(&name) {
        assert!(c.dead_lettered >= 1 && c.redelivered >= 2, "{c:?}");
    }
    bus.delete_stream(&name).await.expect("delete");
}

/// Messages over the size limit and bad headers are refused and counted.
pub async fn refusals<B: Backend>(bus: &B, ns: &str, max_message_bytes: usize) {
    let name = format!("{ns}_big");
    fresh_stream(
        bus,
        StreamConfig::new(&name, vec![filter(&format!("{ns}.big"))]),
    )
    .await;
    let before = bus
        .counters()
        .refusals
        .get("too_large")
        .copied()
        .unwrap_or(0);
    let ok = "x".repeat(max_message_bytes - 100);
    bus.publish(msg(&format!("{ns}.big"), &ok))
        .await
        .expect("publish under the limit");
    let big = "x".repeat(max_message_bytes + 1);
    let r = bus.publish(msg(&format!("{ns}.big"), &big)).await;
    assert!(matches!(r, Err(BusError::MessageTooLarge { .. })), "{r:?}");
    assert_eq!(
        bus.counters()
            .refusals
            .get("too_large")
            .copied()
            .unwrap_or(0),
        before + 1
    );
    let mut h = Headers::new();
    h.push_unchecked("Nats-Msg-Id".into(), "x".into());
    let r = bus
        .publish(msg(&format!("{ns}.big"), "x").with_headers(h))
        .await;
    assert!(matches!(r, Err(BusError::InvalidHeader { .. })), "{r:?}");
    assert_eq!(
        bus.stream_info(&name).await.expect("info").state.messages,
        1
    );
    bus.delete_stream(&name).await.expect("delete");
}

/// Consumers start where their deliver policy says and survive being
/// created twice with the same configuration.
pub async fn deliver_policies<B: Backend>(bus: &B, ns: &str) {
    let name = format!("{ns}_policy");
    fresh_stream(
        bus,
        StreamConfig::new(&name, vec![filter(&format!("{ns}.policy"))]),
    )
    .await;
    for p in ["a", "b", "c"] {
        bus.publish(msg(&format!("{ns}.policy"), p))
            .await
            .expect("publish");
    }
    let mut c = ConsumerConfig::new("new");
    c.deliver_policy = DeliverPolicy::New;
    bus.create_consumer(&name, c.clone())
        .await
        .expect("consumer");
    bus.create_consumer(&name, c.clone())
        .await
        .expect("same config again");
    c.max_deliver = 9;
    assert!(matches!(
        bus.create_consumer(&name, c).await,
        Err(BusError::ConsumerExists { .. })
    ));
    let mut c = ConsumerConfig::new("from2");
    c.deliver_policy = DeliverPolicy::ByStartSequence(2);
    bus.create_consumer(&name, c).await.expect("consumer");
    bus.publish(msg(&format!("{ns}.policy"), "d"))
        .await
        .expect("publish");
    assert_eq!(
        payloads(&fetch(bus, &name, "new", 10, Duration::from_millis(300)).await),
        ["d"]
    );
    assert_eq!(
        payloads(&fetch(bus, &name, "from2", 10, Duration::from_millis(300)).await),
        ["b", "c", "d"]
    );
    bus.delete_consumer(&name, "new")
        .await
        .expect("delete consumer");
    assert!(matches!(
        bus.consumer_info(&name, "new").await,
        Err(BusError::ConsumerNotFound { .. })
    ));
    bus.delete_stream(&name).await.expect("delete");
}

async fn delete_queue<B: Backend>(bus: &B, config: &crate::jobs::JobQueueConfig) {
    for s in [
        config.job_stream(),
        config.control_stream(),
        config.event_stream(),
    ] {
        bus.delete_stream(&s).await.expect("delete job stream");
    }
}

/// Jobs: the concurrency limit, complete, fail with backoff, retries
/// exhausted into the DLQ with the reason, lease expiry and heartbeats,
/// cancel before and during a run, progress and outcome events.
pub async fn jobs_lifecycle<B: Backend + Clone>(bus: &B, ns: &str) {
    use crate::jobs::{Heartbeat, JobEventKind, JobQueue, JobQueueConfig, Progress, Retry};
    let mut config = JobQueueConfig::new(format!("{ns}_jl"));
    config.lease = ACK_WAIT;
    config.max_attempts = 3;
    config.backoff_base = Duration::from_millis(200);
    config.backoff_max = Duration::from_millis(400);
    for s in [
        config.job_stream(),
        config.control_stream(),
        config.event_stream(),
    ] {
        let _ = bus.delete_stream(&s).await;
    }
    let q = JobQueue::open(bus.clone(), config.clone())
        .await
        .expect("open queue");
    // Opening again with the same settings is fine.
    JobQueue::open(bus.clone(), config.clone())
        .await
        .expect("reopen queue");
    assert!(
        q.submit("bad.kind", "x").await.is_err(),
        "a kind is one subject token"
    );

    // Concurrency limit 2: three jobs, two at a time.
    let a = q.submit("resize", "a").await.expect("submit");
    let b = q.submit("resize", "b").await.expect("submit");
    let c = q.submit("resize", "c").await.expect("submit");
    assert!(
        q.submit_with_id(&a, "resize", "a again")
            .await
            .expect("resubmit"),
        "a repeated id is a duplicate"
    );
    let w = q.worker(2).expect("worker");
    let first = w.pull(10, Duration::from_millis(300)).await.expect("pull");
    assert_eq!(first.len(), 2, "at most the concurrency limit");
    assert_eq!(w.free_slots(), 0);
    assert!(
        w.pull(1, Duration::from_millis(50))
            .await
            .expect("pull")
            .is_empty(),
        "no job beyond the limit"
    );
    let ids: Vec<&str> = first.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, [a.as_str(), b.as_str()]);
    assert_eq!(first[0].kind, "resize");
    assert_eq!(&first[0].payload[..], b"a");
    assert_eq!(first[0].attempt, 1);
    let mut first = first.into_iter();
    let ja = first.next().expect("job a");
    let jb = first.next().expect("job b");
    ja.complete(Some("done")).await.expect("complete");
    assert_eq!(w.free_slots(), 1);
    let next = w.pull(10, Duration::from_millis(300)).await.expect("pull");
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id, c);
    let jc = next.into_iter().next().expect("job c");

    // b fails with retry: back after the backoff (not before), attempt 2.
    jb.fail("disk full", Retry::Yes).await.expect("fail");
    assert!(
        w.pull(1, Duration::ZERO).await.expect("pull").is_empty(),
        "retried before its backoff"
    );
    // c is kept alive by heartbeats past its lease while b waits.
    tokio::time::sleep(ACK_WAIT * 2 / 3).await;
    assert_eq!(
        jc.heartbeat(Some(Progress {
            done: 1,
            total: Some(2),
            note: Some("half".into()),
        }))
        .await
        .expect("heartbeat"),
        Heartbeat::Continue
    );
    tokio::time::sleep(ACK_WAIT * 2 / 3).await;
    let again = w.pull(1, Duration::from_secs(2)).await.expect("pull");
    assert_eq!(again.len(), 1, "b comes back after its backoff");
    assert_eq!(again[0].id, b, "c, heartbeating, is not handed out");
    assert_eq!(again[0].attempt, 2);
    let jb = again.into_iter().next().expect("job b");
    jc.complete(None).await.expect("complete c");

    // b times out (dropped without an outcome) and comes back, attempt 3;
    // then fails on its last attempt into the DLQ with the reason.
    drop(jb);
    let again = w.pull(1, ACK_WAIT * 4).await.expect("pull");
    assert_eq!(again.len(), 1, "redelivered after the lease");
    assert_eq!(again[0].id, b);
    assert_eq!(again[0].attempt, 3);
    let jb = again.into_iter().next().expect("job b");
    jb.fail("still full", Retry::Yes).await.expect("fail");
    let dead = q.dead_letters(0, 10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].original_msg_id.as_deref(), Some(b.as_str()));
    assert!(
        dead[0].reason.contains("still full") && dead[0].reason.contains("attempt 3 of 3"),
        "reason: {}",
        dead[0].reason
    );
    assert!(
        w.pull(1, Duration::from_millis(600))
            .await
            .expect("pull")
            .is_empty(),
        "a dead job is not retried"
    );

    // Cancel before the run: the job is removed, never handed out.
    let d = q.submit("resize", "d").await.expect("submit");
    q.cancel(&d).await.expect("cancel");
    q.cancel(&d).await.expect("cancel twice");
    assert!(
        w.pull(2, Duration::from_millis(300))
            .await
            .expect("pull")
            .is_empty(),
        "a cancelled job is not run"
    );
    // Cancel during the run: the next heartbeat says so.
    let e = q.submit("resize", "e").await.expect("submit");
    let je = w
        .pull(1, Duration::from_millis(300))
        .await
        .expect("pull")
        .into_iter()
        .next()
        .expect("job e");
    assert_eq!(je.id, e);
    q.cancel(&e).await.expect("cancel");
    assert_eq!(
        je.heartbeat(None).await.expect("heartbeat"),
        Heartbeat::Cancelled
    );
    drop(je);
    assert!(
        w.pull(1, ACK_WAIT * 3).await.expect("pull").is_empty(),
        "a job cancelled while running is gone"
    );
    assert_eq!(
        bus.stream_info(&config.job_stream())
            .await
            .expect("info")
            .state
            .messages,
        0,
        "nothing left in the queue"
    );

    let events = q.events(0, 100).await.expect("events");
    let of = |id: &str| -> Vec<JobEventKind> {
        events
            .iter()
            .filter(|e| e.id == id)
            .map(|e| e.event)
            .collect()
    };
    assert_eq!(of(&a), [JobEventKind::Completed]);
    assert_eq!(of(&b), [JobEventKind::Retrying, JobEventKind::Failed]);
    assert_eq!(of(&c), [JobEventKind::Progress, JobEventKind::Completed]);
    assert_eq!(of(&d), [JobEventKind::Cancelled]);
    assert_eq!(of(&e), [JobEventKind::Cancelled]);
    let p = events
        .iter()
        .find(|e| e.event == JobEventKind::Progress)
        .expect("progress event");
    assert_eq!(
        (p.done, p.total, p.note.as_deref()),
        (Some(1), Some(2), Some("half"))
    );
    delete_queue(bus, &config).await;
}

/// Competing workers share one queue: every job runs once, the load is
/// spread, and no worker runs more than its limit at a time.
pub async fn jobs_competing_workers<B: Backend + Clone + 'static>(bus: &B, ns: &str) {
    use crate::jobs::{JobQueue, JobQueueConfig};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut config = JobQueueConfig::new(format!("{ns}_jc"));
    config.lease = Duration::from_secs(30);
    for s in [
        config.job_stream(),
        config.control_stream(),
        config.event_stream(),
    ] {
        let _ = bus.delete_stream(&s).await;
    }
    let q = JobQueue::open(bus.clone(), config.clone())
        .await
        .expect("open queue");
    const N: usize = 60;
    const LIMIT: usize = 2;
    for i in 0..N {
        q.submit("work", format!("j{i}")).await.expect("submit");
    }
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let w = q.worker(LIMIT).expect("worker");
        tasks.push(tokio::spawn(async move {
            let running = Arc::new(AtomicUsize::new(0));
            let most = Arc::new(AtomicUsize::new(0));
            let mut handles = Vec::new();
            let mut idle = 0;
            while idle < 3 {
                // Blocks while both slots are taken by running jobs.
                let jobs = w
                    .pull(LIMIT, Duration::from_millis(300))
                    .await
                    .expect("pull");
                if jobs.is_empty() {
                    idle += 1;
                    continue;
                }
                idle = 0;
                for j in jobs {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let running = running.clone();
                    handles.push(tokio::spawn(async move {
                        // The "work": lets other tasks run meanwhile.
                        for _ in 0..3 {
                            tokio::task::yield_now().await;
                        }
                        let payload = String::from_utf8_lossy(&j.payload).into_owned();
                        running.fetch_sub(1, Ordering::SeqCst);
                        j.complete(None).await.expect("complete");
                        payload
                    }));
                }
            }
            let mut done = Vec::new();
            for h in handles {
                done.push(h.await.expect("job task"));
            }
            let most = most.load(Ordering::SeqCst);
            (done, most)
        }));
    }
    let mut all = Vec::new();
    let mut busy = 0;
    for t in tasks {
        let (done, most) = t.await.expect("worker");
        assert!(
            most <= LIMIT,
            "a worker ran {most} jobs at once (limit {LIMIT})"
        );
        if !done.is_empty() {
            busy += 1;
        }
        all.extend(done);
    }
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), N, "every job ran once");
    assert_eq!(unique.len(), N, "no job ran twice");
    assert!(busy >= 2, "the load was shared ({busy} workers ran jobs)");
    delete_queue(bus, &config).await;
}
