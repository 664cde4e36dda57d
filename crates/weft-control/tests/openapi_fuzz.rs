//! Property-based requests against the served OpenAPI document: for every
//! operation in `/openapi.json`, proptest generates path parameters,
//! query strings and bodies from the operation's schemas (valid-shaped,
//! with unknown fields, wrong types, arbitrary JSON and non-JSON bytes),
//! sends them over HTTPS as an anonymous caller, an admin, a bad token and
//! an enrolled node (mTLS), and checks that no answer is a 5xx. The case
//! count is bounded so it runs in seconds; the seed is fixed so a failure
//! reproduces, and the failing request is printed.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use common::{Db, Harness};
use http::Method;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Map, Value, json};
use weft_control::agent::{self, AgentPaths};
use weft_control::client::ControlClient;
use weft_crypto::tls::SvidCredentials;

/// Requests per operation and caller.
const CASES: usize = 6;
/// Deepest schema nesting followed.
const MAX_DEPTH: u32 = 5;

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.rsplit('/').next().unwrap_or_default();
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(if f.is_finite() { f } else { 0.5 })),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

fn text() -> BoxedStrategy<String> {
    prop_oneof![
        "[a-z0-9=:._/-]{0,24}",
        ".{0,64}",
        Just(String::new()),
        Just("default".to_owned()),
        Just("a".repeat(52)),
        Just("0190e0f0-0000-7000-8000-000000000000".to_owned()),
        Just("2030-01-01T00:00:00Z".to_owned()),
        Just("x".repeat(5000)),
    ]
    .boxed()
}

/// Values shaped like `schema` (mostly), sometimes of another type.
fn shaped(doc: &Value, schema: &Value, depth: u32) -> BoxedStrategy<Value> {
    let schema = resolve(doc, schema);
    if depth > MAX_DEPTH {
        return any_json();
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(options) = schema.get(key).and_then(Value::as_array) {
            let options: Vec<BoxedStrategy<Value>> =
                options.iter().map(|s| shaped(doc, s, depth + 1)).collect();
            if !options.is_empty() {
                return prop::strategy::Union::new(options).boxed();
            }
        }
    }
    if let Some(first) = schema
        .get("allOf")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        return shaped(doc, first, depth + 1);
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let values = values.clone();
        return prop_oneof![
            4 => prop::sample::select(values),
            1 => text().prop_map(Value::from),
        ]
        .boxed();
    }
    let types: Vec<String> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        _ if schema.get("properties").is_some() => vec!["object".into()],
        _ => return any_json(),
    };
    let mut options: Vec<BoxedStrategy<Value>> = Vec::new();
    for t in types {
        options.push(match t.as_str() {
            "null" => Just(Value::Null).boxed(),
            "boolean" => any::<bool>().prop_map(Value::from).boxed(),
            "integer" => prop_oneof![
                4 => (0i64..200).prop_map(Value::from),
                1 => any::<i64>().prop_map(Value::from),
                1 => Just(json!(u64::MAX)),
                1 => Just(json!(-1)),
            ]
            .boxed(),
            "number" => prop_oneof![
                (0.0f64..2.0).prop_map(Value::from),
                any::<f64>().prop_map(|f| json!(if f.is_finite() { f } else { -1.0 })),
            ]
            .boxed(),
            "string" => text().prop_map(Value::from).boxed(),
            "array" => {
                let item = schema.get("items").cloned().unwrap_or(json!({}));
                prop::collection::vec(shaped(doc, &item, depth + 1), 0..4)
                    .prop_map(Value::from)
                    .boxed()
            }
            "object" => object(doc, schema, depth),
            _ => any_json(),
        });
    }
    options.push(any_json());
    prop::strategy::Union::new_weighted(
        options
            .into_iter()
            .enumerate()
            .map(|(i, s)| (if i == 0 { 6 } else { 1 }, s))
            .collect(),
    )
    .boxed()
}

fn object(doc: &Value, schema: &Value, depth: u32) -> BoxedStrategy<Value> {
    let required: Vec<String> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut fields: Vec<BoxedStrategy<Option<(String, Value)>>> = Vec::new();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, sub) in props {
            let name = name.clone();
            let value = shaped(doc, sub, depth + 1);
            // A required field is left out now and then; an optional one
            // half the time.
            let weight_missing = if required.contains(&name) { 1 } else { 5 };
            fields.push(
                prop_oneof![
                    weight_missing => Just(None),
                    10 => value.prop_map(move |v| Some((name.clone(), v))),
                ]
                .boxed(),
            );
        }
    }
    fields.push(
        prop_oneof![
            8 => Just(None),
            1 => ("[a-z]{1,10}", any_json()).prop_map(Some),
        ]
        .boxed(),
    );
    fields
        .prop_map(|fs| {
            let mut m = Map::new();
            for (k, v) in fs.into_iter().flatten() {
                m.insert(k, v);
            }
            Value::Object(m)
        })
        .boxed()
}

