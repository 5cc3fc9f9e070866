//! A config file from any text: `Config::parse` reports problems, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = llmproxy::config::Config::parse(text, "fuzz.toml");
    }
});
