//! Trust bundles and X.509-SVID verification: chain (webpki), validity
//! window, the X509-SVID profile (spiffe/spiffe `standards/X509-SVID.md`)
//! and revoked serial numbers. Every rejection says exactly why.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, RwLock};

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::spiffe::{SpiffeId, SpiffeIdError, TrustDomain};

/// Most certificates accepted in one chain or bundle.
pub const MAX_CERTS: usize = 16;

/// Why a certificate, chain or bundle was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// No certificate was given.
    #[error("no certificate found (expected PEM \"CERTIFICATE\" blocks)")]
    NoCertificate,
    /// More certificates than [`MAX_CERTS`].
    #[error("{0} certificates given; at most {MAX_CERTS} are accepted")]
    TooManyCertificates(usize),
    /// PEM or DER that does not parse.
    #[error("certificate {index} does not parse: {reason}")]
    Malformed {
        /// 0-based position in the input.
        index: usize,
        /// Parser message.
        reason: String,
    },
    /// The certificate is not valid yet.
    #[error("certificate is not valid until {not_before} (now {now}); check the clocks")]
    NotYetValid {
        /// Start of validity, RFC 3339.
        not_before: String,
        /// Current time, RFC 3339.
        now: String,
    },
    /// The certificate has expired.
    #[error("certificate expired at {not_after} (now {now}); renew it")]
    Expired {
        /// End of validity, RFC 3339.
        not_after: String,
        /// Current time, RFC 3339.
        now: String,
    },
    /// Not exactly one URI SAN.
    #[error("an X509-SVID must have exactly one URI SAN; this certificate has {0}")]
    UriSanCount(usize),
    /// The URI SAN is not a SPIFFE ID.
    #[error("URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    BadSpiffeId {
        /// The URI.
        uri: String,
        /// The rule it broke.
        reason: SpiffeIdError,
    },
    /// The SPIFFE ID is in another trust domain.
    #[error("SPIFFE ID is in trust domain {found:?}, but this CA is for {expected:?}")]
    WrongTrustDomain {
        /// Trust domain of the certificate.
        found: String,
        /// Trust domain expected.
        expected: String,
    },
    /// A leaf with basicConstraints cA=true.
    #[error("leaf certificate has basicConstraints cA=true; an X509-SVID leaf must have cA=false")]
    LeafIsCa,
    /// A leaf without keyUsage digitalSignature.
    #[error("leaf certificate lacks keyUsage digitalSignature, which an X509-SVID leaf requires")]
    LeafNoDigitalSignature,
    /// A leaf allowed to sign certificates or CRLs.
    #[error(
        "leaf certificate has keyUsage keyCertSign or cRLSign, which an X509-SVID leaf must not have"
    )]
    LeafCanSign,
    /// A CA certificate that is not a CA.
    #[error("CA certificate {index} is not a CA: {reason}")]
    NotACa {
        /// 0-based position in the bundle.
        index: usize,
        /// What is missing.
        reason: &'static str,
    },
    /// The bundle mixes trust domains.
    #[error("bundle mixes trust domains {0:?} and {1:?}")]
    MixedTrustDomains(String, String),
    /// webpki refused the chain.
    #[error("chain does not verify against the trust bundle: {0}")]
    Chain(String),
    /// The serial is revoked.
    #[error("certificate serial {0} is revoked")]
    Revoked(String),
    /// The verifier's policy refused the SPIFFE ID.
    #[error("SPIFFE ID {id} is not authorized: {reason}")]
    Unauthorized {
        /// The peer's SPIFFE ID.
        id: String,
        /// Why.
        reason: String,
    },
}

fn parse_cert(der: &[u8], index: usize) -> Result<X509Certificate<'_>, SvidError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(SvidError::Malformed {
            index,
            reason: "trailing bytes after the certificate".into(),
        }),
        Err(e) => Err(SvidError::Malformed {
            index,
            reason: e.to_string(),
        }),
    }
}

/// Parses every `CERTIFICATE` block of a PEM text (at most [`MAX_CERTS`]).
pub fn certs_from_pem(text: &[u8]) -> Result<Vec<CertificateDer<'static>>, SvidError> {
    let blocks = pem::parse_many(text).map_err(|e| SvidError::Malformed {
        index: 0,
        reason: format!("not PEM: {e}"),
    })?;
    let certs: Vec<_> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(|b| CertificateDer::from(b.into_contents()))
        .collect();
    match certs.len() {
        0 => Err(SvidError::NoCertificate),
        n if n > MAX_CERTS => Err(SvidError::TooManyCertificates(n)),
        _ => Ok(certs),
    }
}

