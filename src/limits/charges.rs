//! What one gateway has charged to each slice of one budget in Redis, and the corrections that
//! make those charges match where its units were used (pure; the sync thread's bookkeeping).
//!
//! Leased units are charged to the slice they were granted in. Were they left there, a unit leased
//! at second 0 and used at second 1 would leave the window at second 60 while its use is still
//! inside it (until second 61), and a fleet could admit a second limit's worth in that window.
//! So each tick the charges are corrected: every past slice is charged exactly the units used in
//! it, and the current slice its usage plus the stock still held (a debt, negative stock, is left
//! uncharged on the newest slices until a lease pays it). Every admitted unit is then charged to
//! the slice it was used in (within one tick), and stock follows the clock.

use std::collections::VecDeque;

#[derive(Debug, Default)]
pub struct Charges {
    /// (slice, units charged), oldest first, non-zero entries only.
    by_slice: VecDeque<(u64, i64)>,
}

impl Charges {
    pub fn is_empty(&self) -> bool {
        self.by_slice.is_empty()
    }

    /// Forgets every charge (Redis may have lost them: they are charged again).
    pub fn clear(&mut self) {
        self.by_slice.clear();
    }

    pub fn get(&self, slice: u64) -> i64 {
        self.by_slice.iter().find(|e| e.0 == slice).map_or(0, |e| e.1)
    }

    /// Records `units` added to `slice` (a grant).
    pub fn add(&mut self, slice: u64, units: i64) {
        match self.by_slice.iter_mut().find(|e| e.0 == slice) {
            Some(e) => e.1 = e.1.saturating_add(units),
            None => {
                let at = self.by_slice.partition_point(|e| e.0 < slice);
                self.by_slice.insert(at, (slice, units));
            }
        }
        self.by_slice.retain(|e| e.1 != 0);
    }

    /// The corrections (slice, delta) that charge each slice of the window `first..=cur` with
    /// `used(slice)` and `cur` also with `stock`; records them as done. Slices before `first` are
    /// forgotten (Redis expires them).
    pub fn reconcile(
        &mut self,
        first: u64,
        cur: u64,
        stock: i64,
        used: impl Fn(u64) -> i64,
    ) -> Vec<(u64, i64)> {
        while self.by_slice.front().is_some_and(|e| e.0 < first) {
            self.by_slice.pop_front();
        }
        let n = (cur + 1 - first) as usize;
        let mut target: Vec<i64> = (first..=cur).map(|s| used(s).max(0)).collect();
        target[n - 1] += stock;
        // A debt is left uncharged on the newest slices.
        for i in (1..n).rev() {
            if target[i] < 0 {
                target[i - 1] += target[i];
                target[i] = 0;
            }
        }
        target[0] = target[0].max(0);
        let mut out = Vec::new();
        for (i, &t) in target.iter().enumerate() {
            let s = first + i as u64;
            let d = t - self.get(s);
            if d != 0 {
                out.push((s, d));
                self.add(s, d);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_follows_the_clock_and_use_is_charged_where_it_happened() {
        let mut c = Charges::default();
        // A grant of 10 at slice 100, 4 used in it.
        c.add(100, 10);
        assert_eq!(c.reconcile(41, 100, 6, |s| if s == 100 { 4 } else { 0 }), vec![]);
        // Slice 101: 3 more used; the 3 left in stock move along.
        let used = |s| match s {
            100 => 4,
            101 => 3,
            _ => 0,
        };
        assert_eq!(c.reconcile(42, 101, 3, used), vec![(100, -6), (101, 6)]);
        assert_eq!((c.get(100), c.get(101)), (4, 6));
        // Idle: the stock is handed back.
        assert_eq!(c.reconcile(42, 101, 0, used), vec![(101, -3)]);
        // The window slides past slice 100: forgotten, nothing sent.
        assert_eq!(c.reconcile(101, 160, 0, |s| if s == 101 { 3 } else { 0 }), vec![]);
        assert_eq!(c.get(100), 0);
    }

    #[test]
    fn a_debt_stays_uncharged_until_leased_and_a_cleared_record_charges_all_use_again() {
        let mut c = Charges::default();
        c.add(10, 2);
        // 5 used in slice 10 with 2 leased: stock -3, nothing more is charged.
        assert_eq!(c.reconcile(10, 10, -3, |_| 5), vec![]);
        // Slice 11: 1 used there too, stock -4: still nothing.
        let used = |s| if s == 10 { 5 } else { 1 };
        assert_eq!(c.reconcile(10, 11, -4, used), vec![]);
        // A lease of 6 (charged to 11) pays the debt: 5 + 1 charged where used, 2 in stock.
        c.add(11, 6);
        assert_eq!(c.reconcile(10, 11, 2, used), vec![(10, 3), (11, -3)]);
        assert_eq!((c.get(10), c.get(11)), (5, 3));
        // Redis came back empty: everything used is charged again.
        c.clear();
        assert_eq!(c.reconcile(10, 11, 0, used), vec![(10, 5), (11, 1)]);
    }
}
