//! `[[backends]]`: each entry's url taken apart and resolved, weight, models, paths, TLS and
//! continuous usage, into `BackendConfig`s. Main thread.

use super::raw::RawBackend;
use super::{routes, tls, BackendConfig, ContinuousUsage, Problems};
use std::net::SocketAddr;

/// Every `[[backends]]` entry that converts (problems reported for the others).
pub(super) fn convert(p: &mut Problems<'_>, raw: &[RawBackend]) -> Vec<BackendConfig> {
    if raw.is_empty() {
        p.push("backends", "at least one [[backends]] entry is required");
    }
    let mut backends = Vec::new();
    for (i, b) in raw.iter().enumerate() {
        let key = format!("backends[{i}].url");
        let Some(url) = b.url.as_deref() else {
            p.push(&key, "missing");
            continue;
        };
        let url = url.trim_end_matches('/').to_string();
        let weight = p.int(&format!("backends[{i}].weight"), b.weight, 1, 1, 1_000_000) as u32;
        let continuous_usage = p.choice(
            &format!("backends[{i}].continuous_usage"),
            &b.continuous_usage,
            ContinuousUsage::Auto,
            &[("auto", ContinuousUsage::Auto), ("on", ContinuousUsage::On), ("off", ContinuousUsage::Off)],
        );
        let dns_refresh = p.positive_duration(&format!("backends[{i}].dns_refresh"), &b.dns_refresh, "30s");
        if let Some(u) = parse_backend_url(p, &key, &url) {
            if backends.iter().any(|x: &BackendConfig| x.url == url) {
                p.push(&key, format_args!("{url:?} is listed twice"));
            }
            let keys = tls::BackendTlsKeys {
                ca_file: b.tls_ca_file.clone().unwrap_or_default(),
                client_cert: b.tls_client_cert.clone().unwrap_or_default(),
                client_key: b.tls_client_key.clone().unwrap_or_default(),
                server_name: b.tls_server_name.clone().unwrap_or_default(),
            };
            let tls = tls::backend(p, i, u.https, host_of(&u.authority), &keys);
            backends.push(BackendConfig {
                url,
                addrs: u.addrs,
                resolve_name: u.resolve_name,
                dns_refresh,
                host_header: u.authority,
                base_path: u.base_path,
                tls,
                weight,
                models: b.models.clone().unwrap_or_default(),
                api_key: b.api_key.clone().filter(|k| !k.is_empty()),
                paths: routes::backend_paths(p, i, &b.paths),
                continuous_usage,
            });
        }
    }
    backends
}

/// What a backend url names: where to connect and what to send.
struct BackendTarget {
    addrs: Vec<SocketAddr>,
    resolve_name: Option<(String, u16)>,
    /// `host[:port]` as written, for the Host header.
    authority: String,
    base_path: String,
    https: bool,
}

/// Splits `http(s)://host[:port][/base]` into its parts and resolves the host (every address).
fn parse_backend_url(p: &mut Problems<'_>, key: &str, url: &str) -> Option<BackendTarget> {
    let (rest, https) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => {
            p.push(key, format_args!("{url:?}: a backend url starts with http:// or https://"));
            return None;
        }
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        p.push(key, format_args!("{url:?}: missing host"));
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, port)) if !authority.ends_with(']') && port.chars().all(|c| c.is_ascii_digit()) => {
            match port.parse::<u16>() {
                Ok(n) => (h, n),
                Err(_) => {
                    p.push(key, format_args!("{url:?}: invalid port {port:?}"));
                    return None;
                }
            }
        }
        _ => (authority, if https { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let is_ip = host.parse::<std::net::IpAddr>().is_ok();
    let addrs = match crate::resolve::resolve(host, port) {
        Ok(a) => a,
        Err(e) => {
            p.push(key, format_args!("{url:?}: cannot resolve {host:?} ({e})"));
            return None;
        }
    };
    Some(BackendTarget {
        addrs,
        resolve_name: (!is_ip).then(|| (host.to_string(), port)),
        authority: authority.to_string(),
        base_path: path.to_string(),
        https,
    })
}

/// The host part of `host[:port]` (brackets kept for IPv6).
fn host_of(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !authority.ends_with(']') => h,
        _ => authority,
    }
}
