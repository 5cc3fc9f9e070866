//! Usage metering end to end through the real binary: one record per request with the backend's own
//! token counts for every simulated flavour and endpoint, include_usage injection, missing usage,
//! auth and user ids, signed delivery, client disconnects, and the token metrics.

mod common;
mod metering_util;

use common::*;
use llmproxy::mock::Flavor;
use metering_util::*;
use serde_json::Value;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

/// Completion tokens per choice of `common::mock` backends.
const TOKENS: u64 = 5;

struct Case {
    path: &'static str,
    body: String,
    stream: bool,
    /// (prompt, completion) the mock reports, from its deterministic counts.
    want: (u64, u64),
}

fn cases(model: &str) -> Vec<Case> {
    let m = serde_json::to_string(model).unwrap();
    let mut v = Vec::new();
    for stream in [false, true] {
        let s = if stream { r#","stream":true"# } else { "" };
        v.push(Case {
            path: "/v1/chat/completions",
            body: format!(r#"{{"model":{m},"messages":[{{"role":"user","content":"one two three"}}]{s}}}"#),
            stream,
            want: (3, TOKENS),
        });
        v.push(Case {
            path: "/v1/completions",
            body: format!(r#"{{"model":{m},"prompt":"a b c d"{s}}}"#),
            stream,
            want: (4, TOKENS),
        });
        // A list prompt is one choice per prompt; TGI reports usage per choice and it adds up.
        v.push(Case {
            path: "/v1/completions",
            body: format!(r#"{{"model":{m},"prompt":["a b","c d e"]{s}}}"#),
            stream,
            want: (5, 2 * TOKENS),
        });
        v.push(Case {
            path: "/v1/responses",
            body: format!(r#"{{"model":{m},"input":"hello big world"{s}}}"#),
            stream,
            want: (3, TOKENS),
        });
        v.push(Case {
            path: "/v1/messages",
            body: format!(
                r#"{{"model":{m},"max_tokens":64,"messages":[{{"role":"user","content":"hi you"}}]{s}}}"#
            ),
            stream,
            want: (2, TOKENS),
        });
    }
    v.push(Case {
        path: "/v1/embeddings",
        body: format!(r#"{{"model":{m},"input":["x y z","w"]}}"#),
        stream: false,
        want: (4, 0),
    });
    v
}

/// The last proxied request the backend received (health checks aside).
fn last_request(b: &llmproxy::mock::MockBackend) -> Option<llmproxy::mock::RecordedRequest> {
    b.requests().into_iter().rfind(|r| r.path.starts_with("/v1/") && r.method == "POST")
}

/// Waits until the health thread learned the backend's continuous-usage support.
fn wait_learned(gw: &Gateway, on: bool) {
    let want = if on { 1.0 } else { 0.0 };
    eventually(20, "continuous usage learned", || {
        let m = metrics(gw.addr);
        m.lines()
            .any(|l| l.starts_with("llmproxy_backend_continuous_usage{") && l.ends_with(&format!(" {want}")))
            || (!on && !m.is_empty())
    });
}

fn assert_timestamp_recent(rec: &Value) {
    let ts = rec["timestamp"].as_str().expect("timestamp");
    let t = humantime::parse_rfc3339(ts).unwrap_or_else(|e| panic!("timestamp {ts:?} not RFC 3339: {e}"));
    let age = SystemTime::now().duration_since(t).unwrap_or(Duration::ZERO);
    assert!(age < Duration::from_secs(60), "timestamp {ts} is not the request's time");
}

fn check_flavour(flavor: Flavor) {
    let b = mock(flavor);
    let r = Receiver::start();
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "")));
    let model = format!("model-{flavor}");
    let mut ids = Vec::new();
    for case in cases(&model) {
        let what = format!("{flavor} {} stream={}", case.path, case.stream);
        // A measurable time to first token.
        let resp = request(gw.addr, &post(case.path, &case.body, "x-mock-ttft-ms: 25\r\n"));
        assert_eq!(resp.status, 200, "{what}: {}", resp.text());
        let id = rid(&resp);
        let (p, c) = case.want;
        let want = if case.stream {
            if case.path.ends_with("completions") {
                assert!(
                    !resp.text().contains(r#""choices":[]"#),
                    "{what}: the injected usage chunk reached the client: {}",
                    resp.text()
                );
            }
            (p, c, p + c)
        } else {
            let got = body_usage(&resp.json());
            assert_eq!((got.0, got.1), (p, c), "{what}: mock counts changed? body {}", resp.text());
            got
        };
        let rec = record_for(&r, &id);
        assert_eq!(rec_tokens(&rec), want, "{what}: record {rec}");
        assert_eq!(rec["request_id"], id.as_str());
        assert_eq!(rec["model"], model.as_str(), "{what}");
        assert_eq!(rec["is_stream"], case.stream, "{what}");
        assert_eq!(rec["endpoint"], case.path, "{what}");
        assert_eq!(rec["backend_url"], b.url().as_str(), "{what}");
        assert_eq!(rec["status"], "ok", "{what}: {rec}");
        assert_eq!(rec["http_status"], 200, "{what}");
        assert_eq!(rec["user_id"], Value::Null, "{what}");
        assert_eq!(rec["api_key"], Value::Null, "{what}");
        assert!(rec.get("usage_missing").is_none(), "{what}: {rec}");
        assert_timestamp_recent(&rec);
        let duration = rec["duration_ms"].as_u64().expect("duration_ms");
        assert!(duration >= 25, "{what}: duration_ms {duration} below the backend's 25 ms ttft");
        assert!(duration < 5000, "{what}: duration_ms {duration}");
        if case.stream {
            let ttft = rec["ttft_ms"].as_u64().unwrap_or_else(|| panic!("{what}: no ttft_ms in {rec}"));
            assert!((25..=duration).contains(&ttft), "{what}: ttft_ms {ttft}, duration_ms {duration}");
        } else {
            assert_eq!(rec["ttft_ms"], Value::Null, "{what}: time to first token is for streams only");
        }
        ids.push(id);
    }
    // Exactly one record per request: nothing more arrives.
    std::thread::sleep(Duration::from_millis(200));
    let delivered = r.delivered_ids();
    assert_eq!(delivered.len(), ids.len(), "{flavor}: {delivered:?}");
    assert_eq!(delivered.into_iter().collect::<HashSet<_>>(), ids.into_iter().collect::<HashSet<_>>());
}

#[test]
fn one_record_per_request_with_backend_usage_vllm() {
    check_flavour(Flavor::Vllm);
}

#[test]
fn one_record_per_request_with_backend_usage_tgi() {
    check_flavour(Flavor::Tgi);
}

#[test]
fn one_record_per_request_with_backend_usage_sglang() {
    check_flavour(Flavor::Sglang);
}

#[test]
fn one_record_per_request_with_backend_usage_llamacpp() {
    check_flavour(Flavor::Llamacpp);
}

#[test]
fn one_record_per_request_with_backend_usage_ollama() {
    check_flavour(Flavor::Ollama);
}

#[test]
fn one_record_per_request_with_backend_usage_openai() {
    check_flavour(Flavor::Openai);
}

/// Continuous-usage support is learned from the backend's `/v1/models` answer whatever its
/// framing: here chunked, with `"owned_by"` cut across chunks (it was read from the raw bytes, so
/// chunk framing inside the key hid it).
#[test]
fn continuous_usage_is_learned_from_a_chunked_models_answer() {
    use common::replay::{Framing, Replay, Reply};
    let models = br#"{"object":"list","data":[{"id":"m","object":"model","owned_by":"vllm"}]}"#;
    let b = Replay::start(Reply::new(200, "application/json", models, Framing::ChunkedEvery(5)));
    let r = Receiver::start();
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "")));
    wait_learned(&gw, true);
}

const CHAT_STREAM: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"a b"}]}"#;

