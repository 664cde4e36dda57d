//! Node identity: a composite ML-DSA-65 + Ed25519 signing key and an X-Wing
//! key, stored in a versioned, PEM-armoured key file.
//!
//! Key file body (inside `-----BEGIN WEFT NODE KEY-----`), version 1:
//!
//! ```text
//! version (1) = 0x01 | suite (1) = 0x01 | signing seeds (64) | kem seed (32) | node id (32)
//! ```
//!
//! Suite 1 is ML-DSA-65+Ed25519 (composite) with X-Wing. The trailing node id
//! is recomputed on load, which catches a corrupted seed: the file would
//! otherwise silently load as a different node.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use aws_lc_rs::digest;

use crate::files::{FileError, read_secret_file, write_secret_file};
use crate::kem::{self, DecapsulationKey, EncapsulationKey};
use crate::sign::{self, CompositePublicKey, CompositeSigningKey};
use crate::spiffe::{SpiffeId, TrustDomain};

/// PEM label of node key files.
pub const KEY_FILE_LABEL: &str = "WEFT NODE KEY";
/// Current key file version.
pub const KEY_FILE_VERSION: u8 = 1;
/// Algorithm suite 1: composite ML-DSA-65+Ed25519 signatures, X-Wing KEM.
pub const SUITE_MLDSA65_ED25519_XWING: u8 = 1;
/// Largest key file we are willing to read; real ones are ~250 bytes.
pub const MAX_KEY_FILE_LEN: u64 = 16 * 1024;
const BODY_LEN: usize = 2 + sign::PRIVATE_KEY_LEN + kem::DECAPSULATION_KEY_LEN + NodeId::LEN;

/// Errors loading, parsing or writing identities and key files.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The key text is larger than any key file.
    #[error("key file is {len} bytes; a weft key file is at most {MAX_KEY_FILE_LEN} bytes")]
    TooLarge {
        /// Size of the input.
        len: u64,
    },
    /// Not PEM, or a PEM block that cannot be decoded.
    #[error("key file is not valid PEM: {0}")]
    NotPem(String),
    /// A PEM block with the wrong label.
    #[error("key file holds a \"{found}\" PEM block; expected \"{KEY_FILE_LABEL}\"")]
    WrongLabel {
        /// The label found.
        found: String,
    },
    /// The body is shorter or longer than the version requires.
    #[error(
        "key file body is {got} bytes; version {version} requires {expected} (file truncated or corrupted)"
    )]
    BadLength {
        /// Version byte read.
        version: u8,
        /// Required length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// A version this build does not understand.
    #[error("key file version {0} is not supported; this weft reads version {KEY_FILE_VERSION}")]
    UnsupportedVersion(u8),
    /// An algorithm suite this build does not understand.
    #[error("key file uses algorithm suite {0}, which this weft does not know")]
    UnknownSuite(u8),
    /// The stored node id does not match the keys.
    #[error("key file is corrupted: stored node id {stored} does not match its keys ({computed})")]
    Corrupted {
        /// Node id stored in the file.
        stored: NodeId,
        /// Node id computed from the keys.
        computed: NodeId,
    },
    /// Key material was rejected.
    #[error("key file holds invalid key material: {0}")]
    Key(#[from] sign::SignatureError),
    /// KEM key generation failed.
    #[error("X-Wing key: {0}")]
    Kem(#[from] kem::KemError),
    /// A node id string is malformed.
    #[error("node id {input:?} is not valid: {reason}")]
    BadNodeId {
        /// The input string.
        input: String,
        /// Why.
        reason: &'static str,
    },
}

/// A node's identifier: SHA-256 of its composite public key, shown in
/// lowercase base32 without padding (52 characters).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// Length in bytes.
    pub const LEN: usize = 32;

    /// The node id of a composite public key.
    pub fn of(public_key: &CompositePublicKey) -> Self {
        let d = digest::digest(&digest::SHA256, public_key.as_bytes());
        let mut id = [0u8; 32];
        id.copy_from_slice(d.as_ref());
        Self(id)
    }

    /// Path of a node's SPIFFE ID: `/node/<node id>`. The control plane
    /// issues a node's X.509-SVID for this path, which is how a mesh peer
    /// authenticated by its SVID is tied to the key that signs its routes.
    pub const SPIFFE_PATH_PREFIX: &'static str = "/node/";

    /// The node's SPIFFE ID in `trust_domain`.
    pub fn spiffe_id(&self, trust_domain: &TrustDomain) -> SpiffeId {
        // Infallible: 52 base32 characters are valid path characters, and
        // a trust domain of at most 255 bytes keeps the ID far below the
        // length limit.
        SpiffeId::from_parts(trust_domain, &format!("{}{self}", Self::SPIFFE_PATH_PREFIX))
            .expect("a node path is a valid SPIFFE ID path")
    }

    /// The node a SPIFFE ID names, if its path is `/node/<node id>`.
    pub fn from_spiffe_id(id: &SpiffeId) -> Option<NodeId> {
        id.path()
            .strip_prefix(Self::SPIFFE_PATH_PREFIX)
            .and_then(|rest| rest.parse().ok())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = data_encoding::BASE32_NOPAD.encode(&self.0);
        s.make_ascii_lowercase();
        f.write_str(&s)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| IdentityError::BadNodeId {
            input: s.chars().take(80).collect(),
            reason,
        };
        if s.len() != 52 {
            return Err(bad("expected 52 lowercase base32 characters"));
        }
        if !s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')) {
            return Err(bad("not lowercase base32 (a-z, 2-7)"));
        }
        let bytes = data_encoding::BASE32_NOPAD
            .decode(s.to_ascii_uppercase().as_bytes())
            .map_err(|_| bad("not canonical base32"))?;
        let id: [u8; 32] = bytes
            .try_into()
            .map_err(|_| bad("does not decode to 32 bytes"))?;
        // Reject non-canonical encodings (non-zero padding bits).
        if NodeId(id).to_string() != s {
            return Err(bad("non-canonical encoding"));
        }
        Ok(NodeId(id))
    }
}

