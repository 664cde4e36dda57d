//! Declarative policies in TOML: which incidents get which candidate
//! actions, under which preconditions, cooldowns and blast-radius limits.
//!
//! ```toml
//! version = 1
//!
//! [limits]
//! blast_radius_percent = 10.0     # of the known nodes acted on per window
//! blast_radius_min_nodes = 1      # ... but always at least this many
//! blast_radius_window = "1m"
//! max_in_flight = 16              # actions awaiting a result at once
//! max_attempts = 3                # actions per incident
//! min_healthy_fraction = 0.5      # for the fleet_mostly_healthy check
//!
//! [[policy]]
//! name = "overloaded node"
//! kind = "overload"               # an incident kind
//! min_severity = "major"          # minor, major, critical (default minor)
//! min_confidence = 0.5            # 0 to 1 (default 0)
//! hold = "0s"                     # wait after detection before acting
//!
//! [[policy.actions]]
//! action = "shed_load"
//! cooldown = "5m"                 # per (action, target)
//! verify_after = "30s"            # re-measure this long after acting
//! requires = ["target_reachable"] # preconditions, all must hold
//! min_confidence = 0.0
//! ```
//!
//! The first policy (in file order) whose kind, severity and confidence
//! match an incident applies. Its candidate actions are ranked by their
//! past success rate for that incident kind (see [`crate::Knowledge`]),
//! ties in file order. Every error names the key: `policy[2].actions[0].
//! cooldown: "5x" ...`.

use std::time::Duration;

use serde::Deserialize;

use crate::model::{ActionKind, Component, IncidentKind, Severity};
use crate::time::parse_duration;

/// The largest policy file read.
pub const MAX_POLICY_LEN: usize = 256 * 1024;
/// Most policies in a file.
pub const MAX_POLICIES: usize = 256;
/// Most candidate actions per policy.
pub const MAX_ACTIONS_PER_POLICY: usize = 16;

/// The default policy shipped with weft.
pub const DEFAULT_POLICY: &str = include_str!("../policy/default.toml");

/// A check that must hold before an action runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precondition {
    /// Every target node sends telemetry (is not silent).
    TargetReachable,
    /// The target node is silent (e.g. restart a crashed node through its
    /// supervisor).
    TargetUnreachable,
    /// No target node is quarantined.
    NotQuarantined,
    /// For a link: each end keeps at least one other healthy, undrained
    /// link, so draining it cannot cut a node off.
    EndpointsKeepALink,
    /// At least `min_healthy_fraction` of the reporting nodes are fresh
    /// (when most of the fleet looks bad, suspect the monitoring).
    FleetMostlyHealthy,
}

impl Precondition {
    /// Every precondition.
    pub const ALL: [Precondition; 5] = [
        Precondition::TargetReachable,
        Precondition::TargetUnreachable,
        Precondition::NotQuarantined,
        Precondition::EndpointsKeepALink,
        Precondition::FleetMostlyHealthy,
    ];

    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Precondition::TargetReachable => "target_reachable",
            Precondition::TargetUnreachable => "target_unreachable",
            Precondition::NotQuarantined => "not_quarantined",
            Precondition::EndpointsKeepALink => "endpoints_keep_a_link",
            Precondition::FleetMostlyHealthy => "fleet_mostly_healthy",
        }
    }
}

/// Global limits.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Percent of the known nodes that may be acted on per window.
    pub blast_radius_percent: f64,
    /// Nodes that may always be acted on per window.
    pub blast_radius_min_nodes: u32,
    /// The window.
    pub blast_radius_window: Duration,
    /// Actions awaiting a result at once.
    pub max_in_flight: usize,
    /// Actions per incident.
    pub max_attempts: u32,
    /// Share of fresh nodes `fleet_mostly_healthy` requires.
    pub min_healthy_fraction: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            blast_radius_percent: 10.0,
            blast_radius_min_nodes: 1,
            blast_radius_window: Duration::from_secs(60),
            max_in_flight: 16,
            max_attempts: 3,
            min_healthy_fraction: 0.5,
        }
    }
}