/// A request body: shaped by the schema, arbitrary JSON, or not JSON.
fn body(doc: &Value, schema: Option<&Value>) -> BoxedStrategy<Option<Vec<u8>>> {
    let shaped = match schema {
        Some(s) => shaped(doc, s, 0),
        None => any_json(),
    };
    prop_oneof![
        8 => shaped.prop_map(|v| Some(serde_json::to_vec(&v).unwrap())),
        2 => any_json().prop_map(|v| Some(serde_json::to_vec(&v).unwrap())),
        1 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Some),
        1 => Just(None),
    ]
    .boxed()
}

fn percent(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A request: the path and query, and the body.
fn request(doc: &Value, path: &str, op: &Value) -> BoxedStrategy<(String, Option<Vec<u8>>)> {
    let params: Vec<Value> = op
        .get("parameters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut path_params: Vec<BoxedStrategy<(String, String)>> = Vec::new();
    let mut query_params: Vec<BoxedStrategy<Option<(String, String)>>> = Vec::new();
    for p in &params {
        let p = resolve(doc, p);
        let name = p["name"].as_str().unwrap_or_default().to_owned();
        let schema = p.get("schema").cloned().unwrap_or(json!({}));
        let value = shaped(doc, &schema, 1).prop_map(|v| scalar_text(&v));
        match p["in"].as_str() {
            Some("path") => path_params.push(value.prop_map(move |v| (name.clone(), v)).boxed()),
            Some("query") => query_params.push(
                prop_oneof![
                    1 => Just(None),
                    2 => value.prop_map(move |v| Some((name.clone(), v))),
                ]
                .boxed(),
            ),
            _ => {}
        }
    }
    query_params.push(
        prop_oneof![
            6 => Just(None),
            1 => ("[a-z]{1,8}", text()).prop_map(Some),
        ]
        .boxed(),
    );
    let schema = op
        .pointer("/requestBody/content/application~1json/schema")
        .cloned();
    let has_body = op.get("requestBody").is_some();
    let body = if has_body {
        body(doc, schema.as_ref())
    } else {
        prop_oneof![4 => Just(None), 1 => body(doc, None)].boxed()
    };
    let path = path.to_owned();
    (path_params, query_params, body)
        .prop_map(move |(pp, qp, body)| {
            let mut p = path.clone();
            for (name, value) in pp {
                p = p.replace(&format!("{{{name}}}"), &percent(&value));
            }
            let q: Vec<String> = qp
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{}={}", percent(&k), percent(&v)))
                .collect();
            if !q.is_empty() {
                p = format!("{p}?{}", q.join("&"));
            }
            (p, body)
        })
        .boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_generated_request_gets_a_5xx() {
    let h = Harness::start(Db::Sqlite).await;
    let admin = h.admin();
    let made = admin
        .create_join_token("default", &common::auto_approve_token(1, vec![], "fuzz"))
        .await
        .unwrap();
    agent::enroll(&h.url(), &made.token, h.trust(), &h.agent_dir("a"))
        .await
        .unwrap();
    let creds = SvidCredentials::load(&AgentPaths::new(&h.agent_dir("a")).svid_dir()).unwrap();
    let node = ControlClient::new(&h.url(), h.bundle_trust(), Some(creds), None).unwrap();
    let callers = [
        ("anonymous", h.client(None)),
        ("admin", admin.clone()),
        (
            "bad token",
            h.client(Some(&format!(
                "weft_api_{}_{}",
                "0".repeat(32),
                "a".repeat(52)
            ))),
        ),
        ("node", node),
    ];

    let (_, _, bytes) = h
        .client(None)
        .raw(Method::GET, "/openapi.json", None)
        .await
        .unwrap();
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let mut seen = std::collections::BTreeMap::<u16, usize>::new();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            operations += 1;
            let strategy = request(&doc, path, op);
            for (who, client) in &callers {
                for _ in 0..CASES {
                    let (target, body) = strategy.new_tree(&mut runner).unwrap().current();
                    let (status, _, answer) = client
                        .raw(method.clone(), &target, body.clone())
                        .await
                        .unwrap_or_else(|e| panic!("{method} {target} as {who}: {e}"));
                    *seen.entry(status.as_u16()).or_default() += 1;
                    assert!(
                        status.as_u16() < 500,
                        "{method} {target} as {who} with body {:?}: {status} {}",
                        body.as_deref().map(String::from_utf8_lossy),
                        String::from_utf8_lossy(&answer)
                    );
                }
            }
        }
    }
    assert!(operations >= 25, "{operations} operations in the document");
    // The generator reaches the handlers, not only the guards.
    let ok: usize = seen.iter().filter(|(s, _)| **s < 300).map(|(_, n)| n).sum();
    let refused: usize = seen
        .iter()
        .filter(|(s, _)| (400..500).contains(*s))
        .map(|(_, n)| n)
        .sum();
    assert!(ok > 50 && refused > 50, "{seen:?}");
    eprintln!("statuses: {seen:?}");
    h.stop().await;
}
