//! The agent side of enrollment: `weft agent enroll|claim|renew`.
//!
//! The agent makes its identity locally and never sends a private key. Its
//! data directory holds, in weft-crypto's file layout:
//!
//! | file | what |
//! |---|---|
//! | `node.key` | the node identity (composite ML-DSA-65 + Ed25519 and X-Wing), 0600 |
//! | `svid.key` | the SVID key (ML-DSA-65, PKCS#8), 0600 |
//! | `svid.pem` | the X.509-SVID, once approved |
//! | `bundle.pem` | the CA bundle |
//! | `enrollment.json` | the control plane's URL and the mesh settings |
//! | `network.json` | the network's members, from [`update_network_file`] |
//!
//! which is where `weft agent run` looks for them.

use std::path::{Path, PathBuf};

use aws_lc_rs::signature::PqdsaKeyPair;
use data_encoding::BASE64;
use rustls_pki_types::UnixTime;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use weft_crypto::NodeIdentity;
use weft_crypto::ca::{CertKey, SvidAlgorithm, layout};
use weft_crypto::files::{read_public_file, write_file_atomic, write_secret_file};
use weft_crypto::svid::{RevokedSerials, SvidVerifier, TrustBundle, Usage, certs_from_pem};
use weft_crypto::tls::SvidCredentials;

use crate::api::{ClaimRequest, EnrollRequest, EnrollResponse, MeshSettings};
use crate::client::{ClientError, ControlClient, Trust};
use crate::proof;

/// The identity key file.
pub const IDENTITY_FILE: &str = "node.key";
/// The enrollment state file.
pub const STATE_FILE: &str = "enrollment.json";
/// Largest state file read.
const MAX_STATE_FILE: u64 = 64 * 1024;
/// The network file (the members' keys), as `weft agent run` reads it.
pub const NETWORK_FILE: &str = "network.json";

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The control plane refused or could not be reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A key or file problem.
    #[error("{0}")]
    Local(String),
    /// The data directory already holds an enrolled node.
    #[error(
        "{dir} already holds an enrolled node ({node_id}); use another --data-dir, or remove it to enroll a new identity"
    )]
    AlreadyEnrolled {
        /// The directory.
        dir: String,
        /// The node.
        node_id: String,
    },
    /// What the server returned does not check out.
    #[error("the control plane's answer is refused: {0}")]
    BadAnswer(String),
}

fn local(e: impl std::fmt::Display) -> AgentError {
    AgentError::Local(e.to_string())
}

/// What the agent keeps between runs (`enrollment.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentState {
    /// The control plane's URL.
    pub control_url: String,
    /// `pending` or `approved` (as last seen).
    pub status: String,
    /// The SVID's end of validity (RFC 3339), if it holds one.
    pub svid_not_after: Option<String>,
    /// The mesh settings from enrollment.
    pub settings: MeshSettings,
}

/// The files of an agent's data directory.
#[derive(Debug, Clone)]
pub struct AgentPaths {
    /// The directory.
    pub dir: PathBuf,
}

impl AgentPaths {
    /// Paths under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// `node.key`.
    pub fn identity(&self) -> PathBuf {
        self.dir.join(IDENTITY_FILE)
    }

    /// The directory of the SVID files (the data directory itself).
    pub fn svid_dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// `svid.key`.
    pub fn svid_key(&self) -> PathBuf {
        self.svid_dir().join(layout::SVID_KEY)
    }

    /// `svid.pem`.
    pub fn svid_cert(&self) -> PathBuf {
        self.svid_dir().join(layout::SVID_CERT)
    }

    /// `bundle.pem`.
    pub fn bundle(&self) -> PathBuf {
        self.svid_dir().join(layout::BUNDLE)
    }

    /// `enrollment.json`.
    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Reads `enrollment.json`.
    pub fn load_state(&self) -> Result<AgentState, AgentError> {
        let path = self.state();
        let bytes = read_public_file(&path, MAX_STATE_FILE).map_err(|e| {
            AgentError::Local(format!(
                "{e}; enroll first with weft agent enroll --data-dir {}",
                self.dir.display()
            ))
        })?;
        serde_json::from_slice(&bytes).map_err(|e| {
            AgentError::Local(format!("{}: not an agent state file: {e}", path.display()))
        })
    }

    fn save_state(&self, state: &AgentState) -> Result<(), AgentError> {
        let text = serde_json::to_vec_pretty(state).map_err(local)?;
        write_file_atomic(&self.state(), &text, 0o644, true).map_err(local)
    }

    /// The trust in the control plane recorded at enrollment (the bundle).
    pub fn trust(&self) -> Result<Trust, AgentError> {
        Ok(Trust::Bundle(
            read_public_file(&self.bundle(), weft_crypto::ca::MAX_PEM_FILE_LEN).map_err(local)?,
        ))
    }
}

