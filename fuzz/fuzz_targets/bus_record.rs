//! Fuzzes the embedded bus's on-disk record decoder and segment scan
//! (`weft_bus::record`).
//!
//! Properties checked:
//! - `decode_record` and `scan_segment` never panic, whatever the bytes;
//! - a decoded record re-encodes to exactly the bytes it was decoded from;
//! - a scan's records tile the valid prefix in order, each re-encoding to
//!   its bytes, message sequences strictly increase, and the valid prefix
//!   never exceeds the input;
//! - a scan ending clean consumed everything.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_bus::record::{Decoded, Record, Tail, decode_record, encode_record, scan_segment};

fn encode(r: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    encode_record(r, &mut out).expect("a decoded record re-encodes");
    out
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Decoded::Record(r, used)) = decode_record(data) {
        assert!(used <= data.len());
        assert_eq!(&encode(&r)[..], &data[..used], "re-encoding differs from the input");
    }
    let scan = scan_segment(data, 0);
    assert!(scan.valid_len <= data.len());
    let mut at = 0;
    let mut last = 0;
    for l in &scan.records {
        assert_eq!(l.offset, at, "records do not tile the valid prefix");
        assert_eq!(&encode(&l.record)[..], &data[l.offset..l.offset + l.len]);
        if let Record::Message(m) = &l.record {
            assert!(m.seq > last, "sequences must increase");
            last = m.seq;
        }
        at += l.len;
    }
    assert_eq!(at, scan.valid_len);
    if scan.tail == Tail::Clean {
        assert_eq!(scan.valid_len, data.len());
    }
});
