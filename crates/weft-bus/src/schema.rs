//! The schema registry: one JSON Schema per (event type, version), checked
//! by producers before publishing and by consumers after receiving, plus
//! upcasters that turn version N data into version N+1.
//!
//! Schemas are self-contained: remote `$ref`s are never fetched (the
//! `jsonschema` crate is built without its HTTP and file resolvers), so a
//! schema that needs one is refused at registration. A registered
//! (type, version) is immutable: registering a different schema under the
//! same key is refused, registering the same one again is a no-op.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde_json::Value;

use crate::envelope::{Envelope, EventType};

/// Most violations reported for one instance.
pub const MAX_REPORTED_VIOLATIONS: usize = 8;
/// Longest violation message kept, in characters (messages quote the
/// offending value, which may be large).
pub const MAX_VIOLATION_MESSAGE: usize = 200;

/// One broken schema rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON Pointer to the offending part of the data (`""` is the root).
    pub instance_path: String,
    /// The JSON Schema keyword that failed (`type`, `required`, ...).
    pub keyword: String,
    /// JSON Pointer to that keyword within the schema.
    pub schema_path: String,
    /// What the validator said, shortened to [`MAX_VIOLATION_MESSAGE`].
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = if self.instance_path.is_empty() {
            "/"
        } else {
            &self.instance_path
        };
        write!(
            f,
            "at {at}: rule {:?} (schema {}): {}",
            self.keyword, self.schema_path, self.message
        )
    }
}

/// Why data or a schema was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// No schema is registered for the type.
    #[error("unknown event type {event_type:?}; register its schema first")]
    UnknownType {
        /// The type.
        event_type: String,
    },
    /// The type is known but not this version.
    #[error("event type {event_type:?} has no schema version {version}; known versions: {known:?}")]
    UnknownVersion {
        /// The type.
        event_type: String,
        /// The missing version.
        version: u32,
        /// The versions that are registered.
        known: Vec<u32>,
    },
    /// The data breaks the schema.
    #[error(
        "data of {event_type:?} version {version} violates its schema {}{}",
        .violations.first().map(ToString::to_string).unwrap_or_default(),
        if .violations.len() > 1 { format!(" (and {} more)", .violations.len() - 1) } else { String::new() }
    )]
    Invalid {
        /// The type.
        event_type: String,
        /// The version checked against.
        version: u32,
        /// Up to [`MAX_REPORTED_VIOLATIONS`] violations, in validator order.
        violations: Vec<Violation>,
    },
    /// The schema itself is not a valid (self-contained) JSON Schema.
    #[error("schema for {event_type:?} version {version} is not a valid JSON Schema: {reason}")]
    BadSchema {
        /// The type.
        event_type: String,
        /// The version.
        version: u32,
        /// What is wrong with it.
        reason: String,
    },
    /// A different schema is already registered for the key.
    #[error(
        "a different schema is already registered for {event_type:?} version {version}; schemas are immutable, register a new version"
    )]
    Conflict {
        /// The type.
        event_type: String,
        /// The version.
        version: u32,
    },
    /// No upcaster from this version.
    #[error(
        "no upcaster registered for {event_type:?} from version {from} to {}; register one to read old data", .from + 1
    )]
    NoUpcaster {
        /// The type.
        event_type: String,
        /// The version that cannot be upcast.
        from: u32,
    },
    /// An upcaster returned an error.
    #[error("upcasting {event_type:?} from version {from} failed: {reason}")]
    UpcastFailed {
        /// The type.
        event_type: String,
        /// The version being upcast.
        from: u32,
        /// What the upcaster said.
        reason: String,
    },
    /// Version 0 or `u32::MAX` (no successor for an upcaster).
    #[error("version {version} is out of range; versions run from 1 to {}", u32::MAX - 1)]
    BadVersion {
        /// The version.
        version: u32,
    },
}

/// A function turning data of version N into data of version N+1.
pub type Upcaster = Box<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

struct Registered {
    source: Value,
    validator: jsonschema::Validator,
}

#[derive(Default)]
struct TypeEntry {
    versions: BTreeMap<u32, Registered>,
    upcasters: BTreeMap<u32, Upcaster>,
}

/// Schemas and upcasters by event type.
#[derive(Default)]
pub struct SchemaRegistry {
    types: HashMap<EventType, TypeEntry>,
}

impl fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (t, e) in &self.types {
            m.entry(&t.as_str(), &e.versions.keys().collect::<Vec<_>>());
        }
        m.finish()
    }
}

