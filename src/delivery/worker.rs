//! The webhook thread's loop: batching with linger, live delivery with retries, the spool backlog
//! (kept strictly behind older records) and its replay, and the graceful shutdown flush.

use super::http::{Backoff, Deliverer};
use super::{Shared, WebhookStats};
use crate::config::UsageHookConfig;
use crate::delivery::spool::{Entry, Spool};
use crate::usage::record::UsageRecord;
use crossbeam_channel::{Receiver, TryRecvError};
use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the channels from the core threads are polled when idle (see the module header).
const POLL: Duration = Duration::from_millis(5);
/// Records taken off the channel per round before the loop looks at replay and stop again.
const INTAKE_MAX: usize = 4096;

pub(crate) struct Channels {
    pub rx: Receiver<UsageRecord>,
    pub overflow: Receiver<UsageRecord>,
    pub stop: Receiver<()>,
}

impl Channels {
    /// Sleeps up to `d` (the thread is unparked on stop); true when asked to stop or when the
    /// handle is gone. Parking, not a blocking `recv_timeout`: crossbeam spins with `sched_yield`
    /// before it sleeps, which on a core shared with a worker costs that worker context switches.
    fn wait_stop(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            match self.stop.try_recv() {
                Ok(()) | Err(TryRecvError::Disconnected) => return true,
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            std::thread::park_timeout(until - now);
        }
    }
}

pub(crate) struct Worker {
    ch: Channels,
    stats: Arc<WebhookStats>,
    shared: Arc<Shared>,
    echo: bool,
    deliverer: Deliverer,
    spool: Spool,
    backoff: Backoff,
    batch_max: usize,
    batch_linger: Duration,
    retry: u32,
    replay_interval: Duration,
    /// Records assembled for a live POST (only while there is no backlog).
    batch: Vec<Entry>,
    batch_deadline: Option<Instant>,
    /// Records that must go behind the spool's but are not written yet (the spool failed to write).
    held: VecDeque<Entry>,
    /// The last delivery attempt succeeded: replay the backlog without waiting.
    healthy: bool,
    next_replay: Instant,
    stopping: bool,
    /// The last spool write failed (disk full?): held records wait in memory.
    spool_failing: bool,
}

impl Worker {
    pub(crate) fn new(
        cfg: &UsageHookConfig,
        stats: Arc<WebhookStats>,
        shared: Arc<Shared>,
        echo: bool,
        ch: Channels,
        spool: Spool,
    ) -> Worker {
        Worker {
            ch,
            stats,
            shared,
            echo,
            deliverer: Deliverer::new(&cfg.url, cfg.timeout, cfg.secret.as_deref(), cfg.batch_max),
            spool,
            backoff: Backoff::new(),
            batch_max: cfg.batch_max.max(1),
            batch_linger: cfg.batch_linger,
            retry: cfg.retry,
            replay_interval: cfg.replay_interval,
            batch: Vec::new(),
            batch_deadline: None,
            held: VecDeque::new(),
            healthy: true,
            next_replay: Instant::now(),
            stopping: false,
            spool_failing: false,
        }
    }

    pub(crate) fn run(mut self) {
        while !self.stopping {
            let got = self.intake();
            self.publish();
            if self.stopping {
                break;
            }
            let now = Instant::now();
            if self.has_backlog() && (self.healthy || now >= self.next_replay) {
                self.replay_step();
                self.publish();
                continue;
            }
            if self.batch_deadline.is_some_and(|d| now >= d) {
                self.flush_batch();
                self.publish();
                continue;
            }
            if !got {
                let mut deadline = now + POLL;
                if let Some(d) = self.batch_deadline {
                    deadline = deadline.min(d);
                }
                if self.has_backlog() {
                    deadline = deadline.min(self.next_replay);
                }
                if self.ch.wait_stop(deadline.saturating_duration_since(now)) {
                    self.stopping = true;
                }
            }
        }
        self.shutdown();
    }

