//! The client side of the request path: every bad-input case answers the right status (and closes
//! when framing is in doubt), odd but valid clients work, keep-alive, pipelining, request ids, and
//! many idle connections.
mod common;
use common::*;
use llmproxy::mock::Flavor;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const CHAT: &str = "/v1/chat/completions";

fn gateway(m: &llmproxy::mock::MockBackend) -> Gateway {
    Gateway::start(&config_for(
        &[m.url()],
        "[limits]\nheader_read_timeout = \"300ms\"\nmax_request_body = \"1KiB\"\n",
    ))
}

/// Sends raw bytes on a new connection; returns the response and whether the server then closed.
fn raw(addr: SocketAddr, bytes: &[u8]) -> (Response, bool) {
    let mut c = connect(addr);
    c.send(bytes);
    let r = c.read_response();
    let closed = r.closed || c.is_closed();
    (r, closed)
}

fn assert_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{}", r.text());
    assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string(), "{}", r.text());
    assert!(r.header("x-request-id").is_some_and(|i| i.starts_with("req_")));
}

#[test]
fn routing_errors_are_json_and_keep_the_connection() {
    let m = mock(Flavor::Vllm);
    let gw = gateway(&m);
    let mut c = connect(gw.addr);
    let r = c.request(&get("/v2/nothing"));
    assert_error(&r, 404, "not_found");
    let r = c.request(&get(CHAT));
    assert_error(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    let r = c.request(&post("/health", "", ""));
    assert_error(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET"));
    let r = c.request(b"DELETE /v1/models HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 405);
    // Still the same connection.
    let r = c.request(&post(CHAT, &chat("m"), ""));
    assert_eq!(r.status, 200);
    assert_eq!(hits(&m, CHAT), 1);
}

#[test]
fn malformed_requests_get_4xx_and_close() {
    let m = mock(Flavor::Vllm);
    let gw = gateway(&m);
    let a = gw.addr;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("bad header line", b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(), 400, "bad_request"),
        ("bad version", b"GET /health HTTP/9.9\r\n\r\n".to_vec(), 400, "bad_request"),
        (
            "CL and TE",
            format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
                .into_bytes(),
            400,
            "bad_request",
        ),
        (
            "two Content-Lengths",
            format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}").into_bytes(),
            400,
            "bad_request",
        ),
        (
            "bad Content-Length",
            format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n").into_bytes(),
            400,
            "bad_request",
        ),
        (
            "invalid chunked body",
            format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n").into_bytes(),
            400,
            "bad_request",
        ),
        (
            "body over max_request_body",
            format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n").into_bytes(),
            413,
            "request_too_large",
        ),
        (
            "chunked body over max_request_body",
            format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n", "x".repeat(2048))
                .into_bytes(),
            413,
            "request_too_large",
        ),
        (
            "head too big",
            format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(40 * 1024)).into_bytes(),
            431,
            "header_too_large",
        ),
        (
            "too many headers",
            format!("GET /health HTTP/1.1\r\n{}\r\n", (0..150).map(|i| format!("X-H{i}: v\r\n")).collect::<String>())
                .into_bytes(),
            431,
            "header_too_large",
        ),
    ];
    for (what, bytes, status, code) in cases {
        let (r, closed) = raw(a, &bytes);
        assert_eq!(r.status, status, "{what}: {}", r.text());
        assert_error(&r, status, code);
        assert!(closed, "{what}: connection must be closed");
    }
    assert_eq!(hits(&m, CHAT), 0, "no bad request reached the backend");
}

#[test]
fn invalid_json_body_is_400() {
    let m = mock(Flavor::Vllm);
    let gw = gateway(&m);
    for body in [r#"{"model":"#, "[1,2]", "not json", r#"{"a":1}x"#] {
        let r = request(gw.addr, &post(CHAT, body, ""));
        assert_error(&r, 400, "bad_request");
    }
    assert_eq!(hits(&m, CHAT), 0);
}

#[test]
fn slow_header_client_is_cut_off_with_408() {
    let m = mock(Flavor::Vllm);
    let gw = gateway(&m);
    let mut c = connect(gw.addr);
    let t = Instant::now();
    c.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n");
    let r = c.read_response();
    let took = t.elapsed();
    assert_error(&r, 408, "request_timeout");
    assert!(c.is_closed(), "closed after 408");
    assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(2), "408 after {took:?}");
    // A connection that sends nothing at all is closed too (within the timeout, without a hang).
    let mut s = TcpStream::connect(gw.addr).unwrap();
    let (_, closed) = read_to_close(&mut s, 3);
    assert!(closed, "silent connection not closed");
}