/// The single SPIFFE ID of a certificate's URI SAN, or why there is none.
fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            return Err(SvidError::Malformed {
                index: 0,
                reason: format!("subjectAltName: {e}"),
            });
        }
    };
    if uris.len() != 1 {
        return Err(SvidError::UriSanCount(uris.len()));
    }
    SpiffeId::parse(uris[0]).map_err(|reason| SvidError::BadSpiffeId {
        uri: uris[0].chars().take(256).collect(),
        reason,
    })
}

/// The SPIFFE ID of a DER certificate (its single URI SAN), without any
/// chain verification: use it only on certificates already verified, such
/// as a TLS peer's after the handshake.
pub fn spiffe_id_from_der(der: &[u8]) -> Result<SpiffeId, SvidError> {
    spiffe_id_of(&parse_cert(der, 0)?)
}

fn rfc3339(ts: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ts)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("unix {ts}"))
}

/// The CA certificates of one trust domain.
#[derive(Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    certs: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    public_keys: Vec<Vec<u8>>,
}

impl TrustBundle {
    /// Parses a PEM bundle. Every certificate must be a CA (basicConstraints
    /// cA=true, keyUsage keyCertSign) naming the same trust domain in its URI SAN.
    pub fn from_pem(text: &[u8]) -> Result<Self, SvidError> {
        Self::from_der(certs_from_pem(text)?)
    }

    /// Builds a bundle from DER certificates (see [`from_pem`](Self::from_pem)).
    pub fn from_der(certs: Vec<CertificateDer<'static>>) -> Result<Self, SvidError> {
        if certs.is_empty() {
            return Err(SvidError::NoCertificate);
        }
        if certs.len() > MAX_CERTS {
            return Err(SvidError::TooManyCertificates(certs.len()));
        }
        let mut trust_domain: Option<TrustDomain> = None;
        let mut anchors = Vec::with_capacity(certs.len());
        let mut public_keys = Vec::with_capacity(certs.len());
        for (index, der) in certs.iter().enumerate() {
            let cert = parse_cert(der, index)?;
            let not_ca = |reason| SvidError::NotACa { index, reason };
            match cert.basic_constraints() {
                Ok(Some(bc)) if bc.value.ca => {}
                _ => return Err(not_ca("basicConstraints cA is not true")),
            }
            match cert.key_usage() {
                Ok(Some(ku)) if ku.value.key_cert_sign() => {}
                _ => return Err(not_ca("keyUsage keyCertSign is not set")),
            }
            let id = spiffe_id_of(&cert)?;
            let td = id.trust_domain();
            match &trust_domain {
                Some(seen) if *seen != td => {
                    return Err(SvidError::MixedTrustDomains(
                        seen.to_string(),
                        td.to_string(),
                    ));
                }
                _ => trust_domain = Some(td),
            }
            public_keys.push(cert.public_key().subject_public_key.data.to_vec());
            let anchor = webpki::anchor_from_trusted_cert(der)
                .map_err(|e| SvidError::Malformed {
                    index,
                    reason: format!("{e:?}"),
                })?
                .to_owned();
            anchors.push(anchor);
        }
        let trust_domain = trust_domain.ok_or(SvidError::NoCertificate)?;
        Ok(Self {
            trust_domain,
            certs,
            anchors,
            public_keys,
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificates.
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// Whether one of the CA certificates carries this raw public key.
    pub fn holds_public_key(&self, raw: &[u8]) -> bool {
        self.public_keys.iter().any(|k| k == raw)
    }
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("certs", &self.certs.len())
            .finish()
    }
}

/// Serial numbers of revoked certificates, shared and updatable while
/// verifiers use it.
#[derive(Debug, Clone, Default)]
pub struct RevokedSerials(Arc<RwLock<HashSet<Vec<u8>>>>);

impl RevokedSerials {
    /// Marks a serial number revoked.
    pub fn revoke(&self, serial: &[u8]) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(serial.to_vec());
    }

    /// Whether a serial number is revoked.
    pub fn is_revoked(&self, serial: &[u8]) -> bool {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(serial)
    }
}

/// Which end of a TLS connection the certificate authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server (extendedKeyUsage serverAuth if EKUs are present).
    Server,
    /// A TLS client (extendedKeyUsage clientAuth if EKUs are present).
    Client,
}