/// The public half of a node identity.
#[derive(Clone, Debug)]
pub struct NodePublicIdentity {
    /// Composite signature verification key.
    pub signing: CompositePublicKey,
    /// X-Wing encapsulation key for end-to-end sessions.
    pub kem: EncapsulationKey,
}

impl NodePublicIdentity {
    /// The node id.
    pub fn node_id(&self) -> NodeId {
        NodeId::of(&self.signing)
    }

    /// SHA-256 over the signing key and the KEM key, in lowercase hex: the
    /// fingerprint an operator compares out of band.
    pub fn fingerprint(&self) -> String {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(self.signing.as_bytes());
        ctx.update(&self.kem.to_bytes());
        format!("sha256:{}", sign::hex(ctx.finish().as_ref()))
    }
}

/// A node's private identity.
pub struct NodeIdentity {
    signing: CompositeSigningKey,
    kem: DecapsulationKey,
    id: NodeId,
}

impl NodeIdentity {
    /// Generates a new identity from the system RNG.
    pub fn generate() -> Result<Self, IdentityError> {
        let signing = CompositeSigningKey::generate()?;
        let kem = DecapsulationKey::generate()?;
        let id = NodeId::of(signing.public_key());
        Ok(Self { signing, kem, id })
    }

    /// The node id.
    pub fn node_id(&self) -> NodeId {
        self.id
    }

    /// The composite signing key.
    pub fn signing_key(&self) -> &CompositeSigningKey {
        &self.signing
    }

    /// The X-Wing decapsulation key.
    pub fn kem_key(&self) -> &DecapsulationKey {
        &self.kem
    }

    /// The public identity.
    pub fn public(&self) -> NodePublicIdentity {
        NodePublicIdentity {
            signing: self.signing.public_key().clone(),
            kem: self.kem.encapsulation_key(),
        }
    }

