//! What goes into the loop (telemetry samples, events, action results)
//! and the names it uses for what it finds and does (targets, incident
//! kinds, severities, actions).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use weft_crypto::NodeId;
use weft_store::IncidentId;

use crate::time::Time;

/// Longest component name.
pub const MAX_COMPONENT_LEN: usize = 32;

/// A supervised process or service on a node (`agent`, `bus`, ...): 1 to
/// [`MAX_COMPONENT_LEN`] of `a-z 0-9 _ -`, starting with a letter.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Component(Box<str>);

impl Component {
    /// Validates a component name.
    pub fn new(name: &str) -> Result<Self, InputError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_COMPONENT_LEN
            && name.as_bytes()[0].is_ascii_lowercase()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Component(name.into()))
        } else {
            Err(InputError::BadComponent {
                name: name.chars().take(MAX_COMPONENT_LEN + 1).collect(),
            })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Component {
    type Error = InputError;
    fn try_from(s: String) -> Result<Self, InputError> {
        Component::new(&s)
    }
}

impl From<Component> for String {
    fn from(c: Component) -> String {
        c.0.into()
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Component({})", self.0)
    }
}

/// What a sample measures.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    /// CPU use of the node, percent (0 to 100).
    Cpu,
    /// Memory use of the node, percent (0 to 100).
    Memory,
    /// Routes in the node's table (0 to 10 000 000).
    RouteCount,
    /// Packet loss on the node's link to `peer`, percent (0 to 100).
    LinkLoss {
        /// The neighbour at the other end.
        peer: NodeId,
    },
    /// Round-trip time on the node's link to `peer`, milliseconds (0 to
    /// 600 000).
    LinkRtt {
        /// The neighbour at the other end.
        peer: NodeId,
    },
    /// Failed operations of a component on the node, percent (0 to 100).
    ComponentErrors {
        /// The component.
        component: Component,
    },
}

impl Metric {
    /// The kind, without the peer or component.
    pub fn kind(&self) -> MetricKind {
        match self {
            Metric::Cpu => MetricKind::Cpu,
            Metric::Memory => MetricKind::Memory,
            Metric::RouteCount => MetricKind::RouteCount,
            Metric::LinkLoss { .. } => MetricKind::LinkLoss,
            Metric::LinkRtt { .. } => MetricKind::LinkRtt,
            Metric::ComponentErrors { .. } => MetricKind::ComponentErrors,
        }
    }
}

/// A metric without its peer or component: what detector settings are
/// chosen by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// CPU percent.
    Cpu,
    /// Memory percent.
    Memory,
    /// Route count.
    RouteCount,
    /// Link loss percent.
    LinkLoss,
    /// Link round-trip time, ms.
    LinkRtt,
    /// Component error percent.
    ComponentErrors,
}

impl MetricKind {
    /// Every kind.
    pub const ALL: [MetricKind; 6] = [
        MetricKind::Cpu,
        MetricKind::Memory,
        MetricKind::RouteCount,
        MetricKind::LinkLoss,
        MetricKind::LinkRtt,
        MetricKind::ComponentErrors,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Cpu => "cpu",
            MetricKind::Memory => "memory",
            MetricKind::RouteCount => "route_count",
            MetricKind::LinkLoss => "link_loss",
            MetricKind::LinkRtt => "link_rtt",
            MetricKind::ComponentErrors => "component_errors",
        }
    }

    /// The largest value a sample of this kind may carry.
    pub fn max_value(self) -> f64 {
        match self {
            MetricKind::Cpu
            | MetricKind::Memory
            | MetricKind::LinkLoss
            | MetricKind::ComponentErrors => 100.0,
            MetricKind::RouteCount => 10_000_000.0,
            MetricKind::LinkRtt => 600_000.0,
        }
    }
}

/// One telemetry measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The node that measured.
    pub node: NodeId,
    /// What.
    pub metric: Metric,
    /// The value, in the metric's unit and range.
    pub value: f64,
    /// When it was measured (on the driver's clock).
    pub at: Time,
}

