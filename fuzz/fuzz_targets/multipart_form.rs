//! A multipart form (audio uploads) from any bytes: the boundary and the form scan never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use llmproxy::endpoints::multipart;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else { return };
    let n = (n as usize).min(rest.len());
    let (ct, body) = rest.split_at(n);
    let _ = multipart::boundary(ct);
    if let Ok(f) = multipart::scan(body, b"XyZ") {
        let _ = (f.model, f.stream, f.parts);
    }
    if let Ok(b) = multipart::boundary(ct) {
        let _ = multipart::scan(body, b);
    }
});
