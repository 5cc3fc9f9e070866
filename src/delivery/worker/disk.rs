//! The journal thread when the disk fails (full, read-only, I/O error): records keep their place in
//! memory up to `queue_capacity`, the failure is logged once per episode and counted, the disk is
//! probed every second and the journal resumes when it is writable again.

use super::{Held, State, Worker, DISK_PROBE};
use crate::delivery::journal::Unwritten;
use crate::delivery::sink::Meta;
use crate::delivery::Entry;
use std::sync::atomic::Ordering;
use std::time::Instant;

impl Worker {
    pub(super) fn commit_failed(&mut self, u: Unwritten) {
        self.stats.spool_errors.fetch_add(1, Ordering::Relaxed);
        if u.entries.is_empty() {
            if !std::mem::replace(&mut self.ack_error_episode, true) {
                log::error!(
                    "cannot write acknowledgements to, or fdatasync, the usage journal {}: {}; records may be delivered again after a crash, or lost to a power loss",
                    self.journal.dir().display(),
                    u.error
                );
            }
            return;
        }
        let retry_at = match self.state {
            State::Backlog { retry_at } => Some(retry_at),
            State::SpoolFailing { retry_at, .. } => retry_at,
            _ => None,
        };
        if self.disk_ok() {
            log::error!(
                "cannot write the usage journal {}: {}; keeping records in memory (up to queue_capacity = {}) until it is writable",
                self.journal.dir().display(),
                u.error,
                self.capacity
            );
        }
        if self.state != State::Stopping {
            self.state = State::SpoolFailing { probe_at: Instant::now() + DISK_PROBE, retry_at };
        }
        // Records held in memory lose their (unwritten) journal position; the others are taken in.
        let mut lost: std::collections::HashSet<_> = u.entries.iter().map(|l| l.pos).collect();
        for h in self.ready.iter_mut().chain(self.waiting.iter_mut()) {
            if let Some(p) = h.meta.pos {
                if lost.remove(&p) {
                    h.meta.pos = None;
                }
            }
        }
        let now = Instant::now();
        for l in u.entries {
            if !lost.contains(&l.pos) {
                continue;
            }
            let e = Entry { request_id: l.request_id, json: l.json };
            if self.mem_len() < self.capacity {
                let meta = Meta { pos: None, ts_ms: l.ts_ms, attempts: 0 };
                self.ready.push_back(Held { entry: e, meta, not_before: now });
            } else {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                if !std::mem::replace(&mut self.dropped_episode, true) {
                    log::error!(
                        "request_id={} usage record lost: neither the journal nor memory can take it",
                        e.request_id
                    );
                }
            }
        }
    }

    /// While the journal cannot be written: every second, journal what memory holds; success ends
    /// the episode.
    pub(super) fn probe_disk(&mut self) {
        let State::SpoolFailing { probe_at, retry_at } = self.state else { return };
        let now = Instant::now();
        if now < probe_at {
            return;
        }
        if self.eager {
            for h in self.ready.iter_mut().chain(self.waiting.iter_mut()) {
                if h.meta.pos.is_none() {
                    h.meta.pos = Some(self.journal.append(h.meta.ts_ms, &h.entry.json, true));
                }
            }
        }
        match self.journal.commit() {
            Ok(()) => {
                log::info!("the usage journal {} is writable again", self.journal.dir().display());
                self.dropped_episode = false;
                self.state = match retry_at {
                    Some(retry_at) => State::Backlog { retry_at },
                    None => State::Healthy,
                };
            }
            Err(u) => {
                self.commit_failed(u);
                self.state = State::SpoolFailing { probe_at: now + DISK_PROBE, retry_at };
            }
        }
    }
}
