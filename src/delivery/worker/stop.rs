//! The journal thread's graceful stop (everything submitted journaled, one delivery attempt for what
//! memory holds) and its fallback without delivery threads.

use super::{Held, State, Worker, STOP_DELIVERY_MAX};
use crate::delivery::sink::Pool;
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Worker {
    /// Graceful stop: everything submitted is journaled; one attempt per batch for what memory holds
    /// (bounded time), the rest stays in the journal for the next start.
    pub(super) fn shutdown(mut self, mut pool: Pool) {
        let was_down = self.sink_down();
        self.state = State::Stopping;
        while self.intake() {}
        self.commit();
        if !was_down {
            let now = Instant::now();
            for h in self.waiting.iter_mut() {
                h.not_before = now;
            }
            let deadline = now + STOP_DELIVERY_MAX;
            loop {
                self.collect(&mut pool);
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                if !self.stop_failed {
                    self.dispatch(&mut pool, now);
                }
                if pool.in_flight() == 0 && (self.ready.is_empty() || self.stop_failed) {
                    break;
                }
                pool.wake_on_done();
                std::thread::park_timeout(self.poll);
            }
        }
        for b in pool.stop() {
            self.in_flight_records -= b.entries.len();
            match b.result {
                Ok(()) => {
                    self.stats.success.fetch_add(b.entries.len() as u64, Ordering::Relaxed);
                    for m in &b.meta {
                        if let Some(p) = m.pos {
                            self.journal.ack(p);
                        }
                    }
                }
                Err(_) => {
                    self.stats.failure.fetch_add(1, Ordering::Relaxed);
                    for (entry, meta) in b.entries.into_iter().zip(b.meta) {
                        self.ready.push_back(Held { entry, meta, not_before: Instant::now() });
                    }
                }
            }
        }
        while self.intake() {}
        self.journal_memory_only();
        self.publish_final();
    }

    /// Journals every record held only in memory, then commits (stop, or no delivery threads).
    fn journal_memory_only(&mut self) {
        let mut n = 0;
        for h in self.ready.iter_mut().chain(self.waiting.iter_mut()) {
            if h.meta.pos.is_none() {
                h.meta.pos = Some(self.journal.append(h.meta.ts_ms, &h.entry.json, true));
                n += 1;
            }
        }
        if let Err(u) = self.journal.commit() {
            log::error!(
                "{} usage records could not be journaled at stop ({}) and are lost",
                u.entries.len().max(n),
                u.error
            );
        }
    }

    fn publish_final(&mut self) {
        self.ready.clear();
        self.waiting.clear();
        self.shared.in_thread.store(0, Ordering::Relaxed);
        self.stats.spool_records.store(self.journal.pending(), Ordering::Relaxed);
        if self.journal.pending() > 0 {
            log::info!(
                "{} usage records wait in the journal {} for the next start",
                self.journal.pending(),
                self.journal.dir().display()
            );
        }
    }

    /// No delivery threads: journal everything until stopped. Polls while records come, sleeps once
    /// a round finds none.
    pub(super) fn journal_only(mut self) {
        self.eager = true;
        let mut stop = false;
        loop {
            let took = !self.ch.rx.is_empty() || !self.ch.overflow.is_empty();
            while self.intake() {}
            self.journal_memory_only();
            self.ready.clear();
            if stop {
                break;
            }
            stop = if took { self.ch.wait_stop(self.poll) } else { self.ch.sleep(&self.shared.bell, None) };
        }
        self.publish_final();
    }
}
