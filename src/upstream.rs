//! Backend connections on a core: a per-core pool of idle keep-alive connections, plain or TLS
//! (LIFO, dropped once idle long enough that the backend may have closed them). Opening one is
//! `net::dial`'s job.

use crate::net::Stream;
use crate::snapshot::{EndpointId, Snapshot};
use std::time::{Duration, Instant};

/// Idle connections older than this are not reused: uvicorn (vLLM, SGLang) closes idle
/// keep-alive connections after 5 s, and reusing one that is being closed costs a retry.
pub const MAX_IDLE: Duration = Duration::from_secs(4);
/// Most idle connections kept per endpoint on one core.
pub const MAX_IDLE_PER_BACKEND: usize = 512;

/// Idle connections by endpoint, following the snapshot's generation: a newer snapshot moves
/// the lists of endpoints that stay (by id) and closes those to endpoints that went (they drain);
/// a request still on an older snapshot finds its endpoint by id, or has its connection closed.
pub struct Pool {
    generation: u64,
    idle: Vec<(EndpointId, Vec<(Stream, Instant)>)>,
}

impl Default for Pool {
    fn default() -> Self {
        Self::new()
    }
}

impl Pool {
    pub fn new() -> Self {
        Pool { generation: 0, idle: Vec::new() }
    }

    fn list(&mut self, snap: &Snapshot, e: usize) -> Option<&mut Vec<(Stream, Instant)>> {
        if snap.generation > self.generation {
            let mut old = std::mem::take(&mut self.idle);
            self.idle = snap
                .endpoints
                .iter()
                .map(|ep| {
                    let list = old.iter_mut().find(|(id, _)| *id == ep.id).map(|(_, l)| std::mem::take(l));
                    (ep.id, list.unwrap_or_default())
                })
                .collect();
            self.generation = snap.generation;
        }
        let id = snap.endpoints.get(e)?.id;
        if snap.generation == self.generation {
            return self.idle.get_mut(e).map(|(_, l)| l);
        }
        self.idle.iter_mut().find(|(i, _)| *i == id).map(|(_, l)| l)
    }

    /// The most recently used idle connection to endpoint `e` that is still fresh.
    pub fn take(&mut self, snap: &Snapshot, e: usize) -> Option<Stream> {
        let list = self.list(snap, e)?;
        while let Some((s, since)) = list.pop() {
            if since.elapsed() < MAX_IDLE {
                return Some(s);
            }
        }
        None
    }

    /// Keeps `s` for reuse (closed instead when its endpoint is gone).
    pub fn put(&mut self, snap: &Snapshot, e: usize, s: Stream) {
        let Some(list) = self.list(snap, e) else { return };
        if list.len() >= MAX_IDLE_PER_BACKEND {
            list.remove(0);
        }
        list.push((s, Instant::now()));
    }

    /// Drops every idle connection to endpoint `e` (it was found down).
    pub fn clear(&mut self, snap: &Snapshot, e: usize) {
        if let Some(list) = self.list(snap, e) {
            list.clear();
        }
    }
}