/// Most values in one [`Telemetry`] report.
pub const MAX_TELEMETRY_VALUES: usize = 4096;

/// A node's whole report at one time (what an agent's heartbeat
/// carries): cheaper than one [`Sample`] per value, as the node is looked
/// up once and its links are found among its own.
#[derive(Clone, Debug, PartialEq)]
pub struct Telemetry {
    /// The node that measured.
    pub node: NodeId,
    /// When.
    pub at: Time,
    /// The values, each in its metric's unit and range (at most
    /// [`MAX_TELEMETRY_VALUES`]).
    pub values: Vec<(Metric, f64)>,
}

/// A discrete event reported by a node, the control plane or the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `node` lost its link to its neighbour `peer` (liveness timeout).
    NeighbourDead {
        /// The reporter.
        node: NodeId,
        /// The neighbour it no longer hears.
        peer: NodeId,
    },
    /// `node` hears its neighbour `peer` again.
    NeighbourUp {
        /// The reporter.
        node: NodeId,
        /// The neighbour.
        peer: NodeId,
    },
    /// `node` lost its route to `destination`.
    RouteLost {
        /// The reporter.
        node: NodeId,
        /// The destination now unreachable from it.
        destination: NodeId,
    },
    /// `node` refused an announcement claiming `origin` that its
    /// neighbour `from` sent, because its signature did not verify.
    ForgedAnnouncement {
        /// The node that refused it.
        node: NodeId,
        /// The origin the announcement claimed.
        origin: NodeId,
        /// The neighbour that sent it: honest nodes verify before they
        /// relay, so this is the forger.
        from: NodeId,
    },
    /// `node` was revoked (quarantined) by the control plane.
    Revoked {
        /// The node.
        node: NodeId,
    },
    /// A supervised component of `node` stopped.
    ComponentDown {
        /// The node.
        node: NodeId,
        /// The component.
        component: Component,
    },
    /// A supervised component of `node` runs again.
    ComponentUp {
        /// The node.
        node: NodeId,
        /// The component.
        component: Component,
    },
}

/// The id of one action request: the incident, the action's place in the
/// incident's list, and whether it is that action's rollback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ActionId {
    /// The incident acted for.
    pub incident: IncidentId,
    /// The action's `seq` in the incident.
    pub seq: u32,
    /// Whether this request undoes action `seq`.
    pub rollback: bool,
}

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.incident, self.seq)?;
        if self.rollback {
            f.write_str("/rollback")?;
        }
        Ok(())
    }
}

/// What an actuator reports back for an [`ActRequest`](crate::ActRequest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionResult {
    /// The request answered.
    pub id: ActionId,
    /// `Ok` if the action was carried out; `Err` with the reason if it
    /// was not (an actuator that fails must leave the world unchanged).
    pub outcome: Result<(), String>,
}

/// Everything the loop takes in.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A telemetry sample.
    Sample(Sample),
    /// A node's whole report.
    Telemetry(Telemetry),
    /// An event, with when it happened.
    Event {
        /// When.
        at: Time,
        /// What.
        event: Event,
    },
    /// An actuator's answer.
    ActionResult(ActionResult),
}

