//! What the `weft bus` commands do, over either backend: [`AnyBus`] is the
//! embedded log or NATS chosen at run time, and the functions here are the
//! operations the CLI prints.

use std::time::Duration;

use bytes::Bytes;

use crate::backend::{
    AckKind, AckToken, Backend, BusCounters, BusError, ConsumerConfig, ConsumerInfo, DeadLetter,
    Delivery, FetchRequest, Headers, OutgoingMessage, PublishAck, StoredMessage, StreamConfig,
    StreamInfo,
};
use crate::embedded::EmbeddedBus;
use crate::nats::NatsBus;
use crate::subject::Subject;

/// Either backend. Implements [`Backend`] by delegating.
#[derive(Debug, Clone)]
pub enum AnyBus {
    /// The embedded log.
    Embedded(EmbeddedBus),
    /// NATS JetStream.
    Nats(NatsBus),
}

macro_rules! delegate {
    ($self:ident, $b:ident => $call:expr) => {
        match $self {
            AnyBus::Embedded($b) => $call,
            AnyBus::Nats($b) => $call,
        }
    };
}

impl Backend for AnyBus {
    async fn create_stream(&self, config: StreamConfig) -> Result<StreamInfo, BusError> {
        delegate!(self, b => b.create_stream(config).await)
    }
    async fn delete_stream(&self, name: &str) -> Result<(), BusError> {
        delegate!(self, b => b.delete_stream(name).await)
    }
    async fn stream_info(&self, name: &str) -> Result<StreamInfo, BusError> {
        delegate!(self, b => b.stream_info(name).await)
    }
    async fn publish(&self, message: OutgoingMessage) -> Result<PublishAck, BusError> {
        delegate!(self, b => b.publish(message).await)
    }
    async fn get_message(&self, stream: &str, sequence: u64) -> Result<StoredMessage, BusError> {
        delegate!(self, b => b.get_message(stream, sequence).await)
    }
    async fn create_consumer(
        &self,
        stream: &str,
        config: ConsumerConfig,
    ) -> Result<ConsumerInfo, BusError> {
        delegate!(self, b => b.create_consumer(stream, config).await)
    }
    async fn consumer_info(&self, stream: &str, name: &str) -> Result<ConsumerInfo, BusError> {
        delegate!(self, b => b.consumer_info(stream, name).await)
    }
    async fn delete_consumer(&self, stream: &str, name: &str) -> Result<(), BusError> {
        delegate!(self, b => b.delete_consumer(stream, name).await)
    }
    async fn fetch(
        &self,
        stream: &str,
        consumer: &str,
        request: FetchRequest,
    ) -> Result<Vec<Delivery>, BusError> {
        delegate!(self, b => b.fetch(stream, consumer, request).await)
    }
    async fn ack(&self, token: &AckToken, kind: AckKind) -> Result<(), BusError> {
        delegate!(self, b => b.ack(token, kind).await)
    }
    async fn dlq_list(
        &self,
        stream: &str,
        from_dlq_sequence: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        delegate!(self, b => b.dlq_list(stream, from_dlq_sequence, limit).await)
    }
    async fn dlq_show(&self, stream: &str, dlq_sequence: u64) -> Result<DeadLetter, BusError> {
        delegate!(self, b => b.dlq_show(stream, dlq_sequence).await)
    }
    async fn dlq_replay(&self, stream: &str, dlq_sequence: u64) -> Result<PublishAck, BusError> {
        delegate!(self, b => b.dlq_replay(stream, dlq_sequence).await)
    }
    fn counters(&self) -> BusCounters {
        delegate!(self, b => b.counters())
    }
}

