//! Subjects and subject filters with NATS semantics.
//!
//! A subject is a `.`-separated list of tokens (`telemetry.node.a1`). A
//! filter may also use `*` for exactly one token and `>` (last token only)
//! for one or more remaining tokens. Tokens are never empty; a token may
//! hold any visible ASCII character except `.`, `*` and `>` (a literal token
//! that contains `*` or `>` among other characters is refused, unlike NATS,
//! because it reads like a wildcard and almost always is a mistake).

use std::fmt;
use std::str::FromStr;

/// Longest subject or filter, in bytes.
pub const MAX_SUBJECT_LEN: usize = 256;
/// Most tokens in a subject or filter.
pub const MAX_SUBJECT_TOKENS: usize = 16;

/// Why a string is not a valid subject or filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The input was empty.
    #[error("subject is empty; expected tokens separated by '.', e.g. \"telemetry.node.a1\"")]
    Empty,
    /// Longer than [`MAX_SUBJECT_LEN`].
    #[error("subject is {len} bytes; at most {MAX_SUBJECT_LEN} are allowed")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
    },
    /// More than [`MAX_SUBJECT_TOKENS`] tokens.
    #[error("subject has {count} tokens; at most {MAX_SUBJECT_TOKENS} are allowed")]
    TooManyTokens {
        /// Number of tokens.
        count: usize,
    },
    /// Two dots in a row, or a leading or trailing dot.
    #[error("token {index} of the subject is empty (leading, trailing or double '.')")]
    EmptyToken {
        /// 0-based index of the token.
        index: usize,
    },
    /// A character that may not appear in a token.
    #[error(
        "token {index} of the subject contains {found:?}; tokens may hold visible ASCII except '.', '*' and '>'"
    )]
    BadChar {
        /// 0-based index of the token.
        index: usize,
        /// The offending character.
        found: char,
    },
    /// `*` or `>` in a subject that is published to (only filters may use them).
    #[error("token {index} is the wildcard {token:?}; a published subject must be concrete")]
    WildcardInSubject {
        /// 0-based index of the token.
        index: usize,
        /// The wildcard token.
        token: String,
    },
    /// `>` somewhere other than the last token.
    #[error("'>' is token {index} but may only be the last token of a filter")]
    TailNotLast {
        /// 0-based index of the token.
        index: usize,
    },
}

/// Checks the common rules; returns the tokens.
fn check(input: &str, allow_wildcards: bool) -> Result<(), SubjectError> {
    if input.is_empty() {
        return Err(SubjectError::Empty);
    }
    if input.len() > MAX_SUBJECT_LEN {
        return Err(SubjectError::TooLong { len: input.len() });
    }
    let count = input.split('.').count();
    if count > MAX_SUBJECT_TOKENS {
        return Err(SubjectError::TooManyTokens { count });
    }
    for (index, token) in input.split('.').enumerate() {
        if token.is_empty() {
            return Err(SubjectError::EmptyToken { index });
        }
        if token == "*" || token == ">" {
            if !allow_wildcards {
                return Err(SubjectError::WildcardInSubject {
                    index,
                    token: token.to_owned(),
                });
            }
            if token == ">" && index + 1 != count {
                return Err(SubjectError::TailNotLast { index });
            }
            continue;
        }
        if let Some(found) = token
            .chars()
            .find(|c| !c.is_ascii_graphic() || matches!(c, '*' | '>'))
        {
            return Err(SubjectError::BadChar { index, found });
        }
    }
    Ok(())
}

/// A concrete subject that messages are published to (no wildcards).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(String);

impl Subject {
    /// Parses and validates a concrete subject.
    pub fn new(input: &str) -> Result<Self, SubjectError> {
        check(input, false)?;
        Ok(Self(input.to_owned()))
    }

