//! Limits and budgets per subject (CONTRACT section 8), the one entry point being
//! `CoreLimits::admit` on a core thread: it takes the request's units from per-core allowances (no
//! lock, no await, no network, no allocation for a known subject) and returns a `Ticket` whose drop
//! replaces the token reservation by the billed tokens and frees the concurrency slot. The sync
//! thread (`sync.rs`) slides the windows and, with `store = "redis"`, leases units from Redis.

mod budget;
mod charges;
mod headers;
mod redis_store;
mod subject;
mod sync;

use crate::config::{Config, OnStoreError, Store};
use arc_swap::ArcSwap;
use budget::Budget;
pub use headers::HeaderBlock;
use headers::{secs_to_midnight, Dimension};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
pub use subject::Kind;
use subject::{Subject, Subjects};
pub use sync::SyncThread;

/// Who a request counts against.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    /// The matched `[[auth.keys]]` entry: its index in the config the request runs on, and its
    /// stable id (`AuthKey::id`), which finds it when a reload moved it.
    Key {
        index: usize,
        id: u64,
    },
    /// The `user_header` value (no key matched).
    User(&'a str),
    Anonymous,
}

/// What a request may cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Demand {
    pub body_bytes: usize,
    /// `max_tokens` / `max_completion_tokens` / `max_output_tokens` (0 if absent).
    pub max_output_tokens: u64,
    /// Choices asked for (`n`, at least 1).
    pub n: u64,
}

impl Demand {
    /// Tokens reserved at admission: the output asked for (per choice) plus ⌈body bytes ÷ 4⌉.
    pub fn tokens(&self) -> u64 {
        self.max_output_tokens
            .saturating_mul(self.n.max(1))
            .saturating_add((self.body_bytes as u64).div_ceil(4))
    }
}

/// Why a request was refused (the `reason` label of `llmproxy_rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Requests,
    Tokens,
    Concurrent,
    Budget,
    /// Redis unreachable with `on_store_error = "deny"` (503, not 429).
    StoreUnavailable,
}

impl Reason {
    pub const ALL: [Reason; 5] =
        [Reason::Requests, Reason::Tokens, Reason::Concurrent, Reason::Budget, Reason::StoreUnavailable];

    pub fn label(self) -> &'static str {
        match self {
            Reason::Requests => "requests",
            Reason::Tokens => "tokens",
            Reason::Concurrent => "concurrent",
            Reason::Budget => "budget",
            Reason::StoreUnavailable => "store_unavailable",
        }
    }

    fn of(k: Kind) -> Reason {
        match k {
            Kind::Requests => Reason::Requests,
            Kind::Tokens => Reason::Tokens,
            Kind::Day => Reason::Budget,
            Kind::Concurrent => Reason::Concurrent,
        }
    }
}

/// A refused request: why, when to retry, and the subject's header block.
pub struct Refusal {
    pub reason: Reason,
    pub retry_after: u32,
    pub headers: HeaderBlock,
}

pub enum Admission {
    /// No limit applies (limits off, or an unlimited subject): no headers, nothing to settle.
    Unlimited,
    Admitted(Ticket),
    Refused(Refusal),
}

/// The process-wide part: subjects, the store's state, refusal counters, published gauges.
pub struct Limiter {
    enabled: bool,
    deny_on_store_error: bool,
    redis: bool,
    /// Swapped whole by a config reload (`reload`); cores follow `generation`.
    subjects: ArcSwap<Subjects>,
    generation: AtomicU64,
    /// False while Redis is unreachable (the sync thread sets it).
    store_ok: AtomicBool,
    /// Refusals by core, then reason.
    refused: Box<[PerCore]>,
    /// The sync thread, woken when a core runs dry with the redis store.
    thread: OnceLock<std::thread::Thread>,
    wake_pending: AtomicBool,
    /// Gateways sharing the redis store, as Redis last said (0: unknown or local store).
    fleet: AtomicU64,
    /// Remaining-budget gauge lines, rebuilt by the sync thread.
    gauges: Mutex<String>,
}

#[repr(align(64))]
struct PerCore([AtomicU64; Reason::ALL.len()]);