    fn has_backlog(&self) -> bool {
        !self.spool.is_empty() || !self.held.is_empty()
    }

    fn publish(&self) {
        self.stats.spool_records.store(self.spool.len(), Ordering::Relaxed);
        self.shared.in_thread.store(self.batch.len() + self.held.len(), Ordering::Relaxed);
    }

    /// Takes what the core threads queued. Returns whether anything came.
    fn intake(&mut self) -> bool {
        let mut got = false;
        if !self.ch.overflow.is_empty() {
            // The bounded channel overflowed: we are behind. Everything queued goes to the spool,
            // older records first, and is replayed from there.
            got = true;
            let batch = std::mem::take(&mut self.batch);
            self.batch_deadline = None;
            self.held.extend(batch);
            while let Ok(rec) = self.ch.rx.try_recv() {
                let e = self.admit(rec);
                self.held.push_back(e);
            }
            while let Ok(rec) = self.ch.overflow.try_recv() {
                let e = self.admit(rec);
                self.held.push_back(e);
            }
        }
        for _ in 0..INTAKE_MAX {
            let Ok(rec) = self.ch.rx.try_recv() else { break };
            got = true;
            let e = self.admit(rec);
            if self.has_backlog() {
                self.held.push_back(e);
                continue;
            }
            if self.batch.is_empty() {
                self.batch_deadline = Some(Instant::now() + self.batch_linger);
            }
            self.batch.push(e);
            if self.batch.len() >= self.batch_max {
                self.flush_batch();
                if self.stopping {
                    break;
                }
            }
        }
        self.flush_held();
        got
    }

    /// Serializes a record (on this thread, not the core's) and echoes it if asked.
    fn admit(&self, rec: UsageRecord) -> Entry {
        self.stats.tokens.observe(&rec);
        let json = rec.to_json();
        if self.echo {
            echo(&json);
        }
        Entry { request_id: rec.request_id, json }
    }

