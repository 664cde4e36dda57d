//! SPIFFE IDs and trust domains, validated exactly as the SPIFFE ID
//! specification (spiffe/spiffe `standards/SPIFFE-ID.md`) requires.
//!
//! Hand-written because the parser is the whole point: a general URL crate
//! would accept (and normalise away) percent-encoding, upper-case hosts,
//! dot segments and empty segments that the specification forbids, and we
//! want every rejection to name the rule it broke.

use std::fmt;
use std::str::FromStr;

/// Longest SPIFFE ID the specification allows, in bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain name the specification allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME_PREFIX: &str = "spiffe://";

/// Why a string is not a valid SPIFFE ID or trust domain. Each variant names
/// the rule of the specification that the input broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input was empty.
    #[error("SPIFFE ID is empty; expected spiffe://<trust-domain>/<path>")]
    Empty,
    /// Longer than [`MAX_SPIFFE_ID_LEN`].
    #[error("SPIFFE ID is {len} bytes; the specification allows at most {MAX_SPIFFE_ID_LEN}")]
    TooLong {
        /// Length of the rejected input in bytes.
        len: usize,
    },
    /// The scheme is not exactly `spiffe`.
    #[error("SPIFFE ID must start with the scheme \"spiffe://\" (lower case)")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("SPIFFE ID has no trust domain after \"spiffe://\"")]
    MissingTrustDomain,
    /// Trust domain longer than [`MAX_TRUST_DOMAIN_LEN`].
    #[error("trust domain is {len} bytes; the specification allows at most {MAX_TRUST_DOMAIN_LEN}")]
    TrustDomainTooLong {
        /// Length of the rejected trust domain in bytes.
        len: usize,
    },
    /// The authority carries a port (`:`).
    #[error("trust domain must not contain a port (found ':')")]
    Port,
    /// The authority carries user info (`@`).
    #[error("trust domain must not contain user info (found '@')")]
    UserInfo,
    /// A character outside `[a-z0-9._-]` in the trust domain.
    #[error(
        "trust domain may contain only lower-case letters, digits, '.', '-' and '_' (found {found:?} at byte {at})"
    )]
    TrustDomainChar {
        /// The offending character.
        found: char,
        /// Its byte offset within the trust domain.
        at: usize,
    },
    /// A query component (`?`).
    #[error("SPIFFE ID must not contain a query (found '?')")]
    Query,
    /// A fragment component (`#`).
    #[error("SPIFFE ID must not contain a fragment (found '#')")]
    Fragment,
    /// Two consecutive slashes.
    #[error("path segment {index} is empty (\"//\"); path segments must not be empty")]
    EmptySegment {
        /// 0-based index of the segment.
        index: usize,
    },
    /// A `.` or `..` segment.
    #[error("path segment {index} is {segment:?}; dot segments are not allowed")]
    DotSegment {
        /// 0-based index of the segment.
        index: usize,
        /// The segment itself (`.` or `..`).
        segment: String,
    },
    /// The path ends in `/`.
    #[error("path must not end with '/'")]
    TrailingSlash,
    /// A character outside `[A-Za-z0-9._-]` in the path.
    #[error(
        "path may contain only letters, digits, '.', '-' and '_' between '/' separators (found {found:?} in segment {index})"
    )]
    PathChar {
        /// The offending character.
        found: char,
        /// 0-based index of the segment holding it.
        index: usize,
    },
}

