//! Fuzzes the node key-file parser, `NodeIdentity::from_key_file`.
//!
//! Properties checked:
//! - it never panics, whatever the bytes (the parser is documented as total);
//! - a key file that parses round-trips: re-encoding it with `to_key_file`
//!   and parsing that again succeeds and yields the same node id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_crypto::NodeIdentity;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = NodeIdentity::from_key_file(data) {
        let text = id.to_key_file();
        let again = NodeIdentity::from_key_file(text.as_bytes())
            .expect("re-encoded key file must parse");
        assert_eq!(again.node_id(), id.node_id(), "node id changed across a round trip");
    }
});
