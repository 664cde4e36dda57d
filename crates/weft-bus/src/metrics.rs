//! Prometheus metrics of the bus, in the text exposition format
//! (OpenMetrics, which Prometheus reads), made with `prometheus-client`.
//!
//! [`MeteredBus`] wraps any [`Backend`]: it times every publish into a
//! histogram and remembers the consumers it created or fetched from, so
//! [`MeteredBus::encode_text`] can report their lag. Counters are the
//! backend's own ([`Backend::counters`]), read at each scrape:
//!
//! | metric | labels |
//! |---|---|
//! | `weft_bus_published_messages_total` | `stream` |
//! | `weft_bus_duplicate_messages_total` | `stream` |
//! | `weft_bus_delivered_messages_total` | `stream` |
//! | `weft_bus_redelivered_messages_total` | `stream` |
//! | `weft_bus_acked_messages_total` | `stream` |
//! | `weft_bus_naked_messages_total` | `stream` |
//! | `weft_bus_terminated_messages_total` | `stream` |
//! | `weft_bus_dead_lettered_messages_total` | `stream` |
//! | `weft_bus_refused_messages_total` | `reason` (`too_large`, `malformed_envelope`, `schema_violation`, ...) |
//! | `weft_bus_consumer_lag_messages` | `stream`, `consumer`: matching messages not yet delivered |
//! | `weft_bus_consumer_ack_pending_messages` | `stream`, `consumer` |
//! | `weft_bus_publish_latency_seconds` | histogram of successful publishes |

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::backend::{
    AckKind, AckToken, Backend, BusCounters, BusError, ConsumerConfig, ConsumerInfo, DeadLetter,
    Delivery, FetchRequest, OutgoingMessage, PublishAck, StoredMessage, StreamConfig, StreamInfo,
};

type Labels = Vec<(String, String)>;
/// One per-stream counter: name, help, how to read it.
type StreamMetric = (
    &'static str,
    &'static str,
    fn(&crate::backend::StreamCounters) -> u64,
);

/// A backend whose publishes are timed and whose consumers are watched
/// for lag. It implements [`Backend`] by delegating. Cheap to clone.
#[derive(Clone)]
pub struct MeteredBus<B> {
    inner: B,
    publish_latency: Histogram,
    consumers: Arc<Mutex<BTreeSet<(String, String)>>>,
}

impl<B> std::fmt::Debug for MeteredBus<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredBus").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<B: Backend> MeteredBus<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            // 10 µs to about 10 s.
            publish_latency: Histogram::new(exponential_buckets(1e-5, 2.0, 21)),
            consumers: Arc::new(Mutex::new(BTreeSet::new())),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Reports this consumer's lag from now on (consumers created or
    /// fetched from through this wrapper are watched already).
    pub fn watch_consumer(&self, stream: &str, consumer: &str) {
        lock(&self.consumers).insert((stream.to_owned(), consumer.to_owned()));
    }

    /// Every metric in the text format. `extra_refusals` are added to the
    /// backend's refusals (e.g. [`crate::events::EventBus::refusals`]:
    /// malformed envelopes and schema violations). A watched consumer that
    /// no longer exists is forgotten.
    pub async fn encode_text(
        &self,
        extra_refusals: &BTreeMap<String, u64>,
    ) -> Result<String, BusError> {
        let watched: Vec<(String, String)> = lock(&self.consumers).iter().cloned().collect();
        let mut lags = Vec::with_capacity(watched.len());
        for (stream, consumer) in watched {
            match self.inner.consumer_info(&stream, &consumer).await {
                Ok(info) => lags.push(info),
                Err(BusError::ConsumerNotFound { .. } | BusError::StreamNotFound { .. }) => {
                    lock(&self.consumers).remove(&(stream, consumer));
                }
                Err(e) => return Err(e),
            }
        }
        let mut counters = self.inner.counters();
        for (reason, n) in extra_refusals {
            *counters.refusals.entry(reason.clone()).or_default() += n;
        }
        encode_snapshot(&counters, &lags, Some(&self.publish_latency))
    }
}

