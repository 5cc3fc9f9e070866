//! The journal thread ("llmproxy-webhook"): takes records from the core threads' channels, journals
//! them (group commit every few ms), keeps a bounded window of them in memory, hands batches to the
//! delivery threads ([`super::sink::Pool`]), acknowledges what was delivered, retries what was not,
//! and on stop journals everything left. Its whole condition is the one [`State`] value.
//!
//! Pace: while it has work (records held or in flight, frames or acknowledgements not yet written or
//! fdatasync'd, a backlog, a failing disk) it wakes every `poll` (`crash_window / 3`), or earlier
//! when a delivery thread finishes a batch while others wait for one; a submit does not wake it
//! then. Each round writes what arrived to the journal (a `write`: safe from `kill -9` from then
//! on); the segment is fdatasync'd at most once per `2 / 3 * crash_window` (at least once per
//! `poll`) and only when something was written since ([`Worker::commit`], which has the arithmetic
//! of the power-loss bound), the `.ack` files once a second. With nothing left to do
//! ([`Worker::idle`]) it parks until the next submit unparks it ([`Channels::sleep`]), or until the
//! last `.ack` fdatasync is due. It asks for a higher scheduling priority ([`priority`]) so a busy
//! machine still runs it within the window.

mod disk;
mod priority;
mod stop;

use super::backoff::Backoff;
use super::journal::{Journal, Loaded};
use super::sink::{MakeSink, Meta, Pool};
use super::{Entry, Shared, WebhookStats};
use crate::config::UsageHookConfig;
use crate::usage::record::UsageRecord;
use crossbeam_channel::{Receiver, TryRecvError};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Pace while busy without a `crash_window` (see the module header).
const POLL: Duration = Duration::from_millis(5);
/// Records taken off the channels per round before the loop commits and dispatches.
const INTAKE_MAX: usize = 8192;
/// How often the `.ack` files are fdatasync'd (they are written every round). A written
/// acknowledgement survives `kill -9` in the page cache; a power loss may lose the last second of
/// them, and those records are delivered once more (receivers dedupe on `request_id`).
const ACK_SYNC_EVERY: Duration = Duration::from_secs(1);
/// How often the disk is tried again while the journal cannot be written.
const DISK_PROBE: Duration = Duration::from_secs(1);
/// Records held in memory while the journal works: enough to keep every delivery thread busy.
const WINDOW_MIN: usize = 4096;
/// A graceful stop tries to deliver what is in memory for at most this long (then journals it).
const STOP_DELIVERY_MAX: Duration = Duration::from_secs(5);

pub(crate) struct Channels {
    pub rx: Receiver<UsageRecord>,
    pub overflow: Receiver<UsageRecord>,
    pub stop: Receiver<()>,
}

impl Channels {
    fn stop_requested(&self) -> bool {
        matches!(self.stop.try_recv(), Ok(()) | Err(TryRecvError::Disconnected))
    }

    fn next(&self) -> Option<UsageRecord> {
        self.rx.try_recv().or_else(|_| self.overflow.try_recv()).ok()
    }

    /// Sleeps up to `d`; unparked early by a finished delivery or a stop. Parking, not a blocking
    /// `recv_timeout`: crossbeam spins with `sched_yield` before it sleeps, which on a core shared
    /// with a worker costs that worker context switches.
    fn wait_stop(&self, d: Duration) -> bool {
        if self.stop_requested() {
            return true;
        }
        std::thread::park_timeout(d);
        false
    }

    /// Parks with nothing to do, until a submit or a stop unparks it (or `timeout`, if any):
    /// [`crate::doorbell`] says why no record can arrive unseen. Returns whether a stop was
    /// requested.
    fn sleep(&self, bell: &crate::doorbell::Doorbell, timeout: Option<Duration>) -> bool {
        let stop = std::cell::Cell::new(false);
        let has_work = || {
            stop.set(self.stop_requested());
            stop.get() || !self.rx.is_empty() || !self.overflow.is_empty()
        };
        bell.sleep(has_work, timeout);
        stop.get() || self.stop_requested()
    }
}

