//! Network policies: versioned ACL rules saying which nodes may reach
//! which, on which ports. The control plane validates a document, stores
//! it as the network's next version (a stale base version is a conflict,
//! so two operators cannot overwrite each other), publishes it on the bus
//! and serves it to agents, which enforce it.
//!
//! ```json
//! { "default": "deny",
//!   "rules": [
//!     { "from": ["tag:role=web"], "to": ["tag:role=db"], "ports": ["5432"], "protocol": "tcp", "action": "allow" },
//!     { "from": ["*"], "to": ["node:<node id>"], "ports": ["8000-8100"], "protocol": "any", "action": "allow" } ] }
//! ```
//!
//! Selectors: `*` (every node), `tag:<tag>`, `node:<node id>`, or a
//! SPIFFE ID in the network's trust domain. Ports: `*`, `N` or `A-B`
//! (1 to 65535). Rules are evaluated in order; the first match decides,
//! else `default`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use weft_crypto::{NodeId, SpiffeId, TrustDomain};
use weft_store::Tags;

/// Most rules in a policy.
pub const MAX_RULES: usize = 1000;
/// Most selectors or port ranges in one rule.
pub const MAX_ITEMS: usize = 64;

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the traffic through.
    Allow,
    /// Drop it.
    Deny,
}

/// Which transport a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// Both.
    #[default]
    Any,
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Sources.
    pub from: Vec<String>,
    /// Destinations.
    pub to: Vec<String>,
    /// Destination ports.
    pub ports: Vec<String>,
    /// Transport (default `any`).
    #[serde(default)]
    pub protocol: Protocol,
    /// What a match does.
    pub action: Action,
}

/// A policy document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// What happens to traffic no rule matches.
    pub default: Action,
    /// The rules, first match wins.
    pub rules: Vec<Rule>,
}

/// Why a document was refused: the JSON path and the rule broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct PolicyError {
    /// Where (`rules[3].to[1]`).
    pub path: String,
    /// What is wrong, with the value.
    pub reason: String,
}

fn err(path: String, reason: impl Into<String>) -> PolicyError {
    PolicyError {
        path,
        reason: reason.into(),
    }
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

fn check_selector(path: String, s: &str, td: &TrustDomain) -> Result<(), PolicyError> {
    if s == "*" {
        return Ok(());
    }
    if let Some(tag) = s.strip_prefix("tag:") {
        return Tags::new([tag])
            .map(drop)
            .map_err(|e| err(path, e.to_string()));
    }
    if let Some(id) = s.strip_prefix("node:") {
        return id
            .parse::<NodeId>()
            .map(drop)
            .map_err(|e| err(path, e.to_string()));
    }
    if s.starts_with("spiffe://") {
        let id = SpiffeId::parse(s).map_err(|e| err(path.clone(), e.to_string()))?;
        if !id.is_member_of(td) {
            return Err(err(
                path,
                format!("{id} is not in the network's trust domain {td}"),
            ));
        }
        return Ok(());
    }
    Err(err(
        path,
        format!(
            "{:?} is not a selector: use *, tag:<tag>, node:<node id> or a SPIFFE ID",
            short(s)
        ),
    ))
}

fn parse_port(path: &str, s: &str) -> Result<u16, PolicyError> {
    match s.parse::<u16>() {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(err(
            path.to_owned(),
            format!("{:?} is not a port (1 to 65535)", short(s)),
        )),
    }
}

fn check_ports(path: String, s: &str) -> Result<(), PolicyError> {
    if s == "*" {
        return Ok(());
    }
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse_port(&path, a)?, parse_port(&path, b)?);
            if a > b {
                return Err(err(path, format!("range {a}-{b} is empty")));
            }
            Ok(())
        }
        None => parse_port(&path, s).map(drop),
    }
}