impl Limiter {
    pub fn new(cfg: &Config, cores: usize) -> Limiter {
        let rl = &cfg.rate_limit;
        Limiter {
            enabled: rl.enabled,
            deny_on_store_error: rl.on_store_error == OnStoreError::Deny,
            redis: rl.store == Store::Redis,
            subjects: ArcSwap::from_pointee(Subjects::new(cfg, cores, None)),
            generation: AtomicU64::new(0),
            store_ok: AtomicBool::new(true),
            refused: (0..cores.max(1)).map(|_| PerCore(Default::default())).collect(),
            thread: OnceLock::new(),
            wake_pending: AtomicBool::new(false),
            fleet: AtomicU64::new(0),
            gauges: Mutex::new(String::new()),
        }
    }

    /// Config reload hook (reload engineer): new per-key and default limits apply to new
    /// requests. Subjects whose limits did not change keep their counts; `enabled` and the store
    /// settings need a restart (`reload::keep_restart_only` keeps them).
    pub fn reload(&self, cfg: &Config) {
        let prev = self.subjects.load_full();
        self.subjects.store(Arc::new(Subjects::new(cfg, prev.cores, Some(&prev))));
        self.generation.fetch_add(1, Relaxed);
        self.wake();
    }

    /// The subjects in use.
    fn subjects(&self) -> Arc<Subjects> {
        self.subjects.load_full()
    }

    fn wake(&self) {
        // Read first: while a wake is pending (the usual state during a burst of refusals), no
        // core writes the shared line.
        if self.redis && !self.wake_pending.load(Relaxed) && !self.wake_pending.swap(true, Relaxed) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }

    /// Appends the limits' metric families (Prometheus text); called when `/metrics` is scraped.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP llmproxy_rate_limited_total Requests refused by a limit, by reason (requests, tokens, concurrent, budget: 429; store_unavailable: 503).\n# TYPE llmproxy_rate_limited_total counter");
        for (i, r) in Reason::ALL.iter().enumerate() {
            let v: u64 = self.refused.iter().map(|c| c.0[i].load(Relaxed)).sum();
            let _ = writeln!(out, "llmproxy_rate_limited_total{{reason=\"{}\"}} {v}", r.label());
        }
        let _ = writeln!(out, "# HELP llmproxy_rate_limit_store_up Whether the limit store answers (1; always 1 for store = \"local\").\n# TYPE llmproxy_rate_limit_store_up gauge\nllmproxy_rate_limit_store_up {}", u8::from(self.store_ok.load(Relaxed)));
        let _ = writeln!(out, "# HELP llmproxy_rate_limit_fleet_gateways Gateways sharing the redis store (live in the last 3 s), as this one last saw; 0 for store = \"local\".\n# TYPE llmproxy_rate_limit_fleet_gateways gauge\nllmproxy_rate_limit_fleet_gateways {}", self.fleet.load(Relaxed));
        let _ = writeln!(out, "# HELP llmproxy_rate_limit_remaining Units left per limit for the subjects closest to their limits (at most 10 subjects per limit).\n# TYPE llmproxy_rate_limit_remaining gauge");
        // Scraped on a core thread: never wait for the sync thread, which holds the lock only to
        // swap in a new text.
        let g = (0..10_000).find_map(|_| {
            self.gauges.try_lock().ok().or_else(|| {
                std::hint::spin_loop();
                None
            })
        });
        if let Some(g) = g {
            out.push_str(&g);
        }
    }
}

/// One core's view: the limiter plus this core's cache of subjects (keys, anonymous, users seen).
pub struct CoreLimits {
    limiter: Arc<Limiter>,
    core: usize,
    /// The limiter's generation this cache was filled from (re-filled when a reload moved it).
    generation: Cell<u64>,
    /// By key index, with the key's id.
    keys: RefCell<Vec<(u64, Option<Rc<Cached>>)>>,
    anonymous: RefCell<Option<Rc<Cached>>>,
    users_unlimited: Cell<bool>,
    users: RefCell<HashMap<Box<str>, Rc<Cached>>>,
}

/// A subject as a core holds it: cloning the `Rc` for a request is a plain, core-local increment
/// (no shared atomic per request), and the cache drops users no request holds.
struct Cached(Arc<Subject>);

/// Users cached per core before unreferenced ones are dropped from the cache.
const CORE_USER_CACHE: usize = 4096;
/// The most tokens one request is charged or admitted for (2^40, far past any model's context): a
/// backend that reports absurd usage, or a body asking `max_tokens` near 2^63, cannot overflow a
/// per-core slice or a window's sum.
const MAX_TOKENS_PER_REQUEST: u64 = 1 << 40;

