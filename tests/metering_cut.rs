//! Billing-grade usage through the real binary (issue 9, CONTRACT section 7): cut streams billed
//! partial (continuous usage, learned or forced) or estimated, per-chunk usage hidden from clients
//! that did not ask, n = 2, reading on after finish_reason, statuses, compressed backends, request
//! ids no client can choose, interim heads, and shutdown cuts.

mod common;
mod metering_util;

use common::*;
use llmproxy::mock::{Flavor, MockBackend, MockOptions};
use metering_util::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn slow_mock(flavor: Flavor, itl_ms: u64, tokens: u32, gzip: bool, details: bool) -> MockBackend {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let o = MockOptions {
        ttft: Duration::from_millis(5),
        itl: Duration::from_millis(itl_ms),
        tokens,
        gzip,
        details,
        ..MockOptions::new(flavor)
    };
    MockBackend::start(l, o)
}

fn wait_learned(gw: &Gateway, on: bool) {
    let want = format!(" {}", u8::from(on));
    eventually(20, "continuous usage learned", || {
        metrics(gw.addr)
            .lines()
            .any(|l| l.starts_with("llmproxy_backend_continuous_usage{") && l.ends_with(&want))
    });
}

/// A chat stream posted on a raw socket, read until `stop(text so far)`, then hung up.
/// Returns (what was read, the x-llmproxy-request-id).
fn stream_until(
    addr: SocketAddr,
    body: &str,
    headers: &str,
    stop: impl Fn(&str) -> bool,
) -> (String, String) {
    read_then_hang_up(addr, &post("/v1/chat/completions", body, headers), stop)
}

/// Content events (`" tokN"` deltas of the simulator) in what the client read.
fn content_events(text: &str) -> u64 {
    text.matches("\" tok").count() as u64
}

fn chat_stream(extra: &str) -> String {
    format!(
        r#"{{"model":"m","stream":true,"messages":[{{"role":"user","content":"one two three"}}]{extra}}}"#
    )
}

#[test]
fn cut_vllm_stream_is_billed_partial_and_hides_per_chunk_usage() {
    let b = slow_mock(Flavor::Vllm, 40, 60, false, false);
    let r = Receiver::start();
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "")));
    wait_learned(&gw, true);
    let k = 5;
    let (text, id) = stream_until(gw.addr, &chat_stream(""), "", |t| content_events(t) >= k);
    assert!(!text.contains("\"usage\""), "per-chunk usage reached a client that did not ask: {text}");
    let rec = record_for(&r, &id);
    eprintln!("vLLM cut after {} content events read: {rec}", content_events(&text));
    assert_eq!(rec["status"], "client_disconnected", "{rec}");
    assert_eq!(rec["usage_source"], "partial", "{rec}");
    let (p, c, t) = rec_tokens(&rec);
    assert_eq!(p, 3, "{rec}");
    // What the backend had sent before the gateway closed it: at least what the client read.
    assert!(c >= k && c < 60, "{rec}");
    assert_eq!(t, p + c);
    assert!(rec["usage_missing"].is_null(), "{rec}");
    let sent = b.requests().into_iter().rfind(|q| q.method == "POST").unwrap().json().unwrap();
    assert_eq!(sent["stream_options"]["continuous_usage_stats"], true, "{sent}");
    assert_eq!(sent["stream_options"]["include_usage"], true, "{sent}");
    eventually(10, "backend saw the hang-up", || b.streams_aborted() >= 1);
}

