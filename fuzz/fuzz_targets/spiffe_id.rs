//! Fuzzes the SPIFFE ID and trust-domain parsers, `SpiffeId::parse` and
//! `TrustDomain::new`, on every UTF-8 input.
//!
//! Properties checked:
//! - neither parser panics;
//! - an accepted SPIFFE ID is stored verbatim (`as_str() == input`), is at
//!   most 2048 bytes, parses again, and has a non-empty trust domain name
//!   that is itself a valid `TrustDomain` the ID is a member of;
//! - an accepted trust domain is stored verbatim and its own ID
//!   (`spiffe://<name>`) parses back to the same trust domain.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_crypto::{SpiffeId, TrustDomain};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };

    if let Ok(id) = SpiffeId::parse(s) {
        assert_eq!(id.as_str(), s, "SPIFFE ID not stored verbatim");
        assert!(id.as_str().len() <= 2048, "accepted a SPIFFE ID over 2048 bytes");
        let again = SpiffeId::parse(id.as_str()).expect("accepted SPIFFE ID must re-parse");
        assert_eq!(again, id, "SPIFFE ID changed across a re-parse");
        assert!(!id.trust_domain_name().is_empty(), "empty trust domain accepted");
        let td = TrustDomain::new(id.trust_domain_name())
            .expect("trust domain of an accepted SPIFFE ID must be valid");
        assert!(id.is_member_of(&td));
        assert_eq!(
            format!("spiffe://{}{}", id.trust_domain_name(), id.path()),
            s,
            "trust domain and path do not reassemble the ID"
        );
    }

    if let Ok(td) = TrustDomain::new(s) {
        assert_eq!(td.as_str(), s, "trust domain not stored verbatim");
        let id = td.id();
        let parsed = SpiffeId::parse(id.as_str()).expect("trust domain's own ID must parse");
        assert_eq!(parsed.trust_domain(), td);
        assert_eq!(parsed.path(), "");
    }
});
