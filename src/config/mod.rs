//! Configuration: the typed, validated `Config` the rest of the gateway uses, and `Config::parse`:
//! TOML syntax, then the shape of every key (`schema.rs`), then the values (`convert.rs`, with
//! `backends.rs`, `auth.rs` and a file per newer section), every problem reported at once
//! (`problems.rs`). The raw serde shape is `raw.rs`. Main thread, at start and on reload.

mod access_log;
mod auth;
mod backends;
mod convert;
mod problems;
mod rate_limit;
mod raw;
mod routes;
mod schema;
#[cfg(test)]
mod tests;
mod tls;
mod usage_hook;

pub use access_log::AccessLogConfig;
pub use problems::ConfigError;
pub use rate_limit::{KeyLimits, LimitSet, OnStoreError, RateLimitConfig, Store};
pub use routes::RoutesConfig;
pub use tls::ListenerTlsConfig;
pub use usage_hook::{parse_hook_url, DeliveryConfig, HookTarget, RecordFormat, SinkKind};

use problems::Problems;
use raw::{RawConfig, RawUsageHook};
use schema::{check_shape, Kind};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Balancing strategy across backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    Weighted,
    LeastConnections,
}

/// Which monoio driver the core threads use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverChoice {
    Auto,
    IoUring,
    Epoll,
}

/// How the client's API key appears in usage records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyFormat {
    Full,
    Redacted,
    Sha256,
    Omit,
}

/// Whether streaming requests get `stream_options.include_usage` injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeUsage {
    Inject,
    Passthrough,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub shutdown_grace: Duration,
    pub runtime: RuntimeConfig,
    pub backends: Vec<BackendConfig>,
    pub strategy: Strategy,
    pub limits: Limits,
    pub usage_hook: UsageHookConfig,
    pub health_check: HealthCheckConfig,
    pub auth: AuthConfig,
    /// `[tls]`: TLS on `listen`; None = plain HTTP.
    pub tls: Option<ListenerTlsConfig>,
    pub routes: RoutesConfig,
    pub rate_limit: RateLimitConfig,
    /// `[access_log]` (reloadable).
    pub access_log: AccessLogConfig,
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub workers: usize,
    pub pin_cores: bool,
    pub cores: Vec<usize>,
    pub driver: DriverChoice,
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// As written in the config, without a trailing slash; used as the metric label and in records.
    pub url: String,
    /// Every address the host resolved to when the config was loaded (one for an IP literal).
    /// Core threads never resolve names: the discovery thread re-resolves `resolve_name` every
    /// `dns_refresh`, and the snapshot's endpoints carry the current addresses.
    pub addrs: Vec<SocketAddr>,
    /// `(host, port)` to re-resolve; None when the url holds an IP address.
    pub resolve_name: Option<(String, u16)>,
    pub dns_refresh: Duration,
    /// `host[:port]` for the Host header.
    pub host_header: String,
    /// Path prefix of the url (without trailing slash), prepended to the request path.
    pub base_path: String,
    pub weight: u32,
    pub models: Vec<String>,
    /// Routed paths this backend serves (`paths`; default all).
    pub paths: crate::endpoints::PathSet,
    pub api_key: Option<String>,
    /// For an https:// backend: roots, client certificate, server name.
    pub tls: Option<crate::tls::BackendTls>,
    /// Ask for cumulative usage on every stream chunk (CONTRACT section 7).
    pub continuous_usage: ContinuousUsage,
}

/// `[[backends]] continuous_usage`: `auto` is learned from `GET /v1/models` by the health thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContinuousUsage {
    Auto,
    On,
    Off,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_request_body: u64,
    pub header_read_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_first_byte_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct UsageHookConfig {
    pub enabled: bool,
    pub url: String,
    pub timeout: Duration,
    pub retry: u32,
    pub queue_capacity: usize,
    pub batch_max: usize,
    pub batch_linger: Duration,
    pub spool_dir: PathBuf,
    pub replay_interval: Duration,
    pub secret: Option<String>,
    pub api_key_format: ApiKeyFormat,
    pub include_usage: IncludeUsage,
    /// Journal, concurrency, TLS, format and sink (`config/usage_hook.rs`).
    pub delivery: DeliveryConfig,
}

#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub interval: Duration,
    pub path: String,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub required: bool,
    /// Lower-cased header name.
    pub user_header: String,
    pub keys: Vec<AuthKey>,
}

#[derive(Debug, Clone)]
pub struct AuthKey {
    /// SHA-256 of the key; raw keys are hashed at load so both forms compare the same way.
    pub key_sha256: [u8; 32],
    pub user_id: String,
    /// This key's own limits (`[rate_limit]` defaults where unset).
    pub limits: KeyLimits,
}

impl AuthKey {
    /// The key's stable id: the first 8 bytes of its SHA-256, the same across reloads and across
    /// every gateway of a fleet (limits and logs name a key by it, never by the key).
    pub fn id(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.key_sha256[..8]);
        u64::from_be_bytes(b)
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![format!("{}: cannot read config file: {e}", path.display())],
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        // Syntax first (one error: the parser cannot go on), then the shape of every key (all
        // problems at once: unknown keys and wrong types are removed and reported), then values.
        let syntax = |e: toml::de::Error| {
            let line = e.span().map(|s| {
                text.as_bytes()[..s.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
            });
            let msg = e.message().to_string();
            ConfigError {
                problems: vec![match line {
                    Some(l) => format!("{origin}:{l}: {msg}"),
                    None => format!("{origin}: {msg}"),
                }],
            }
        };
        let mut table: toml::Table = toml::from_str(text).map_err(syntax)?;
        let mut p = Problems { origin, source: text, list: Vec::new() };
        check_shape(&mut table, "", &mut p);
        let raw: RawConfig = match RawConfig::deserialize(toml::Value::Table(table)) {
            Ok(r) => r,
            Err(e) => {
                p.list.push(format!("{origin}: {}", e.message()));
                return Err(ConfigError { problems: p.list });
            }
        };
        let cfg = convert::convert(raw, &mut p);
        if p.list.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError { problems: p.list })
        }
    }
}
