//! The shipped example configs must load with the real parser: `config.example.toml` at the repo root
//! (with the documented defaults) and the rendered-config example kept in the Helm chart's values.yaml.

use llmproxy::config::{ApiKeyFormat, Config, DriverChoice, IncludeUsage, Strategy};
use std::path::Path;
use std::time::Duration;

fn repo_file(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn example_config_loads_with_documented_defaults() {
    let c = Config::load(&repo_file("config.example.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
    assert!(c.admin_listen.is_none());
    assert_eq!(c.shutdown_grace, Duration::from_secs(30));

    assert_eq!(c.runtime.workers, 0);
    assert!(c.runtime.pin_cores);
    assert!(c.runtime.cores.is_empty());
    assert_eq!(c.runtime.driver, DriverChoice::Auto);

    assert_eq!(c.backends.len(), 1);
    assert_eq!(c.backends[0].url, "http://127.0.0.1:8000");
    assert_eq!(c.backends[0].weight, 1);
    assert!(c.backends[0].models.is_empty());
    assert!(c.backends[0].api_key.is_none());
    assert_eq!(c.backends[0].dns_refresh, Duration::from_secs(30));
    assert_eq!(c.strategy, Strategy::Weighted);

    assert_eq!(c.limits.max_request_body, 16 * 1024 * 1024);
    assert_eq!(c.limits.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.upstream_connect_timeout, Duration::from_secs(2));
    assert_eq!(c.limits.upstream_first_byte_timeout, Duration::from_secs(300));
    assert_eq!(c.limits.stream_idle_timeout, Duration::from_secs(120));
    assert_eq!(c.limits.max_connections, 20000);

    let u = &c.usage_hook;
    assert!(u.enabled);
    assert_eq!(u.url, "http://127.0.0.1:3001/llm-usage");
    assert_eq!(u.timeout, Duration::from_secs(1));
    assert_eq!(u.retry, 2);
    assert_eq!(u.queue_capacity, 65536);
    assert_eq!(u.batch_max, 1);
    assert_eq!(u.batch_linger, Duration::from_millis(20));
    assert_eq!(u.spool_dir, Path::new("./llmproxy-spool"));
    assert_eq!(u.replay_interval, Duration::from_secs(5));
    assert!(u.secret.is_none());
    assert_eq!(u.api_key_format, ApiKeyFormat::Redacted);
    assert_eq!(u.include_usage, IncludeUsage::Inject);

    assert_eq!(c.health_check.interval, Duration::from_secs(10));
    assert_eq!(c.health_check.path, "/health");
    assert_eq!(c.health_check.timeout, Duration::from_secs(1));

    assert!(!c.auth.required);
    assert_eq!(c.auth.user_header, "x-user-id");
    assert!(c.auth.keys.is_empty());
    assert_eq!(c.routes.disabled, llmproxy::endpoints::PathSet::NONE);
    assert_eq!(c.backends[0].paths, llmproxy::endpoints::PathSet::ALL);

    let r = &c.rate_limit;
    assert!(!r.enabled);
    assert_eq!(r.store, llmproxy::config::Store::Local);
    assert_eq!(r.redis_url, "redis://127.0.0.1:6379/0");
    assert_eq!(r.sync_interval, Duration::from_millis(50));
    assert_eq!(r.on_store_error, llmproxy::config::OnStoreError::Local);
    assert!(r.defaults.is_unlimited());
}

/// A commented-out `key = value` or `[[table]]` line of the example, without its `# `.
fn commented_setting(line: &str) -> Option<&str> {
    let body = line.strip_prefix("# ")?;
    if body.starts_with("[[") {
        return Some(body);
    }
    let (key, _) = body.split_once(" = ")?;
    key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_').then_some(body)
}

/// The example config with its commented-out entries enabled must load too.
#[test]
fn example_config_commented_entries_are_valid() {
    let text = std::fs::read_to_string(repo_file("config.example.toml")).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(commented_setting(line).unwrap_or(line));
        out.push('\n');
    }
    let c = Config::parse(&out, "config.example.toml (uncommented)").unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(c.backends.len(), 2);
    assert_eq!(c.backends[1].weight, 5);
    assert_eq!(c.auth.keys.len(), 2);
    assert_eq!(c.auth.keys[1].limits.tokens_per_day, Some(5_000_000));
}

const BEGIN: &str = "# --- BEGIN config.toml example ---";
const END: &str = "# --- END config.toml example ---";

/// The TOML between the marker lines of values.yaml, each line stripped of its `# ` prefix.
fn helm_example() -> String {
    let values = std::fs::read_to_string(repo_file("deploy/helm/llmproxy/values.yaml")).unwrap();
    let start = values.find(BEGIN).expect("BEGIN marker in values.yaml") + BEGIN.len();
    let end = values[start..].find(END).expect("END marker in values.yaml") + start;
    let mut toml = String::new();
    for line in values[start..end].lines().skip(1) {
        let t = line.trim_start();
        let body = t.strip_prefix("# ").or_else(|| t.strip_prefix('#')).unwrap_or_else(|| {
            panic!("line inside the config example is not a comment: {line:?}");
        });
        toml.push_str(body);
        toml.push('\n');
    }
    toml
}

/// Backend host names are resolved when the config loads; the chart's example names cluster
/// Services that do not resolve here, so point them at loopback (same port and path) first.
fn with_loopback_backends(toml: &str) -> String {
    let mut out = String::new();
    let mut in_backend = false;
    for line in toml.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_backend = t == "[[backends]]";
        }
        if in_backend && t.starts_with("url") {
            let url = t.split('"').nth(1).expect("quoted url");
            let rest = url.strip_prefix("http://").expect("http url");
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let port = authority.rsplit_once(':').map(|(_, p)| p).unwrap_or("80");
            out.push_str(&format!("url = \"http://127.0.0.1:{port}{path}\"\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn helm_values_config_example_parses() {
    let toml = helm_example();
    assert!(toml.contains("[[backends]]"), "example has no backend:\n{toml}");
    let c = Config::parse(&with_loopback_backends(&toml), "values.yaml config example")
        .unwrap_or_else(|e| panic!("{e}\n---\n{toml}"));
    assert_eq!(c.listen.port(), 8080);
    assert_eq!(c.usage_hook.spool_dir, Path::new("/var/lib/llmproxy/spool"));
    assert!(!c.backends.is_empty());
}

/// The config baked into the image and the one of the compose stacks load too (their backend
/// names only resolve inside Docker, so they point at loopback here).
#[test]
fn docker_and_compose_configs_parse() {
    for rel in ["deploy/docker/config.toml", "deploy/compose/llmproxy.toml"] {
        let text = std::fs::read_to_string(repo_file(rel)).unwrap();
        let c = Config::parse(&with_loopback_backends(&text), rel).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.usage_hook.spool_dir, Path::new("/var/lib/llmproxy/spool"), "{rel}");
        assert_eq!(c.listen.port(), 8080, "{rel}");
    }
}
