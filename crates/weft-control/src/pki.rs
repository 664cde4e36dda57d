//! The control plane's key material: the trust-domain CA (weft-crypto,
//! kept in `DATA_DIR/ca`), the revocation authority key, the master key
//! that encrypts the CA keys stored in the database, and the server's own
//! certificates.
//!
//! The database holds each network's CA keys encrypted with the master key
//! (AES-256-GCM), so a second control-plane process on the same
//! PostgreSQL, given a copy of `master.key`, restores the CA into its own
//! data directory; a database dump alone reveals no key.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use rcgen::{PKCS_ML_DSA_65, PublicKeyData, SignatureAlgorithm};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use weft_crypto::ca::{CertificateAuthority, IssuedSvid, SvidAlgorithm, Validity, layout};
use weft_crypto::files::{
    read_public_file, read_secret_file, write_file_atomic, write_secret_file,
};
use weft_crypto::sign::{CompositeSigningKey, MLDSA65_PUBLIC_KEY_LEN};
use weft_crypto::{NodeId, SpiffeId, TrustDomain};
use weft_proto::wire::RevocationList;
use weft_store::{Network, NetworkName, NewNetwork, SecretBytes, Store, StoreError};

use crate::error::ControlError;

/// The CA directory inside the data directory.
pub const CA_DIR: &str = "ca";
/// The revocation authority's composite key, in the CA directory (0600).
pub const AUTHORITY_KEY_FILE: &str = "authority.key";
/// The master key that encrypts CA keys in the database (0600).
pub const MASTER_KEY_FILE: &str = "master.key";
/// PEM label of the authority key file.
const AUTHORITY_LABEL: &str = "WEFT AUTHORITY KEY";
/// PEM label of the master key file.
const MASTER_LABEL: &str = "WEFT MASTER KEY";
/// First bytes of an encrypted CA key blob.
const BLOB_MAGIC: &[u8; 4] = b"WCK1";
/// Largest key file read.
const MAX_KEY_FILE: u64 = 64 * 1024;
/// How long the CA is valid when created.
const CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What the encrypted blob holds.
#[derive(Serialize, Deserialize)]
struct BlobContents {
    ca_key: String,
    compat_key: String,
    authority_key: String,
}