/// One candidate action of a rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The action.
    pub action: ActionKind,
    /// Not repeated on the same target within this.
    pub cooldown: Duration,
    /// Re-measured this long after it was carried out.
    pub verify_after: Duration,
    /// What must hold first.
    pub requires: Vec<Precondition>,
    /// For `restart_process` on a node: which component.
    pub component: Option<Component>,
    /// Least incident confidence for this action.
    pub min_confidence: f64,
}

/// One rule: a condition and its candidate actions.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Its unique name.
    pub name: String,
    /// The incident kind it handles.
    pub kind: IncidentKind,
    /// Least severity.
    pub min_severity: Severity,
    /// Least confidence.
    pub min_confidence: f64,
    /// Wait after detection before the first action (lets correlated
    /// failures gather into one incident).
    pub hold: Duration,
    /// Candidates in file order.
    pub actions: Vec<Candidate>,
}

/// A validated policy file.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// Global limits.
    pub limits: Limits,
    /// Rules in file order.
    pub rules: Vec<Rule>,
}

/// Why a policy file was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// Not TOML, an unknown key, or a value of the wrong type.
    #[error("policy file is not valid: {message}")]
    Syntax {
        /// The parser's message (with the line, column and key).
        message: String,
    },
    /// A key's value breaks a rule.
    #[error("policy file: {key}: {message}")]
    Invalid {
        /// The key, e.g. `policy[1].actions[0].cooldown`.
        key: String,
        /// What is wrong, and what is allowed.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    version: Option<i64>,
    limits: Option<RawLimits>,
    #[serde(default)]
    policy: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    blast_radius_percent: Option<f64>,
    blast_radius_min_nodes: Option<i64>,
    blast_radius_window: Option<String>,
    max_in_flight: Option<i64>,
    max_attempts: Option<i64>,
    min_healthy_fraction: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    kind: String,
    min_severity: Option<String>,
    min_confidence: Option<f64>,
    hold: Option<String>,
    #[serde(default)]
    actions: Vec<RawAction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    action: String,
    cooldown: Option<String>,
    verify_after: Option<String>,
    #[serde(default)]
    requires: Vec<String>,
    component: Option<String>,
    min_confidence: Option<f64>,
}

