//! Who is counted: a subject (a matched `[[auth.keys]]` entry, a `user_header` value, or the shared
//! `"anonymous"`) with one `Budget` per limit it has, and the process-wide table of subjects. Keys
//! and anonymous are built at start; user subjects on first sight (the only allocation and the only
//! lock, once per core per user). Read by core threads and the sync thread.

use super::budget::{Budget, Window, DAY, MINUTE};
use crate::config::{Config, LimitSet, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Most user-header subjects tracked at once; past it, new users share one `"other users"` subject
/// (bounded memory whatever clients send).
pub const MAX_USERS: usize = 20_000;
/// Users `Subjects::evict_users` re-checks and removes per hold of the map's lock.
const EVICT_BATCH: usize = 64;

/// The limits of a subject, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Requests,
    Tokens,
    Day,
    Concurrent,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Requests, Kind::Tokens, Kind::Day, Kind::Concurrent];

    /// The label used in metrics (the config key).
    pub fn label(self) -> &'static str {
        match self {
            Kind::Requests => "requests_per_minute",
            Kind::Tokens => "tokens_per_minute",
            Kind::Day => "tokens_per_day",
            Kind::Concurrent => "max_concurrent",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Kind::Requests => "rpm",
            Kind::Tokens => "tpm",
            Kind::Day => "tpd",
            Kind::Concurrent => "conc",
        }
    }

    pub fn window(self) -> Option<Window> {
        match self {
            Kind::Requests | Kind::Tokens => Some(MINUTE),
            Kind::Day => Some(DAY),
            Kind::Concurrent => None,
        }
    }
}

pub struct Subject {
    /// For metric labels: `key:<user_id>`, `user:<value>` or `anonymous`.
    pub label: Box<str>,
    /// What it was built with (a reload keeps a subject whose limits did not change).
    pub limits: LimitSet,
    /// Indexed by `Kind as usize`; None where the limit is 0.
    pub budgets: [Option<Budget>; 4],
    /// Redis key prefixes, by kind.
    pub redis_prefix: [Box<str>; 4],
}

impl Subject {
    /// `id` is stable across a fleet with the same config: the Redis keys are built from it.
    pub fn new(label: String, id: String, limits: LimitSet, cores: usize, store: Store) -> Subject {
        let budget = |limit: u64, kind: Kind| {
            (limit > 0).then(|| {
                // Concurrency is counted per gateway (a crashed gateway must not hold fleet slots).
                let initial =
                    if store == Store::Local || kind == Kind::Concurrent { limit as i64 } else { 0 };
                Budget::new(limit, kind.window(), cores, initial)
            })
        };
        Subject {
            budgets: [
                budget(limits.requests_per_minute, Kind::Requests),
                budget(limits.tokens_per_minute, Kind::Tokens),
                budget(limits.tokens_per_day, Kind::Day),
                budget(limits.max_concurrent, Kind::Concurrent),
            ],
            redis_prefix: Kind::ALL.map(|k| format!("llmproxy:rl:{id}:{}:", k.short()).into_boxed_str()),
            label: label.into(),
            limits,
        }
    }

    pub fn budget(&self, k: Kind) -> Option<&Budget> {
        self.budgets[k as usize].as_ref()
    }

    pub fn has_tokens(&self) -> bool {
        self.budget(Kind::Tokens).is_some() || self.budget(Kind::Day).is_some()
    }
}

/// Every subject of this process.
pub struct Subjects {
    /// By `[[auth.keys]]` index; None for a key without limits.
    pub keys: Vec<Option<Arc<Subject>>>,
    /// Each key's stable id (`AuthKey::id`), same order as `keys`.
    pub key_ids: Vec<u64>,
    pub anonymous: Option<Arc<Subject>>,
    /// The limits of user-header subjects (the defaults); unlimited means no user is tracked.
    pub user_limits: LimitSet,
    pub users: Mutex<HashMap<Box<str>, Arc<Subject>>>,
    /// Shared by users past MAX_USERS.
    pub overflow: Option<Arc<Subject>>,
    pub(super) cores: usize,
    store: Store,
}

