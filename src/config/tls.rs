//! The TLS keys of the config: `[tls]` (the listener's certificate) and each backend's `tls_*`
//! keys, turned into ready rustls settings at load, so a bad or unreadable PEM is a config error
//! naming its key (and `--check-config` finds it).

use super::Problems;
use serde::Deserialize;
use std::sync::Arc;

/// `[tls]` as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
}

/// The listener's TLS: where the PEM files are, and the server config built from them.
#[derive(Debug, Clone)]
pub struct ListenerTlsConfig {
    pub cert_file: String,
    pub key_file: String,
    pub server: Arc<rustls::ServerConfig>,
}

/// A backend's `tls_*` keys as written.
#[derive(Debug, Default, Clone)]
pub(super) struct BackendTlsKeys {
    pub ca_file: String,
    pub client_cert: String,
    pub client_key: String,
    pub server_name: String,
}

impl BackendTlsKeys {
    fn any(&self) -> bool {
        !(self.ca_file.is_empty()
            && self.client_cert.is_empty()
            && self.client_key.is_empty()
            && self.server_name.is_empty())
    }
}

/// `[tls]`: None when both files are unset; both must be set together.
pub(super) fn listener(p: &mut Problems<'_>, raw: &RawTls) -> Option<ListenerTlsConfig> {
    let cert = raw.cert_file.clone().unwrap_or_default();
    let key = raw.key_file.clone().unwrap_or_default();
    match (cert.is_empty(), key.is_empty()) {
        (true, true) => None,
        (false, true) => {
            p.push("tls.key_file", "missing: tls.cert_file needs its key");
            None
        }
        (true, false) => {
            p.push("tls.cert_file", "missing: tls.key_file needs its certificate chain");
            None
        }
        (false, false) => match crate::tls::server::server_config(&cert, &key) {
            Ok(server) => Some(ListenerTlsConfig { cert_file: cert, key_file: key, server }),
            Err(problems) => {
                for (k, msg) in problems {
                    p.push(k, msg);
                }
                None
            }
        },
    }
}

/// A backend's TLS settings: Some for an https URL; tls_* keys on an http URL are an error.
pub(super) fn backend(
    p: &mut Problems<'_>,
    i: usize,
    https: bool,
    host: &str,
    keys: &BackendTlsKeys,
) -> Option<crate::tls::BackendTls> {
    if !https {
        if keys.any() {
            p.push(&format!("backends[{i}].url"), "tls_* keys are set but the url is http://, not https://");
        }
        return None;
    }
    let files = crate::tls::client::BackendTlsFiles {
        host: host.trim_start_matches('[').trim_end_matches(']'),
        ca_file: &keys.ca_file,
        client_cert: &keys.client_cert,
        client_key: &keys.client_key,
        server_name: &keys.server_name,
    };
    match crate::tls::BackendTls::build(&files) {
        Ok(t) => Some(t),
        Err(problems) => {
            for (k, msg) in problems {
                p.push(&format!("backends[{i}].{k}"), msg);
            }
            None
        }
    }
}
