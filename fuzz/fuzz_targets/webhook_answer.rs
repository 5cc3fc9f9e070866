//! A webhook receiver's answer from any bytes, read whole and in pieces (the delivery client's
//! `read_answer`): no panic, no endless read, and the same status or failure however the bytes
//! are split. (Whether the connection may be reused can differ: bytes after the body are seen
//! only when they arrive in the same read.)
#![no_main]
use libfuzzer_sys::fuzz_target;
use llmproxy::delivery::client::read_answer;
use std::io::Read;

#[path = "split.rs"]
mod split;

/// Hands out the pieces one read at a time, then end of stream.
struct Pieces<'a> {
    pieces: Vec<&'a [u8]>,
    at: usize,
    off: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while let Some(p) = self.pieces.get(self.at) {
            if self.off < p.len() {
                let n = (p.len() - self.off).min(out.len());
                out[..n].copy_from_slice(&p[self.off..self.off + n]);
                self.off += n;
                return Ok(n);
            }
            self.at += 1;
            self.off = 0;
        }
        Ok(0)
    }
}

fn run(pieces: Vec<&[u8]>) -> Result<u16, String> {
    let mut io = Pieces { pieces, at: 0, off: 0 };
    read_answer(&mut io, &mut Vec::new(), None, || {}).map(|(status, _)| status).map_err(|e| e.to_string())
}

fuzz_target!(|data: &[u8]| {
    let Some(inp) = split::input(data) else { return };
    let whole = run(vec![inp.body]);
    let split = run(inp.pieces());
    // A head past the head bound can be refused or read depending on where reads end.
    if inp.body.len() < llmproxy::http1::MAX_HEAD {
        assert_eq!(whole, split);
    }
});