impl CoreLimits {
    pub fn new(limiter: Arc<Limiter>, core: usize) -> CoreLimits {
        let c = CoreLimits {
            generation: Cell::new(u64::MAX),
            keys: RefCell::new(Vec::new()),
            anonymous: RefCell::new(None),
            users_unlimited: Cell::new(true),
            users: RefCell::new(HashMap::new()),
            limiter,
            core,
        };
        c.sync();
        c
    }

    /// Re-fills this core's cache when a reload swapped the subjects (one atomic load otherwise).
    fn sync(&self) {
        let g = self.limiter.generation.load(Relaxed);
        if self.generation.get() == g {
            return;
        }
        let s = self.limiter.subjects();
        *self.keys.borrow_mut() = s
            .key_ids
            .iter()
            .zip(&s.keys)
            .map(|(&id, k)| (id, k.clone().map(|k| Rc::new(Cached(k)))))
            .collect();
        *self.anonymous.borrow_mut() = s.anonymous.clone().map(|a| Rc::new(Cached(a)));
        self.users_unlimited.set(s.user_limits.is_unlimited());
        self.users.borrow_mut().clear();
        self.generation.set(g);
    }

    fn subject(&self, who: Who<'_>) -> Option<Rc<Cached>> {
        self.sync();
        match who {
            Who::Key { index, id } => {
                let keys = self.keys.borrow();
                match keys.get(index) {
                    Some((kid, s)) if *kid == id => s.clone(),
                    // The request's config and the limits' are a reload apart: find it by id.
                    _ => keys.iter().find(|(kid, _)| *kid == id)?.1.clone(),
                }
            }
            Who::Anonymous => self.anonymous.borrow().clone(),
            Who::User(name) => {
                if self.users_unlimited.get() {
                    return None;
                }
                if let Some(s) = self.users.borrow().get(name) {
                    return Some(s.clone());
                }
                let local = !self.limiter.store_ok.load(Relaxed);
                let s = Rc::new(Cached(self.limiter.subjects().user(name, local)?));
                let mut cache = self.users.borrow_mut();
                if cache.len() >= CORE_USER_CACHE {
                    cache.retain(|_, s| Rc::strong_count(s) > 1);
                }
                if cache.len() < CORE_USER_CACHE {
                    cache.insert(name.into(), s.clone());
                }
                Some(s)
            }
        }
    }

    /// The `x-ratelimit-*` block of `who` without admitting anything (None: not a limited
    /// subject), for answers given before admission (a 400 for a bad body).
    pub fn headers(&self, who: Who<'_>) -> Option<HeaderBlock> {
        if !self.limiter.enabled {
            return None;
        }
        let subject = self.subject(who)?;
        Some(headers(&subject.0, self.core, unix_secs()))
    }

    /// Admits a request of `who` costing `demand`, or refuses it. Never waits.
    pub fn admit(&self, who: Who<'_>, demand: Demand) -> Admission {
        if !self.limiter.enabled {
            return Admission::Unlimited;
        }
        let Some(subject) = self.subject(who) else { return Admission::Unlimited };
        let now = unix_secs();
        let s: &Subject = &subject.0;
        let tokens = if s.has_tokens() { demand.tokens().min(MAX_TOKENS_PER_REQUEST) as i64 } else { 0 };
        let core = self.core;
        let refuse = |reason: Reason, retry_after: u64| {
            self.limiter.refused[core % self.limiter.refused.len()].0[reason as usize].fetch_add(1, Relaxed);
            self.limiter.wake();
            Admission::Refused(Refusal {
                reason,
                retry_after: retry_after.clamp(1, u32::MAX as u64) as u32,
                headers: headers(s, core, now),
            })
        };
        if self.limiter.deny_on_store_error && !self.limiter.store_ok.load(Relaxed) {
            return refuse(Reason::StoreUnavailable, 1);
        }
        let mut taken: [bool; 4] = [false; 4];
        for k in Kind::ALL {
            let Some(b) = s.budget(k) else { continue };
            let cost = match k {
                Kind::Requests | Kind::Concurrent => 1,
                Kind::Tokens | Kind::Day => tokens,
            };
            let slice = b.window.map_or(0, |w| w.slice(now));
            if b.take(core, cost, slice) {
                taken[k as usize] = true;
                continue;
            }
            // Refused: give back what the earlier limits took.
            for j in Kind::ALL {
                if taken[j as usize] {
                    let bj = s.budget(j).expect("taken from an existing budget");
                    match bj.window {
                        None => bj.give_back(core, 1),
                        Some(w) => bj.settle(
                            core,
                            if j == Kind::Requests { 1 } else { tokens },
                            0,
                            w.slice(now),
                            now,
                        ),
                    }
                }
            }
            b.note_refused(cost);
            return refuse(Reason::of(k), retry_after(b, k, now));
        }
        Admission::Admitted(Ticket {
            headers: headers(s, core, now),
            subject,
            core,
            tokens,
            at: now,
            billed: None,
        })
    }
}

