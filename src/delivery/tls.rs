//! TLS to an `https://` webhook (delivery threads only): a rustls client config (ring provider,
//! ALPN `http/1.1`) trusting `usage_hook.tls_ca_file` or else the OS trust store. A certificate that
//! does not verify fails the POST like any other delivery failure (retried, then journaled).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

/// Builds the client config once at start; an unreadable or empty CA file is an error naming it.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("usage_hook.tls_ca_file {}: {e}", path.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("usage_hook.tls_ca_file {}: {e}", path.display()))?;
                roots.add(c).map_err(|e| format!("usage_hook.tls_ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("usage_hook.tls_ca_file {}: no certificate in it", path.display()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                log::warn!("usage_hook: reading the OS trust store: {e}");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                log::warn!("usage_hook: the OS trust store holds no certificate; https deliveries will fail");
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("usage_hook: TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Starts TLS on a connected socket (the handshake happens on the first write/read).
pub fn wrap(
    cfg: Arc<rustls::ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let name = ServerName::try_from(host.to_string()).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("server name {host:?}: {e}"))
    })?;
    let conn = rustls::ClientConnection::new(cfg, name).map_err(std::io::Error::other)?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}
