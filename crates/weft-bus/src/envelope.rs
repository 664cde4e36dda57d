//! The event envelope: CloudEvents 1.0 attribute names in the JSON event
//! format, with a strict, bounded parser.
//!
//! ```json
//! {"specversion":"1.0","id":"0190...","type":"weft.incident.opened",
//!  "source":"spiffe://mesh.example/node/a","subject":"link/b","time":"2025-01-01T00:00:00Z",
//!  "dataschema":"urn:weft:schema:weft.incident.opened:2","dataversion":2,
//!  "datacontenttype":"application/json","traceparent":"00-...-...-01","data":{...}}
//! ```
//!
//! Strict means: the input must be one JSON object within the size limit;
//! every attribute is known (no silent extension attributes), present once,
//! of the right JSON type and valid by its own rule; `id` is a canonical
//! UUIDv7, `source` a SPIFFE ID, `traceparent` a W3C trace context header.
//! The first rule broken is reported with the attribute that broke it.

use std::collections::HashSet;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;
use weft_crypto::spiffe::SpiffeId;

/// Default largest encoded envelope, in bytes (1 MiB).
pub const DEFAULT_MAX_ENVELOPE_BYTES: usize = 1 << 20;
/// The CloudEvents version this envelope follows.
pub const SPEC_VERSION: &str = "1.0";
/// The only data content type carried (data is JSON).
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Longest event type, in bytes.
pub const MAX_TYPE_LEN: usize = 128;
/// Longest `subject` attribute, in bytes.
pub const MAX_SUBJECT_ATTR_LEN: usize = 256;
/// Longest `dataschema` URI, in bytes.
pub const MAX_DATASCHEMA_LEN: usize = 512;

/// Why an envelope was refused. Each variant names the attribute and the
/// rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The encoded envelope is over the configured limit.
    #[error(
        "envelope is {size} bytes; the limit is {limit} (send large data by reference, or raise the limit)"
    )]
    TooLarge {
        /// Size of the input in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Not valid JSON.
    #[error("envelope is not valid JSON at line {line}, column {column}: {message}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the JSON parser found.
        message: String,
    },
    /// An attribute appears twice.
    #[error("attribute {0:?} appears more than once; each attribute must appear once")]
    Duplicate(String),
    /// An attribute that this envelope does not define.
    #[error(
        "unknown attribute {0:?}; allowed: specversion, id, type, source, subject, time, dataschema, dataversion, datacontenttype, traceparent, data"
    )]
    Unknown(String),
    /// A required attribute is missing.
    #[error("required attribute {0:?} is missing")]
    Missing(&'static str),
    /// An attribute has the wrong JSON type.
    #[error("attribute {attribute:?} must be {expected}")]
    WrongType {
        /// The attribute.
        attribute: &'static str,
        /// The JSON type it must have.
        expected: &'static str,
    },
    /// An attribute's value breaks its rule.
    #[error("attribute {attribute:?} is invalid: {reason}")]
    Invalid {
        /// The attribute.
        attribute: &'static str,
        /// The rule it broke, with the offending value.
        reason: String,
    },
}

fn invalid(attribute: &'static str, reason: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Invalid {
        attribute,
        reason: reason.into(),
    }
}

/// An event type, e.g. `weft.incident.opened`: lower-case ASCII letters,
/// digits, `-` and `_` in non-empty `.`-separated parts, at most
/// [`MAX_TYPE_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(String);

impl EventType {
    /// Validates an event type.
    pub fn new(input: &str) -> Result<Self, EnvelopeError> {
        if input.is_empty() {
            return Err(invalid(
                "type",
                "is empty; expected e.g. \"weft.incident.opened\"",
            ));
        }
        if input.len() > MAX_TYPE_LEN {
            return Err(invalid(
                "type",
                format!(
                    "is {} bytes; at most {MAX_TYPE_LEN} are allowed",
                    input.len()
                ),
            ));
        }
        for (i, part) in input.split('.').enumerate() {
            if part.is_empty() {
                return Err(invalid("type", format!("part {i} of {input:?} is empty")));
            }
            if let Some(c) = part
                .chars()
                .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
            {
                return Err(invalid(
                    "type",
                    format!("{input:?} contains {c:?}; allowed are a-z, 0-9, '-', '_' and '.'"),
                ));
            }
        }
        Ok(Self(input.to_owned()))
    }

