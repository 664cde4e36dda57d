//! Composite signatures: ML-DSA-65 + Ed25519, after
//! draft-ietf-lamps-pq-composite-sigs (`id-MLDSA65-Ed25519-SHA512`).
//!
//! Both components sign the same message representative
//!
//! ```text
//! M' = Prefix || Label || len(ctx) || ctx || SHA-512(M)
//! ```
//!
//! and a signature is valid only when both components verify. Encodings are
//! fixed length: public key `mldsa_pk (1952) || ed25519_pk (32)`, signature
//! `mldsa_sig (3309) || ed25519_sig (64)`, private key
//! `mldsa_seed (32) || ed25519_seed (32)`.
//!
//! One deviation from the draft: it passes `Label` to ML-DSA as the FIPS 204
//! context string, but aws-lc-rs' stable API signs with the empty context.
//! Domain separation is unaffected because `Label` is already inside `M'`.
//! The combination exists only here because no crate on crates.io ships
//! this composite over aws-lc-rs.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{
    ED25519, Ed25519KeyPair, KeyPair, ML_DSA_65, ML_DSA_65_SIGNING, ParsedPublicKey, PqdsaKeyPair,
};

/// Fixed prefix of every composite message representative.
pub const PREFIX: &[u8; 32] = b"CompositeAlgorithmSignatures2025";
/// Domain-separation label of id-MLDSA65-Ed25519-SHA512.
pub const LABEL: &[u8; 30] = b"COMPSIG-MLDSA65-Ed25519-SHA512";
/// Human-readable name of the composite algorithm.
pub const ALGORITHM: &str = "id-MLDSA65-Ed25519-SHA512";
/// Longest context string the draft allows.
pub const MAX_CONTEXT_LEN: usize = 255;

/// ML-DSA-65 public key length.
pub const MLDSA65_PUBLIC_KEY_LEN: usize = 1952;
/// ML-DSA-65 signature length.
pub const MLDSA65_SIGNATURE_LEN: usize = 3309;
/// Ed25519 public key length.
pub const ED25519_PUBLIC_KEY_LEN: usize = 32;
/// Ed25519 signature length.
pub const ED25519_SIGNATURE_LEN: usize = 64;
/// Seed length of each component.
pub const SEED_LEN: usize = 32;
/// Composite public key length.
pub const PUBLIC_KEY_LEN: usize = MLDSA65_PUBLIC_KEY_LEN + ED25519_PUBLIC_KEY_LEN;
/// Composite signature length.
pub const SIGNATURE_LEN: usize = MLDSA65_SIGNATURE_LEN + ED25519_SIGNATURE_LEN;
/// Composite private key (two seeds) length.
pub const PRIVATE_KEY_LEN: usize = 2 * SEED_LEN;