fn make_dir(dir: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| AgentError::Local(format!("cannot create {}: {e}", dir.display())))
}

/// Loads the identity, or makes one.
fn identity(paths: &AgentPaths) -> Result<NodeIdentity, AgentError> {
    let path = paths.identity();
    if path.exists() {
        NodeIdentity::load(&path).map_err(local)
    } else {
        let id = NodeIdentity::generate().map_err(local)?;
        id.save(&path, false).map_err(local)?;
        Ok(id)
    }
}

/// Loads the SVID key, or makes one.
fn svid_key(paths: &AgentPaths) -> Result<(PqdsaKeyPair, Vec<u8>), AgentError> {
    let path = paths.svid_key();
    let key = if path.exists() {
        let pem = weft_crypto::files::read_secret_file(&path, weft_crypto::ca::MAX_PEM_FILE_LEN)
            .map_err(local)?;
        CertKey::from_pkcs8_pem(&pem, SvidAlgorithm::MlDsa65, &path.display().to_string())
            .map_err(local)?
    } else {
        make_dir(&paths.svid_dir())?;
        let key = CertKey::generate(SvidAlgorithm::MlDsa65).map_err(local)?;
        write_secret_file(&path, key.to_pkcs8_pem().map_err(local)?.as_bytes(), false)
            .map_err(local)?;
        key
    };
    match key {
        CertKey::MlDsa65 { pair, public } => Ok((pair, public)),
        CertKey::EcdsaP256(_) => Err(AgentError::Local(format!(
            "{} is not an ML-DSA-65 key",
            path.display()
        ))),
    }
}

/// Checks an SVID from the server: it verifies against the bundle, names
/// the node, and carries the agent's SVID key; then writes it.
fn accept_svid(
    paths: &AgentPaths,
    svid_pem: &str,
    bundle_pem: &str,
    settings: &MeshSettings,
    public_key: &[u8],
) -> Result<OffsetDateTime, AgentError> {
    let bundle = TrustBundle::from_pem(bundle_pem.as_bytes())
        .map_err(|e| AgentError::BadAnswer(format!("CA bundle: {e}")))?;
    let chain = certs_from_pem(svid_pem.as_bytes())
        .map_err(|e| AgentError::BadAnswer(format!("SVID: {e}")))?;
    let verified = SvidVerifier::new(bundle, RevokedSerials::default())
        .verify(&chain, UnixTime::now(), Usage::Client)
        .map_err(|e| AgentError::BadAnswer(format!("SVID: {e}")))?;
    if verified.spiffe_id.as_str() != settings.spiffe_id {
        return Err(AgentError::BadAnswer(format!(
            "the SVID names {} but the node is {}",
            verified.spiffe_id, settings.spiffe_id
        )));
    }
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| AgentError::BadAnswer(format!("SVID: {e}")))?;
    if cert.public_key().subject_public_key.data.as_ref() != public_key {
        return Err(AgentError::BadAnswer(
            "the SVID does not carry this agent's SVID key".into(),
        ));
    }
    write_file_atomic(&paths.bundle(), bundle_pem.as_bytes(), 0o644, true).map_err(local)?;
    write_file_atomic(&paths.svid_cert(), svid_pem.as_bytes(), 0o644, true).map_err(local)?;
    OffsetDateTime::from_unix_timestamp(verified.not_after).map_err(local)
}

fn record(
    paths: &AgentPaths,
    control_url: &str,
    answer: &EnrollResponse,
    public_key: &[u8],
) -> Result<AgentState, AgentError> {
    let not_after = match &answer.svid_pem {
        Some(svid) => Some(accept_svid(
            paths,
            svid,
            &answer.ca_bundle_pem,
            &answer.settings,
            public_key,
        )?),
        None => {
            write_file_atomic(
                &paths.bundle(),
                answer.ca_bundle_pem.as_bytes(),
                0o644,
                true,
            )
            .map_err(local)?;
            None
        }
    };
    let state = AgentState {
        control_url: control_url.to_owned(),
        status: answer.node.status.clone(),
        svid_not_after: not_after.map(crate::api::rfc3339),
        settings: answer.settings.clone(),
    };
    paths.save_state(&state)?;
    Ok(state)
}

/// The enrollment request for `identity` and its SVID key, with both
/// proofs of possession.
pub fn enroll_request(
    identity: &NodeIdentity,
    svid_key: &PqdsaKeyPair,
    svid_public: &[u8],
    token: &str,
) -> Result<EnrollRequest, AgentError> {
    let identity_pk = identity.signing_key().public_key().as_bytes().to_vec();
    let kem_pk = identity.kem_key().encapsulation_key().to_bytes();
    let message = proof::enroll_message(token, &identity_pk, svid_public, &kem_pk);
    let (signature, svid_sig) = proof::sign(
        identity.signing_key(),
        svid_key,
        &message,
        proof::ENROLL_CONTEXT,
    )
    .map_err(local)?;
    Ok(EnrollRequest {
        token: token.to_owned(),
        identity_public_key: BASE64.encode(&identity_pk),
        svid_public_key: BASE64.encode(svid_public),
        kem_public_key: BASE64.encode(&kem_pk),
        signature: BASE64.encode(&signature),
        svid_key_signature: BASE64.encode(&svid_sig),
    })
}

