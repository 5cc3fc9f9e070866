//! Configuration: the raw TOML shape (`RawConfig`, unknown keys rejected) and its conversion into the
//! validated, typed `Config` that the rest of the gateway uses. Every problem is reported at once.

mod tls;

pub use tls::ListenerTlsConfig;

mod rate_limit;

pub use rate_limit::{KeyLimits, LimitSet, OnStoreError, RateLimitConfig, Store};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod usage_hook;
pub use usage_hook::{DeliveryConfig, RecordFormat, SinkKind};
mod routes;
pub use routes::RoutesConfig;
mod access_log;
pub use access_log::AccessLogConfig;

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

// ---------------------------------------------------------------------------------------------
// Raw TOML shape.

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    listen: Option<String>,
    admin_listen: Option<String>,
    shutdown_grace: Option<String>,
    runtime: RawRuntime,
    backends: Vec<RawBackend>,
    balancer: RawBalancer,
    limits: RawLimits,
    usage_hook: RawUsageHook,
    health_check: RawHealthCheck,
    auth: RawAuth,
    tls: tls::RawTls,
    routes: routes::RawRoutes,
    rate_limit: rate_limit::RawRateLimit,
    access_log: access_log::RawAccessLog,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawRuntime {
    workers: Option<i64>,
    pin_cores: Option<bool>,
    cores: Option<Vec<i64>>,
    driver: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawBackend {
    url: Option<String>,
    weight: Option<i64>,
    models: Option<Vec<String>>,
    api_key: Option<String>,
    tls_ca_file: Option<String>,
    tls_client_cert: Option<String>,
    tls_client_key: Option<String>,
    tls_server_name: Option<String>,
    paths: Option<Vec<String>>,
    continuous_usage: Option<String>,
    dns_refresh: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawBalancer {
    strategy: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_request_body: Option<String>,
    header_read_timeout: Option<String>,
    upstream_connect_timeout: Option<String>,
    upstream_first_byte_timeout: Option<String>,
    stream_idle_timeout: Option<String>,
    max_connections: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawUsageHook {
    enabled: Option<bool>,
    url: Option<String>,
    timeout: Option<String>,
    retry: Option<i64>,
    queue_capacity: Option<i64>,
    batch_max: Option<i64>,
    batch_linger: Option<String>,
    spool_dir: Option<String>,
    replay_interval: Option<String>,
    secret: Option<String>,
    api_key_format: Option<String>,
    include_usage: Option<String>,
    crash_window: Option<String>,
    concurrency: Option<i64>,
    tls_ca_file: Option<String>,
    format: Option<String>,
    sink: Option<String>,
    nats_url: Option<String>,
    nats_subject: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawHealthCheck {
    interval: Option<String>,
    path: Option<String>,
    timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    required: Option<bool>,
    user_header: Option<String>,
    keys: Vec<RawAuthKey>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawAuthKey {
    key: Option<String>,
    key_sha256: Option<String>,
    user_id: Option<String>,
    requests_per_minute: Option<i64>,
    tokens_per_minute: Option<i64>,
    max_concurrent: Option<i64>,
    tokens_per_day: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// Every problem found in a config file; `Display` prints one per line.
#[derive(Debug)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects problems while converting; each names its key (and file:line where known).
struct Problems<'a> {
    origin: &'a str,
    source: &'a str,
    list: Vec<String>,
}

impl Problems<'_> {
    fn push(&mut self, key: &str, msg: impl fmt::Display) {
        let line = self.line_of(key);
        match line {
            Some(l) => self.list.push(format!("{}:{}: {}: {}", self.origin, l, key, msg)),
            None => self.list.push(format!("{}: {}: {}", self.origin, key, msg)),
        }
    }

    /// Best-effort line of the last path component of `key` (e.g. `limits.header_read_timeout`).
    fn line_of(&self, key: &str) -> Option<usize> {
        let leaf = key.rsplit('.').next()?;
        let leaf = leaf.split('[').next()?;
        let section = key.split('.').next().unwrap_or("").split('[').next().unwrap_or("");
        let mut in_section = !key.contains('.');
        for (i, line) in self.source.lines().enumerate() {
            let t = line.trim_start();
            if t.starts_with('[') {
                let name = t.trim_matches(|c| c == '[' || c == ']' || c == ' ');
                in_section = name == section;
                continue;
            }
            if in_section || !key.contains('.') {
                if let Some(rest) = t.strip_prefix(leaf) {
                    if rest.trim_start().starts_with('=') {
                        return Some(i + 1);
                    }
                }
            }
        }
        None
    }

    fn duration(&mut self, key: &str, v: &Option<String>, default: &str) -> Duration {
        let s = v.as_deref().unwrap_or(default);
        match humantime::parse_duration(s.trim()) {
            Ok(d) => d,
            Err(e) => {
                self.push(
                    key,
                    format_args!("invalid duration {s:?} ({e}); use e.g. \"500ms\", \"30s\", \"2m\""),
                );
                humantime::parse_duration(default).unwrap_or_default()
            }
        }
    }

    fn positive_duration(&mut self, key: &str, v: &Option<String>, default: &str) -> Duration {
        let d = self.duration(key, v, default);
        if d.is_zero() {
            self.push(key, "must be greater than 0");
        }
        d
    }

    fn size(&mut self, key: &str, v: &Option<String>, default: &str) -> u64 {
        let s = v.as_deref().unwrap_or(default);
        match s.trim().parse::<bytesize::ByteSize>() {
            Ok(b) => b.as_u64(),
            Err(e) => {
                self.push(key, format_args!("invalid size {s:?} ({e}); use e.g. \"16MiB\""));
                16 << 20
            }
        }
    }

    fn int(&mut self, key: &str, v: Option<i64>, default: i64, min: i64, max: i64) -> i64 {
        let n = v.unwrap_or(default);
        if n < min || n > max {
            self.push(key, format_args!("{n} is out of range ({min}..={max})"));
            return default;
        }
        n
    }

    fn choice<T: Copy>(&mut self, key: &str, v: &Option<String>, default: T, options: &[(&str, T)]) -> T {
        let Some(s) = v else { return default };
        match options.iter().find(|(name, _)| *name == s) {
            Some((_, t)) => *t,
            None => {
                let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
                self.push(key, format_args!("unknown value {s:?}; expected one of {}", names.join(", ")));
                default
            }
        }
    }
}

fn parse_addr(p: &mut Problems<'_>, key: &str, s: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    match s.to_socket_addrs() {
        Ok(mut it) => match it.next() {
            Some(a) => Some(a),
            None => {
                p.push(key, format_args!("{s:?} resolves to no address"));
                None
            }
        },
        Err(e) => {
            p.push(key, format_args!("invalid address {s:?} ({e}); expected host:port"));
            None
        }
    }
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
        let cfg = convert(raw, &mut p);
        if p.list.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError { problems: p.list })
        }
    }
}

