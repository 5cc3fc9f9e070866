//! Behaviour of the simulated backend (`llmproxy::mock`) over plain TCP: per-flavour stream and JSON
//! shapes and usage placement, pacing, the x-mock-* knobs, keep-alive, abort detection and kill().

mod mock_util;

use llmproxy::mock::{Flavor, MockOptions};
use mock_util::*;
use serde_json::Value;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

const CONTENT: &str = " tok0 tok1 tok2 tok3";

fn usage_triplet(u: &Value) -> (u64, u64, u64) {
    (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
        u["total_tokens"].as_u64().unwrap(),
    )
}

/// Where the usage sits in a chat stream: per chunk, "absent" | "null" | "obj".
fn placement(chunks: &[Value]) -> Vec<&'static str> {
    chunks
        .iter()
        .map(|c| match c.get("usage") {
            None => "absent",
            Some(Value::Null) => "null",
            Some(_) => "obj",
        })
        .collect()
}

fn chat_content(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .filter_map(|ch| ch["delta"]["content"].as_str())
        .collect()
}

#[test]
fn chat_streams_per_flavour_and_include_usage() {
    for f in Flavor::ALL {
        let b = fast(f, 4);
        for iu in [None, Some(false), Some(true)] {
            let r = once(&b, "POST", "/v1/chat/completions", &[], &chat_body(true, iu));
            let ctx = format!("{f} include_usage={iu:?}");
            assert_eq!(r.status, 200, "{ctx}");
            assert!(r.complete, "{ctx}");
            assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{ctx}");
            assert!(r.header("content-type").unwrap().starts_with("text/event-stream"), "{ctx}");
            assert!(r.text().ends_with("data: [DONE]\n\n"), "{ctx}");
            assert!(!r.text().contains('\r'), "{ctx}");
            let chunks = r.data_json();
            assert_eq!(chat_content(&chunks), CONTENT, "{ctx}");
            let last = chunks.last().unwrap();
            let want_iu = iu == Some(true);
            let tail = last["choices"].as_array().unwrap().is_empty();
            let pl = placement(&chunks);
            match f {
                Flavor::Vllm | Flavor::Ollama => {
                    assert_eq!(tail, want_iu, "{ctx}");
                    let n = pl.len() - usize::from(tail);
                    assert!(pl[..n].iter().all(|p| *p == "absent"), "{ctx} {pl:?}");
                }
                Flavor::Tgi | Flavor::Sglang => {
                    assert_eq!(tail, want_iu, "{ctx}");
                    let n = pl.len() - usize::from(tail);
                    assert!(pl[..n].iter().all(|p| *p == "null"), "{ctx} {pl:?}");
                }
                Flavor::Openai => {
                    assert_eq!(tail, want_iu, "{ctx}");
                    let n = pl.len() - usize::from(tail);
                    let want = if want_iu { "null" } else { "absent" };
                    assert!(pl[..n].iter().all(|p| *p == want), "{ctx} {pl:?}");
                    assert!(chunks.iter().all(|c| c["obfuscation"].is_string()), "{ctx}");
                }
                Flavor::Llamacpp => {
                    assert!(!tail, "{ctx}");
                    assert_eq!(last["choices"][0]["finish_reason"], "stop", "{ctx}");
                    assert!(last["timings"].is_object(), "{ctx}");
                    assert_eq!(pl.last(), Some(&"obj"), "{ctx}");
                }
            }
            let usages: Vec<&Value> =
                chunks.iter().filter_map(|c| c.get("usage")).filter(|u| !u.is_null()).collect();
            if want_iu || f == Flavor::Llamacpp {
                assert_eq!(usage_triplet(usages.last().unwrap()), (3, 4, 7), "{ctx}");
            } else {
                assert!(usages.is_empty(), "{ctx}");
            }
        }
    }
}

