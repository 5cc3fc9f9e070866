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

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn problems(text: &str) -> String {
        Config::parse(text, "c.toml").unwrap_err().to_string()
    }

    #[test]
    fn listener_files_come_in_pairs_and_are_read() {
        let all = problems(
            "[tls]\ncert_file = \"/nonexistent/cert.pem\"\n[[backends]]\nurl = \"http://127.0.0.1:1\"\n",
        );
        assert!(all.contains("tls.key_file: missing"), "{all}");
        let all = problems(
            "[tls]\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"/nonexistent/k.pem\"\n[[backends]]\nurl = \"http://127.0.0.1:1\"\n",
        );
        assert!(all.contains("tls.cert_file: cannot read \"/nonexistent/c.pem\""), "{all}");
        assert!(all.contains("tls.key_file: cannot read \"/nonexistent/k.pem\""), "{all}");
    }

    #[test]
    fn backend_tls_keys_need_https_and_name_their_key() {
        let all = problems("[[backends]]\nurl = \"http://127.0.0.1:1\"\ntls_ca_file = \"/x.pem\"\n");
        assert!(all.contains("backends[0].url: tls_* keys are set but the url is http://"), "{all}");
        let all = problems(
            "[[backends]]\nurl = \"https://127.0.0.1:1\"\ntls_ca_file = \"/nonexistent/ca.pem\"\ntls_client_cert = \"/nonexistent/c.pem\"\n",
        );
        assert!(all.contains("backends[0].tls_ca_file: cannot read"), "{all}");
        assert!(all.contains("backends[0].tls_client_key: missing"), "{all}");
        let all = problems("[[backends]]\nurl = \"ftp://127.0.0.1:1\"\n");
        assert!(all.contains("starts with http:// or https://"), "{all}");
    }
}
