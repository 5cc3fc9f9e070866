//! The TLS client settings of one https backend: roots (its `tls_ca_file`, else the OS trust
//! store), an optional client certificate for mutual TLS, the name to verify and send as SNI, and
//! ALPN `http/1.1`. Built at config load; the dialer (`net::dial`) uses it on any thread.

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use std::sync::{Arc, OnceLock};

/// A backend's TLS client side, shared by every core (rustls configs are Send + Sync).
#[derive(Clone)]
pub struct BackendTls {
    pub config: Arc<ClientConfig>,
    /// Verified against the certificate and sent as SNI (an IP address is verified, not sent).
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackendTls({:?})", self.server_name)
    }
}

/// What the config says about one backend's TLS (empty strings = not set).
pub struct BackendTlsFiles<'a> {
    /// The URL's host (without port or brackets).
    pub host: &'a str,
    pub ca_file: &'a str,
    pub client_cert: &'a str,
    pub client_key: &'a str,
    pub server_name: &'a str,
}

/// The OS trust store, read once per process (rustls-native-certs: the distribution's bundle,
/// or SSL_CERT_FILE / SSL_CERT_DIR, so CAs installed with update-ca-certificates are trusted).
fn native_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
                return Err(format!(
                    "the OS trust store holds no certificate{why}: install ca-certificates or set tls_ca_file"
                ));
            }
            Ok(Arc::new(store))
        })
        .clone()
}

impl BackendTls {
    /// Builds the client settings; on failure, every problem as (config key suffix, message).
    pub fn build(f: &BackendTlsFiles<'_>) -> Result<BackendTls, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let name = if f.server_name.is_empty() { f.host } else { f.server_name };
        let server_name = match ServerName::try_from(name.to_string()) {
            Ok(n) => Some(n),
            Err(e) => {
                let key = if f.server_name.is_empty() { "url" } else { "tls_server_name" };
                problems.push((key, format!("{name:?} is not a valid TLS server name ({e})")));
                None
            }
        };
        let roots = if f.ca_file.is_empty() {
            native_roots().map_err(|e| ("tls_ca_file", e))
        } else {
            super::pem::certs(f.ca_file).map_err(|e| ("tls_ca_file", e)).and_then(|certs| {
                let mut store = RootCertStore::empty();
                let (added, _) = store.add_parsable_certificates(certs);
                if added == 0 {
                    Err(("tls_ca_file", format!("{:?} holds no usable CA certificate", f.ca_file)))
                } else {
                    Ok(Arc::new(store))
                }
            })
        };
        let roots = roots.map_err(|p| problems.push(p)).ok();
        let client_auth = match (f.client_cert.is_empty(), f.client_key.is_empty()) {
            (true, true) => None,
            (false, true) => {
                problems.push(("tls_client_key", "missing: tls_client_cert needs its key".to_string()));
                None
            }
            (true, false) => {
                problems
                    .push(("tls_client_cert", "missing: tls_client_key needs its certificate".to_string()));
                None
            }
            (false, false) => {
                let certs =
                    super::pem::certs(f.client_cert).map_err(|e| problems.push(("tls_client_cert", e)));
                let key = super::pem::key(f.client_key).map_err(|e| problems.push(("tls_client_key", e)));
                match (certs, key) {
                    (Ok(c), Ok(k)) => Some((c, k)),
                    _ => None,
                }
            }
        };
        let (Some(server_name), Some(roots)) = (server_name, roots) else { return Err(problems) };
        if !problems.is_empty() {
            return Err(problems);
        }
        let builder = match ClientConfig::builder_with_provider(super::provider())
            .with_safe_default_protocol_versions()
        {
            Ok(b) => b.with_root_certificates(roots),
            Err(e) => return Err(vec![("url", format!("TLS setup failed: {e}"))]),
        };
        let mut config = match client_auth {
            None => builder.with_no_client_auth(),
            Some((certs, key)) => match builder.with_client_auth_cert(certs, key) {
                Ok(c) => c,
                Err(e) => {
                    return Err(vec![(
                        "tls_client_key",
                        format!("does not match tls_client_cert or is unsupported: {e}"),
                    )])
                }
            },
        };
        config.alpn_protocols = vec![super::ALPN_HTTP1.to_vec()];
        Ok(BackendTls { config: Arc::new(config), server_name })
    }
}
