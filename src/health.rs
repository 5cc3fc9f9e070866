//! Active health checks on their own thread (never on a core): a blocking `GET <path>` (through
//! `net::dial`, over TLS for https backends) to each endpoint (every address of every backend) of
//! the current snapshot; 2xx marks it up, anything else down, except a TLS rejection (a
//! certificate that does not verify), which is logged and leaves the endpoint up so requests
//! answer 502 with the reason. Every endpoint is checked at once when it appears (start, reload,
//! DNS change); an up endpoint every `interval`; a down one (by check, or marked down by a core)
//! again after 100 ms, then backing off to 1 s (or `interval`), so a gateway started before its backends
//! follows them quickly. For `continuous_usage = "auto"` backends it also reads `GET /v1/models`
//! and learns from `owned_by` whether the server reports continuous usage (vLLM, SGLang). Between
//! checks the thread sleeps until the next one is due; a stop (`Gateway::stop`), a new snapshot or an
//! endpoint marked down by a core (`SnapshotCell::watch`) unparks it.

use crate::config::{BackendConfig, HealthCheckConfig};
use crate::snapshot::{Backend, EndpointId, SnapshotCell};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// First re-check of an endpoint found down.
pub const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Longest gap between checks of a down endpoint (or `interval`, if shorter): a backend that
/// comes back is served within about a second, however long it was away.
pub const MAX_RETRY: Duration = Duration::from_secs(1);

/// Checks one endpoint once; true when it answered 2xx in time.
pub fn check_once(addr: SocketAddr, b: &BackendConfig, cfg: &HealthCheckConfig) -> bool {
    let mut s = match crate::net::connect_blocking(addr, b.tls.as_ref(), cfg.timeout) {
        Ok(s) => s,
        // Alive, but its TLS does not match the settings: kept up so requests get a 502 that
        // says why (see proxy), and said here too.
        Err(e) if e.is_tls_rejection() => {
            log::warn!("health check of {} ({addr}): {e}", b.url);
            return true;
        }
        Err(_) => return false,
    };
    let req = format!(
        "GET {}{} HTTP/1.1\r\nHost: {}\r\nUser-Agent: llmproxy-health\r\nConnection: close\r\n\r\n",
        b.base_path, cfg.path, b.host_header
    );
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]) {
            Err(e) if crate::net::dial::tls_rejection(&e).is_some() => {
                // Refused after the handshake (TLS 1.3 servers check client certificates then).
                log::warn!(
                    "health check of {}: TLS: {}",
                    b.url,
                    crate::net::dial::tls_rejection(&e).map_or(String::new(), |r| r.to_string())
                );
                return true;
            }
            Ok(0) | Err(_) => return false,
            Ok(k) => n += k,
        }
    }
    buf.starts_with(b"HTTP/1.") && buf[9] == b'2'
}

/// When one endpoint is checked next. Pure: `after_check` and `marked_down` are the transitions.
#[derive(Debug, Clone, Copy)]
pub struct Due {
    pub next: Instant,
    backoff: Duration,
    last_up: bool,
}

impl Due {
    /// A new endpoint: checked at once.
    pub fn new(now: Instant) -> Self {
        Due { next: now, backoff: FIRST_RETRY, last_up: true }
    }

    /// After a check: up -> again in `interval`; down -> again after the backoff, which doubles
    /// up to `MAX_RETRY` (or `interval`, if shorter).
    pub fn after_check(&mut self, now: Instant, up: bool, interval: Duration) {
        if up {
            self.next = now + interval;
            self.backoff = FIRST_RETRY.min(interval);
        } else {
            let cap = interval.min(MAX_RETRY);
            self.next = now + self.backoff.min(cap);
            self.backoff = (self.backoff * 2).min(cap);
        }
        self.last_up = up;
    }

    /// A core marked the endpoint down (a refused connect): re-check it soon.
    pub fn marked_down(&mut self, now: Instant) {
        if self.last_up {
            self.last_up = false;
            self.backoff = FIRST_RETRY;
            self.next = self.next.min(now + FIRST_RETRY);
        }
    }
}

/// Starts the health thread; it stops when `stop` is set.
pub fn spawn(snapshots: Arc<SnapshotCell>, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("llmproxy-health".into()).spawn(move || {
        let mut due: Vec<(EndpointId, Due)> = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let snap = snapshots.load();
            let cfg = &snap.config.health_check;
            let now = Instant::now();
            // Follow the snapshot's endpoints by id: new ones are due at once, gone ones dropped.
            due = snap
                .endpoints
                .iter()
                .map(|e| (e.id, due.iter().find(|(id, _)| *id == e.id).map_or(Due::new(now), |d| d.1)))
                .collect();
            for (e, (_, d)) in snap.endpoints.iter().zip(due.iter_mut()) {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if !e.state.is_up() {
                    d.marked_down(Instant::now());
                }
                if Instant::now() < d.next {
                    continue;
                }
                let backend = &snap.backends[e.backend];
                let b = &backend.cfg;
                let up = check_once(e.addr, b, cfg);
                if up && b.continuous_usage == crate::config::ContinuousUsage::Auto {
                    learn_continuous(backend, e.addr, cfg);
                }
                d.after_check(Instant::now(), up, cfg.interval);
                if e.state.set_up(up) {
                    if up {
                        log::info!("backend {} ({}) is up (health check passed)", b.url, e.addr);
                    } else {
                        log::warn!(
                            "backend {} ({}) is down (health check {} failed)",
                            b.url,
                            e.addr,
                            cfg.path
                        );
                    }
                }
            }
            // Sleep until the next endpoint is due. A stop, a new snapshot or an endpoint marked
            // down by a core unparks it; one that came during the checks above left park's token,
            // so this returns at once and the loop looks again.
            let next = due.iter().map(|(_, d)| d.next).min().unwrap_or(now + cfg.interval);
            std::thread::park_timeout(next.saturating_duration_since(Instant::now()));
        }
    })
}

