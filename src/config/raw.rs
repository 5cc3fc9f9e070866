//! The raw TOML shape of the config file: what serde reads (unknown keys rejected), before
//! `convert.rs` validates it into `Config`. Main thread, at load and reload.

use super::{access_log, rate_limit, routes, tls};
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) listen: Option<String>,
    pub(super) admin_listen: Option<String>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) runtime: RawRuntime,
    pub(super) backends: Vec<RawBackend>,
    pub(super) balancer: RawBalancer,
    pub(super) limits: RawLimits,
    pub(super) usage_hook: RawUsageHook,
    pub(super) health_check: RawHealthCheck,
    pub(super) auth: RawAuth,
    pub(super) tls: tls::RawTls,
    pub(super) routes: routes::RawRoutes,
    pub(super) rate_limit: rate_limit::RawRateLimit,
    pub(super) access_log: access_log::RawAccessLog,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRuntime {
    pub(super) workers: Option<i64>,
    pub(super) pin_cores: Option<bool>,
    pub(super) cores: Option<Vec<i64>>,
    pub(super) driver: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBackend {
    pub(super) url: Option<String>,
    pub(super) weight: Option<i64>,
    pub(super) models: Option<Vec<String>>,
    pub(super) api_key: Option<String>,
    pub(super) tls_ca_file: Option<String>,
    pub(super) tls_client_cert: Option<String>,
    pub(super) tls_client_key: Option<String>,
    pub(super) tls_server_name: Option<String>,
    pub(super) paths: Option<Vec<String>>,
    pub(super) continuous_usage: Option<String>,
    pub(super) dns_refresh: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBalancer {
    pub(super) strategy: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    pub(super) max_request_body: Option<String>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) upstream_connect_timeout: Option<String>,
    pub(super) upstream_first_byte_timeout: Option<String>,
    pub(super) stream_idle_timeout: Option<String>,
    pub(super) max_connections: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawUsageHook {
    pub(super) enabled: Option<bool>,
    pub(super) url: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) retry: Option<i64>,
    pub(super) queue_capacity: Option<i64>,
    pub(super) batch_max: Option<i64>,
    pub(super) batch_linger: Option<String>,
    pub(super) spool_dir: Option<String>,
    pub(super) replay_interval: Option<String>,
    pub(super) secret: Option<String>,
    pub(super) api_key_format: Option<String>,
    pub(super) include_usage: Option<String>,
    pub(super) crash_window: Option<String>,
    pub(super) concurrency: Option<i64>,
    pub(super) tls_ca_file: Option<String>,
    pub(super) format: Option<String>,
    pub(super) sink: Option<String>,
    pub(super) nats_url: Option<String>,
    pub(super) nats_subject: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHealthCheck {
    pub(super) interval: Option<String>,
    pub(super) path: Option<String>,
    pub(super) timeout: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAuth {
    pub(super) required: Option<bool>,
    pub(super) user_header: Option<String>,
    pub(super) keys: Vec<RawAuthKey>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAuthKey {
    pub(super) key: Option<String>,
    pub(super) key_sha256: Option<String>,
    pub(super) user_id: Option<String>,
    pub(super) requests_per_minute: Option<i64>,
    pub(super) tokens_per_minute: Option<i64>,
    pub(super) max_concurrent: Option<i64>,
    pub(super) tokens_per_day: Option<i64>,
}