/// The journal thread's condition. Transitions: a batch failing past `retry` -> `Backlog`; a
/// delivery succeeding -> `Healthy`; a journal write failing -> `SpoolFailing` (keeping whether the
/// sink is down); a successful disk probe -> back; stop -> `Stopping`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// The sink answers; records go out as soon as they are journaled.
    Healthy,
    /// The sink fails: one probe batch at `retry_at` (every `replay_interval`), the rest waits
    /// (journaled; in memory up to the window).
    Backlog { retry_at: Instant },
    /// The journal cannot be written (disk full, read-only): records wait in memory up to
    /// `queue_capacity`, the disk is tried again at `probe_at`; `retry_at` is set when the sink is
    /// down too.
    SpoolFailing { probe_at: Instant, retry_at: Option<Instant> },
    /// Graceful stop.
    Stopping,
}

struct Held {
    entry: Entry,
    meta: Meta,
    not_before: Instant,
}

pub(crate) struct Worker {
    ch: Channels,
    stats: Arc<WebhookStats>,
    shared: Arc<Shared>,
    echo: bool,
    journal: Journal,
    /// `crash_window` set: every record is journaled before it is sent.
    eager: bool,
    poll: Duration,
    make: MakeSink,
    concurrency: usize,
    state: State,
    ready: VecDeque<Held>,
    waiting: VecDeque<Held>,
    in_flight_records: usize,
    backoff: Backoff,
    batch_max: usize,
    batch_linger: Duration,
    retry: u32,
    replay_interval: Duration,
    capacity: usize,
    window: usize,
    dropped_episode: bool,
    ack_error_episode: bool,
    /// A delivery failed during the stop: no further attempts.
    stop_failed: bool,
    published_at: Instant,
    /// The journal segment is fdatasync'd no earlier than this (at most once per `sync_every`).
    sync_at: Instant,
    /// Least time between two fdatasyncs of the segment: `2 / 3 * crash_window`, at least `poll`.
    sync_every: Duration,
    /// The `.ack` files are fdatasync'd no earlier than this.
    ack_sync_at: Instant,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Worker {
    pub(crate) fn new(
        cfg: &UsageHookConfig,
        stats: Arc<WebhookStats>,
        shared: Arc<Shared>,
        echo: bool,
        ch: Channels,
        journal: Journal,
        make: MakeSink,
    ) -> Worker {
        let eager = cfg.delivery.crash_window.is_some();
        let poll = cfg.delivery.crash_window.map_or(POLL, |w| (w / 3).clamp(Duration::from_millis(1), POLL));
        let sync_every = cfg.delivery.crash_window.map_or(poll, |w| (w * 2 / 3).max(poll));
        let capacity = cfg.queue_capacity.max(1);
        let concurrency = cfg.delivery.concurrency.max(1);
        let window =
            if eager { capacity.min(WINDOW_MIN.max(cfg.batch_max * concurrency * 4)) } else { capacity };
        Worker {
            ch,
            stats,
            shared,
            echo,
            journal,
            eager,
            poll,
            make,
            concurrency,
            state: State::Healthy,
            ready: VecDeque::new(),
            waiting: VecDeque::new(),
            in_flight_records: 0,
            backoff: Backoff::new(),
            batch_max: cfg.batch_max.max(1),
            batch_linger: cfg.batch_linger,
            retry: cfg.retry,
            replay_interval: cfg.replay_interval,
            capacity,
            window,
            dropped_episode: false,
            ack_error_episode: false,
            stop_failed: false,
            published_at: Instant::now(),
            sync_at: Instant::now(),
            sync_every,
            ack_sync_at: Instant::now() + ACK_SYNC_EVERY,
        }
    }

    pub(crate) fn run(mut self) {
        let pool = Pool::start(self.concurrency, self.make.clone(), std::thread::current());
        // After the delivery threads started: they keep the process's priority.
        priority::raise();
        let mut pool = match pool {
            Ok(p) => p,
            Err(e) => {
                log::error!("cannot start the delivery threads: {e}; usage records are only journaled");
                return self.journal_only();
            }
        };
        if self.journal.pending() > 0 {
            log::info!(
                "{} usage records wait in the journal {}; delivering them",
                self.journal.pending(),
                self.journal.dir().display()
            );
        }
        loop {
            let stop = self.ch.stop_requested();
            let more = self.intake();
            self.commit();
            self.collect(&mut pool);
            self.probe_disk();
            self.refill();
            if stop {
                break;
            }
            self.dispatch(&mut pool, Instant::now());
            if more {
                self.publish(&pool, false);
                continue;
            }
            let stop = if self.idle() {
                self.publish(&pool, true);
                self.ch.sleep(&self.shared.bell, self.acks_due())
            } else {
                self.publish(&pool, false);
                self.ch.wait_stop(self.park_for())
            };
            if stop {
                break;
            }
        }
        self.shutdown(pool);
    }

    /// Nothing to do until a record arrives: none held or in flight, none only on disk, everything
    /// written and the segment fdatasync'd, the sink and the disk fine. (The `.ack` files may still
    /// wait for their fdatasync: the sleep ends when it is due.)
    fn idle(&self) -> bool {
        self.state == State::Healthy
            && self.mem_len() == 0
            && !self.journal.has_disk_only()
            && !self.journal.unwritten()
            && !self.journal.unsynced()
    }

    fn sink_down(&self) -> bool {
        matches!(self.state, State::Backlog { .. } | State::SpoolFailing { retry_at: Some(_), .. })
    }

    fn disk_ok(&self) -> bool {
        !matches!(self.state, State::SpoolFailing { .. })
    }

    fn mem_len(&self) -> usize {
        self.ready.len() + self.waiting.len() + self.in_flight_records
    }

    /// Takes what the core threads queued. Returns whether it stopped at [`INTAKE_MAX`] (more may
    /// wait).
    fn intake(&mut self) -> bool {
        for _ in 0..INTAKE_MAX {
            let Some(rec) = self.ch.next() else { return false };
            self.stats.tokens.observe(&rec);
            let json = rec.to_json();
            if self.echo {
                echo(&json);
            }
            self.admit(Entry { request_id: rec.request_id, json }, now_ms());
        }
        true
    }

    fn admit(&mut self, entry: Entry, ts_ms: u64) {
        let now = Instant::now();
        if self.disk_ok() {
            let keep = self.mem_len() < self.window && !self.journal.has_disk_only();
            let pos =
                if self.eager || !keep { Some(self.journal.append(ts_ms, &entry.json, keep)) } else { None };
            if keep {
                self.ready.push_back(Held { entry, meta: Meta { pos, ts_ms, attempts: 0 }, not_before: now });
            }
        } else if self.mem_len() < self.capacity {
            self.ready.push_back(Held {
                entry,
                meta: Meta { pos: None, ts_ms, attempts: 0 },
                not_before: now,
            });
        } else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            if !std::mem::replace(&mut self.dropped_episode, true) {
                log::error!(
                    "request_id={} usage record lost: the journal {} cannot be written and {} records already wait in memory (queue_capacity)",
                    entry.request_id,
                    self.journal.dir().display(),
                    self.capacity
                );
            }
        }
    }

