//! Request counters written on the core threads: per core (`CoreMetrics`), and per backend per core
//! (`BackendStats`, owned by the snapshot's backend and carried across reloads while the backend
//! stays). Each counter is written only by its own core; `/metrics` reads and merges them. Also
//! the token counts by model (`TokenCounters`), kept by the delivery thread.

use crate::endpoints::Endpoint;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Upper bounds (ms) of the latency and TTFT histogram buckets.
pub const BUCKETS_MS: [u64; 18] =
    [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000, 30000, 60000, 120000, 300000];
/// Status codes with their own counter; others count under "other".
pub const STATUS_SLOTS: [u16; 17] =
    [200, 201, 204, 400, 401, 403, 404, 405, 408, 413, 422, 429, 431, 500, 502, 503, 504];
const ENDPOINTS: usize = Endpoint::ALL.len();
const SLOTS: usize = ENDPOINTS * 2 * (STATUS_SLOTS.len() + 1);

fn status_slot(status: u16) -> usize {
    STATUS_SLOTS.iter().position(|&s| s == status).unwrap_or(STATUS_SLOTS.len())
}

#[derive(Debug)]
pub struct Histogram {
    pub(crate) buckets: [AtomicU64; BUCKETS_MS.len()],
    pub(crate) sum: AtomicU64,
    pub(crate) count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, ms: u64) {
        if let Some(i) = BUCKETS_MS.iter().position(|&b| ms <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.sum.fetch_add(ms, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }
}

/// Requests answered, by [endpoint][stream][status slot]; written by one core.
#[derive(Debug)]
pub struct RequestCounters {
    slots: Box<[AtomicU64]>,
}

impl Default for RequestCounters {
    fn default() -> Self {
        RequestCounters { slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect() }
    }
}

impl RequestCounters {
    fn index(endpoint: usize, stream: bool, status_slot: usize) -> usize {
        (endpoint * 2 + usize::from(stream)) * (STATUS_SLOTS.len() + 1) + status_slot
    }

    pub fn count(&self, endpoint: Endpoint, stream: bool, status: u16) {
        self.slots[Self::index(endpoint.index(), stream, status_slot(status))].fetch_add(1, Relaxed);
    }

    /// The count for (endpoint index, stream, status slot index); for the scraper.
    pub fn get(&self, endpoint: usize, stream: bool, status_slot: usize) -> u64 {
        self.slots[Self::index(endpoint, stream, status_slot)].load(Relaxed)
    }
}

/// One core's counters for one backend, on a cache line of its own: `inflight` is written twice
/// per request, and cores' entries lie side by side in `BackendStats::per_core`.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct CoreBackendStats {
    pub requests: RequestCounters,
    /// Requests to this backend in flight on this core.
    pub inflight: AtomicI64,
}

/// A backend's counters, one set per core (index = core). Shared between snapshot generations
/// while the backend stays in the config, so its series survive a reload.
#[derive(Debug)]
pub struct BackendStats {
    pub per_core: Box<[CoreBackendStats]>,
}

impl BackendStats {
    pub fn new(cores: usize) -> Self {
        BackendStats { per_core: (0..cores.max(1)).map(|_| CoreBackendStats::default()).collect() }
    }

    /// The counters core `core` writes (the last set if the core index is out of range).
    pub fn core(&self, core: usize) -> &CoreBackendStats {
        &self.per_core[core.min(self.per_core.len() - 1)]
    }
}

/// Counters of one core that name no backend. Only that core writes them; the scraper reads.
/// Aligned so that no other core's counters share its first and last cache lines.
#[derive(Debug)]
#[repr(align(64))]
pub struct CoreMetrics {
    pub core: usize,
    /// Requests answered without a backend (refused, local endpoints, no backend available).
    pub unrouted: RequestCounters,
    pub latency: Histogram,
    pub ttft: Histogram,
    pub connections: AtomicI64,
    /// TLS handshakes on the listener that failed, by `HandshakeFailure::index`.
    pub tls_handshake_failures: [AtomicU64; 3],
}

impl CoreMetrics {
    /// Counts a failed TLS handshake (what is not a failure is ignored).
    pub fn tls_handshake_failed(&self, f: crate::net::HandshakeFailure) {
        if let Some(i) = f.index() {
            self.tls_handshake_failures[i].fetch_add(1, Relaxed);
        }
    }

    pub fn new(core: usize) -> Self {
        CoreMetrics {
            core,
            unrouted: RequestCounters::default(),
            latency: Histogram::default(),
            ttft: Histogram::default(),
            connections: AtomicI64::new(0),
            tls_handshake_failures: Default::default(),
        }
    }

    /// Counts an answered request, under its backend's counters when it had one.
    pub fn request(&self, endpoint: Endpoint, stream: bool, backend: Option<&BackendStats>, status: u16) {
        match backend {
            Some(b) => b.core(self.core).requests.count(endpoint, stream, status),
            None => self.unrouted.count(endpoint, stream, status),
        }
    }
}

/// Most distinct model labels in `llmproxy_tokens_total`; more count under "other".
const MAX_MODELS: usize = 200;

/// Token counts by model, kept by the webhook thread from the records it handles (off the hot path).
#[derive(Debug, Default)]
pub struct TokenCounters {
    /// Read by `/metrics` with `try_lock` (never blocking a core thread).
    pub(crate) by_model: Mutex<HashMap<String, [u64; 4]>>,
    pub usage_missing: AtomicU64,
}

impl TokenCounters {
    pub fn observe(&self, rec: &crate::usage::record::UsageRecord) {
        if rec.usage_missing {
            self.usage_missing.fetch_add(1, Relaxed);
        }
        let (cached, reasoning) = (rec.cached_tokens.unwrap_or(0), rec.reasoning_tokens.unwrap_or(0));
        if rec.prompt_tokens == 0 && rec.completion_tokens == 0 && cached == 0 && reasoning == 0 {
            return;
        }
        let Ok(mut m) = self.by_model.lock() else { return };
        let name = rec.model.as_deref().unwrap_or("unknown");
        let key = if m.contains_key(name) || m.len() < MAX_MODELS { name } else { "other" };
        // A model's key is allocated once, on its first record.
        let e = match m.get_mut(key) {
            Some(e) => e,
            None => m.entry(key.to_string()).or_insert([0; 4]),
        };
        for (slot, n) in e.iter_mut().zip([rec.prompt_tokens, rec.completion_tokens, cached, reasoning]) {
            *slot = slot.saturating_add(n);
        }
    }
}
