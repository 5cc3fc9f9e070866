//! The one swappable snapshot of what config decides: the validated `Config` (limits, auth keys,
//! usage hook settings...), its backends with stable ids, and their endpoints (every address a
//! backend's name resolves to, each with health state shared by all cores), stamped with a
//! generation. Built only by `Snapshot::build` (reload and discovery threads, at start by
//! `gateway`), swapped in `SnapshotCell`; core threads read it through a per-core cache
//! (`core::CoreCtx::snapshot`) at the cost of one atomic load per request. The threads that follow
//! it (health, discovery) sleep until their next deadline and are unparked by the cell when a new
//! snapshot is swapped in or a core marks an endpoint down ([`SnapshotCell::watch`]).

use crate::config::{BackendConfig, Config, ContinuousUsage};
use crate::counters::BackendStats;
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;

/// A backend's id: the same for the same url across reloads, never reused within a process.
pub type BackendId = u32;
/// An endpoint's id: the same for the same (backend url, address) across generations.
pub type EndpointId = u64;

/// Health and load of one endpoint, shared by every core and carried across generations.
#[derive(Debug)]
pub struct EndpointState {
    up: AtomicBool,
    /// In flight, counted only for least_connections (the one strategy that needs it).
    inflight: AtomicU32,
}

impl Default for EndpointState {
    fn default() -> Self {
        // Optimistic until the first check (which the health thread runs at once).
        EndpointState { up: AtomicBool::new(true), inflight: AtomicU32::new(0) }
    }
}

