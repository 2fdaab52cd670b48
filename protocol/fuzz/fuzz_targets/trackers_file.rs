//! The trackers file: any text parses to entries or a typed error.
#![no_main]

use fileshare_protocol::trackers_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(entries) = trackers_file::parse_entries(text, "fuzz") {
        assert!(!entries.is_empty());
    }
    let _ = trackers_file::parse(text, "fuzz");
});
