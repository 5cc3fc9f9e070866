//! The limits sync thread (one per process, never on a core): every `sync_interval` (or sooner when
//! a core runs dry with the redis store) it slides the windows, and with `store = "redis"` it keeps
//! each active budget's local stock topped up by leasing from Redis, moves its charges to where
//! units were used (`charges.rs`), hands back surplus, and on Redis errors falls back
//! (`on_store_error`) and reconnects where it left off. It also republishes the remaining-budget
//! gauges. Core threads never wait for it.
//!
//! The fleet bound: every unit a gateway admits is charged in Redis to the slice it was used in,
//! except what it overdraws (admits before a lease pays for it), and Redis grants no more than the
//! limit over the window. So over any window the fleet admits at most the limit plus what its
//! gateways have overdrawn and not yet repaid: each may overdraw `OVERDRAFT` of the limit divided by
//! the fleet size (gateways that ticked in the last 3 s), and only once every other gateway counts
//! it (`Worker::warm`), so the fleet overdraws at most `OVERDRAFT` (5 %) of the limit together.

use super::budget::Budget;
use super::charges::Charges;
use super::redis_store::{Op, Store};
use super::subject::{Kind, Subject};
use super::{unix_secs, Limiter};
use crate::config::{OnStoreError, RateLimitConfig, Store as StoreKind};
use std::collections::HashMap;
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
/// What the whole fleet may overdraw, as a share of a limit (see the module header).
const OVERDRAFT: f64 = 0.05;
/// How often the fleet size is refreshed.
const FLEET_EVERY: Duration = Duration::from_secs(1);

/// The sync thread's own bookkeeping for one budget (never touched by cores).
#[derive(Default)]
struct State {
    /// Slices up to this one have been expired.
    expired: Option<u64>,
    last_consumed: u64,
    /// Decaying peak of units admitted (or refused for want of stock) per tick.
    demand: i64,
    last_active: Option<Instant>,
    /// What this gateway has charged in Redis, by slice.
    charges: Charges,
    /// (slice, stock) at the last reconcile: a change of either calls for another.
    last_seen: (u64, i64),
    /// The `down_epoch` this budget was last turned into a local count in.
    down_epoch: u64,
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
                id: format!("{}-{}", std::process::id(), unix_nanos()),
                fleet: 0,
                last_fleet: None,
                connected_at: None,
                lost_at: None,
                fresh: false,
                down_epoch: 0,
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
    /// This gateway in the fleet set.
    id: String,
    /// Gateways that ticked in the last 3 s (0 until Redis said).
    fleet: u64,
    last_fleet: Option<Instant>,
    /// When the connection to Redis was (re)made: no overdraft until every other gateway has
    /// counted this one (`warm`).
    connected_at: Option<Instant>,
    /// When Redis was lost while connected (None: never connected since).
    lost_at: Option<Instant>,
    /// Just reconnected: the local stock (counted alone) is replaced by the first leases.
    fresh: bool,
    /// Bumped when Redis is lost: each budget is then turned into a local count, once.
    down_epoch: u64,
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
                            self.reconnected();
                            log::info!("rate_limit: connected to redis at {}", self.cfg.redis_url);
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

    /// Connected long enough that every other gateway's fleet count includes this one (they
    /// refresh it every `FLEET_EVERY`, on a tick): so overdrawing gateways never outnumber the
    /// fleet size any of them divides by.
    fn warm(&self) -> bool {
        self.connected_at.is_some_and(|t| t.elapsed() >= FLEET_EVERY + 2 * self.cfg.sync_interval)
    }