    /// Encodes the key file (PEM text).
    pub fn to_key_file(&self) -> String {
        let mut body = Vec::with_capacity(BODY_LEN);
        body.push(KEY_FILE_VERSION);
        body.push(SUITE_MLDSA65_ED25519_XWING);
        body.extend_from_slice(&self.signing.to_bytes());
        body.extend_from_slice(self.kem.seed());
        body.extend_from_slice(&self.id.0);
        let text = pem::encode(&pem::Pem::new(KEY_FILE_LABEL, body.clone()));
        body.fill(0);
        text
    }

    /// Parses a key file. Total: any input yields a value or an error naming
    /// the problem, never a panic.
    pub fn from_key_file(text: &[u8]) -> Result<Self, IdentityError> {
        if text.len() as u64 > MAX_KEY_FILE_LEN {
            return Err(IdentityError::TooLarge {
                len: text.len() as u64,
            });
        }
        let block = pem::parse(text).map_err(|e| IdentityError::NotPem(e.to_string()))?;
        if block.tag() != KEY_FILE_LABEL {
            return Err(IdentityError::WrongLabel {
                found: block.tag().chars().take(64).collect(),
            });
        }
        let body = block.contents();
        let Some(&version) = body.first() else {
            return Err(IdentityError::BadLength {
                version: KEY_FILE_VERSION,
                expected: BODY_LEN,
                got: 0,
            });
        };
        if version != KEY_FILE_VERSION {
            return Err(IdentityError::UnsupportedVersion(version));
        }
        if body.len() != BODY_LEN {
            return Err(IdentityError::BadLength {
                version,
                expected: BODY_LEN,
                got: body.len(),
            });
        }
        let suite = body[1];
        if suite != SUITE_MLDSA65_ED25519_XWING {
            return Err(IdentityError::UnknownSuite(suite));
        }
        let (signing_seeds, rest) = body[2..].split_at(sign::PRIVATE_KEY_LEN);
        let (kem_seed, stored_id) = rest.split_at(kem::DECAPSULATION_KEY_LEN);
        let signing = CompositeSigningKey::from_bytes(signing_seeds)?;
        let kem = DecapsulationKey::from_bytes(kem_seed)?;
        let id = NodeId::of(signing.public_key());
        let mut stored = [0u8; 32];
        stored.copy_from_slice(stored_id);
        if stored != id.0 {
            return Err(IdentityError::Corrupted {
                stored: NodeId(stored),
                computed: id,
            });
        }
        Ok(Self { signing, kem, id })
    }

