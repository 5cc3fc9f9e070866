//! Helpers shared by the integration tests (`mod common;`). Each test binary uses a subset.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod gateway;
pub mod nats;
pub mod prereq;
pub mod receiver;
pub mod redis;
pub mod replay;

pub use client::{connect, get, post, request, Response};
pub use gateway::{config_for, drivers, Gateway};
pub use receiver::{Hit, Mode, Receiver};

/// A simulated backend of `flavor` on 127.0.0.1:0 with small delays.
pub fn mock(flavor: llmproxy::mock::Flavor) -> llmproxy::mock::MockBackend {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mock");
    let mut o = llmproxy::mock::MockOptions::new(flavor);
    o.ttft = std::time::Duration::from_millis(2);
    o.itl = std::time::Duration::from_millis(1);
    o.tokens = 5;
    llmproxy::mock::MockBackend::start(l, o)
}

/// Waits until `f()` is true (polling every 10 ms) or panics after `secs` seconds with `what`.
pub fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A simulated backend of `flavor` with these server-wide delays and token count.
pub fn mock_with(
    flavor: llmproxy::mock::Flavor,
    ttft_ms: u64,
    itl_ms: u64,
    tokens: u32,
) -> llmproxy::mock::MockBackend {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mock");
    let mut o = llmproxy::mock::MockOptions::new(flavor);
    o.ttft = std::time::Duration::from_millis(ttft_ms);
    o.itl = std::time::Duration::from_millis(itl_ms);
    o.tokens = tokens;
    llmproxy::mock::MockBackend::start(l, o)
}

/// Proxied requests a mock received on `path` (health checks excluded).
pub fn hits(m: &llmproxy::mock::MockBackend, path: &str) -> usize {
    m.requests().iter().filter(|r| r.path == path).count()
}

/// The gateway's `/metrics` text.
pub fn metrics(addr: std::net::SocketAddr) -> String {
    let r = request(addr, &get("/metrics"));
    assert_eq!(r.status, 200, "/metrics");
    r.text()
}

/// The value of one exact series line (`name{labels}`) in a metrics text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A non-stream chat request body for `model`.
pub fn chat(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
}

/// Reads from a raw socket until EOF, an error or `secs` seconds pass; returns the bytes and
/// whether EOF was seen.
pub fn read_to_close(s: &mut std::net::TcpStream, secs: u64) -> (Vec<u8>, bool) {
    use std::io::Read;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut out = Vec::new();
    let mut tmp = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return (out, false);
        }
        s.set_read_timeout(Some(left.max(std::time::Duration::from_millis(1)))).unwrap();
        match s.read(&mut tmp) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&tmp[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return (out, false)
            }
            Err(_) => return (out, true),
        }
    }
}
