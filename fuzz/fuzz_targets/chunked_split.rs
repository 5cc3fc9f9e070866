//! The chunked decoder on any body, fed whole and in pieces: no panic, and the same payload, end
//! and verdict however the body is split.
#![no_main]
use libfuzzer_sys::fuzz_target;
use llmproxy::chunked::ChunkedDecoder;

#[path = "split.rs"]
mod split;

/// (payload, consumed input bytes, done, error)
fn run(pieces: &[&[u8]]) -> (Vec<u8>, usize, bool, bool) {
    let mut d = ChunkedDecoder::default();
    let mut payload = Vec::new();
    let mut consumed = 0;
    for p in pieces {
        let mut buf = p.to_vec();
        match d.decode_in_place(&mut buf) {
            Ok(r) => {
                assert!(r.payload <= r.consumed && r.consumed <= buf.len());
                assert!(r.consumed == buf.len() || r.done);
                payload.extend_from_slice(&buf[..r.payload]);
                consumed += r.consumed;
                if r.done {
                    assert!(d.is_done());
                    return (payload, consumed, true, false);
                }
            }
            Err(_) => return (payload, consumed, false, true),
        }
    }
    (payload, consumed, false, false)
}

fuzz_target!(|data: &[u8]| {
    let Some(inp) = split::input(data) else { return };
    let (wp, wc, wd, we) = run(&[inp.body]);
    let (sp, sc, sd, se) = run(&inp.pieces());
    assert_eq!((wd, we), (sd, se));
    if !we {
        assert_eq!(wp, sp);
        assert_eq!(wc, sc);
    }
});