#[test]
fn injection_adds_include_usage_and_strips_the_extra_chunk() {
    for flavor in [Flavor::Vllm, Flavor::Openai, Flavor::Sglang] {
        let b = mock(flavor);
        let r = Receiver::start();
        let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "")));
        wait_learned(&gw, flavor != Flavor::Openai);

        // Not asked: injected on the way in, the usage-only chunk cut on the way out.
        let resp = request(gw.addr, &post("/v1/chat/completions", CHAT_STREAM, ""));
        assert_eq!(resp.status, 200);
        let sent = last_request(&b).expect("backend saw the request");
        let sent = sent.json().expect("JSON body");
        assert_eq!(sent["stream_options"]["include_usage"], true, "{flavor}: {sent}");
        assert_eq!(sent["messages"][0]["content"], "a b");
        let text = resp.text();
        assert!(!text.contains(r#""choices":[]"#), "{flavor}: {text}");
        assert!(!text.contains(r#""prompt_tokens""#), "{flavor}: usage reached the client: {text}");
        assert_eq!(resp.sse_data().last().map(String::as_str), Some("[DONE]"));
        for d in resp.sse_data().iter().filter(|d| *d != "[DONE]") {
            let v: Value = serde_json::from_str(d).unwrap_or_else(|e| panic!("{flavor}: bad event {d}: {e}"));
            assert!(!v["choices"].as_array().unwrap().is_empty(), "{flavor}: {d}");
        }
        let rec = record_for(&r, &rid(&resp));
        assert_eq!(rec_tokens(&rec), (2, TOKENS, 2 + TOKENS), "{flavor}: {rec}");

        // Asked by the client: sent unchanged (vLLM and SGLang, learned continuous: only
        // continuous_usage_stats added), and the usage chunk reaches it unchanged.
        let asked = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"a b"}]}"#;
        let resp = request(gw.addr, &post("/v1/chat/completions", asked, ""));
        let want = if flavor == Flavor::Openai {
            asked.to_string()
        } else {
            asked.replace(r#""include_usage":true"#, r#""continuous_usage_stats":true,"include_usage":true"#)
        };
        assert_eq!(String::from_utf8_lossy(&last_request(&b).unwrap().body), want, "{flavor}: body modified");
        let last = resp.sse_data().into_iter().rfind(|d| d != "[DONE]").expect("events");
        let v: Value = serde_json::from_str(&last).unwrap();
        assert_eq!(v["choices"], serde_json::json!([]), "{flavor}: last event {last}");
        assert_eq!(v["usage"]["prompt_tokens"], 2);
        assert_eq!(v["usage"]["completion_tokens"], TOKENS);
        let rec = record_for(&r, &rid(&resp));
        assert_eq!(rec_tokens(&rec), (2, TOKENS, 2 + TOKENS), "{flavor}: {rec}");
    }
}

