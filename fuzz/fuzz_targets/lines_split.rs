//! The native-API scanners (Ollama NDJSON, llama.cpp, SGLang, rerank, audio, OpenAI) on any body,
//! fed whole and in pieces: no panic, the same usage, partial usage and counters.
#![no_main]
use libfuzzer_sys::fuzz_target;
use llmproxy::endpoints::{LineScanner, Shape};

#[path = "split.rs"]
mod split;

const SHAPES: [Shape; 8] = [
    Shape::OpenAi,
    Shape::Rerank,
    Shape::Audio,
    Shape::Unbilled,
    Shape::Ollama,
    Shape::Llamacpp,
    Shape::Sglang,
    Shape::Gateway,
];

fn run(shape: Shape, stream: bool, pieces: &[&[u8]]) -> impl PartialEq + std::fmt::Debug {
    let mut s = LineScanner::new(shape, stream);
    for p in pieces {
        s.feed(p);
    }
    s.finish();
    (
        s.usage(),
        s.partial(),
        s.estimate(),
        s.audio_seconds().map(f64::to_bits),
        s.final_seen(),
        s.error_seen(),
        s.content_events(),
        s.objects(),
    )
}

fuzz_target!(|data: &[u8]| {
    let Some(inp) = split::input(data) else { return };
    let shape = SHAPES[(inp.flags & 7) as usize];
    let stream = inp.flags & 8 != 0;
    assert_eq!(run(shape, stream, &[inp.body]), run(shape, stream, &inp.pieces()));
});
