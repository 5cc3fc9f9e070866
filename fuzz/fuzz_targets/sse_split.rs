//! The SSE scanner on any stream, fed whole and in pieces: no panic, and the bytes it forwards,
//! the usage it reads and its counters are the same however the stream is split.
#![no_main]
use libfuzzer_sys::fuzz_target;
use llmproxy::usage::sse::{Cutting, SseScanner};

#[path = "split.rs"]
mod split;

#[derive(Debug, PartialEq)]
struct Outcome {
    out: Vec<u8>,
    usage: Option<llmproxy::usage::Usage>,
    events: u64,
    stripped: u64,
    content: u64,
    finished: bool,
    error: bool,
}

fn run(cut: Cutting, pieces: &[&[u8]]) -> Outcome {
    let mut s = SseScanner::with(cut);
    let mut out = Vec::new();
    for p in pieces {
        let mut buf = p.to_vec();
        let f = s.feed(&mut buf);
        if f.release {
            out.extend_from_slice(s.released());
        }
        assert!(f.forward <= buf.len());
        out.extend_from_slice(&buf[..f.forward]);
    }
    out.extend_from_slice(s.finish());
    Outcome {
        out,
        usage: s.usage(),
        events: s.events(),
        stripped: s.stripped(),
        content: s.content_events(),
        finished: s.finished(),
        error: s.error_seen(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(inp) = split::input(data) else { return };
    let cut = Cutting {
        usage_only: inp.flags & 1 != 0,
        usage_member: inp.flags & 2 != 0,
        continuous: inp.flags & 4 != 0,
    };
    let whole = run(cut, &[inp.body]);
    let split = run(cut, &inp.pieces());
    if whole != split {
        let at = whole.out.iter().zip(&split.out).position(|(a, b)| a != b);
        panic!(
            "whole and split differ: out {} vs {} bytes, first difference at {at:?}; usage {:?} vs {:?}; \
             events {} vs {}, stripped {} vs {}, content {} vs {}, finished {} vs {}, error {} vs {}",
            whole.out.len(),
            split.out.len(),
            whole.usage,
            split.usage,
            whole.events,
            split.events,
            whole.stripped,
            split.stripped,
            whole.content,
            split.content,
            whole.finished,
            split.finished,
            whole.error,
            split.error
        );
    }
    if !cut.usage_only && !cut.usage_member {
        // Nothing to cut: every byte goes on, unchanged and in order.
        assert_eq!(whole.out, inp.body);
    }
});
