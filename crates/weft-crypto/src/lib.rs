//! weft's post-quantum identity core.
//!
//! - [`kem`]: X-Wing hybrid KEM (X25519 + ML-KEM-768).
//! - [`sign`]: composite ML-DSA-65 + Ed25519 signatures.
//! - [`identity`]: node identities, node ids and key files.
//! - [`spiffe`]: SPIFFE IDs and trust domains.
//! - [`ca`]: the trust-domain CA and X.509-SVIDs.
//! - [`tls`]: rustls configurations that speak only X25519MLKEM768 and
//!   authorize peers by SPIFFE ID.
//! - [`bench`]: `weft bench crypto`.
//!
//! No function here panics on input: every decoder is total and returns an
//! error that names what was wrong.

pub mod bench;
pub mod ca;
pub mod files;
pub mod identity;
pub mod kem;
pub mod sign;
pub mod spiffe;
pub mod svid;
pub mod tls;

pub use identity::{NodeId, NodeIdentity, NodePublicIdentity};
pub use spiffe::{SpiffeId, TrustDomain};