#[test]
fn key_orders_and_quirks_on_the_wire() {
    let b = fast(Flavor::Vllm, 4);
    let t = once(&b, "POST", "/v1/chat/completions", &[], &chat_body(true, Some(true))).text();
    assert!(t.contains(r#""usage":{"prompt_tokens":3,"total_tokens":7,"completion_tokens":4}"#), "{t}");
    assert!(t.starts_with(r#"data: {"id":"chatcmpl-"#), "{t}");
    assert!(t.contains(r#""prompt_token_ids":null"#));
    let b = fast(Flavor::Tgi, 4);
    let t = once(&b, "POST", "/v1/chat/completions", &[], &chat_body(true, None)).text();
    assert!(t.starts_with(r#"data: {"object":"chat.completion.chunk","id":"","#), "{t}");
    let b = fast(Flavor::Llamacpp, 4);
    let t = once(&b, "POST", "/v1/chat/completions", &[], &chat_body(true, None)).text();
    assert!(t.starts_with(r#"data: {"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}]"#), "{t}");
    assert!(
        t.contains(r#""usage":{"completion_tokens":4,"prompt_tokens":3,"total_tokens":7},"timings":{"#),
        "{t}"
    );
    let b = fast(Flavor::Openai, 4);
    let r = once(
        &b,
        "POST",
        "/v1/completions",
        &[],
        r#"{"prompt":"a b","stream":true,"stream_options":{"include_usage":true}}"#,
    );
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert!(r
        .text()
        .contains(r#""usage":{"prompt_tokens":2,"completion_tokens":4,"total_tokens":6},"choices":[]}"#));
}

#[test]
fn non_stream_bodies_per_flavour() {
    for f in Flavor::ALL {
        let b = fast(f, 4);
        let r = once(&b, "POST", "/v1/chat/completions", &[], &chat_body(false, None));
        assert_eq!(r.status, 200, "{f}");
        assert_eq!(r.header("content-length").unwrap().parse::<usize>().unwrap(), r.body.len(), "{f}");
        assert!(r.header("content-type").unwrap().starts_with("application/json"), "{f}");
        let v = r.json();
        assert_eq!(v["choices"][0]["message"]["content"], CONTENT, "{f}");
        assert_eq!(usage_triplet(&v["usage"]), (3, 4, 7), "{f}");
        assert_eq!(v["model"], "m1", "{f}");
        let r = once(&b, "POST", "/v1/completions", &[], r#"{"prompt":"one two three four five"}"#);
        let v = r.json();
        assert_eq!(v["object"], "text_completion", "{f}");
        assert_eq!(v["choices"][0]["text"], CONTENT, "{f}");
        assert_eq!(usage_triplet(&v["usage"]), (5, 4, 9), "{f}");
        assert_eq!(v["model"], f.default_model(), "{f}");
        let r = once(&b, "POST", "/v1/embeddings", &[], r#"{"input":["a b","c"]}"#);
        let v = r.json();
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["usage"]["prompt_tokens"], 3);
    }
    let b = fast(Flavor::Vllm, 4);
    let t = once(&b, "POST", "/v1/chat/completions", &[], &chat_body(false, None)).text();
    assert!(t.contains(
        r#""usage":{"prompt_tokens":3,"total_tokens":7,"completion_tokens":4,"prompt_tokens_details":null}"#
    ));
}

#[test]
fn tgi_multi_prompt_completions_stream_usage_per_choice() {
    let b = fast(Flavor::Tgi, 3);
    let r = once(&b, "POST", "/v1/completions", &[], r#"{"prompt":["a b","c d e"],"stream":true}"#);
    let chunks = r.data_json();
    assert_eq!(chunks.len(), 6);
    for c in &chunks {
        let ch = &c["choices"][0];
        if ch["finish_reason"] == "" {
            assert!(c["usage"].is_null());
        } else {
            assert_eq!(ch["finish_reason"], "length");
            let want = if ch["index"] == 0 { (2, 3, 5) } else { (3, 3, 6) };
            assert_eq!(usage_triplet(&c["usage"]), want);
        }
        assert_eq!(c["id"], "");
    }
    let v = once(&b, "POST", "/v1/completions", &[], r#"{"prompt":["a b","c d e"]}"#).json();
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(usage_triplet(&v["usage"]), (5, 6, 11));
}

#[test]
fn vllm_continuous_usage_and_ollama_zeroed_completion_usage() {
    let b = fast(Flavor::Vllm, 3);
    let body = r#"{"messages":[{"role":"user","content":"x y"}],"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#;
    let chunks = once(&b, "POST", "/v1/chat/completions", &[], body).data_json();
    let comp: Vec<u64> = chunks.iter().map(|c| c["usage"]["completion_tokens"].as_u64().unwrap()).collect();
    assert_eq!(comp, vec![0, 1, 2, 3, 3, 3]);
    assert!(chunks.iter().all(|c| c["usage"]["prompt_tokens"] == 2));
    let b = fast(Flavor::Ollama, 3);
    let body = r#"{"prompt":"x y","stream":true,"stream_options":{"include_usage":true}}"#;
    let chunks = once(&b, "POST", "/v1/completions", &[], body).data_json();
    let (last, rest) = chunks.split_last().unwrap();
    assert!(rest.iter().all(|c| usage_triplet(&c["usage"]) == (0, 0, 0)));
    assert_eq!(usage_triplet(&last["usage"]), (2, 3, 5));
    assert!(last["choices"].as_array().unwrap().is_empty());
}

#[test]
fn responses_and_messages_apis() {
    let b = fast(Flavor::Openai, 4);
    let v = once(&b, "POST", "/v1/responses", &[], r#"{"model":"m","input":"a b c"}"#).json();
    assert_eq!(v["usage"]["input_tokens"], 3);
    assert_eq!(v["usage"]["output_tokens"], 4);
    assert_eq!(v["usage"]["total_tokens"], 7);
    let r = once(&b, "POST", "/v1/responses", &[], r#"{"model":"m","input":"a b c","stream":true}"#);
    let evs = r.events();
    assert_eq!(evs.first().unwrap().0.as_deref(), Some("response.created"));
    assert_eq!(evs.iter().filter(|e| e.0.as_deref() == Some("response.output_text.delta")).count(), 4);
    let (name, data) = evs.last().unwrap();
    assert_eq!(name.as_deref(), Some("response.completed"));
    let done: Value = serde_json::from_str(data).unwrap();
    assert_eq!(done["response"]["usage"]["output_tokens"], 4);
    for (name, data) in &evs {
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["type"].as_str(), name.as_deref());
    }

    let body = r#"{"model":"claude","system":"be nice","messages":[{"role":"user","content":"hi you"}],"max_tokens":9}"#;
    let v = once(&b, "POST", "/v1/messages", &[], body).json();
    assert_eq!(
        (v["usage"]["input_tokens"].as_u64(), v["usage"]["output_tokens"].as_u64()),
        (Some(4), Some(4))
    );
    let body = body.replace("}]", "}],\"stream\":true");
    let evs = once(&b, "POST", "/v1/messages", &[], &body).events();
    let names: Vec<_> = evs.iter().map(|e| e.0.clone().unwrap()).collect();
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));
    let start: Value = serde_json::from_str(&evs[0].1).unwrap();
    assert_eq!(start["message"]["usage"]["input_tokens"], 4);
    let delta = evs.iter().find(|e| e.0.as_deref() == Some("message_delta")).unwrap();
    let delta: Value = serde_json::from_str(&delta.1).unwrap();
    assert_eq!(delta["usage"]["output_tokens"], 4);
}

#[test]
fn pacing_ttft_and_itl() {
    let b = start(MockOptions {
        ttft: Duration::from_millis(50),
        itl: Duration::from_millis(20),
        tokens: 5,
        ..MockOptions::default()
    });
    let r = once(&b, "POST", "/v1/chat/completions", &[], &chat_body(true, None));
    let first = r.first_event_at.unwrap();
    assert!(first >= Duration::from_millis(45), "first event after {first:?}");
    // role chunk at ttft, then 5 tokens + finish at itl each.
    assert!(r.elapsed >= Duration::from_millis(50 + 6 * 20 - 10), "{:?}", r.elapsed);
    let r = once(
        &b,
        "POST",
        "/v1/chat/completions",
        &[("x-mock-ttft-ms", "80"), ("x-mock-itl-ms", "0")],
        &chat_body(true, None),
    );
    assert!(r.first_event_at.unwrap() >= Duration::from_millis(75));
    assert!(r.elapsed < Duration::from_millis(400));
    // Non-stream: the whole generation time before the answer.
    let r = once(&b, "POST", "/v1/chat/completions", &[("x-mock-tokens", "2")], &chat_body(false, None));
    assert!(r.elapsed >= Duration::from_millis(85), "{:?}", r.elapsed);
    assert_eq!(r.json()["usage"]["completion_tokens"], 2);
}

#[test]
fn framing_knobs() {
    let b = fast(Flavor::Vllm, 4);
    let want = once(&b, "POST", "/v1/chat/completions", &[], &chat_body(true, Some(true))).data_json().len();
    let mut c = Client::connect(&b);
    let r = c.request(
        "POST",
        "/v1/chat/completions",
        &[("x-mock-framing", "length")],
        &chat_body(true, Some(true)),
    );
    assert!(r.header("transfer-encoding").is_none());
    assert_eq!(r.header("content-length").unwrap().parse::<usize>().unwrap(), r.body.len());
    assert_eq!(r.data_json().len(), want);
    // still keep-alive
    let r =
        c.request("POST", "/v1/chat/completions", &[("x-mock-framing", "chunked")], &chat_body(false, None));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert!(r.complete);
    assert_eq!(r.json()["usage"]["total_tokens"], 7);
    let r = c.request("POST", "/v1/chat/completions", &[("x-mock-framing", "close")], &chat_body(true, None));
    assert!(r.header("transfer-encoding").is_none() && r.header("content-length").is_none());
    assert_eq!(r.header("connection"), Some("close"));
    assert!(r.closed);
    assert!(r.text().ends_with("data: [DONE]\n\n"));
}

#[test]
fn split_status_and_abort_knobs() {
    for f in Flavor::ALL {
        let b = fast(f, 4);
        let whole = once(&b, "POST", "/v1/chat/completions", &[], &chat_body(true, Some(true)));
        let split =
            once(&b, "POST", "/v1/chat/completions", &[("x-mock-split", "7")], &chat_body(true, Some(true)));
        assert_eq!(whole.events().len(), split.events().len(), "{f}");
        assert!(split.complete);
        let r = once(&b, "POST", "/v1/chat/completions", &[("x-mock-split", "3")], &chat_body(false, None));
        assert_eq!(r.json()["usage"]["total_tokens"], 7);

        let r = once(&b, "POST", "/v1/chat/completions", &[("x-mock-status", "503")], &chat_body(true, None));
        assert_eq!(r.status, 503, "{f}");
        let e = r.json();
        assert!(e.get("error").is_some() || e.get("object") == Some(&Value::from("error")), "{f}: {e}");

        let r =
            once(&b, "POST", "/v1/chat/completions", &[("x-mock-abort-after", "2")], &chat_body(true, None));
        assert!(!r.complete, "{f}");
        assert!(r.closed, "{f}");
        assert_eq!(r.events().len(), 2, "{f}");
        let r = once(
            &b,
            "POST",
            "/v1/chat/completions",
            &[("x-mock-no-usage", "1")],
            &chat_body(true, Some(true)),
        );
        assert!(!r.text().contains("prompt_tokens"), "{f}");
        assert_eq!(b.streams_aborted(), 0, "{f}: a server-side abort is not a client abort");
    }
}

#[test]
fn keep_alive_pipelining_and_chunked_request_bodies() {
    let b = fast(Flavor::Sglang, 2);
    let mut c = Client::connect(&b);
    let r1 = c.request("POST", "/v1/chat/completions", &[], &chat_body(true, Some(true)));
    let r2 = c.request("POST", "/v1/chat/completions", &[], &chat_body(false, None));
    assert!(r1.complete && r2.complete);
    assert_eq!(r2.json()["usage"]["completion_tokens"], 2);
    // Two pipelined requests in one write; the second body sent chunked.
    let body = chat_body(false, None);
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: {}\r\n\r\n{body}POST /v1/completions HTTP/1.1\r\ntransfer-encoding: chunked\r\nx-test: 2\r\n\r\n5\r\n{{\"pro\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        body.len(),
        "mpt\":\"a b c\"}".len(),
        "mpt\":\"a b c\"}"
    );
    c.stream.write_all(raw.as_bytes()).unwrap();
    let r3 = c.read_response(Instant::now());
    let r4 = c.read_response(Instant::now());
    assert_eq!(r3.json()["usage"]["prompt_tokens"], 3);
    assert_eq!(r4.json()["usage"]["prompt_tokens"], 3);
    assert_eq!(r4.json()["object"], "text_completion");
    let reqs = b.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[3].path, "/v1/completions");
    assert_eq!(reqs[3].header("X-Test"), Some("2"));
    assert_eq!(reqs[3].json().unwrap()["prompt"], "a b c");
    assert_eq!(b.open_connections(), 1);
}

#[test]
fn errors_routes_and_malformed_requests() {
    for f in Flavor::ALL {
        let b = fast(f, 2);
        let r = once(&b, "GET", "/nope", &[], "");
        assert_eq!(r.status, 404, "{f}");
        r.json();
        assert_eq!(once(&b, "GET", "/v1/chat/completions", &[], "").status, 405, "{f}");
        assert_eq!(once(&b, "GET", "/health", &[], "").status, 200, "{f}");
        let m = once(&b, "GET", "/v1/models", &[], "").json();
        assert_eq!(m["data"][0]["id"], f.default_model(), "{f}");
        assert_eq!(once(&b, "POST", "/v1/chat/completions", &[], "{not json").status, 400, "{f}");
    }
    let b = fast(Flavor::Vllm, 2);
    for bad in [
        "GARBAGE\r\n\r\n".to_string(),
        "POST /v1/completions HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n".into(),
        "POST /v1/completions HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd".into(),
        "POST /v1/completions HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".into(),
    ] {
        let mut c = Client::connect(&b);
        c.stream.write_all(bad.as_bytes()).unwrap();
        let r = c.read_response(Instant::now());
        assert_eq!(r.status, 400, "{bad:?}");
        assert!(c.closed_now(), "{bad:?}");
    }
}

#[test]
fn client_disconnect_mid_stream_is_counted() {
    let b = start(MockOptions {
        ttft: Duration::ZERO,
        itl: Duration::from_millis(30),
        tokens: 50,
        ..MockOptions::default()
    });
    let mut c = Client::connect(&b);
    c.write_request("POST", "/v1/chat/completions", &[], &chat_body(true, None));
    let mut buf = [0u8; 512];
    let _ = std::io::Read::read(&mut c.stream, &mut buf).unwrap();
    drop(c);
    let t = Instant::now();
    while b.streams_aborted() == 0 && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(b.streams_aborted(), 1);
    assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
    while b.open_connections() > 0 && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(b.open_connections(), 0);
}

#[test]
fn kill_refuses_connects_and_closes_open_connections() {
    let b = start(MockOptions {
        ttft: Duration::ZERO,
        itl: Duration::from_millis(50),
        tokens: 100,
        ..MockOptions::default()
    });
    let mut c = Client::connect(&b);
    c.write_request("POST", "/v1/chat/completions", &[], &chat_body(true, None));
    let t = Instant::now();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        b.kill();
        b
    });
    let r = c.read_response(t);
    assert!(!r.complete);
    assert!(t.elapsed() < Duration::from_secs(2));
    let b = killer.join().unwrap();
    assert!(TcpStream::connect(b.addr()).is_err(), "connect after kill must be refused");
    assert_eq!(b.streams_aborted(), 0);
}

#[test]
fn many_concurrent_streams() {
    let b = start(MockOptions {
        ttft: Duration::from_millis(5),
        itl: Duration::from_millis(5),
        tokens: 8,
        ..MockOptions::default()
    });
    let url = b.addr();
    let hs: Vec<_> = (0..200)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(url).unwrap();
                let body = chat_body(true, Some(true));
                write!(s, "POST /v1/chat/completions HTTP/1.1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
                let mut out = String::new();
                std::io::Read::read_to_string(&mut s, &mut out).unwrap();
                out.contains("data: [DONE]") && out.ends_with("0\r\n\r\n")
            })
        })
        .collect();
    assert!(hs.into_iter().all(|h| h.join().unwrap()));
    assert_eq!(b.requests().len(), 200);
}
