//! The limits sync thread (one per process, never on a core): every `sync_interval` (or sooner when
//! a core runs dry with the redis store) it slides the windows, and with `store = "redis"` it keeps
//! each active budget's local stock topped up by leasing from Redis in small chunks, hands back
//! surplus, and on Redis errors falls back (`on_store_error`) and reconnects where it left off. It
//! also republishes the remaining-budget gauges. Core threads never wait for it.

use super::budget::Budget;
use super::redis_store::{Op, Store};
use super::subject::{Kind, Subject};
use super::{unix_secs, Limiter};
use crate::config::{OnStoreError, RateLimitConfig, Store as StoreKind};
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Redis connect / read / write timeout (the thread's, never a request's).
const STORE_TIMEOUT: Duration = Duration::from_millis(300);
/// A budget with no admission for this long hands its stock back.
const IDLE: Duration = Duration::from_secs(5);
/// Subjects per limit shown in `llmproxy_rate_limit_remaining`.
const TOP: usize = 10;

/// The sync thread's own bookkeeping for one budget (never touched by cores).
#[derive(Default)]
struct State {
    /// Slices up to this one have been expired.
    expired: Option<u64>,
    last_consumed: u64,
    /// Decaying peak of units admitted per tick.
    demand: i64,
    last_active: Option<Instant>,
    /// Recent grants (slice, units), newest last: surplus is refunded to the newest first.
    grants: VecDeque<(u64, i64)>,
}

pub struct SyncThread {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl SyncThread {
    /// Starts the thread (a no-op handle when limits are off).
    pub fn start(limiter: Arc<Limiter>, cfg: &RateLimitConfig) -> std::io::Result<SyncThread> {
        let stop = Arc::new(AtomicBool::new(false));
        if !cfg.enabled {
            return Ok(SyncThread { stop, handle: None });
        }
        let cfg = cfg.clone();
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new().name("llmproxy-limits".into()).spawn(move || {
            let mut w = Worker {
                store: (cfg.store == StoreKind::Redis).then(|| Store::new(&cfg.redis_url)),
                cfg,
                limiter,
                states: HashMap::new(),
                down_since: None,
                last_gauges: None,
            };
            w.run(&stop2);
        })?;
        Ok(SyncThread { stop, handle: Some(handle) })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Relaxed);
        if let Some(h) = self.handle.take() {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

struct Worker {
    cfg: RateLimitConfig,
    limiter: Arc<Limiter>,
    store: Option<Store>,
    /// Keyed by (subject pointer, kind).
    states: HashMap<(usize, usize), State>,
    /// Unix second Redis was lost (its usage since then is replayed on reconnect).
    down_since: Option<u64>,
    last_gauges: Option<Instant>,
}

impl Worker {
    fn run(&mut self, stop: &AtomicBool) {
        let _ = self.limiter.thread.set(std::thread::current());
        let mut next_connect = Instant::now();
        while !stop.load(Relaxed) {
            self.limiter.wake_pending.store(false, Relaxed);
            let now = unix_secs();
            if let Some(store) = self.store.as_mut() {
                if !store.connected() && Instant::now() >= next_connect {
                    match store.connect(STORE_TIMEOUT) {
                        Ok(()) => {
                            log::info!("rate_limit: connected to redis at {}", self.cfg.redis_url);
                            self.reconnected(now);
                        }
                        Err(e) => {
                            next_connect = Instant::now() + Duration::from_millis(500);
                            self.lost(now, &e.to_string());
                        }
                    }
                }
            }
            self.tick(now);
            if self.last_gauges.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                self.last_gauges = Some(Instant::now());
                self.publish(now);
            }
            std::thread::park_timeout(self.cfg.sync_interval);
        }
    }

    /// Whether budgets are fed by Redis right now (else counted locally).
    fn leasing(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.connected())
    }

