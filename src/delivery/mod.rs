//! Usage-record delivery (entry point of `src/delivery/`): the non-blocking [`UsageSink`] that core
//! threads submit to, and the one dedicated blocking thread ("llmproxy-webhook") that POSTs records,
//! retries, spools and replays.
//!
//! Core threads only ever `try_send` on a bounded lock-free channel, falling back to an unbounded
//! lock-free overflow channel; nothing is dropped. The webhook thread never parks on those channels
//! (it polls them every few milliseconds and parks in between, woken early only to stop), so a submit
//! never has to wake a sleeping thread: no mutex, no futex, no syscall on the core threads.

mod http;
pub mod spool;
mod worker;

use crate::config::UsageHookConfig;
use crate::delivery::spool::Spool;
use crate::usage::record::UsageRecord;
use crossbeam_channel::{Sender, TrySendError};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Counters for `/metrics`, shared with the webhook thread.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Records delivered (2xx).
    pub success: AtomicU64,
    /// Failed POST attempts.
    pub failure: AtomicU64,
    /// Records waiting in the spool now.
    pub spool_records: AtomicU64,
    /// Records ever written to the spool.
    pub spooled_total: AtomicU64,
    /// Tokens by model and missing-usage count, kept here off the request path.
    pub tokens: crate::metrics::TokenCounters,
}

/// State the webhook thread publishes for [`UsageSink::queue_depth`].
#[derive(Debug, Default)]
struct Shared {
    /// Records taken off the channels but neither delivered nor spooled yet (a lingering batch).
    in_thread: AtomicUsize,
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
    /// Called on core threads (io_uring or epoll) once per request: never blocks, locks or does I/O. Tries the
    /// bounded channel; when it is full, the record goes to the unbounded overflow channel, which
    /// the webhook thread writes straight to the spool. Never drops a record while the webhook
    /// thread runs.
    pub fn submit(&self, rec: UsageRecord) {
        let rec = match self.tx.try_send(rec) {
            Ok(()) => return,
            Err(TrySendError::Full(rec)) => match self.overflow.send(rec) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            Err(TrySendError::Disconnected(rec)) => rec,
        };
        // Only after shutdown (or a crash of the webhook thread): nobody can take the record.
        log::error!("request_id={} usage record lost: the webhook thread is not running", rec.request_id);
    }

    /// Records queued in memory (bounded + overflow + a batch being assembled), for the
    /// `llmproxy_webhook_queue_depth` gauge.
    pub fn queue_depth(&self) -> usize {
        self.tx.len() + self.overflow.len() + self.shared.in_thread.load(Ordering::Relaxed)
    }
}

/// Owner of the webhook thread; [`WebhookHandle::shutdown`] stops it gracefully. Dropping the handle
/// without calling it also makes the thread flush and exit, but nobody waits for it.
pub struct WebhookHandle {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl WebhookHandle {
    /// Graceful stop (SIGTERM path): stop receiving, deliver everything still queued with at most
    /// one attempt per batch (no long backoff), spool whatever fails, fsync the spool, join.
    pub fn shutdown(self) {
        let _ = self.stop.send(());
        self.thread.thread().unpark();
        if self.thread.join().is_err() {
            log::error!("webhook thread panicked; queued usage records may be lost");
        }
    }
}

/// Starts the one dedicated blocking delivery thread ("llmproxy-webhook"). `echo_stdout`: also
/// print each record as one JSON line on stdout. With `cfg.enabled == false` records are neither
/// POSTed nor spooled (only echoed if asked). A spool directory that cannot be created, opened or
/// locked is an error naming the path.
pub fn start(
    cfg: &UsageHookConfig,
    stats: Arc<WebhookStats>,
    echo_stdout: bool,
) -> std::io::Result<(UsageSink, WebhookHandle)> {
    let spool = if cfg.enabled {
        let spool = Spool::open(&cfg.spool_dir).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("usage_hook.spool_dir {}: cannot open the spool: {e}", cfg.spool_dir.display()),
            )
        })?;
        if !spool.is_empty() {
            log::info!(
                "{} usage records wait in the spool {}; replaying them when the webhook answers",
                spool.len(),
                cfg.spool_dir.display()
            );
        }
        stats.spool_records.store(spool.len(), Ordering::Relaxed);
        Some(spool)
    } else {
        None
    };
    let (tx, rx) = crossbeam_channel::bounded(cfg.queue_capacity.max(1));
    let (overflow, orx) = crossbeam_channel::unbounded();
    let (stop, stop_rx) = crossbeam_channel::bounded(1);
    let shared = Arc::new(Shared::default());
    let channels = worker::Channels { rx, overflow: orx, stop: stop_rx };
    let thread = match spool {
        Some(spool) => {
            let w = worker::Worker::new(cfg, stats, Arc::clone(&shared), echo_stdout, channels, spool);
            std::thread::Builder::new().name("llmproxy-webhook".into()).spawn(move || w.run())?
        }
        None => std::thread::Builder::new()
            .name("llmproxy-webhook".into())
            .spawn(move || worker::run_disabled(channels, stats, echo_stdout))?,
    };
    Ok((UsageSink { tx, overflow, shared }, WebhookHandle { stop, thread }))
}