#[test]
fn passthrough_never_modifies_the_request() {
    let b = mock(Flavor::Vllm);
    let r = Receiver::start();
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "include_usage = \"passthrough\"")));
    let resp = request(gw.addr, &post("/v1/chat/completions", CHAT_STREAM, ""));
    assert_eq!(resp.status, 200);
    assert_eq!(last_request(&b).unwrap().body, CHAT_STREAM.as_bytes(), "passthrough changed the body");
    let rec = record_for(&r, &rid(&resp));
    // vLLM only reports stream usage when asked: nothing to bill, and the record says so.
    assert_eq!(rec["usage_missing"], true, "{rec}");
    assert_eq!(rec_tokens(&rec), (0, 0, 0));
    // Asked by the client: passed as is, usage counted.
    let asked = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"a b"}]}"#;
    let resp = request(gw.addr, &post("/v1/chat/completions", asked, ""));
    assert_eq!(last_request(&b).unwrap().body, asked.as_bytes());
    assert!(resp.text().contains(r#""choices":[]"#));
    let rec = record_for(&r, &rid(&resp));
    assert_eq!(rec_tokens(&rec), (2, TOKENS, 2 + TOKENS), "{rec}");
}

#[test]
fn missing_usage_is_recorded_and_counted() {
    let b = mock(Flavor::Vllm);
    let r = Receiver::start();
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "")));
    assert_eq!(metric(&metrics(gw.addr), "llmproxy_usage_missing_total"), Some(0.0));
    let mut ids = Vec::new();
    for body in [CHAT_STREAM, r#"{"model":"m","messages":[{"role":"user","content":"a b"}]}"#] {
        let resp = request(gw.addr, &post("/v1/chat/completions", body, "x-mock-no-usage: 1\r\n"));
        assert_eq!(resp.status, 200);
        let rec = record_for(&r, &rid(&resp));
        assert_eq!(rec["usage_missing"], true, "{rec}");
        assert_eq!(rec_tokens(&rec), (0, 0, 0), "{rec}");
        assert_eq!(rec["status"], "ok");
        ids.push(rid(&resp));
    }
    // A response with usage is not counted.
    let resp = request(gw.addr, &post("/v1/chat/completions", CHAT_STREAM, ""));
    assert!(record_for(&r, &rid(&resp)).get("usage_missing").is_none());
    eventually(5, "usage_missing_total = 2", || {
        metric(&metrics(gw.addr), "llmproxy_usage_missing_total") == Some(2.0)
    });
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

const SIMPLE: &str = r#"{"model":"m","messages":[{"role":"user","content":"a b"}]}"#;