impl Subjects {
    /// The subjects of `cfg`. On a reload (`prev`), a subject whose limits did not change is
    /// kept (with its counts); users are kept when the defaults did not change.
    pub fn new(cfg: &Config, cores: usize, prev: Option<&Subjects>) -> Subjects {
        let rl = &cfg.rate_limit;
        let d = rl.defaults;
        let store = prev.map_or(rl.store, |p| p.store);
        let make = |label: String, id: String, limits: LimitSet, old: Option<&Arc<Subject>>| {
            if let Some(o) = old.filter(|o| o.limits == limits && *o.label == *label) {
                return Some(o.clone());
            }
            (!limits.is_unlimited()).then(|| Arc::new(Subject::new(label, id, limits, cores, store)))
        };
        let same_defaults = prev.filter(|p| p.user_limits == d);
        let keys = cfg
            .auth
            .keys
            .iter()
            .map(|k| {
                let old = prev.and_then(|p| {
                    let i = p.key_ids.iter().position(|&id| id == k.id())?;
                    p.keys[i].as_ref()
                });
                // The key's digest names it in Redis: the same on every gateway of a fleet.
                let id = format!("k{}", hex::encode(&k.key_sha256[..12]));
                make(format!("key:{}", k.user_id), id, k.limits.resolve(&d), old)
            })
            .collect();
        let users = same_defaults
            .map(|p| p.users.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default();
        Subjects {
            keys,
            key_ids: cfg.auth.keys.iter().map(|k| k.id()).collect(),
            anonymous: make(
                "anonymous".into(),
                "anonymous".into(),
                d,
                prev.and_then(|p| p.anonymous.as_ref()),
            ),
            user_limits: d,
            users: Mutex::new(users),
            overflow: make(
                "user:(other)".into(),
                "uoverflow".into(),
                d,
                prev.and_then(|p| p.overflow.as_ref()),
            ),
            cores,
            store,
        }
    }

    /// The subject of a user-header value, created on first sight (slow path: the map's lock, held
    /// for a lookup and an insert only; the allocation happens outside it). Nothing that holds the
    /// lock does more than that or clone the map's entries, so a core never waits for a scan.
    /// `counting_locally`: Redis is away, so a new subject starts with the whole limit in stock.
    pub fn user(&self, name: &str, counting_locally: bool) -> Option<Arc<Subject>> {
        if self.user_limits.is_unlimited() {
            return None;
        }
        {
            let m = self.users.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = m.get(name) {
                return Some(s.clone());
            }
            if m.len() >= MAX_USERS {
                return self.overflow.clone();
            }
        }
        let new = Arc::new(Subject::new(
            format!("user:{name}"),
            format!("u:{name}"),
            self.user_limits,
            self.cores,
            if counting_locally { Store::Local } else { self.store },
        ));
        let mut m = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = m.get(name) {
            return Some(s.clone()); // another core made it meanwhile
        }
        if m.len() >= MAX_USERS {
            return self.overflow.clone();
        }
        m.insert(name.into(), new.clone());
        Some(new)
    }

    /// Every subject now (for the sync thread and metrics).
    pub fn all(&self) -> Vec<Arc<Subject>> {
        let mut v: Vec<Arc<Subject>> = self.keys.iter().flatten().cloned().collect();
        v.extend(self.anonymous.iter().cloned());
        v.extend(self.overflow.iter().cloned());
        let m = self.users.lock().unwrap_or_else(|e| e.into_inner());
        v.extend(m.values().cloned());
        v
    }

    /// Forgets user subjects nobody references (no core cache, no request in flight) whose
    /// `idle` says they hold nothing worth keeping. `idle` (a scan of every window) runs with the
    /// map unlocked: the cores that take the lock for a new user never wait for it.
    pub fn evict_users(&self, idle: impl Fn(&Subject) -> bool) {
        let candidates: Vec<(Box<str>, Arc<Subject>)> = {
            let m = self.users.lock().unwrap_or_else(|e| e.into_inner());
            m.iter().filter(|(_, s)| Arc::strong_count(s) == 1).map(|(k, s)| (k.clone(), s.clone())).collect()
        };
        let gone: Vec<(Box<str>, *const Subject)> =
            candidates.iter().filter(|(_, s)| idle(s)).map(|(k, s)| (k.clone(), Arc::as_ptr(s))).collect();
        drop(candidates);
        if gone.is_empty() {
            return;
        }
        // A request may have used one since: checked again under the lock, a few at a time so
        // the lock is never held for long.
        for batch in gone.chunks(EVICT_BATCH) {
            let mut m = self.users.lock().unwrap_or_else(|e| e.into_inner());
            for (k, p) in batch {
                if m.get(k).is_some_and(|s| Arc::as_ptr(s) == *p && Arc::strong_count(s) == 1 && idle(s)) {
                    m.remove(k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn subjects() -> Arc<Subjects> {
        let text = "[rate_limit]\nenabled = true\nrequests_per_minute = 10\n[[backends]]\nurl = \"http://127.0.0.1:8000\"\n";
        Arc::new(Subjects::new(&Config::parse(text, "t").unwrap(), 2, None))
    }

    /// The window scans of an eviction run with the map unlocked: a core asking for a new user
    /// meanwhile (here: from inside the scan) gets it at once. Before, the scan ran under the lock
    /// and this deadlocked.
    #[test]
    fn eviction_scans_without_holding_the_users_lock() {
        let s = subjects();
        assert!(s.user("a", false).is_some());
        let (tx, rx) = std::sync::mpsc::channel();
        let s2 = s.clone();
        std::thread::spawn(move || {
            // The first look is the scan; the re-check of the few to remove runs under the lock.
            let scanning = std::cell::Cell::new(true);
            s2.evict_users(|_| !scanning.replace(false) || s2.user("b", false).is_some());
            let _ = tx.send(());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10)).expect("evict_users waited on its own lock");
        let m = s.users.lock().unwrap();
        assert!(!m.contains_key("a"), "idle and unreferenced: evicted");
        assert!(m.contains_key("b"));
    }

    /// A user referenced again between the scan and the removal is kept.
    #[test]
    fn a_user_taken_during_the_scan_is_kept() {
        let s = subjects();
        drop(s.user("a", false));
        let held = std::cell::RefCell::new(None);
        s.evict_users(|_| {
            *held.borrow_mut() = s.user("a", false);
            true
        });
        assert!(s.users.lock().unwrap().contains_key("a"));
        drop(held);
        s.evict_users(|_| true);
        assert!(!s.users.lock().unwrap().contains_key("a"));
    }
}
