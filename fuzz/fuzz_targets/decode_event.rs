//! Any bytes as a log record: the decoder must return an error, never panic, and every record
//! it decodes must survive being encoded again (see `missive_api::fuzzing::decode_event`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = missive_api::fuzzing::decode_event(data);
});
