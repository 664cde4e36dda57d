//! The boundary to the world: what carries actions out.
//!
//! The core never acts itself. It emits [`Output::Act`](crate::Output)
//! requests; the driver hands each to an [`Actuator`] and feeds the
//! answer back with [`answer`]. Real actuators live with the components
//! they act through (the agent's admin API for drain/undrain, reroute,
//! restart and shedding; the control plane for quarantine by revocation and
//! credential rotation); this crate defines only the contract.
//!
//! The contract: `act` returns `Ok(())` only once the change is made (a
//! drained link has cost infinity on both ends, a revocation is recorded,
//! a process was restarted), and `Err(reason)` only if nothing changed. It
//! must be idempotent per request id: a rollback may be requested again
//! after a restart. It never reports success for something it did not do;
//! whether the action *helped* is the loop's business, not the actuator's.

use std::future::Future;

use crate::engine::ActRequest;
use crate::model::{ActionResult, Input};

/// Why an actuator could not carry out an action; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ActuatorError {
    /// What failed, with the value, and what to do.
    pub reason: String,
}

impl ActuatorError {
    /// An error with this reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// Carries actions out.
pub trait Actuator: Send + Sync {
    /// Carries out `request` (see the module documentation for the
    /// contract).
    fn act(&self, request: &ActRequest) -> impl Future<Output = Result<(), ActuatorError>> + Send;
}

/// Runs `request` on `actuator` and returns the input that reports the
/// answer to the engine.
pub async fn answer<A: Actuator>(actuator: &A, request: &ActRequest) -> Input {
    let outcome = actuator.act(request).await.map_err(|e| e.reason);
    Input::ActionResult(ActionResult {
        id: request.id,
        outcome,
    })
}