    /// Group commit, every round: what was appended and acknowledged is written to the kernel now
    /// (it survives `kill -9` from here); the segment is fdatasync'd (power loss) when something was
    /// written since the last fdatasync and that was at least `sync_every` ago, the `.ack` files
    /// every [`ACK_SYNC_EVERY`].
    ///
    /// Power-loss bound, with `P = poll` (<= crash_window / 3) and `S = sync_every`
    /// (= 2 / 3 * crash_window, or P if that is larger): a record that arrives at `a`, between the
    /// rounds at `t_k < a <= t_k+1`, is written at `t_k+1 <= a + P`. Let `t_s` be the last
    /// fdatasync before that write (`t_s <= t_k < a`; a round writes before it syncs). The next one
    /// runs at the first round at or after both `t_k+1` and `t_s + S` (the thread parks until
    /// `t_s + S` while something is unsynced), so the record is on disk by
    /// `max(t_k+1, t_s + S) <= max(a + P, a + S) = a + S` plus that fdatasync's duration: within
    /// `2 / 3 * crash_window` plus one fdatasync, as the README states (before, S was P: an
    /// fdatasync every round under load, twice as many for the same stated bound). `kill -9` only
    /// needs the write: within P.
    fn commit(&mut self) {
        let flushed = self.journal.flush();
        // A segment that could not be zero-filled ahead (disk full) is appended to as before.
        let n = self.journal.take_prealloc_failures();
        if n > 0 {
            self.stats.spool_errors.fetch_add(n, Ordering::Relaxed);
        }
        if let Err(u) = flushed {
            return self.commit_failed(u);
        }
        let now = Instant::now();
        let mut synced = Ok(());
        if self.journal.unsynced() && now >= self.sync_at {
            self.sync_at = now + self.sync_every;
            synced = self.journal.sync_entries();
        }
        if now >= self.ack_sync_at {
            self.ack_sync_at = now + ACK_SYNC_EVERY;
            synced = synced.and(self.journal.sync_acks());
        }
        match synced {
            Ok(()) => self.ack_error_episode = false,
            Err(error) => self.commit_failed(super::journal::Unwritten { error, entries: Vec::new() }),
        }
    }

