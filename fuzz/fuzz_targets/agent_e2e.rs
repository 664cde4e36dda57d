//! Fuzzes the agent's end-to-end message decoder (`weft_agent::e2e::E2e::open`)
//! with a session already established, so Data, Init and Accept parsing and
//! the replay window are all reached.
//!
//! Properties checked: it never panics; a forged Data message (the fuzzer
//! cannot compute the AEAD tag) is never opened.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use weft_agent::e2e::{E2e, E2eConfig};
use weft_crypto::NodeId;
use weft_crypto::kem::DecapsulationKey;
use weft_proto::time::Time;

const A: NodeId = NodeId([1; 32]);
const B: NodeId = NodeId([2; 32]);

fn pair() -> (E2e, E2e) {
    let (ka, kb) = (
        DecapsulationKey::from_seed([7; 32]),
        DecapsulationKey::from_seed([9; 32]),
    );
    let (eka, ekb) = (ka.encapsulation_key(), kb.encapsulation_key());
    let mut a = E2e::new(A, ka, E2eConfig::default());
    let mut b = E2e::new(B, kb, E2eConfig::default());
    a.set_peer_key(B, ekb);
    b.set_peer_key(A, eka);
    let now = Time::from_secs(1);
    a.seal(now, B, b"hello".to_vec()).expect("seal");
    // Complete the handshake.
    for _ in 0..4 {
        while let Some((_, m)) = a.poll_transmit() {
            let _ = b.open(now, A, &m);
        }
        while let Some((_, m)) = b.poll_transmit() {
            let _ = a.open(now, B, &m);
        }
    }
    (a, b)
}

thread_local! {
    static PAIR: RefCell<Option<(E2e, E2e)>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    PAIR.with(|p| {
        let mut p = p.borrow_mut();
        let (_, b) = p.get_or_insert_with(pair);
        if let Ok(Some(plain)) = b.open(Time::from_secs(2), A, data) {
            panic!("a fuzzer-made message opened: {} bytes", plain.len());
        }
        while b.poll_transmit().is_some() {}
    });
});
