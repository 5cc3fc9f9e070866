//! Active health checks on their own thread (never on a core): every `interval`, a blocking
//! `GET <path>` to each backend (over TLS for https ones, through `net::dial`); 2xx marks it up,
//! anything else down, except a TLS rejection (e.g. a certificate that does not verify), which is
//! logged and leaves the backend up so requests answer 502 with the reason. Cores mark down passively.
//! For `continuous_usage = "auto"` backends it also reads `GET /v1/models` and learns from
//! `owned_by` whether the server reports continuous usage (vLLM, SGLang).

use crate::balancer::BackendSet;
use crate::config::HealthCheckConfig;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Checks one backend once; true when it answered 2xx in time.
pub fn check_once(set: &BackendSet, i: usize, cfg: &HealthCheckConfig) -> bool {
    let b = &set.backends[i];
    let mut s = match crate::net::connect_blocking(b.addr, b.tls.as_ref(), cfg.timeout) {
        Ok(s) => s,
        // Alive, but its TLS does not match the settings: kept up so requests get a 502 that
        // says why (see proxy), and said here too.
        Err(e) if e.is_tls_rejection() => {
            log::warn!("health check of {}: {e}", b.url);
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

/// Starts the health thread; it stops when `stop` is set.
pub fn spawn(
    set: Arc<BackendSet>,
    cfg: HealthCheckConfig,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("llmproxy-health".into()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            for i in 0..set.len() {
                let up = check_once(&set, i, &cfg);
                if up && set.backends[i].continuous_usage == crate::config::ContinuousUsage::Auto {
                    learn_continuous(&set, i, &cfg);
                }
                if set.set_up(i, up) {
                    if up {
                        log::info!("backend {} is up (health check passed)", set.backends[i].url);
                    } else {
                        log::warn!(
                            "backend {} is down (health check {} failed)",
                            set.backends[i].url,
                            cfg.path
                        );
                    }
                }
            }
            // Sleep in small steps so shutdown is prompt.
            let until = Instant::now() + cfg.interval;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20).min(cfg.interval));
            }
        }
    })
}

/// Most bytes of a `/v1/models` answer read for learning.
const MAX_MODELS_BODY: usize = 1 << 20;

/// Owners whose servers report cumulative usage on every chunk when asked.
const CONTINUOUS_OWNERS: [&str; 2] = ["vllm", "sglang"];

/// `GET /v1/models` once; sets the backend's learned continuous-usage flag from `owned_by`.
/// A backend that does not answer keeps what was learned before.
fn learn_continuous(set: &BackendSet, i: usize, cfg: &HealthCheckConfig) {
    let b = &set.backends[i];
    let Ok(mut s) = crate::net::connect_blocking(b.addr, b.tls.as_ref(), cfg.timeout) else { return };
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
    let mut body = Vec::new();
    let _ = s.take(MAX_MODELS_BODY as u64).read_to_end(&mut body);
    if !(body.starts_with(b"HTTP/1.") && body.get(9) == Some(&b'2')) {
        return;
    }
    let on = owners(&body).any(|o| CONTINUOUS_OWNERS.iter().any(|c| o.eq_ignore_ascii_case(c.as_bytes())));
    if set.set_learned_continuous(i, on) {
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
    #[test]
    fn owners_found() {
        let t = br#"{"data":[{"id":"a","owned_by": "vllm"},{"owned_by":null},{"owned_by":"sglang"}]}"#;
        let o: Vec<&[u8]> = super::owners(t).collect();
        assert_eq!(o, vec![&b"vllm"[..], &b"sglang"[..]]);
    }
}