    /// How long to park: until the next round, or until the pending fdatasync is due.
    fn park_for(&self) -> Duration {
        if self.journal.unsynced() {
            self.sync_at.saturating_duration_since(Instant::now()).min(self.poll)
        } else {
            self.poll
        }
    }

    /// How long until the `.ack` files' fdatasync, if some were written since the last one.
    fn acks_due(&self) -> Option<Duration> {
        self.journal.acks_unsynced().then(|| self.ack_sync_at.saturating_duration_since(Instant::now()))
    }

    /// Reads journaled records back into memory when the window has room.
    fn refill(&mut self) {
        if !self.journal.has_disk_only() || self.mem_len() >= self.window {
            return;
        }
        let mut got: Vec<Loaded> = Vec::new();
        if let Err(e) = self.journal.refill(self.window - self.mem_len(), &mut got) {
            log::error!("cannot read the usage journal {}: {e}", self.journal.dir().display());
        }
        let now = Instant::now();
        for l in got {
            let meta = Meta { pos: Some(l.pos), ts_ms: l.ts_ms, attempts: 0 };
            self.ready.push_back(Held {
                entry: Entry { request_id: l.request_id, json: l.json },
                meta,
                not_before: now,
            });
        }
    }

    /// Outcomes from the delivery threads.
    fn collect(&mut self, pool: &mut Pool) {
        while let Some(b) = pool.try_done() {
            self.in_flight_records -= b.entries.len();
            match b.result {
                Ok(()) => {
                    for m in &b.meta {
                        if let Some(p) = m.pos {
                            self.journal.ack(p);
                        }
                    }
                    self.stats.success.fetch_add(b.entries.len() as u64, Ordering::Relaxed);
                    if self.sink_down() {
                        log::info!("the usage sink answers again; delivering the waiting records");
                        let now = Instant::now();
                        for h in self.waiting.iter_mut() {
                            h.not_before = now;
                        }
                    }
                    self.state = match self.state {
                        State::Backlog { .. } => State::Healthy,
                        State::SpoolFailing { probe_at, .. } => {
                            State::SpoolFailing { probe_at, retry_at: None }
                        }
                        s => s,
                    };
                }
                Err(e) => self.failed(b.entries, b.meta, &e),
            }
        }
    }

    fn failed(&mut self, entries: Vec<Entry>, meta: Vec<Meta>, why: &str) {
        self.stats.failure.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let attempts = meta.iter().map(|m| m.attempts).max().unwrap_or(0) + 1;
        if self.state == State::Stopping {
            self.stop_failed = true;
        }
        let give_up = attempts > self.retry || self.sink_down() || self.state == State::Stopping;
        if !self.sink_down() {
            log::warn!(
                "request_id={} usage delivery of {} record(s) failed (attempt {attempts}/{}): {why}",
                entries.first().map_or("", |e| e.request_id.as_str()),
                entries.len(),
                self.retry + 1
            );
        }
        let not_before = if give_up {
            let retry_at = now + self.replay_interval;
            match self.state {
                State::Healthy => {
                    log::warn!(
                        "the usage sink keeps failing; records wait in the journal, retried every {:?}",
                        self.replay_interval
                    );
                    self.state = State::Backlog { retry_at };
                }
                State::Backlog { .. } => self.state = State::Backlog { retry_at },
                State::SpoolFailing { probe_at, .. } => {
                    self.state = State::SpoolFailing { probe_at, retry_at: Some(retry_at) }
                }
                State::Stopping => {}
            }
            retry_at
        } else {
            now + self.backoff.delay(attempts - 1)
        };
        for (entry, mut meta) in entries.into_iter().zip(meta) {
            meta.attempts = attempts;
            if give_up && !self.eager && meta.pos.is_none() && self.disk_ok() && self.state != State::Stopping
            {
                // Memory-only mode: what the sink does not take is journaled ("spooled").
                meta.pos = Some(self.journal.append(meta.ts_ms, &entry.json, true));
            }
            self.waiting.push_back(Held { entry, meta, not_before });
        }
    }