/// The TOML type a key must have.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    Bool,
    StrList,
    IntList,
    Table,
    TableList,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Int => "an integer",
            Kind::Bool => "true or false",
            Kind::StrList => "a list of strings",
            Kind::IntList => "a list of integers",
            Kind::Table => "a [section]",
            Kind::TableList => "a list of [[sections]]",
        }
    }

    fn fits(self, v: &toml::Value) -> bool {
        use toml::Value as V;
        match (self, v) {
            (Kind::Str, V::String(_)) | (Kind::Int, V::Integer(_)) | (Kind::Bool, V::Boolean(_)) => true,
            (Kind::Table, V::Table(_)) => true,
            (Kind::StrList, V::Array(a)) => a.iter().all(|x| x.is_str()),
            (Kind::IntList, V::Array(a)) => a.iter().all(|x| x.is_integer()),
            (Kind::TableList, V::Array(a)) => a.iter().all(|x| x.is_table()),
            _ => false,
        }
    }
}

/// Every key the config accepts: `section.key` (list-of-table entries without an index).
const SCHEMA: &[(&str, Kind)] = &[
    ("listen", Kind::Str),
    ("admin_listen", Kind::Str),
    ("shutdown_grace", Kind::Str),
    ("runtime", Kind::Table),
    ("runtime.workers", Kind::Int),
    ("runtime.pin_cores", Kind::Bool),
    ("runtime.cores", Kind::IntList),
    ("runtime.driver", Kind::Str),
    ("backends", Kind::TableList),
    ("backends.url", Kind::Str),
    ("backends.weight", Kind::Int),
    ("backends.models", Kind::StrList),
    ("backends.api_key", Kind::Str),
    ("backends.tls_ca_file", Kind::Str),
    ("backends.tls_client_cert", Kind::Str),
    ("backends.tls_client_key", Kind::Str),
    ("backends.tls_server_name", Kind::Str),
    ("tls", Kind::Table),
    ("tls.cert_file", Kind::Str),
    ("tls.key_file", Kind::Str),
    ("backends.paths", Kind::StrList),
    ("backends.continuous_usage", Kind::Str),
    ("backends.dns_refresh", Kind::Str),
    (access_log::KEYS[0], Kind::Table),
    (access_log::KEYS[1], Kind::Bool),
    (access_log::KEYS[2], Kind::Str),
    ("balancer", Kind::Table),
    ("balancer.strategy", Kind::Str),
    ("limits", Kind::Table),
    ("limits.max_request_body", Kind::Str),
    ("limits.header_read_timeout", Kind::Str),
    ("limits.upstream_connect_timeout", Kind::Str),
    ("limits.upstream_first_byte_timeout", Kind::Str),
    ("limits.stream_idle_timeout", Kind::Str),
    ("limits.max_connections", Kind::Int),
    ("usage_hook", Kind::Table),
    ("usage_hook.enabled", Kind::Bool),
    ("usage_hook.url", Kind::Str),
    ("usage_hook.timeout", Kind::Str),
    ("usage_hook.retry", Kind::Int),
    ("usage_hook.queue_capacity", Kind::Int),
    ("usage_hook.batch_max", Kind::Int),
    ("usage_hook.batch_linger", Kind::Str),
    ("usage_hook.spool_dir", Kind::Str),
    ("usage_hook.replay_interval", Kind::Str),
    ("usage_hook.secret", Kind::Str),
    ("usage_hook.api_key_format", Kind::Str),
    ("usage_hook.include_usage", Kind::Str),
    ("usage_hook.concurrency", Kind::Int),
    (usage_hook::KEYS[0], Kind::Str),
    (usage_hook::KEYS[1], Kind::Str),
    (usage_hook::KEYS[2], Kind::Str),
    (usage_hook::KEYS[3], Kind::Str),
    (usage_hook::KEYS[4], Kind::Str),
    (usage_hook::KEYS[5], Kind::Str),
    ("health_check", Kind::Table),
    ("health_check.interval", Kind::Str),
    ("health_check.path", Kind::Str),
    ("health_check.timeout", Kind::Str),
    ("auth", Kind::Table),
    ("auth.required", Kind::Bool),
    ("auth.user_header", Kind::Str),
    ("auth.keys", Kind::TableList),
    ("auth.keys.key", Kind::Str),
    ("auth.keys.key_sha256", Kind::Str),
    ("auth.keys.user_id", Kind::Str),
    ("routes", Kind::Table),
    ("routes.disabled", Kind::StrList),
];