    fn tick(&mut self, now: u64) {
        let subjects = self.limiter.subjects.all();
        let leasing = self.leasing();
        let mut ops = Vec::new();
        let mut targets: Vec<(Arc<Subject>, Kind)> = Vec::new();
        for s in &subjects {
            for k in [Kind::Requests, Kind::Tokens, Kind::Day] {
                let Some(b) = s.budget(k) else { continue };
                let st = self.states.entry((Arc::as_ptr(s) as usize, k as usize)).or_default();
                // Slide the window: usage leaving it returns to the pool when counting locally.
                let w = b.window.expect("windowed kind");
                let cur = w.slice(now);
                let upto = cur.saturating_sub(w.slices);
                // Only the two ids just behind the window: older ones share ring slots with ids
                // inside it (after a stall of this thread their usage stays counted: conservative).
                let from = st.expired.map_or(upto, |e| e + 1).max(upto.saturating_sub(1));
                for id in from..=upto {
                    let u = b.expire_slice(id);
                    if !leasing {
                        b.add_to_pool(u);
                    }
                }
                st.expired = Some(upto);
                if leasing {
                    if let Some(op) = plan(st, b, s, k, now) {
                        ops.push(op);
                        targets.push((s.clone(), k));
                    }
                }
            }
        }
        if ops.is_empty() {
            return;
        }
        let Some(store) = self.store.as_mut() else { return };
        match store.run(&ops) {
            Ok(results) => {
                for ((op, r), (s, k)) in ops.iter().zip(results).zip(&targets) {
                    let (Op::Lease { slice, .. }, Some((granted, remaining))) = (op, r) else { continue };
                    let Some(b) = s.budget(*k) else { continue };
                    b.add_to_pool(granted);
                    b.fleet_remaining.store(remaining.max(0), Relaxed);
                    if granted > 0 {
                        let st = self.states.entry((Arc::as_ptr(s) as usize, *k as usize)).or_default();
                        st.grants.push_back((*slice, granted));
                        while st.grants.len() > 64 {
                            st.grants.pop_front();
                        }
                    }
                }
            }
            Err(e) => self.lost(now, &e.to_string()),
        }
    }

    /// Redis is gone: fall back to local counts, or deny limited subjects.
    fn lost(&mut self, now: u64, why: &str) {
        if self.down_since.is_some() {
            return;
        }
        log::warn!(
            "rate_limit: redis at {} unreachable ({why}); on_store_error = {}",
            self.cfg.redis_url,
            if self.cfg.on_store_error == OnStoreError::Deny {
                "deny: limited subjects get 503"
            } else {
                "local: counting locally"
            }
        );
        self.down_since = Some(now);
        self.limiter.store_ok.store(false, Relaxed);
        for s in self.limiter.subjects.all() {
            for k in [Kind::Requests, Kind::Tokens, Kind::Day] {
                let Some(b) = s.budget(k) else { continue };
                b.set_overdraft(0);
                // This gateway's own view: the limit less what it admitted in the window.
                let (used, _) = b.window_usage(now);
                b.add_to_pool(b.limit - used - b.stock());
                b.fleet_remaining.store(-1, Relaxed);
            }
        }
    }

    /// Redis is back: add what was admitted meanwhile, drop the local stock, lease afresh.
    fn reconnected(&mut self, now: u64) {
        let down = self.down_since.take();
        self.limiter.store_ok.store(true, Relaxed);
        let mut ops = Vec::new();
        for s in self.limiter.subjects.all() {
            for k in [Kind::Requests, Kind::Tokens, Kind::Day] {
                let Some(b) = s.budget(k) else { continue };
                let w = b.window.expect("windowed kind");
                b.set_overdraft(overdraft(b));
                let cur = w.slice(now);
                if let Some(d) = down {
                    for id in w.slice(d).max((cur + 1).saturating_sub(w.slices))..=cur {
                        let units = b.usage_of(id);
                        if units > 0 {
                            let key = format!("{}{id}", s.redis_prefix[k as usize]);
                            ops.push(Op::Add { key, units, ttl: ttl(b) });
                        }
                    }
                }
                // Units held locally were counted against this gateway's own view only.
                let held = b.revoke_all();
                if held < 0 {
                    b.add_to_pool(held);
                }
                if let Some(st) = self.states.get_mut(&(Arc::as_ptr(&s) as usize, k as usize)) {
                    st.grants.clear();
                }
            }
        }
        if let Some(store) = self.store.as_mut() {
            if !ops.is_empty() {
                if let Err(e) = store.run(&ops) {
                    self.lost(now, &e.to_string());
                }
            }
        }
    }