/// Errors of composite signing and verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A byte string has the wrong length for its type.
    #[error("{what} must be exactly {expected} bytes, got {got}")]
    Length {
        /// What was being decoded.
        what: &'static str,
        /// Required length.
        expected: usize,
        /// Length received.
        got: usize,
    },
    /// Context longer than [`MAX_CONTEXT_LEN`].
    #[error("signature context is {len} bytes; at most {MAX_CONTEXT_LEN} are allowed")]
    ContextTooLong {
        /// Length of the context.
        len: usize,
    },
    /// The ML-DSA-65 public key is not a valid key.
    #[error("the ML-DSA-65 half of the composite public key is not a valid key")]
    BadMldsaKey,
    /// The Ed25519 public key is not a valid key.
    #[error("the Ed25519 half of the composite public key is not a valid key")]
    BadEd25519Key,
    /// A seed was rejected by the key generator.
    #[error("the {0} seed was rejected by aws-lc")]
    BadSeed(&'static str),
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// Signing failed inside aws-lc.
    #[error("ML-DSA-65 signing failed inside aws-lc")]
    SignFailed,
    /// The signature does not verify.
    #[error("composite signature does not verify ({0} component rejected)")]
    Invalid(&'static str),
}

/// Builds `M' = Prefix || Label || len(ctx) || ctx || SHA-512(M)`.
fn message_representative(
    message: &[u8],
    context: &[u8],
) -> Result<([u8; 32 + 30 + 1 + MAX_CONTEXT_LEN + 64], usize), SignatureError> {
    if context.len() > MAX_CONTEXT_LEN {
        return Err(SignatureError::ContextTooLong { len: context.len() });
    }
    let mut out = [0u8; 32 + 30 + 1 + MAX_CONTEXT_LEN + 64];
    let mut at = 0;
    for part in [
        &PREFIX[..],
        &LABEL[..],
        // Checked above: the length fits in one byte.
        &[context.len() as u8][..],
        context,
        digest::digest(&digest::SHA512, message).as_ref(),
    ] {
        out[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    Ok((out, at))
}

/// A composite ML-DSA-65 + Ed25519 signing key.
pub struct CompositeSigningKey {
    mldsa: PqdsaKeyPair,
    ed25519: Ed25519KeyPair,
    seeds: [u8; PRIVATE_KEY_LEN],
    public: CompositePublicKey,
}

impl CompositeSigningKey {
    /// Generates a fresh key from the system random number generator.
    pub fn generate() -> Result<Self, SignatureError> {
        let mut seeds = [0u8; PRIVATE_KEY_LEN];
        aws_lc_rs::rand::fill(&mut seeds).map_err(|_| SignatureError::Random)?;
        Self::from_bytes(&seeds)
    }

    /// Rebuilds a key from its private encoding `mldsa_seed || ed25519_seed`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SignatureError> {
        let seeds: [u8; PRIVATE_KEY_LEN] =
            bytes.try_into().map_err(|_| SignatureError::Length {
                what: "composite private key",
                expected: PRIVATE_KEY_LEN,
                got: bytes.len(),
            })?;
        let mldsa = PqdsaKeyPair::from_seed(&ML_DSA_65_SIGNING, &seeds[..SEED_LEN])
            .map_err(|_| SignatureError::BadSeed("ML-DSA-65"))?;
        let ed25519 = Ed25519KeyPair::from_seed_unchecked(&seeds[SEED_LEN..])
            .map_err(|_| SignatureError::BadSeed("Ed25519"))?;
        let mut public = [0u8; PUBLIC_KEY_LEN];
        public[..MLDSA65_PUBLIC_KEY_LEN].copy_from_slice(mldsa.public_key().as_ref());
        public[MLDSA65_PUBLIC_KEY_LEN..].copy_from_slice(ed25519.public_key().as_ref());
        let public = CompositePublicKey::from_bytes(&public)?;
        Ok(Self {
            mldsa,
            ed25519,
            seeds,
            public,
        })
    }

    /// The private encoding `mldsa_seed || ed25519_seed`. Keep it secret.
    pub fn to_bytes(&self) -> [u8; PRIVATE_KEY_LEN] {
        self.seeds
    }

    /// The matching public key.
    pub fn public_key(&self) -> &CompositePublicKey {
        &self.public
    }

    /// A 32-byte secret derived from this key for one purpose:
    /// HMAC-SHA-256 keyed by the private seeds over a domain tag and
    /// `label`. Distinct labels give independent secrets; the same key and
    /// label always give the same secret (so a restarted node can rebuild
    /// what it derived before), and nobody without the key can compute it.
    pub fn derive_secret(&self, label: &[u8]) -> [u8; 32] {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.seeds);
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
        ctx.update(b"weft/derive-secret/v1");
        ctx.update(label);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Signs `message` under `context` (at most 255 bytes, may be empty).
    pub fn sign(
        &self,
        message: &[u8],
        context: &[u8],
    ) -> Result<CompositeSignature, SignatureError> {
        let (repr, len) = message_representative(message, context)?;
        let repr = &repr[..len];
        let mut bytes = [0u8; SIGNATURE_LEN];
        let written = self
            .mldsa
            .sign(repr, &mut bytes[..MLDSA65_SIGNATURE_LEN])
            .map_err(|_| SignatureError::SignFailed)?;
        if written != MLDSA65_SIGNATURE_LEN {
            return Err(SignatureError::SignFailed);
        }
        bytes[MLDSA65_SIGNATURE_LEN..].copy_from_slice(self.ed25519.sign(repr).as_ref());
        Ok(CompositeSignature(Box::new(bytes)))
    }
}

impl fmt::Debug for CompositeSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompositeSigningKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl Drop for CompositeSigningKey {
    fn drop(&mut self) {
        // Best effort: the aws-lc key objects wipe themselves; this wipes our copy of the seeds.
        self.seeds.fill(0);
    }
}

/// A composite ML-DSA-65 + Ed25519 public key, parsed once for fast
/// verification; cloning shares the parsed key.
#[derive(Clone)]
pub struct CompositePublicKey(Arc<ParsedComposite>);

struct ParsedComposite {
    bytes: [u8; PUBLIC_KEY_LEN],
    mldsa: ParsedPublicKey,
    ed25519: ParsedPublicKey,
}

impl CompositePublicKey {
    /// Decodes `mldsa_pk || ed25519_pk`, rejecting wrong lengths and invalid keys.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SignatureError> {
        let bytes: [u8; PUBLIC_KEY_LEN] = bytes.try_into().map_err(|_| SignatureError::Length {
            what: "composite public key",
            expected: PUBLIC_KEY_LEN,
            got: bytes.len(),
        })?;
        let mldsa = ParsedPublicKey::new(&ML_DSA_65, &bytes[..MLDSA65_PUBLIC_KEY_LEN])
            .map_err(|_| SignatureError::BadMldsaKey)?;
        let ed25519 = ParsedPublicKey::new(&ED25519, &bytes[MLDSA65_PUBLIC_KEY_LEN..])
            .map_err(|_| SignatureError::BadEd25519Key)?;
        Ok(Self(Arc::new(ParsedComposite {
            bytes,
            mldsa,
            ed25519,
        })))
    }

    /// The encoding `mldsa_pk || ed25519_pk`.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.0.bytes
    }

    /// Verifies `signature` over `message` under `context`. Both components
    /// must verify; the ML-DSA half is checked first and always, so a bad
    /// Ed25519 half cannot be used to skip the post-quantum check.
    pub fn verify(
        &self,
        message: &[u8],
        context: &[u8],
        signature: &CompositeSignature,
    ) -> Result<(), SignatureError> {
        let (repr, len) = message_representative(message, context)?;
        let repr = &repr[..len];
        let (mldsa_sig, ed_sig) = signature.0.split_at(MLDSA65_SIGNATURE_LEN);
        let mldsa_ok = self.0.mldsa.verify_sig(repr, mldsa_sig).is_ok();
        let ed_ok = self.0.ed25519.verify_sig(repr, ed_sig).is_ok();
        match (mldsa_ok, ed_ok) {
            (true, true) => Ok(()),
            (false, _) => Err(SignatureError::Invalid("ML-DSA-65")),
            (true, false) => Err(SignatureError::Invalid("Ed25519")),
        }
    }
}