#[test]
fn random_garbage_is_answered_or_closed_never_hangs() {
    let m = mock(Flavor::Vllm);
    let gw = gateway(&m);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..40 {
        let len = 1 + (round * 37) % 3000;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Some rounds are printable garbage with line breaks, the rest any byte.
                if round % 2 == 0 {
                    b" \r\nGETPOST/:aZ09"[(seed % 16) as usize]
                } else {
                    seed as u8
                }
            })
            .collect();
        let mut s = TcpStream::connect(gw.addr).unwrap();
        let _ = s.write_all(&bytes);
        let t = Instant::now();
        let (got, closed) = read_to_close(&mut s, 3);
        let text = String::from_utf8_lossy(&got);
        assert!(closed, "round {round}: connection left open after garbage: {text:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "round {round}: took {:?}", t.elapsed());
        assert!(
            got.is_empty()
                || ["400", "404", "405", "408", "413", "431"]
                    .iter()
                    .any(|s| text.starts_with(&format!("HTTP/1.1 {s}"))),
            "round {round}: unexpected answer {text:?}"
        );
    }
    // The gateway is fine afterwards.
    assert_eq!(request(gw.addr, &post(CHAT, &chat("m"), "")).status, 200);
}

#[test]
fn chunked_bodies_expect_continue_and_http10_work() {
    let m = mock(Flavor::Vllm);
    let gw = gateway(&m);
    let body = chat("chunky");
    let (a, b) = body.split_at(10);
    let req = format!(
        "POST {CHAT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let mut c = connect(gw.addr);
    let r = c.request(req.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let got = m.requests().into_iter().rfind(|r| r.path == CHAT).unwrap();
    assert_eq!(got.json().unwrap()["model"], "chunky");
    // Keep-alive survives a chunked request.
    assert_eq!(c.request(&get("/health")).status, 200);

    // Expect: 100-continue: the gateway invites the body, then answers.
    let body = chat("expecting");
    let mut c = connect(gw.addr);
    c.send(
        format!(
            "POST {CHAT} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let r = c.read_response();
    assert_eq!(r.status, 100);
    c.send(body.as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        m.requests().into_iter().rfind(|r| r.path == CHAT).unwrap().json().unwrap()["model"],
        "expecting"
    );

    // HTTP/1.0: JSON and a stream (close-delimited), then the connection closes.
    for stream in [false, true] {
        let body = format!(r#"{{"model":"m","stream":{stream},"messages":[]}}"#);
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.write_all(
            format!("POST {CHAT} HTTP/1.0\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
        )
        .unwrap();
        let (got, closed) = read_to_close(&mut s, 10);
        let text = String::from_utf8_lossy(&got);
        assert!(closed, "HTTP/1.0 connection closes");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(
            !text.to_ascii_lowercase().contains("transfer-encoding: chunked"),
            "no chunked to 1.0: {text}"
        );
        if stream {
            assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        } else {
            let body = text.split("\r\n\r\n").nth(1).unwrap();
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["usage"]["completion_tokens"], 5);
        }
    }
}

#[test]
fn keep_alive_and_pipelining() {
    let m = mock(Flavor::Vllm);
    let gw = gateway(&m);
    let mut c = connect(gw.addr);
    for i in 0..5 {
        let r = c.request(&post(CHAT, &chat("m"), ""));
        assert_eq!(r.status, 200, "request {i}");
        assert!(!r.closed);
    }
    // Two (then three, mixed) requests in one write, answered in order.
    let stream = r#"{"model":"m","stream":true,"messages":[]}"#;
    let mut bytes = post(CHAT, &chat("m"), "x-request-id: first\r\n");
    bytes.extend(post(CHAT, stream, "x-request-id: second\r\n"));
    bytes.extend(b"GET /health HTTP/1.1\r\nx-request-id: third\r\n\r\n");
    c.send(&bytes);
    let r1 = c.read_response();
    let r2 = c.read_response();
    let r3 = c.read_response();
    assert_eq!(r1.header("x-request-id"), Some("first"));
    assert_eq!(r1.json()["usage"]["completion_tokens"], 5);
    assert_eq!(r2.header("x-request-id"), Some("second"));
    assert_eq!(r2.sse_data().last().map(String::as_str), Some("[DONE]"));
    assert_eq!(r3.header("x-request-id"), Some("third"));
    assert_eq!(r3.status, 200);
    assert_eq!(hits(&m, CHAT), 7);
    // A pipelined pair in one write, the second with Connection: close.
    let mut bytes = post(CHAT, &chat("m"), "");
    bytes.extend(post(CHAT, &chat("m"), "Connection: close\r\n"));
    c.send(&bytes);
    assert_eq!(c.read_response().status, 200);
    let last = c.read_response();
    assert_eq!(last.status, 200);
    assert!(last.closed, "Connection: close honoured");
}

#[test]
fn request_ids_are_echoed_or_generated_and_reach_the_backend() {
    let m = mock(Flavor::Vllm);
    let gw = gateway(&m);
    let r = request(gw.addr, &post(CHAT, &chat("m"), "X-Request-Id: client-id-42\r\n"));
    assert_eq!(r.header("x-request-id"), Some("client-id-42"));
    let seen = m.requests().into_iter().rfind(|r| r.path == CHAT).unwrap();
    let ids: Vec<_> = seen.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("x-request-id")).collect();
    assert_eq!(ids.len(), 1, "{:?}", seen.headers);
    assert_eq!(ids[0].1, "client-id-42");

    let mut generated = Vec::new();
    for _ in 0..3 {
        let r = request(gw.addr, &post(CHAT, r#"{"model":"m","stream":true,"messages":[]}"#, ""));
        let id = r.header("x-request-id").expect("an id").to_string();
        assert!(id.starts_with("req_") && id.len() > 8, "{id}");
        let seen = m.requests().into_iter().rfind(|r| r.path == CHAT).unwrap();
        assert_eq!(seen.header("x-request-id"), Some(id.as_str()));
        generated.push(id);
    }
    generated.sort();
    generated.dedup();
    assert_eq!(generated.len(), 3, "ids are unique");
    // Local answers carry one too.
    let r = request(gw.addr, &get("/health"));
    assert!(r.header("x-request-id").is_some_and(|i| i.starts_with("req_")));
}

#[test]
fn many_idle_connections_do_not_block_traffic() {
    let m = mock(Flavor::Vllm);
    let gw = Gateway::start(&config_for(&[m.url()], ""));
    let mut idle = Vec::new();
    for i in 0..500 {
        let mut s = TcpStream::connect(gw.addr).expect("connect idle");
        if i % 5 == 0 {
            s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le").unwrap();
        }
        idle.push(s);
    }
    eventually(5, "500 idle connections counted", || {
        metric(&metrics(gw.addr), "llmproxy_connections_active").is_some_and(|v| v >= 500.0)
    });
    for _ in 0..5 {
        let t = Instant::now();
        let r = request(gw.addr, &post(CHAT, &chat("m"), ""));
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "request took {:?} next to 500 idle connections",
            t.elapsed()
        );
    }
    drop(idle);
    eventually(5, "idle connections released", || {
        metric(&metrics(gw.addr), "llmproxy_connections_active").is_some_and(|v| v < 10.0)
    });
}

/// Virtual memory of a process, from /proc/PID/status (KiB).
fn vm_size_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmSize")
}

/// A declared Content-Length is not memory: clients announcing the largest allowed body (1 GiB)
/// and sending a few bytes of it make the gateway reserve a step, not the whole body (each such
/// connection reserved 1 GiB of address space; under strict overcommit that ends the process).
#[test]
fn a_declared_body_length_is_not_reserved_up_front() {
    let m = mock(Flavor::Vllm);
    let gw = Gateway::start(&config_for(&[m.url()], "[limits]\nmax_request_body = \"1GiB\"\n"));
    let pid = gw.child.as_ref().expect("child").id();
    let before = vm_size_kib(pid);
    let mut conns = Vec::new();
    for _ in 0..8 {
        let mut c = TcpStream::connect(gw.addr).expect("connect");
        c.write_all(format!("POST {CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"model\":", 1u64 << 30).as_bytes())
            .expect("send");
        conns.push(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    let grown = vm_size_kib(pid).saturating_sub(before);
    assert!(grown < 1 << 20, "8 announced 1 GiB bodies grew the address space by {grown} KiB");
    drop(conns);
    let r = request(gw.addr, &post(CHAT, &chat("m"), ""));
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A client that pipelines requests the gateway answers itself and never reads the answers is
/// closed once an answer has waited ANSWER_WRITE_TIMEOUT (10 s) to be taken; it used to hold its
/// connection (and a max_connections slot) for ever.
#[test]
fn a_client_that_never_reads_its_answers_is_closed() {
    let m = mock(Flavor::Vllm);
    let gw = Gateway::start(&config_for(&[m.url()], ""));
    let mut s = TcpStream::connect(gw.addr).expect("connect");
    let one = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    let many: Vec<u8> = one.iter().copied().cycle().take(one.len() * 2000).collect();
    s.write_all(&many).expect("pipeline");
    let active = || metric(&metrics(gw.addr), "llmproxy_connections_active").unwrap_or(-1.0);
    eventually(5, "the reader-less connection counted", || active() >= 2.0);
    let t = Instant::now();
    // Only the connection asking for the metrics is left.
    eventually(30, "the connection that never reads is closed", || active() <= 1.0);
    assert!(t.elapsed() >= Duration::from_secs(5), "closed after {:?}, before the timeout", t.elapsed());
    drop(s);
}