#[test]
fn auth_required_rejects_unknown_keys_without_a_record() {
    let b = mock(Flavor::Vllm);
    let r = Receiver::start();
    let auth = format!(
        "[auth]\nrequired = true\n[[auth.keys]]\nkey = \"sk-alice-0123456789\"\nuser_id = \"alice\"\n[[auth.keys]]\nkey_sha256 = \"{}\"\nuser_id = \"bob\"\n",
        sha256_hex("sk-bob-secret-key")
    );
    let gw = Gateway::start(&config_for(&[b.url()], &(hook(&r, "") + &auth)));
    for headers in ["", "Authorization: Bearer sk-nobody\r\n", "x-api-key: sk-alice-012345678\r\n"] {
        let resp = request(gw.addr, &post("/v1/chat/completions", SIMPLE, headers));
        assert_eq!(resp.status, 401, "{headers:?}: {}", resp.text());
        assert!(resp.json()["error"]["message"].is_string(), "{}", resp.text());
        assert!(resp.header("x-request-id").is_some());
    }
    assert!(last_request(&b).is_none(), "a rejected request reached the backend");
    let alice = request(
        gw.addr,
        &post(
            "/v1/chat/completions",
            SIMPLE,
            "Authorization: Bearer sk-alice-0123456789\r\nx-user-id: mallory\r\n",
        ),
    );
    assert_eq!(alice.status, 200);
    let bob = request(gw.addr, &post("/v1/chat/completions", SIMPLE, "x-api-key: sk-bob-secret-key\r\n"));
    assert_eq!(bob.status, 200);
    let rec = record_for(&r, &rid(&alice));
    assert_eq!(rec["user_id"], "alice", "the key's user wins over the header: {rec}");
    assert_eq!(rec["api_key"], "sk-a...789", "redacted by default: {rec}");
    let rec = record_for(&r, &rid(&bob));
    assert_eq!(rec["user_id"], "bob", "{rec}");
    assert_eq!(rec["api_key"], "sk-b...key");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(r.delivered().len(), 2, "401s must not produce records: {:?}", r.delivered());
}

#[test]
fn user_id_precedence_and_api_key_formats() {
    let b = mock(Flavor::Vllm);
    let key = "sk-carol-abcdefgh";
    for (format, want_key) in [
        ("full", Value::from(key)),
        ("redacted", Value::from("sk-c...fgh")),
        ("sha256", Value::from(sha256_hex(key))),
        ("omit", Value::Null),
    ] {
        let r = Receiver::start();
        let extra = hook(&r, &format!("api_key_format = \"{format}\""))
            + &format!("[auth]\nrequired = false\n[[auth.keys]]\nkey = \"{key}\"\nuser_id = \"carol\"\n");
        let gw = Gateway::start(&config_for(&[b.url()], &extra));
        let with_user = r#"{"model":"m","user":"body-user","messages":[{"role":"user","content":"a b"}]}"#;
        let send = |body: &str, headers: &str| {
            let resp = request(gw.addr, &post("/v1/chat/completions", body, headers));
            assert_eq!(resp.status, 200, "{}", resp.text());
            record_for(&r, &rid(&resp))
        };
        let matched = send(with_user, &format!("Authorization: Bearer {key}\r\nx-user-id: hdr\r\n"));
        assert_eq!(matched["user_id"], "carol", "{format}: {matched}");
        assert_eq!(matched["api_key"], want_key, "{format}: {matched}");
        let header = send(with_user, "Authorization: Bearer sk-unknown-key-1\r\nx-user-id: hdr-user\r\n");
        assert_eq!(header["user_id"], "hdr-user", "{format}: {header}");
        let body = send(with_user, "");
        assert_eq!(body["user_id"], "body-user", "{format}: {body}");
        assert_eq!(body["api_key"], Value::Null, "{format}: no key sent: {body}");
        let none = send(SIMPLE, "");
        assert_eq!(none["user_id"], Value::Null, "{format}: {none}");
    }
}

#[test]
fn signed_delivery_with_idempotency_key() {
    let b = mock(Flavor::Vllm);
    let r = Receiver::start();
    r.require_signature("top-secret");
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "secret = \"top-secret\"")));
    let ids: Vec<String> = (0..3)
        .map(|i| {
            let body = if i == 1 { CHAT_STREAM } else { SIMPLE };
            rid(&request(gw.addr, &post("/v1/chat/completions", body, "")))
        })
        .collect();
    assert!(r.wait_for(3, Duration::from_secs(10)), "hits: {:?}", r.hits());
    for hit in r.hits() {
        assert_eq!(hit.status, 200, "signature rejected: {:?}", hit.header("x-llmproxy-signature"));
        let rec = hit.json().unwrap();
        assert_eq!(hit.header("idempotency-key"), rec["request_id"].as_str(), "{rec}");
    }
    let got: HashSet<String> = r.delivered_ids().into_iter().collect();
    assert_eq!(got, ids.into_iter().collect());
}

