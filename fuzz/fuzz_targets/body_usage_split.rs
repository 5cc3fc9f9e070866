//! A non-streaming JSON body's usage scanner, fed whole and in pieces: no panic, the same usage.
#![no_main]
use libfuzzer_sys::fuzz_target;
use llmproxy::usage::BodyUsageScanner;

#[path = "split.rs"]
mod split;

fuzz_target!(|data: &[u8]| {
    let Some(inp) = split::input(data) else { return };
    let mut whole = BodyUsageScanner::default();
    whole.feed(inp.body);
    let mut split = BodyUsageScanner::default();
    for p in inp.pieces() {
        split.feed(p);
    }
    assert_eq!(whole.result(), split.result());
});