    /// The type as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A W3C Trace Context `traceparent` header value
/// (`version-traceid-parentid-flags`, lower-case hex).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceParent(String);

impl TraceParent {
    /// Parses and validates a `traceparent` value.
    pub fn parse(input: &str) -> Result<Self, EnvelopeError> {
        const LEN: usize = 55;
        let reason = |r: &str| invalid("traceparent", format!("{input:?}: {r}"));
        if input.len() < LEN {
            return Err(reason(
                "too short; expected 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>",
            ));
        }
        if input.len() > 256 {
            return Err(reason("longer than 256 bytes"));
        }
        let b = input.as_bytes();
        let hex = |r: std::ops::Range<usize>| {
            b[r].iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
        };
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return Err(reason(
                "fields must be separated by '-' at offsets 2, 35 and 52",
            ));
        }
        if !hex(0..2) || !hex(3..35) || !hex(36..52) || !hex(53..55) {
            return Err(reason("fields must be lower-case hexadecimal"));
        }
        let version = &input[0..2];
        if version == "ff" {
            return Err(reason("version ff is forbidden"));
        }
        if version == "00" && input.len() != LEN {
            return Err(reason("version 00 must be exactly 55 characters"));
        }
        if input.len() > LEN && b[LEN] != b'-' {
            return Err(reason("a future version's extra fields must follow a '-'"));
        }
        if input[3..35].bytes().all(|c| c == b'0') {
            return Err(reason("trace id is all zeros"));
        }
        if input[36..52].bytes().all(|c| c == b'0') {
            return Err(reason("parent id is all zeros"));
        }
        Ok(Self(input.to_owned()))
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 32-hex-digit trace id.
    pub fn trace_id(&self) -> &str {
        &self.0[3..35]
    }

    /// The 16-hex-digit parent span id.
    pub fn parent_id(&self) -> &str {
        &self.0[36..52]
    }
}

/// A validated event envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Unique id, a UUIDv7 (time-ordered); also the bus dedup id.
    pub id: Uuid,
    /// The event type (`type`).
    pub event_type: EventType,
    /// Who produced the event.
    pub source: SpiffeId,
    /// What the event is about, within the source (`subject`, optional).
    pub subject: Option<String>,
    /// When the event happened (`time`, RFC 3339).
    pub time: OffsetDateTime,
    /// URI of the data's schema (`dataschema`, optional).
    pub dataschema: Option<String>,
    /// Version of the data's schema for this type (`dataversion`, ≥ 1).
    pub dataversion: u32,
    /// W3C trace context of the producer (`traceparent`, optional).
    pub traceparent: Option<TraceParent>,
    /// The payload (`data`), always JSON.
    pub data: Value,
}

impl Envelope {
    /// A new envelope with a fresh UUIDv7 id and the current time.
    pub fn new(event_type: EventType, source: SpiffeId, dataversion: u32, data: Value) -> Self {
        Self {
            id: Uuid::now_v7(),
            event_type,
            source,
            subject: None,
            time: OffsetDateTime::now_utc(),
            dataschema: None,
            dataversion,
            traceparent: None,
            data,
        }
    }

    /// Encodes to the CloudEvents JSON format; refused when the result is
    /// over `max_bytes` or an attribute was set to an invalid value.
    pub fn to_json(&self, max_bytes: usize) -> Result<Vec<u8>, EnvelopeError> {
        self.to_json_with_data(&self.data, max_bytes)
    }

