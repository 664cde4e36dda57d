//! Typed events over any backend: a producer's envelope is validated
//! against its schema before it is published; a consumer's message is
//! parsed, validated and upcast to the newest schema version, and a
//! message that cannot be read is terminated into the dead-letter stream
//! with the reason (never dropped silently). Refusals are counted by
//! reason.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::backend::{
    AckKind, Backend, BusError, Delivery, FetchRequest, Headers, OutgoingMessage, PublishAck,
    StoredMessage,
};
use crate::envelope::{Envelope, EnvelopeError};
use crate::schema::{SchemaError, SchemaRegistry};
use crate::subject::Subject;

/// Header carrying the event type (for routing and tools; the envelope
/// is authoritative).
pub const HEADER_TYPE: &str = "Ce-Type";
/// Header carrying the data version.
pub const HEADER_DATAVERSION: &str = "Ce-Dataversion";
/// Header carrying the W3C trace context.
pub const HEADER_TRACEPARENT: &str = "Traceparent";

/// Why an event was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EventError {
    /// The envelope is malformed or oversized.
    #[error("envelope refused: {0}")]
    Envelope(#[from] EnvelopeError),
    /// The data does not fit its schema, or the type is unknown.
    #[error("schema check failed: {0}")]
    Schema(#[from] SchemaError),
    /// The bus refused or failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl EventError {
    /// The refusal reason it is counted under.
    pub fn refusal_reason(&self) -> Option<&'static str> {
        match self {
            EventError::Envelope(EnvelopeError::TooLarge { .. }) => Some("too_large"),
            EventError::Envelope(_) => Some("malformed_envelope"),
            EventError::Schema(
                SchemaError::UnknownType { .. } | SchemaError::UnknownVersion { .. },
            ) => Some("unknown_type"),
            EventError::Schema(SchemaError::Invalid { .. }) => Some("schema_violation"),
            EventError::Schema(_) => Some("upcast_failed"),
            EventError::Bus(e) => e.refusal_reason(),
        }
    }
}

/// A backend plus the schema registry.
pub struct EventBus<B> {
    backend: B,
    registry: Arc<SchemaRegistry>,
    max_envelope_bytes: usize,
    refusals: Mutex<BTreeMap<String, u64>>,
}