/// Reports (and removes) unknown keys and values of the wrong type, recursively.
fn check_shape(table: &mut toml::Table, prefix: &str, p: &mut Problems<'_>) {
    let keys: Vec<String> = table.keys().cloned().collect();
    for key in keys {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        let schema_path: String =
            path.split('.').map(|s| s.split('[').next().unwrap_or(s)).collect::<Vec<_>>().join(".");
        let Some(&(_, kind)) = SCHEMA.iter().chain(rate_limit::SCHEMA).find(|(k, _)| *k == schema_path)
        else {
            p.push(&path, "unknown key");
            table.remove(&key);
            continue;
        };
        let Some(value) = table.get_mut(&key) else { continue };
        if !kind.fits(value) {
            p.push(&path, format_args!("must be {}", kind.name()));
            table.remove(&key);
            continue;
        }
        match value {
            toml::Value::Table(t) => check_shape(t, &path, p),
            toml::Value::Array(items) if kind == Kind::TableList => {
                for (i, item) in items.iter_mut().enumerate() {
                    if let toml::Value::Table(t) = item {
                        check_shape(t, &format!("{path}[{i}]"), p);
                    }
                }
            }
            _ => {}
        }
    }
}

fn convert(raw: RawConfig, p: &mut Problems<'_>) -> Config {
    let fallback: SocketAddr = ([127, 0, 0, 1], 8080).into();
    let listen = parse_addr(p, "listen", raw.listen.as_deref().unwrap_or("0.0.0.0:8080")).unwrap_or(fallback);
    let admin_listen = match raw.admin_listen.as_deref() {
        None | Some("") => None,
        Some(s) => parse_addr(p, "admin_listen", s),
    };
    let shutdown_grace = p.duration("shutdown_grace", &raw.shutdown_grace, "30s");

    let r = &raw.runtime;
    let workers = p.int("runtime.workers", r.workers, 0, 0, 1024) as usize;
    let mut cores = Vec::new();
    for c in r.cores.clone().unwrap_or_default() {
        if c < 0 {
            p.push("runtime.cores", format_args!("core id {c} must be >= 0"));
        } else {
            cores.push(c as usize);
        }
    }
    let driver = p.choice(
        "runtime.driver",
        &r.driver,
        DriverChoice::Auto,
        &[("auto", DriverChoice::Auto), ("io_uring", DriverChoice::IoUring), ("epoll", DriverChoice::Epoll)],
    );
    let runtime = RuntimeConfig { workers, pin_cores: r.pin_cores.unwrap_or(true), cores, driver };

    if raw.backends.is_empty() {
        p.push("backends", "at least one [[backends]] entry is required");
    }
    let mut backends = Vec::new();
    for (i, b) in raw.backends.iter().enumerate() {
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
    let strategy = p.choice(
        "balancer.strategy",
        &raw.balancer.strategy,
        Strategy::Weighted,
        &[
            ("round_robin", Strategy::RoundRobin),
            ("weighted", Strategy::Weighted),
            ("least_connections", Strategy::LeastConnections),
        ],
    );

    let l = &raw.limits;
    let limits = Limits {
        max_request_body: p.size("limits.max_request_body", &l.max_request_body, "16MiB"),
        header_read_timeout: p.positive_duration("limits.header_read_timeout", &l.header_read_timeout, "10s"),
        upstream_connect_timeout: p.positive_duration(
            "limits.upstream_connect_timeout",
            &l.upstream_connect_timeout,
            "2s",
        ),
        upstream_first_byte_timeout: p.positive_duration(
            "limits.upstream_first_byte_timeout",
            &l.upstream_first_byte_timeout,
            "300s",
        ),
        stream_idle_timeout: p.positive_duration(
            "limits.stream_idle_timeout",
            &l.stream_idle_timeout,
            "120s",
        ),
        max_connections: p.int("limits.max_connections", l.max_connections, 20000, 1, 10_000_000) as usize,
    };

    let u = &raw.usage_hook;
    let enabled = u.enabled.unwrap_or(true);
    let url = u.url.clone().unwrap_or_else(|| "http://127.0.0.1:3001/llm-usage".to_string());
    let delivery = usage_hook::parse(p, u, enabled, &url);
    let batch_max = p.int("usage_hook.batch_max", u.batch_max, 1, 1, 10_000) as usize;
    let queue_capacity = p.int("usage_hook.queue_capacity", u.queue_capacity, 65536, 1, 100_000_000) as usize;
    let usage_hook = UsageHookConfig {
        enabled,
        url,
        timeout: p.positive_duration("usage_hook.timeout", &u.timeout, "1s"),
        retry: p.int("usage_hook.retry", u.retry, 2, 0, 100) as u32,
        queue_capacity,
        batch_max,
        batch_linger: p.duration("usage_hook.batch_linger", &u.batch_linger, "20ms"),
        spool_dir: PathBuf::from(u.spool_dir.clone().unwrap_or_else(|| "./llmproxy-spool".to_string())),
        replay_interval: p.positive_duration("usage_hook.replay_interval", &u.replay_interval, "5s"),
        secret: u.secret.clone().filter(|s| !s.is_empty()),
        api_key_format: p.choice(
            "usage_hook.api_key_format",
            &u.api_key_format,
            ApiKeyFormat::Redacted,
            &[
                ("full", ApiKeyFormat::Full),
                ("redacted", ApiKeyFormat::Redacted),
                ("sha256", ApiKeyFormat::Sha256),
                ("omit", ApiKeyFormat::Omit),
            ],
        ),
        include_usage: p.choice(
            "usage_hook.include_usage",
            &u.include_usage,
            IncludeUsage::Inject,
            &[("inject", IncludeUsage::Inject), ("passthrough", IncludeUsage::Passthrough)],
        ),
        delivery,
    };
    if usage_hook.spool_dir.as_os_str().is_empty() {
        p.push("usage_hook.spool_dir", "must not be empty: undelivered records wait there");
    }

    let h = &raw.health_check;
    let health_check = HealthCheckConfig {
        interval: p.positive_duration("health_check.interval", &h.interval, "10s"),
        path: h.path.clone().unwrap_or_else(|| "/health".to_string()),
        timeout: p.positive_duration("health_check.timeout", &h.timeout, "1s"),
    };
    if !health_check.path.starts_with('/') {
        p.push("health_check.path", "must start with /");
    }

    let a = &raw.auth;
    let mut keys = Vec::new();
    for (i, k) in a.keys.iter().enumerate() {
        let user_id = match k.user_id.as_deref() {
            Some(u) if !u.is_empty() => u.to_string(),
            _ => {
                p.push(&format!("auth.keys[{i}].user_id"), "missing");
                continue;
            }
        };
        let digest = match (&k.key, &k.key_sha256) {
            (Some(key), None) if !key.is_empty() => Some(crate::auth::sha256(key.as_bytes())),
            (None, Some(hexd)) => match hex::decode(hexd.trim()) {
                Ok(v) if v.len() == 32 => {
                    let mut d = [0u8; 32];
                    d.copy_from_slice(&v);
                    Some(d)
                }
                _ => {
                    p.push(&format!("auth.keys[{i}].key_sha256"), "must be 64 hex digits");
                    None
                }
            },
            (Some(_), Some(_)) => {
                p.push(&format!("auth.keys[{i}]"), "set either key or key_sha256, not both");
                None
            }
            _ => {
                p.push(&format!("auth.keys[{i}].key"), "missing (set key or key_sha256)");
                None
            }
        };
        let raw_limits = rate_limit::RawKeyLimits {
            requests_per_minute: k.requests_per_minute,
            tokens_per_minute: k.tokens_per_minute,
            max_concurrent: k.max_concurrent,
            tokens_per_day: k.tokens_per_day,
        };
        let limits = rate_limit::convert_key(i, &raw_limits, p);
        if let Some(key_sha256) = digest {
            keys.push(AuthKey { key_sha256, user_id, limits });
        }
    }
    if a.required.unwrap_or(false) && keys.is_empty() {
        p.push("auth.required", "is true but no [[auth.keys]] are configured: every request would get 401");
    }
    let auth = AuthConfig {
        required: a.required.unwrap_or(false),
        user_header: a.user_header.clone().unwrap_or_else(|| "x-user-id".to_string()).to_ascii_lowercase(),
        keys,
    };

    let tls = tls::listener(p, &raw.tls);
    let rate_limit = rate_limit::convert(&raw.rate_limit, p);
    let access_log = access_log::convert(&raw.access_log, p);

    Config {
        tls,
        rate_limit,
        access_log,
        listen,
        admin_listen,
        shutdown_grace,
        runtime,
        backends,
        strategy,
        limits,
        usage_hook,
        health_check,
        auth,
        routes: routes::convert(p, &raw.routes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse("[[backends]]\nurl = \"http://127.0.0.1:8000\"\n", "t").unwrap();
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.strategy, Strategy::Weighted);
        assert_eq!(c.limits.max_request_body, 16 << 20);
        assert_eq!(c.backends[0].weight, 1);
        assert_eq!(c.backends[0].host_header, "127.0.0.1:8000");
        assert_eq!(c.usage_hook.include_usage, IncludeUsage::Inject);
    }

    #[test]
    fn every_problem_is_reported_with_key_and_line() {
        let text = "listen = \"nope\"\n[limits]\nheader_read_timeout = \"ten\"\n[balancer]\nstrategy = \"random\"\n[[backends]]\nurl = \"https://x\"\nweight = 0\n";
        let e = Config::parse(text, "c.toml").unwrap_err();
        let all = e.to_string();
        assert!(all.contains("c.toml:1: listen"), "{all}");
        assert!(all.contains("c.toml:3: limits.header_read_timeout"), "{all}");
        assert!(all.contains("balancer.strategy"), "{all}");
        assert!(all.contains("backends[0].url"), "{all}");
        assert!(all.contains("backends[0].weight"), "{all}");
        assert_eq!(e.problems.len(), 5, "{all}");
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_all_reported_with_the_value_errors() {
        let text = "lisen = \"x\"\n[runtime]\nworkers = \"two\"\n[limits]\ntimeout = \"1s\"\nheader_read_timeout = \"ten\"\n[[backends]]\nurl = \"http://127.0.0.1:1\"\nwieght = 2\n";
        let e = Config::parse(text, "c.toml").unwrap_err();
        let all = e.to_string();
        assert!(all.contains("c.toml:1: lisen: unknown key"), "{all}");
        assert!(all.contains("c.toml:3: runtime.workers: must be an integer"), "{all}");
        assert!(all.contains("c.toml:5: limits.timeout: unknown key"), "{all}");
        assert!(all.contains("c.toml:6: limits.header_read_timeout: invalid duration"), "{all}");
        assert!(all.contains("backends[0].wieght: unknown key"), "{all}");
        assert_eq!(e.problems.len(), 5, "{all}");
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let e = Config::parse("lisen = \"x\"\n", "c.toml").unwrap_err();
        assert!(e.to_string().contains("lisen"), "{e}");
    }

    #[test]
    fn backend_url_with_base_path() {
        let c = Config::parse("[[backends]]\nurl = \"http://localhost:9000/openai/\"\n", "t").unwrap();
        assert_eq!(c.backends[0].base_path, "/openai");
        assert_eq!(c.backends[0].url, "http://localhost:9000/openai");
    }
}