/// Most bytes of a `/v1/models` answer read for learning.
const MAX_MODELS_BODY: usize = 1 << 20;

/// Owners whose servers report cumulative usage on every chunk when asked.
const CONTINUOUS_OWNERS: [&str; 2] = ["vllm", "sglang"];

/// `GET /v1/models` once; sets the backend's learned continuous-usage flag from `owned_by`.
/// A backend that does not answer keeps what was learned before.
fn learn_continuous(backend: &Backend, addr: SocketAddr, cfg: &HealthCheckConfig) {
    let b = &backend.cfg;
    let Ok(mut s) = crate::net::connect_blocking(addr, b.tls.as_ref(), cfg.timeout) else { return };
    let mut req = format!(
        "GET {}/v1/models HTTP/1.1\r\nHost: {}\r\nUser-Agent: llmproxy-health\r\nConnection: close\r\n",
        b.base_path, b.host_header
    );
    if let Some(k) = &b.api_key {
        req.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    req.push_str("\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return;
    }
    // Read until the end, MAX_MODELS_BODY, or the check's timeout for the whole answer: a backend
    // that trickles it cannot hold the one health thread (each read also has the timeout).
    let deadline = Instant::now() + cfg.timeout;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while answer.len() < MAX_MODELS_BODY && Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    // A 2xx answer's body, its framing (length, chunked, close) undone as for the merged list.
    let Some(Some(body)) = crate::models::complete_body(&answer, true) else { return };
    let on = owners(&body).any(|o| CONTINUOUS_OWNERS.iter().any(|c| o.eq_ignore_ascii_case(c.as_bytes())));
    if backend.set_learned_continuous(on) {
        log::info!("backend {}: continuous usage {} (learned from /v1/models owned_by)", b.url, on);
    }
}

/// Every `"owned_by":"..."` string value in `text`.
pub fn owners(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    const KEY: &[u8] = b"\"owned_by\":";
    let mut at = 0;
    std::iter::from_fn(move || loop {
        let k = memchr::memmem::find(&text[at..], KEY)? + at + KEY.len();
        let v = crate::request::skip_ws(text, k);
        at = v;
        if text.get(v) != Some(&b'"') {
            continue;
        }
        let end = memchr::memchr(b'"', &text[v + 1..])? + v + 1;
        at = end + 1;
        return Some(&text[v + 1..end]);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_found() {
        let t = br#"{"data":[{"id":"a","owned_by": "vllm"},{"owned_by":null},{"owned_by":"sglang"}]}"#;
        let o: Vec<&[u8]> = super::owners(t).collect();
        assert_eq!(o, vec![&b"vllm"[..], &b"sglang"[..]]);
    }

    #[test]
    fn a_down_endpoint_is_rechecked_with_backoff_up_to_the_interval() {
        let t0 = Instant::now();
        let interval = Duration::from_secs(1);
        let mut d = Due::new(t0);
        assert_eq!(d.next, t0);
        let mut gaps = Vec::new();
        for _ in 0..6 {
            d.after_check(t0, false, interval);
            gaps.push((d.next - t0).as_millis());
        }
        assert_eq!(gaps, [100, 200, 400, 800, 1000, 1000]);
        // A long interval does not slow the re-checks of a down endpoint past MAX_RETRY.
        let mut d = Due::new(t0);
        let gaps: Vec<u128> = (0..6)
            .map(|_| {
                d.after_check(t0, false, Duration::from_secs(10));
                (d.next - t0).as_millis()
            })
            .collect();
        assert_eq!(gaps, [100, 200, 400, 800, 1000, 1000]);
        d.after_check(t0, true, interval);
        assert_eq!((d.next - t0).as_millis(), 1000);
        // Marked down by a core between checks: re-checked within FIRST_RETRY, then backs off.
        d.marked_down(t0);
        assert_eq!((d.next - t0).as_millis(), 100);
        d.after_check(t0, false, interval);
        assert_eq!((d.next - t0).as_millis(), 100);
        d.after_check(t0, false, interval);
        assert_eq!((d.next - t0).as_millis(), 200);
    }
}
