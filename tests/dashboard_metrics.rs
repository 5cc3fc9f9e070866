//! Every metric the Grafana dashboard queries is one the binary really exports: start the gateway,
//! send traffic (stream and not, plus an error), scrape /metrics, and look up each name.

mod common;
use common::*;
use llmproxy::mock::Flavor;

#[test]
fn every_dashboard_metric_is_exported() {
    let dashboard =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/llmproxy-dashboard.json"))
            .unwrap();
    let v: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard is valid JSON");
    assert!(v["panels"].as_array().is_some_and(|p| !p.is_empty()), "dashboard has panels");
    let mut names: Vec<String> = Vec::new();
    let mut rest = dashboard.as_str();
    while let Some(i) = rest.find("llmproxy_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names.sort();
    names.dedup();
    assert!(names.len() >= 10, "dashboard names only {names:?}");

    let b = mock(Flavor::Vllm);
    // Limits on (with room to spare), so that their per-subject gauges are exported too.
    let gw = Gateway::start(&config_for(
        &[b.url()],
        "[rate_limit]\nenabled = true\nrequests_per_minute = 1000000\n",
    ));
    let stream = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"a b c"}]}"#;
    assert_eq!(request(gw.addr, &post("/v1/chat/completions", stream, "")).status, 200);
    assert_eq!(
        request(gw.addr, &post("/v1/chat/completions", r#"{"model":"m","messages":[]}"#, "")).status,
        200
    );
    assert_eq!(request(gw.addr, &get("/nope")).status, 404);
    // Token counters are kept by the webhook thread: wait until they show.
    let mut metrics = String::new();
    eventually(10, "tokens in /metrics", || {
        metrics = request(gw.addr, &get("/metrics")).text();
        metrics.contains("llmproxy_tokens_total{") && metrics.contains("llmproxy_rate_limit_remaining{")
    });
    for name in &names {
        let exported = metrics.lines().any(|l| {
            !l.starts_with('#') && (l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{")))
        });
        assert!(exported, "dashboard uses {name}, which /metrics does not export:\n{metrics}");
    }
}
