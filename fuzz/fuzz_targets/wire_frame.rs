//! Fuzzes the mesh wire decoder (`weft_proto::wire`).
//!
//! Properties checked:
//! - `decode_frame` and `decode_exact` never panic, whatever the bytes;
//! - a decoded message re-encodes to exactly the bytes it was decoded from,
//!   and its `encoded_len` matches;
//! - decoding a stream frame by frame consumes the input in order until an
//!   error or an incomplete frame, never more bytes than there are.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proto::wire::{Decoded, decode_exact, decode_frame};

fuzz_target!(|data: &[u8]| {
    let _ = decode_exact(data);
    let mut at = 0;
    while at < data.len() {
        match decode_frame(&data[at..]) {
            Ok(Decoded::Message(m, used)) => {
                assert!(used > 0 && at + used <= data.len(), "decoder claimed bytes it was not given");
                let bytes = m.to_bytes().expect("a decoded message re-encodes");
                assert_eq!(bytes.len(), m.encoded_len());
                assert_eq!(&bytes[..], &data[at..at + used], "re-encoding differs from the input");
                at += used;
            }
            Ok(Decoded::NeedMore) | Err(_) => break,
        }
    }
});