/// Encodes a counter snapshot, consumer infos and an optional publish
/// latency histogram in the text format.
pub fn encode_snapshot(
    counters: &BusCounters,
    consumers: &[ConsumerInfo],
    publish_latency: Option<&Histogram>,
) -> Result<String, BusError> {
    let mut registry = Registry::with_prefix("weft_bus");
    let per_stream: [StreamMetric; 8] = [
        ("published_messages", "Messages stored", |c| c.published),
        (
            "duplicate_messages",
            "Publishes answered as duplicates",
            |c| c.duplicates,
        ),
        ("delivered_messages", "Deliveries, first and later", |c| {
            c.delivered
        }),
        ("redelivered_messages", "Deliveries after the first", |c| {
            c.redelivered
        }),
        ("acked_messages", "Acknowledgements", |c| c.acked),
        ("naked_messages", "Negative acknowledgements", |c| c.naked),
        ("terminated_messages", "Terminations", |c| c.terminated),
        (
            "dead_lettered_messages",
            "Messages moved to a dead-letter stream",
            |c| c.dead_lettered,
        ),
    ];
    for (name, help, get) in per_stream {
        let family = Family::<Labels, Counter>::default();
        for (stream, c) in &counters.streams {
            family
                .get_or_create(&vec![("stream".to_owned(), stream.clone())])
                .inc_by(get(c));
        }
        registry.register(name, help, family);
    }
    let refused = Family::<Labels, Counter>::default();
    for (reason, n) in &counters.refusals {
        refused
            .get_or_create(&vec![("reason".to_owned(), reason.clone())])
            .inc_by(*n);
    }
    registry.register(
        "refused_messages",
        "Inputs refused (malformed, too large, schema violation, ...) by reason",
        refused,
    );
    let lag = Family::<Labels, Gauge>::default();
    let pending = Family::<Labels, Gauge>::default();
    for info in consumers {
        let labels = vec![
            ("stream".to_owned(), info.stream.clone()),
            ("consumer".to_owned(), info.config.durable_name.clone()),
        ];
        lag.get_or_create(&labels)
            .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
        pending
            .get_or_create(&labels)
            .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
    }
    registry.register(
        "consumer_lag_messages",
        "Messages matching a consumer not yet delivered to it",
        lag,
    );
    registry.register(
        "consumer_ack_pending_messages",
        "Deliveries awaiting acknowledgement",
        pending,
    );
    if let Some(h) = publish_latency {
        registry.register(
            "publish_latency_seconds",
            "Time from publish to durable acknowledgement",
            h.clone(),
        );
    }
    let mut out = String::new();
    encode(&mut out, &registry).map_err(|e| BusError::InvalidConfig {
        what: "metrics encoding",
        reason: e.to_string(),
    })?;
    Ok(out)
}

impl<B: Backend> Backend for MeteredBus<B> {
    async fn create_stream(&self, config: StreamConfig) -> Result<StreamInfo, BusError> {
        self.inner.create_stream(config).await
    }

    async fn delete_stream(&self, name: &str) -> Result<(), BusError> {
        lock(&self.consumers).retain(|(s, _)| s != name);
        self.inner.delete_stream(name).await
    }

    async fn stream_info(&self, name: &str) -> Result<StreamInfo, BusError> {
        self.inner.stream_info(name).await
    }

    async fn publish(&self, message: OutgoingMessage) -> Result<PublishAck, BusError> {
        let start = Instant::now();
        let ack = self.inner.publish(message).await?;
        self.publish_latency.observe(start.elapsed().as_secs_f64());
        Ok(ack)
    }

    async fn get_message(&self, stream: &str, sequence: u64) -> Result<StoredMessage, BusError> {
        self.inner.get_message(stream, sequence).await
    }

    async fn create_consumer(
        &self,
        stream: &str,
        config: ConsumerConfig,
    ) -> Result<ConsumerInfo, BusError> {
        let name = config.durable_name.clone();
        let info = self.inner.create_consumer(stream, config).await?;
        self.watch_consumer(stream, &name);
        Ok(info)
    }

    async fn consumer_info(&self, stream: &str, name: &str) -> Result<ConsumerInfo, BusError> {
        self.inner.consumer_info(stream, name).await
    }