/// The trust domain's keys, loaded.
pub struct Pki {
    ca: CertificateAuthority,
    authority: CompositeSigningKey,
    bundle_pem: String,
    ca_fingerprint: String,
    control_id: SpiffeId,
    root_ders: [CertificateDer<'static>; 2],
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("trust_domain", self.ca.trust_domain())
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a DER certificate as `sha256:<hex>`: how the CLI pins the CA.
pub fn fingerprint(der: &[u8]) -> String {
    let d = digest::digest(&digest::SHA256, der);
    format!("sha256:{}", data_encoding::HEXLOWER.encode(d.as_ref()))
}

fn pem_der(text: &str, what: &str) -> Result<CertificateDer<'static>, ControlError> {
    let block = pem::parse(text)
        .map_err(|e| ControlError::Inconsistent(format!("{what} is not PEM: {e}")))?;
    Ok(CertificateDer::from(block.into_contents()))
}

impl Pki {
    /// Loads the CA, the authority key, or creates them on first start
    /// and records the default network; returns the keys and the network.
    pub async fn open<S: Store>(
        data_dir: &Path,
        store: &S,
        network: &NetworkName,
        trust_domain: &TrustDomain,
        now: OffsetDateTime,
    ) -> Result<(Self, Network, bool), ControlError> {
        let ca_dir = data_dir.join(CA_DIR);
        let master = MasterKey::load_or_create(&data_dir.join(MASTER_KEY_FILE))?;
        match store.get_network_by_name(network).await {
            Ok(net) => {
                if !ca_dir.join(layout::CA_CERT).exists() {
                    let blob = store.network_ca_key(net.id).await?;
                    let contents = master.open(blob.expose(), network)?;
                    restore(&ca_dir, &net.ca_bundle_pem, &contents)?;
                    tracing::info!(dir = %ca_dir.display(), "restored the CA from the database");
                }
                let pki = Self::load(&ca_dir)?;
                if !same_certificates(&pki.bundle_pem, &net.ca_bundle_pem) {
                    return Err(ControlError::Inconsistent(format!(
                        "the CA in {} is not the CA of network {} in the database; point --data-dir at the data directory of this database, or remove {} to restore the CA from the database",
                        ca_dir.display(),
                        network,
                        ca_dir.display()
                    )));
                }
                Ok((pki, net, false))
            }
            Err(StoreError::NotFound { .. }) => {
                let created = !ca_dir.join(layout::CA_CERT).exists();
                if created {
                    let ca = CertificateAuthority::init(trust_domain, CA_TTL)?;
                    ca.save(&ca_dir)?;
                    let authority = CompositeSigningKey::generate().map_err(|e| {
                        ControlError::Inconsistent(format!("cannot make the authority key: {e}"))
                    })?;
                    let pem_text = pem::encode(&pem::Pem::new(
                        AUTHORITY_LABEL,
                        authority.to_bytes().to_vec(),
                    ));
                    write_secret_file(
                        &ca_dir.join(AUTHORITY_KEY_FILE),
                        pem_text.as_bytes(),
                        false,
                    )?;
                }
                let pki = Self::load(&ca_dir)?;
                if pki.ca.trust_domain() != trust_domain {
                    return Err(ControlError::Inconsistent(format!(
                        "the CA in {} is for trust domain {}, not {trust_domain}; pass --trust-domain {} or use another data directory",
                        ca_dir.display(),
                        pki.ca.trust_domain(),
                        pki.ca.trust_domain()
                    )));
                }
                let contents = BlobContents {
                    ca_key: read_text_secret(&ca_dir.join(layout::CA_KEY))?,
                    compat_key: read_text_secret(&ca_dir.join(layout::COMPAT_KEY))?,
                    authority_key: read_text_secret(&ca_dir.join(AUTHORITY_KEY_FILE))?,
                };
                let blob = master.seal(&contents, network)?;
                let net = store
                    .create_network(
                        NewNetwork {
                            name: network.clone(),
                            trust_domain: trust_domain.clone(),
                            ca_bundle_pem: pki.bundle_pem.clone(),
                            ca_key: SecretBytes::new(blob),
                        },
                        now,
                    )
                    .await?;
                Ok((pki, net, created))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Makes a new network: a CA for `trust_domain` and a revocation
    /// authority key, sealed with this data directory's master key, and
    /// records it. The keys exist only in the database (encrypted); a
    /// control plane started with `--network NAME`, this `master.key` and
    /// an empty data directory restores them and serves the network.
    pub async fn make_network<S: Store>(
        data_dir: &Path,
        store: &S,
        name: &NetworkName,
        trust_domain: &TrustDomain,
        now: OffsetDateTime,
    ) -> Result<Network, ControlError> {
        let master = MasterKey::load_or_create(&data_dir.join(MASTER_KEY_FILE))?;
        // The CA writes its keys as files; they go to a private temporary
        // directory, are sealed, and are deleted with it.
        let scratch = tempfile::Builder::new()
            .prefix(".new-network-")
            .tempdir_in(data_dir)
            .map_err(ControlError::io(
                "cannot make a temporary directory in",
                data_dir.display(),
            ))?;
        let ca_dir = scratch.path().join(CA_DIR);
        let ca = CertificateAuthority::init(trust_domain, CA_TTL)?;
        ca.save(&ca_dir)?;
        let authority = CompositeSigningKey::generate().map_err(|e| {
            ControlError::Inconsistent(format!("cannot make the authority key: {e}"))
        })?;
        let pem_text = pem::encode(&pem::Pem::new(
            AUTHORITY_LABEL,
            authority.to_bytes().to_vec(),
        ));
        write_secret_file(&ca_dir.join(AUTHORITY_KEY_FILE), pem_text.as_bytes(), false)?;
        let contents = BlobContents {
            ca_key: read_text_secret(&ca_dir.join(layout::CA_KEY))?,
            compat_key: read_text_secret(&ca_dir.join(layout::COMPAT_KEY))?,
            authority_key: read_text_secret(&ca_dir.join(AUTHORITY_KEY_FILE))?,
        };
        let blob = master.seal(&contents, name)?;
        drop(scratch);
        Ok(store
            .create_network(
                NewNetwork {
                    name: name.clone(),
                    trust_domain: trust_domain.clone(),
                    ca_bundle_pem: ca.bundle_pem(),
                    ca_key: SecretBytes::new(blob),
                },
                now,
            )
            .await?)
    }

    /// Loads the CA directory and the authority key.
    pub fn load(ca_dir: &Path) -> Result<Self, ControlError> {
        let ca = CertificateAuthority::load(ca_dir)?;
        let path = ca_dir.join(AUTHORITY_KEY_FILE);
        let text = read_secret_file(&path, MAX_KEY_FILE)?;
        let bad = |why: String| ControlError::Inconsistent(format!("{}: {why}", path.display()));
        let block = pem::parse(&text).map_err(|e| bad(format!("not PEM: {e}")))?;
        if block.tag() != AUTHORITY_LABEL {
            return Err(bad(format!("expected a {AUTHORITY_LABEL:?} block")));
        }
        let authority = CompositeSigningKey::from_bytes(block.contents())
            .map_err(|e| bad(format!("not a composite key: {e}")))?;
        let bundle_pem = ca.bundle_pem();
        let root = pem_der(ca.root_pem(SvidAlgorithm::MlDsa65), "the ML-DSA-65 root")?;
        let compat = pem_der(ca.root_pem(SvidAlgorithm::EcdsaP256), "the compat root")?;
        let ca_fingerprint = fingerprint(&root);
        let control_id = SpiffeId::from_parts(ca.trust_domain(), "/control")
            .map_err(|e| ControlError::Inconsistent(format!("control SPIFFE ID: {e}")))?;
        Ok(Self {
            ca,
            authority,
            bundle_pem,
            ca_fingerprint,
            control_id,
            root_ders: [root, compat],
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        self.ca.trust_domain()
    }

    /// Both CA roots (PEM).
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// SHA-256 of the ML-DSA-65 root, `sha256:<hex>`.
    pub fn ca_fingerprint(&self) -> &str {
        &self.ca_fingerprint
    }

    /// The control plane's own SPIFFE ID (`spiffe://TD/control`).
    pub fn control_id(&self) -> &SpiffeId {
        &self.control_id
    }

    /// The revocation authority's public key (composite ML-DSA-65 + Ed25519).
    pub fn authority_public_key(&self) -> &[u8] {
        self.authority.public_key().as_bytes()
    }

    /// The CA, for verifying SVIDs.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// Issues the server's certificates (ML-DSA-65 and ECDSA P-256) for
    /// its SPIFFE ID and `dns`/`ips`.
    pub fn issue_server_certs(
        &self,
        dns: &[String],
        ips: &[IpAddr],
        ttl: Duration,
    ) -> Result<ServerCerts, ControlError> {
        let validity = Validity::starting_now(ttl)?;
        let make = |alg: SvidAlgorithm, root: &CertificateDer<'static>| {
            let svid = self
                .ca
                .issue_server(&self.control_id, alg, validity, dns, ips)?;
            certified_key(&svid, root)
        };
        Ok(ServerCerts {
            mldsa: make(SvidAlgorithm::MlDsa65, &self.root_ders[0])?,
            ecdsa: make(SvidAlgorithm::EcdsaP256, &self.root_ders[1])?,
            not_after: validity.not_after,
            issued_at: OffsetDateTime::now_utc(),
        })
    }

    /// Signs an X.509-SVID (ML-DSA-65) for `id` over a raw ML-DSA-65 public
    /// key; returns the certificate PEM, its serial and its end.
    pub fn sign_node_svid(
        &self,
        id: &SpiffeId,
        mldsa_public_key: &[u8],
        ttl: Duration,
    ) -> Result<SignedSvid, ControlError> {
        if mldsa_public_key.len() != MLDSA65_PUBLIC_KEY_LEN {
            return Err(ControlError::Inconsistent(format!(
                "an ML-DSA-65 public key is {MLDSA65_PUBLIC_KEY_LEN} bytes, not {}",
                mldsa_public_key.len()
            )));
        }
        let validity = Validity::starting_now(ttl)?;
        let (cert, serial) = self
            .ca
            .sign_leaf(id, &RawMlDsa65(mldsa_public_key), validity)?;
        Ok(SignedSvid {
            cert_pem: cert.pem(),
            serial,
            not_after: validity.not_after,
        })
    }

    /// Signs a revocation list in weft-proto's format.
    pub fn sign_revocations(
        &self,
        epoch: u64,
        issued_ms: u64,
        revoked: Vec<NodeId>,
    ) -> Result<RevocationList, ControlError> {
        let msg = RevocationList::signed_bytes(epoch, issued_ms, &revoked);
        let sig = self
            .authority
            .sign(&msg, RevocationList::CONTEXT)
            .map_err(|e| {
                ControlError::Inconsistent(format!("cannot sign the revocation list: {e}"))
            })?;
        Ok(RevocationList {
            epoch,
            issued_ms,
            revoked,
            signature: Box::new(*sig.as_bytes()),
        })
    }
}

/// An SVID signed for a node.
#[derive(Debug, Clone)]
pub struct SignedSvid {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its serial number.
    pub serial: Vec<u8>,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

/// A raw ML-DSA-65 public key for rcgen.
struct RawMlDsa65<'a>(&'a [u8]);

impl PublicKeyData for RawMlDsa65<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ML_DSA_65
    }
}

/// The server's two certificates.
#[derive(Debug, Clone)]
pub struct ServerCerts {
    /// ML-DSA-65 leaf and root, for weft clients.
    pub mldsa: Arc<CertifiedKey>,
    /// ECDSA P-256 leaf and compat root, for standard tools.
    pub ecdsa: Arc<CertifiedKey>,
    /// When both expire.
    pub not_after: OffsetDateTime,
    /// When they were issued.
    pub issued_at: OffsetDateTime,
}

fn certified_key(
    svid: &IssuedSvid,
    root: &CertificateDer<'static>,
) -> Result<Arc<CertifiedKey>, ControlError> {
    let block = pem::parse(&svid.key_pem)
        .map_err(|e| ControlError::Inconsistent(format!("server key is not PEM: {e}")))?;
    let key = PrivateKeyDer::Pkcs8(block.into_contents().into());
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let signing = provider.key_provider.load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![svid.cert_der.clone(), root.clone()],
        signing,
    )))
}