/// Seconds until the limit `k` may admit again (best effort: when its oldest usage expires).
fn retry_after(b: &Budget, k: Kind, now: u64) -> u64 {
    match (k, b.window) {
        (Kind::Day, _) => secs_to_midnight(now),
        (_, Some(w)) => match b.window_usage(now).1 {
            Some(oldest) => w.secs_until_expiry(oldest, now),
            None => 1,
        },
        (_, None) => 1,
    }
}

fn dimension(b: Option<&Budget>, core: usize, reset: impl Fn(&Budget) -> u64) -> Option<Dimension> {
    let b = b?;
    Some(Dimension {
        limit: b.limit as u64,
        remaining: b.remaining_hint(core).clamp(0, b.limit) as u64,
        reset_secs: reset(b),
    })
}

/// The subject's `x-ratelimit-*` block: all six headers, whatever limits it has. Requests are
/// `requests_per_minute`; tokens are whichever of `tokens_per_minute` and `tokens_per_day` has
/// less left (the one that refuses first); a dimension without a limit is `Dimension::UNLIMITED`.
fn headers(s: &Subject, core: usize, now: u64) -> HeaderBlock {
    let minute = |b: &Budget| b.reset_secs.load(Relaxed);
    let requests = dimension(s.budget(Kind::Requests), core, minute);
    let per_minute = dimension(s.budget(Kind::Tokens), core, minute);
    let per_day = dimension(s.budget(Kind::Day), core, |_| secs_to_midnight(now));
    let tokens = match (per_minute, per_day) {
        (Some(m), Some(d)) => Some(if d.remaining < m.remaining { d } else { m }),
        (m, d) => m.or(d),
    };
    HeaderBlock::write(requests.unwrap_or(Dimension::UNLIMITED), tokens.unwrap_or(Dimension::UNLIMITED))
}

/// Unix seconds from the coarse clock (`CLOCK_REALTIME_COARSE`: a vDSO read of the last tick,
/// about 20 ns where `SystemTime::now` took 130 ns on the benchmark VM; second resolution is all
/// the windows need). Called on the request path twice per limited request.
pub fn unix_secs() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we own; it cannot fail for this clock id.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 && ts.tv_sec > 0 {
        return ts.tv_sec as u64;
    }
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An admitted request's hold on its subject's limits. `finish` (or drop) settles it.
pub struct Ticket {
    subject: Rc<Cached>,
    core: usize,
    /// Tokens reserved at admission.
    tokens: i64,
    at: u64,
    billed: Option<u64>,
    headers: HeaderBlock,
}

impl Ticket {
    /// The `x-ratelimit-*` lines for this request's response.
    pub fn headers(&self) -> &[u8] {
        self.headers.as_bytes()
    }

    /// The same lines as a block, for an error answer written after the ticket is finished.
    pub fn header_block(&self) -> &HeaderBlock {
        &self.headers
    }

    /// Replaces the token reservation by `billed` (None: keep the reservation, e.g. when the
    /// backend reported no usage) and frees the concurrency slot.
    pub fn finish(mut self, billed: Option<u64>) {
        self.billed = billed;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let s: &Subject = &self.subject.0;
        let now = unix_secs();
        let billed = self.billed.map_or(self.tokens, |b| b.min(MAX_TOKENS_PER_REQUEST) as i64);
        for k in [Kind::Tokens, Kind::Day] {
            if let (Some(b), Some(w)) = (s.budget(k), k.window()) {
                b.settle(self.core, self.tokens, billed, w.slice(self.at), now);
            }
        }
        if let Some(b) = s.budget(Kind::Concurrent) {
            b.give_back(self.core, 1);
        }
    }
}
