//! Prometheus metrics of the control plane (text exposition format, made
//! with `prometheus-client`):
//!
//! | metric | labels |
//! |---|---|
//! | `weft_control_requests_total` | `method`, `route` (the route template, or `unmatched`), `status` |
//! | `weft_control_request_duration_seconds` | histogram by `method`, `route` |
//! | `weft_control_tls_handshakes_total` | `group` (the key exchange negotiated), `certificate` (`ml-dsa-65` or `ecdsa-p256`) |
//! | `weft_control_classical_kex_handshakes_total` | `group`: handshakes that negotiated a classical group (only with `--allow-classical-kex`) |
//! | `weft_control_tls_handshake_failures_total` | |
//! | `weft_control_rate_limited_total` | `kind` (`identity`, `auth_failures`) |
//! | `weft_control_audit_failures_total` | `sink` (`store`, `bus`) |
//! | `weft_control_open_connections` | |

use std::borrow::Cow;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP method.
    pub method: Cow<'static, str>,
    /// Route template.
    pub route: Cow<'static, str>,
    /// Status code.
    pub status: u16,
}

/// Labels of a latency observation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// HTTP method.
    pub method: Cow<'static, str>,
    /// Route template.
    pub route: Cow<'static, str>,
}

/// Labels of a handshake.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// The key exchange group.
    pub group: String,
    /// The certificate presented.
    pub certificate: String,
}

/// A label with one value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabel {
    /// The key exchange group.
    pub group: String,
}

/// A kind label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind.
    pub kind: String,
}

/// A sink label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    /// Where the write failed.
    pub sink: String,
}

