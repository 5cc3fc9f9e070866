//! Issue 16's table through the real binary and a vLLM-like mock (which reads bodies with
//! serde_json: escapes decoded, last duplicate wins): each body is either refused with a 400 naming
//! the field before any backend sees it, or metered with the stream flag, model and tokens the
//! backend served; a client that asked for usage with an escaped key receives its usage chunk.

mod common;
mod metering_util;

use common::*;
use llmproxy::mock::Flavor;
use metering_util::*;
use serde_json::Value;
use std::time::Duration;

const CHAT: &str = "/v1/chat/completions";
/// Completion tokens of `common::mock` backends.
const TOKENS: u64 = 5;
const MESSAGES: &str = r#""messages":[{"role":"user","content":"a b"}]"#;

/// The last proxied request the backend received.
fn last_request(b: &llmproxy::mock::MockBackend) -> Option<llmproxy::mock::RecordedRequest> {
    // POSTs only: the health thread reads GET /v1/models (continuous-usage learning).
    b.requests().into_iter().rfind(|r| r.path.starts_with("/v1/") && r.method == "POST")
}

/// The usage object of a response as the client got it: the JSON body's, or the last stream
/// event's that has one.
fn client_usage(resp: &Response) -> Option<Value> {
    if resp.header("content-type").is_some_and(|c| c.starts_with("text/event-stream")) {
        resp.sse_data()
            .iter()
            .rev()
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .find_map(|v| v.get("usage").filter(|u| u.is_object()).cloned())
    } else {
        resp.json().get("usage").cloned()
    }
}

#[test]
fn lax_spellings_are_refused_before_any_backend_sees_them() {
    let b = mock(Flavor::Vllm);
    let r = Receiver::start();
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "")));
    let mut refused = 0;
    for (field, value) in [
        ("stream", "1"),
        ("stream", "1.0"),
        ("stream", "\"true\""),
        ("stream", "\"on\""),
        ("max_tokens", "16.0"),
        ("n", "\"2\""),
        ("model", "5"),
    ] {
        let body = format!(r#"{{"model":"m","{field}":{value},{MESSAGES}}}"#);
        let resp = request(gw.addr, &post(CHAT, &body, ""));
        assert_eq!(resp.status, 400, "{body}: {}", resp.text());
        let msg = resp.json()["error"]["message"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains(&format!("\"{field}\"")), "{body}: message does not name the field: {msg}");
        refused += 1;
    }
    for body in [
        format!(r#"{{"Stream":true,{MESSAGES}}}"#),
        format!(r#"{{"stream":true,"stream_options":{{"include_usage":"yes"}},{MESSAGES}}}"#),
    ] {
        let resp = request(gw.addr, &post(CHAT, &body, ""));
        assert_eq!(resp.status, 400, "{body}: {}", resp.text());
        refused += 1;
    }
    assert_eq!(hits(&b, CHAT), 0, "a refused body reached the backend");
    // Refusals make no record: the next request's record is the only one delivered.
    let resp = request(gw.addr, &post(CHAT, &format!(r#"{{"model":"m",{MESSAGES}}}"#), ""));
    assert_eq!(resp.status, 200);
    record_for(&r, &rid(&resp));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(r.delivered().len(), 1, "{refused} refusals made records: {:?}", r.delivered());
}

#[test]
fn escaped_keys_are_metered_as_the_backend_served_them() {
    let b = mock(Flavor::Vllm);
    let r = Receiver::start();
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "")));

    // "str\u0065am": the backend streams; the gateway meters a stream with the backend's usage.
    let body = format!(r#"{{"model":"m","str\u0065am":true,{MESSAGES}}}"#);
    let resp = request(gw.addr, &post(CHAT, &body, ""));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(resp.header("content-type").is_some_and(|c| c.starts_with("text/event-stream")), "not streamed");
    let sent = last_request(&b).and_then(|q| q.json()).expect("backend saw a JSON body");
    assert_eq!(sent["stream_options"]["include_usage"], true, "usage not asked of the backend: {sent}");
    assert!(client_usage(&resp).is_none(), "the injected usage chunk reached the client: {}", resp.text());
    let rec = record_for(&r, &rid(&resp));
    assert_eq!(rec["is_stream"], true, "{rec}");
    assert_ne!(rec["usage_missing"], true, "{rec}");
    assert_eq!(rec_tokens(&rec), (2, TOKENS, 2 + TOKENS), "{rec}");

    // "mod\u0065l": the model the backend served is the record's model.
    let body = format!(r#"{{"mod\u0065l":"gpt-expensive",{MESSAGES}}}"#);
    let resp = request(gw.addr, &post(CHAT, &body, ""));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let served = resp.json();
    assert_eq!(served["model"], "gpt-expensive");
    let rec = record_for(&r, &rid(&resp));
    assert_eq!(rec["model"], served["model"], "{rec}");
    assert_eq!(rec["is_stream"], false, "{rec}");
    assert_eq!(rec_tokens(&rec), body_usage(&served), "{rec}");

    // Duplicates: the last one wins, for the backend and the gateway alike.
    let body =
        format!(r#"{{"model":"cheap","stream":true,"model":"gpt-expensive","stream":false,{MESSAGES}}}"#);
    let resp = request(gw.addr, &post(CHAT, &body, ""));
    let served = resp.json();
    let rec = record_for(&r, &rid(&resp));
    assert_eq!((&rec["model"], &rec["is_stream"]), (&served["model"], &Value::Bool(false)), "{rec}");
    assert_eq!(rec_tokens(&rec), body_usage(&served), "{rec}");
}

#[test]
fn a_client_asking_for_usage_with_an_escaped_key_receives_its_usage_chunk() {
    // Not vLLM: a backend learned to report continuous usage gets continuous_usage_stats added.
    let b = mock(Flavor::Openai);
    let r = Receiver::start();
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "")));
    let body =
        format!(r#"{{"model":"m","stream":true,"stream_options":{{"include_us\u0061ge":true}},{MESSAGES}}}"#);
    let resp = request(gw.addr, &post(CHAT, &body, ""));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(last_request(&b).unwrap().body, body.as_bytes(), "the body was modified");
    let usage =
        client_usage(&resp).unwrap_or_else(|| panic!("no usage chunk for the client: {}", resp.text()));
    assert_eq!(usage["prompt_tokens"], 2);
    assert_eq!(usage["completion_tokens"], TOKENS);
    let rec = record_for(&r, &rid(&resp));
    assert_eq!(rec["is_stream"], true, "{rec}");
    assert_eq!(rec_tokens(&rec), (2, TOKENS, 2 + TOKENS), "{rec}");
}
