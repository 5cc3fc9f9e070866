//! TLS settings built from PEM files, off the core threads (at config load and on reload): the
//! client config for each https backend, and the listener's certificate behind a swappable
//! pointer. rustls with the ring provider everywhere. No I/O here beyond reading the PEM files;
//! handshakes happen in `net`.

pub mod client;
pub mod pem;
pub mod server;

pub use client::BackendTls;
pub use server::ListenerTls;

use std::sync::Arc;

/// The only ALPN protocol offered or accepted: the gateway speaks HTTP/1.1 on every hop.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The crypto provider for every config: ring (a pure cargo build, quick to compile).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