impl SchemaRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the schema for (type, version).
    pub fn register(
        &mut self,
        event_type: &EventType,
        version: u32,
        schema: Value,
    ) -> Result<(), SchemaError> {
        if version == 0 || version == u32::MAX {
            return Err(SchemaError::BadVersion { version });
        }
        if let Some(existing) = self
            .types
            .get(event_type)
            .and_then(|t| t.versions.get(&version))
        {
            if existing.source == schema {
                return Ok(());
            }
            return Err(SchemaError::Conflict {
                event_type: event_type.to_string(),
                version,
            });
        }
        let validator = jsonschema::validator_for(&schema).map_err(|e| SchemaError::BadSchema {
            event_type: event_type.to_string(),
            version,
            reason: shorten(&e.to_string()),
        })?;
        self.types
            .entry(event_type.clone())
            .or_default()
            .versions
            .insert(
                version,
                Registered {
                    source: schema,
                    validator,
                },
            );
        Ok(())
    }

    /// Registers the upcaster from `from` to `from + 1`; both schemas must
    /// already be registered. Replaces an earlier upcaster for the same step.
    pub fn register_upcaster(
        &mut self,
        event_type: &EventType,
        from: u32,
        upcaster: Upcaster,
    ) -> Result<(), SchemaError> {
        if from == 0 || from >= u32::MAX - 1 {
            return Err(SchemaError::BadVersion { version: from });
        }
        self.entry_version(event_type, from)?;
        self.entry_version(event_type, from + 1)?;
        if let Some(t) = self.types.get_mut(event_type) {
            t.upcasters.insert(from, upcaster);
        }
        Ok(())
    }

    /// The newest registered version of a type.
    pub fn latest(&self, event_type: &EventType) -> Option<u32> {
        self.types
            .get(event_type)
            .and_then(|t| t.versions.keys().next_back().copied())
    }

    /// The registered schema for (type, version).
    pub fn schema(&self, event_type: &EventType, version: u32) -> Option<&Value> {
        self.types
            .get(event_type)
            .and_then(|t| t.versions.get(&version))
            .map(|r| &r.source)
    }

    fn entry_version(
        &self,
        event_type: &EventType,
        version: u32,
    ) -> Result<&Registered, SchemaError> {
        let t = self
            .types
            .get(event_type)
            .ok_or_else(|| SchemaError::UnknownType {
                event_type: event_type.to_string(),
            })?;
        t.versions
            .get(&version)
            .ok_or_else(|| SchemaError::UnknownVersion {
                event_type: event_type.to_string(),
                version,
                known: t.versions.keys().copied().collect(),
            })
    }

    /// Refused unless (type, version) is registered.
    pub fn require(&self, event_type: &EventType, version: u32) -> Result<(), SchemaError> {
        self.entry_version(event_type, version).map(drop)
    }

    /// Validates `data` against the schema of (type, version).
    pub fn validate(
        &self,
        event_type: &EventType,
        version: u32,
        data: &Value,
    ) -> Result<(), SchemaError> {
        let reg = self.entry_version(event_type, version)?;
        let violations: Vec<Violation> = reg
            .validator
            .iter_errors(data)
            .take(MAX_REPORTED_VIOLATIONS)
            .map(|e| Violation {
                instance_path: e.instance_path().to_string(),
                keyword: e.kind().keyword().to_owned(),
                schema_path: e.schema_path().to_string(),
                message: shorten(&e.to_string()),
            })
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(SchemaError::Invalid {
                event_type: event_type.to_string(),
                version,
                violations,
            })
        }
    }

    /// Validates an envelope's data against its (type, dataversion).
    pub fn check(&self, envelope: &Envelope) -> Result<(), SchemaError> {
        self.validate(&envelope.event_type, envelope.dataversion, &envelope.data)
    }

    /// Validates the envelope, then upcasts its data step by step to the
    /// newest registered version, validating the result of every step.
    pub fn upcast(&self, mut envelope: Envelope) -> Result<Envelope, SchemaError> {
        self.check(&envelope)?;
        let ty = envelope.event_type.clone();
        let latest = self.latest(&ty).unwrap_or(envelope.dataversion);
        while envelope.dataversion < latest {
            let from = envelope.dataversion;
            let up = self
                .types
                .get(&ty)
                .and_then(|t| t.upcasters.get(&from))
                .ok_or_else(|| SchemaError::NoUpcaster {
                    event_type: ty.to_string(),
                    from,
                })?;
            let data = std::mem::take(&mut envelope.data);
            envelope.data = up(data).map_err(|reason| SchemaError::UpcastFailed {
                event_type: ty.to_string(),
                from,
                reason: shorten(&reason),
            })?;
            envelope.dataversion = from + 1;
            self.check(&envelope)?;
        }
        Ok(envelope)
    }
}

