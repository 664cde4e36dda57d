//! The server's TLS policy: TLS 1.3 only; X25519MLKEM768 only unless the
//! operator allows classical groups; the ML-DSA-65 certificate for clients
//! that can verify it and the ECDSA P-256 one for the rest; client
//! certificates (node SVIDs) optional at the TLS layer and checked against
//! the trust bundle when given.

use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::aws_lc_rs::kx_group;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, NamedGroup, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use weft_crypto::tls::SpiffePeerVerifier;

use crate::error::ControlError;
use crate::pki::ServerCerts;

/// Which of the server's certificates a client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertChoice {
    /// The ML-DSA-65 chain (weft agents and the weft CLI).
    MlDsa65,
    /// The ECDSA P-256 chain (browsers, curl, Prometheus).
    EcdsaP256,
}

impl CertChoice {
    /// The choice for a ClientHello's signature schemes: ML-DSA-65 when the
    /// client can verify it, ECDSA otherwise.
    pub fn for_schemes(schemes: &[SignatureScheme]) -> Self {
        if schemes.contains(&SignatureScheme::ML_DSA_65) {
            CertChoice::MlDsa65
        } else {
            CertChoice::EcdsaP256
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CertChoice::MlDsa65 => "ml-dsa-65",
            CertChoice::EcdsaP256 => "ecdsa-p256",
        }
    }
}

/// Presents the ML-DSA-65 chain when the ClientHello's signature schemes
/// include ML-DSA-65, and the ECDSA P-256 chain otherwise. The certificates
/// can be replaced while the server runs (renewal).
#[derive(Debug)]
pub struct CertResolver {
    certs: RwLock<ServerCerts>,
}

impl CertResolver {
    /// A resolver presenting `certs`.
    pub fn new(certs: ServerCerts) -> Arc<Self> {
        Arc::new(Self {
            certs: RwLock::new(certs),
        })
    }

    /// Replaces the certificates (new handshakes get the new ones).
    pub fn replace(&self, certs: ServerCerts) {
        *self.certs.write().unwrap_or_else(|e| e.into_inner()) = certs;
    }

    /// The certificates presented now.
    pub fn current(&self) -> ServerCerts {
        self.certs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.read().unwrap_or_else(|e| e.into_inner());
        Some(
            match CertChoice::for_schemes(client_hello.signature_schemes()) {
                CertChoice::MlDsa65 => certs.mldsa.clone(),
                CertChoice::EcdsaP256 => certs.ecdsa.clone(),
            },
        )
    }
}

/// Asks for a client certificate without requiring one: agents present
/// their SVID (verified against the trust bundle, ML-DSA-65 handshake
/// signatures only); operators and standard tools present none and
/// authenticate with bearer tokens.
#[derive(Debug)]
pub struct OptionalSvidVerifier(pub Arc<SpiffePeerVerifier>);

impl ClientCertVerifier for OptionalSvidVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        ClientCertVerifier::root_hint_subjects(self.0.as_ref())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ClientCertVerifier::verify_tls12_signature(self.0.as_ref(), message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ClientCertVerifier::verify_tls13_signature(self.0.as_ref(), message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ClientCertVerifier::supported_verify_schemes(self.0.as_ref())
    }
}

/// Whether a negotiated group is post-quantum (hybrid).
pub fn is_post_quantum(group: NamedGroup) -> bool {
    group == NamedGroup::X25519MLKEM768
}

/// The name of a group for logs and metrics.
pub fn group_name(group: NamedGroup) -> String {
    match group {
        NamedGroup::X25519MLKEM768 => "X25519MLKEM768".into(),
        NamedGroup::X25519 => "X25519".into(),
        NamedGroup::secp256r1 => "secp256r1".into(),
        NamedGroup::secp384r1 => "secp384r1".into(),
        other => format!("{other:?}"),
    }
}

/// The server's TLS configurations, chosen per connection from the
/// ClientHello.
#[derive(Debug, Clone)]
pub struct TlsConfigs {
    /// X25519MLKEM768 only.
    pub post_quantum: Arc<ServerConfig>,
    /// Also X25519, P-256 and P-384: only with `--allow-classical-kex`.
    pub classical: Option<Arc<ServerConfig>>,
}

impl TlsConfigs {
    /// The configuration for a client offering `groups`: a client that
    /// offers X25519MLKEM768 always gets it (rustls would otherwise follow
    /// the client's order and could settle on a classical group it listed
    /// first); a client that does not is refused, unless classical groups
    /// are allowed.
    pub fn for_groups(&self, groups: Option<&[NamedGroup]>) -> Arc<ServerConfig> {
        let offers_pq = groups.is_some_and(|g| g.contains(&NamedGroup::X25519MLKEM768));
        match &self.classical {
            Some(classical) if !offers_pq => classical.clone(),
            _ => self.post_quantum.clone(),
        }
    }
}

fn config(
    resolver: Arc<CertResolver>,
    clients: Arc<SpiffePeerVerifier>,
    classical: bool,
) -> Result<Arc<ServerConfig>, ControlError> {
    let mut provider = weft_crypto::tls::pq_provider();
    if classical {
        provider
            .kx_groups
            .extend([kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1]);
    }
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(OptionalSvidVerifier(clients)))
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The server configurations: TLS 1.3, X25519MLKEM768 (plus X25519, P-256
/// and P-384 for clients that offer no hybrid group, when
/// `allow_classical_kex`), HTTP/2 and HTTP/1.1 by ALPN, no session
/// resumption (a resumed session would skip the client certificate check).
pub fn server_configs(
    resolver: Arc<CertResolver>,
    clients: Arc<SpiffePeerVerifier>,
    allow_classical_kex: bool,
) -> Result<TlsConfigs, ControlError> {
    Ok(TlsConfigs {
        post_quantum: config(resolver.clone(), clients.clone(), false)?,
        classical: if allow_classical_kex {
            Some(config(resolver, clients, true)?)
        } else {
            None
        },
    })
}
