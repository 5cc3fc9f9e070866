//! No allocation per event on the relay's scanning path: a counting global allocator around the SSE
//! scanner fed a long continuous-usage vLLM stream with every kind of cutting on, in read-sized
//! pieces and in pieces that split events. After the first pieces (buffers grown once), the
//! allocation count stays flat.

use llmproxy::usage::sse::{Cutting, SseScanner};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        // SAFETY: forwarded as is.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn stream(events: u64) -> Vec<u8> {
    let mut s = Vec::new();
    for k in 1..=events {
        s.extend_from_slice(
            format!(
                "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" tok{k}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":{{\"prompt_tokens\":25,\"total_tokens\":{},\"completion_tokens\":{k},\"prompt_tokens_details\":{{\"cached_tokens\":8}}}}}}\n\n",
                k + 25
            )
            .as_bytes(),
        );
    }
    s.extend_from_slice(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":25,\"completion_tokens\":9,\"total_tokens\":34}}\n\ndata: [DONE]\n\n");
    s
}

#[test]
fn no_allocation_per_event_with_cutting() {
    let input = stream(20_000);
    for piece_len in [16 * 1024, 777, 100] {
        for cut in [
            Cutting { usage_only: true, usage_member: true, continuous: true },
            Cutting { continuous: true, ..Cutting::default() },
            Cutting::default(),
        ] {
            let mut sc = SseScanner::with(cut);
            let mut buf = vec![0u8; 16 * 1024];
            let mut out = 0usize;
            let pieces: Vec<&[u8]> = input.chunks(piece_len).collect();
            let warm = 50;
            let mut before = 0;
            for (i, p) in pieces.iter().enumerate() {
                if i == warm {
                    before = ALLOCS.load(Relaxed);
                }
                let b = &mut buf[..p.len()];
                b.copy_from_slice(p);
                let f = sc.feed(b);
                out += f.forward + if f.release { sc.released().len() } else { 0 };
            }
            out += sc.finish().len();
            let after = ALLOCS.load(Relaxed);
            assert!(out > 0);
            assert!(sc.usage().is_some());
            // Other test threads do not run in this binary (one test): the count is the scanner's.
            assert_eq!(after - before, 0, "allocations after warm-up, pieces of {piece_len}, {cut:?}");
        }
    }
}