impl PolicyDocument {
    /// Checks every rule, naming the first problem's path.
    pub fn check(&self, td: &TrustDomain) -> Result<(), PolicyError> {
        if self.rules.len() > MAX_RULES {
            return Err(err(
                "rules".into(),
                format!("{} rules; at most {MAX_RULES}", self.rules.len()),
            ));
        }
        for (i, r) in self.rules.iter().enumerate() {
            for (name, list) in [("from", &r.from), ("to", &r.to), ("ports", &r.ports)] {
                if list.is_empty() || list.len() > MAX_ITEMS {
                    return Err(err(
                        format!("rules[{i}].{name}"),
                        format!("must hold 1 to {MAX_ITEMS} entries, holds {}", list.len()),
                    ));
                }
            }
            for (j, s) in r.from.iter().enumerate() {
                check_selector(format!("rules[{i}].from[{j}]"), s, td)?;
            }
            for (j, s) in r.to.iter().enumerate() {
                check_selector(format!("rules[{i}].to[{j}]"), s, td)?;
            }
            for (j, s) in r.ports.iter().enumerate() {
                check_ports(format!("rules[{i}].ports[{j}]"), s)?;
            }
        }
        Ok(())
    }
}

/// A policy update.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutPolicy {
    /// The document.
    pub document: PolicyDocument,
    /// The version this edit is based on (0: there is none yet); the
    /// update is refused with 409 if the latest is another. Omit to
    /// append regardless.
    #[serde(default)]
    pub base_version: Option<u32>,
}

/// A stored policy version.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PolicyView {
    /// The network.
    pub network: String,
    /// Its version: 1, 2, ...
    pub version: u32,
    /// Who wrote it.
    pub author: String,
    /// When (RFC 3339).
    pub created_at: String,
    /// The document.
    pub document: PolicyDocument,
}

/// A policy version without its document.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PolicySummaryView {
    /// Its version.
    pub version: u32,
    /// Who wrote it.
    pub author: String,
    /// When (RFC 3339).
    pub created_at: String,
    /// The document's size, bytes.
    pub size: u64,
}

/// A page of policy versions, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PolicyPage {
    /// The versions.
    pub items: Vec<PolicySummaryView>,
    /// Cursor of the next page, if any.
    pub next: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn doc(json: &str) -> PolicyDocument {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn policies_are_checked_with_the_path_of_the_problem() {
        let td = TrustDomain::new("mesh.test").unwrap();
        let node = "a".repeat(52);
        let ok = doc(&format!(
            r#"{{"default":"deny","rules":[
                {{"from":["tag:role=web"],"to":["tag:role=db","node:{node}","spiffe://mesh.test/node/{node}"],"ports":["5432","8000-8100"],"protocol":"tcp","action":"allow"}},
                {{"from":["*"],"to":["*"],"ports":["*"],"action":"deny"}}]}}"#
        ));
        ok.check(&td).unwrap();
        for (json, path) in [
            (
                r#"{"default":"deny","rules":[{"from":["role=web"],"to":["*"],"ports":["1"],"action":"allow"}]}"#,
                "rules[0].from[0]",
            ),
            (
                r#"{"default":"deny","rules":[{"from":["*"],"to":["spiffe://other.test/x"],"ports":["1"],"action":"allow"}]}"#,
                "rules[0].to[0]",
            ),
            (
                r#"{"default":"deny","rules":[{"from":["*"],"to":["*"],"ports":["0"],"action":"allow"}]}"#,
                "rules[0].ports[0]",
            ),
            (
                r#"{"default":"deny","rules":[{"from":["*"],"to":["*"],"ports":["90-80"],"action":"allow"}]}"#,
                "rules[0].ports[0]",
            ),
            (
                r#"{"default":"deny","rules":[{"from":[],"to":["*"],"ports":["1"],"action":"allow"}]}"#,
                "rules[0].from",
            ),
            (
                r#"{"default":"deny","rules":[{"from":["*"],"to":["tag:UPPER"],"ports":["1"],"action":"allow"}]}"#,
                "rules[0].to[0]",
            ),
        ] {
            let e = doc(json).check(&td).unwrap_err();
            assert_eq!(e.path, path, "{json}: {e}");
        }
        assert!(
            serde_json::from_str::<PolicyDocument>(r#"{"default":"maybe","rules":[]}"#).is_err()
        );
        assert!(
            serde_json::from_str::<PolicyDocument>(r#"{"default":"deny","rules":[],"x":1}"#)
                .is_err()
        );
    }
}
