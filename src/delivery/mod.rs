//! Usage-record delivery (entry point of `src/delivery/`): the non-blocking [`UsageSink`] core
//! threads submit to, and the threads behind it: one journal thread ("llmproxy-webhook",
//! [`worker`]) that journals records to `spool_dir` ([`journal`]) and hands batches to
//! `usage_hook.concurrency` delivery threads ("llmproxy-deliver-N", [`sink`]), each with its own
//! keep-alive connection to the webhook ([`http`], [`client`], [`tls`]) in the configured format
//! ([`format`]).
//!
//! Core threads only ever `try_send` on a bounded lock-free channel, falling back to an unbounded
//! lock-free overflow channel; nothing is dropped. While records keep coming the journal thread
//! polls those channels every `crash_window / 3` and a submit wakes nobody. When it has nothing left
//! to do it says so and parks; the first submit after that unparks it (one futex wake per
//! idle-to-busy transition: [`crate::doorbell`]). No mutex, and no syscall per
//! record on the core threads.

mod backoff;
pub mod client;
pub mod format;
mod http;
pub mod journal;
mod nats;
pub mod sink;
mod tls;
mod worker;

use crate::config::UsageHookConfig;
use crate::usage::record::UsageRecord;
use crossbeam_channel::{Sender, TrySendError};
use journal::Journal;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{JoinHandle, Thread};

pub use http::sign;

/// One record as delivered: its idempotency key and its exact JSON (section 5/7 record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub request_id: String,
    pub json: String,
}

/// Counters for `/metrics`, shared with the delivery threads.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Records delivered (2xx).
    pub success: AtomicU64,
    /// Failed delivery attempts (batches).
    pub failure: AtomicU64,
    /// Records in the journal not yet delivered.
    pub spool_records: AtomicU64,
    /// Journal writes that failed (disk full, read-only, I/O error).
    pub spool_errors: AtomicU64,
    /// Bytes the journal holds on disk.
    pub journal_bytes: AtomicU64,
    /// Age in ms of the oldest undelivered record (0: none).
    pub backlog_ms: AtomicU64,
    /// Torn or corrupt journal entries/regions skipped.
    pub corrupt: AtomicU64,
    /// Records lost because neither the journal nor memory (queue_capacity) could take them.
    pub dropped: AtomicU64,
    /// Tokens by model and missing-usage count, kept here off the request path.
    pub tokens: crate::counters::TokenCounters,
}

/// State the journal thread publishes for [`UsageSink::queue_depth`].
#[derive(Debug, Default)]
struct Shared {
    /// Records held in memory by the journal thread (waiting, in flight).
    in_thread: AtomicUsize,
    /// Where the journal thread sleeps when it has nothing to do; every submit rings it.
    bell: crate::doorbell::Doorbell,
}

/// Where core threads hand over usage records. Cheap to clone; the gateway wraps one in
/// `Shared::records`, which every core thread calls.
#[derive(Clone)]
pub struct UsageSink {
    tx: Sender<UsageRecord>,
    overflow: Sender<UsageRecord>,
    shared: Arc<Shared>,
}

impl UsageSink {
    /// Called on core threads (io_uring or epoll) once per request: never blocks or locks, and does
    /// I/O only to wake a sleeping journal thread. Tries the bounded channel; when it is full, the
    /// record goes to the unbounded overflow channel. Never drops a record while the journal thread
    /// runs.
    pub fn submit(&self, rec: UsageRecord) {
        let rec = match self.tx.try_send(rec) {
            Ok(()) => return self.wake_worker(),
            Err(TrySendError::Full(rec)) => match self.overflow.send(rec) {
                Ok(()) => return self.wake_worker(),
                Err(e) => e.0,
            },
            Err(TrySendError::Disconnected(rec)) => rec,
        };
        // Only after shutdown (or a crash of the journal thread): nobody can take the record.
        log::error!("request_id={} usage record lost: the delivery thread is not running", rec.request_id);
    }

    /// After a push: wakes the journal thread if it went to sleep (a fence and a load while it is
    /// awake; see [`crate::doorbell`] for why no record waits behind a sleeping journal thread).
    fn wake_worker(&self) {
        self.shared.bell.ring();
    }

    /// Records queued in memory (channels + held by the journal thread), for the
    /// `llmproxy_webhook_queue_depth` gauge.
    pub fn queue_depth(&self) -> usize {
        self.tx.len() + self.overflow.len() + self.shared.in_thread.load(Ordering::Relaxed)
    }
}