/// Why an input was refused. The loop's state is unchanged by a refused
/// input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InputError {
    /// The value is NaN, infinite or outside the metric's range.
    #[error("{metric} sample of {value} is outside 0 to {max}; the reporter is broken")]
    OutOfRange {
        /// The metric kind.
        metric: &'static str,
        /// The value given.
        value: f64,
        /// The largest allowed.
        max: f64,
    },
    /// The sample is dated too far ahead of `now`.
    #[error(
        "sample dated {ahead_ms} ms after now; the limit is {limit_ms} ms: check the reporter's clock"
    )]
    FromTheFuture {
        /// How far ahead.
        ahead_ms: u64,
        /// The limit.
        limit_ms: u64,
    },
    /// The sample is older than the newest one of its series (a report:
    /// older than the node's newest sample).
    #[error("sample is older than the newest of its series; samples of a series must be in order")]
    OutOfOrder,
    /// A report carries too many values.
    #[error("report carries {count} values; the limit is {limit}")]
    TooManyValues {
        /// How many.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A node reported on itself as its own peer.
    #[error("a node cannot be its own peer")]
    SelfPeer,
    /// A component name breaks the rules.
    #[error(
        "component name {name:?} is invalid: use 1 to 32 of a-z 0-9 _ -, starting with a letter"
    )]
    BadComponent {
        /// The name (cut short).
        name: String,
    },
    /// An action result answers no request in flight (unknown, already
    /// answered, or timed out).
    #[error("no action {id} is awaiting a result (unknown, answered already, or timed out)")]
    UnknownAction {
        /// The id given.
        id: String,
    },
}

/// What an incident or an action is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Target {
    /// A node.
    Node(NodeId),
    /// The link between two nodes (`a < b`; use [`Target::link`]).
    Link(NodeId, NodeId),
    /// A component of a node.
    Component(NodeId, Component),
    /// The whole mesh (a fault with no single place).
    Network,
}

impl Target {
    /// The link between `a` and `b`, in canonical order.
    pub fn link(a: NodeId, b: NodeId) -> Target {
        if a <= b {
            Target::Link(a, b)
        } else {
            Target::Link(b, a)
        }
    }

    /// The nodes an action on this target touches (none for the network).
    pub fn nodes(&self) -> Vec<NodeId> {
        match self {
            Target::Node(n) | Target::Component(n, _) => vec![*n],
            Target::Link(a, b) => vec![*a, *b],
            Target::Network => Vec::new(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Node(n) => write!(f, "node:{n}"),
            Target::Link(a, b) => write!(f, "link:{a}-{b}"),
            Target::Component(n, c) => write!(f, "component:{n}/{c}"),
            Target::Network => f.write_str("network"),
        }
    }
}

fn parse_node(s: &str) -> Result<NodeId, String> {
    s.parse::<NodeId>().map_err(|e| {
        format!(
            "{:?} is not a node id: {e}",
            s.chars().take(60).collect::<String>()
        )
    })
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() > 256 {
            return Err("a target is at most 256 bytes".into());
        }
        if s == "network" {
            return Ok(Target::Network);
        }
        if let Some(n) = s.strip_prefix("node:") {
            return Ok(Target::Node(parse_node(n)?));
        }
        if let Some(l) = s.strip_prefix("link:") {
            let (a, b) = l
                .split_once('-')
                .ok_or_else(|| format!("{s:?}: a link is link:<node>-<node>"))?;
            return Ok(Target::link(parse_node(a)?, parse_node(b)?));
        }
        if let Some(c) = s.strip_prefix("component:") {
            let (n, name) = c
                .split_once('/')
                .ok_or_else(|| format!("{s:?}: a component is component:<node>/<name>"))?;
            return Ok(Target::Component(
                parse_node(n)?,
                Component::new(name).map_err(|e| e.to_string())?,
            ));
        }
        Err(format!(
            "{:?} is not a target: expected node:, link:, component: or network",
            s.chars().take(60).collect::<String>()
        ))
    }
}

impl TryFrom<String> for Target {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Target> for String {
    fn from(t: Target) -> String {
        t.to_string()
    }
}

macro_rules! named_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant,)*
        }

        impl $name {
            /// Every value, in order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The snake_case name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)*
                    _ => Err(format!(
                        "{:?} is not {}; expected one of: {}",
                        s.chars().take(40).collect::<String>(),
                        $what,
                        [$($text),*].join(", ")
                    )),
                }
            }
        }
    };
}