fn read_text_secret(path: &Path) -> Result<String, ControlError> {
    let bytes = read_secret_file(path, MAX_KEY_FILE)?;
    String::from_utf8(bytes)
        .map_err(|_| ControlError::Inconsistent(format!("{} is not UTF-8 PEM", path.display())))
}

/// Writes a CA directory from the bundle and the decrypted keys.
fn restore(ca_dir: &Path, bundle_pem: &str, keys: &BlobContents) -> Result<(), ControlError> {
    std::fs::create_dir_all(ca_dir).map_err(ControlError::io("cannot create", ca_dir.display()))?;
    let certs = pem::parse_many(bundle_pem)
        .map_err(|e| ControlError::Inconsistent(format!("stored CA bundle is not PEM: {e}")))?;
    let [root, compat] = certs.as_slice() else {
        return Err(ControlError::Inconsistent(format!(
            "stored CA bundle holds {} certificates; expected the ML-DSA-65 root and the compat root",
            certs.len()
        )));
    };
    let files: [(&str, String, bool); 6] = [
        (layout::CA_KEY, keys.ca_key.clone(), true),
        (layout::COMPAT_KEY, keys.compat_key.clone(), true),
        (AUTHORITY_KEY_FILE, keys.authority_key.clone(), true),
        (layout::CA_CERT, pem_lf(root), false),
        (layout::COMPAT_CERT, pem_lf(compat), false),
        (layout::BUNDLE, bundle_pem.to_owned(), false),
    ];
    for (name, text, secret) in files {
        let path = ca_dir.join(name);
        if secret {
            write_secret_file(&path, text.as_bytes(), true)?;
        } else {
            write_file_atomic(&path, text.as_bytes(), 0o644, true)?;
        }
    }
    Ok(())
}

