//! Helpers shared by the integration tests (`mod common;`). Each test binary uses a subset.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod gateway;
pub mod receiver;

pub use client::{connect, get, post, request, Response};
pub use gateway::{config_for, Gateway};
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
