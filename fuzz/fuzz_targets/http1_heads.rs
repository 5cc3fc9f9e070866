//! Request and response heads from any bytes: no panic; a complete head's spans lie inside it;
//! every shorter prefix of a complete head is still partial (a head read in pieces reads the same).
#![no_main]
use libfuzzer_sys::fuzz_target;
use llmproxy::http1::{parse_request, parse_response, Parse};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, buf)) = data.split_first() else { return };
    if flags & 1 == 0 {
        if let Parse::Complete(h) = parse_request(buf, "x-user-id") {
            assert!(h.head_len <= buf.len());
            for s in &h.forward {
                let _ = (s.name(&buf[..h.head_len]), s.value(&buf[..h.head_len]));
            }
            let cut = flags as usize * 7 % h.head_len.max(1);
            assert!(matches!(parse_request(&buf[..cut], "x-user-id"), Parse::Partial), "prefix {cut}");
        }
    } else if let Parse::Complete(h) = parse_response(buf) {
        assert!(h.head_len <= buf.len());
        for s in &h.forward {
            let _ = (s.name(&buf[..h.head_len]), s.value(&buf[..h.head_len]));
        }
        let cut = flags as usize * 7 % h.head_len.max(1);
        assert!(matches!(parse_response(&buf[..cut]), Parse::Partial), "prefix {cut}");
    }
});
