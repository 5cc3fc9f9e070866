//! Request ids (CONTRACT sections 3 and 5). The gateway's own id is 128 bits that no client can
//! choose or guess: SHA-256 of a per-core 256-bit key (read once from the OS at core start) and a
//! per-core counter, so unique across cores, processes and restarts, with no syscall per request.
//! The client's `x-request-id` is kept apart: echoed and sent upstream for tracing, recorded as
//! `client_request_id`, never used as the record's `request_id`. Runs on core threads.

use sha2::{Digest, Sha256};
use std::cell::Cell;

/// Per-core id generator.
pub struct IdGen {
    key: [u8; 32],
    next: Cell<u64>,
}

impl IdGen {
    /// A generator with a fresh random key (one read of the OS random source).
    pub fn new() -> IdGen {
        let mut key = [0u8; 32];
        if let Err(e) = read_os_random(&mut key) {
            // No OS randomness (should not happen on Linux): fall back to time and address
            // entropy, still unique per process; logged since ids become guessable.
            log::error!("request ids: no OS random source ({e}); ids are unique but guessable");
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            key[..16].copy_from_slice(&t.to_le_bytes());
            key[16..24].copy_from_slice(&(std::process::id() as u64).to_le_bytes());
            let addr = std::ptr::addr_of!(key) as u64;
            key[24..].copy_from_slice(&addr.to_le_bytes());
        }
        IdGen { key, next: Cell::new(0) }
    }

    /// `req_` and 32 hex digits (128 bits).
    pub fn next_id(&self) -> String {
        let n = self.next.get();
        self.next.set(n.wrapping_add(1));
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(n.to_le_bytes());
        let d = h.finalize();
        let mut s = String::with_capacity(36);
        s.push_str("req_");
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for b in &d[..16] {
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 0xf)] as char);
        }
        s
    }
}

impl Default for IdGen {
    fn default() -> Self {
        IdGen::new()
    }
}

fn read_os_random(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// The ids of one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestIds {
    /// The gateway's own id: the record's `request_id`, `x-llmproxy-request-id`.
    pub ours: String,
    /// The client's `x-request-id`, if it sent one.
    pub client: Option<String>,
}

impl RequestIds {
    /// What goes out as `x-request-id` (to the backend and back to the client).
    pub fn trace(&self) -> &str {
        self.client.as_deref().unwrap_or(&self.ours)
    }

    /// Appends the `x-request-id` and `x-llmproxy-request-id` response headers.
    pub fn push_headers(&self, out: &mut Vec<u8>) {
        crate::http1::push_header(out, b"x-request-id", self.trace().as_bytes());
        crate::http1::push_header(out, b"x-llmproxy-request-id", self.ours.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_across_generators_and_calls() {
        let a = IdGen::new();
        let b = IdGen::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(a.next_id()));
            assert!(seen.insert(b.next_id()));
        }
        let id = a.next_id();
        assert_eq!(id.len(), 36);
        assert!(id.starts_with("req_") && id[4..].bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
