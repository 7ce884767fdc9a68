//! Fuzzes `parse_status_json`: any input must give a report or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = icecast_poller::status::parse_status_json(text);
    }
});
