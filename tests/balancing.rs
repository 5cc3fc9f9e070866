//! Choosing backends: weighted, round robin and least-connections spreads, model routing,
//! failover and health, retry rules, per-backend api_key.
mod common;
use common::*;
use llmproxy::mock::Flavor;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CHAT: &str = "/v1/chat/completions";
const FAST: &str = "x-mock-ttft-ms: 0\r\nx-mock-itl-ms: 0\r\nx-mock-tokens: 1\r\n";

/// `n` non-stream requests from `threads` keep-alive connections; returns the statuses.
fn load(addr: SocketAddr, n: usize, threads: usize, extra: &'static str) -> Vec<u16> {
    let per = n / threads;
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = connect(addr);
                (0..per).map(|_| c.request(&post(CHAT, &chat("m"), extra)).status).collect::<Vec<_>>()
            })
        })
        .collect();
    hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
}

#[test]
fn weighted_spread_follows_weights() {
    let a = mock(Flavor::Vllm);
    let b = mock(Flavor::Vllm);
    let extra = format!(
        "[balancer]\nstrategy = \"weighted\"\n[[backends]]\nurl = \"{}\"\nweight = 3\n[[backends]]\nurl = \"{}\"\nweight = 1\n",
        a.url(),
        b.url()
    );
    let gw = Gateway::start(&config_for(&[a.url(), b.url()], &extra));
    let st = load(gw.addr, 400, 4, FAST);
    assert!(st.iter().all(|&s| s == 200), "{st:?}");
    let (na, nb) = (hits(&a, CHAT), hits(&b, CHAT));
    assert_eq!(na + nb, 400);
    assert!((288..=312).contains(&na), "weights 3:1 over 400 requests gave {na}:{nb}");
}

#[test]
fn round_robin_is_even() {
    let ms: Vec<_> = (0..3).map(|_| mock(Flavor::Vllm)).collect();
    let urls: Vec<String> = ms.iter().map(|m| m.url()).collect();
    let gw = Gateway::start(&config_for(&urls, "[balancer]\nstrategy = \"round_robin\"\n"));
    let st = load(gw.addr, 300, 3, FAST);
    assert!(st.iter().all(|&s| s == 200));
    let counts: Vec<usize> = ms.iter().map(|m| hits(m, CHAT)).collect();
    assert_eq!(counts.iter().sum::<usize>(), 300);
    assert!(counts.iter().all(|&c| (95..=105).contains(&c)), "round robin over 300: {counts:?}");
}

/// Holds one request in flight on one of two backends (a 60 s first token, from a client that
/// never reads), then sends 20 quick requests one after another on another connection. Returns how
/// many of the 20 went to the busy backend. Deterministic under any machine load: each quick
/// request has ended (and left the in-flight count) before the next is picked, so at every pick
/// the busy backend counts 1 in flight and the other 0.
fn picks_of_busy_backend(strategy: &str) -> usize {
    let a = mock(Flavor::Vllm);
    let b = mock(Flavor::Vllm);
    let extra = format!("[balancer]\nstrategy = \"{strategy}\"\n");
    let gw = Gateway::start(&config_for(&[a.url(), b.url()], &extra));
    let mut holder = connect(gw.addr);
    holder.send(&post(CHAT, &chat("m"), "x-mock-ttft-ms: 60000\r\n"));
    eventually(30, "the held request reaches a backend", || hits(&a, CHAT) + hits(&b, CHAT) == 1);
    let (busy, idle) = if hits(&a, CHAT) == 1 { (&a, &b) } else { (&b, &a) };
    let mut c = connect(gw.addr);
    for _ in 0..20 {
        assert_eq!(c.request(&post(CHAT, &chat("m"), FAST)).status, 200);
    }
    assert_eq!(hits(busy, CHAT) + hits(idle, CHAT), 21);
    drop(holder);
    hits(busy, CHAT) - 1
}

#[test]
fn least_connections_prefers_the_less_loaded_backend() {
    let least = picks_of_busy_backend("least_connections");
    assert_eq!(least, 0, "least_connections sent {least} of 20 to the backend with a request in flight");
    // The contrast: round robin alternates regardless of load.
    let rr = picks_of_busy_backend("round_robin");
    assert!((8..=12).contains(&rr), "round_robin sent {rr} of 20 to the busy backend");
}

