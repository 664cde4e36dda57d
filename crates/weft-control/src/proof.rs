//! What an agent signs to enroll and to claim its SVID, shared by the
//! server and the agent so both build the same bytes.
//!
//! An agent holds two keys: its node identity (composite ML-DSA-65 +
//! Ed25519, from which its node id comes) and its SVID key (ML-DSA-65, the
//! key in its X.509-SVID). Enrolling proves possession of both over one
//! message that names both public keys, the node's X-Wing key (which other
//! nodes use to agree keys with it, so the identity vouches for it) and a
//! hash of the join token, so a captured request cannot be replayed with
//! another token or another key.

use aws_lc_rs::digest;
use aws_lc_rs::signature::{ML_DSA_65, ML_DSA_65_SIGNING, PqdsaKeyPair, UnparsedPublicKey};
use weft_crypto::sign::{
    CompositePublicKey, CompositeSignature, CompositeSigningKey, MLDSA65_PUBLIC_KEY_LEN,
    MLDSA65_SIGNATURE_LEN,
};

/// Signature context of enrollment requests.
pub const ENROLL_CONTEXT: &[u8] = b"weft/enroll/v2";
/// Signature context of SVID claims (a pending node, once approved).
pub const CLAIM_CONTEXT: &[u8] = b"weft/claim/v1";
/// How far a claim's time may be from the server's.
pub const CLAIM_MAX_SKEW_SECS: i64 = 300;

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// A key or signature of the wrong length or form.
    #[error("{what}: {reason}")]
    Malformed {
        /// Which field.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// A signature that does not verify.
    #[error("{0} does not verify; sign the request with the keys it names")]
    Invalid(&'static str),
}

fn push_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The bytes signed to enroll with `token`: the context, the token's
/// SHA-256, then the identity key, the SVID key and the X-Wing key, each
/// length-prefixed.
pub fn enroll_message(
    token: &str,
    identity_public_key: &[u8],
    svid_public_key: &[u8],
    kem_public_key: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        64 + identity_public_key.len() + svid_public_key.len() + kem_public_key.len(),
    );
    out.extend_from_slice(ENROLL_CONTEXT);
    out.extend_from_slice(digest::digest(&digest::SHA256, token.as_bytes()).as_ref());
    push_len_prefixed(&mut out, identity_public_key);
    push_len_prefixed(&mut out, svid_public_key);
    push_len_prefixed(&mut out, kem_public_key);
    out
}

/// Checks an X-Wing public key's form.
pub fn check_kem_key(bytes: &[u8]) -> Result<(), ProofError> {
    weft_crypto::kem::EncapsulationKey::from_bytes(bytes)
        .map(|_| ())
        .map_err(|e| ProofError::Malformed {
            what: "kem_public_key",
            reason: e.to_string(),
        })
}

/// The bytes signed to claim an SVID at `issued_at` (Unix seconds).
pub fn claim_message(
    issued_at: i64,
    identity_public_key: &[u8],
    svid_public_key: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + identity_public_key.len() + svid_public_key.len());
    out.extend_from_slice(CLAIM_CONTEXT);
    out.extend_from_slice(&issued_at.to_be_bytes());
    push_len_prefixed(&mut out, identity_public_key);
    push_len_prefixed(&mut out, svid_public_key);
    out
}

/// Both signatures over `message`: the identity's (composite, under
/// `context`) and the SVID key's (ML-DSA-65; the message already starts
/// with the context).
pub fn sign(
    identity: &CompositeSigningKey,
    svid_key: &PqdsaKeyPair,
    message: &[u8],
    context: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), ProofError> {
    let fail = |what| ProofError::Malformed {
        what,
        reason: "signing failed".into(),
    };
    let composite = identity
        .sign(message, context)
        .map_err(|_| fail("identity signature"))?;
    let mut sig = vec![0u8; MLDSA65_SIGNATURE_LEN];
    let n = svid_key
        .sign(message, &mut sig)
        .map_err(|_| fail("SVID key signature"))?;
    sig.truncate(n);
    Ok((composite.as_bytes().to_vec(), sig))
}

/// A parsed identity key.
pub fn identity_key(bytes: &[u8]) -> Result<CompositePublicKey, ProofError> {
    CompositePublicKey::from_bytes(bytes).map_err(|e| ProofError::Malformed {
        what: "identity_public_key",
        reason: e.to_string(),
    })
}

