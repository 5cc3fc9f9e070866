//! SIGHUP: read the config file again, validate it, build a new snapshot and swap it in; the
//! other threads' parts (limits, the webhook's sink, listener certificates, access log) are then
//! handed the new config by `gateway::Gateway::reload`. What needs a restart (`listen`,
//! `admin_listen`, `runtime`, the journal's and the limit store's settings) is logged and kept as
//! it is; an invalid file changes nothing and every problem is logged. Runs on the main thread.

use crate::config::Config;
use crate::metrics::ReloadStats;
use crate::snapshot::SnapshotCell;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Keys whose change needs a restart: puts the running value back into `next` and names each
/// key that differed.
pub fn keep_restart_only(running: &Config, next: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if next.listen != running.listen {
        changed.push("listen");
        next.listen = running.listen;
    }
    if next.admin_listen != running.admin_listen {
        changed.push("admin_listen");
        next.admin_listen = running.admin_listen;
    }
    let (a, b) = (&running.runtime, &next.runtime);
    if a.workers != b.workers || a.pin_cores != b.pin_cores || a.cores != b.cores || a.driver != b.driver {
        changed.push("runtime");
        next.runtime = running.runtime.clone();
    }
    if next.tls.is_some() != running.tls.is_some() {
        changed.push("tls (turned on or off)");
        next.tls = running.tls.clone();
    }
    // The journal thread's own settings (the sink's, url/secret/format/TLS, do reload).
    let (a, b) = (&running.usage_hook, &mut next.usage_hook);
    if b.spool_dir != a.spool_dir {
        changed.push("usage_hook.spool_dir");
        b.spool_dir = a.spool_dir.clone();
    }
    if b.enabled != a.enabled
        || b.queue_capacity != a.queue_capacity
        || b.batch_max != a.batch_max
        || b.batch_linger != a.batch_linger
        || b.retry != a.retry
        || b.replay_interval != a.replay_interval
        || b.delivery.crash_window != a.delivery.crash_window
        || b.delivery.concurrency != a.delivery.concurrency
    {
        changed.push(
            "usage_hook (enabled, queue_capacity, batch_max, batch_linger, retry, replay_interval, crash_window, concurrency)",
        );
        b.enabled = a.enabled;
        b.queue_capacity = a.queue_capacity;
        b.batch_max = a.batch_max;
        b.batch_linger = a.batch_linger;
        b.retry = a.retry;
        b.replay_interval = a.replay_interval;
        b.delivery.crash_window = a.delivery.crash_window;
        b.delivery.concurrency = a.delivery.concurrency;
    }
    // The limit store and its thread (per-key and default limits do reload).
    let (a, b) = (&running.rate_limit, &mut next.rate_limit);
    if b.enabled != a.enabled
        || b.store != a.store
        || b.redis_url != a.redis_url
        || b.sync_interval != a.sync_interval
        || b.on_store_error != a.on_store_error
    {
        changed.push("rate_limit (enabled, store, redis_url, sync_interval, on_store_error)");
        let defaults = b.defaults;
        *b = a.clone();
        b.defaults = defaults;
    }
    changed
}

/// A reload that passed: the config now in the snapshot, and what other threads need from it
/// (built before the swap, so that a file whose webhook settings cannot be used changes nothing).
pub struct Reloaded {
    pub config: Arc<Config>,
    /// The webhook's new sink factory (None when usage_hook is off).
    pub sink: Option<crate::delivery::sink::MakeSink>,
    pub generation: u64,
}

impl Reloaded {
    /// Logs the reload as done: called once every thread's hook has the new config (tests and
    /// operators wait for this line).
    pub fn log_applied(&self) {
        let urls: Vec<&str> = self.config.backends.iter().map(|b| b.url.as_str()).collect();
        log::info!(
            "reload: config generation {} in use for new requests; backends {}",
            self.generation,
            urls.join(", ")
        );
    }
}

/// Counts a refused reload and logs why as one record (header and problems in one write), so a
/// reader of the log never sees the header without its problems.
fn refused(path: &Path, problems: &[String], stats: &ReloadStats) {
    stats.error.fetch_add(1, Relaxed);
    let n = problems.len();
    let mut msg = format!(
        "reload of {} failed; the running config stays in use ({n} problem{}):",
        path.display(),
        if n == 1 { "" } else { "s" }
    );
    for p in problems {
        msg.push_str("\n  ");
        msg.push_str(p);
    }
    log::error!("{msg}");
}

/// Reloads `path` into `snapshots`; returns the new config and what the other threads' reload
/// hooks need, or None when nothing changed. Counts the result in
/// `llmproxy_config_reloads_total`.
pub fn reload(path: &Path, snapshots: &SnapshotCell, stats: &ReloadStats) -> Option<Reloaded> {
    log::info!("SIGHUP: reloading {}", path.display());
    let mut next = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            refused(path, &e.problems, stats);
            return None;
        }
    };
    let running = snapshots.load();
    for key in keep_restart_only(&running.config, &mut next) {
        log::warn!("reload: {key} changed in {}; it needs a restart and is ignored", path.display());
    }
    let sink = if next.usage_hook.enabled {
        match crate::delivery::sink::maker(&next.usage_hook) {
            Ok(m) => Some(m),
            Err(e) => {
                refused(path, &[e], stats);
                return None;
            }
        }
    } else {
        None
    };
    let addrs = next.backends.iter().map(|b| b.addrs.clone()).collect();
    let next = Arc::new(next);
    let applied = next.clone();
    match snapshots.update(move |_| Some((applied, addrs))) {
        Ok(g) => {
            stats.ok.fetch_add(1, Relaxed);
            let generation = g.unwrap_or(snapshots.generation());
            Some(Reloaded { config: next, sink, generation })
        }
        Err(problems) => {
            refused(path, &problems, stats);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_keys_keep_their_running_values() {
        let a = Config::parse("listen = \"127.0.0.1:1\"\n[[backends]]\nurl = \"http://127.0.0.1:9\"\n", "a")
            .unwrap();
        let mut b = Config::parse(
            "listen = \"127.0.0.1:2\"\n[runtime]\nworkers = 3\n[usage_hook]\nspool_dir = \"/x\"\n[[backends]]\nurl = \"http://127.0.0.1:8\"\n",
            "b",
        )
        .unwrap();
        let changed = keep_restart_only(&a, &mut b);
        assert_eq!(changed, ["listen", "runtime", "usage_hook.spool_dir"]);
        let mut c = Config::parse(
            "listen = \"127.0.0.1:1\"\n[usage_hook]\nconcurrency = 3\nurl = \"http://127.0.0.1:7/x\"\n[rate_limit]\nenabled = true\nrequests_per_minute = 5\n[[backends]]\nurl = \"http://127.0.0.1:8\"\n",
            "c",
        )
        .unwrap();
        let changed = keep_restart_only(&a, &mut c);
        assert_eq!(changed.len(), 2, "{changed:?}");
        assert_eq!(c.usage_hook.delivery.concurrency, a.usage_hook.delivery.concurrency);
        assert!(!c.rate_limit.enabled);
        // What reloads is taken from the new file.
        assert_eq!(c.rate_limit.defaults.requests_per_minute, 5);
        assert_eq!(c.usage_hook.url, "http://127.0.0.1:7/x");
        assert_eq!(b.listen, a.listen);
        assert_eq!(b.runtime.workers, 0);
        assert_eq!(b.usage_hook.spool_dir, a.usage_hook.spool_dir);
        // Everything else is taken from the new file.
        assert_eq!(b.backends[0].url, "http://127.0.0.1:8");
    }
}
