//! Fuzzes decoding and verification of composite ML-DSA-65 + Ed25519
//! signatures (`weft_crypto::sign`).
//!
//! Properties checked:
//! - `CompositeSignature::from_bytes` and `CompositePublicKey::from_bytes`
//!   never panic, and what they accept re-encodes to the input bytes;
//! - a decoded signature (the raw input, and the input zero-padded or
//!   truncated to the signature length, so that verification is reached on
//!   every run) never verifies under a fixed key: `verify` returns `Err`;
//! - with the input split as `n = data[0]`, `context = next n bytes`
//!   (bounded by the input), `message = rest`, verifying a fixed valid
//!   signature (made over `b"msg"` / `b"ctx"`) does not panic, and succeeds
//!   only for exactly that message and context.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weft_crypto::sign::{
    CompositePublicKey, CompositeSignature, CompositeSigningKey, SIGNATURE_LEN,
};

struct Fixture {
    key: CompositeSigningKey,
    signature: CompositeSignature,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let key = CompositeSigningKey::from_bytes(&[7u8; 64]).expect("fixed seed is valid");
        let signature = key.sign(b"msg", b"ctx").expect("signing works");
        key.public_key()
            .verify(b"msg", b"ctx", &signature)
            .expect("fixed signature verifies");
        Fixture { key, signature }
    })
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    let public = fx.key.public_key();

    // Decoding the raw input.
    if let Ok(sig) = CompositeSignature::from_bytes(data) {
        assert_eq!(&sig.as_bytes()[..], data);
        assert!(
            public.verify(b"msg", b"ctx", &sig).is_err(),
            "a fuzzer-made signature verified"
        );
    }
    if let Ok(pk) = CompositePublicKey::from_bytes(data) {
        assert_eq!(&pk.as_bytes()[..], data);
        // Verifying under an arbitrary decodable key must not panic.
        let _ = pk.verify(b"msg", b"ctx", &fx.signature);
    }

    // Reach verification on every run: fit the input to the signature length.
    let mut fitted = vec![0u8; SIGNATURE_LEN];
    let n = data.len().min(SIGNATURE_LEN);
    fitted[..n].copy_from_slice(&data[..n]);
    if fitted[..] != fx.signature.as_bytes()[..] {
        let sig = CompositeSignature::from_bytes(&fitted).expect("length is exact");
        assert!(
            public.verify(b"msg", b"ctx", &sig).is_err(),
            "a fuzzer-made signature verified"
        );
    }

    // Split: n = first byte, context = next n bytes (bounded), message = rest.
    if let Some((&n, rest)) = data.split_first() {
        let n = usize::from(n).min(rest.len());
        let (context, message) = rest.split_at(n);
        let result = public.verify(message, context, &fx.signature);
        let expected = message == b"msg" && context == b"ctx";
        assert_eq!(result.is_ok(), expected, "verify({message:?}, {context:?}) = {result:?}");
    }
});