    async fn delete_consumer(&self, stream: &str, name: &str) -> Result<(), BusError> {
        lock(&self.consumers).remove(&(stream.to_owned(), name.to_owned()));
        self.inner.delete_consumer(stream, name).await
    }

    async fn fetch(
        &self,
        stream: &str,
        consumer: &str,
        request: FetchRequest,
    ) -> Result<Vec<Delivery>, BusError> {
        let got = self.inner.fetch(stream, consumer, request).await?;
        self.watch_consumer(stream, consumer);
        Ok(got)
    }

    async fn ack(&self, token: &AckToken, kind: AckKind) -> Result<(), BusError> {
        self.inner.ack(token, kind).await
    }

    async fn dlq_list(
        &self,
        stream: &str,
        from_dlq_sequence: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        self.inner.dlq_list(stream, from_dlq_sequence, limit).await
    }

    async fn dlq_show(&self, stream: &str, dlq_sequence: u64) -> Result<DeadLetter, BusError> {
        self.inner.dlq_show(stream, dlq_sequence).await
    }

    async fn dlq_replay(&self, stream: &str, dlq_sequence: u64) -> Result<PublishAck, BusError> {
        self.inner.dlq_replay(stream, dlq_sequence).await
    }

    fn counters(&self) -> BusCounters {
        self.inner.counters()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::embedded::{EmbeddedBus, EmbeddedConfig};
    use crate::subject::{Subject, SubjectFilter};
    use std::time::Duration;

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    #[tokio::test]
    async fn counters_move() {
        let bus = MeteredBus::new(EmbeddedBus::memory(EmbeddedConfig::default()).unwrap());
        bus.create_stream(StreamConfig::new(
            "m",
            vec![SubjectFilter::new("m.>").unwrap()],
        ))
        .await
        .unwrap();
        bus.create_consumer("m", ConsumerConfig::new("c"))
            .await
            .unwrap();
        let before = bus.encode_text(&BTreeMap::new()).await.unwrap();
        assert_eq!(
            value(
                &before,
                "weft_bus_consumer_lag_messages{stream=\"m\",consumer=\"c\"}"
            ),
            0.0
        );
        for i in 0..3 {
            bus.publish(OutgoingMessage::new(
                Subject::new("m.x").unwrap(),
                format!("{i}"),
            ))
            .await
            .unwrap();
        }
        let big = "x".repeat(2 << 20);
        assert!(
            bus.publish(OutgoingMessage::new(Subject::new("m.x").unwrap(), big))
                .await
                .is_err()
        );
        let text = bus.encode_text(&BTreeMap::new()).await.unwrap();
        assert_eq!(
            value(&text, "weft_bus_published_messages_total{stream=\"m\"}"),
            3.0
        );
        assert_eq!(
            value(
                &text,
                "weft_bus_consumer_lag_messages{stream=\"m\",consumer=\"c\"}"
            ),
            3.0
        );
        assert_eq!(value(&text, "weft_bus_publish_latency_seconds_count"), 3.0);
        assert_eq!(
            value(
                &text,
                "weft_bus_refused_messages_total{reason=\"too_large\"}"
            ),
            1.0
        );
        let d = bus
            .fetch("m", "c", FetchRequest::new(2, Duration::ZERO))
            .await
            .unwrap();
        bus.ack(&d[0].ack_token, AckKind::Ack).await.unwrap();
        let mut extra = BTreeMap::new();
        extra.insert("schema_violation".to_owned(), 2);
        let text = bus.encode_text(&extra).await.unwrap();
        assert_eq!(
            value(&text, "weft_bus_delivered_messages_total{stream=\"m\"}"),
            2.0
        );
        assert_eq!(
            value(&text, "weft_bus_acked_messages_total{stream=\"m\"}"),
            1.0
        );
        assert_eq!(
            value(
                &text,
                "weft_bus_consumer_lag_messages{stream=\"m\",consumer=\"c\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                "weft_bus_consumer_ack_pending_messages{stream=\"m\",consumer=\"c\"}"
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                "weft_bus_refused_messages_total{reason=\"schema_violation\"}"
            ),
            2.0
        );
        assert!(text.contains("# TYPE weft_bus_publish_latency_seconds histogram"));
    }
}