/// Owner of the delivery threads; [`WebhookHandle::shutdown`] stops them gracefully. Dropping the
/// handle without calling it also makes them journal and exit, but nobody waits for them.
pub struct WebhookHandle {
    stop: Sender<()>,
    thread: JoinHandle<()>,
    /// The delivery threads' sink factory (None when the hook is disabled).
    sinks: Option<Arc<sink::SinkSlot>>,
    /// Dropped after `stop` (field order): a handle dropped without `shutdown` wakes the journal
    /// thread, which then sees the stop channel closed.
    _wake: WakeOnDrop,
}

/// Unparks a thread when dropped.
struct WakeOnDrop(Thread);

impl Drop for WakeOnDrop {
    fn drop(&mut self) {
        self.0.unpark();
    }
}

impl WebhookHandle {
    /// Config reload hook: batches sent from now on use `make` (from [`sink::maker`] with the new
    /// `usage_hook`); a batch in flight finishes on the sink it started with.
    pub fn reload_sink(&self, make: sink::MakeSink) {
        if let Some(s) = &self.sinks {
            s.swap(make);
        }
    }

    /// Graceful stop (SIGTERM path): everything submitted so far is journaled (fdatasync) before
    /// this returns; what is in memory gets one delivery attempt per batch (bounded time).
    pub fn shutdown(self) {
        let _ = self.stop.send(());
        self.thread.thread().unpark();
        if self.thread.join().is_err() {
            log::error!("the usage journal thread panicked; queued usage records may be lost");
        }
    }
}

/// Starts the journal thread and its delivery threads. `echo_stdout`: also print each record as one
/// JSON line on stdout. With `cfg.enabled == false` records are neither sent nor journaled (only
/// echoed if asked). A spool directory that cannot be created, opened or locked, an unreadable
/// `tls_ca_file` or an unusable sink is an error naming it.
pub fn start(
    cfg: &UsageHookConfig,
    stats: Arc<WebhookStats>,
    echo_stdout: bool,
) -> std::io::Result<(UsageSink, WebhookHandle)> {
    let (tx, rx) = crossbeam_channel::bounded(cfg.queue_capacity.max(1));
    let (overflow, orx) = crossbeam_channel::unbounded();
    let (stop, stop_rx) = crossbeam_channel::bounded(1);
    let shared = Arc::new(Shared::default());
    let channels = worker::Channels { rx, overflow: orx, stop: stop_rx };
    let mut sinks = None;
    let thread = if cfg.enabled {
        let journal = Journal::open(&cfg.spool_dir, journal::segment_bytes()).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("usage_hook.spool_dir {}: cannot open the spool: {e}", cfg.spool_dir.display()),
            )
        })?;
        stats.spool_records.store(journal.pending(), Ordering::Relaxed);
        stats.corrupt.store(journal.corrupt, Ordering::Relaxed);
        let slot = sink::SinkSlot::new(sink::maker(cfg).map_err(std::io::Error::other)?);
        let make = sink::following(slot.clone());
        sinks = Some(slot);
        let w = worker::Worker::new(cfg, stats, Arc::clone(&shared), echo_stdout, channels, journal, make);
        std::thread::Builder::new().name("llmproxy-webhook".into()).spawn(move || w.run())?
    } else {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("llmproxy-webhook".into())
            .spawn(move || worker::run_disabled(channels, shared, stats, echo_stdout))?
    };
    let wake = WakeOnDrop(thread.thread().clone());
    Ok((UsageSink { tx, overflow, shared }, WebhookHandle { stop, thread, sinks, _wake: wake }))
}

/// Delivery's own series for `/metrics` (journal health and backlog age).
pub fn render_metrics(out: &mut String, w: &WebhookStats) {
    use std::fmt::Write as _;
    let r = Ordering::Relaxed;
    let series: [(&str, &str, &str, String); 5] = [
        (
            "llmproxy_spool_errors_total",
            "counter",
            "Usage journal writes that failed (disk full, read-only, I/O error).",
            w.spool_errors.load(r).to_string(),
        ),
        (
            "llmproxy_journal_bytes",
            "gauge",
            "Bytes the usage journal holds on disk.",
            w.journal_bytes.load(r).to_string(),
        ),
        (
            "llmproxy_usage_backlog_seconds",
            "gauge",
            "Age of the oldest usage record not yet delivered (0 when none waits).",
            format!("{:.3}", w.backlog_ms.load(r) as f64 / 1000.0),
        ),
        (
            "llmproxy_journal_corrupt_total",
            "counter",
            "Torn or corrupt usage journal entries skipped.",
            w.corrupt.load(r).to_string(),
        ),
        (
            "llmproxy_usage_records_dropped_total",
            "counter",
            "Usage records lost because neither the journal nor memory (queue_capacity) could hold them.",
            w.dropped.load(r).to_string(),
        ),
    ];
    for (name, kind, help, v) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    }
}