#[test]
fn models_route_to_the_backends_that_list_them() {
    let a = mock(Flavor::Vllm);
    let b = mock(Flavor::Vllm);
    let extra = format!(
        "[[backends]]\nurl = \"{}\"\nmodels = [\"model-a\"]\n[[backends]]\nurl = \"{}\"\nmodels = [\"model-b\", \"model-c\"]\n",
        a.url(),
        b.url()
    );
    let gw = Gateway::start(&config_for(&[a.url(), b.url()], &extra));
    let mut c = connect(gw.addr);
    for _ in 0..10 {
        assert_eq!(c.request(&post(CHAT, &chat("model-a"), FAST)).status, 200);
        assert_eq!(c.request(&post(CHAT, &chat("model-c"), FAST)).status, 200);
    }
    let models = |m: &llmproxy::mock::MockBackend| -> Vec<String> {
        m.requests()
            .iter()
            .filter(|r| r.path == CHAT)
            .map(|r| r.json().unwrap()["model"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(models(&a), vec!["model-a".to_string(); 10]);
    assert_eq!(models(&b), vec!["model-c".to_string(); 10]);
    let r = c.request(&post(CHAT, &chat("model-zzz"), ""));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found", "{}", r.text());
    // No model at all: nobody serves it either.
    let r = c.request(&post(CHAT, r#"{"messages":[]}"#, ""));
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(hits(&a, CHAT) + hits(&b, CHAT), 20);
}

fn backend_up(addr: SocketAddr, url: &str) -> Option<f64> {
    metric(&metrics(addr), &format!("llmproxy_backend_up{{backend=\"{url}\"}}"))
}

#[test]
fn failover_loses_no_request_and_health_follows_backends() {
    let ms: Vec<_> = (0..3).map(|_| mock(Flavor::Vllm)).collect();
    let urls: Vec<String> = ms.iter().map(|m| m.url()).collect();
    let gw = Gateway::start(&config_for(&urls, "[balancer]\nstrategy = \"round_robin\"\n"));
    let addr = gw.addr;
    let mut c = connect(addr);
    for i in 0..60 {
        if i == 30 {
            ms[1].kill();
        }
        let r = c.request(&post(CHAT, &chat("m"), FAST));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        if i % 10 == 5 {
            let st = load(addr, 8, 4, FAST);
            assert!(st.iter().all(|&s| s == 200), "concurrent batch at {i}: {st:?}");
        }
    }
    eventually(3, "killed backend marked down", || backend_up(addr, &urls[1]) == Some(0.0));
    assert_eq!(backend_up(addr, &urls[0]), Some(1.0));
    // Once down, it is not even tried: no more retries are logged.
    let retries = |g: &Gateway| g.log_text().matches("retrying").count();
    let before = retries(&gw);
    let st = load(addr, 40, 4, FAST);
    assert!(st.iter().all(|&s| s == 200));
    assert_eq!(retries(&gw), before, "requests still tried the down backend:\n{}", gw.log_text());
    assert_eq!(request(addr, &get("/health")).status, 200);

    // All down: /health is 503, requests get a 503 JSON error.
    ms[0].kill();
    ms[2].kill();
    eventually(3, "/health 503 with every backend dead", || request(addr, &get("/health")).status == 503);
    let r = request(addr, &post(CHAT, &chat("m"), ""));
    assert!(r.status == 503 || r.status == 502, "{} {}", r.status, r.text());
    assert!(r.json()["error"]["code"].is_string());

    // A backend comes back on the same port: healthy again.
    let port = ms[2].addr();
    let mut back = None;
    eventually(5, "rebinding the backend's port", || {
        back = TcpListener::bind(port).ok();
        back.is_some()
    });
    let mut o = llmproxy::mock::MockOptions::new(Flavor::Vllm);
    o.ttft = Duration::from_millis(1);
    let revived = llmproxy::mock::MockBackend::start(back.unwrap(), o);
    eventually(3, "/health 200 again", || request(addr, &get("/health")).status == 200);
    let r = request(addr, &post(CHAT, &chat("m"), FAST));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(hits(&revived, CHAT), 1);
}

/// A backend that passes health checks but closes every proxied request's connection without
/// answering. Returns its URL and the number of requests it dropped.
fn hang_up_backend() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let dropped = Arc::new(AtomicUsize::new(0));
    let d2 = dropped.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 4096];
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let n = s.read(&mut buf).unwrap_or(0);
            if buf[..n].starts_with(b"GET /health") {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            } else {
                d2.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    (url, dropped)
}

#[test]
fn failure_before_any_response_byte_is_retried_once_elsewhere() {
    let (bad, dropped) = hang_up_backend();
    let good = mock(Flavor::Vllm);
    let gw =
        Gateway::start(&config_for(&[bad.clone(), good.url()], "[balancer]\nstrategy = \"round_robin\"\n"));
    let mut c = connect(gw.addr);
    for i in 0..10 {
        let r = c.request(&post(CHAT, &chat("m"), FAST));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert!(dropped.load(Ordering::SeqCst) >= 3, "the hang-up backend was tried {dropped:?} times");
    assert_eq!(hits(&good, CHAT), 10);
    // A connect failure (nothing listening) is retried too.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let good2 = mock(Flavor::Vllm);
    let gw2 = Gateway::start(&config_for(
        &[dead_url, good2.url()],
        "[balancer]\nstrategy = \"round_robin\"\n[health_check]\ninterval = \"60s\"\n",
    ));
    let st = load(gw2.addr, 8, 2, FAST);
    assert!(st.iter().all(|&s| s == 200), "{st:?}");
}

#[test]
fn nothing_is_retried_after_response_bytes() {
    let a = mock(Flavor::Vllm);
    let b = mock(Flavor::Vllm);
    let gw = Gateway::start(&config_for(&[a.url(), b.url()], ""));
    let body = r#"{"model":"m","stream":true,"messages":[]}"#;
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.write_all(&post(CHAT, body, "x-mock-abort-after: 3\r\nx-mock-tokens: 10\r\n")).unwrap();
    let (got, closed) = read_to_close(&mut s, 10);
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(closed, "connection must close after a broken stream: {text}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.ends_with("0\r\n\r\n"), "a truncated stream must not look complete: {text}");
    assert!(!text.contains("[DONE]"), "{text}");
    let events = text.matches("data: ").count();
    assert!((1..=3).contains(&events), "expected at most 3 events once, got {events}: {text}");
    assert_eq!(text.matches("\"role\":\"assistant\"").count(), 1, "duplicated stream: {text}");
    assert_eq!(hits(&a, CHAT) + hits(&b, CHAT), 1, "the request reached a backend exactly once");
    // Same for a JSON body cut after some bytes.
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.write_all(&post(CHAT, &chat("m"), "x-mock-abort-after: 20\r\n")).unwrap();
    let (got, closed) = read_to_close(&mut s, 10);
    assert!(closed);
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.1 502"), "{text}");
    assert_eq!(hits(&a, CHAT) + hits(&b, CHAT), 2);
}

#[test]
fn backend_api_key_replaces_client_authorization() {
    let a = mock(Flavor::Openai);
    let b = mock(Flavor::Openai);
    let extra = format!(
        "[balancer]\nstrategy = \"round_robin\"\n[[backends]]\nurl = \"{}\"\napi_key = \"sk-backend-secret\"\n[[backends]]\nurl = \"{}\"\n",
        a.url(),
        b.url()
    );
    let gw = Gateway::start(&config_for(&[a.url(), b.url()], &extra));
    let mut c = connect(gw.addr);
    for _ in 0..4 {
        let r = c.request(&post(CHAT, &chat("m"), "Authorization: Bearer sk-client-key\r\n"));
        assert_eq!(r.status, 200);
    }
    let ra = a.requests().into_iter().filter(|r| r.path == CHAT).collect::<Vec<_>>();
    let rb = b.requests().into_iter().filter(|r| r.path == CHAT).collect::<Vec<_>>();
    assert_eq!((ra.len(), rb.len()), (2, 2));
    for r in &ra {
        let auth: Vec<_> =
            r.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("authorization")).collect();
        assert_eq!(auth.len(), 1, "{:?}", r.headers);
        assert_eq!(auth[0].1, "Bearer sk-backend-secret");
    }
    for r in &rb {
        assert_eq!(r.header("authorization"), Some("Bearer sk-client-key"));
    }
}

/// A backend that answers its health check at once but trickles its `/v1/models` answer (a byte
/// every 50 ms, for ever): the health thread reads it for at most the check's timeout, so other
/// backends are still checked (it used to read until the end, and never checked anything again).
#[test]
fn a_backend_that_trickles_its_model_list_does_not_stall_health_checks() {
    fn serve(mut s: std::net::TcpStream) {
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap_or(0);
        if buf[..n].starts_with(b"GET /v1/models") {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{");
            while s.write_all(b" ").is_ok() {
                std::thread::sleep(Duration::from_millis(50));
            }
        } else {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let trickler = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            std::thread::spawn(move || serve(s));
        }
    });
    let b = mock(Flavor::Vllm);
    let urls = [trickler, b.url()];
    let gw =
        Gateway::start(&config_for(&urls, "[health_check]\ninterval = \"200ms\"\ntimeout = \"500ms\"\n"));
    eventually(5, "both backends up", || {
        backend_up(gw.addr, &urls[0]) == Some(1.0) && backend_up(gw.addr, &urls[1]) == Some(1.0)
    });
    // The health thread is in the trickled answer by now (it is read on every check).
    std::thread::sleep(Duration::from_secs(1));
    b.kill();
    eventually(5, "the killed backend marked down by the health thread", || {
        backend_up(gw.addr, &urls[1]) == Some(0.0)
    });
}