fn pem_lf(block: &pem::Pem) -> String {
    pem::encode_config(
        block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Whether two PEM bundles hold the same certificates (the text may differ
/// in line endings and wrapping).
fn same_certificates(a: &str, b: &str) -> bool {
    match (pem::parse_many(a), pem::parse_many(b)) {
        (Ok(a), Ok(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(&b)
                    .all(|(x, y)| x.tag() == y.tag() && x.contents() == y.contents())
        }
        _ => false,
    }
}

/// The AES-256-GCM key that encrypts CA keys in the database.
struct MasterKey(LessSafeKey);

impl MasterKey {
    fn load_or_create(path: &Path) -> Result<Self, ControlError> {
        let bad = |why: String| ControlError::KeyBlob(format!("{}: {why}", path.display()));
        let bytes = if path.exists() {
            let text = read_secret_file(path, MAX_KEY_FILE)?;
            let block = pem::parse(&text).map_err(|e| bad(format!("not PEM: {e}")))?;
            if block.tag() != MASTER_LABEL || block.contents().len() != 32 {
                return Err(bad(format!(
                    "expected a {MASTER_LABEL:?} block of 32 bytes"
                )));
            }
            block.into_contents()
        } else {
            let mut key = vec![0u8; 32];
            aws_lc_rs::rand::fill(&mut key).map_err(|_| bad("the system RNG failed".into()))?;
            let text = pem::encode(&pem::Pem::new(MASTER_LABEL, key.clone()));
            write_secret_file(path, text.as_bytes(), false)?;
            key
        };
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| bad("unusable key".into()))?;
        Ok(Self(LessSafeKey::new(key)))
    }

    fn aad(network: &NetworkName) -> Vec<u8> {
        format!("weft/ca-key-blob/v1:{network}").into_bytes()
    }

    fn seal(
        &self,
        contents: &BlobContents,
        network: &NetworkName,
    ) -> Result<Vec<u8>, ControlError> {
        let mut data = serde_json::to_vec(contents)
            .map_err(|e| ControlError::KeyBlob(format!("cannot encode: {e}")))?;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| ControlError::KeyBlob("the system RNG failed".into()))?;
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(network)),
                &mut data,
            )
            .map_err(|_| ControlError::KeyBlob("encryption failed".into()))?;
        let mut out = Vec::with_capacity(4 + NONCE_LEN + data.len());
        out.extend_from_slice(BLOB_MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    fn open(&self, blob: &[u8], network: &NetworkName) -> Result<BlobContents, ControlError> {
        let wrong = || {
            ControlError::KeyBlob(format!(
                "the CA keys of network {network} in the database cannot be decrypted with {MASTER_KEY_FILE}; copy {MASTER_KEY_FILE} from the data directory of the control plane that created the network"
            ))
        };
        let Some(rest) = blob.strip_prefix(BLOB_MAGIC.as_slice()) else {
            return Err(ControlError::KeyBlob(
                "the stored CA key blob has an unknown format; it was written by another program or a newer weft".into(),
            ));
        };
        if rest.len() < NONCE_LEN {
            return Err(wrong());
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| wrong())?;
        let mut data = sealed.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(Self::aad(network)), &mut data)
            .map_err(|_| wrong())?;
        serde_json::from_slice(plain)
            .map_err(|e| ControlError::KeyBlob(format!("decrypted blob does not parse: {e}")))
    }
}

/// Reads a CA bundle file (PEM) for clients.
pub fn read_bundle_file(path: &Path) -> Result<Vec<u8>, ControlError> {
    Ok(read_public_file(path, weft_crypto::ca::MAX_PEM_FILE_LEN)?)
}

/// The path of the CA bundle inside a data directory.
pub fn bundle_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CA_DIR).join(layout::BUNDLE)
}
