//! `[rate_limit]` and the per-key limits of `[[auth.keys]]`: the raw TOML shape and its validated
//! form (CONTRACT section 8). Part of config loading; no I/O (a redis URL is parsed, never dialled).

use super::Problems;
use serde::Deserialize;
use std::time::Duration;

/// Where the counts live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// This process's counts only.
    Local,
    /// Counts shared by every gateway on the same Redis (leased from it by the sync thread).
    Redis,
}

/// What limited subjects get while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Go on with this gateway's own counts.
    Local,
    /// 503 for limited subjects.
    Deny,
}

/// The four limits of one subject; 0 = no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitSet {
    pub requests_per_minute: u64,
    pub tokens_per_minute: u64,
    pub max_concurrent: u64,
    pub tokens_per_day: u64,
}

impl LimitSet {
    pub fn is_unlimited(&self) -> bool {
        *self == LimitSet::default()
    }
}

/// A key's own limits: each one set overrides the `[rate_limit]` default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub requests_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent: Option<u64>,
    pub tokens_per_day: Option<u64>,
}

impl KeyLimits {
    pub fn resolve(&self, d: &LimitSet) -> LimitSet {
        LimitSet {
            requests_per_minute: self.requests_per_minute.unwrap_or(d.requests_per_minute),
            tokens_per_minute: self.tokens_per_minute.unwrap_or(d.tokens_per_minute),
            max_concurrent: self.max_concurrent.unwrap_or(d.max_concurrent),
            tokens_per_day: self.tokens_per_day.unwrap_or(d.tokens_per_day),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub enabled: bool,
    pub store: Store,
    pub redis_url: String,
    pub sync_interval: Duration,
    pub on_store_error: OnStoreError,
    /// Limits of every subject that has no key entry setting its own.
    pub defaults: LimitSet,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRateLimit {
    enabled: Option<bool>,
    store: Option<String>,
    redis_url: Option<String>,
    sync_interval: Option<String>,
    on_store_error: Option<String>,
    requests_per_minute: Option<i64>,
    tokens_per_minute: Option<i64>,
    max_concurrent: Option<i64>,
    tokens_per_day: Option<i64>,
}

/// The per-key limit fields of a raw `[[auth.keys]]` entry.
#[derive(Debug, Deserialize, Default, Clone, Copy)]
pub(super) struct RawKeyLimits {
    pub requests_per_minute: Option<i64>,
    pub tokens_per_minute: Option<i64>,
    pub max_concurrent: Option<i64>,
    pub tokens_per_day: Option<i64>,
}

/// Schema entries for `check_shape` (the same four limit keys go on `auth.keys` entries).
pub(super) const SCHEMA: &[(&str, super::Kind)] = &[
    ("rate_limit", super::Kind::Table),
    ("rate_limit.enabled", super::Kind::Bool),
    ("rate_limit.store", super::Kind::Str),
    ("rate_limit.redis_url", super::Kind::Str),
    ("rate_limit.sync_interval", super::Kind::Str),
    ("rate_limit.on_store_error", super::Kind::Str),
    ("rate_limit.requests_per_minute", super::Kind::Int),
    ("rate_limit.tokens_per_minute", super::Kind::Int),
    ("rate_limit.max_concurrent", super::Kind::Int),
    ("rate_limit.tokens_per_day", super::Kind::Int),
    ("auth.keys.requests_per_minute", super::Kind::Int),
    ("auth.keys.tokens_per_minute", super::Kind::Int),
    ("auth.keys.max_concurrent", super::Kind::Int),
    ("auth.keys.tokens_per_day", super::Kind::Int),
];

/// Largest accepted limit (fits the signed counters with room for reservations).
const MAX_LIMIT: i64 = 1 << 50;

fn limit(p: &mut Problems<'_>, key: &str, v: Option<i64>) -> Option<u64> {
    let n = v?;
    if n < 0 {
        p.push(key, format_args!("{n} is negative; use 0 for no limit"));
        return None;
    }
    if n > MAX_LIMIT {
        p.push(key, format_args!("{n} is too large (at most {MAX_LIMIT})"));
        return None;
    }
    Some(n as u64)
}

pub(super) fn convert(r: &RawRateLimit, p: &mut Problems<'_>) -> RateLimitConfig {
    let store = p.choice(
        "rate_limit.store",
        &r.store,
        Store::Local,
        &[("local", Store::Local), ("redis", Store::Redis)],
    );
    let redis_url = r.redis_url.clone().unwrap_or_else(|| "redis://127.0.0.1:6379/0".to_string());
    if let Err(e) = redis::Client::open(redis_url.as_str()) {
        p.push(
            "rate_limit.redis_url",
            format_args!("{redis_url:?} is not a redis URL ({e}); use e.g. \"redis://127.0.0.1:6379/0\""),
        );
    }
    let sync_interval = p.positive_duration("rate_limit.sync_interval", &r.sync_interval, "50ms");
    let on_store_error = p.choice(
        "rate_limit.on_store_error",
        &r.on_store_error,
        OnStoreError::Local,
        &[("local", OnStoreError::Local), ("deny", OnStoreError::Deny)],
    );
    let defaults = LimitSet {
        requests_per_minute: limit(p, "rate_limit.requests_per_minute", r.requests_per_minute).unwrap_or(0),
        tokens_per_minute: limit(p, "rate_limit.tokens_per_minute", r.tokens_per_minute).unwrap_or(0),
        max_concurrent: limit(p, "rate_limit.max_concurrent", r.max_concurrent).unwrap_or(0),
        tokens_per_day: limit(p, "rate_limit.tokens_per_day", r.tokens_per_day).unwrap_or(0),
    };
    RateLimitConfig {
        enabled: r.enabled.unwrap_or(false),
        store,
        redis_url,
        sync_interval,
        on_store_error,
        defaults,
    }
}

pub(super) fn convert_key(i: usize, r: &RawKeyLimits, p: &mut Problems<'_>) -> KeyLimits {
    let k = |f: &str| format!("auth.keys[{i}].{f}");
    KeyLimits {
        requests_per_minute: limit(p, &k("requests_per_minute"), r.requests_per_minute),
        tokens_per_minute: limit(p, &k("tokens_per_minute"), r.tokens_per_minute),
        max_concurrent: limit(p, &k("max_concurrent"), r.max_concurrent),
        tokens_per_day: limit(p, &k("tokens_per_day"), r.tokens_per_day),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const B: &str = "[[backends]]\nurl = \"http://127.0.0.1:8000\"\n";

    #[test]
    fn defaults_and_per_key_overrides() {
        let text = format!("[rate_limit]\nenabled = true\nrequests_per_minute = 10\n[auth]\n[[auth.keys]]\nkey = \"sk-a\"\nuser_id = \"a\"\ntokens_per_day = 500\nrequests_per_minute = 0\n{B}");
        let c = Config::parse(&text, "t").unwrap();
        assert!(c.rate_limit.enabled);
        assert_eq!(c.rate_limit.defaults.requests_per_minute, 10);
        let k = c.auth.keys[0].limits.resolve(&c.rate_limit.defaults);
        assert_eq!(k.requests_per_minute, 0);
        assert_eq!(k.tokens_per_day, 500);
        assert_eq!(c.rate_limit.sync_interval, std::time::Duration::from_millis(50));
    }

    #[test]
    fn nonsense_is_reported_all_at_once() {
        let text = format!("[rate_limit]\nstore = \"memcached\"\nredis_url = \"http://nope\"\nrequests_per_minute = -1\nsync_interval = \"0s\"\non_store_error = \"retry\"\n[auth]\n[[auth.keys]]\nkey = \"sk-a\"\nuser_id = \"a\"\nmax_concurrent = -2\n{B}");
        let e = Config::parse(&text, "c.toml").unwrap_err();
        let all = e.to_string();
        assert!(all.contains("c.toml:2: rate_limit.store: unknown value"), "{all}");
        assert!(all.contains("c.toml:3: rate_limit.redis_url"), "{all}");
        assert!(all.contains("c.toml:4: rate_limit.requests_per_minute: -1 is negative"), "{all}");
        assert!(all.contains("rate_limit.sync_interval: must be greater than 0"), "{all}");
        assert!(all.contains("rate_limit.on_store_error: unknown value"), "{all}");
        assert!(all.contains("auth.keys[0].max_concurrent: -2 is negative"), "{all}");
        assert_eq!(e.problems.len(), 6, "{all}");
    }
}