    /// As [`Envelope::to_json`], with `data` encoded in place of the
    /// envelope's own `data`, straight from its `Serialize` form: large
    /// typed data is written without first being built as a JSON tree.
    pub fn to_json_with_data<D: serde::Serialize + ?Sized>(
        &self,
        data: &D,
        max_bytes: usize,
    ) -> Result<Vec<u8>, EnvelopeError> {
        self.check_attributes()?;
        let time = self
            .time
            .format(&Rfc3339)
            .map_err(|e| invalid("time", format!("cannot be written as RFC 3339: {e}")))?;
        // The attributes in name order (as a JSON object map would write
        // them); `data` is written from the envelope, not copied.
        #[derive(serde::Serialize)]
        struct Wire<'a, D: ?Sized> {
            data: &'a D,
            datacontenttype: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            dataschema: Option<&'a str>,
            dataversion: u32,
            id: String,
            source: &'a str,
            specversion: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            subject: Option<&'a str>,
            time: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            traceparent: Option<&'a str>,
            #[serde(rename = "type")]
            event_type: &'a str,
        }
        let wire = Wire {
            data,
            datacontenttype: CONTENT_TYPE_JSON,
            dataschema: self.dataschema.as_deref(),
            dataversion: self.dataversion,
            id: self.id.hyphenated().to_string(),
            source: self.source.as_str(),
            specversion: SPEC_VERSION,
            subject: self.subject.as_deref(),
            time,
            traceparent: self.traceparent.as_ref().map(TraceParent::as_str),
            event_type: self.event_type.as_str(),
        };
        let bytes = serde_json::to_vec(&wire).map_err(|e| EnvelopeError::Json {
            line: 0,
            column: 0,
            message: e.to_string(),
        })?;
        if bytes.len() > max_bytes {
            return Err(EnvelopeError::TooLarge {
                size: bytes.len(),
                limit: max_bytes,
            });
        }
        Ok(bytes)
    }

    /// Checks the attributes a producer may have set by hand.
    fn check_attributes(&self) -> Result<(), EnvelopeError> {
        check_id(&self.id)?;
        if let Some(s) = &self.subject {
            check_subject_attr(s)?;
        }
        if let Some(s) = &self.dataschema {
            check_dataschema(s)?;
        }
        if self.dataversion == 0 {
            return Err(invalid("dataversion", "is 0; versions start at 1"));
        }
        Ok(())
    }

    /// Parses an encoded envelope, refusing anything over `max_bytes` or not
    /// following the rules above.
    pub fn parse(input: &[u8], max_bytes: usize) -> Result<Self, EnvelopeError> {
        if input.len() > max_bytes {
            return Err(EnvelopeError::TooLarge {
                size: input.len(),
                limit: max_bytes,
            });
        }
        let StrictObject(attrs) =
            serde_json::from_slice::<StrictObject>(input).map_err(|e| match e.classify() {
                serde_json::error::Category::Data => {
                    // Our own refusals (duplicate, not an object) come back as data errors.
                    let msg = e.to_string();
                    if let Some(name) = msg.strip_prefix("duplicate attribute ") {
                        let name = name.split(" at line").next().unwrap_or(name);
                        EnvelopeError::Duplicate(name.trim_matches('"').to_owned())
                    } else {
                        EnvelopeError::Json {
                            line: e.line(),
                            column: e.column(),
                            message: "the envelope must be a JSON object".into(),
                        }
                    }
                }
                _ => EnvelopeError::Json {
                    line: e.line(),
                    column: e.column(),
                    message: e.to_string(),
                },
            })?;
        let mut f = Fields::default();
        for (name, value) in attrs {
            let slot = match name.as_str() {
                "specversion" => &mut f.specversion,
                "id" => &mut f.id,
                "type" => &mut f.ty,
                "source" => &mut f.source,
                "subject" => &mut f.subject,
                "time" => &mut f.time,
                "dataschema" => &mut f.dataschema,
                "dataversion" => &mut f.dataversion,
                "datacontenttype" => &mut f.datacontenttype,
                "traceparent" => &mut f.traceparent,
                "data" => &mut f.data,
                _ => return Err(EnvelopeError::Unknown(name)),
            };
            *slot = Some(value);
        }
        let specversion = string(f.specversion, "specversion")?;
        if specversion != SPEC_VERSION {
            return Err(invalid(
                "specversion",
                format!("is {specversion:?}; only \"1.0\" is accepted"),
            ));
        }
        let id_str = string(f.id, "id")?;
        let id = Uuid::try_parse(&id_str)
            .map_err(|e| invalid("id", format!("{id_str:?} is not a UUID: {e}")))?;
        if id.hyphenated().to_string() != id_str {
            return Err(invalid(
                "id",
                format!("{id_str:?} must be in canonical lower-case hyphenated form"),
            ));
        }
        check_id(&id)?;
        let event_type = EventType::new(&string(f.ty, "type")?)?;
        let source_str = string(f.source, "source")?;
        let source = SpiffeId::parse(&source_str)
            .map_err(|e| invalid("source", format!("{source_str:?} is not a SPIFFE ID: {e}")))?;
        let subject = opt_string(f.subject, "subject")?;
        if let Some(s) = &subject {
            check_subject_attr(s)?;
        }
        let time_str = string(f.time, "time")?;
        if time_str.len() > 64 {
            return Err(invalid("time", "is longer than 64 bytes"));
        }
        let time = OffsetDateTime::parse(&time_str, &Rfc3339)
            .map_err(|e| invalid("time", format!("{time_str:?} is not RFC 3339: {e}")))?;
        let dataschema = opt_string(f.dataschema, "dataschema")?;
        if let Some(s) = &dataschema {
            check_dataschema(s)?;
        }
        let dataversion = match f.dataversion {
            None => return Err(EnvelopeError::Missing("dataversion")),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if v >= 1 && v <= u64::from(u32::MAX) => v as u32,
                _ => {
                    return Err(invalid(
                        "dataversion",
                        format!("{n} is not an integer from 1 to {}", u32::MAX),
                    ));
                }
            },
            Some(_) => {
                return Err(EnvelopeError::WrongType {
                    attribute: "dataversion",
                    expected: "an integer",
                });
            }
        };
        if let Some(ct) = opt_string(f.datacontenttype, "datacontenttype")?
            && ct != CONTENT_TYPE_JSON
        {
            return Err(invalid(
                "datacontenttype",
                format!("is {ct:?}; only \"{CONTENT_TYPE_JSON}\" is carried"),
            ));
        }
        let traceparent = opt_string(f.traceparent, "traceparent")?
            .map(|t| TraceParent::parse(&t))
            .transpose()?;
        let data = f.data.ok_or(EnvelopeError::Missing("data"))?;
        Ok(Self {
            id,
            event_type,
            source,
            subject,
            time,
            dataschema,
            dataversion,
            traceparent,
            data,
        })
    }
}