/// Checks an SVID public key's form (ML-DSA-65, raw).
pub fn check_svid_key(bytes: &[u8]) -> Result<(), ProofError> {
    if bytes.len() != MLDSA65_PUBLIC_KEY_LEN {
        return Err(ProofError::Malformed {
            what: "svid_public_key",
            reason: format!(
                "{} bytes; an ML-DSA-65 public key is {MLDSA65_PUBLIC_KEY_LEN}",
                bytes.len()
            ),
        });
    }
    Ok(())
}

/// Verifies both signatures over `message`.
pub fn verify(
    identity: &CompositePublicKey,
    svid_public_key: &[u8],
    message: &[u8],
    context: &[u8],
    signature: &[u8],
    svid_key_signature: &[u8],
) -> Result<(), ProofError> {
    check_svid_key(svid_public_key)?;
    let composite =
        CompositeSignature::from_bytes(signature).map_err(|e| ProofError::Malformed {
            what: "signature",
            reason: e.to_string(),
        })?;
    identity
        .verify(message, context, &composite)
        .map_err(|_| ProofError::Invalid("the identity signature"))?;
    if svid_key_signature.len() != MLDSA65_SIGNATURE_LEN {
        return Err(ProofError::Malformed {
            what: "svid_key_signature",
            reason: format!(
                "{} bytes; an ML-DSA-65 signature is {MLDSA65_SIGNATURE_LEN}",
                svid_key_signature.len()
            ),
        });
    }
    UnparsedPublicKey::new(&ML_DSA_65, svid_public_key)
        .verify(message, svid_key_signature)
        .map_err(|_| ProofError::Invalid("the SVID key signature"))
}

/// A new ML-DSA-65 SVID key: the pair and its raw public key.
pub fn new_svid_key() -> Result<PqdsaKeyPair, ProofError> {
    PqdsaKeyPair::generate(&ML_DSA_65_SIGNING).map_err(|_| ProofError::Malformed {
        what: "SVID key",
        reason: "key generation failed".into(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use aws_lc_rs::signature::KeyPair;

    #[test]
    fn proofs_bind_both_keys_and_the_token() {
        let id = CompositeSigningKey::generate().unwrap();
        let svid = new_svid_key().unwrap();
        let svid_pk = svid.public_key().as_ref().to_vec();
        let idpk = id.public_key().as_bytes().to_vec();
        let kem = [7u8; 1216];
        let msg = enroll_message("weft_join_x", &idpk, &svid_pk, &kem);
        let (sig, ssig) = sign(&id, &svid, &msg, ENROLL_CONTEXT).unwrap();
        let key = identity_key(&idpk).unwrap();
        verify(&key, &svid_pk, &msg, ENROLL_CONTEXT, &sig, &ssig).unwrap();
        // Another token, another context, a flipped byte: refused.
        let other = enroll_message("weft_join_y", &idpk, &svid_pk, &kem);
        assert!(verify(&key, &svid_pk, &other, ENROLL_CONTEXT, &sig, &ssig).is_err());
        // Another X-Wing key: refused.
        let other = enroll_message("weft_join_x", &idpk, &svid_pk, &[8u8; 1216]);
        assert!(verify(&key, &svid_pk, &other, ENROLL_CONTEXT, &sig, &ssig).is_err());
        assert!(check_kem_key(&kem[1..]).is_err());
        assert!(verify(&key, &svid_pk, &msg, CLAIM_CONTEXT, &sig, &ssig).is_err());
        let mut bad = ssig.clone();
        bad[10] ^= 1;
        assert_eq!(
            verify(&key, &svid_pk, &msg, ENROLL_CONTEXT, &sig, &bad),
            Err(ProofError::Invalid("the SVID key signature"))
        );
        // Wrong lengths are errors, not panics.
        assert!(verify(&key, &svid_pk[1..], &msg, ENROLL_CONTEXT, &sig, &ssig).is_err());
        assert!(verify(&key, &svid_pk, &msg, ENROLL_CONTEXT, &sig[1..], &ssig).is_err());
        assert!(verify(&key, &svid_pk, &msg, ENROLL_CONTEXT, &sig, &[]).is_err());
        assert!(identity_key(&[0u8; 3]).is_err());
    }
}
