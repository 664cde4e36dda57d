//! Token secrets: made from the system's CSPRNG, shown once, stored only
//! as a salted HMAC-SHA-256.
//!
//! A token reads `weft_<kind>_<id>_<secret>`: the kind (`join` or `api`),
//! the record id (32 hex digits, so the store finds the record without
//! scanning) and 32 random bytes in lowercase base32. The store keeps a
//! random 16-byte salt and `HMAC-SHA-256(salt, kind ‖ id ‖ secret)`; a
//! presented token is checked in constant time. Tokens carry 256 bits of
//! entropy, so a fast salted hash is enough: there is nothing to brute
//! force.

use aws_lc_rs::{hmac, rand};
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::model::SecretToken;

/// Random bytes in a token's secret.
const SECRET_BYTES: usize = 32;
/// Salt bytes.
pub(crate) const SALT_BYTES: usize = 16;
/// Longest token text accepted for parsing.
const MAX_TOKEN_LEN: usize = 128;

/// What a token is for; part of its text and of its hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// Admits a node to a network.
    Join,
    /// Authenticates an operator.
    Api,
}

impl TokenKind {
    fn tag(self) -> &'static str {
        match self {
            TokenKind::Join => "join",
            TokenKind::Api => "api",
        }
    }

    /// The kind's name in errors.
    pub(crate) fn label(self) -> &'static str {
        match self {
            TokenKind::Join => "join",
            TokenKind::Api => "API",
        }
    }
}

/// What the store keeps of a token.
pub(crate) struct Hashed {
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
}

/// A presented token, split into its parts.
pub(crate) struct Presented {
    pub id: Uuid,
    secret: Vec<u8>,
}

fn random(len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    rand::fill(&mut buf)
        .map_err(|_| StoreError::invalid("token", "the system random number generator failed"))?;
    Ok(buf)
}

fn mac(kind: TokenKind, salt: &[u8], id: Uuid, secret: &[u8]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, salt);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(kind.tag().as_bytes());
    ctx.update(id.as_bytes());
    ctx.update(secret);
    ctx.sign()
}

/// A new token for record `id`: its text, to show once, and what to store.
pub(crate) fn generate(kind: TokenKind, id: Uuid) -> Result<(SecretToken, Hashed)> {
    let secret = random(SECRET_BYTES)?;
    let salt = random(SALT_BYTES)?;
    let hash = mac(kind, &salt, id, &secret).as_ref().to_vec();
    let mut text = data_encoding::BASE32_NOPAD.encode(&secret);
    text.make_ascii_lowercase();
    let token = format!("weft_{}_{}_{text}", kind.tag(), id.simple());
    Ok((SecretToken::new(token), Hashed { salt, hash }))
}

/// Splits a presented token; anything malformed is
/// [`StoreError::TokenInvalid`], with no hint of what was wrong.
pub(crate) fn parse(kind: TokenKind, token: &str) -> Result<Presented> {
    let invalid = || StoreError::TokenInvalid { kind: kind.label() };
    if token.len() > MAX_TOKEN_LEN {
        return Err(invalid());
    }
    let rest = token
        .strip_prefix("weft_")
        .and_then(|r| r.strip_prefix(kind.tag()))
        .and_then(|r| r.strip_prefix('_'))
        .ok_or_else(invalid)?;
    let (id, secret) = rest.split_once('_').ok_or_else(invalid)?;
    if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(invalid());
    }
    let id = Uuid::try_parse(id).map_err(|_| invalid())?;
    if !secret
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7'))
    {
        return Err(invalid());
    }
    let secret = data_encoding::BASE32_NOPAD
        .decode(secret.to_ascii_uppercase().as_bytes())
        .map_err(|_| invalid())?;
    if secret.len() != SECRET_BYTES {
        return Err(invalid());
    }
    Ok(Presented { id, secret })
}

impl Presented {
    /// Whether the token matches the stored salt and hash (constant time).
    pub(crate) fn matches(&self, kind: TokenKind, salt: &[u8], hash: &[u8]) -> bool {
        let key = hmac::Key::new(hmac::HMAC_SHA256, salt);
        let mut msg = Vec::with_capacity(8 + 16 + self.secret.len());
        msg.extend_from_slice(kind.tag().as_bytes());
        msg.extend_from_slice(self.id.as_bytes());
        msg.extend_from_slice(&self.secret);
        hmac::verify(&key, &msg, hash).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_verify_and_others_do_not() {
        let id = Uuid::now_v7();
        let (token, stored) = generate(TokenKind::Join, id).unwrap();
        let p = parse(TokenKind::Join, token.expose()).unwrap();
        assert_eq!(p.id, id);
        assert!(p.matches(TokenKind::Join, &stored.salt, &stored.hash));
        // Same secret checked as another kind, or against another salt.
        assert!(!p.matches(TokenKind::Api, &stored.salt, &stored.hash));
        assert!(!p.matches(TokenKind::Join, &[0; SALT_BYTES], &stored.hash));
        // A join token is not an API token.
        assert!(parse(TokenKind::Api, token.expose()).is_err());
        // One flipped secret character.
        let mut text = token.expose().to_owned();
        let last = text.pop().unwrap();
        text.push(if last == 'a' { 'b' } else { 'a' });
        if let Ok(p) = parse(TokenKind::Join, &text) {
            assert!(!p.matches(TokenKind::Join, &stored.salt, &stored.hash));
        }
    }

    #[test]
    fn malformed_tokens_are_invalid() {
        let id = Uuid::now_v7().simple().to_string();
        let secret = "a".repeat(52);
        for bad in [
            String::new(),
            "weft_join_".into(),
            format!("weft_join_{id}"),
            format!("weft_join_{id}_"),
            format!("weft_join_{}_{secret}", id.to_uppercase()),
            format!("weft_join_{id}_{}", "A".repeat(52)),
            format!("weft_join_{id}_{}", "a".repeat(51)),
            format!("weft_join_{id}_{}", "a".repeat(200)),
            format!("weft_api_{id}_{secret}"),
        ] {
            assert!(
                matches!(
                    parse(TokenKind::Join, &bad),
                    Err(StoreError::TokenInvalid { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
