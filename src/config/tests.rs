//! Unit tests of config parsing: defaults, every problem reported with its key and line.

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

/// Values that parse but that no gateway means (and whose arithmetic would overflow: `Instant +`
/// a 300-billion-year timeout panicked on the first connection) are problems too; a year and a
/// GiB are still accepted.
#[test]
fn absurd_durations_and_sizes_are_problems() {
    let text = "[limits]\nheader_read_timeout = \"300000000000y\"\nmax_request_body = \"2GiB\"\n[health_check]\ninterval = \"366d\"\n[[backends]]\nurl = \"http://127.0.0.1:1\"\n";
    let e = Config::parse(text, "c.toml").unwrap_err();
    let all = e.to_string();
    assert!(
        all.contains("c.toml:2: limits.header_read_timeout: \"300000000000y\" is longer than a year"),
        "{all}"
    );
    assert!(
        all.contains("c.toml:3: limits.max_request_body: \"2GiB\" is more than the most allowed"),
        "{all}"
    );
    assert!(all.contains("health_check.interval: \"366d\" is longer than a year"), "{all}");
    assert_eq!(e.problems.len(), 3, "{all}");
    let ok = "[limits]\nheader_read_timeout = \"365d\"\nmax_request_body = \"1GiB\"\n[[backends]]\nurl = \"http://127.0.0.1:1\"\n";
    let c = Config::parse(ok, "c.toml").unwrap();
    assert_eq!(c.limits.max_request_body, 1 << 30);
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
