//! Fuzzes the simulator's edge-list parser (`weft_sim::topology::parse_edge_list`).
//!
//! Properties checked: it never panics; an accepted graph has at least one
//! edge, every edge within `0..nodes`, no self-loops and no duplicates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_sim::topology::parse_edge_list;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = parse_edge_list(data) {
        assert!(!g.edges.is_empty());
        let mut seen = std::collections::HashSet::new();
        for &(a, b) in &g.edges {
            assert!(a < b && b < g.nodes, "edge ({a}, {b}) out of order or range");
            assert!(seen.insert((a, b)), "duplicate edge");
        }
    }
});
