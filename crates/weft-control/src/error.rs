//! Errors of starting and running the control plane (request errors are
//! [`crate::problem::Problem`]s).

use weft_bus::BusError;
use weft_crypto::ca::CaError;
use weft_crypto::files::FileError;
use weft_crypto::tls::TlsError;
use weft_store::StoreError;

/// Why the control plane could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A setting is out of range.
    #[error("invalid setting {what}: {reason}")]
    Config {
        /// The setting.
        what: &'static str,
        /// The rule it breaks.
        reason: String,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The bus failed.
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    /// The CA failed.
    #[error("CA: {0}")]
    Ca(#[from] CaError),
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// TLS could not be configured.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// rustls refused a configuration or key.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// The data directory's contents disagree with the database.
    #[error("{0}")]
    Inconsistent(String),
    /// Encrypting or decrypting the CA key blob failed.
    #[error("CA key blob: {0}")]
    KeyBlob(String),
    /// A socket or file operation failed.
    #[error("{action} {what}: {error}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        what: String,
        /// The OS error.
        error: std::io::Error,
    },
}

impl ControlError {
    /// A [`ControlError::Config`].
    pub fn config(what: &'static str, reason: impl Into<String>) -> Self {
        Self::Config {
            what,
            reason: reason.into(),
        }
    }

    /// A [`ControlError::Io`].
    pub(crate) fn io(
        action: &'static str,
        what: impl std::fmt::Display,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.to_string();
        move |error| Self::Io {
            action,
            what,
            error,
        }
    }
}