/// A validated SPIFFE trust domain name, e.g. `example.org`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`, not `spiffe://example.org`).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The trust domain name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of the trust domain itself (`spiffe://<name>`), used as
    /// the CA's identity.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            trust_domain_len: self.0.len(),
            id: format!("{SCHEME_PREFIX}{}", self.0),
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A validated SPIFFE ID, e.g. `spiffe://example.org/node/abc`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    id: String,
    trust_domain_len: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: input.len() });
        }
        let rest = input
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(SpiffeIdError::WrongScheme)?;
        // Query and fragment are checked first so that "spiffe://td?x" is
        // reported as a query rather than a bad trust-domain character.
        if rest.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        let (domain, path) = match rest.find('/') {
            Some(slash) => rest.split_at(slash),
            None => (rest, ""),
        };
        validate_trust_domain(domain)?;
        validate_path(path)?;
        Ok(Self {
            id: input.to_owned(),
            trust_domain_len: domain.len(),
        })
    }

    /// Builds `spiffe://<trust_domain><path>`; `path` is empty or starts with `/`.
    pub fn from_parts(trust_domain: &TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!("{SCHEME_PREFIX}{}{path}", trust_domain.as_str()))
    }

    /// The trust domain name.
    pub fn trust_domain_name(&self) -> &str {
        &self.id[SCHEME_PREFIX.len()..SCHEME_PREFIX.len() + self.trust_domain_len]
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.id[SCHEME_PREFIX.len() + self.trust_domain_len..]
    }

    /// Whether this ID belongs to `trust_domain`.
    pub fn is_member_of(&self, trust_domain: &TrustDomain) -> bool {
        self.trust_domain_name() == trust_domain.as_str()
    }

    /// The full ID as a string.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn validate_trust_domain(domain: &str) -> Result<(), SpiffeIdError> {
    if domain.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if domain.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong { len: domain.len() });
    }
    if domain.contains('@') {
        return Err(SpiffeIdError::UserInfo);
    }
    if domain.contains(':') {
        return Err(SpiffeIdError::Port);
    }
    for (at, found) in domain.char_indices() {
        if !matches!(found, 'a'..='z' | '0'..='9' | '.' | '-' | '_') {
            return Err(SpiffeIdError::TrustDomainChar { found, at });
        }
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash);
    }
    // `path` starts with '/', so the first split element is the empty
    // string before it.
    for (index, segment) in path.split('/').skip(1).enumerate() {
        if segment.is_empty() {
            return Err(SpiffeIdError::EmptySegment { index });
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment {
                index,
                segment: segment.to_owned(),
            });
        }
        if let Some(found) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(SpiffeIdError::PathChar { found, index });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> SpiffeIdError {
        SpiffeId::parse(s).expect_err(s)
    }

    #[test]
    fn accepts_valid_ids() {
        for ok in [
            "spiffe://example.org",
            "spiffe://example.org/node/abc",
            "spiffe://a-b_c.9/Path.With-Mixed_Case/0",
            "spiffe://td/..a/a..",
        ] {
            let id = SpiffeId::parse(ok).expect(ok);
            assert_eq!(id.as_str(), ok);
        }
        let id = SpiffeId::parse("spiffe://example.org/node/abc").unwrap();
        assert_eq!(id.trust_domain_name(), "example.org");
        assert_eq!(id.path(), "/node/abc");
        assert!(id.is_member_of(&TrustDomain::new("example.org").unwrap()));
        assert!(!id.is_member_of(&TrustDomain::new("example.com").unwrap()));
    }

    #[test]
    fn each_rule_is_named() {
        assert_eq!(err(""), SpiffeIdError::Empty);
        assert_eq!(err("https://example.org/x"), SpiffeIdError::WrongScheme);
        assert_eq!(err("SPIFFE://example.org/x"), SpiffeIdError::WrongScheme);
        assert_eq!(err("spiffe:/example.org"), SpiffeIdError::WrongScheme);
        assert_eq!(err("spiffe://"), SpiffeIdError::MissingTrustDomain);
        assert_eq!(err("spiffe:///path"), SpiffeIdError::MissingTrustDomain);
        assert_eq!(err("spiffe://example.org:8443/x"), SpiffeIdError::Port);
        assert_eq!(err("spiffe://user@example.org/x"), SpiffeIdError::UserInfo);
        assert_eq!(
            err("spiffe://Example.org"),
            SpiffeIdError::TrustDomainChar { found: 'E', at: 0 }
        );
        assert_eq!(
            err("spiffe://exa%20mple.org"),
            SpiffeIdError::TrustDomainChar { found: '%', at: 3 }
        );
        assert_eq!(err("spiffe://example.org/x?y=1"), SpiffeIdError::Query);
        assert_eq!(err("spiffe://example.org/x#frag"), SpiffeIdError::Fragment);
        assert_eq!(
            err("spiffe://example.org//x"),
            SpiffeIdError::EmptySegment { index: 0 }
        );
        assert_eq!(err("spiffe://example.org/x/"), SpiffeIdError::TrailingSlash);
        assert_eq!(err("spiffe://example.org/"), SpiffeIdError::TrailingSlash);
        assert_eq!(
            err("spiffe://example.org/a/./b"),
            SpiffeIdError::DotSegment {
                index: 1,
                segment: ".".into()
            }
        );
        assert_eq!(
            err("spiffe://example.org/a/.."),
            SpiffeIdError::DotSegment {
                index: 1,
                segment: "..".into()
            }
        );
        assert_eq!(
            err("spiffe://example.org/a%2Fb"),
            SpiffeIdError::PathChar {
                found: '%',
                index: 0
            }
        );
        assert_eq!(
            err("spiffe://example.org/ü"),
            SpiffeIdError::PathChar {
                found: 'ü',
                index: 0
            }
        );
    }

    #[test]
    fn length_limits() {
        let long = format!("spiffe://example.org/{}", "a".repeat(MAX_SPIFFE_ID_LEN));
        assert_eq!(err(&long), SpiffeIdError::TooLong { len: long.len() });
        let exact = format!(
            "spiffe://example.org/{}",
            "a".repeat(MAX_SPIFFE_ID_LEN - "spiffe://example.org/".len())
        );
        assert_eq!(exact.len(), MAX_SPIFFE_ID_LEN);
        assert!(SpiffeId::parse(&exact).is_ok());
        let td = "a".repeat(MAX_TRUST_DOMAIN_LEN + 1);
        assert_eq!(
            TrustDomain::new(&td),
            Err(SpiffeIdError::TrustDomainTooLong { len: td.len() })
        );
    }

    #[test]
    fn error_messages_name_the_rule() {
        let msg = err("spiffe://example.org:1/x").to_string();
        assert!(msg.contains("port"), "{msg}");
        let msg = err("spiffe://example.org/a//b").to_string();
        assert!(msg.contains("empty"), "{msg}");
    }

    #[test]
    fn trust_domain_round_trip() {
        let td = TrustDomain::new("mesh.example").unwrap();
        assert_eq!(td.id().as_str(), "spiffe://mesh.example");
        let id = SpiffeId::from_parts(&td, "/node/x").unwrap();
        assert_eq!(id.trust_domain(), td);
        assert!(TrustDomain::new("spiffe://mesh.example").is_err());
    }
}
