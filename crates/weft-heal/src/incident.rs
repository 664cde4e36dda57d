//! Incidents: what the loop found, what it did about it, and how that
//! ended, with every step on a timeline.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use weft_crypto::NodeId;
use weft_store::{IncidentId, IncidentStatus};

use crate::model::{ActionKind, Component, Evidence, IncidentKind, Severity, Target};
use crate::time::Time;

/// Most elements kept per incident (a partition of more nodes keeps the
/// first ones and counts the rest).
pub const MAX_ELEMENTS: usize = 1024;
/// Most evidence entries kept per incident (the first ones).
pub const MAX_EVIDENCE: usize = 32;
/// Most timeline entries kept per incident (the first 16 and the newest).
pub const MAX_TIMELINE: usize = 96;
/// Most actions per incident (the store's limit).
pub const MAX_ACTIONS: usize = weft_store::limits::MAX_INCIDENT_ACTIONS;

/// One failing thing an incident covers. Incidents are deduplicated by
/// element: while an incident is open, a failure of one of its elements
/// is more evidence, not a new incident.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Element {
    /// A node that stopped reporting.
    NodeDown(NodeId),
    /// A link (canonical order) that is lossy, slow or dead.
    Link(NodeId, NodeId),
    /// A node with too much CPU or memory.
    Overload(NodeId),
    /// A node whose route count dropped.
    RouteDrop(NodeId),
    /// A node sending forged announcements.
    Forged(NodeId),
    /// A failing component.
    Component(NodeId, Component),
}

impl Element {
    /// The link element between `a` and `b`.
    pub fn link(a: NodeId, b: NodeId) -> Element {
        if a <= b {
            Element::Link(a, b)
        } else {
            Element::Link(b, a)
        }
    }

    /// The incident kind of this element alone.
    pub fn kind(&self) -> IncidentKind {
        match self {
            Element::NodeDown(_) => IncidentKind::NodeDown,
            Element::Link(..) => IncidentKind::LinkDegraded,
            Element::Overload(_) => IncidentKind::Overload,
            Element::RouteDrop(_) => IncidentKind::RouteLoss,
            Element::Forged(_) => IncidentKind::ForgedAnnouncements,
            Element::Component(..) => IncidentKind::ComponentFailure,
        }
    }

    /// What an incident of this element alone is about.
    pub fn target(&self) -> Target {
        match self {
            Element::NodeDown(n)
            | Element::Overload(n)
            | Element::RouteDrop(n)
            | Element::Forged(n) => Target::Node(*n),
            Element::Link(a, b) => Target::Link(*a, *b),
            Element::Component(n, c) => Target::Component(*n, c.clone()),
        }
    }

    /// Whether failures of this kind are grouped by a common neighbour.
    pub(crate) fn topological(&self) -> bool {
        matches!(self, Element::NodeDown(_) | Element::Link(..))
    }
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Element::NodeDown(n) => write!(f, "down:{n}"),
            Element::Link(a, b) => write!(f, "link:{a}-{b}"),
            Element::Overload(n) => write!(f, "overload:{n}"),
            Element::RouteDrop(n) => write!(f, "routes:{n}"),
            Element::Forged(n) => write!(f, "forged:{n}"),
            Element::Component(n, c) => write!(f, "component:{n}/{c}"),
        }
    }
}

impl FromStr for Element {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (tag, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("{:?} is not an element", truncate(s)))?;
        let node = |t: &str| -> Result<NodeId, String> {
            t.parse()
                .map_err(|e| format!("{:?} is not a node id: {e}", truncate(t)))
        };
        Ok(match tag {
            "down" => Element::NodeDown(node(rest)?),
            "overload" => Element::Overload(node(rest)?),
            "routes" => Element::RouteDrop(node(rest)?),
            "forged" => Element::Forged(node(rest)?),
            "link" => {
                let (a, b) = rest
                    .split_once('-')
                    .ok_or_else(|| format!("{:?} is not a link", truncate(s)))?;
                Element::link(node(a)?, node(b)?)
            }
            "component" => {
                let (n, c) = rest
                    .split_once('/')
                    .ok_or_else(|| format!("{:?} is not a component", truncate(s)))?;
                Element::Component(node(n)?, Component::new(c).map_err(|e| e.to_string())?)
            }
            _ => return Err(format!("{:?} is not an element", truncate(s))),
        })
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

impl TryFrom<String> for Element {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Element> for String {
    fn from(e: Element) -> String {
        e.to_string()
    }
}

/// Where an incident's handling stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// Waiting for the planner (held for correlation, deferred, or between
    /// actions).
    Waiting,
    /// An action was requested; waiting for the actuator's answer.
    Acting {
        /// The action's `seq`.
        seq: u32,
        /// When to give up waiting.
        deadline: Time,
    },
    /// The action was carried out; re-measuring until `until`.
    Verifying {
        /// The action's `seq`.
        seq: u32,
        /// When to judge.
        until: Time,
    },
    /// The action did not help; its undoing was requested.
    RollingBack {
        /// The action's `seq`.
        seq: u32,
        /// When to give up waiting.
        deadline: Time,
    },
    /// No action is left to try; an operator must look. The incident still
    /// resolves by itself if its symptoms clear.
    Escalated,
    /// Resolved.
    Closed,
}

/// How one action went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    /// Requested, not answered yet.
    Acting,
    /// Carried out; being verified.
    Verifying,
    /// Verified to help.
    Verified,
    /// Carried out but did not help.
    NotImproved,
    /// The actuator failed (or did not answer in time).
    Failed,
}

