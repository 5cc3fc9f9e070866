//! RawConfig -> Config: every section's values read and checked, each problem named by its key
//! (backends in `backends.rs`, auth keys in `auth.rs`, newer sections in their own files). Main
//! thread.

use super::problems::parse_addr;
use super::raw::RawConfig;
use super::*;

/// The largest `limits.max_request_body`: a body is held in memory while it is read and routed.
const MAX_REQUEST_BODY: u64 = 1 << 30;

pub(super) fn convert(raw: RawConfig, p: &mut Problems<'_>) -> Config {
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

    let backends = backends::convert(p, &raw.backends);
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
        max_request_body: p.size("limits.max_request_body", &l.max_request_body, "16MiB", MAX_REQUEST_BODY),
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

    let auth = auth::convert(p, &raw.auth);

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