impl<B: Backend> EventBus<B> {
    /// Wraps `backend`; envelopes over `max_envelope_bytes` are refused.
    pub fn new(backend: B, registry: Arc<SchemaRegistry>, max_envelope_bytes: usize) -> Self {
        Self {
            backend,
            registry,
            max_envelope_bytes,
            refusals: Mutex::new(BTreeMap::new()),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Envelope and schema refusals so far, by reason (the backend counts
    /// its own).
    pub fn refusals(&self) -> BTreeMap<String, u64> {
        self.refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn count<T>(&self, r: Result<T, EventError>) -> Result<T, EventError> {
        if let Err(e) = &r
            && let Some(reason) = e.refusal_reason()
            && !matches!(e, EventError::Bus(_))
        {
            *self
                .refusals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(reason.to_owned())
                .or_default() += 1;
        }
        r
    }

    /// Validates the envelope's data against its schema and publishes it;
    /// the envelope id is the dedup id.
    pub async fn publish(
        &self,
        subject: Subject,
        envelope: &Envelope,
    ) -> Result<PublishAck, EventError> {
        let prepared = self.count(self.prepare(subject, envelope));
        Ok(self.backend.publish(prepared?).await?)
    }

    /// Publishes `envelope` with `data` in place of the envelope's own
    /// `data` (left unused), encoded straight from `data`'s `Serialize`
    /// form rather than from a JSON tree: for a producer of large, typed
    /// data, where building, checking and dropping that tree would cost
    /// more than the rest of its work together.
    ///
    /// The data is **not** checked against its schema here, only that
    /// its type and version are registered: the producer vouches for the
    /// shape by its types, and its tests check their encoding against the
    /// schema. Consumers still check every event they read
    /// ([`EventBus::open`]).
    pub async fn publish_typed<D: serde::Serialize + ?Sized>(
        &self,
        subject: Subject,
        envelope: &Envelope,
        data: &D,
    ) -> Result<PublishAck, EventError> {
        let prepared = self.count(
            self.registry
                .require(&envelope.event_type, envelope.dataversion)
                .map_err(EventError::from)
                .and_then(|()| {
                    let payload = envelope.to_json_with_data(data, self.max_envelope_bytes)?;
                    Self::message(subject, envelope, payload)
                }),
        );
        Ok(self.backend.publish(prepared?).await?)
    }

    fn prepare(
        &self,
        subject: Subject,
        envelope: &Envelope,
    ) -> Result<OutgoingMessage, EventError> {
        self.registry.check(envelope)?;
        let payload = envelope.to_json(self.max_envelope_bytes)?;
        Self::message(subject, envelope, payload)
    }

    /// The message carrying an encoded envelope.
    fn message(
        subject: Subject,
        envelope: &Envelope,
        payload: Vec<u8>,
    ) -> Result<OutgoingMessage, EventError> {
        let mut headers = Headers::new();
        headers.append(HEADER_TYPE, envelope.event_type.as_str())?;
        headers.append(HEADER_DATAVERSION, &envelope.dataversion.to_string())?;
        if let Some(t) = &envelope.traceparent {
            headers.append(HEADER_TRACEPARENT, t.as_str())?;
        }
        Ok(OutgoingMessage {
            subject,
            headers,
            msg_id: Some(envelope.id.hyphenated().to_string()),
            payload: payload.into(),
        })
    }

    /// Parses, validates and upcasts a stored message.
    pub fn open(&self, message: &StoredMessage) -> Result<Envelope, EventError> {
        self.count(
            Envelope::parse(&message.payload, self.max_envelope_bytes)
                .map_err(EventError::from)
                .and_then(|e| Ok(self.registry.upcast(e)?)),
        )
    }

    /// Fetches deliveries and opens each; a message that cannot be opened
    /// is terminated with the reason, which moves it to the dead-letter
    /// stream, and is not returned.
    pub async fn fetch(
        &self,
        stream: &str,
        consumer: &str,
        request: FetchRequest,
    ) -> Result<Vec<(Delivery, Envelope)>, EventError> {
        let mut out = Vec::new();
        for d in self.backend.fetch(stream, consumer, request).await? {
            match self.open(&d.message) {
                Ok(e) => out.push((d, e)),
                Err(e) => {
                    tracing::warn!(stream, consumer, seq = d.message.sequence, error = %e,
                        "unreadable event moved to the dead-letter stream");
                    self.backend
                        .ack(&d.ack_token, AckKind::Term(Some(e.to_string())))
                        .await?;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{ConsumerConfig, StreamConfig};
    use crate::embedded::{EmbeddedBus, EmbeddedConfig};
    use crate::envelope::{DEFAULT_MAX_ENVELOPE_BYTES, EventType};
    use crate::subject::SubjectFilter;
    use serde_json::{Value, json};
    use std::time::Duration;
    use weft_crypto::spiffe::SpiffeId;

    fn ty() -> EventType {
        EventType::new("weft.incident.opened").unwrap()
    }

    async fn setup() -> EventBus<EmbeddedBus> {
        let mut reg = SchemaRegistry::new();
        reg.register(&ty(), 1, json!({"type": "object", "required": ["node"], "properties": {"node": {"type": "string"}}}))
            .unwrap();
        reg.register(
            &ty(),
            2,
            json!({"type": "object", "required": ["nodes"], "properties": {"nodes": {"type": "array", "items": {"type": "string"}}}}),
        )
        .unwrap();
        reg.register_upcaster(
            &ty(),
            1,
            Box::new(|v: Value| {
                let node = v.get("node").cloned().ok_or("node missing")?;
                Ok(json!({"nodes": [node]}))
            }),
        )
        .unwrap();
        let bus = EmbeddedBus::memory(EmbeddedConfig::default()).unwrap();
        bus.create_stream(StreamConfig::new(
            "inc",
            vec![SubjectFilter::new("inc.>").unwrap()],
        ))
        .await
        .unwrap();
        bus.create_consumer("inc", ConsumerConfig::new("c"))
            .await
            .unwrap();
        EventBus::new(bus, Arc::new(reg), DEFAULT_MAX_ENVELOPE_BYTES)
    }

    fn env(version: u32, data: Value) -> Envelope {
        Envelope::new(
            ty(),
            SpiffeId::parse("spiffe://mesh.example/node/a").unwrap(),
            version,
            data,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn producers_validate_consumers_upcast_and_dead_letter() {
        let eb = setup().await;
        let subject = Subject::new("inc.opened").unwrap();
        // A producer with bad data is refused before anything is stored.
        let err = eb
            .publish(subject.clone(), &env(2, json!({"nodes": "a"})))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("at /nodes: rule \"type\""),
            "{err}"
        );
        // Old-version data is accepted and upcast on the way out.
        let old = env(1, json!({"node": "a"}));
        let ack = eb.publish(subject.clone(), &old).await.unwrap();
        // Republishing the same envelope is a duplicate (its id is the dedup id).
        assert!(eb.publish(subject.clone(), &old).await.unwrap().duplicate);
        // A message that is no envelope at all, published past the typed layer.
        eb.backend()
            .publish(OutgoingMessage::new(
                subject.clone(),
                "{\"not\": \"an envelope\"}",
            ))
            .await
            .unwrap();
        let got = eb
            .fetch("inc", "c", FetchRequest::new(10, Duration::from_millis(10)))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.message.sequence, ack.sequence);
        assert_eq!(got[0].1.dataversion, 2);
        assert_eq!(got[0].1.data, json!({"nodes": ["a"]}));
        assert_eq!(got[0].1.id, old.id);
        assert_eq!(
            got[0].0.message.headers.get(HEADER_TYPE),
            Some("weft.incident.opened")
        );
        let dls = eb.backend().dlq_list("inc", 0, 10).await.unwrap();
        assert_eq!(dls.len(), 1);
        assert!(
            dls[0].reason.contains("unknown attribute \"not\""),
            "{}",
            dls[0].reason
        );
        let r = eb.refusals();
        assert_eq!(r.get("schema_violation"), Some(&1));
        assert_eq!(r.get("malformed_envelope"), Some(&1));
    }
}
