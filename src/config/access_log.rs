//! `[access_log]` (CONTRACT section 9): `enabled`, `path` ("-" = stderr, else a file reopened on
//! SIGHUP). Parsed with the rest of the config on the main thread.

use super::Problems;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub enabled: bool,
    /// "-" = stderr, else a file opened for appending.
    pub path: String,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig { enabled: false, path: "-".to_string() }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAccessLog {
    enabled: Option<bool>,
    path: Option<String>,
}

/// The keys of `[access_log]`, for the config schema.
pub(super) const KEYS: [&str; 3] = ["access_log", "access_log.enabled", "access_log.path"];

pub(super) fn convert(raw: &RawAccessLog, p: &mut Problems<'_>) -> AccessLogConfig {
    let path = raw.path.clone().unwrap_or_else(|| "-".to_string());
    if path.is_empty() {
        p.push("access_log.path", "must not be empty: use \"-\" for stderr or a file path");
    }
    AccessLogConfig { enabled: raw.enabled.unwrap_or(false), path }
}
