//! Helpers of the metering tests: webhook config sections, waiting for a request's usage record,
//! reading `/metrics`, and a small concurrent load generator.
#![allow(dead_code)]

use crate::common::{connect, post, Receiver, Response};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A `[usage_hook]` section delivering to `r`, spooling into the gateway's temp dir, with quick
/// retries so outages in tests resolve in well under a second; `extra` lines are appended.
pub fn hook(r: &Receiver, extra: &str) -> String {
    format!(
        "[usage_hook]\nenabled = true\nurl = \"{}\"\nspool_dir = \"@SPOOL@\"\ntimeout = \"500ms\"\nretry = 0\nreplay_interval = \"100ms\"\n{extra}\n",
        r.url()
    )
}

/// The delivered record with this request_id, waiting up to 10 s for it.
pub fn record_for(r: &Receiver, id: &str) -> Value {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = r.delivered().into_iter().find(|v| v["request_id"] == id) {
            return v;
        }
        assert!(Instant::now() < end, "no usage record for {id}; delivered: {:?}", r.delivered());
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How many delivered records carry this request_id.
pub fn count_for(r: &Receiver, id: &str) -> usize {
    r.delivered().iter().filter(|v| v["request_id"] == id).count()
}

/// The response's x-llmproxy-request-id (the record's request_id).
pub fn rid(resp: &Response) -> String {
    resp.header("x-llmproxy-request-id").expect("x-llmproxy-request-id on every response").to_string()
}

/// Backend usage as the client saw it in a JSON body, mapped onto prompt/completion/total.
pub fn body_usage(body: &Value) -> (u64, u64, u64) {
    let u = &body["usage"];
    assert!(u.is_object(), "backend body has no usage: {body}");
    let g = |a: &str, b: &str| u[a].as_u64().or_else(|| u[b].as_u64());
    let p = g("prompt_tokens", "input_tokens").unwrap_or(0);
    let c = g("completion_tokens", "output_tokens").unwrap_or(0);
    (p, c, u["total_tokens"].as_u64().unwrap_or(p + c))
}

/// The record's (prompt, completion, total) tokens.
pub fn rec_tokens(rec: &Value) -> (u64, u64, u64) {
    let g = |k: &str| rec[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {rec}"));
    (g("prompt_tokens"), g("completion_tokens"), g("total_tokens"))
}

/// One finished request of [`load`].
pub struct Done {
    pub id: String,
    pub status: u16,
    pub elapsed: Duration,
}

/// `total` requests with `body` on `clients` keep-alive connections in parallel.
pub fn load(addr: SocketAddr, path: &str, body: &str, total: usize, clients: usize) -> Vec<Done> {
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let n = total / clients + usize::from(t < total % clients);
            let (path, body) = (path.to_string(), body.to_string());
            std::thread::spawn(move || {
                let mut out = Vec::with_capacity(n);
                let mut c = connect(addr);
                for _ in 0..n {
                    let t0 = Instant::now();
                    let r = c.request(&post(&path, &body, ""));
                    out.push(Done { id: rid(&r), status: r.status, elapsed: t0.elapsed() });
                    if r.closed || r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                        c = connect(addr);
                    }
                }
                out
            })
        })
        .collect();
    threads.into_iter().flat_map(|t| t.join().expect("load thread")).collect()
}

/// Sends `req` on a raw socket, reads until `stop(text so far)` (or the end), then hangs up: a
/// client that leaves mid-stream. Returns (what was read, the x-llmproxy-request-id).
pub fn read_then_hang_up(addr: SocketAddr, req: &[u8], stop: impl Fn(&str) -> bool) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("read timeout");
    s.write_all(req).expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !stop(&String::from_utf8_lossy(&got)) {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    drop(s);
    let text = String::from_utf8_lossy(&got).into_owned();
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("x-llmproxy-request-id: "))
        .unwrap_or_else(|| panic!("no x-llmproxy-request-id in {text}"))
        .trim()
        .to_string();
    (text, id)
}
