//! weft's self-healing loop: a sans-IO MAPE-K core.
//!
//! - **Monitor** ([`monitor`]): bounded sliding windows of telemetry per
//!   node, link and component, and the events nodes report.
//! - **Analyze** ([`detect`], `analyze`): static thresholds, EWMA
//!   z-scores, CUSUM change points and MAD outliers against peers; failures
//!   correlated around a common neighbour (or fleet-wide) become one
//!   incident; incidents are deduplicated while open.
//! - **Plan** ([`policy`], `plan`): declarative TOML policies with
//!   preconditions, cooldowns and a blast-radius limit; candidates ranked
//!   by past outcomes from [`Knowledge`].
//! - **Execute** (`execute`, [`actuator`]): the engine emits
//!   [`Output::Act`] and takes [`Input::ActionResult`] back; every action is
//!   verified by re-measuring after a window and rolled back if it did not
//!   help; every step is an [`Output::Audit`] event.
//! - **Knowledge** ([`knowledge`]): incidents with full timelines and the
//!   outcome of every action, in memory or in `weft-store`.
//! - [`metrics`]: Prometheus metrics; [`bench`]: `weft bench heal`;
//!   [`sim`]: the loop driven by the simulator (`weft sim --heal`).
//!
//! The [`Engine`] is driven by `(now, input) -> outputs + next deadline`
//! ([`Engine::step`], or [`Engine::handle_input`] / [`Engine::handle_timeout`]
//! / [`Engine::poll_output`] / [`Engine::poll_timeout`]); it holds no
//! clock, thread or socket, so a tokio driver and the simulator run the
//! same code. See `docs/heal.md`.
#![forbid(unsafe_code)]

pub mod actuator;
mod analyze;
pub mod bench;
pub mod detect;
pub mod engine;
mod execute;
pub mod incident;
pub mod knowledge;
pub mod metrics;
pub mod model;
pub mod monitor;
mod plan;
pub mod policy;
pub mod query;
pub mod sim;
pub mod time;

pub use actuator::{Actuator, ActuatorError, answer};
pub use detect::{DetectorConfig, MetricConfig};
pub use engine::{
    ActRequest, AnalyzeConfig, AuditEvent, Config, ConfigError, Engine, EngineStats, ExecuteConfig,
    Output, StepResult,
};
pub use execute::{Level, addresses};
pub use incident::{ActionRecord, ActionStatus, Element, Incident, Phase, Step, TimelineEntry};
pub use knowledge::{Knowledge, KnowledgeError, MemoryKnowledge, Outcomes, StoreKnowledge};
pub use metrics::HealMetrics;
pub use model::{
    ActionId, ActionKind, ActionResult, Component, Detector, Event, Evidence, IncidentKind, Input,
    InputError, MAX_TELEMETRY_VALUES, Metric, MetricKind, Sample, Severity, Target, Telemetry,
};
pub use monitor::MonitorConfig;
pub use policy::{DEFAULT_POLICY, Policy, PolicyError, Precondition};
pub use time::Time;
pub use weft_store::{IncidentId, IncidentStatus};
