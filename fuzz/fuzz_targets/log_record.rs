//! `eddy::log::decode` fed arbitrary bytes: what recovery and every read
//! make of a segment file's contents, whatever a crash, a power cut or a
//! bad disk left in it.
//!
//! Checks that it never panics; that a record it accepts is exactly what
//! `encode` writes for that seq and payload (so nothing is accepted that
//! Eddy could not have written); that every proper prefix of a record is
//! `Incomplete` and asks for more than it has; and that walking a buffer
//! record by record, as a scan does, always moves forward and ends.
#![no_main]

use eddy::log::{Decoded, HEADER_BYTES, MAX_PAYLOAD, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|buf: &[u8]| {
    let mut at = 0;
    while let Some(rest) = buf.get(at..) {
        match decode(rest) {
            Decoded::Record { seq, payload, size } => {
                assert!(size >= HEADER_BYTES && size <= rest.len(), "{size}");
                assert_eq!(size, HEADER_BYTES + payload.len());
                assert!(payload.len() <= MAX_PAYLOAD);
                let mut again = Vec::new();
                encode(seq, payload, &mut again).expect("a decoded payload fits");
                assert_eq!(again, rest[..size], "decode accepts only what encode writes");
                // A record cut anywhere is incomplete, never a different record.
                for cut in [0, 1, HEADER_BYTES - 1, HEADER_BYTES, size - 1] {
                    if cut < size {
                        match decode(&rest[..cut]) {
                            Decoded::Incomplete { needed } => assert!(needed > cut),
                            other => panic!("prefix of {cut} bytes of {size}: {other:?}"),
                        }
                    }
                }
                at += size;
            }
            Decoded::Incomplete { needed } => {
                assert!(needed > rest.len(), "needs {needed}, has {}", rest.len());
                assert!(needed <= HEADER_BYTES + MAX_PAYLOAD);
                break;
            }
            Decoded::Invalid(_) => break,
        }
    }
});