#[test]
fn forced_on_and_off_and_a_client_that_asked_itself() {
    // A TGI-flavoured server (owned_by "tgi": auto is off) forced on still gets asked; forced off
    // on vLLM never asks, and a cut is then estimated from the content events forwarded.
    let tgi = slow_mock(Flavor::Tgi, 5, 4, false, false);
    let vllm = slow_mock(Flavor::Vllm, 40, 60, false, false);
    let r = Receiver::start();
    let extra = format!(
        "{}\n[[backends]]\nurl = \"{}\"\ncontinuous_usage = \"on\"\nmodels = [\"t\"]\n[[backends]]\nurl = \"{}\"\ncontinuous_usage = \"off\"\nmodels = [\"m\"]\n",
        hook(&r, ""),
        tgi.url(),
        vllm.url()
    );
    let gw = Gateway::start(&config_for(&[], &extra));
    let resp =
        request(gw.addr, &post("/v1/chat/completions", &chat_stream("").replace("\"m\"", "\"t\""), ""));
    assert_eq!(resp.status, 200);
    let sent = tgi.requests().into_iter().rfind(|q| q.method == "POST").unwrap().json().unwrap();
    assert_eq!(sent["stream_options"]["continuous_usage_stats"], true, "forced on: {sent}");

    std::thread::sleep(Duration::from_millis(500)); // a health round: learning must not override "off"
    let k = 4;
    let (text, id) = stream_until(gw.addr, &chat_stream(""), "", |t| content_events(t) >= k);
    let sent = vllm.requests().into_iter().rfind(|q| q.method == "POST").unwrap().json().unwrap();
    assert!(sent["stream_options"].get("continuous_usage_stats").is_none(), "forced off: {sent}");
    let rec = record_for(&r, &id);
    assert_eq!(rec["usage_source"], "estimated", "{rec}");
    assert_eq!(rec["prompt_tokens"], 0, "{rec}");
    let c = rec["completion_tokens"].as_u64().unwrap();
    assert!(c >= content_events(&text) && c < 60, "{rec}");

    // A client that asked for continuous usage itself gets every per-chunk usage unchanged.
    let asked = chat_stream(r#","stream_options":{"include_usage":true,"continuous_usage_stats":true}"#);
    let (text, _) = stream_until(gw.addr, &asked, "", |t| content_events(t) >= 2);
    assert!(text.contains(r#""usage":{"prompt_tokens":3,"total_tokens":"#), "{text}");
}

#[test]
fn cut_tgi_stream_is_billed_estimated() {
    let b = slow_mock(Flavor::Tgi, 40, 60, false, false);
    let r = Receiver::start();
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "")));
    wait_learned(&gw, false);
    let k = 6;
    let (text, id) = stream_until(gw.addr, &chat_stream(""), "", |t| content_events(t) >= k);
    let rec = record_for(&r, &id);
    eprintln!("TGI cut after {} content events read: {rec}", content_events(&text));
    assert_eq!(rec["status"], "client_disconnected", "{rec}");
    assert_eq!(rec["usage_source"], "estimated", "{rec}");
    assert_eq!(rec["prompt_tokens"], 0, "{rec}");
    let c = rec["completion_tokens"].as_u64().unwrap();
    // Events forwarded: what the client read, plus any still in flight to it.
    assert!(c >= content_events(&text) && c < 60, "{rec} after {} events", content_events(&text));
}

#[test]
fn n2_streams_bill_the_prompt_once_whole_and_cut() {
    let b = slow_mock(Flavor::Vllm, 30, 40, false, false);
    let r = Receiver::start();
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "")));
    wait_learned(&gw, true);
    let whole = chat_stream(r#","n":2"#);
    let b2 = slow_mock(Flavor::Vllm, 0, 5, false, false);
    let gw2 = Gateway::start(&config_for(&[b2.url()], &hook(&r, "")));
    wait_learned(&gw2, true);
    let resp = request(gw2.addr, &post("/v1/chat/completions", &whole, ""));
    assert!(!resp.text().contains("\"usage\""), "{}", resp.text());
    let rec = record_for(&r, &rid(&resp));
    assert_eq!(rec_tokens(&rec), (3, 10, 13), "{rec}");
    assert_eq!(rec["usage_source"], "final");

    let (_, id) = stream_until(gw.addr, &whole, "", |t| content_events(t) >= 6);
    let rec = record_for(&r, &id);
    assert_eq!(rec["usage_source"], "partial", "{rec}");
    let (p, c, _) = rec_tokens(&rec);
    assert_eq!(p, 3, "prompt once: {rec}");
    assert!((6..80).contains(&c), "{rec}");
}