impl PartialEq for CompositePublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.bytes == other.0.bytes
    }
}
impl Eq for CompositePublicKey {}

impl fmt::Debug for CompositePublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fp = digest::digest(&digest::SHA256, &self.0.bytes[..]);
        write!(f, "CompositePublicKey(sha256:{})", hex(&fp.as_ref()[..8]))
    }
}

/// A composite signature, `mldsa_sig || ed25519_sig` (fixed length).
#[derive(Clone, PartialEq, Eq)]
pub struct CompositeSignature(Box<[u8; SIGNATURE_LEN]>);

impl CompositeSignature {
    /// Decodes a signature; only the length is checked here, validity by
    /// [`CompositePublicKey::verify`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SignatureError> {
        let bytes: [u8; SIGNATURE_LEN] = bytes.try_into().map_err(|_| SignatureError::Length {
            what: "composite signature",
            expected: SIGNATURE_LEN,
            got: bytes.len(),
        })?;
        Ok(Self(Box::new(bytes)))
    }

    /// The encoding `mldsa_sig || ed25519_sig`.
    pub fn as_bytes(&self) -> &[u8; SIGNATURE_LEN] {
        &self.0
    }
}

impl fmt::Debug for CompositeSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CompositeSignature({}…)", hex(&self.0[..8]))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_encodings() {
        let key = CompositeSigningKey::generate().unwrap();
        let sig = key.sign(b"hello mesh", b"ctx").unwrap();
        key.public_key()
            .verify(b"hello mesh", b"ctx", &sig)
            .unwrap();

        let again = CompositeSigningKey::from_bytes(&key.to_bytes()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let pk = CompositePublicKey::from_bytes(key.public_key().as_bytes()).unwrap();
        let sig2 = CompositeSignature::from_bytes(sig.as_bytes()).unwrap();
        pk.verify(b"hello mesh", b"ctx", &sig2).unwrap();
        // Empty and maximal contexts both work.
        let sig = key.sign(b"m", b"").unwrap();
        pk.verify(b"m", b"", &sig).unwrap();
        let ctx = [7u8; MAX_CONTEXT_LEN];
        let sig = key.sign(b"m", &ctx).unwrap();
        pk.verify(b"m", &ctx, &sig).unwrap();
        assert_eq!(
            key.sign(b"m", &[0u8; MAX_CONTEXT_LEN + 1]).unwrap_err(),
            SignatureError::ContextTooLong { len: 256 }
        );
    }

    #[test]
    fn derived_secrets_are_stable_per_label_and_key() {
        let key = CompositeSigningKey::generate().unwrap();
        let again = CompositeSigningKey::from_bytes(&key.to_bytes()).unwrap();
        let other = CompositeSigningKey::generate().unwrap();
        assert_eq!(key.derive_secret(b"a"), again.derive_secret(b"a"));
        assert_ne!(key.derive_secret(b"a"), key.derive_secret(b"b"));
        assert_ne!(key.derive_secret(b"a"), other.derive_secret(b"a"));
    }

    #[test]
    fn any_flipped_signature_byte_rejects() {
        let key = CompositeSigningKey::generate().unwrap();
        let sig = key.sign(b"msg", b"ctx").unwrap();
        // Every byte of both halves: ML-DSA-65 then Ed25519.
        for i in 0..SIGNATURE_LEN {
            let mut bad = *sig.as_bytes();
            bad[i] ^= 0x01;
            let bad = CompositeSignature::from_bytes(&bad).unwrap();
            let err = key.public_key().verify(b"msg", b"ctx", &bad).unwrap_err();
            let expected = if i < MLDSA65_SIGNATURE_LEN {
                "ML-DSA-65"
            } else {
                "Ed25519"
            };
            assert_eq!(err, SignatureError::Invalid(expected), "byte {i}");
        }
    }

    #[test]
    fn any_flipped_message_or_context_byte_rejects() {
        let key = CompositeSigningKey::generate().unwrap();
        let msg = b"route announcement".to_vec();
        let ctx = b"weft/route".to_vec();
        let sig = key.sign(&msg, &ctx).unwrap();
        for i in 0..msg.len() {
            let mut m = msg.clone();
            m[i] ^= 0x80;
            assert!(
                key.public_key().verify(&m, &ctx, &sig).is_err(),
                "msg byte {i}"
            );
        }
        for i in 0..ctx.len() {
            let mut c = ctx.clone();
            c[i] ^= 0x80;
            assert!(
                key.public_key().verify(&msg, &c, &sig).is_err(),
                "ctx byte {i}"
            );
        }
        assert!(key.public_key().verify(&msg, b"", &sig).is_err());
        assert!(key.public_key().verify(&msg[1..], &ctx, &sig).is_err());
    }

    #[test]
    fn another_keys_signature_rejects() {
        let a = CompositeSigningKey::generate().unwrap();
        let b = CompositeSigningKey::generate().unwrap();
        let sig = b.sign(b"msg", b"").unwrap();
        assert!(a.public_key().verify(b"msg", b"", &sig).is_err());
        // Mixing halves of two valid signatures also rejects.
        let sig_a = a.sign(b"msg", b"").unwrap();
        let mut mixed = *sig_a.as_bytes();
        mixed[MLDSA65_SIGNATURE_LEN..].copy_from_slice(&sig.as_bytes()[MLDSA65_SIGNATURE_LEN..]);
        let mixed = CompositeSignature::from_bytes(&mixed).unwrap();
        assert_eq!(
            a.public_key().verify(b"msg", b"", &mixed).unwrap_err(),
            SignatureError::Invalid("Ed25519")
        );
    }

    #[test]
    fn malformed_encodings_are_refused() {
        assert!(matches!(
            CompositeSignature::from_bytes(&[0u8; SIGNATURE_LEN - 1]),
            Err(SignatureError::Length { .. })
        ));
        assert!(matches!(
            CompositePublicKey::from_bytes(&[0u8; 10]),
            Err(SignatureError::Length { .. })
        ));
        assert!(matches!(
            CompositeSigningKey::from_bytes(&[1u8; 63]),
            Err(SignatureError::Length { .. })
        ));
        // All-zero key material of the right length: must not panic.
        let _ = CompositePublicKey::from_bytes(&[0u8; PUBLIC_KEY_LEN]);
    }
}