named_enum!(
    /// What kind of fault an incident is.
    IncidentKind, "an incident kind" {
        /// A node stopped reporting (and its neighbours lost it).
        NodeDown = "node_down",
        /// A link loses packets or is slow, or died while both ends live.
        LinkDegraded = "link_degraded",
        /// A node's CPU or memory is too high.
        Overload = "overload",
        /// A node sends announcements whose signatures do not verify.
        ForgedAnnouncements = "forged_announcements",
        /// Several nodes became unreachable together (one cut).
        Partition = "partition",
        /// Several links or nodes failed together around one node, or many
        /// nodes at once: one cause.
        SharedCause = "shared_cause",
        /// A node's route count dropped.
        RouteLoss = "route_loss",
        /// A supervised component stopped or fails.
        ComponentFailure = "component_failure",
    }
);

named_enum!(
    /// How bad an incident is.
    Severity, "a severity" {
        /// A statistical anomaly below the static limits.
        Minor = "minor",
        /// A static limit is crossed, or a node or link is lost.
        Major = "major",
        /// A critical limit is crossed, a partition, or an attack.
        Critical = "critical",
    }
);

named_enum!(
    /// What the loop can do.
    ActionKind, "an action" {
        /// Raise a link's cost to infinity so routes avoid it.
        DrainLink = "drain_link",
        /// Undo [`ActionKind::DrainLink`].
        UndrainLink = "undrain_link",
        /// Make the target's routes be selected again now.
        ForceReroute = "force_reroute",
        /// Revoke the node through the control plane.
        QuarantineNode = "quarantine_node",
        /// Restart a supervised process.
        RestartProcess = "restart_process",
        /// Issue the node new credentials.
        RotateCredentials = "rotate_credentials",
        /// Rate-limit the node's traffic.
        ShedLoad = "shed_load",
        /// Undo [`ActionKind::ShedLoad`].
        RestoreLoad = "restore_load",
    }
);

impl ActionKind {
    /// The action that undoes this one, if it can be undone.
    pub fn inverse(self) -> Option<ActionKind> {
        match self {
            ActionKind::DrainLink => Some(ActionKind::UndrainLink),
            ActionKind::UndrainLink => Some(ActionKind::DrainLink),
            ActionKind::ShedLoad => Some(ActionKind::RestoreLoad),
            ActionKind::RestoreLoad => Some(ActionKind::ShedLoad),
            ActionKind::ForceReroute
            | ActionKind::QuarantineNode
            | ActionKind::RestartProcess
            | ActionKind::RotateCredentials => None,
        }
    }

    /// Whether the action can act on `target`.
    pub fn applies_to(self, target: &Target) -> bool {
        match self {
            ActionKind::DrainLink | ActionKind::UndrainLink => matches!(target, Target::Link(..)),
            ActionKind::ForceReroute => true,
            ActionKind::QuarantineNode
            | ActionKind::RotateCredentials
            | ActionKind::ShedLoad
            | ActionKind::RestoreLoad => matches!(target, Target::Node(_)),
            ActionKind::RestartProcess => {
                matches!(target, Target::Node(_) | Target::Component(..))
            }
        }
    }
}

named_enum!(
    /// Which detector produced a piece of evidence.
    Detector, "a detector" {
        /// A static limit.
        Threshold = "threshold",
        /// An EWMA z-score.
        Ewma = "ewma_z",
        /// A CUSUM change point.
        Cusum = "cusum",
        /// A MAD outlier against the node's peers.
        Mad = "mad",
        /// A node that stopped reporting.
        Silence = "silence",
        /// Events reported by nodes (dead neighbours, refusals, component
        /// stops).
        Reports = "reports",
    }
);

/// One piece of evidence: what was measured and what a detector made of
/// it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// When the measurement was taken.
    pub at: Time,
    /// What it is about.
    pub subject: Target,
    /// The metric (`cpu`, `link_loss`, ... or `liveness`, `refusals`).
    pub metric: String,
    /// The detector.
    pub detector: Detector,
    /// The measured value.
    pub value: f64,
    /// The detector's statistic (z, CUSUM sum, robust z, or the value).
    pub score: f64,
    /// The limit the statistic crossed.
    pub limit: f64,
}
