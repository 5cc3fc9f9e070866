//! The shape every config key must have (`SCHEMA`): unknown keys and values of the wrong type
//! are reported, all at once, and removed before the values are read. Main thread.

use super::Problems;

/// The TOML type a key must have.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
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
    (super::access_log::KEYS[0], Kind::Table),
    (super::access_log::KEYS[1], Kind::Bool),
    (super::access_log::KEYS[2], Kind::Str),
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
    (super::usage_hook::KEYS[0], Kind::Str),
    (super::usage_hook::KEYS[1], Kind::Str),
    (super::usage_hook::KEYS[2], Kind::Str),
    (super::usage_hook::KEYS[3], Kind::Str),
    (super::usage_hook::KEYS[4], Kind::Str),
    (super::usage_hook::KEYS[5], Kind::Str),
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
pub(super) fn check_shape(table: &mut toml::Table, prefix: &str, p: &mut Problems<'_>) {
    let keys: Vec<String> = table.keys().cloned().collect();
    for key in keys {
        let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        let schema_path: String =
            path.split('.').map(|s| s.split('[').next().unwrap_or(s)).collect::<Vec<_>>().join(".");
        let Some(&(_, kind)) =
            SCHEMA.iter().chain(super::rate_limit::SCHEMA).find(|(k, _)| *k == schema_path)
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
