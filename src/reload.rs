//! SIGHUP: read the config file again, validate it, build a new snapshot and swap it in. What
//! needs a restart (`listen`, `admin_listen`, `runtime`, `usage_hook.spool_dir`) is logged and kept
//! as it is; an invalid file changes nothing and every problem is logged. Runs on the main thread.

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
    if next.usage_hook.spool_dir != running.usage_hook.spool_dir {
        changed.push("usage_hook.spool_dir");
        next.usage_hook.spool_dir = running.usage_hook.spool_dir.clone();
    }
    changed
}

/// Reloads `path` into `snapshots`; returns the new config (for the reload hooks of other
/// threads: access log, certificates, webhook) or None when nothing changed. Counts the result
/// in `llmproxy_config_reloads_total`.
pub fn reload(path: &Path, snapshots: &SnapshotCell, stats: &ReloadStats) -> Option<Arc<Config>> {
    log::info!("SIGHUP: reloading {}", path.display());
    let mut next = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            stats.error.fetch_add(1, Relaxed);
            log::error!(
                "reload of {} failed; the running config stays in use ({} problem{}):",
                path.display(),
                e.problems.len(),
                if e.problems.len() == 1 { "" } else { "s" }
            );
            for p in &e.problems {
                log::error!("  {p}");
            }
            return None;
        }
    };
    let running = snapshots.load();
    for key in keep_restart_only(&running.config, &mut next) {
        log::warn!("reload: {key} changed in {}; it needs a restart and is ignored", path.display());
    }
    let addrs = next.backends.iter().map(|b| b.addrs.clone()).collect();
    let next = Arc::new(next);
    let applied = next.clone();
    match snapshots.update(move |_| Some((applied, addrs))) {
        Ok(g) => {
            stats.ok.fetch_add(1, Relaxed);
            let snap = snapshots.load();
            let urls: Vec<&str> = snap.backends.iter().map(|b| b.cfg.url.as_str()).collect();
            log::info!(
                "reload: config generation {} in use for new requests; backends {}",
                g.unwrap_or(snap.generation),
                urls.join(", ")
            );
            Some(next)
        }
        Err(problems) => {
            stats.error.fetch_add(1, Relaxed);
            log::error!("reload of {} failed; the running config stays in use:", path.display());
            for p in &problems {
                log::error!("  {p}");
            }
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
        assert_eq!(b.listen, a.listen);
        assert_eq!(b.runtime.workers, 0);
        assert_eq!(b.usage_hook.spool_dir, a.usage_hook.spool_dir);
        // Everything else is taken from the new file.
        assert_eq!(b.backends[0].url, "http://127.0.0.1:8");
    }
}
