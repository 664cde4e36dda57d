//! rustls configurations for connections between weft components: TLS 1.3
//! only, X25519MLKEM768 only, ML-DSA-65 handshake signatures only, and the
//! peer authorized by the SPIFFE ID in its X.509-SVID.
//!
//! There is deliberately no switch to widen these: a peer that offers only
//! classical key exchange fails the handshake.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::aws_lc_rs::{self as provider, kx_group};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::ca::{MAX_PEM_FILE_LEN, layout};
use crate::files::{FileError, read_public_file, read_secret_file};
use crate::spiffe::SpiffeId;
use crate::svid::{SvidError, SvidVerifier, Usage, VerifiedSvid, certs_from_pem};

/// Errors building TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A credential file could not be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// A certificate file does not parse.
    #[error("{path}: {error}")]
    Certificate {
        /// The file.
        path: String,
        /// Why.
        error: SvidError,
    },
    /// The key file does not hold a usable key.
    #[error("{path}: {problem}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        problem: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The ML-DSA-65 signature verification algorithms, the only ones accepted
/// in handshakes between weft components.
static MLDSA65_ONLY: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[webpki::aws_lc_rs::ML_DSA_65],
    mapping: &[(SignatureScheme::ML_DSA_65, &[webpki::aws_lc_rs::ML_DSA_65])],
};

/// aws-lc-rs with TLS 1.3 suites and the X25519MLKEM768 group only.
pub fn pq_provider() -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![
            provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
            provider::cipher_suite::TLS13_AES_256_GCM_SHA384,
            provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![kx_group::X25519MLKEM768],
        ..provider::default_provider()
    }
}

/// An SVID certificate chain and its private key, ready for rustls.
#[derive(Debug)]
pub struct SvidCredentials {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 key of the leaf.
    pub key: PrivateKeyDer<'static>,
}

impl SvidCredentials {
    /// Loads `svid.pem` and `svid.key` (must be 0600) from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = dir.join(layout::SVID_CERT);
        let key_path = dir.join(layout::SVID_KEY);
        let cert_pem = read_public_file(&cert_path, MAX_PEM_FILE_LEN)?;
        let key_pem = read_secret_file(&key_path, MAX_PEM_FILE_LEN)?;
        Self::from_pem(&cert_pem, &key_pem).map_err(|e| match e {
            CredError::Cert(error) => TlsError::Certificate {
                path: cert_path.display().to_string(),
                error,
            },
            CredError::Key(problem) => TlsError::Key {
                path: key_path.display().to_string(),
                problem,
            },
        })
    }

    /// Parses a PEM chain and a PEM PKCS#8 key.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, CredError> {
        let chain = certs_from_pem(cert_pem).map_err(CredError::Cert)?;
        let block = pem::parse(key_pem).map_err(|e| CredError::Key(format!("not PEM: {e}")))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(CredError::Key(format!(
                "holds a \"{}\" block; expected \"PRIVATE KEY\" (PKCS#8)",
                block.tag()
            )));
        }
        let key = PrivateKeyDer::Pkcs8(block.into_contents().into());
        Ok(Self { chain, key })
    }
}

/// Why credentials in memory were refused.
#[derive(Debug, thiserror::Error)]
pub enum CredError {
    /// The certificate chain.
    #[error(transparent)]
    Cert(SvidError),
    /// The key.
    #[error("{0}")]
    Key(String),
}

/// Decides whether a verified peer may connect.
pub type Authorizer = Arc<dyn Fn(&SpiffeId) -> Result<(), String> + Send + Sync>;

/// Authorizes every SVID the trust bundle verifies.
pub fn any_in_trust_domain() -> Authorizer {
    Arc::new(|_| Ok(()))
}

/// Authorizes exactly the SPIFFE IDs listed.
pub fn only(ids: Vec<SpiffeId>) -> Authorizer {
    Arc::new(move |id| {
        if ids.contains(id) {
            Ok(())
        } else {
            Err("not in the list of allowed peers".into())
        }
    })
}

/// A rustls verifier (client and server side) that accepts a peer only
/// when its X.509-SVID verifies against the trust bundle, is not revoked,
/// and the [`Authorizer`] accepts its SPIFFE ID.
pub struct SpiffePeerVerifier {
    svids: SvidVerifier,
    authorize: Authorizer,
    root_hints: Vec<DistinguishedName>,
}

impl SpiffePeerVerifier {
    /// A verifier over `svids` with `authorize` as policy.
    pub fn new(svids: SvidVerifier, authorize: Authorizer) -> Arc<Self> {
        Arc::new(Self {
            svids,
            authorize,
            root_hints: Vec::new(),
        })
    }

    /// Verifies a peer chain and applies the policy.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> Result<VerifiedSvid, SvidError> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend(intermediates.iter().cloned());
        let verified = self.svids.verify(&chain, now, usage)?;
        (self.authorize)(&verified.spiffe_id).map_err(|reason| SvidError::Unauthorized {
            id: verified.spiffe_id.to_string(),
            reason,
        })?;
        Ok(verified)
    }

    fn check_rustls(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> Result<(), rustls::Error> {
        self.check(end_entity, intermediates, now, usage)
            .map(drop)
            .map_err(|e| {
                tracing::warn!(error = %e, "refused peer certificate");
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
            })
    }
}

impl fmt::Debug for SpiffePeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffePeerVerifier")
            .field("trust_domain", self.svids.bundle().trust_domain())
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for SpiffePeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // SVIDs name peers by SPIFFE ID, not DNS name: the policy decides.
        self.check_rustls(end_entity, intermediates, now, Usage::Server)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Unreachable in practice: the configurations below allow TLS 1.3 only.
        Err(rustls::Error::General(
            "TLS 1.2 is not allowed between weft components".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &MLDSA65_ONLY)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        MLDSA65_ONLY.supported_schemes()
    }
}

impl ClientCertVerifier for SpiffePeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.root_hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check_rustls(end_entity, intermediates, now, Usage::Client)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        MLDSA65_ONLY.supported_schemes()
    }
}

/// A server configuration: PQ only, client SVID required and checked by `peers`.
///
/// Session resumption is off: a resumed session skips certificate
/// verification, so a peer revoked after its first connection could come
/// back on its ticket. Every connection re-checks expiry and revocation.
pub fn server_config(
    creds: &SvidCredentials,
    peers: Arc<SpiffePeerVerifier>,
) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(pq_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(peers)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A client configuration: PQ only, presents its SVID, server checked by
/// `peers`; no session resumption (see [`server_config`]).
pub fn client_config(
    creds: &SvidCredentials,
    peers: Arc<SpiffePeerVerifier>,
) -> Result<ClientConfig, TlsError> {
    let mut config = ClientConfig::builder_with_provider(Arc::new(pq_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(peers)
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())?;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}