/// Enrolls this agent with `token`: makes (or reuses) its identity and
/// SVID key in `data_dir`, proves possession of both, and records the
/// answer (the SVID when approved at once).
pub async fn enroll(
    control_url: &str,
    token: &str,
    trust: Trust,
    data_dir: &Path,
) -> Result<AgentState, AgentError> {
    let paths = AgentPaths::new(data_dir);
    if let Ok(state) = paths.load_state() {
        return Err(AgentError::AlreadyEnrolled {
            dir: data_dir.display().to_string(),
            node_id: state.settings.node_id,
        });
    }
    make_dir(data_dir)?;
    let id = identity(&paths)?;
    let (svid_key, svid_public) = svid_key(&paths)?;
    let request = enroll_request(&id, &svid_key, &svid_public, token)?;
    let client = ControlClient::new(control_url, trust.clone(), None, None)?;
    let answer = client.enroll(&request).await?;
    trust.accepts_bundle(&answer.ca_bundle_pem)?;
    if answer.settings.node_id != id.node_id().to_string() {
        return Err(AgentError::BadAnswer(format!(
            "enrolled node {} but this agent is {}",
            answer.settings.node_id,
            id.node_id()
        )));
    }
    record(&paths, client.base(), &answer, &svid_public)
}

/// Claims the SVID of a node that enrolled pending and was approved since.
pub async fn claim(data_dir: &Path) -> Result<AgentState, AgentError> {
    let paths = AgentPaths::new(data_dir);
    let state = paths.load_state()?;
    let id = NodeIdentity::load(&paths.identity()).map_err(local)?;
    let (svid_key, svid_public) = svid_key(&paths)?;
    let identity_pk = id.signing_key().public_key().as_bytes().to_vec();
    let issued_at = OffsetDateTime::now_utc().unix_timestamp();
    let message = proof::claim_message(issued_at, &identity_pk, &svid_public);
    let (signature, svid_sig) =
        proof::sign(id.signing_key(), &svid_key, &message, proof::CLAIM_CONTEXT).map_err(local)?;
    let client = ControlClient::new(&state.control_url, paths.trust()?, None, None)?;
    let answer = client
        .claim(&ClaimRequest {
            identity_public_key: BASE64.encode(&identity_pk),
            svid_public_key: BASE64.encode(&svid_public),
            issued_at,
            signature: BASE64.encode(&signature),
            svid_key_signature: BASE64.encode(&svid_sig),
        })
        .await?;
    paths.trust()?.accepts_bundle(&answer.ca_bundle_pem)?;
    record(&paths, &state.control_url, &answer, &svid_public)
}

/// Fetches the network's members over mTLS with the node's SVID and
/// writes them to `network.json` in the data directory (atomically) when
/// they differ from what is there; returns whether the file changed.
pub async fn update_network_file(data_dir: &Path) -> Result<bool, AgentError> {
    let paths = AgentPaths::new(data_dir);
    let state = paths.load_state()?;
    let creds = SvidCredentials::load(&paths.svid_dir()).map_err(local)?;
    let client = ControlClient::new(&state.control_url, paths.trust()?, Some(creds), None)?;
    let json = client.fetch_members(&state.settings.network).await?;
    let path = data_dir.join(NETWORK_FILE);
    if std::fs::read(&path).is_ok_and(|old| old == json.as_bytes()) {
        return Ok(false);
    }
    write_file_atomic(&path, json.as_bytes(), 0o644, true).map_err(local)?;
    Ok(true)
}

/// Renews the SVID over mTLS with the current one (same key).
pub async fn renew(data_dir: &Path) -> Result<AgentState, AgentError> {
    let paths = AgentPaths::new(data_dir);
    let mut state = paths.load_state()?;
    let creds = SvidCredentials::load(&paths.svid_dir()).map_err(local)?;
    let (_, svid_public) = svid_key(&paths)?;
    let client = ControlClient::new(&state.control_url, paths.trust()?, Some(creds), None)?;
    let answer = client.renew().await?;
    paths.trust()?.accepts_bundle(&answer.ca_bundle_pem)?;
    let not_after = accept_svid(
        &paths,
        &answer.svid_pem,
        &answer.ca_bundle_pem,
        &state.settings,
        &svid_public,
    )?;
    state.status = "approved".into();
    state.svid_not_after = Some(crate::api::rfc3339(not_after));
    paths.save_state(&state)?;
    Ok(state)
}
