//! One limit of one subject (requests/minute, tokens/minute, tokens/day or concurrent requests),
//! counted exactly across the worker cores of this process without a shared atomic per request.
//!
//! Units live in three places, and only move between them: a process-wide `pool`, one allowance per
//! core (its own cache line, written by that core; other cores touch it only to steal when the pool
//! is dry), and, once spent, a per-core ring of usage per time slice. Invariant (local store):
//! `pool + Σ allowances + Σ usage in the window = limit`. Cores admit from their own allowance and
//! refill it from the pool in chunks that shrink as the pool empties; the sync thread returns the
//! usage of slices that leave the window to the pool. With the redis store the pool is filled by
//! leases from Redis instead (see `sync.rs`). Core threads call `take`/`settle`/`give_back`; the sync
//! thread calls the rest.

use std::sync::atomic::{
    AtomicI64, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

/// A sliding window of `slices` slices of `slice_secs` seconds (a day budget: 1 slice of 86400 s,
/// aligned to 00:00 UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub slices: u64,
    pub slice_secs: u64,
}

pub const MINUTE: Window = Window { slices: 60, slice_secs: 1 };
pub const DAY: Window = Window { slices: 1, slice_secs: 86_400 };

impl Window {
    pub fn slice(&self, now_secs: u64) -> u64 {
        now_secs / self.slice_secs
    }

    /// Ring length: two spare slots, so that the slot the sync thread empties is never the one a
    /// core is writing.
    fn ring_len(&self) -> usize {
        self.slices as usize + 2
    }

    /// Seconds from `now_secs` until slice `s` leaves the window.
    pub fn secs_until_expiry(&self, s: u64, now_secs: u64) -> u64 {
        ((s + self.slices) * self.slice_secs).saturating_sub(now_secs)
    }
}

#[repr(align(64))]
struct CoreSlot {
    allowance: AtomicI64,
    /// Units this core has admitted, ever (the sync thread derives demand from it).
    consumed: AtomicU64,
    /// Usage per slice (`slice % len`); empty for concurrency.
    ring: Box<[AtomicI64]>,
}

pub struct Budget {
    pub limit: i64,
    pub window: Option<Window>,
    pool: Padded,
    cores: Box<[CoreSlot]>,
    /// How far below zero the pool may go (redis store: borrowing against the next lease, so that a
    /// burst never waits on the sync thread; 0 = exact). Set by the sync thread.
    overdraft: Padded,
    /// The largest cost refused since the sync thread last looked (redis store: lease at least it).
    wanted: Padded,
    refused: Padded,
    /// The fleet's remaining units as Redis last reported them (redis store), else -1.
    pub fleet_remaining: AtomicI64,
    /// Seconds until the oldest usage in the window expires, as the sync thread last saw it.
    pub reset_secs: AtomicU64,
}

#[repr(align(64))]
struct Padded(AtomicI64);

impl Budget {
    /// A budget with `initial` units in its pool (`limit` for the local store, 0 for redis).
    pub fn new(limit: u64, window: Option<Window>, cores: usize, initial: i64) -> Budget {
        let ring_len = window.map_or(0, |w| w.ring_len());
        Budget {
            limit: limit as i64,
            window,
            pool: Padded(AtomicI64::new(initial)),
            cores: (0..cores.max(1))
                .map(|_| CoreSlot {
                    allowance: AtomicI64::new(0),
                    consumed: AtomicU64::new(0),
                    ring: (0..ring_len).map(|_| AtomicI64::new(0)).collect(),
                })
                .collect(),
            overdraft: Padded(AtomicI64::new(0)),
            wanted: Padded(AtomicI64::new(0)),
            refused: Padded(AtomicI64::new(0)),
            fleet_remaining: AtomicI64::new(-1),
            reset_secs: AtomicU64::new(0),
        }
    }

    fn slot(&self, core: usize) -> &CoreSlot {
        &self.cores[core % self.cores.len()]
    }

