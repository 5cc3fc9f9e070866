//! SIGHUP reload through the real binary, for what other threads own: per-key and default rate
//! limits apply to the next request; the webhook's url, secret and format move to the new values
//! for the next batch; a webhook setting that cannot be used (a missing CA file) changes nothing.

mod common;
use common::receiver::Receiver;
use common::*;
use llmproxy::mock::Flavor;
use std::time::Duration;

const CHAT: &str = "/v1/chat/completions";

fn call(gw: &Gateway, key: Option<&str>) -> u16 {
    let h = key.map_or(String::new(), |k| format!("authorization: Bearer {k}\r\n"));
    request(gw.addr, &post(CHAT, &chat("m"), &h)).status
}

#[test]
fn new_per_key_and_default_limits_apply_to_the_next_request() {
    let a = mock(Flavor::Vllm);
    let limits = |key_rpm: u32, default_rpm: u32| {
        format!(
            "[rate_limit]\nenabled = true\nrequests_per_minute = {default_rpm}\n[auth]\n[[auth.keys]]\nkey = \"sk-a\"\nuser_id = \"alice\"\nrequests_per_minute = {key_rpm}\n"
        )
    };
    let gw = Gateway::start(&config_for(&[a.url()], &limits(1, 1)));
    assert_eq!(call(&gw, Some("sk-a")), 200);
    assert_eq!(call(&gw, Some("sk-a")), 429, "the key's limit of 1 a minute");
    assert_eq!(call(&gw, None), 200);
    assert_eq!(call(&gw, None), 429, "the default limit of 1 a minute");

    gw.rewrite_config(&config_for(&[a.url()], &limits(5, 5)));
    assert!(gw.reload(), "{}", gw.log_text());
    assert_eq!(call(&gw, Some("sk-a")), 200, "the key's new limit applies at once");
    assert_eq!(call(&gw, None), 200, "the new default applies at once");

    // Unchanged limits keep their counts across a reload: 5 a minute, 1 used.
    assert!(gw.reload(), "{}", gw.log_text());
    for _ in 0..4 {
        assert_eq!(call(&gw, Some("sk-a")), 200);
    }
    assert_eq!(call(&gw, Some("sk-a")), 429, "the count survived a reload that did not change the limit");

    // A store change needs a restart: logged, and the limits keep working.
    let next = config_for(&[a.url()], &limits(5, 5))
        .replace("enabled = true\n", "enabled = true\nstore = \"redis\"\n");
    gw.rewrite_config(&next);
    assert!(gw.reload(), "{}", gw.log_text());
    assert!(gw.log_text().contains("reload: rate_limit (enabled, store"), "{}", gw.log_text());
    assert_eq!(call(&gw, Some("sk-a")), 429);
}

fn hook(url: &str, secret: &str, format: &str) -> String {
    format!(
        "[usage_hook]\nurl = \"{url}\"\nsecret = \"{secret}\"\nformat = \"{format}\"\nbatch_linger = \"10ms\"\nspool_dir = \"@SPOOL@\"\n"
    )
}

#[test]
fn the_webhook_moves_to_the_new_url_secret_and_format() {
    let a = mock(Flavor::Vllm);
    let r1 = Receiver::start();
    r1.require_signature("one");
    let r2 = Receiver::start();
    r2.require_signature("two");
    let gw = Gateway::start(&config_for(&[a.url()], &hook(&r1.url(), "one", "record")));
    assert_eq!(call(&gw, None), 200);
    assert!(r1.wait_for(1, Duration::from_secs(20)), "first record delivered to the first url");

    gw.rewrite_config(&config_for(&[a.url()], &hook(&r2.url(), "two", "cloudevents")));
    assert!(gw.reload(), "{}", gw.log_text());
    assert_eq!(call(&gw, None), 200);
    assert!(
        r2.wait_for(1, Duration::from_secs(20)),
        "record delivered to the new url, signed with the new secret"
    );
    let body = String::from_utf8_lossy(&r2.hits()[0].body).to_string();
    assert!(body.contains("specversion"), "the new format (CloudEvents): {body}");
    assert_eq!(r1.delivered().len(), 1, "nothing more went to the old url");
    assert!(r2.hits().iter().all(|h| h.status == 200), "every batch carried the new signature");
}

#[test]
fn a_webhook_setting_that_cannot_be_used_changes_nothing() {
    let a = mock(Flavor::Vllm);
    let b = mock(Flavor::Vllm);
    let r1 = Receiver::start();
    let gw = Gateway::start(&config_for(&[a.url()], &hook(&r1.url(), "one", "record")));
    let bad = config_for(&[b.url()], &hook("https://127.0.0.1:1/x", "one", "record"))
        .replace("[usage_hook]\n", "[usage_hook]\ntls_ca_file = \"/nonexistent/ca.pem\"\n");
    gw.rewrite_config(&bad);
    assert!(!gw.reload(), "refused");
    assert!(gw.log_text().contains("usage_hook.tls_ca_file"), "{}", gw.log_text());
    assert_eq!(call(&gw, None), 200);
    assert_eq!((hits(&a, CHAT), hits(&b, CHAT)), (1, 0), "the running config stays in use");
    assert!(r1.wait_for(1, Duration::from_secs(20)), "records still go to the running url");
    let m = metrics(gw.addr);
    assert_eq!(metric(&m, "llmproxy_config_reloads_total{result=\"error\"}"), Some(1.0), "{m}");
}
