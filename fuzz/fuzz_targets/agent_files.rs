//! Fuzzes the agent's file parsers: the network file
//! (`weft_agent::network::Network::from_json`) and agent.toml
//! (`weft_agent::config::AgentSettings::parse`).
//!
//! Properties checked: neither panics; an accepted network file encodes
//! back to one that parses to the same nodes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_agent::config::AgentSettings;
use weft_agent::network::Network;

fuzz_target!(|data: &[u8]| {
    if let Ok(net) = Network::from_json(data) {
        let back = Network::from_json(net.to_json().as_bytes()).expect("re-encoded file parses");
        assert_eq!(back.nodes.len(), net.nodes.len());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = AgentSettings::parse(text, "fuzz.toml", |_| None);
    }
});