impl EndpointState {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Marks the endpoint up or down; returns whether the state changed.
    pub fn set_up(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::Relaxed) != up
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn begin(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn end(&self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One address of a backend: health-checked, balanced and pooled on its own.
#[derive(Debug)]
pub struct Endpoint {
    pub id: EndpointId,
    /// Index of its backend in `Snapshot::backends`.
    pub backend: usize,
    pub addr: SocketAddr,
    pub state: Arc<EndpointState>,
}

/// A configured backend (one `[[backends]]` entry).
#[derive(Debug)]
pub struct Backend {
    pub id: BackendId,
    pub cfg: BackendConfig,
    /// Its endpoints: `Snapshot::endpoints[endpoints]`.
    pub endpoints: Range<usize>,
    /// Per-core request counters (kept across reloads while the url stays).
    pub stats: Arc<BackendStats>,
    /// `continuous_usage = "auto"` as learned by the health thread from `/v1/models` `owned_by`
    /// (kept across reloads while the url stays).
    learned_continuous: Arc<AtomicBool>,
}

impl Backend {
    /// Whether streaming requests to this backend ask for continuous usage (config, else learned).
    pub fn continuous_usage(&self) -> bool {
        match self.cfg.continuous_usage {
            ContinuousUsage::On => true,
            ContinuousUsage::Off => false,
            ContinuousUsage::Auto => self.learned_continuous.load(Ordering::Relaxed),
        }
    }

    /// Records what the health thread learned for an `auto` backend; returns whether it changed.
    pub fn set_learned_continuous(&self, on: bool) -> bool {
        self.learned_continuous.swap(on, Ordering::Relaxed) != on
    }
}

/// What config decides, at one generation. Immutable; replaced whole.
#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    /// Same order as `config.backends`.
    pub backends: Vec<Backend>,
    /// Every backend's endpoints, backend by backend.
    pub endpoints: Vec<Endpoint>,
    /// Private: a snapshot is made only by `build`.
    _built: Built,
}

/// Proof of construction through `Snapshot::build`.
#[derive(Debug)]
struct Built;

/// Sources of ids and generations (under the writer lock of `SnapshotCell`).
#[derive(Debug, Default)]
pub struct Ids {
    generation: u64,
    backend: BackendId,
    endpoint: EndpointId,
}

impl Snapshot {
    /// Builds a snapshot from a validated config and the current addresses of each backend
    /// (`addrs[i]` for `config.backends[i]`; an empty list keeps `prev`'s, else the config's).
    /// Ids, health state and counters of backends and endpoints that `prev` already had are kept.
    pub fn build(
        config: Arc<Config>,
        addrs: &[Vec<SocketAddr>],
        prev: Option<&Snapshot>,
        ids: &mut Ids,
        cores: usize,
    ) -> Result<Snapshot, Vec<String>> {
        let mut problems = Vec::new();
        if config.backends.is_empty() {
            problems.push("at least one backend is required".to_string());
        }
        let mut backends = Vec::with_capacity(config.backends.len());
        let mut endpoints = Vec::new();
        for (i, cfg) in config.backends.iter().enumerate() {
            let old = prev.and_then(|p| p.backends.iter().find(|b| b.cfg.url == cfg.url));
            let mut list: Vec<SocketAddr> = match addrs.get(i) {
                Some(a) if !a.is_empty() => a.clone(),
                _ => match (old, prev) {
                    (Some(o), Some(p)) => p.endpoints[o.endpoints.clone()].iter().map(|e| e.addr).collect(),
                    _ => cfg.addrs.clone(),
                },
            };
            list.sort();
            list.dedup();
            if list.is_empty() {
                problems.push(format!("backend {}: no address", cfg.url));
            }
            let id = old.map_or_else(
                || {
                    ids.backend += 1;
                    ids.backend
                },
                |o| o.id,
            );
            let start = endpoints.len();
            for addr in list {
                let prev_ep = match (old, prev) {
                    (Some(o), Some(p)) => p.endpoints[o.endpoints.clone()].iter().find(|e| e.addr == addr),
                    _ => None,
                };
                let (eid, state) = match prev_ep {
                    Some(e) => (e.id, e.state.clone()),
                    None => {
                        ids.endpoint += 1;
                        (ids.endpoint, Arc::new(EndpointState::default()))
                    }
                };
                endpoints.push(Endpoint { id: eid, backend: i, addr, state });
            }
            let stats = old.map_or_else(|| Arc::new(BackendStats::new(cores)), |o| o.stats.clone());
            let learned_continuous = old.map_or_else(Arc::default, |o| o.learned_continuous.clone());
            backends.push(Backend {
                id,
                cfg: cfg.clone(),
                endpoints: start..endpoints.len(),
                stats,
                learned_continuous,
            });
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        ids.generation += 1;
        Ok(Snapshot { generation: ids.generation, config, backends, endpoints, _built: Built })
    }

    /// The backend of endpoint `e`.
    pub fn backend_of(&self, e: usize) -> &Backend {
        &self.backends[self.endpoints[e].backend]
    }

    /// Whether any endpoint of backend `b` is up.
    pub fn backend_up(&self, b: usize) -> bool {
        self.endpoints[self.backends[b].endpoints.clone()].iter().any(|e| e.state.is_up())
    }

    pub fn any_up(&self) -> bool {
        self.endpoints.iter().any(|e| e.state.is_up())
    }

    /// The index of endpoint `id` in this snapshot.
    pub fn endpoint_index(&self, id: EndpointId) -> Option<usize> {
        self.endpoints.iter().position(|e| e.id == id)
    }
}

/// The current snapshot, swapped atomically. Readers never block: `arc-swap` gives a lock-free
/// `load` (the core threads' slow path, taken only when `generation` moved), and the generation
/// counter lets each core check for a new snapshot with a single atomic load per request. Writers
/// (reload, discovery) serialize on a mutex so neither loses the other's change.
pub struct SnapshotCell {
    current: ArcSwap<Snapshot>,
    generation: AtomicU64,
    writer: Mutex<Ids>,
    cores: usize,
    /// Unparked on every change (set once, at start).
    watchers: OnceLock<Vec<Thread>>,
}

impl SnapshotCell {
    /// The first snapshot, from a validated config and the addresses it resolved at load.
    pub fn new(config: Config, cores: usize) -> Result<SnapshotCell, Vec<String>> {
        let mut ids = Ids::default();
        let snap = Snapshot::build(Arc::new(config), &[], None, &mut ids, cores)?;
        Ok(SnapshotCell {
            generation: AtomicU64::new(snap.generation),
            current: ArcSwap::from_pointee(snap),
            writer: Mutex::new(ids),
            cores,
            watchers: OnceLock::new(),
        })
    }

    /// The threads to unpark when a new snapshot is swapped in or a core marks an endpoint down
    /// (the health and discovery threads, which otherwise sleep until their next deadline). Set
    /// once; later calls are ignored.
    pub fn watch(&self, threads: Vec<Thread>) {
        let _ = self.watchers.set(threads);
    }

    fn notify(&self) {
        for t in self.watchers.get().into_iter().flatten() {
            t.unpark();
        }
    }

    /// A core saw `e` refuse a connection: marks it down and, if it was up, wakes the health thread
    /// to re-check it (one unpark per up-to-down transition, none per request). True when it was up.
    pub fn mark_down(&self, e: &Endpoint) -> bool {
        let changed = e.state.set_up(false);
        if changed {
            self.notify();
        }
        changed
    }

    /// The generation of the current snapshot (one atomic load).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Builds a new snapshot from the current one with `make` (which returns the config and
    /// per-backend addresses to use, or None for no change) and swaps it in. Returns the new
    /// generation, or the problems that kept the current snapshot in place.
    pub fn update<F>(&self, make: F) -> Result<Option<u64>, Vec<String>>
    where
        F: FnOnce(&Snapshot) -> Option<(Arc<Config>, Vec<Vec<SocketAddr>>)>,
    {
        let mut ids = match self.writer.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let cur = self.current.load_full();
        let Some((config, addrs)) = make(&cur) else { return Ok(None) };
        let next = Snapshot::build(config, &addrs, Some(&cur), &mut ids, self.cores)?;
        let g = next.generation;
        self.current.store(Arc::new(next));
        self.generation.store(g, Ordering::Release);
        self.notify();
        Ok(Some(g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(urls: &[&str]) -> Config {
        let mut t = String::new();
        for u in urls {
            t += &format!("[[backends]]\nurl = \"{u}\"\n");
        }
        Config::parse(&t, "t").unwrap()
    }

    #[test]
    fn ids_state_and_counters_survive_a_rebuild_of_the_same_backends() {
        let cell = SnapshotCell::new(config(&["http://127.0.0.1:1", "http://127.0.0.1:2"]), 2).unwrap();
        let a = cell.load();
        a.endpoints[1].state.set_up(false);
        let g = cell
            .update(|_| Some((Arc::new(config(&["http://127.0.0.1:2", "http://127.0.0.1:3"])), vec![])))
            .unwrap()
            .unwrap();
        let b = cell.load();
        assert_eq!(g, a.generation + 1);
        assert_eq!(cell.generation(), g);
        assert_eq!(b.backends[0].id, a.backends[1].id);
        assert!(Arc::ptr_eq(&b.backends[0].stats, &a.backends[1].stats));
        assert_eq!(b.endpoints[0].id, a.endpoints[1].id);
        assert!(!b.endpoints[0].state.is_up());
        assert!(b.backends[1].id > a.backends[1].id);
        // The old snapshot is untouched: requests that loaded it finish on it.
        assert_eq!(a.backends[0].cfg.url, "http://127.0.0.1:1");
    }

    #[test]
    fn every_address_is_an_endpoint_and_new_addresses_get_new_ids() {
        let cell = SnapshotCell::new(config(&["http://127.0.0.1:1"]), 1).unwrap();
        let a = cell.load();
        let addrs: Vec<SocketAddr> = vec![([127, 0, 0, 1], 1).into(), ([127, 0, 0, 2], 1).into()];
        cell.update(|s| Some((s.config.clone(), vec![addrs.clone()]))).unwrap();
        let b = cell.load();
        assert_eq!(b.endpoints.len(), 2);
        assert_eq!(b.backends[0].endpoints, 0..2);
        assert_eq!(b.endpoints[0].id, a.endpoints[0].id);
        assert_ne!(b.endpoints[1].id, a.endpoints[0].id);
        assert_eq!(b.endpoint_index(b.endpoints[1].id), Some(1));
        // No change: no new generation.
        assert_eq!(cell.update(|_| None).unwrap(), None);
    }
}