/// The control plane's metrics; cheap to clone.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    handshakes: Family<HandshakeLabels, Counter>,
    classical: Family<GroupLabel, Counter>,
    handshake_failures: Counter,
    rate_limited: Family<KindLabel, Counter>,
    audit_failures: Family<SinkLabel, Counter>,
    open_connections: Gauge,
    heartbeats_refused: Family<KindLabel, Counter>,
    heartbeats_dropped: Family<KindLabel, Counter>,
    heartbeats_written: Counter,
    heartbeat_queue: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "weft_control_requests",
            "HTTP requests answered, by method, route template and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 100 µs to about 26 s.
            Histogram::new(exponential_buckets(1e-4, 2.0, 19))
        });
        registry.register(
            "weft_control_request_duration_seconds",
            "Time from request to response, by method and route template",
            latency.clone(),
        );
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "weft_control_tls_handshakes",
            "TLS handshakes completed, by key exchange group and certificate presented",
            handshakes.clone(),
        );
        let classical = Family::<GroupLabel, Counter>::default();
        registry.register(
            "weft_control_classical_kex_handshakes",
            "TLS handshakes that negotiated a classical (not post-quantum) key exchange; only possible with --allow-classical-kex",
            classical.clone(),
        );
        let handshake_failures = Counter::default();
        registry.register(
            "weft_control_tls_handshake_failures",
            "TLS handshakes that failed or timed out",
            handshake_failures.clone(),
        );
        let rate_limited = Family::<KindLabel, Counter>::default();
        registry.register(
            "weft_control_rate_limited",
            "Requests refused with 429, by limiter",
            rate_limited.clone(),
        );
        let audit_failures = Family::<SinkLabel, Counter>::default();
        registry.register(
            "weft_control_audit_failures",
            "Audit records that could not be written, by sink",
            audit_failures.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "weft_control_open_connections",
            "TLS connections open now",
            open_connections.clone(),
        );
        let heartbeats_refused = Family::<KindLabel, Counter>::default();
        registry.register(
            "weft_control_heartbeats_refused",
            "Heartbeats refused with 503 before they were queued, by reason (queue_full, stopping)",
            heartbeats_refused.clone(),
        );
        let heartbeats_dropped = Family::<KindLabel, Counter>::default();
        registry.register(
            "weft_control_heartbeats_dropped",
            "Heartbeats accepted but not written, by reason (refused by the store, store_error after retries)",
            heartbeats_dropped.clone(),
        );
        let heartbeats_written = Counter::default();
        registry.register(
            "weft_control_heartbeats_written",
            "Heartbeats written to the store",
            heartbeats_written.clone(),
        );
        let heartbeat_queue = Gauge::default();
        registry.register(
            "weft_control_heartbeat_queue",
            "Heartbeats waiting for the store when the last batch was taken",
            heartbeat_queue.clone(),
        );
        Self(Arc::new(Inner {
            registry,
            heartbeats_refused,
            heartbeats_dropped,
            heartbeats_written,
            heartbeat_queue,
            requests,
            latency,
            handshakes,
            classical,
            handshake_failures,
            rate_limited,
            audit_failures,
            open_connections,
        }))
    }

    /// Counts a request and its latency. The labels borrow the route
    /// template and the method's name (known methods), so finding the
    /// series costs no allocation per request.
    pub fn request(&self, method: &str, route: &'static str, status: u16, seconds: f64) {
        let method = match method {
            "GET" => Cow::Borrowed("GET"),
            "POST" => Cow::Borrowed("POST"),
            "PUT" => Cow::Borrowed("PUT"),
            "DELETE" => Cow::Borrowed("DELETE"),
            "HEAD" => Cow::Borrowed("HEAD"),
            "OPTIONS" => Cow::Borrowed("OPTIONS"),
            "PATCH" => Cow::Borrowed("PATCH"),
            other => Cow::Owned(other.to_owned()),
        };
        self.0
            .requests
            .get_or_create(&RequestLabels {
                method: method.clone(),
                route: Cow::Borrowed(route),
                status,
            })
            .inc();
        self.0
            .latency
            .get_or_create(&RouteLabels {
                method,
                route: Cow::Borrowed(route),
            })
            .observe(seconds);
    }

    /// Counts a completed handshake.
    pub fn handshake(&self, group: &str, certificate: &str, classical: bool) {
        self.0
            .handshakes
            .get_or_create(&HandshakeLabels {
                group: group.to_owned(),
                certificate: certificate.to_owned(),
            })
            .inc();
        if classical {
            self.0
                .classical
                .get_or_create(&GroupLabel {
                    group: group.to_owned(),
                })
                .inc();
        }
    }

    /// Classical handshakes so far (all groups).
    pub fn classical_handshakes(&self) -> u64 {
        let mut total = 0;
        for group in ["X25519", "secp256r1", "secp384r1"] {
            total += self
                .0
                .classical
                .get_or_create(&GroupLabel {
                    group: group.to_owned(),
                })
                .get();
        }
        total
    }

    /// Counts a failed handshake.
    pub fn handshake_failed(&self) {
        self.0.handshake_failures.inc();
    }

    /// Counts a rate-limited request.
    pub fn rate_limited(&self, kind: &str) {
        self.0
            .rate_limited
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts a failed audit write.
    pub fn audit_failed(&self, sink: &str) {
        self.0
            .audit_failures
            .get_or_create(&SinkLabel {
                sink: sink.to_owned(),
            })
            .inc();
    }

    /// Counts a heartbeat refused before it was queued.
    pub fn heartbeat_refused(&self, reason: &str) {
        self.0
            .heartbeats_refused
            .get_or_create(&KindLabel {
                kind: reason.to_owned(),
            })
            .inc();
    }

    /// Heartbeats refused so far for `reason`.
    pub fn heartbeats_refused(&self, reason: &str) -> u64 {
        self.0
            .heartbeats_refused
            .get_or_create(&KindLabel {
                kind: reason.to_owned(),
            })
            .get()
    }

    /// Counts `n` accepted heartbeats that were not written.
    pub fn heartbeats_dropped(&self, reason: &str, n: u64) {
        self.0
            .heartbeats_dropped
            .get_or_create(&KindLabel {
                kind: reason.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts `n` heartbeats written.
    pub fn heartbeats_written(&self, n: u64) {
        self.0.heartbeats_written.inc_by(n);
    }

    /// Heartbeats written so far.
    pub fn heartbeats_written_total(&self) -> u64 {
        self.0.heartbeats_written.get()
    }

    /// Sets the queue length seen by the writer.
    pub fn heartbeat_queue_len(&self, n: usize) {
        self.0
            .heartbeat_queue
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// One more open connection.
    pub fn connection_opened(&self) {
        self.0.open_connections.inc();
    }

    /// One fewer open connection.
    pub fn connection_closed(&self) {
        self.0.open_connections.dec();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.0.registry).is_err() {
            out.clear();
            out.push_str("# encoding failed\n# EOF\n");
        }
        out
    }
}
