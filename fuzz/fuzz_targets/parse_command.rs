//! Any bytes as a command: the first byte picks the command (`missive_api::fuzzing::COMMANDS`),
//! the rest is its JSON body or WebSocket frame. A refusal must be a 4xx, never a panic or a
//! 500 (see `missive_api::fuzzing::parse_command`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = missive_api::fuzzing::parse_command(data);
});