/// Reads from a raw connection until `pred` holds on what arrived.
fn read_until(c: &mut common::client::Client, pred: impl Fn(&str) -> bool) -> String {
    use std::io::Read;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !pred(&String::from_utf8_lossy(&got)) {
        let n = c.stream.read(&mut buf).expect("read stream");
        assert!(n > 0, "stream ended early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn client_disconnect_mid_stream_records_last_usage() {
    let b = mock(Flavor::Vllm);
    let r = Receiver::start();
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "")));
    let body = r#"{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":true},"messages":[{"role":"user","content":"a b c"}]}"#;
    let mut c = connect(gw.addr);
    c.send(&post("/v1/chat/completions", body, "x-mock-tokens: 400\r\nx-mock-itl-ms: 10\r\n"));
    let seen = read_until(&mut c, |s| s.matches("\"completion_tokens\"").count() >= 5);
    let id = seen
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("x-request-id header")
        .trim()
        .to_string();
    drop(c);
    let rec = record_for(&r, &id);
    assert_eq!(rec["status"], "client_disconnected", "{rec}");
    assert_eq!(rec["http_status"], 200, "{rec}");
    assert_eq!(rec["is_stream"], true);
    let (p, c, t) = rec_tokens(&rec);
    assert_eq!(p, 3, "{rec}");
    assert!((4..400).contains(&c), "last usage reported so far expected, got {rec}");
    assert_eq!(t, p + c);
    assert!(rec.get("usage_missing").is_none(), "{rec}");
    eventually(5, "the backend stream closed", || b.streams_aborted() == 1);

    // No usage reported before the disconnect: still a record.
    let mut c = connect(gw.addr);
    c.send(&post("/v1/chat/completions", CHAT_STREAM, "x-mock-ttft-ms: 3000\r\n"));
    let seen = read_until(&mut c, |s| s.contains("\r\n\r\n"));
    let id = seen.lines().find_map(|l| l.strip_prefix("x-request-id: ")).unwrap().trim().to_string();
    drop(c);
    let rec = record_for(&r, &id);
    assert_eq!(rec["status"], "client_disconnected", "{rec}");
    assert_eq!(rec_tokens(&rec), (0, 0, 0), "{rec}");
}

#[test]
fn metrics_count_tokens_by_model_and_webhook_success() {
    let b = mock(Flavor::Sglang);
    let r = Receiver::start();
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "")));
    let stream = r#"{"model":"tok-model","stream":true,"messages":[{"role":"user","content":"a b c"}]}"#;
    let plain = r#"{"model":"tok-model","messages":[{"role":"user","content":"a b"}]}"#;
    let other = r#"{"model":"other-model","prompt":"x","max_tokens":3}"#;
    for _ in 0..3 {
        assert_eq!(request(gw.addr, &post("/v1/chat/completions", stream, "")).status, 200);
    }
    for _ in 0..2 {
        assert_eq!(request(gw.addr, &post("/v1/chat/completions", plain, "")).status, 200);
    }
    assert_eq!(request(gw.addr, &post("/v1/completions", other, "x-mock-tokens: 7\r\n")).status, 200);
    assert!(r.wait_for(6, Duration::from_secs(10)));
    let want = [
        ("tok-model", "prompt", 3.0 * 3.0 + 2.0 * 2.0),
        ("tok-model", "completion", 5.0 * TOKENS as f64),
        ("other-model", "prompt", 1.0),
        ("other-model", "completion", 7.0),
    ];
    eventually(5, "webhook success 6", || {
        metric(&metrics(gw.addr), "llmproxy_webhook_success_total") == Some(6.0)
    });
    for (model, kind, n) in want {
        let series = format!("llmproxy_tokens_total{{model=\"{model}\",kind=\"{kind}\"}}");
        assert_eq!(metric(&metrics(gw.addr), &series), Some(n), "{series}");
    }
    assert_eq!(metric(&metrics(gw.addr), "llmproxy_webhook_failure_total"), Some(0.0));
    assert_eq!(metric(&metrics(gw.addr), "llmproxy_usage_missing_total"), Some(0.0));
    let series = format!(
        "llmproxy_requests_total{{endpoint=\"/v1/chat/completions\",stream=\"true\",backend=\"{}\",status=\"200\"}}",
        b.url()
    );
    assert_eq!(metric(&metrics(gw.addr), &series), Some(3.0), "{series}");
}
