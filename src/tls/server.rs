//! The listener's TLS settings (`[tls] cert_file`, `key_file`): a rustls server config offering
//! ALPN `http/1.1`, held behind an `ArcSwap` so a reload swaps certificates while every core keeps
//! accepting (a handshake in progress finishes on the config it started with).

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use std::sync::Arc;

/// Builds a server config from PEM files; on failure, every problem as (config key, message).
pub fn server_config(
    cert_file: &str,
    key_file: &str,
) -> Result<Arc<ServerConfig>, Vec<(&'static str, String)>> {
    let certs = super::pem::certs(cert_file).map_err(|e| ("tls.cert_file", e));
    let key = super::pem::key(key_file).map_err(|e| ("tls.key_file", e));
    let (certs, key) = match (certs, key) {
        (Ok(c), Ok(k)) => (c, k),
        (c, k) => return Err(c.err().into_iter().chain(k.err()).collect()),
    };
    let builder = ServerConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| vec![("tls", format!("TLS setup failed: {e}"))])?;
    let mut config = builder.with_no_client_auth().with_single_cert(certs, key).map_err(|e| {
        vec![("tls.key_file", format!("does not match tls.cert_file or is unsupported: {e}"))]
    })?;
    config.alpn_protocols = vec![super::ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// The listener's current certificates; `reload` swaps them.
pub struct ListenerTls {
    current: ArcSwap<ServerConfig>,
}

impl ListenerTls {
    pub fn new(config: Arc<ServerConfig>) -> ListenerTls {
        ListenerTls { current: ArcSwap::new(config) }
    }

    /// The config for the next handshake (a cheap, lock-free load on the accepting core).
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Uses `config` (already validated, e.g. `Config::tls` of a freshly loaded file) for every
    /// handshake from now on. Connections already established keep their session.
    pub fn reload(&self, config: Arc<ServerConfig>) {
        self.current.store(config);
    }

    /// Reads the PEM files again and swaps them in; on any problem, keeps the current ones and
    /// returns every problem (key, message).
    pub fn reload_files(&self, cert_file: &str, key_file: &str) -> Result<(), Vec<(&'static str, String)>> {
        self.reload(server_config(cert_file, key_file)?);
        Ok(())
    }
}