    /// Loads a key file, refusing one readable by group or others (as ssh does).
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let text = read_secret_file(path, MAX_KEY_FILE_LEN)?;
        Self::from_key_file(&text)
    }

    /// Writes the key file atomically with mode 0600. Refuses to replace an
    /// existing file unless `overwrite` is set.
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<(), IdentityError> {
        Ok(write_secret_file(
            path,
            self.to_key_file().as_bytes(),
            overwrite,
        )?)
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_spiffe_id_round_trips() {
        let td = TrustDomain::new("mesh.example").unwrap();
        let id = NodeId([7; 32]);
        let spiffe = id.spiffe_id(&td);
        assert_eq!(spiffe.as_str(), format!("spiffe://mesh.example/node/{id}"));
        assert_eq!(NodeId::from_spiffe_id(&spiffe), Some(id));
        let other = SpiffeId::parse("spiffe://mesh.example/control").unwrap();
        assert_eq!(NodeId::from_spiffe_id(&other), None);
        let bad = SpiffeId::parse("spiffe://mesh.example/node/notanid").unwrap();
        assert_eq!(NodeId::from_spiffe_id(&bad), None);
    }
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn node_id_is_sha256_of_public_key_in_base32() {
        let id = NodeIdentity::generate().unwrap();
        let s = id.node_id().to_string();
        assert_eq!(s.len(), 52);
        assert!(s.chars().all(|c| matches!(c, 'a'..='z' | '2'..='7')));
        let expected = digest::digest(&digest::SHA256, id.signing_key().public_key().as_bytes());
        assert_eq!(&id.node_id().0[..], expected.as_ref());
        assert_eq!(s.parse::<NodeId>().unwrap(), id.node_id());
        assert!("A".repeat(52).parse::<NodeId>().is_err());
        assert!("abc".parse::<NodeId>().is_err());
    }

    #[test]
    fn save_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let id = NodeIdentity::generate().unwrap();
        id.save(&path, false).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = NodeIdentity::load(&path).unwrap();
        assert_eq!(loaded.node_id(), id.node_id());
        assert_eq!(loaded.public().fingerprint(), id.public().fingerprint());
        // No clobbering without consent.
        assert!(matches!(
            id.save(&path, false),
            Err(IdentityError::File(FileError::Exists { .. }))
        ));
        NodeIdentity::generate().unwrap().save(&path, true).unwrap();
        assert_ne!(NodeIdentity::load(&path).unwrap().node_id(), id.node_id());
        // Only the key file remains: no temporary files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn refuses_group_or_world_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        NodeIdentity::generate()
            .unwrap()
            .save(&path, false)
            .unwrap();
        for mode in [0o640, 0o604, 0o644, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = NodeIdentity::load(&path).unwrap_err();
            assert!(
                matches!(err, IdentityError::File(FileError::Permissions { mode: m, .. }) if m == mode)
            );
            assert!(err.to_string().contains("chmod 600"));
        }
    }

    #[test]
    fn refuses_malformed_files_naming_the_problem() {
        let good = NodeIdentity::generate().unwrap().to_key_file();
        let block = pem::parse(&good).unwrap();
        let body = block.contents().to_vec();
        let rewrap = |tag: &str, body: Vec<u8>| pem::encode(&pem::Pem::new(tag, body));

        assert!(matches!(
            NodeIdentity::from_key_file(b"hello"),
            Err(IdentityError::NotPem(_))
        ));
        // Truncated PEM text.
        assert!(matches!(
            NodeIdentity::from_key_file(&good.as_bytes()[..good.len() / 2]),
            Err(IdentityError::NotPem(_))
        ));
        assert!(matches!(
            NodeIdentity::from_key_file(rewrap("PRIVATE KEY", body.clone()).as_bytes()),
            Err(IdentityError::WrongLabel { .. })
        ));
        // Truncated body.
        let err = NodeIdentity::from_key_file(
            rewrap(KEY_FILE_LABEL, body[..body.len() - 1].to_vec()).as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(err, IdentityError::BadLength { got, .. } if got == BODY_LEN - 1));
        assert!(matches!(
            NodeIdentity::from_key_file(rewrap(KEY_FILE_LABEL, vec![]).as_bytes()),
            Err(IdentityError::BadLength { got: 0, .. })
        ));
        let mut v2 = body.clone();
        v2[0] = 2;
        assert!(matches!(
            NodeIdentity::from_key_file(rewrap(KEY_FILE_LABEL, v2).as_bytes()),
            Err(IdentityError::UnsupportedVersion(2))
        ));
        let mut suite = body.clone();
        suite[1] = 9;
        assert!(matches!(
            NodeIdentity::from_key_file(rewrap(KEY_FILE_LABEL, suite).as_bytes()),
            Err(IdentityError::UnknownSuite(9))
        ));
        // A flipped seed bit is caught by the stored node id.
        let mut flipped = body.clone();
        flipped[5] ^= 1;
        assert!(matches!(
            NodeIdentity::from_key_file(rewrap(KEY_FILE_LABEL, flipped).as_bytes()),
            Err(IdentityError::Corrupted { .. })
        ));
        let huge = vec![b'a'; MAX_KEY_FILE_LEN as usize + 1];
        assert!(matches!(
            NodeIdentity::from_key_file(&huge),
            Err(IdentityError::TooLarge { .. })
        ));
    }
}
