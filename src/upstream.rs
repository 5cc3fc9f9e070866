//! Backend connections on a core: a per-core pool of idle keep-alive connections, plain or TLS
//! (LIFO, dropped once idle long enough that the backend may have closed them). Opening one is
//! `net::dial`'s job.

use crate::net::Stream;
use std::time::{Duration, Instant};

/// Idle connections older than this are not reused: uvicorn (vLLM, SGLang) closes idle
/// keep-alive connections after 5 s, and reusing one that is being closed costs a retry.
pub const MAX_IDLE: Duration = Duration::from_secs(4);
/// Most idle connections kept per backend on one core.
pub const MAX_IDLE_PER_BACKEND: usize = 512;

pub struct Pool {
    idle: Vec<Vec<(Stream, Instant)>>,
}

impl Pool {
    pub fn new(backends: usize) -> Self {
        Pool { idle: (0..backends).map(|_| Vec::new()).collect() }
    }

    /// The most recently used idle connection to `backend` that is still fresh.
    pub fn take(&mut self, backend: usize) -> Option<Stream> {
        let list = &mut self.idle[backend];
        while let Some((s, since)) = list.pop() {
            if since.elapsed() < MAX_IDLE {
                return Some(s);
            }
        }
        None
    }

    pub fn put(&mut self, backend: usize, s: Stream) {
        let list = &mut self.idle[backend];
        if list.len() >= MAX_IDLE_PER_BACKEND {
            list.remove(0);
        }
        list.push((s, Instant::now()));
    }

    /// Drops every idle connection to `backend` (it was found down).
    pub fn clear(&mut self, backend: usize) {
        self.idle[backend].clear();
    }
}