fn duration(
    key: &str,
    v: Option<&str>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, PolicyError> {
    let Some(v) = v else {
        return Ok(default);
    };
    let d = parse_duration(v).map_err(|e| invalid(key, e))?;
    if d < min || d > max {
        return Err(invalid(key, format!("{v:?} is outside {min:?} to {max:?}")));
    }
    Ok(d)
}

fn fraction(key: &str, v: Option<f64>, default: f64) -> Result<f64, PolicyError> {
    let v = v.unwrap_or(default);
    if !(0.0..=1.0).contains(&v) {
        return Err(invalid(key, format!("{v} is outside 0 to 1")));
    }
    Ok(v)
}

fn int(key: &str, v: Option<i64>, default: u32, lo: u32, hi: u32) -> Result<u32, PolicyError> {
    let Some(v) = v else {
        return Ok(default);
    };
    match u32::try_from(v) {
        Ok(x) if (lo..=hi).contains(&x) => Ok(x),
        _ => Err(invalid(key, format!("{v} is outside {lo} to {hi}"))),
    }
}

impl Policy {
    /// The default policy ([`DEFAULT_POLICY`]).
    pub fn default_policy() -> Policy {
        // The shipped file is checked by a test; should it ever be broken,
        // fall back to no rules rather than panic.
        Policy::parse(DEFAULT_POLICY).unwrap_or(Policy {
            limits: Limits::default(),
            rules: Vec::new(),
        })
    }

    /// Parses and validates a policy file.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        if text.len() > MAX_POLICY_LEN {
            return Err(invalid(
                "(file)",
                format!("{} bytes; the limit is {MAX_POLICY_LEN}", text.len()),
            ));
        }
        let raw: RawFile = toml::from_str(text).map_err(|e| PolicyError::Syntax {
            message: e.to_string().trim_end().to_owned(),
        })?;
        if let Some(v) = raw.version
            && v != 1
        {
            return Err(invalid(
                "version",
                format!("{v} is not a version this weft reads; it reads 1"),
            ));
        }
        let limits = match raw.limits {
            None => Limits::default(),
            Some(l) => {
                let d = Limits::default();
                let pct = l.blast_radius_percent.unwrap_or(d.blast_radius_percent);
                if !(pct > 0.0 && pct <= 100.0) {
                    return Err(invalid(
                        "limits.blast_radius_percent",
                        format!("{pct} is outside (0, 100]"),
                    ));
                }
                Limits {
                    blast_radius_percent: pct,
                    blast_radius_min_nodes: int(
                        "limits.blast_radius_min_nodes",
                        l.blast_radius_min_nodes,
                        d.blast_radius_min_nodes,
                        0,
                        1_000_000,
                    )?,
                    blast_radius_window: duration(
                        "limits.blast_radius_window",
                        l.blast_radius_window.as_deref(),
                        d.blast_radius_window,
                        Duration::from_secs(1),
                        Duration::from_secs(86_400),
                    )?,
                    max_in_flight: int(
                        "limits.max_in_flight",
                        l.max_in_flight,
                        d.max_in_flight as u32,
                        1,
                        10_000,
                    )? as usize,
                    max_attempts: int(
                        "limits.max_attempts",
                        l.max_attempts,
                        d.max_attempts,
                        1,
                        crate::incident::MAX_ACTIONS as u32 / 2,
                    )?,
                    min_healthy_fraction: fraction(
                        "limits.min_healthy_fraction",
                        l.min_healthy_fraction,
                        d.min_healthy_fraction,
                    )?,
                }
            }
        };
        if raw.policy.len() > MAX_POLICIES {
            return Err(invalid(
                "policy",
                format!("{} policies; the limit is {MAX_POLICIES}", raw.policy.len()),
            ));
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(raw.policy.len());
        for (i, r) in raw.policy.into_iter().enumerate() {
            let key = |k: &str| format!("policy[{i}].{k}");
            if r.name.is_empty() || r.name.len() > 64 || r.name.chars().any(char::is_control) {
                return Err(invalid(key("name"), "must be 1 to 64 printable characters"));
            }
            if rules.iter().any(|x| x.name == r.name) {
                return Err(invalid(
                    key("name"),
                    format!(
                        "{:?} is used by an earlier policy; names must be unique",
                        r.name
                    ),
                ));
            }
            let kind: IncidentKind = r
                .kind
                .parse()
                .map_err(|e: String| invalid(key("kind"), e))?;
            let min_severity = match &r.min_severity {
                None => Severity::Minor,
                Some(s) => s
                    .parse()
                    .map_err(|e: String| invalid(key("min_severity"), e))?,
            };
            if r.actions.is_empty() {
                return Err(invalid(
                    key("actions"),
                    "a policy needs at least one action (add [[policy.actions]])",
                ));
            }
            if r.actions.len() > MAX_ACTIONS_PER_POLICY {
                return Err(invalid(
                    key("actions"),
                    format!(
                        "{} actions; the limit is {MAX_ACTIONS_PER_POLICY}",
                        r.actions.len()
                    ),
                ));
            }
            let mut actions = Vec::with_capacity(r.actions.len());
            for (j, a) in r.actions.into_iter().enumerate() {
                let key = |k: &str| format!("policy[{i}].actions[{j}].{k}");
                let action: ActionKind = a
                    .action
                    .parse()
                    .map_err(|e: String| invalid(key("action"), e))?;
                if matches!(action, ActionKind::UndrainLink | ActionKind::RestoreLoad) {
                    return Err(invalid(
                        key("action"),
                        format!(
                            "{action} only undoes another action; the loop runs it as a rollback"
                        ),
                    ));
                }
                if actions.iter().any(|c: &Candidate| c.action == action) {
                    return Err(invalid(
                        key("action"),
                        format!("{action} is listed twice in this policy"),
                    ));
                }
                let component = match &a.component {
                    None => None,
                    Some(c) if action == ActionKind::RestartProcess => Some(
                        Component::new(c).map_err(|e| invalid(key("component"), e.to_string()))?,
                    ),
                    Some(_) => {
                        return Err(invalid(
                            key("component"),
                            "only restart_process takes a component",
                        ));
                    }
                };
                if a.requires.len() > Precondition::ALL.len() {
                    return Err(invalid(key("requires"), "lists a precondition twice"));
                }
                let mut requires = Vec::with_capacity(a.requires.len());
                for (k, name) in a.requires.iter().enumerate() {
                    let p = Precondition::ALL
                        .into_iter()
                        .find(|p| p.as_str() == name)
                        .ok_or_else(|| {
                            invalid(
                                format!("policy[{i}].actions[{j}].requires[{k}]"),
                                format!(
                                    "{:?} is not a precondition; expected one of: {}",
                                    name.chars().take(40).collect::<String>(),
                                    Precondition::ALL.map(Precondition::as_str).join(", ")
                                ),
                            )
                        })?;
                    if requires.contains(&p) {
                        return Err(invalid(
                            format!("policy[{i}].actions[{j}].requires[{k}]"),
                            format!("{} is listed twice", p.as_str()),
                        ));
                    }
                    requires.push(p);
                }
                actions.push(Candidate {
                    action,
                    cooldown: duration(
                        &key("cooldown"),
                        a.cooldown.as_deref(),
                        Duration::from_secs(300),
                        Duration::ZERO,
                        Duration::from_secs(7 * 86_400),
                    )?,
                    verify_after: duration(
                        &key("verify_after"),
                        a.verify_after.as_deref(),
                        Duration::from_secs(30),
                        Duration::from_millis(100),
                        Duration::from_secs(3600),
                    )?,
                    requires,
                    component,
                    min_confidence: fraction(&key("min_confidence"), a.min_confidence, 0.0)?,
                });
            }
            rules.push(Rule {
                name: r.name,
                kind,
                min_severity,
                min_confidence: fraction(&key("min_confidence"), r.min_confidence, 0.0)?,
                hold: duration(
                    &key("hold"),
                    r.hold.as_deref(),
                    Duration::ZERO,
                    Duration::ZERO,
                    Duration::from_secs(3600),
                )?,
                actions,
            });
        }
        Ok(Policy { limits, rules })
    }

    /// The first rule that applies to an incident of this kind, severity
    /// and confidence.
    pub fn rule_for(
        &self,
        kind: IncidentKind,
        severity: Severity,
        confidence: f64,
    ) -> Option<&Rule> {
        self.rules.iter().find(|r| {
            r.kind == kind && severity >= r.min_severity && confident(confidence, r.min_confidence)
        })
    }
}

