//! Hybrid key encapsulation: X-Wing (draft-connolly-cfrg-xwing-kem),
//! X25519 + ML-KEM-768 with the SHA3-256 combiner, from the RustCrypto
//! `x-wing` crate. Randomness comes from aws-lc's system RNG.
//!
//! Decapsulation never fails on a well-sized ciphertext: a tampered one
//! yields an unrelated shared secret (ML-KEM's implicit rejection), so a
//! key-confirmation step (an AEAD tag) is what detects tampering.

use std::fmt;

use x_wing::{Decapsulate, Decapsulator, KeyExport};

/// Encapsulation (public) key length.
pub const ENCAPSULATION_KEY_LEN: usize = x_wing::ENCAPSULATION_KEY_SIZE;
/// Decapsulation (private) key length: X-Wing keeps only a 32-byte seed.
pub const DECAPSULATION_KEY_LEN: usize = x_wing::DECAPSULATION_KEY_SIZE;
/// Ciphertext length.
pub const CIPHERTEXT_LEN: usize = x_wing::CIPHERTEXT_SIZE;
/// Shared secret length.
pub const SHARED_SECRET_LEN: usize = 32;

/// Errors of the KEM layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KemError {
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
    /// The ML-KEM half of an encapsulation key failed its modulus check.
    #[error("X-Wing encapsulation key is invalid (ML-KEM-768 modulus check failed)")]
    InvalidKey,
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// A 32-byte shared secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedSecret(pub [u8; SHARED_SECRET_LEN]);

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

impl Drop for SharedSecret {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

/// An X-Wing ciphertext.
#[derive(Clone, PartialEq, Eq)]
pub struct Ciphertext(Box<[u8; CIPHERTEXT_LEN]>);

impl Ciphertext {
    /// Decodes a ciphertext (length check only).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KemError> {
        let arr: [u8; CIPHERTEXT_LEN] = bytes.try_into().map_err(|_| KemError::Length {
            what: "X-Wing ciphertext",
            expected: CIPHERTEXT_LEN,
            got: bytes.len(),
        })?;
        Ok(Self(Box::new(arr)))
    }

    /// The wire encoding.
    pub fn as_bytes(&self) -> &[u8; CIPHERTEXT_LEN] {
        &self.0
    }
}

impl fmt::Debug for Ciphertext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ciphertext({} bytes)", CIPHERTEXT_LEN)
    }
}

/// An X-Wing encapsulation (public) key.
#[derive(Clone)]
pub struct EncapsulationKey(x_wing::EncapsulationKey);

impl EncapsulationKey {
    /// Decodes and validates an encapsulation key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KemError> {
        if bytes.len() != ENCAPSULATION_KEY_LEN {
            return Err(KemError::Length {
                what: "X-Wing encapsulation key",
                expected: ENCAPSULATION_KEY_LEN,
                got: bytes.len(),
            });
        }
        x_wing::EncapsulationKey::try_from(bytes)
            .map(Self)
            .map_err(|_| KemError::InvalidKey)
    }

    /// The wire encoding.
    pub fn to_bytes(&self) -> [u8; ENCAPSULATION_KEY_LEN] {
        let mut out = [0u8; ENCAPSULATION_KEY_LEN];
        out.copy_from_slice(&self.0.to_bytes());
        out
    }

    /// Encapsulates a fresh shared secret to this key.
    pub fn encapsulate(&self) -> Result<(Ciphertext, SharedSecret), KemError> {
        let mut randomness = [0u8; 64];
        aws_lc_rs::rand::fill(&mut randomness).map_err(|_| KemError::Random)?;
        let out = self.encapsulate_with_randomness(&randomness);
        randomness.fill(0);
        Ok(out)
    }

    /// Deterministic encapsulation, for the draft's test vectors only: reusing
    /// `randomness` is catastrophic, so this stays private to the crate.
    fn encapsulate_with_randomness(&self, randomness: &[u8; 64]) -> (Ciphertext, SharedSecret) {
        let (ct, ss) = self.0.encapsulate_deterministic(&(*randomness).into());
        let mut ct_bytes = [0u8; CIPHERTEXT_LEN];
        ct_bytes.copy_from_slice(&ct);
        let mut ss_bytes = [0u8; SHARED_SECRET_LEN];
        ss_bytes.copy_from_slice(&ss);
        (Ciphertext(Box::new(ct_bytes)), SharedSecret(ss_bytes))
    }
}

impl fmt::Debug for EncapsulationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("XWingEncapsulationKey(..)")
    }
}

/// An X-Wing decapsulation (private) key.
pub struct DecapsulationKey(x_wing::DecapsulationKey);