    /// Takes `cost` units for core `core` if this process has them; charges them to `slice`.
    pub fn take(&self, core: usize, cost: i64, slice: u64) -> bool {
        let me = self.slot(core);
        if !self.take_units(core, cost) {
            return false;
        }
        if !me.ring.is_empty() {
            me.ring[slice as usize % me.ring.len()].fetch_add(cost, Relaxed);
        }
        // Last, and Release: the sync thread that sees this count sees the usage above.
        me.consumed.fetch_add(cost as u64, Release);
        true
    }

    fn take_units(&self, core: usize, cost: i64) -> bool {
        let me = self.slot(core);
        // 1. This core's allowance: an uncontended CAS on its own cache line.
        let mut a = me.allowance.load(Relaxed);
        while a >= cost {
            match me.allowance.compare_exchange_weak(a, a - cost, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(now) => a = now,
            }
        }
        // 2. A chunk from the pool: the cost plus a share of what is left, smaller as it empties.
        let floor = -self.overdraft.0.load(Relaxed);
        let n = self.cores.len() as i64;
        let mut p = self.pool.0.load(Relaxed);
        while p - cost >= floor {
            let extra = ((p - cost) / (4 * n)).clamp(0, 1 << 20);
            match self.pool.0.compare_exchange_weak(p, p - cost - extra, Relaxed, Relaxed) {
                Ok(_) => {
                    if extra > 0 {
                        me.allowance.fetch_add(extra, Relaxed);
                    }
                    return true;
                }
                Err(now) => p = now,
            }
        }
        // 3. Near the limit: gather what is left in this core's allowance, the pool and the other
        // cores' allowances; give it back to this core's allowance when it is not enough.
        let mut got = grab(&me.allowance, cost, 0);
        if got < cost {
            got += grab(&self.pool.0, cost - got, floor.max(0));
        }
        for (i, other) in self.cores.iter().enumerate() {
            if got >= cost {
                break;
            }
            if i != core % self.cores.len() {
                got += grab(&other.allowance, cost - got, 0);
            }
        }
        if got >= cost {
            return true;
        }
        if got > 0 {
            me.allowance.fetch_add(got, Relaxed);
        }
        false
    }

    /// Returns a concurrency unit (or any unit) to core `core`'s allowance.
    pub fn give_back(&self, core: usize, units: i64) {
        self.slot(core).allowance.fetch_add(units, Relaxed);
    }

    /// Replaces a reservation of `reserved` units charged to `slice` by the `billed` units.
    pub fn settle(&self, core: usize, reserved: i64, billed: i64, slice: u64, now_secs: u64) {
        let me = self.slot(core);
        let Some(w) = self.window else { return };
        if reserved == billed {
            return;
        }
        // What the request owes beyond what it reserved (a credit when negative).
        let owed = if w.secs_until_expiry(slice, now_secs) > 2 {
            // Still counted in the window: correct the slice it was charged to.
            me.ring[slice as usize % me.ring.len()].fetch_add(billed - reserved, Relaxed);
            billed - reserved
        } else {
            // The reservation has left (or is about to leave) the window and was returned: the
            // billed tokens count now.
            let now = w.slice(now_secs);
            me.ring[now as usize % me.ring.len()].fetch_add(billed, Relaxed);
            billed
        };
        if owed <= 0 {
            me.allowance.fetch_add(-owed, Relaxed);
        } else {
            self.charge(core, owed);
        }
    }

    /// Charges `units` already spent: from this core's allowance, then what the pool holds, then
    /// the other cores' allowances (a debt takes back what they hold, so none of it is admitted
    /// past the limit), and the rest from the pool, which goes negative. Runs only when a request
    /// billed more than it reserved; another core's line is touched only when the pool is empty.
    fn charge(&self, core: usize, units: i64) {
        let mut got = grab(&self.slot(core).allowance, units, 0);
        if got < units {
            got += grab(&self.pool.0, units - got, 0);
        }
        for other in &self.cores {
            if got >= units {
                return;
            }
            got += grab(&other.allowance, units - got, 0);
        }
        if got < units {
            self.pool.0.fetch_sub(units - got, Relaxed);
        }
    }

    /// Units this process may still admit without asking anyone: pool plus every allowance.
    pub fn stock(&self) -> i64 {
        let cores = self.cores.iter().fold(0i64, |a, c| a.saturating_add(c.allowance.load(Relaxed)));
        self.pool.0.load(Relaxed).saturating_add(cores)
    }

