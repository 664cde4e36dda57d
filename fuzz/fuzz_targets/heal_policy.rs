//! Fuzzes the self-healing loop's text parsers: the policy file
//! (`weft_heal::Policy::parse`), targets and elements (`FromStr`) and
//! durations (`weft_heal::time::parse_duration`).
//!
//! Properties checked: they never panic; an accepted policy stays within
//! its limits (policies, actions per policy); accepted targets and
//! elements print back to text that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_heal::policy::{MAX_ACTIONS_PER_POLICY, MAX_POLICIES};
use weft_heal::{Element, Policy, Target};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = Policy::parse(text) {
        assert!(p.rules.len() <= MAX_POLICIES);
        for r in &p.rules {
            assert!(!r.actions.is_empty() && r.actions.len() <= MAX_ACTIONS_PER_POLICY);
        }
    }
    if let Ok(t) = text.parse::<Target>() {
        assert_eq!(t.to_string().parse::<Target>(), Ok(t));
    }
    if let Ok(e) = text.parse::<Element>() {
        assert_eq!(e.to_string().parse::<Element>(), Ok(e));
    }
    let _ = weft_heal::time::parse_duration(text);
});