fn shorten(s: &str) -> String {
    if s.chars().count() <= MAX_VIOLATION_MESSAGE {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(MAX_VIOLATION_MESSAGE).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use weft_crypto::spiffe::SpiffeId;

    fn ty() -> EventType {
        EventType::new("weft.link.loss").unwrap()
    }

    fn registry() -> SchemaRegistry {
        let mut r = SchemaRegistry::new();
        r.register(
            &ty(),
            1,
            json!({"type": "object", "required": ["link", "loss"],
                   "properties": {"link": {"type": "string"}, "loss": {"type": "number"}},
                   "additionalProperties": false}),
        )
        .unwrap();
        r.register(
            &ty(),
            2,
            json!({"type": "object", "required": ["link", "loss_ppm"],
                   "properties": {"link": {"type": "string"},
                                  "loss_ppm": {"type": "integer", "minimum": 0, "maximum": 1000000},
                                  "tags": {"type": "array", "items": {"type": "string"}}},
                   "additionalProperties": false}),
        )
        .unwrap();
        r
    }

    #[test]
    fn violation_names_path_and_rule() {
        let r = registry();
        let err = r
            .validate(
                &ty(),
                2,
                &json!({"link": "a", "loss_ppm": 5, "tags": ["x", 7]}),
            )
            .unwrap_err();
        let SchemaError::Invalid { violations, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(violations[0].instance_path, "/tags/1");
        assert_eq!(violations[0].keyword, "type");
        assert_eq!(violations[0].schema_path, "/properties/tags/items/type");
        assert!(
            err.to_string().contains("at /tags/1: rule \"type\""),
            "{err}"
        );

        let err = r.validate(&ty(), 2, &json!({"link": "a"})).unwrap_err();
        let SchemaError::Invalid { violations, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(violations[0].keyword, "required");
        assert_eq!(violations[0].instance_path, "");

        let err = r
            .validate(&ty(), 2, &json!({"link": "a", "loss_ppm": 2_000_000}))
            .unwrap_err();
        let SchemaError::Invalid { violations, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(
            (
                violations[0].instance_path.as_str(),
                violations[0].keyword.as_str()
            ),
            ("/loss_ppm", "maximum")
        );
    }

    #[test]
    fn unknown_type_and_version_are_refused() {
        let r = registry();
        let other = EventType::new("weft.nope").unwrap();
        assert_eq!(
            r.validate(&other, 1, &json!({})),
            Err(SchemaError::UnknownType {
                event_type: "weft.nope".into()
            })
        );
        assert_eq!(
            r.validate(&ty(), 3, &json!({})),
            Err(SchemaError::UnknownVersion {
                event_type: "weft.link.loss".into(),
                version: 3,
                known: vec![1, 2]
            })
        );
    }

    #[test]
    fn schemas_are_immutable_and_must_compile() {
        let mut r = registry();
        assert!(
            r.register(&ty(), 1, r.schema(&ty(), 1).unwrap().clone())
                .is_ok()
        );
        assert!(matches!(
            r.register(&ty(), 1, json!({"type": "string"})),
            Err(SchemaError::Conflict { .. })
        ));
        assert!(matches!(
            r.register(&ty(), 3, json!({"type": "no-such-type"})),
            Err(SchemaError::BadSchema { version: 3, .. })
        ));
        // Remote references are never fetched.
        assert!(matches!(
            r.register(&ty(), 4, json!({"$ref": "https://example.com/schema.json"})),
            Err(SchemaError::BadSchema { .. })
        ));
        assert_eq!(
            r.register(&ty(), 0, json!({})),
            Err(SchemaError::BadVersion { version: 0 })
        );
    }

    #[test]
    fn upcasting_runs_each_step_and_validates() {
        let mut r = registry();
        let src = SpiffeId::parse("spiffe://mesh.example/node/a").unwrap();
        let old = Envelope::new(ty(), src, 1, json!({"link": "b", "loss": 0.25}));
        assert_eq!(
            r.upcast(old.clone()),
            Err(SchemaError::NoUpcaster {
                event_type: "weft.link.loss".into(),
                from: 1
            })
        );
        r.register_upcaster(
            &ty(),
            1,
            Box::new(|mut v| {
                let loss = v
                    .get("loss")
                    .and_then(Value::as_f64)
                    .ok_or("loss is not a number")?;
                let obj = v.as_object_mut().ok_or("not an object")?;
                obj.remove("loss");
                obj.insert("loss_ppm".into(), json!((loss * 1e6).round() as u64));
                Ok(v)
            }),
        )
        .unwrap();
        let up = r.upcast(old).unwrap();
        assert_eq!(up.dataversion, 2);
        assert_eq!(up.data, json!({"link": "b", "loss_ppm": 250000}));

        // A buggy upcaster whose output breaks the next schema is caught.
        r.register_upcaster(&ty(), 1, Box::new(|_| Ok(json!({"link": 5}))))
            .unwrap();
        let old = Envelope::new(
            ty(),
            SpiffeId::parse("spiffe://mesh.example/a").unwrap(),
            1,
            json!({"link": "b", "loss": 0.5}),
        );
        assert!(matches!(
            r.upcast(old),
            Err(SchemaError::Invalid { version: 2, .. })
        ));
        assert!(matches!(
            r.register_upcaster(&ty(), 2, Box::new(Ok)),
            Err(SchemaError::UnknownVersion { version: 3, .. })
        ));
    }
}