    /// A cheap view for response headers: what the pool and this core hold (other cores' small
    /// allowances are not read on the request path).
    pub fn remaining_hint(&self, core: usize) -> i64 {
        let local = self.pool.0.load(Relaxed) + self.slot(core).allowance.load(Relaxed);
        match self.fleet_remaining.load(Relaxed) {
            f if f >= 0 => f + local.max(0),
            _ => local,
        }
    }

    pub fn consumed(&self) -> u64 {
        self.cores.iter().map(|c| c.consumed.load(Acquire)).sum()
    }

    /// Notes a refused `cost` (refusal path only): the sync thread counts it as demand and leases
    /// at least the largest.
    pub fn note_refused(&self, cost: i64) {
        // `fetch_max` only when it would raise the value: a burst of equal refusals reads the line.
        if self.wanted.0.load(Relaxed) < cost {
            self.wanted.0.fetch_max(cost, Relaxed);
        }
        self.refused.0.fetch_add(cost, Relaxed);
    }

    /// (largest cost refused, sum of the costs refused) since the last call (sync thread).
    pub fn take_wanted(&self) -> (i64, i64) {
        (self.wanted.0.swap(0, Relaxed), self.refused.0.swap(0, Relaxed))
    }

    pub fn add_to_pool(&self, units: i64) {
        self.pool.0.fetch_add(units, Relaxed);
    }

    /// Takes up to `units` from the pool (never below 0); returns how many.
    pub fn take_from_pool(&self, units: i64) -> i64 {
        grab(&self.pool.0, units, 0)
    }

    /// Empties the pool and every allowance (debts included); returns their sum.
    pub fn revoke_all(&self) -> i64 {
        self.pool.0.swap(0, Relaxed) + self.cores.iter().map(|c| c.allowance.swap(0, Relaxed)).sum::<i64>()
    }

    pub fn set_overdraft(&self, units: i64) {
        self.overdraft.0.store(units, Relaxed);
    }

    /// Usage of slice `s`, summed over cores (not cleared).
    pub fn usage_of(&self, s: u64) -> i64 {
        self.cores
            .iter()
            .filter(|c| !c.ring.is_empty())
            .map(|c| c.ring[s as usize % c.ring.len()].load(Relaxed))
            .fold(0, i64::saturating_add)
    }

    /// Clears slice `s` on every core; returns the usage it held.
    pub fn expire_slice(&self, s: u64) -> i64 {
        self.cores
            .iter()
            .filter(|c| !c.ring.is_empty())
            .map(|c| c.ring[s as usize % c.ring.len()].swap(0, Relaxed))
            .fold(0, i64::saturating_add)
    }

    /// Usage of the slices still in the window at `now_secs`, and the oldest slice with usage.
    pub fn window_usage(&self, now_secs: u64) -> (i64, Option<u64>) {
        let Some(w) = self.window else { return (0, None) };
        let cur = w.slice(now_secs);
        let mut total = 0;
        let mut oldest = None;
        for s in (cur + 1).saturating_sub(w.slices)..=cur {
            let u = self.usage_of(s);
            total = i64::saturating_add(total, u);
            if u > 0 && oldest.is_none() {
                oldest = Some(s);
            }
        }
        (total, oldest)
    }
}