/// Whether `confidence` reaches `min`. Confidences are sums and products
/// of tenths (0.7 + 0.2 is 0.8999999999999999 in binary floating point),
/// and a policy's limit is written in decimals: a confidence within 1e-9
/// below the limit reaches it.
pub(crate) fn confident(confidence: f64, min: f64) -> bool {
    confidence + 1e-9 >= min
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_policy_parses() {
        let p = Policy::parse(DEFAULT_POLICY).unwrap();
        assert!(!p.rules.is_empty());
        assert_eq!(p, Policy::default_policy());
        // Every incident kind has a rule.
        for kind in IncidentKind::ALL {
            assert!(
                p.rules.iter().any(|r| r.kind == *kind),
                "no default rule for {kind}"
            );
        }
    }

    fn err(text: &str) -> PolicyError {
        Policy::parse(text).unwrap_err()
    }

    fn key_of(e: PolicyError) -> String {
        match e {
            PolicyError::Invalid { key, .. } => key,
            PolicyError::Syntax { message } => panic!("expected a key, got syntax: {message}"),
        }
    }

    const ONE: &str = r#"
[[policy]]
name = "p"
kind = "overload"
[[policy.actions]]
action = "shed_load"
"#;

    #[test]
    fn errors_name_the_key() {
        assert!(Policy::parse(ONE).is_ok());
        let cases = [
            (ONE.replace("overload", "meltdown"), "policy[0].kind"),
            (
                ONE.replace("shed_load", "reboot_world"),
                "policy[0].actions[0].action",
            ),
            (
                format!("{ONE}cooldown = \"5x\"\n"),
                "policy[0].actions[0].cooldown",
            ),
            (
                format!("{ONE}verify_after = \"1ms\"\n"),
                "policy[0].actions[0].verify_after",
            ),
            (
                format!("{ONE}requires = [\"target_reachable\", \"moon_full\"]\n"),
                "policy[0].actions[0].requires[1]",
            ),
            (
                format!("{ONE}component = \"agent\"\n"),
                "policy[0].actions[0].component",
            ),
            (
                format!("{ONE}min_confidence = 1.5\n"),
                "policy[0].actions[0].min_confidence",
            ),
            (format!("{ONE}{ONE}"), "policy[1].name"),
            (
                format!("[limits]\nblast_radius_percent = 0.0\n{ONE}"),
                "limits.blast_radius_percent",
            ),
            (
                format!("[limits]\nmax_in_flight = -3\n{ONE}"),
                "limits.max_in_flight",
            ),
            (format!("version = 2\n{ONE}"), "version"),
            (
                ONE.replace("shed_load", "undrain_link"),
                "policy[0].actions[0].action",
            ),
            (
                "[[policy]]\nname = \"p\"\nkind = \"overload\"\n".to_owned(),
                "policy[0].actions",
            ),
        ];
        for (text, key) in cases {
            assert_eq!(key_of(err(&text)), key, "{text}");
        }
    }

    #[test]
    fn syntax_errors_name_the_key_too() {
        let e = err(&format!("{ONE}colldown = \"5m\"\n"));
        let text = e.to_string();
        assert!(text.contains("colldown"), "{text}");
        let e = err(&ONE.replace("name = \"p\"", "name = 5"));
        assert!(e.to_string().contains("name"), "{e}");
        assert!(matches!(err("[[policy]\n"), PolicyError::Syntax { .. }));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let alphabet = b"[]{}=\"'.,#\n abcdefghijklmnopqrstuvwxyz_0123456789-";
        for _ in 0..3000 {
            let len = (seed % 200) as usize;
            let mut s = String::new();
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                s.push(alphabet[(seed % alphabet.len() as u64) as usize] as char);
            }
            let _ = Policy::parse(&s);
            let _ = Policy::parse(&format!("{ONE}{s}"));
        }
        assert!(Policy::parse(&"#".repeat(MAX_POLICY_LEN + 1)).is_err());
    }

    #[test]
    fn first_matching_rule_applies() {
        let text = r#"
[[policy]]
name = "bad"
kind = "overload"
min_severity = "critical"
[[policy.actions]]
action = "restart_process"
[[policy]]
name = "any"
kind = "overload"
min_confidence = 0.5
[[policy.actions]]
action = "shed_load"
"#;
        let p = Policy::parse(text).unwrap();
        let name = |s, c| {
            p.rule_for(IncidentKind::Overload, s, c)
                .map(|r| r.name.as_str())
        };
        assert_eq!(name(Severity::Critical, 0.9), Some("bad"));
        assert_eq!(name(Severity::Major, 0.9), Some("any"));
        assert_eq!(name(Severity::Major, 0.1), None);
        assert!(
            p.rule_for(IncidentKind::NodeDown, Severity::Critical, 1.0)
                .is_none()
        );
    }
}