impl DecapsulationKey {
    /// Generates a fresh key pair from the system RNG.
    pub fn generate() -> Result<Self, KemError> {
        let mut seed = [0u8; DECAPSULATION_KEY_LEN];
        aws_lc_rs::rand::fill(&mut seed).map_err(|_| KemError::Random)?;
        let key = Self::from_seed(seed);
        seed.fill(0);
        Ok(key)
    }

    /// Rebuilds a key from its 32-byte seed.
    pub fn from_seed(seed: [u8; DECAPSULATION_KEY_LEN]) -> Self {
        Self(x_wing::DecapsulationKey::from(seed))
    }

    /// Decodes a key from its seed bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KemError> {
        let seed: [u8; DECAPSULATION_KEY_LEN] = bytes.try_into().map_err(|_| KemError::Length {
            what: "X-Wing decapsulation key",
            expected: DECAPSULATION_KEY_LEN,
            got: bytes.len(),
        })?;
        Ok(Self::from_seed(seed))
    }

    /// The 32-byte seed. Keep it secret.
    pub fn seed(&self) -> &[u8; DECAPSULATION_KEY_LEN] {
        self.0.as_bytes()
    }

    /// The matching encapsulation key.
    pub fn encapsulation_key(&self) -> EncapsulationKey {
        EncapsulationKey(self.0.encapsulation_key().clone())
    }

    /// Recovers the shared secret. A tampered ciphertext yields a different,
    /// unpredictable secret rather than an error (implicit rejection).
    pub fn decapsulate(&self, ct: &Ciphertext) -> SharedSecret {
        let ct: x_wing::Ciphertext = (*ct.0).into();
        let ss = self.0.decapsulate(&ct);
        let mut out = [0u8; SHARED_SECRET_LEN];
        out.copy_from_slice(&ss);
        SharedSecret(out)
    }
}

impl fmt::Debug for DecapsulationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("XWingDecapsulationKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Vector {
        seed: String,
        eseed: String,
        ss: String,
        sk: String,
        pk: String,
        ct: String,
    }

    fn unhex(s: &str) -> Vec<u8> {
        data_encoding::HEXLOWER_PERMISSIVE
            .decode(s.as_bytes())
            .expect("test vector hex")
    }

    /// The draft's published vectors (spec/test-vectors.json of
    /// draft-connolly-cfrg-xwing-kem, as shipped by the `x-wing` crate).
    #[test]
    fn reproduces_draft_test_vectors() {
        let vectors: Vec<Vector> =
            serde_json::from_str(include_str!("testdata/xwing-test-vectors.json")).unwrap();
        assert_eq!(vectors.len(), 3);
        for v in vectors {
            let dk = DecapsulationKey::from_bytes(&unhex(&v.seed)).unwrap();
            assert_eq!(dk.seed().to_vec(), unhex(&v.sk));
            let ek = dk.encapsulation_key();
            assert_eq!(ek.to_bytes().to_vec(), unhex(&v.pk));
            let eseed: [u8; 64] = unhex(&v.eseed).try_into().unwrap();
            let (ct, ss) = ek.encapsulate_with_randomness(&eseed);
            assert_eq!(ct.as_bytes().to_vec(), unhex(&v.ct));
            assert_eq!(ss.0.to_vec(), unhex(&v.ss));
            assert_eq!(dk.decapsulate(&ct), ss);
        }
    }

    #[test]
    fn round_trip_and_implicit_rejection() {
        let dk = DecapsulationKey::generate().unwrap();
        let ek = EncapsulationKey::from_bytes(&dk.encapsulation_key().to_bytes()).unwrap();
        let (ct, ss) = ek.encapsulate().unwrap();
        assert_eq!(dk.decapsulate(&ct), ss);
        // Tamper with the ML-KEM part and with the X25519 part: each gives a
        // different secret, and no error.
        for i in [0, 500, CIPHERTEXT_LEN - 1] {
            let mut bad = *ct.as_bytes();
            bad[i] ^= 0x01;
            let bad = Ciphertext::from_bytes(&bad).unwrap();
            assert_ne!(dk.decapsulate(&bad), ss, "tampered byte {i}");
        }
        // Another key decapsulates to something else.
        let other = DecapsulationKey::generate().unwrap();
        assert_ne!(other.decapsulate(&ct), ss);
    }

    #[test]
    fn bad_encodings_are_refused() {
        assert!(matches!(
            Ciphertext::from_bytes(&[0; 10]),
            Err(KemError::Length { .. })
        ));
        assert!(matches!(
            EncapsulationKey::from_bytes(&[0; 10]),
            Err(KemError::Length { .. })
        ));
        // Coefficients >= q fail ML-KEM's modulus check.
        assert_eq!(
            EncapsulationKey::from_bytes(&[0xff; ENCAPSULATION_KEY_LEN]).unwrap_err(),
            KemError::InvalidKey
        );
        assert!(DecapsulationKey::from_bytes(&[0; 31]).is_err());
    }
}
