//! The trust-domain certificate authority: creates the CA, stores it in a
//! directory, and issues X.509-SVIDs (rcgen over aws-lc-rs).
//!
//! A CA directory holds two roots for the same trust domain:
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca.key` | ML-DSA-65 root: signs the SVIDs weft components use |
//! | `compat-ca.pem`, `compat-ca.key` | ECDSA P-256 root: signs `--compat` SVIDs for tools that cannot verify ML-DSA yet (browsers, curl, Prometheus) |
//! | `bundle.pem` | both roots: what peers trust |
//!
//! A compat SVID must chain to a classical root, or a client that cannot
//! verify ML-DSA would still fail on the CA's signature; that is why the
//! compat root exists. weft components trust it only where a standard tool
//! has to connect.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use aws_lc_rs::signature::{KeyPair as _, ML_DSA_65_SIGNING, PqdsaKeyPair};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ML_DSA_65, PublicKeyData, SanType,
    SerialNumber, SignatureAlgorithm, SigningKey,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::files::{
    FileError, read_public_file, read_secret_file, write_file_atomic, write_secret_file,
};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::svid::{SvidError, TrustBundle};

/// Default lifetime of an SVID.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(3600);
/// Default lifetime of a CA.
pub const DEFAULT_CA_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// SVIDs are back-dated by this much to tolerate clock skew between peers.
pub const BACKDATE: Duration = Duration::from_secs(60);
/// Largest certificate or key file read, in bytes.
pub const MAX_PEM_FILE_LEN: u64 = 1024 * 1024;

/// File names inside a CA directory.
pub mod layout {
    /// ML-DSA-65 root certificate.
    pub const CA_CERT: &str = "ca.pem";
    /// ML-DSA-65 root key (PKCS#8, 0600).
    pub const CA_KEY: &str = "ca.key";
    /// ECDSA P-256 compat root certificate.
    pub const COMPAT_CERT: &str = "compat-ca.pem";
    /// ECDSA P-256 compat root key (PKCS#8, 0600).
    pub const COMPAT_KEY: &str = "compat-ca.key";
    /// Both roots.
    pub const BUNDLE: &str = "bundle.pem";
    /// An SVID's certificate.
    pub const SVID_CERT: &str = "svid.pem";
    /// An SVID's key (PKCS#8, 0600).
    pub const SVID_KEY: &str = "svid.key";
}

/// Errors of the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// A PEM file holds something else than expected.
    #[error("{path}: {problem}")]
    BadFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The stored CA certificate does not verify as a CA.
    #[error(transparent)]
    Svid(#[from] SvidError),
    /// rcgen refused to build a certificate.
    #[error("cannot build certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// Key generation failed in aws-lc.
    #[error("cannot generate a {0} key (aws-lc failure)")]
    KeyGeneration(&'static str),
    /// A validity period that cannot be represented.
    #[error("validity period of {0:?} is out of range")]
    BadValidity(Duration),
    /// The CA's ML-DSA and compat roots disagree.
    #[error("{0}")]
    Inconsistent(String),
}

/// Signature algorithm of an issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvidAlgorithm {
    /// ML-DSA-65 (FIPS 204): the default, and the only one between weft components.
    MlDsa65,
    /// ECDSA P-256 with SHA-256, for standard tools that cannot verify ML-DSA yet.
    EcdsaP256,
}

impl fmt::Display for SvidAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MlDsa65 => "ML-DSA-65",
            Self::EcdsaP256 => "ECDSA-P256-SHA256",
        })
    }
}

/// A private key that can sign certificates: ML-DSA-65 through aws-lc-rs
/// directly (rcgen cannot load ML-DSA PKCS#8 keys back), ECDSA through rcgen.
pub enum CertKey {
    /// ML-DSA-65.
    MlDsa65 {
        /// The key pair.
        pair: PqdsaKeyPair,
        /// Its raw public key.
        public: Vec<u8>,
    },
    /// ECDSA P-256.
    EcdsaP256(rcgen::KeyPair),
}

impl CertKey {
    /// Generates a key for `alg`.
    pub fn generate(alg: SvidAlgorithm) -> Result<Self, CaError> {
        match alg {
            SvidAlgorithm::MlDsa65 => {
                let pair = PqdsaKeyPair::generate(&ML_DSA_65_SIGNING)
                    .map_err(|_| CaError::KeyGeneration("ML-DSA-65"))?;
                let public = pair.public_key().as_ref().to_vec();
                Ok(Self::MlDsa65 { pair, public })
            }
            SvidAlgorithm::EcdsaP256 => Ok(Self::EcdsaP256(rcgen::KeyPair::generate_for(
                &PKCS_ECDSA_P256_SHA256,
            )?)),
        }
    }

    /// Parses a PKCS#8 PEM key of algorithm `alg`.
    pub fn from_pkcs8_pem(
        pem_text: &[u8],
        alg: SvidAlgorithm,
        path: &str,
    ) -> Result<Self, CaError> {
        let bad = |problem: String| CaError::BadFile {
            path: path.to_owned(),
            problem,
        };
        let block = pem::parse(pem_text).map_err(|e| bad(format!("not a PEM key: {e}")))?;
        if block.tag() != "PRIVATE KEY" {
            return Err(bad(format!(
                "holds a \"{}\" block; expected \"PRIVATE KEY\" (PKCS#8)",
                block.tag()
            )));
        }
        match alg {
            SvidAlgorithm::MlDsa65 => {
                let pair = PqdsaKeyPair::from_pkcs8(&ML_DSA_65_SIGNING, block.contents())
                    .map_err(|e| bad(format!("not an ML-DSA-65 PKCS#8 key: {e}")))?;
                let public = pair.public_key().as_ref().to_vec();
                Ok(Self::MlDsa65 { pair, public })
            }
            SvidAlgorithm::EcdsaP256 => {
                let der = rustls_pki_types::PrivatePkcs8KeyDer::from(block.contents());
                rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &PKCS_ECDSA_P256_SHA256)
                    .map(Self::EcdsaP256)
                    .map_err(|e| bad(format!("not an ECDSA P-256 PKCS#8 key: {e}")))
            }
        }
    }

    /// The key as PKCS#8 PEM. Secret.
    pub fn to_pkcs8_pem(&self) -> Result<String, CaError> {
        match self {
            Self::MlDsa65 { pair, .. } => {
                let doc = pair
                    .to_pkcs8v1()
                    .map_err(|_| CaError::KeyGeneration("ML-DSA-65 PKCS#8"))?;
                Ok(pem::encode(&pem::Pem::new("PRIVATE KEY", doc.as_ref())))
            }
            Self::EcdsaP256(kp) => Ok(kp.serialize_pem()),
        }
    }

    /// Which algorithm this key signs with.
    pub fn svid_algorithm(&self) -> SvidAlgorithm {
        match self {
            Self::MlDsa65 { .. } => SvidAlgorithm::MlDsa65,
            Self::EcdsaP256(_) => SvidAlgorithm::EcdsaP256,
        }
    }
}

impl PublicKeyData for CertKey {
    fn der_bytes(&self) -> &[u8] {
        match self {
            Self::MlDsa65 { public, .. } => public,
            Self::EcdsaP256(kp) => kp.der_bytes(),
        }
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self {
            Self::MlDsa65 { .. } => &PKCS_ML_DSA_65,
            Self::EcdsaP256(_) => &PKCS_ECDSA_P256_SHA256,
        }
    }
}

impl SigningKey for CertKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        match self {
            Self::MlDsa65 { pair, .. } => {
                let mut sig = vec![0u8; crate::sign::MLDSA65_SIGNATURE_LEN];
                let n = pair
                    .sign(msg, &mut sig)
                    .map_err(|_| rcgen::Error::RingUnspecified)?;
                sig.truncate(n);
                Ok(sig)
            }
            Self::EcdsaP256(kp) => kp.sign(msg),
        }
    }
}

impl fmt::Debug for CertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertKey({})", self.svid_algorithm())
    }
}

/// One root of the CA: its certificate and key.
struct Root {
    cert_pem: String,
    key: CertKey,
}

/// Validity window of a certificate to issue.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Start (inclusive).
    pub not_before: OffsetDateTime,
    /// End (inclusive).
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From [`BACKDATE`] ago until `ttl` from now.
    pub fn starting_now(ttl: Duration) -> Result<Self, CaError> {
        let now = OffsetDateTime::now_utc();
        let ttl_t = time::Duration::try_from(ttl).map_err(|_| CaError::BadValidity(ttl))?;
        let not_after = now
            .checked_add(ttl_t)
            .filter(|t| t.year() <= 9999)
            .ok_or(CaError::BadValidity(ttl))?;
        Ok(Self {
            not_before: now - time::Duration::seconds(BACKDATE.as_secs() as i64),
            not_after,
        })
    }
}

/// A freshly issued SVID.
pub struct IssuedSvid {
    /// The SPIFFE ID in its URI SAN.
    pub spiffe_id: SpiffeId,
    /// Leaf certificate, PEM.
    pub cert_pem: String,
    /// Leaf certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// Leaf key, PKCS#8 PEM. Secret.
    pub key_pem: String,
    /// Serial number bytes.
    pub serial: Vec<u8>,
    /// Signature algorithm of the leaf.
    pub algorithm: SvidAlgorithm,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl IssuedSvid {
    /// Writes `svid.pem`, `svid.key` (0600) and `bundle.pem` into `dir`,
    /// replacing earlier ones (an SVID is meant to be renewed in place).
    pub fn save(&self, dir: &Path, bundle_pem: &str) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(|error| FileError::Io {
            action: "cannot create directory",
            path: dir.display().to_string(),
            error,
        })?;
        write_secret_file(&dir.join(layout::SVID_KEY), self.key_pem.as_bytes(), true)?;
        write_file_atomic(
            &dir.join(layout::SVID_CERT),
            self.cert_pem.as_bytes(),
            0o644,
            true,
        )?;
        write_file_atomic(
            &dir.join(layout::BUNDLE),
            bundle_pem.as_bytes(),
            0o644,
            true,
        )?;
        Ok(())
    }
}

impl fmt::Debug for IssuedSvid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("algorithm", &self.algorithm)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The certificate authority of one trust domain.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    mldsa: Root,
    compat: Root,
}

impl CertificateAuthority {
    /// Creates a CA for `trust_domain` valid for `ttl`: an ML-DSA-65 root and
    /// an ECDSA P-256 compat root.
    pub fn init(trust_domain: &TrustDomain, ttl: Duration) -> Result<Self, CaError> {
        let validity = Validity::starting_now(ttl)?;
        let make_root = |alg| -> Result<Root, CaError> {
            let key = CertKey::generate(alg)?;
            let params = ca_params(trust_domain, alg, validity)?;
            let cert = params.self_signed(&key)?;
            Ok(Root {
                cert_pem: cert.pem(),
                key,
            })
        };
        Ok(Self {
            trust_domain: trust_domain.clone(),
            mldsa: make_root(SvidAlgorithm::MlDsa65)?,
            compat: make_root(SvidAlgorithm::EcdsaP256)?,
        })
    }

    /// Writes the CA into `dir` (created if missing). Refuses to overwrite an
    /// existing CA: replacing a root silently would orphan every SVID.
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(|error| FileError::Io {
            action: "cannot create directory",
            path: dir.display().to_string(),
            error,
        })?;
        for name in [
            layout::CA_KEY,
            layout::COMPAT_KEY,
            layout::CA_CERT,
            layout::COMPAT_CERT,
        ] {
            if dir.join(name).exists() {
                return Err(FileError::Exists {
                    path: dir.join(name).display().to_string(),
                }
                .into());
            }
        }
        write_secret_file(
            &dir.join(layout::CA_KEY),
            self.mldsa.key.to_pkcs8_pem()?.as_bytes(),
            false,
        )?;
        write_secret_file(
            &dir.join(layout::COMPAT_KEY),
            self.compat.key.to_pkcs8_pem()?.as_bytes(),
            false,
        )?;
        write_file_atomic(
            &dir.join(layout::CA_CERT),
            self.mldsa.cert_pem.as_bytes(),
            0o644,
            false,
        )?;
        write_file_atomic(
            &dir.join(layout::COMPAT_CERT),
            self.compat.cert_pem.as_bytes(),
            0o644,
            false,
        )?;
        write_file_atomic(
            &dir.join(layout::BUNDLE),
            self.bundle_pem().as_bytes(),
            0o644,
            true,
        )?;
        Ok(())
    }

    /// Loads a CA directory written by [`save`](Self::save). Both roots must
    /// be valid CA certificates of the same trust domain; keys must be 0600.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let load_root =
            |cert_name: &str, key_name: &str, alg| -> Result<(Root, TrustDomain), CaError> {
                let cert_path = dir.join(cert_name);
                let cert_pem = read_public_file(&cert_path, MAX_PEM_FILE_LEN)?;
                let bundle = TrustBundle::from_pem(&cert_pem).map_err(|e| CaError::BadFile {
                    path: cert_path.display().to_string(),
                    problem: e.to_string(),
                })?;
                let key_path = dir.join(key_name);
                let key_pem = read_secret_file(&key_path, MAX_PEM_FILE_LEN)?;
                let key = CertKey::from_pkcs8_pem(&key_pem, alg, &key_path.display().to_string())?;
                let cert_pem = String::from_utf8(cert_pem).map_err(|_| CaError::BadFile {
                    path: cert_path.display().to_string(),
                    problem: "not UTF-8 text".into(),
                })?;
                if !bundle.holds_public_key(key.der_bytes()) {
                    return Err(CaError::Inconsistent(format!(
                        "{} does not match the certificate in {}",
                        key_path.display(),
                        cert_path.display()
                    )));
                }
                Ok((Root { cert_pem, key }, bundle.trust_domain().clone()))
            };
        let (mldsa, td) = load_root(layout::CA_CERT, layout::CA_KEY, SvidAlgorithm::MlDsa65)?;
        let (compat, td2) = load_root(
            layout::COMPAT_CERT,
            layout::COMPAT_KEY,
            SvidAlgorithm::EcdsaP256,
        )?;
        if td != td2 {
            return Err(CaError::Inconsistent(format!(
                "{} is for trust domain {td} but {} is for {td2}",
                layout::CA_CERT,
                layout::COMPAT_CERT
            )));
        }
        Ok(Self {
            trust_domain: td,
            mldsa,
            compat,
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// Both roots as PEM: the bundle peers trust.
    pub fn bundle_pem(&self) -> String {
        format!("{}{}", self.mldsa.cert_pem, self.compat.cert_pem)
    }

    /// The trust bundle.
    pub fn bundle(&self) -> Result<TrustBundle, CaError> {
        Ok(TrustBundle::from_pem(self.bundle_pem().as_bytes())?)
    }

    /// The root certificate (PEM) that signs SVIDs of `alg`.
    pub fn root_pem(&self, alg: SvidAlgorithm) -> &str {
        &self.root(alg).cert_pem
    }

    fn root(&self, alg: SvidAlgorithm) -> &Root {
        match alg {
            SvidAlgorithm::MlDsa65 => &self.mldsa,
            SvidAlgorithm::EcdsaP256 => &self.compat,
        }
    }

    /// Issues an SVID for `id` with a fresh key of `alg`.
    pub fn issue(
        &self,
        id: &SpiffeId,
        alg: SvidAlgorithm,
        validity: Validity,
    ) -> Result<IssuedSvid, CaError> {
        let key = CertKey::generate(alg)?;
        let cert = self.sign_leaf(id, &key, validity)?;
        Ok(IssuedSvid {
            spiffe_id: id.clone(),
            cert_pem: cert.0.pem(),
            cert_der: cert.0.der().clone(),
            key_pem: key.to_pkcs8_pem()?,
            serial: cert.1,
            algorithm: alg,
            not_after: validity.not_after,
        })
    }

    /// Issues a server SVID for `id` with a fresh key of `alg` that also
    /// names `dns_names` and `ips` in its subjectAltName, so standard TLS
    /// clients (browsers, curl, Prometheus) can check the host name while
    /// weft peers check the SPIFFE ID (an X509-SVID has exactly one URI SAN
    /// and may carry others).
    pub fn issue_server(
        &self,
        id: &SpiffeId,
        alg: SvidAlgorithm,
        validity: Validity,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
    ) -> Result<IssuedSvid, CaError> {
        let mut extra = Vec::with_capacity(dns_names.len() + ips.len());
        for name in dns_names {
            extra.push(SanType::DnsName(name.as_str().try_into()?));
        }
        extra.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let key = CertKey::generate(alg)?;
        let cert = self.sign_leaf_with_names(id, &key, validity, extra)?;
        Ok(IssuedSvid {
            spiffe_id: id.clone(),
            cert_pem: cert.0.pem(),
            cert_der: cert.0.der().clone(),
            key_pem: key.to_pkcs8_pem()?,
            serial: cert.1,
            algorithm: alg,
            not_after: validity.not_after,
        })
    }

    /// Signs a leaf certificate for `id` over `public_key` (the CSR path:
    /// the key never leaves its owner). Returns the certificate and its serial.
    pub fn sign_leaf(
        &self,
        id: &SpiffeId,
        public_key: &impl PublicKeyData,
        validity: Validity,
    ) -> Result<(rcgen::Certificate, Vec<u8>), CaError> {
        self.sign_leaf_with_names(id, public_key, validity, Vec::new())
    }

    fn sign_leaf_with_names(
        &self,
        id: &SpiffeId,
        public_key: &impl PublicKeyData,
        validity: Validity,
        extra_names: Vec<SanType>,
    ) -> Result<(rcgen::Certificate, Vec<u8>), CaError> {
        if !id.is_member_of(&self.trust_domain) {
            return Err(CaError::Svid(SvidError::WrongTrustDomain {
                found: id.trust_domain_name().to_owned(),
                expected: self.trust_domain.to_string(),
            }));
        }
        let alg = if public_key.algorithm() == &PKCS_ML_DSA_65 {
            SvidAlgorithm::MlDsa65
        } else {
            SvidAlgorithm::EcdsaP256
        };
        let root = self.root(alg);
        let issuer = Issuer::from_ca_cert_pem(&root.cert_pem, &root.key)?;
        let serial = random_serial()?;
        let mut params = CertificateParams::default();
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "weft");
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        params.subject_alt_names.extend(extra_names);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(public_key, &issuer)?;
        tracing::info!(
            spiffe_id = %id,
            serial = %crate::sign::hex(&serial),
            algorithm = %alg,
            not_after = %validity.not_after,
            "issued X.509-SVID"
        );
        Ok((cert, serial))
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn ca_params(
    td: &TrustDomain,
    alg: SvidAlgorithm,
    validity: Validity,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "weft");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("weft {td} CA ({alg})"));
    params.subject_alt_names = vec![SanType::URI(td.id().as_str().try_into()?)];
    // No intermediates: a root signs leaves directly.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// A random positive 16-byte serial number.
fn random_serial() -> Result<Vec<u8>, CaError> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| CaError::KeyGeneration("serial number"))?;
    // Positive and without a leading zero byte: DER INTEGER stays 16 bytes.
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(serial.to_vec())
}

/// Verifies the X.509-SVID in `svid_file` (PEM, leaf first) against the CA
/// in `ca_dir` (its `bundle.pem`) at the current time: chain, validity
/// window, the X509-SVID profile and the given revoked serials.
pub fn verify_svid_file(
    ca_dir: &Path,
    svid_file: &Path,
    revoked: &crate::svid::RevokedSerials,
) -> Result<crate::svid::VerifiedSvid, CaError> {
    let bundle_path = ca_dir.join(layout::BUNDLE);
    let bundle_pem = read_public_file(&bundle_path, MAX_PEM_FILE_LEN)?;
    let bundle = TrustBundle::from_pem(&bundle_pem).map_err(|e| CaError::BadFile {
        path: bundle_path.display().to_string(),
        problem: e.to_string(),
    })?;
    let svid_pem = read_public_file(svid_file, MAX_PEM_FILE_LEN)?;
    let chain = crate::svid::certs_from_pem(&svid_pem)?;
    let verifier = crate::svid::SvidVerifier::new(bundle, revoked.clone());
    Ok(verifier.verify(
        &chain,
        rustls_pki_types::UnixTime::now(),
        crate::svid::Usage::Client,
    )?)
}