    /// Hands batches to idle delivery threads.
    fn dispatch(&mut self, pool: &mut Pool, now: Instant) {
        let retry_at = match self.state {
            State::Backlog { retry_at } | State::SpoolFailing { retry_at: Some(retry_at), .. } => {
                Some(retry_at)
            }
            _ => None,
        };
        if let Some(at) = retry_at {
            // One probe batch at a time while the sink is down.
            if now >= at && pool.in_flight() == 0 {
                let from_waiting = !self.waiting.is_empty();
                self.send_batch(pool, from_waiting);
                if from_waiting || !self.ready.is_empty() {
                    let next = now + self.replay_interval;
                    self.state = match self.state {
                        State::Backlog { .. } => State::Backlog { retry_at: next },
                        State::SpoolFailing { probe_at, .. } => {
                            State::SpoolFailing { probe_at, retry_at: Some(next) }
                        }
                        s => s,
                    };
                }
            }
            return;
        }
        while self.waiting.front().is_some_and(|h| h.not_before <= now) {
            if let Some(h) = self.waiting.pop_front() {
                self.ready.push_back(h);
            }
        }
        while pool.in_flight() < pool.threads() && !self.ready.is_empty() {
            if self.batch_max > 1 && self.ready.len() < self.batch_max && self.state != State::Stopping {
                let oldest = self.ready.front().map_or(0, |h| h.meta.ts_ms);
                if now_ms().saturating_sub(oldest) < self.batch_linger.as_millis() as u64 {
                    break;
                }
            }
            self.send_batch(pool, false);
        }
        if !self.ready.is_empty() && pool.in_flight() >= pool.threads() {
            pool.wake_on_done();
        }
    }

    fn send_batch(&mut self, pool: &mut Pool, from_waiting: bool) {
        let q = if from_waiting { &mut self.waiting } else { &mut self.ready };
        let n = q.len().min(self.batch_max);
        if n == 0 {
            return;
        }
        let mut entries = Vec::with_capacity(n);
        let mut meta = Vec::with_capacity(n);
        for h in q.drain(..n) {
            entries.push(h.entry);
            meta.push(h.meta);
        }
        self.in_flight_records += n;
        if let Err(b) = pool.submit(entries, meta) {
            // No delivery thread left: the records stay first in line.
            self.in_flight_records -= n;
            let now = Instant::now();
            for (entry, meta) in b.entries.into_iter().zip(b.meta).rev() {
                q.push_front(Held { entry, meta, not_before: now });
            }
        }
    }

    /// Gauges for `/metrics` (the backlog age at most every 100 ms).
    fn publish(&mut self, _pool: &Pool, force: bool) {
        self.shared.in_thread.store(self.mem_len(), Ordering::Relaxed);
        self.stats.spool_records.store(self.journal.pending(), Ordering::Relaxed);
        self.stats.journal_bytes.store(self.journal.bytes(), Ordering::Relaxed);
        self.stats.corrupt.store(self.journal.corrupt, Ordering::Relaxed);
        if !force && self.published_at.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.published_at = Instant::now();
        let mem = self.ready.iter().chain(self.waiting.iter()).map(|h| h.meta.ts_ms).min();
        let oldest = match (mem, self.journal.oldest_disk_ts()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let age_ms = oldest.map_or(0, |t| now_ms().saturating_sub(t));
        self.stats.backlog_ms.store(age_ms, Ordering::Relaxed);
    }
}

/// `enabled = false`: records are only echoed (if asked), never sent nor journaled. Polls every
/// [`POLL`] while records come, sleeps once a round finds none.
pub(crate) fn run_disabled(ch: Channels, shared: Arc<Shared>, stats: Arc<WebhookStats>, echo_stdout: bool) {
    let mut stop = false;
    loop {
        let mut took = false;
        while let Some(rec) = ch.next() {
            took = true;
            stats.tokens.observe(&rec);
            if echo_stdout {
                echo(&rec.to_json());
            }
        }
        if stop {
            return;
        }
        stop = if took { ch.wait_stop(POLL) } else { ch.sleep(&shared.bell, None) };
    }
}

fn echo(json: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{json}") {
        log::warn!("cannot print a usage record on stdout: {e}");
    }
}