impl ActionStatus {
    /// Whether the outcome is known.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ActionStatus::Verified | ActionStatus::NotImproved | ActionStatus::Failed
        )
    }

    /// The stored outcome.
    pub fn outcome(self) -> weft_store::ActionOutcome {
        match self {
            ActionStatus::Acting | ActionStatus::Verifying => weft_store::ActionOutcome::Pending,
            ActionStatus::Verified => weft_store::ActionOutcome::Succeeded,
            ActionStatus::NotImproved | ActionStatus::Failed => weft_store::ActionOutcome::Failed,
        }
    }
}

/// One action taken on an incident.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// Its place in the incident's list.
    pub seq: u32,
    /// What.
    pub action: ActionKind,
    /// On what.
    pub target: Target,
    /// The policy that chose it.
    pub policy: String,
    /// When it was requested.
    pub started_at: Time,
    /// When the actuator reported it carried out.
    #[serde(default)]
    pub acted_at: Option<Time>,
    /// When its outcome was known.
    pub finished_at: Option<Time>,
    /// How it went.
    pub status: ActionStatus,
    /// The symptom level before acting (below 1 is healthy).
    pub level_before: Option<f64>,
    /// The symptom level re-measured after the verification window.
    pub level_after: Option<f64>,
    /// Whether it was undone.
    pub rolled_back: bool,
    /// Why it failed, or what the verification saw.
    pub detail: String,
}

/// A step on an incident's timeline (and of the audit trail).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Found.
    Detected,
    /// More failures joined it (its kind, target or severity may change).
    Merged,
    /// An action was chosen.
    Planned,
    /// No action may run now (cooldown, blast radius, precondition).
    Deferred,
    /// The actuator carried the action out.
    Acted,
    /// The actuator failed or did not answer.
    ActionFailed,
    /// Re-measuring showed the action helped.
    Verified,
    /// Re-measuring showed the action did not help.
    NotImproved,
    /// The action was undone.
    RolledBack,
    /// Undoing the action failed.
    RollbackFailed,
    /// No action is left; an operator must look.
    Escalated,
    /// Over.
    Resolved,
    /// Taken up again after a restart.
    Restored,
}

impl Step {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Detected => "detected",
            Step::Merged => "merged",
            Step::Planned => "planned",
            Step::Deferred => "deferred",
            Step::Acted => "acted",
            Step::ActionFailed => "action_failed",
            Step::Verified => "verified",
            Step::NotImproved => "not_improved",
            Step::RolledBack => "rolled_back",
            Step::RollbackFailed => "rollback_failed",
            Step::Escalated => "escalated",
            Step::Resolved => "resolved",
            Step::Restored => "restored",
        }
    }
}

/// One timeline entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// When.
    pub at: Time,
    /// What happened.
    pub step: Step,
    /// The action concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionKind>,
    /// Details.
    pub detail: String,
}

