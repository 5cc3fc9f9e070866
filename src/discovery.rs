//! Backends that move: the discovery thread (never a core) re-resolves each backend's host name
//! every `dns_refresh` and, when the set of addresses changed, swaps in a snapshot whose endpoints
//! are the new addresses. New addresses are health-checked at once (health.rs); removed ones take
//! no new requests and their in-flight requests finish on the snapshot they started with; their
//! idle pooled connections are closed when each core moves to the new generation. A failed or
//! empty resolution keeps the last known addresses. Between resolutions the thread sleeps until the
//! next is due (with no name to resolve, until woken); a stop (`Gateway::stop`) or a new snapshot
//! (`SnapshotCell::watch`) unparks it.

use crate::resolve::resolve;
use crate::snapshot::SnapshotCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// Starts the discovery thread; it stops when `stop` is set.
pub fn spawn(snapshots: Arc<SnapshotCell>, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("llmproxy-dns".into()).spawn(move || {
        // Next resolution and last failure, by backend url.
        let mut due: HashMap<String, Instant> = HashMap::new();
        let mut failing: HashMap<String, String> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            let snap = snapshots.load();
            let now = Instant::now();
            let mut changes: Vec<(String, Vec<SocketAddr>)> = Vec::new();
            for b in &snap.backends {
                let Some((host, port)) = &b.cfg.resolve_name else { continue };
                let next = due.entry(b.cfg.url.clone()).or_insert(now + b.cfg.dns_refresh);
                if now < *next {
                    continue;
                }
                *next = now + b.cfg.dns_refresh;
                let current: Vec<SocketAddr> =
                    snap.endpoints[b.endpoints.clone()].iter().map(|e| e.addr).collect();
                match resolve(host, *port) {
                    Ok(addrs) => {
                        if failing.remove(&b.cfg.url).is_some() {
                            log::info!("backend {}: {host} resolves again", b.cfg.url);
                        }
                        if addrs != current {
                            log::info!(
                                "backend {}: {host} now resolves to [{}] (was [{}])",
                                b.cfg.url,
                                list(&addrs),
                                list(&current)
                            );
                            changes.push((b.cfg.url.clone(), addrs));
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        if failing.insert(b.cfg.url.clone(), msg.clone()).as_ref() != Some(&msg) {
                            log::warn!(
                                "backend {}: cannot resolve {host} ({msg}); keeping [{}]",
                                b.cfg.url,
                                list(&current)
                            );
                        }
                    }
                }
            }
            // Forget backends that a reload removed.
            due.retain(|url, _| snap.backends.iter().any(|b| &b.cfg.url == url));
            if !changes.is_empty() {
                let r = snapshots.update(|cur| {
                    let addrs = cur
                        .config
                        .backends
                        .iter()
                        .map(|b| {
                            changes
                                .iter()
                                .find(|(u, _)| *u == b.url)
                                .map(|(_, a)| a.clone())
                                .unwrap_or_default()
                        })
                        .collect();
                    Some((cur.config.clone(), addrs))
                });
                if let Err(p) = r {
                    log::error!("cannot apply new addresses: {}", p.join("; "));
                }
            }
            // Sleep until the next name is due. A stop or a new snapshot (a reload may add names)
            // unparks it; one that came during the pass above left park's token.
            match due.values().min() {
                Some(next) => std::thread::park_timeout(next.saturating_duration_since(Instant::now())),
                None => std::thread::park(),
            }
        }
    })
}

fn list(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(", ")
}
