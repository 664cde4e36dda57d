//! Fuzzes the data plane's packet classification under a network policy
//! (`weft_agent::acl::Acl::allows`): IPv6 header, extension headers and
//! the transport's ports, straight from packets peers send.
//!
//! Properties checked: no panic; a policy that allows everything without
//! rules still refuses whatever is not IPv6.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_agent::acl::{Acl, AclRule, Nodes, Transport};
use weft_crypto::NodeId;

fuzz_target!(|data: &[u8]| {
    let (a, b) = (NodeId([1; 32]), NodeId([2; 32]));
    let open = Acl {
        version: 1,
        rules: vec![],
        default_allow: true,
    };
    if open.allows(&a, &b, data) {
        assert!(data.len() >= 40 && data[0] >> 4 == 6, "a non-IPv6 packet passed");
    }
    let ports = Acl {
        version: 2,
        rules: vec![AclRule {
            from: Nodes::Any,
            to: Nodes::Only([b].into()),
            ports: Some(vec![1..=1024]),
            transport: Transport::Any,
            allow: true,
        }],
        default_allow: false,
    };
    let _ = ports.allows(&a, &b, data);
});