/// An incident.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Its id.
    pub id: IncidentId,
    /// What kind of fault.
    pub kind: IncidentKind,
    /// How bad.
    pub severity: Severity,
    /// How sure the loop is, 0 to 1.
    pub confidence: f64,
    /// What it is about: the failing node or link, or the common
    /// neighbour of a group.
    pub target: Target,
    /// Open, escalated or resolved.
    pub status: IncidentStatus,
    /// Where its handling stands.
    pub phase: Phase,
    /// When the first symptom started (the first anomalous sample, or the
    /// last time a silent node was heard).
    pub onset: Time,
    /// When it was detected.
    pub detected_at: Time,
    /// When it last changed.
    pub updated_at: Time,
    /// When it was resolved.
    pub resolved_at: Option<Time>,
    /// When one of its elements was last seen failing.
    pub last_active: Time,
    /// The failing things it covers.
    pub elements: Vec<Element>,
    /// Elements beyond [`MAX_ELEMENTS`], counted only.
    pub elements_dropped: u32,
    /// Samples and detector values that made the loop decide.
    pub evidence: Vec<Evidence>,
    /// Every step.
    pub timeline: Vec<TimelineEntry>,
    /// Timeline entries dropped beyond [`MAX_TIMELINE`].
    pub timeline_dropped: u32,
    /// The actions taken.
    pub actions: Vec<ActionRecord>,
    /// How it ended.
    pub resolution: Option<String>,
    /// Why the planner last could not act (audited once per reason).
    #[serde(default)]
    pub last_deferral: Option<String>,
}

impl Incident {
    /// Whether it is still being handled (open or escalated).
    pub fn is_open(&self) -> bool {
        self.status != IncidentStatus::Resolved
    }

    /// Appends a timeline entry (keeping the first 16 and the newest when
    /// full) and marks the incident changed.
    pub(crate) fn note(
        &mut self,
        at: Time,
        step: Step,
        action: Option<ActionKind>,
        detail: String,
    ) {
        if self.timeline.len() >= MAX_TIMELINE {
            self.timeline.remove(16);
            self.timeline_dropped = self.timeline_dropped.saturating_add(1);
        }
        self.timeline.push(TimelineEntry {
            at,
            step,
            action,
            detail,
        });
        self.updated_at = self.updated_at.max(at);
    }

    /// Adds evidence while there is room.
    pub(crate) fn add_evidence(&mut self, e: impl IntoIterator<Item = Evidence>) {
        for e in e {
            if self.evidence.len() >= MAX_EVIDENCE {
                break;
            }
            self.evidence.push(e);
        }
    }

    /// Time to detect, in milliseconds.
    pub fn mttd_ms(&self) -> u64 {
        self.detected_at
            .as_millis()
            .saturating_sub(self.onset.as_millis())
    }

    /// Time from the first symptom to resolution, in milliseconds.
    pub fn mttr_ms(&self) -> Option<u64> {
        self.resolved_at
            .map(|r| r.as_millis().saturating_sub(self.onset.as_millis()))
    }

    /// The stored form (see [`weft_store::Store::put_incident`]).
    pub fn to_record(
        &self,
        network_id: Option<weft_store::NetworkId>,
    ) -> Result<weft_store::IncidentRecord, serde_json::Error> {
        Ok(weft_store::IncidentRecord {
            id: self.id,
            network_id,
            kind: self.kind.as_str().to_owned(),
            status: self.status,
            severity: self.severity.as_str().to_owned(),
            target: self.target.to_string(),
            opened_at: self.detected_at.to_datetime(),
            updated_at: self.updated_at.max(self.detected_at).to_datetime(),
            resolved_at: self.resolved_at.map(Time::to_datetime),
            document: serde_json::to_string(self)?,
            actions: self
                .actions
                .iter()
                .map(|a| weft_store::IncidentAction {
                    seq: a.seq,
                    action: a.action.as_str().to_owned(),
                    target: a.target.to_string(),
                    outcome: a.status.outcome(),
                    started_at: a.started_at.to_datetime(),
                    finished_at: if a.status.is_final() {
                        Some(a.finished_at.unwrap_or(a.started_at).to_datetime())
                    } else {
                        None
                    },
                })
                .collect(),
        })
    }

    /// Reads the stored form back.
    pub fn from_record(record: &weft_store::IncidentRecord) -> Result<Incident, String> {
        let incident: Incident = serde_json::from_str(&record.document)
            .map_err(|e| format!("incident {}: its document is unreadable: {e}", record.id))?;
        if incident.id != record.id {
            return Err(format!(
                "incident {}: its document names incident {}",
                record.id, incident.id
            ));
        }
        if incident.elements.len() > MAX_ELEMENTS
            || incident.evidence.len() > MAX_EVIDENCE
            || incident.timeline.len() > MAX_TIMELINE
            || incident.actions.len() > MAX_ACTIONS
        {
            return Err(format!(
                "incident {}: its document is over the loop's limits",
                record.id
            ));
        }
        Ok(incident)
    }
}