/// What a successful verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSvid {
    /// The SPIFFE ID of the leaf.
    pub spiffe_id: SpiffeId,
    /// The leaf's serial number.
    pub serial: Vec<u8>,
    /// End of validity, unix seconds.
    pub not_after: i64,
}

/// Verifies X.509-SVIDs against a trust bundle and a revocation set.
#[derive(Debug, Clone)]
pub struct SvidVerifier {
    bundle: TrustBundle,
    revoked: RevokedSerials,
}

impl SvidVerifier {
    /// A verifier for `bundle` that refuses serials in `revoked`.
    pub fn new(bundle: TrustBundle, revoked: RevokedSerials) -> Self {
        Self { bundle, revoked }
    }

    /// The bundle.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// Verifies `chain` (leaf first, then any intermediates) at `now`.
    pub fn verify(
        &self,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> Result<VerifiedSvid, SvidError> {
        let (leaf_der, intermediates) = chain.split_first().ok_or(SvidError::NoCertificate)?;
        if chain.len() > MAX_CERTS {
            return Err(SvidError::TooManyCertificates(chain.len()));
        }
        let leaf = parse_cert(leaf_der, 0)?;
        let now_s = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);

        // Validity window first: it gives the most actionable message.
        let validity = leaf.validity();
        if now_s < validity.not_before.timestamp() {
            return Err(SvidError::NotYetValid {
                not_before: rfc3339(validity.not_before.timestamp()),
                now: rfc3339(now_s),
            });
        }
        if now_s > validity.not_after.timestamp() {
            return Err(SvidError::Expired {
                not_after: rfc3339(validity.not_after.timestamp()),
                now: rfc3339(now_s),
            });
        }

        // The X509-SVID leaf profile.
        let spiffe_id = spiffe_id_of(&leaf)?;
        if !spiffe_id.is_member_of(&self.bundle.trust_domain) {
            return Err(SvidError::WrongTrustDomain {
                found: spiffe_id.trust_domain_name().to_owned(),
                expected: self.bundle.trust_domain.to_string(),
            });
        }
        if let Ok(Some(bc)) = leaf.basic_constraints()
            && bc.value.ca
        {
            return Err(SvidError::LeafIsCa);
        }
        match leaf.key_usage() {
            Ok(Some(ku)) => {
                if !ku.value.digital_signature() {
                    return Err(SvidError::LeafNoDigitalSignature);
                }
                if ku.value.key_cert_sign() || ku.value.crl_sign() {
                    return Err(SvidError::LeafCanSign);
                }
            }
            _ => return Err(SvidError::LeafNoDigitalSignature),
        }

        // The chain: signatures, EKU, path to a root in the bundle.
        let ee = webpki::EndEntityCert::try_from(leaf_der)
            .map_err(|e| SvidError::Chain(describe_webpki(&e)))?;
        let algs = rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .all;
        let eku = match usage {
            Usage::Server => webpki::KeyUsage::server_auth(),
            Usage::Client => webpki::KeyUsage::client_auth(),
        };
        ee.verify_for_usage(
            algs,
            &self.bundle.anchors,
            intermediates,
            now,
            eku,
            None,
            None,
        )
        .map_err(|e| SvidError::Chain(describe_webpki(&e)))?;

        let serial = leaf.raw_serial().to_vec();
        if self.revoked.is_revoked(&serial) {
            return Err(SvidError::Revoked(crate::sign::hex(&serial)));
        }
        Ok(VerifiedSvid {
            spiffe_id,
            serial,
            not_after: validity.not_after.timestamp(),
        })
    }
}

fn describe_webpki(e: &webpki::Error) -> String {
    use webpki::Error as E;
    match e {
        E::UnknownIssuer => "not issued by a CA in the trust bundle".into(),
        E::InvalidSignatureForPublicKey => {
            "the CA signature on the certificate does not verify".into()
        }
        E::UnsupportedSignatureAlgorithmContext(_)
        | E::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            "signed with an algorithm weft does not accept".into()
        }
        E::RequiredEkuNotFoundContext(_) => {
            "extendedKeyUsage does not allow this use (serverAuth/clientAuth)".into()
        }
        other => format!("{other:?}"),
    }
}