impl AnyBus {
    /// Every stream with its state, dead-letter streams included, by name.
    pub async fn streams(&self) -> Result<Vec<StreamInfo>, BusError> {
        let names = match self {
            AnyBus::Embedded(b) => b.stream_names(),
            AnyBus::Nats(b) => {
                let mut n = b.stream_names().await?;
                n.sort();
                n
            }
        };
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            match self.stream_info(&n).await {
                Ok(i) => out.push(i),
                // Deleted meanwhile.
                Err(BusError::StreamNotFound { .. }) => {}
                // A NATS stream not made by weft is skipped, not fatal.
                Err(BusError::InvalidConfig { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Flushes and stops the embedded writers (nothing to do on NATS).
    pub async fn close(&self) {
        if let AnyBus::Embedded(b) = self {
            b.close().await;
        }
    }
}

/// Publishes `payload` to `subject` with optional id and `name: value`
/// headers.
pub async fn publish<B: Backend>(
    bus: &B,
    subject: &str,
    payload: Bytes,
    msg_id: Option<&str>,
    headers: &[(String, String)],
) -> Result<PublishAck, BusError> {
    let mut h = Headers::new();
    for (n, v) in headers {
        h.append(n, v)?;
    }
    let mut m = OutgoingMessage::new(Subject::new(subject)?, payload).with_headers(h);
    if let Some(id) = msg_id {
        m = m.with_msg_id(id);
    }
    bus.publish(m).await
}

/// What `weft bus sub` does with each message it receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Acknowledge it.
    Ack,
    /// Leave it unacknowledged (redelivered after `ack_wait`).
    None,
    /// Nak it: redeliver at once.
    Nak,
    /// Terminate it into the dead-letter stream with this reason.
    Term(String),
}

/// Fetches up to `max` messages from a durable consumer (created with the
/// defaults if it does not exist) waiting up to `wait`, and settles each.
pub async fn subscribe<B: Backend>(
    bus: &B,
    stream: &str,
    consumer: &str,
    max: usize,
    wait: Duration,
    settle: &Settle,
) -> Result<Vec<Delivery>, BusError> {
    match bus.consumer_info(stream, consumer).await {
        Ok(_) => {}
        Err(BusError::ConsumerNotFound { .. }) => {
            bus.create_consumer(stream, ConsumerConfig::new(consumer))
                .await?;
        }
        Err(e) => return Err(e),
    }
    let got = bus
        .fetch(stream, consumer, FetchRequest::new(max, wait))
        .await?;
    for d in &got {
        let kind = match settle {
            Settle::Ack => AckKind::Ack,
            Settle::None => continue,
            Settle::Nak => AckKind::Nak(None),
            Settle::Term(r) => AckKind::Term(Some(r.clone())),
        };
        bus.ack(&d.ack_token, kind).await?;
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::embedded::EmbeddedConfig;
    use crate::subject::SubjectFilter;

    #[tokio::test]
    async fn publish_subscribe_and_dead_letters() {
        let bus = AnyBus::Embedded(EmbeddedBus::memory(EmbeddedConfig::default()).unwrap());
        bus.create_stream(StreamConfig::new(
            "s",
            vec![SubjectFilter::new("s.>").unwrap()],
        ))
        .await
        .unwrap();
        let h = vec![("X-A".to_owned(), "1".to_owned())];
        let ack = publish(&bus, "s.x", Bytes::from_static(b"hi"), Some("id1"), &h)
            .await
            .unwrap();
        assert_eq!((ack.stream.as_str(), ack.sequence), ("s", 1));
        assert!(
            publish(
                &bus,
                "s.x",
                Bytes::new(),
                None,
                &[("Nats-X".into(), "1".into())]
            )
            .await
            .is_err()
        );
        let names: Vec<String> = bus
            .streams()
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.config.name)
            .collect();
        assert_eq!(names, ["s", "s_DLQ"]);
        let got = subscribe(
            &bus,
            "s",
            "c",
            10,
            Duration::ZERO,
            &Settle::Term("bad".into()),
        )
        .await
        .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].message.headers.get("X-A"), Some("1"));
        let dl = bus.dlq_list("s", 0, 10).await.unwrap();
        assert_eq!(dl.len(), 1);
        assert!(dl[0].reason.contains("bad"));
    }
}