    /// The subject as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tokens of the subject.
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Subject {
    type Err = SubjectError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A subject filter: a subject whose tokens may be `*` (one token) or, last,
/// `>` (one or more tokens).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectFilter(String);

impl SubjectFilter {
    /// Parses and validates a filter.
    pub fn new(input: &str) -> Result<Self, SubjectError> {
        check(input, true)?;
        Ok(Self(input.to_owned()))
    }

    /// The filter as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the filter holds any wildcard.
    pub fn has_wildcards(&self) -> bool {
        self.0.split('.').any(|t| t == "*" || t == ">")
    }

    /// Whether `subject` matches this filter.
    pub fn matches(&self, subject: &Subject) -> bool {
        let mut filter = self.0.split('.');
        let mut tokens = subject.0.split('.');
        loop {
            match (filter.next(), tokens.next()) {
                (None, None) => return true,
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(f), Some(t)) if f == t => {}
                _ => return false,
            }
        }
    }

    /// Whether some concrete subject matches both filters.
    pub fn overlaps(&self, other: &SubjectFilter) -> bool {
        let mut a = self.0.split('.');
        let mut b = other.0.split('.');
        loop {
            match (a.next(), b.next()) {
                (None, None) => return true,
                (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
                (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
                (Some(x), Some(y)) if x == y => {}
                _ => return false,
            }
        }
    }

    /// Whether every subject matched by `self` is also matched by `other`.
    pub fn is_subset_of(&self, other: &SubjectFilter) -> bool {
        let mut a = self.0.split('.');
        let mut b = other.0.split('.');
        loop {
            match (a.next(), b.next()) {
                (None, None) => return true,
                (Some(_), Some(">")) => return true,
                (Some(">"), Some(_)) => return false,
                (Some(_), Some("*")) => {}
                (Some("*"), Some(_)) => return false,
                (Some(x), Some(y)) if x == y => {}
                _ => return false,
            }
        }
    }
}

impl From<Subject> for SubjectFilter {
    fn from(s: Subject) -> Self {
        Self(s.0)
    }
}

impl fmt::Display for SubjectFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for SubjectFilter {
    type Err = SubjectError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl serde::Serialize for SubjectFilter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SubjectFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(x: &str) -> Subject {
        Subject::new(x).unwrap()
    }
    fn f(x: &str) -> SubjectFilter {
        SubjectFilter::new(x).unwrap()
    }

    #[test]
    fn validation_names_the_rule() {
        assert_eq!(Subject::new(""), Err(SubjectError::Empty));
        assert_eq!(
            Subject::new("a..b"),
            Err(SubjectError::EmptyToken { index: 1 })
        );
        assert_eq!(
            Subject::new(".a"),
            Err(SubjectError::EmptyToken { index: 0 })
        );
        assert_eq!(
            Subject::new("a."),
            Err(SubjectError::EmptyToken { index: 1 })
        );
        assert_eq!(
            Subject::new("a.*"),
            Err(SubjectError::WildcardInSubject {
                index: 1,
                token: "*".into()
            })
        );
        assert_eq!(
            Subject::new("a b"),
            Err(SubjectError::BadChar {
                index: 0,
                found: ' '
            })
        );
        assert_eq!(
            SubjectFilter::new("a.b*"),
            Err(SubjectError::BadChar {
                index: 1,
                found: '*'
            })
        );
        assert_eq!(
            SubjectFilter::new("a.>.b"),
            Err(SubjectError::TailNotLast { index: 1 })
        );
        assert_eq!(
            Subject::new(&"a".repeat(257)),
            Err(SubjectError::TooLong { len: 257 })
        );
        assert_eq!(
            Subject::new(&["a"; 17].join(".")),
            Err(SubjectError::TooManyTokens { count: 17 })
        );
        assert!(Subject::new("$DLQ.jobs.worker-1").is_ok());
        assert!(Subject::new("é").is_err());
    }

    #[test]
    fn wildcard_matching() {
        assert!(f("a.*.c").matches(&s("a.b.c")));
        assert!(!f("a.*.c").matches(&s("a.b.b.c")));
        assert!(!f("a.*").matches(&s("a")));
        assert!(f("a.>").matches(&s("a.b")));
        assert!(f("a.>").matches(&s("a.b.c.d")));
        assert!(!f("a.>").matches(&s("a")));
        assert!(f(">").matches(&s("x")));
        assert!(f("*").matches(&s("x")));
        assert!(!f("*").matches(&s("x.y")));
        assert!(f("a.b").matches(&s("a.b")));
        assert!(!f("a.b").matches(&s("a.bb")));
    }

    #[test]
    fn overlap_and_subset() {
        assert!(f("a.*").overlaps(&f("*.b")));
        assert!(f("a.>").overlaps(&f("*.b.c")));
        assert!(!f("a.*").overlaps(&f("a.*.c")));
        assert!(!f("a.b").overlaps(&f("a.c")));
        assert!(f("a.b").is_subset_of(&f("a.*")));
        assert!(f("a.*.c").is_subset_of(&f("a.>")));
        assert!(!f("a.>").is_subset_of(&f("a.*")));
        assert!(!f("a.*").is_subset_of(&f("a.b")));
    }

    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("cc".to_owned())
        ]
    }
    fn subject() -> impl Strategy<Value = Subject> {
        proptest::collection::vec(token(), 1..5).prop_map(|t| Subject::new(&t.join(".")).unwrap())
    }
    fn filter() -> impl Strategy<Value = SubjectFilter> {
        (
            proptest::collection::vec(prop_oneof![token(), Just("*".to_owned())], 1..5),
            any::<bool>(),
        )
            .prop_map(|(mut t, tail)| {
                if tail {
                    t.push(">".to_owned());
                }
                SubjectFilter::new(&t.join(".")).unwrap()
            })
    }

    /// Reference matcher over token lists, written independently.
    fn reference(filter: &[&str], subject: &[&str]) -> bool {
        match (filter.split_first(), subject.split_first()) {
            (None, None) => true,
            (Some((&">", _)), Some(_)) => true,
            (Some((ft, fr)), Some((st, sr))) => (*ft == "*" || ft == st) && reference(fr, sr),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn matches_agrees_with_reference(fl in filter(), su in subject()) {
            let ft: Vec<&str> = fl.as_str().split('.').collect();
            let st: Vec<&str> = su.as_str().split('.').collect();
            prop_assert_eq!(fl.matches(&su), reference(&ft, &st));
        }

        #[test]
        fn overlap_is_sound_and_symmetric(a in filter(), b in filter(), su in subject()) {
            prop_assert_eq!(a.overlaps(&b), b.overlaps(&a));
            if a.matches(&su) && b.matches(&su) {
                prop_assert!(a.overlaps(&b));
            }
            if a.is_subset_of(&b) && a.matches(&su) {
                prop_assert!(b.matches(&su));
            }
        }

        #[test]
        fn overlap_has_a_witness(a in filter(), b in filter()) {
            // Build the most specific subject allowed by both; it must match both.
            if a.overlaps(&b) {
                let at: Vec<&str> = a.as_str().split('.').collect();
                let bt: Vec<&str> = b.as_str().split('.').collect();
                let mut w = Vec::new();
                let n = at.len().max(bt.len());
                for i in 0..n {
                    let x = at.get(i).copied().or(at.last().copied().filter(|t| *t == ">"));
                    let y = bt.get(i).copied().or(bt.last().copied().filter(|t| *t == ">"));
                    let t = match (x, y) {
                        (Some(x), Some(_)) if x != "*" && x != ">" => x,
                        (Some(_), Some(y)) if y != "*" && y != ">" => y,
                        _ => "z",
                    };
                    w.push(t);
                }
                let witness = Subject::new(&w.join(".")).unwrap();
                prop_assert!(a.matches(&witness) && b.matches(&witness), "{} {} {}", a, b, witness);
            }
        }

        #[test]
        fn parsers_never_panic(input in ".{0,300}") {
            let _ = Subject::new(&input);
            if let Ok(fl) = SubjectFilter::new(&input) {
                prop_assert!(fl.as_str().len() <= MAX_SUBJECT_LEN);
            }
        }
    }
}