/// A backend that sends a few content events and the finish event, then the usage chunk `gap`
/// later (OpenAI-style include_usage stream, chunked).
fn late_usage_backend(gap: Duration) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || serve_late(s, gap));
        }
    });
    (addr, h)
}

fn read_request(s: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(h) = text.find("\r\n\r\n") {
            let len = text[..h]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0usize);
            if got.len() >= h + 4 + len {
                return Some(text);
            }
        }
    }
}

fn chunk(s: &mut TcpStream, data: &str) -> std::io::Result<()> {
    s.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
}

fn serve_late(mut s: TcpStream, gap: Duration) {
    while let Some(req) = read_request(&mut s) {
        if req.starts_with("GET") {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            continue;
        }
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        for i in 0..3 {
            let ev = format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" tok{i}\"}},\"finish_reason\":null}}]}}\n\n");
            let _ = chunk(&mut s, &ev);
        }
        let _ =
            chunk(&mut s, "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
        std::thread::sleep(gap);
        let _ = chunk(&mut s, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":3,\"total_tokens\":14}}\n\n");
        let _ = chunk(&mut s, "data: [DONE]\n\n");
        let _ = s.write_all(b"0\r\n\r\n");
    }
}

#[test]
fn a_client_leaving_at_finish_reason_is_billed_the_final_usage() {
    // 20 ms: the gateway may still write the tail into the closed socket unnoticed (then the
    // response counts as relayed whole); 300 ms: it sees the hang-up while waiting and reads on.
    for (gap, statuses) in [(20, &["ok", "client_disconnected"][..]), (300, &["client_disconnected"][..])] {
        let (addr, _h) = late_usage_backend(Duration::from_millis(gap));
        let r = Receiver::start();
        let gw = Gateway::start(&config_for(&[format!("http://{addr}")], &hook(&r, "")));
        for _ in 0..3 {
            let (_, id) =
                stream_until(gw.addr, &chat_stream(""), "", |t| t.contains("\"finish_reason\":\"stop\""));
            let rec = record_for(&r, &id);
            assert_eq!(rec_tokens(&rec), (11, 3, 14), "{gap} ms: {rec}");
            assert_eq!(rec["usage_source"], "final", "{gap} ms: {rec}");
            assert!(statuses.iter().any(|s| rec["status"] == *s), "{gap} ms: {rec}");
        }
    }
}

#[test]
fn backend_errors_and_error_events_are_backend_error() {
    let b = slow_mock(Flavor::Vllm, 0, 3, false, false);
    let r = Receiver::start();
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "")));
    for code in [500u16, 400, 429] {
        for stream in ["", r#","stream":true"#] {
            let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"a"}}]{stream}}}"#);
            let resp =
                request(gw.addr, &post("/v1/chat/completions", &body, &format!("x-mock-status: {code}\r\n")));
            assert_eq!(resp.status, code);
            let rec = record_for(&r, &rid(&resp));
            assert_eq!(rec["status"], "backend_error", "{rec}");
            assert_eq!(rec["http_status"], code, "{rec}");
            assert!(rec["usage_missing"].is_null(), "an error answer consumed nothing: {rec}");
        }
    }
    // A non-2xx whose body the client got whole is still an error; a 2xx stream with an error
    // event is one too.
    let (addr, _h) = error_event_backend();
    let gw2 = Gateway::start(&config_for(&[format!("http://{addr}")], &hook(&r, "")));
    let resp = request(gw2.addr, &post("/v1/chat/completions", &chat_stream(""), ""));
    assert_eq!(resp.status, 200);
    let rec = record_for(&r, &rid(&resp));
    assert_eq!(rec["status"], "backend_error", "{rec}");
    assert_eq!(rec["http_status"], 200, "{rec}");
}

fn error_event_backend() -> (SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                while let Some(req) = read_request(&mut s) {
                    if req.starts_with("GET") {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                        continue;
                    }
                    let body = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"error\":{\"message\":\"boom\",\"http_status_code\":500}}\n\ndata: [DONE]\n\n";
                    let _ = s.write_all(
                        format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{body}", body.len())
                            .as_bytes(),
                    );
                }
            });
        }
    });
    (addr, h)
}