    /// Rebuilds the remaining-budget gauges and each budget's reset time.
    fn publish(&mut self, now: u64) {
        let subjects = self.limiter.subjects.all();
        let mut by_kind: [Vec<(f64, i64, &Subject)>; 4] = Default::default();
        for s in &subjects {
            for k in Kind::ALL {
                let Some(b) = s.budget(k) else { continue };
                if let (Some(w), (_, Some(oldest))) = (b.window, b.window_usage(now)) {
                    b.reset_secs.store(w.secs_until_expiry(oldest, now), Relaxed);
                } else {
                    b.reset_secs.store(0, Relaxed);
                }
                let remaining = remaining(b);
                by_kind[k as usize].push((remaining as f64 / b.limit.max(1) as f64, remaining, s));
            }
        }
        let mut text = String::new();
        for k in Kind::ALL {
            let v = &mut by_kind[k as usize];
            v.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.2.label.cmp(&b.2.label)));
            for (_, remaining, s) in v.iter().take(TOP) {
                let _ = writeln!(
                    text,
                    "llmproxy_rate_limit_remaining{{subject=\"{}\",limit=\"{}\"}} {remaining}",
                    escape(&s.label),
                    k.label()
                );
            }
        }
        let _ = writeln!(text, "# HELP llmproxy_rate_limit_subjects Subjects with limits tracked by this gateway.\n# TYPE llmproxy_rate_limit_subjects gauge\nllmproxy_rate_limit_subjects {}", subjects.len());
        drop(by_kind);
        drop(subjects);
        if let Ok(mut g) = self.limiter.gauges.lock() {
            *g = text;
        }
        // Forget users that hold nothing: no request in flight, nothing in any window.
        self.limiter.subjects.evict_users(|s| {
            Kind::ALL
                .iter()
                .all(|&k| s.budget(k).is_none_or(|b| b.window_usage(now).0 == 0 && b.stock() <= b.limit))
        });
        let live: std::collections::HashSet<usize> =
            self.limiter.subjects.all().iter().map(|s| Arc::as_ptr(s) as usize).collect();
        self.states.retain(|(p, _), _| live.contains(p));
    }
}

/// What this gateway may still admit of `b`: the fleet's remaining (redis) plus its own stock.
fn remaining(b: &Budget) -> i64 {
    let f = b.fleet_remaining.load(Relaxed);
    (if f >= 0 { f + b.stock().max(0) } else { b.stock() }).clamp(0, b.limit)
}

/// Borrowing allowed against the next lease: 2 % of the limit (at least 1), so that N gateways
/// over-admit at most N × 2 % when the fleet runs out between two ticks.
fn overdraft(b: &Budget) -> i64 {
    (b.limit / 50).max(1)
}

fn ttl(b: &Budget) -> u64 {
    b.window.map_or(60, |w| (w.slices + 2) * w.slice_secs)
}

/// The lease or refund that brings `b`'s stock to its target (None: nothing to do).
fn plan(st: &mut State, b: &Budget, s: &Subject, k: Kind, now: u64) -> Option<Op> {
    let w = b.window?;
    b.set_overdraft(overdraft(b));
    let consumed = b.consumed();
    let delta = (consumed - st.last_consumed.min(consumed)) as i64;
    st.last_consumed = consumed;
    st.demand = delta.max(st.demand - st.demand / 4);
    if delta > 0 {
        st.last_active = Some(Instant::now());
    }
    let active = st.last_active.is_some_and(|t| t.elapsed() < IDLE);
    // Stock to hold: two ticks of demand, at least the overdraft, at most a tenth of the limit
    // (bounding what one gateway can strand while others are refused).
    let target = if active { (2 * st.demand).max(overdraft(b)).min((b.limit / 10).max(1)) } else { 0 };
    let stock = b.stock();
    let prefix = &s.redis_prefix[k as usize];
    if stock < target {
        return Some(Op::Lease {
            prefix: prefix.to_string(),
            slice: w.slice(now),
            slices: w.slices,
            limit: b.limit,
            want: target - stock,
            ttl: ttl(b),
        });
    }
    let surplus = if active { stock - 2 * target } else { stock };
    if surplus <= 0 {
        return None;
    }
    // Refund to the newest grant still safely in the window (one op per tick is enough); what
    // cannot be refunded stays in stock and is used or expires with its slice.
    while st.grants.back().is_some_and(|&(slice, _)| w.secs_until_expiry(slice, now) <= 2) {
        st.grants.clear();
    }
    let &(slice, units) = st.grants.back()?;
    let want = surplus.min(units);
    let n = if active {
        b.take_from_pool(want)
    } else {
        let all = b.revoke_all();
        let n = all.clamp(0, want);
        b.add_to_pool(all - n);
        n
    };
    if n <= 0 {
        return None;
    }
    st.grants.pop_back();
    if n < units {
        st.grants.push_back((slice, units - n));
    }
    Some(Op::Refund { key: format!("{prefix}{slice}"), units: n })
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
