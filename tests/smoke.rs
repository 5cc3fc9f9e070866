//! Smoke test of the harness: real binary, simulated backend, one stream and one JSON request.

mod common;
use common::*;
use llmproxy::mock::Flavor;

#[test]
fn stream_and_json_through_the_real_binary() {
    let b = mock(Flavor::Vllm);
    let gw = Gateway::start(&config_for(&[b.url()], ""));
    let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi there"}]}"#;
    let r = request(gw.addr, &post("/v1/chat/completions", body, ""));
    assert_eq!(r.status, 200);
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(
        !r.text().contains("\"choices\":[]"),
        "injected usage chunk must not reach the client: {}",
        r.text()
    );
    let r = request(gw.addr, &post("/v1/chat/completions", r#"{"model":"m","messages":[]}"#, ""));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["usage"]["completion_tokens"], 5);
}