fn check_id(id: &Uuid) -> Result<(), EnvelopeError> {
    if id.get_version_num() != 7 {
        return Err(invalid(
            "id",
            format!(
                "{id} is a version {} UUID; ids must be UUIDv7",
                id.get_version_num()
            ),
        ));
    }
    Ok(())
}

fn check_subject_attr(s: &str) -> Result<(), EnvelopeError> {
    if s.is_empty() || s.len() > MAX_SUBJECT_ATTR_LEN {
        return Err(invalid(
            "subject",
            format!("is {} bytes; expected 1 to {MAX_SUBJECT_ATTR_LEN}", s.len()),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid("subject", "contains a control character"));
    }
    Ok(())
}

fn check_dataschema(s: &str) -> Result<(), EnvelopeError> {
    if s.is_empty() || s.len() > MAX_DATASCHEMA_LEN {
        return Err(invalid(
            "dataschema",
            format!("is {} bytes; expected 1 to {MAX_DATASCHEMA_LEN}", s.len()),
        ));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "dataschema",
            format!("{s:?} has a character not allowed in a URI"),
        ));
    }
    let scheme_ok = s.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    if !scheme_ok {
        return Err(invalid(
            "dataschema",
            format!("{s:?} is not an absolute URI (expected scheme:...)"),
        ));
    }
    Ok(())
}

fn string(v: Option<Value>, attribute: &'static str) -> Result<String, EnvelopeError> {
    opt_string(v, attribute)?.ok_or(EnvelopeError::Missing(attribute))
}

fn opt_string(v: Option<Value>, attribute: &'static str) -> Result<Option<String>, EnvelopeError> {
    match v {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(EnvelopeError::WrongType {
            attribute,
            expected: "a string",
        }),
    }
}

#[derive(Default)]
struct Fields {
    specversion: Option<Value>,
    id: Option<Value>,
    ty: Option<Value>,
    source: Option<Value>,
    subject: Option<Value>,
    time: Option<Value>,
    dataschema: Option<Value>,
    dataversion: Option<Value>,
    datacontenttype: Option<Value>,
    traceparent: Option<Value>,
    data: Option<Value>,
}