#[test]
fn a_gzip_capable_backend_is_billed_exactly() {
    let b = slow_mock(Flavor::Openai, 0, 5, true, false);
    // The simulator compresses when asked directly.
    let direct =
        request(b.addr(), &post("/v1/chat/completions", &chat_stream(""), "accept-encoding: gzip\r\n"));
    assert_eq!(direct.header("content-encoding"), Some("gzip"));
    let r = Receiver::start();
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "")));
    for body in [
        chat_stream(""),
        r#"{"model":"m","messages":[{"role":"user","content":"one two three"}]}"#.to_string(),
    ] {
        let resp =
            request(gw.addr, &post("/v1/chat/completions", &body, "accept-encoding: gzip, deflate\r\n"));
        assert_eq!(resp.status, 200);
        let seen = b.requests().into_iter().rfind(|q| q.method == "POST").unwrap();
        assert_eq!(seen.header("accept-encoding"), Some("identity"));
        let rec = record_for(&r, &rid(&resp));
        assert_eq!(rec_tokens(&rec), (3, 5, 8), "{rec}");
        assert_eq!(rec["status"], "ok");
        assert_eq!(rec["usage_source"], "final");
    }
}

#[test]
fn cached_and_reasoning_tokens_for_every_shape() {
    let r = Receiver::start();
    for flavor in [Flavor::Vllm, Flavor::Sglang, Flavor::Openai, Flavor::Tgi] {
        let b = slow_mock(flavor, 0, 6, false, true);
        let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "")));
        let prompt = r#""messages":[{"role":"user","content":"one two three four"}]"#;
        let cases = [
            ("/v1/chat/completions", format!(r#"{{"model":"m",{prompt}}}"#)),
            ("/v1/chat/completions", format!(r#"{{"model":"m","stream":true,{prompt}}}"#)),
            ("/v1/responses", r#"{"model":"m","input":"one two three four"}"#.to_string()),
            ("/v1/responses", r#"{"model":"m","stream":true,"input":"one two three four"}"#.to_string()),
            ("/v1/messages", format!(r#"{{"model":"m","max_tokens":9,{prompt}}}"#)),
            ("/v1/messages", format!(r#"{{"model":"m","max_tokens":9,"stream":true,{prompt}}}"#)),
        ];
        for (path, body) in cases {
            let resp = request(gw.addr, &post(path, &body, ""));
            assert_eq!(resp.status, 200, "{flavor} {path}");
            let rec = record_for(&r, &rid(&resp));
            let chat = path == "/v1/chat/completions";
            let (cached, creation, reasoning): (Value, Value, Value) = match (path, flavor) {
                ("/v1/responses", _) => (2.into(), Value::Null, 3.into()),
                ("/v1/messages", _) => (2.into(), 1.into(), Value::Null),
                (_, Flavor::Vllm) => (2.into(), Value::Null, Value::Null),
                (_, Flavor::Sglang) => (2.into(), Value::Null, 3.into()),
                (_, Flavor::Openai) => (2.into(), Value::Null, 3.into()),
                _ => (Value::Null, Value::Null, Value::Null),
            };
            assert_eq!(rec["cached_tokens"], cached, "{flavor} {path}: {rec}");
            assert_eq!(rec["cache_creation_tokens"], creation, "{flavor} {path}: {rec}");
            assert_eq!(rec["reasoning_tokens"], reasoning, "{flavor} {path}: {rec}");
            assert_eq!(rec["usage_source"], "final", "{flavor} {path}: {rec}");
            if chat {
                assert_eq!(rec_tokens(&rec).0, 4, "{rec}");
            }
        }
    }
}

#[test]
fn one_client_request_id_gives_distinct_gateway_ids() {
    let b = slow_mock(Flavor::Vllm, 0, 4, false, false);
    let r = Receiver::start();
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "")));
    let mut ours = std::collections::HashSet::new();
    for _ in 0..3 {
        let resp =
            request(gw.addr, &post("/v1/chat/completions", &chat(""), "x-request-id: client-chosen-1\r\n"));
        assert_eq!(resp.header("x-request-id"), Some("client-chosen-1"));
        let id = rid(&resp);
        assert_ne!(id, "client-chosen-1");
        assert!(id.starts_with("req_") && id.len() == 36, "{id}");
        assert!(ours.insert(id.clone()));
        let rec = record_for(&r, &id);
        assert_eq!(rec["client_request_id"], "client-chosen-1", "{rec}");
        let seen = b.requests().into_iter().rfind(|q| q.method == "POST").unwrap();
        assert_eq!(seen.header("x-request-id"), Some("client-chosen-1"));
    }
    // Without one: client_request_id is null and x-request-id is ours.
    let resp = request(gw.addr, &post("/v1/chat/completions", &chat(""), ""));
    assert_eq!(resp.header("x-request-id").map(str::to_string), Some(rid(&resp)));
    assert_eq!(record_for(&r, &rid(&resp))["client_request_id"], Value::Null);
    // Gateway errors carry ours too.
    let resp = request(gw.addr, &post("/v1/nope", "{}", "x-request-id: c2\r\n"));
    assert_eq!(resp.status, 404);
    assert_eq!(resp.header("x-request-id"), Some("c2"));
    assert!(resp.header("x-llmproxy-request-id").is_some_and(|v| v.starts_with("req_")));
    let m = metrics(gw.addr);
    assert!(m.contains("kind=\"cached\""), "{m}");
    assert!(m.contains("kind=\"reasoning\""), "{m}");
}

/// A backend that answers every POST with 100 Continue, 103 Early Hints and 200 in one write.
fn interim_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            std::thread::spawn(move || {
                while let Some(req) = read_request(&mut s) {
                    if req.starts_with("GET") {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                        continue;
                    }
                    let body = r#"{"choices":[{"index":0,"message":{"content":"x"}}],"usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3}}"#;
                    let _ = s.write_all(
                        format!(
                            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                }
            });
        }
    });
    addr
}

#[test]
fn interim_heads_in_one_read_both_drivers() {
    let addr = interim_backend();
    for driver in ["io_uring", "epoll"] {
        let r = Receiver::start();
        let cfg = config_for(&[format!("http://{addr}")], &hook(&r, ""));
        let gw = Gateway::start_in(tempfile::tempdir().unwrap(), &cfg, &[("LLMPROXY_DRIVER", driver)]);
        for _ in 0..3 {
            let resp = request(gw.addr, &post("/v1/chat/completions", &chat(""), ""));
            assert_eq!(resp.status, 200, "{driver}");
            assert_eq!(resp.json()["usage"]["total_tokens"], 3, "{driver}");
            let rec = record_for(&r, &rid(&resp));
            assert_eq!((rec["status"].clone(), rec_tokens(&rec)), ("ok".into(), (2, 1, 3)), "{driver}");
        }
    }
}

#[test]
fn shutdown_past_grace_cuts_streams_with_a_record_each() {
    let b = slow_mock(Flavor::Vllm, 100, 1000, false, false);
    let r = Receiver::start();
    let cfg = config_for(&[b.url()], &hook(&r, ""))
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"300ms\"");
    let mut gw = Gateway::start(&cfg);
    wait_learned(&gw, true);
    let addr = gw.addr;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&post("/v1/chat/completions", &chat_stream(""), "")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while content_events(&String::from_utf8_lossy(&got)) < 2 {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        clients.push(s);
    }
    let t = Instant::now();
    assert_eq!(gw.terminate(), Some(0), "{}", gw.log_text());
    assert!(t.elapsed() < Duration::from_secs(15));
    assert!(r.wait_for(3, Duration::from_secs(10)), "records: {:?}", r.delivered());
    let recs = r.delivered();
    assert_eq!(recs.len(), 3, "{recs:?}");
    for rec in recs {
        assert_eq!(rec["status"], "gateway_shutdown", "{rec}");
        assert_eq!(rec["usage_source"], "partial", "{rec}");
        assert_eq!(rec["prompt_tokens"], 3, "{rec}");
        assert!(rec["completion_tokens"].as_u64().unwrap() >= 2, "{rec}");
    }
}