/// Takes up to `want` from `cell` without taking it below `floor`; returns how many.
fn grab(cell: &AtomicI64, want: i64, floor: i64) -> i64 {
    let mut v = cell.load(Relaxed);
    loop {
        let t = want.min(v - floor);
        if t <= 0 {
            return 0;
        }
        match cell.compare_exchange_weak(v, v - t, Relaxed, Relaxed) {
            Ok(_) => return t,
            Err(now) => v = now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_across_cores_even_when_an_idle_core_holds_a_chunk() {
        let b = Budget::new(1000, Some(MINUTE), 4, 1000);
        // Core 0 takes a big chunk early, then its clients go away.
        assert!(b.take(0, 1, 5));
        let mut admitted = 1;
        // Core 1 alone must still reach the limit exactly, stealing what core 0 holds.
        while b.take(1, 1, 5) {
            admitted += 1;
        }
        assert_eq!(admitted, 1000);
        assert!(!b.take(2, 1, 5));
        assert_eq!(b.stock(), 0);
        assert_eq!(b.usage_of(5), 1000);
    }

    #[test]
    fn token_costs_are_all_or_nothing() {
        let b = Budget::new(100, Some(MINUTE), 2, 100);
        assert!(b.take(0, 60, 1));
        assert!(!b.take(1, 50, 1));
        assert_eq!(b.stock(), 40, "a refused take gives back what it gathered");
        assert!(b.take(1, 40, 1));
        assert_eq!(b.stock(), 0);
    }

    #[test]
    fn settlement_replaces_the_reservation() {
        let b = Budget::new(100, Some(MINUTE), 2, 100);
        assert!(b.take(0, 80, 10));
        b.settle(0, 80, 30, 10, 12);
        assert_eq!(b.stock(), 70);
        assert_eq!(b.usage_of(10), 30);
        // Billed more than reserved: a debt.
        assert!(b.take(1, 70, 12));
        b.settle(1, 70, 90, 12, 13);
        assert_eq!(b.stock(), -20);
        assert!(!b.take(0, 1, 13));
        // The window slides: slice 10 and 12 leave it and their usage returns to the pool.
        for s in 0..=12 {
            let u = b.expire_slice(s);
            b.add_to_pool(u);
        }
        assert_eq!(b.stock(), 100);
    }

    /// A request that billed far more than it reserved: the debt takes back every core's allowance
    /// and sinks the pool, so no core admits anything (the pool held units, and core 0's debt
    /// used to sit on its own allowance while every core went on admitting from them) until the
    /// window has returned the usage.
    #[test]
    fn a_debt_stops_every_core_until_the_window_returns_it() {
        let b = Budget::new(1000, Some(MINUTE), 2, 1000);
        assert!(b.take(1, 10, 1), "core 1 holds a chunk");
        assert!(b.take(0, 10, 1));
        b.settle(0, 10, 3000, 1, 2);
        assert_eq!(b.stock(), -2010);
        assert!(!b.take(1, 1, 2), "core 1's chunk went to the debt");
        assert!(!b.take(0, 1, 2));
        assert_eq!(b.stock(), -2010, "refusals move units, they do not make any");
        let u = b.expire_slice(1);
        b.add_to_pool(u);
        assert_eq!(b.stock(), 1000);
        assert!(b.take(0, 1000, 63));
        assert!(!b.take(1, 1, 63));
    }

    #[test]
    fn settlement_after_the_window_counts_the_billed_tokens_now() {
        let b = Budget::new(100, Some(MINUTE), 1, 100);
        assert!(b.take(0, 50, 0));
        let u = b.expire_slice(0);
        b.add_to_pool(u);
        assert_eq!(b.stock(), 100);
        b.settle(0, 50, 20, 0, 61);
        assert_eq!(b.stock(), 80);
        assert_eq!(b.usage_of(61), 20);
    }

    #[test]
    fn concurrency_units_come_back() {
        let b = Budget::new(2, None, 2, 2);
        assert!(b.take(0, 1, 0));
        assert!(b.take(1, 1, 0));
        assert!(!b.take(0, 1, 0));
        b.give_back(1, 1);
        assert!(b.take(0, 1, 0), "core 0 steals the unit core 1 gave back");
    }

    #[test]
    fn overdraft_lets_the_pool_go_negative_once() {
        let b = Budget::new(10, Some(MINUTE), 1, 0);
        b.set_overdraft(2);
        assert!(b.take(0, 1, 0));
        assert!(b.take(0, 1, 0));
        assert!(!b.take(0, 1, 0));
        assert_eq!(b.stock(), -2);
    }

    #[test]
    fn threads_never_admit_more_than_the_limit() {
        let b = std::sync::Arc::new(Budget::new(10_000, Some(MINUTE), 4, 10_000));
        let hs: Vec<_> = (0..4)
            .map(|c| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut n = 0;
                    while b.take(c, 3, 0) {
                        n += 3;
                    }
                    n
                })
            })
            .collect();
        let total: i64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 9999);
        assert_eq!(b.stock(), 1);
    }
}