/// A top-level JSON object whose keys must be unique.
struct StrictObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictObject, A::Error> {
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key.clone()) {
                        return Err(serde::de::Error::custom(format!(
                            "duplicate attribute {key:?}"
                        )));
                    }
                    let value = map.next_value::<Value>()?;
                    out.push((key, value));
                }
                Ok(StrictObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, json};

    fn sample() -> Envelope {
        let mut e = Envelope::new(
            EventType::new("weft.incident.opened").unwrap(),
            SpiffeId::parse("spiffe://mesh.example/node/a").unwrap(),
            2,
            json!({"link": "b", "loss": 0.25}),
        );
        e.subject = Some("link/b".into());
        e.dataschema = Some("urn:weft:schema:weft.incident.opened:2".into());
        e.traceparent = Some(
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap(),
        );
        e
    }

    fn with(mutate: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
        let bytes = sample().to_json(DEFAULT_MAX_ENVELOPE_BYTES).unwrap();
        let mut v: Map<String, Value> = serde_json::from_slice(&bytes).unwrap();
        mutate(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    fn parse(b: &[u8]) -> Result<Envelope, EnvelopeError> {
        Envelope::parse(b, DEFAULT_MAX_ENVELOPE_BYTES)
    }

    #[test]
    fn round_trip() {
        let e = sample();
        let bytes = e.to_json(DEFAULT_MAX_ENVELOPE_BYTES).unwrap();
        let back = parse(&bytes).unwrap();
        // RFC 3339 keeps nanoseconds, so the whole envelope survives.
        assert_eq!(back, e);
        assert_eq!(
            back.traceparent.unwrap().trace_id(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn each_rule_names_its_attribute() {
        let missing = parse(&with(|m| {
            m.remove("source");
        }));
        assert_eq!(missing, Err(EnvelopeError::Missing("source")));
        assert_eq!(
            parse(&with(|m| {
                m.insert("colour".into(), json!("red"));
            })),
            Err(EnvelopeError::Unknown("colour".into()))
        );
        assert!(matches!(
            parse(&with(|m| {
                m.insert("id".into(), json!("6ba7b810-9dad-11d1-80b4-00c04fd430c8"));
            })),
            Err(EnvelopeError::Invalid {
                attribute: "id",
                ..
            })
        ));
        assert!(matches!(
            parse(&with(|m| {
                m.insert("source".into(), json!("https://x"));
            })),
            Err(EnvelopeError::Invalid {
                attribute: "source",
                ..
            })
        ));
        assert!(matches!(
            parse(&with(|m| {
                m.insert("time".into(), json!("yesterday"));
            })),
            Err(EnvelopeError::Invalid {
                attribute: "time",
                ..
            })
        ));
        assert_eq!(
            parse(&with(|m| {
                m.insert("dataversion".into(), json!("2"));
            })),
            Err(EnvelopeError::WrongType {
                attribute: "dataversion",
                expected: "an integer"
            })
        );
        assert!(matches!(
            parse(&with(|m| {
                m.insert("dataversion".into(), json!(0));
            })),
            Err(EnvelopeError::Invalid {
                attribute: "dataversion",
                ..
            })
        ));
        assert!(matches!(
            parse(&with(|m| {
                m.insert("datacontenttype".into(), json!("text/plain"));
            })),
            Err(EnvelopeError::Invalid {
                attribute: "datacontenttype",
                ..
            })
        ));
        assert!(matches!(
            parse(&with(|m| {
                m.insert("specversion".into(), json!("0.3"));
            })),
            Err(EnvelopeError::Invalid {
                attribute: "specversion",
                ..
            })
        ));
        assert!(matches!(
            parse(&with(|m| {
                m.insert("type".into(), json!("Weft.Bad"));
            })),
            Err(EnvelopeError::Invalid {
                attribute: "type",
                ..
            })
        ));
        assert!(matches!(
            parse(&with(|m| {
                m.insert("dataschema".into(), json!("no scheme"));
            })),
            Err(EnvelopeError::Invalid {
                attribute: "dataschema",
                ..
            })
        ));
        assert!(
            parse(b"[1,2]")
                .unwrap_err()
                .to_string()
                .contains("JSON object")
        );
        assert!(matches!(
            parse(b"{\"id\":"),
            Err(EnvelopeError::Json { .. })
        ));
        // datacontenttype may be left out (it defaults to JSON).
        assert!(
            parse(&with(|m| {
                m.remove("datacontenttype");
            }))
            .is_ok()
        );
    }

    #[test]
    fn duplicate_attributes_are_refused() {
        let bytes = sample().to_json(DEFAULT_MAX_ENVELOPE_BYTES).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let dup = text.replacen("{", "{\"type\":\"weft.other\",", 1);
        assert_eq!(
            parse(dup.as_bytes()),
            Err(EnvelopeError::Duplicate("type".into()))
        );
    }

    #[test]
    fn size_limit_applies_both_ways() {
        let mut e = sample();
        e.data = json!({"blob": "x".repeat(2000)});
        assert!(matches!(
            e.to_json(1000),
            Err(EnvelopeError::TooLarge { limit: 1000, .. })
        ));
        let bytes = e.to_json(4000).unwrap();
        assert_eq!(
            Envelope::parse(&bytes, 1000),
            Err(EnvelopeError::TooLarge {
                size: bytes.len(),
                limit: 1000
            })
        );
    }

    #[test]
    fn traceparent_rules() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(TraceParent::parse(ok).is_ok());
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xx",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473",
        ] {
            assert!(TraceParent::parse(bad).is_err(), "{bad}");
        }
        assert!(TraceParent::parse(&format!("01-{}-extra", &ok[3..])).is_ok());
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn mutated_envelopes_never_panic(cut in 0usize..400, byte in any::<u8>()) {
            let mut bytes = sample().to_json(DEFAULT_MAX_ENVELOPE_BYTES).unwrap();
            let at = cut % bytes.len();
            bytes[at] = byte;
            let _ = parse(&bytes);
            let _ = parse(&bytes[..at]);
        }
    }
}
