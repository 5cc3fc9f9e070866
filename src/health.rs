//! Active health checks on their own thread (never on a core): every `interval`, a blocking
//! `GET <path>` to each backend (over TLS for https ones, through `net::dial`); 2xx marks it up,
//! anything else down, except a TLS rejection (e.g. a certificate that does not verify), which is
//! logged and leaves the backend up so requests answer 502 with the reason. Cores mark down passively.

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