    /// Writes held records to the spool (one fsync). On failure they stay in memory, in order.
    fn flush_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        let entries: Vec<Entry> = self.held.iter().cloned().collect();
        match self.spool.append(&entries) {
            Ok(()) => {
                self.held.clear();
                self.stats.spooled_total.fetch_add(entries.len() as u64, Ordering::Relaxed);
                if std::mem::take(&mut self.spool_failing) {
                    log::info!("the spool {} is writable again", self.spool.dir().display());
                }
            }
            Err(e) => {
                // Logged once per outage, not on every retry.
                if !std::mem::replace(&mut self.spool_failing, true) {
                    log::error!(
                        "cannot write {} usage records to the spool {}: {e}; keeping them in memory",
                        entries.len(),
                        self.spool.dir().display()
                    );
                }
            }
        }
    }

    /// POSTs the live batch, retrying with backoff; spools it after the last failure.
    fn flush_batch(&mut self) {
        self.batch_deadline = None;
        let batch = std::mem::take(&mut self.batch);
        if batch.is_empty() {
            return;
        }
        for attempt in 0..=self.retry {
            match self.deliverer.post(&batch) {
                Ok(()) => {
                    self.delivered(batch.len());
                    return;
                }
                Err(e) => {
                    self.stats.failure.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "request_id={} webhook delivery of {} record(s) failed (attempt {}/{}): {e}",
                        batch[0].request_id,
                        batch.len(),
                        attempt + 1,
                        self.retry + 1
                    );
                }
            }
            if attempt < self.retry {
                // A shutdown cuts the backoff short.
                if self.ch.wait_stop(self.backoff.delay(attempt)) {
                    self.stopping = true;
                    break;
                }
            }
        }
        self.undeliverable();
        self.held.extend(batch);
        self.flush_held();
    }

    fn delivered(&mut self, n: usize) {
        self.stats.success.fetch_add(n as u64, Ordering::Relaxed);
        self.healthy = true;
    }

    fn undeliverable(&mut self) {
        self.healthy = false;
        self.next_replay = Instant::now() + self.replay_interval;
    }

    /// One attempt at the oldest waiting records (spool first, then held ones if the spool is broken).
    fn replay_step(&mut self) {
        self.flush_held();
        if self.spool.is_empty() {
            if self.held.is_empty() {
                return;
            }
            let n = self.held.len().min(self.batch_max);
            let entries: Vec<Entry> = self.held.iter().take(n).cloned().collect();
            if self.attempt(&entries) {
                self.held.drain(..n);
            }
            return;
        }
        let peeked = match self.spool.peek(self.batch_max) {
            Ok(p) => p,
            Err(e) => {
                log::error!("cannot read the spool {}: {e}", self.spool.dir().display());
                self.undeliverable();
                return;
            }
        };
        if !peeked.entries.is_empty() && !self.attempt(&peeked.entries) {
            return;
        }
        if let Err(e) = self.spool.consume(&peeked) {
            log::warn!("cannot save the spool cursor in {}: {e}", self.spool.dir().display());
        }
    }

    /// A single POST of replayed records; on failure waits for the next replay interval.
    fn attempt(&mut self, entries: &[Entry]) -> bool {
        match self.deliverer.post(entries) {
            Ok(()) => {
                if !self.healthy {
                    log::info!("webhook answers again; replaying the spooled usage records");
                }
                self.delivered(entries.len());
                true
            }
            Err(e) => {
                self.stats.failure.fetch_add(1, Ordering::Relaxed);
                if self.healthy {
                    log::warn!("webhook replay failed: {e}; retrying every {:?}", self.replay_interval);
                }
                self.undeliverable();
                false
            }
        }
    }

    /// Graceful stop: one attempt per batch for what is queued, the rest to the spool, cursor saved.
    fn shutdown(mut self) {
        let mut pending = std::mem::take(&mut self.batch);
        self.batch_deadline = None;
        while let Ok(rec) = self.ch.rx.try_recv().or_else(|_| self.ch.overflow.try_recv()) {
            let e = self.admit(rec);
            pending.push(e);
        }
        let mut sent = 0;
        if !self.has_backlog() {
            while sent < pending.len() {
                let end = (sent + self.batch_max).min(pending.len());
                if !self.attempt(&pending[sent..end]) {
                    break;
                }
                sent = end;
            }
        }
        self.held.extend(pending.drain(sent..));
        // Anything submitted while we were delivering goes to the spool too.
        while let Ok(rec) = self.ch.rx.try_recv().or_else(|_| self.ch.overflow.try_recv()) {
            let e = self.admit(rec);
            self.held.push_back(e);
        }
        self.flush_held();
        if !self.held.is_empty() {
            log::error!("{} usage records could not be delivered nor spooled and are lost", self.held.len());
        }
        if let Err(e) = self.spool.sync() {
            log::warn!("cannot save the spool cursor in {}: {e}", self.spool.dir().display());
        }
        self.held.clear();
        self.publish();
        if !self.spool.is_empty() {
            log::info!(
                "{} usage records wait in the spool {} for the next start",
                self.spool.len(),
                self.spool.dir().display()
            );
        }
    }
}

/// `enabled = false`: records are only echoed (if asked), never POSTed nor spooled.
pub(crate) fn run_disabled(ch: Channels, stats: Arc<WebhookStats>, echo_stdout: bool) {
    loop {
        let stop = ch.wait_stop(POLL);
        while let Ok(rec) = ch.rx.try_recv().or_else(|_| ch.overflow.try_recv()) {
            stats.tokens.observe(&rec);
            if echo_stdout {
                echo(&rec.to_json());
            }
        }
        if stop {
            return;
        }
    }
}

fn echo(json: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{json}") {
        log::warn!("cannot print a usage record on stdout: {e}");
    }
}