    fn tick(&mut self, now: u64) {
        let subjects = self.limiter.subjects().all();
        let leasing = self.leasing();
        let down = !leasing && self.store.is_some();
        let fleet = if self.warm() { self.fleet } else { 0 };
        self.limiter.fleet.store(fleet, Relaxed);
        let fresh = self.fresh;
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
                if down && st.down_epoch != self.down_epoch {
                    // This gateway's own view: the limit less what it admitted in the window.
                    st.down_epoch = self.down_epoch;
                    b.set_overdraft(0);
                    let (used, _) = b.window_usage(now);
                    b.add_to_pool(b.limit - used - b.stock());
                    b.fleet_remaining.store(-1, Relaxed);
                }
                if leasing {
                    if let Some(op) = plan(st, b, s, k, now, fleet, fresh) {
                        ops.push(op);
                        targets.push((s.clone(), k));
                    }
                }
            }
        }
        let heartbeat = !self.warm() || self.last_fleet.is_none_or(|t| t.elapsed() >= FLEET_EVERY);
        if !leasing || (ops.is_empty() && !heartbeat && !fresh) {
            return;
        }
        let Some(store) = self.store.as_mut() else { return };
        let now_ms = unix_nanos() / 1_000_000;
        match store.run(&ops, heartbeat.then_some((self.id.as_str(), now_ms))) {
            Ok((results, n)) => {
                if heartbeat {
                    self.last_fleet = Some(Instant::now());
                    self.fleet = n;
                }
                if fresh {
                    // The stock counted alone while Redis was away gives way to the leases.
                    self.fresh = false;
                    for s in &subjects {
                        for k in [Kind::Requests, Kind::Tokens, Kind::Day] {
                            if let Some(b) = s.budget(k) {
                                b.revoke_all();
                            }
                        }
                    }
                }
                for ((op, (granted, remaining)), (s, k)) in ops.iter().zip(results).zip(&targets) {
                    let Some(b) = s.budget(*k) else { continue };
                    b.fleet_remaining.store(remaining.max(0), Relaxed);
                    if granted > 0 {
                        b.add_to_pool(granted);
                        let st = self.states.entry((Arc::as_ptr(s) as usize, *k as usize)).or_default();
                        st.charges.add(op.slice, granted);
                        st.last_seen.1 = st.last_seen.1.saturating_add(granted);
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
        // The flag first, then the line: whoever acts on the line already meets the fallback.
        self.limiter.store_ok.store(false, Relaxed);
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
        self.lost_at = self.connected_at.map(|_| Instant::now());
        self.connected_at = None;
        self.down_epoch += 1;
    }

    /// Redis is back: charge everything used in the windows again (Redis may have lost it;
    /// counting twice only refuses early) and lease afresh; the local stock serves until the first
    /// leases arrive (`fresh`), so that no request waits for them.
    fn reconnected(&mut self) {
        self.down_since = None;
        self.limiter.store_ok.store(true, Relaxed);
        // Back within 2 s: the fleet set still lists this gateway (entries live 3 s), so the others
        // still count it and it may overdraw at once.
        let counted = self.lost_at.take().is_some_and(|t| t.elapsed() < FLEET_EVERY * 2);
        let warm_up = FLEET_EVERY + 2 * self.cfg.sync_interval;
        let now = Instant::now();
        self.connected_at = Some(if counted { now.checked_sub(warm_up).unwrap_or(now) } else { now });
        self.last_fleet = None;
        self.fresh = true;
        for st in self.states.values_mut() {
            st.charges.clear();
            st.last_seen = (0, i64::MIN);
        }
    }

    /// Rebuilds the remaining-budget gauges and each budget's reset time.
    fn publish(&mut self, now: u64) {
        let subjects = self.limiter.subjects().all();
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
        self.limiter.subjects().evict_users(|s| {
            Kind::ALL
                .iter()
                .all(|&k| s.budget(k).is_none_or(|b| b.window_usage(now).0 == 0 && b.stock() <= b.limit))
        });
        let live: std::collections::HashSet<usize> =
            self.limiter.subjects().all().iter().map(|s| Arc::as_ptr(s) as usize).collect();
        self.states.retain(|(p, _), _| live.contains(p));
    }
}

/// What this gateway may still admit of `b`: the fleet's remaining (redis) plus its own stock.
fn remaining(b: &Budget) -> i64 {
    let f = b.fleet_remaining.load(Relaxed);
    (if f >= 0 { f + b.stock().max(0) } else { b.stock() }).clamp(0, b.limit)
}

/// Borrowing allowed against the next lease, per gateway: `OVERDRAFT` of the limit shared by the
/// fleet (rounded down: none for a small limit or a large fleet; none until the fleet size is known).
fn overdraft(b: &Budget, fleet: u64) -> i64 {
    if fleet == 0 {
        return 0;
    }
    (b.limit as f64 * OVERDRAFT / fleet as f64) as i64
}

fn ttl(b: &Budget) -> u64 {
    b.window.map_or(60, |w| (w.slices + 2) * w.slice_secs)
}

/// The corrections and lease that bring `b`'s charges and stock to their targets (None: nothing to
/// do). Surplus stock is taken back here; the corrections hand it back to Redis.
/// `fresh`: the local stock is about to be dropped (just reconnected): lease as if it were 0.
fn plan(st: &mut State, b: &Budget, s: &Subject, k: Kind, now: u64, fleet: u64, fresh: bool) -> Option<Op> {
    let w = b.window?;
    let overdraft = overdraft(b, fleet);
    b.set_overdraft(overdraft);
    // Read first (Acquire): the usage of every admission it counts is visible below.
    let consumed = b.consumed();
    let (wanted, refused) = b.take_wanted();
    let delta = (consumed - st.last_consumed.min(consumed)) as i64;
    st.last_consumed = consumed;
    st.demand = delta.saturating_add(refused).max(st.demand - st.demand / 4);
    if delta > 0 || wanted > 0 {
        st.last_active = Some(Instant::now());
    }
    let active = st.last_active.is_some_and(|t| t.elapsed() < IDLE);
    // Stock to hold: two ticks of demand, at least what was refused, at most a tenth of the limit
    // (bounding what one gateway can strand while others are refused).
    let cap = (b.limit / 10).max(1).max(wanted);
    let target = if active { st.demand.saturating_mul(2).max(wanted).max(overdraft).min(cap) } else { 0 };
    let mut stock = if fresh { 0 } else { b.stock() };
    if fresh {
        // The local stock is dropped when the leases arrive: nothing to trim.
    } else if !active && stock != 0 {
        // Idle: hand everything back (a debt stays).
        let all = b.revoke_all();
        b.add_to_pool(all.min(0));
        stock = all.min(0);
    } else if stock > 2 * target.max(1) {
        stock -= b.take_from_pool(stock - target);
    }
    let cur = w.slice(now);
    let first = (cur + 1).saturating_sub(w.slices);
    // After a reconnect (last_seen reset) everything is charged again; an idle budget with
    // nothing charged is not looked at.
    let changed = st.last_seen.1 != stock || delta > 0 || st.last_seen.1 == i64::MIN;
    let moved = st.last_seen.0 != cur && (stock != 0 || !st.charges.is_empty());
    let adjust = if changed || moved {
        st.last_seen = (cur, stock);
        st.charges.reconcile(first, cur, stock, |id| b.usage_of(id))
    } else {
        Vec::new()
    };
    let want = (target - stock).max(0);
    if want == 0 && adjust.is_empty() {
        return None;
    }
    Some(Op {
        prefix: s.redis_prefix[k as usize].to_string(),
        slice: cur,
        slices: w.slices,
        limit: b.limit,
        want,
        need: ((-stock).max(0) + wanted).min(want),
        ttl: ttl(b),
        adjust,
    })
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
