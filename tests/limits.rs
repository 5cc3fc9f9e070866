//! Limits on one gateway (store = "local"), through the real binary: each limit exact across two
//! worker cores, the 429 as OpenAI clients expect it, the six x-ratelimit-* headers on every response
//! to a limited subject, token reservation replaced by the billed tokens, and the openai SDK's retry
//! honouring retry-after.

mod common;

use common::prereq::missing;
use common::replay::{Framing, Replay, Reply};
use common::*;
use llmproxy::mock::{Flavor, MockBackend};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What an unlimited dimension of a limited subject reports (limit and remaining).
const UNLIMITED: i64 = i32::MAX as i64;

fn chat_req(body: &str, headers: &str) -> Vec<u8> {
    post("/v1/chat/completions", body, headers)
}

/// A vLLM mock and a gateway in front of it with `[rate_limit] enabled = true` plus `limits`
/// (more `[rate_limit]` keys, then any other sections).
fn limited(limits: &str) -> (MockBackend, Gateway) {
    limited_with("", limits)
}

/// `limited` with `before` (e.g. a `[runtime]` section) ahead of `[rate_limit]`.
fn limited_with(before: &str, limits: &str) -> (MockBackend, Gateway) {
    let b = mock(Flavor::Vllm);
    let gw =
        Gateway::start(&config_for(&[b.url()], &format!("{before}[rate_limit]\nenabled = true\n{limits}")));
    (b, gw)
}

/// One worker, so that the remaining counts in the headers are exact.
const ONE_WORKER: &str = "[runtime]\nworkers = 1\npin_cores = false\n";

/// Starts `n` requests at once from `n` threads, each on its own connection (spread over cores).
fn spawn_requests(addr: SocketAddr, n: usize, bytes: &[u8]) -> Vec<JoinHandle<Response>> {
    let gate = Arc::new(Barrier::new(n));
    (0..n)
        .map(|_| {
            let (gate, bytes) = (gate.clone(), bytes.to_vec());
            std::thread::spawn(move || {
                let mut c = connect(addr);
                gate.wait();
                c.request(&bytes)
            })
        })
        .collect()
}

fn join(hs: Vec<JoinHandle<Response>>) -> Vec<Response> {
    hs.into_iter().map(|h| h.join().expect("client thread")).collect()
}

fn burst(addr: SocketAddr, n: usize, bytes: &[u8]) -> Vec<Response> {
    join(spawn_requests(addr, n, bytes))
}

fn assert_429(r: &Response, code: &str) {
    assert_eq!(r.status, 429, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    let ra: u64 = r.header("retry-after").expect("retry-after").parse().expect("whole seconds");
    assert!(ra >= 1, "retry-after {ra}");
}

fn num(r: &Response, h: &str) -> i64 {
    r.header(h).unwrap_or_else(|| panic!("missing {h}: {:?}", r.headers)).parse().expect(h)
}

/// Asserts the six x-ratelimit-* headers, each exactly once; `requests` and `tokens` are the
/// expected limits (`UNLIMITED`: limit and remaining UNLIMITED, reset 0s).
fn assert_block(r: &Response, requests: i64, tokens: i64) {
    for (dim, limit) in [("requests", requests), ("tokens", tokens)] {
        for h in ["limit", "remaining", "reset"] {
            let name = format!("x-ratelimit-{h}-{dim}");
            let n = r.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(&name)).count();
            assert_eq!(n, 1, "{name} {n} times in {:?}", r.headers);
        }
        assert_eq!(num(r, &format!("x-ratelimit-limit-{dim}")), limit);
        let remaining = num(r, &format!("x-ratelimit-remaining-{dim}"));
        let reset = r.header(&format!("x-ratelimit-reset-{dim}")).unwrap();
        let secs: u64 = reset.strip_suffix('s').and_then(|v| v.parse().ok()).expect(reset);
        if limit == UNLIMITED {
            assert_eq!((remaining, secs), (UNLIMITED, 0), "{dim}");
        } else {
            assert!((0..=limit).contains(&remaining) && secs <= 86_400, "{dim}: {remaining} {reset}");
        }
    }
}

fn assert_no_block(r: &Response) {
    assert!(
        !r.headers.iter().any(|(k, _)| k.to_ascii_lowercase().starts_with("x-ratelimit-")),
        "{:?}",
        r.headers
    );
}

/// `llmproxy_rate_limit_remaining` of `subject`'s `limit`.
fn remaining_gauge(gw: &Gateway, subject: &str, limit: &str) -> Option<f64> {
    metric(
        &metrics(gw.addr),
        &format!("llmproxy_rate_limit_remaining{{subject=\"{subject}\",limit=\"{limit}\"}}"),
    )
}

fn refusals(gw: &Gateway, reason: &str) -> Option<f64> {
    metric(&metrics(gw.addr), &format!("llmproxy_rate_limited_total{{reason=\"{reason}\"}}"))
}

/// A streamed request that takes a while (`tokens` events 300 ms apart).
fn slow_stream(tokens: u32, max_tokens: Option<u32>) -> Vec<u8> {
    let max = max_tokens.map_or(String::new(), |m| format!(r#""max_tokens":{m},"#));
    chat_req(
        &format!(
            r#"{{"model":"m",{max}"stream":true,"messages":[{{"role":"user","content":"say hello"}}]}}"#
        ),
        &format!("x-mock-tokens: {tokens}\r\nx-mock-itl-ms: 300\r\n"),
    )
}

#[test]
fn requests_per_minute_is_exact_across_cores_and_unlimited_keys_are_untouched() {
    let (b, gw) = limited(
        "requests_per_minute = 10\n[auth]\n[[auth.keys]]\nkey = \"sk-free\"\nuser_id = \"free\"\nrequests_per_minute = 0\n",
    );
    let rs = burst(gw.addr, 16, &chat_req(&chat("m"), ""));
    let statuses: Vec<_> = rs.iter().map(|r| r.status).collect();
    let refused: Vec<_> = rs.iter().filter(|r| r.status == 429).collect();
    assert_eq!((rs.len() - refused.len(), refused.len()), (10, 6), "statuses: {statuses:?}");
    for r in &refused {
        assert_429(r, "rate_limit_exceeded");
    }
    for r in rs.iter() {
        assert_block(r, 10, UNLIMITED);
        assert!(num(r, "x-ratelimit-remaining-requests") < 10);
    }
    assert_eq!(hits(&b, "/v1/chat/completions"), 10, "a refused request reaches no backend");
    // The key with its own "no limit" goes on, without limit headers.
    for _ in 0..5 {
        let r = request(gw.addr, &chat_req(&chat("m"), "Authorization: Bearer sk-free\r\n"));
        assert_eq!(r.status, 200);
        assert_no_block(&r);
    }
    assert_eq!(refusals(&gw, "requests"), Some(6.0));
    assert_eq!(refusals(&gw, "budget"), Some(0.0));
    eventually(10, "remaining gauge", || {
        remaining_gauge(&gw, "anonymous", "requests_per_minute") == Some(0.0)
    });
}

#[test]
fn every_response_to_a_limited_subject_carries_the_six_headers() {
    // Limited only by max_concurrent: both dimensions report "no limit".
    let (_b, gw) = limited(
        "max_concurrent = 5\n[auth]\n[[auth.keys]]\nkey = \"sk-free\"\nuser_id = \"free\"\nmax_concurrent = 0\n[[auth.keys]]\nkey = \"sk-both\"\nuser_id = \"both\"\ntokens_per_minute = 100000\ntokens_per_day = 500\n",
    );
    let stream = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let cases = [
        ("json", chat_req(&chat("m"), ""), 200),
        ("stream", chat_req(stream, ""), 200),
        ("backend error", chat_req(&chat("m"), "x-mock-status: 500\r\n"), 500),
        ("bad body", chat_req("{not json", ""), 400),
    ];
    for (what, bytes, status) in &cases {
        let r = request(gw.addr, bytes);
        assert_eq!(r.status, *status, "{what}: {}", r.text());
        assert_block(&r, UNLIMITED, UNLIMITED);
        // The same request from an unlimited key carries none.
        let mut free = String::from_utf8(bytes.clone()).unwrap();
        free = free.replacen("\r\n", "\r\nAuthorization: Bearer sk-free\r\n", 1);
        assert_no_block(&request(gw.addr, free.as_bytes()));
    }
    // Tokens: the limit with less left (here the day budget), with its reset (until 00:00 UTC).
    let r = request(gw.addr, &chat_req(&chat("m"), "Authorization: Bearer sk-both\r\n"));
    assert_block(&r, UNLIMITED, 500);
    assert!(num(&r, "x-ratelimit-remaining-tokens") < 500);

    // A gateway error after admission (no backend answers) carries them too.
    let dead = format!("http://127.0.0.1:{}", common::redis::free_port());
    let gw2 = Gateway::start(&config_for(&[dead], "[rate_limit]\nenabled = true\nmax_concurrent = 5\n"));
    let r = request(gw2.addr, &chat_req(&chat("m"), ""));
    assert!(r.status == 502 || r.status == 503, "{} {}", r.status, r.text());
    assert_block(&r, UNLIMITED, UNLIMITED);

    // A backend's own x-ratelimit-* headers (an upstream's quota) give way to the subject's.
    let mut reply = Reply::new(200, "application/json", chat_completion().as_bytes(), Framing::Length);
    reply.headers.push(("x-ratelimit-limit-requests".into(), "999".into()));
    reply.headers.push(("X-RateLimit-Remaining-Tokens".into(), "7".into()));
    let upstream = Replay::start(reply);
    let gw3 = Gateway::start(&config_for(
        &[upstream.url()],
        "[rate_limit]\nenabled = true\nrequests_per_minute = 50\n[auth]\n[[auth.keys]]\nkey = \"sk-free\"\nuser_id = \"free\"\nrequests_per_minute = 0\n",
    ));
    let r = request(gw3.addr, &chat_req(&chat("m"), ""));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_block(&r, 50, UNLIMITED);
    let free = request(gw3.addr, &chat_req(&chat("m"), "Authorization: Bearer sk-free\r\n"));
    assert_eq!(free.header("x-ratelimit-limit-requests"), Some("999"), "passed on for unlimited subjects");
}

/// A bad body from a caller the auth check will refuse makes no limit subject (it would take one
/// of the `MAX_USERS` places, and the map's lock on a core, for every user header sent) and
/// carries no x-ratelimit-* block.
#[test]
fn an_unauthenticated_bad_request_makes_no_subject() {
    let (_b, gw) = limited(
        "requests_per_minute = 50\n[auth]\nrequired = true\n[[auth.keys]]\nkey = \"sk-a\"\nuser_id = \"a\"\n",
    );
    let subjects = || metric(&metrics(gw.addr), "llmproxy_rate_limit_subjects");
    let before = subjects();
    for i in 0..20 {
        let r = request(gw.addr, &chat_req("{not json", &format!("x-user-id: stranger-{i}\r\n")));
        assert_eq!(r.status, 400, "{}", r.text());
        assert_no_block(&r);
    }
    // The sync thread republishes the count every second.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(subjects(), before);
    // The key's own bad request still carries its block.
    let r = request(gw.addr, &chat_req("{not json", "Authorization: Bearer sk-a\r\n"));
    assert_eq!(r.status, 400);
    assert_block(&r, 50, UNLIMITED);
}

fn chat_completion() -> String {
    r#"{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3}}"#.to_string()
}

#[test]
fn token_limit_reserves_at_admission_and_settles_to_the_billed_tokens() {
    let (b, gw) = limited_with(ONE_WORKER, "tokens_per_minute = 1000\n");
    let body =
        r#"{"model":"m","max_tokens":350,"stream":true,"messages":[{"role":"user","content":"say hello"}]}"#;
    let reserve = 350 + (body.len() as i64 + 3) / 4;
    // One keep-alive connection: its next request is read only after the previous one ended.
    let mut c = connect(gw.addr);
    let r1 = c.request(&chat_req(body, "x-mock-tokens: 5\r\n"));
    assert_eq!(r1.status, 200);
    assert_block(&r1, UNLIMITED, 1000);
    assert_eq!(num(&r1, "x-ratelimit-remaining-tokens"), 1000 - reserve, "remaining after the reservation");
    // The first request billed prompt 2 + completion 5 = 7 tokens: its reservation was replaced.
    let r2 = c.request(&chat_req(body, "x-mock-tokens: 5\r\n"));
    assert_eq!(r2.status, 200);
    assert_eq!(num(&r2, "x-ratelimit-remaining-tokens"), 1000 - 7 - reserve);

    // Reservations hold while requests run: two slow streams take 2 × reserve of what is left, a
    // third does not fit, and once they are billed there is room again.
    let left = 1000 - 14;
    assert!(2 * reserve <= left && 3 * reserve > left);
    let streams = spawn_requests(gw.addr, 2, &slow_stream(4, Some(350)));
    eventually(10, "both slow streams admitted", || hits(&b, "/v1/chat/completions") == 4);
    assert_429(&request(gw.addr, &chat_req(body, "")), "rate_limit_exceeded");
    assert!(join(streams).iter().all(|r| r.status == 200));
    eventually(10, "both streams settled", || {
        remaining_gauge(&gw, "anonymous", "tokens_per_minute") == Some((1000 - 14 - 12) as f64)
    });
    let r4 = request(gw.addr, &chat_req(body, "x-mock-tokens: 5\r\n"));
    assert_eq!(r4.status, 200, "{}", r4.text());
    assert_eq!(num(&r4, "x-ratelimit-remaining-tokens"), 1000 - 14 - 2 * 6 - reserve);
    // A request that can never fit is refused too (and counted as a token refusal).
    let huge = r#"{"model":"m","max_tokens":5000,"messages":[]}"#;
    assert_429(&request(gw.addr, &chat_req(huge, "")), "rate_limit_exceeded");
    assert_eq!(refusals(&gw, "tokens"), Some(2.0));
}

/// A backend that reports absurd usage (prompt_tokens = 2^64 - 1, no total) and a client asking
/// max_tokens near 2^63: the gateway bills without overflowing (a debug build panicked on the
/// core thread adding prompt and completion), the token budget is simply spent, and it keeps
/// serving.
#[test]
fn absurd_token_counts_spend_the_budget_without_overflow() {
    let body = r#"{"id":"c1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":18446744073709551615,"completion_tokens":1}}"#;
    let upstream = Replay::start(Reply::new(200, "application/json", body.as_bytes(), Framing::Length));
    let gw = Gateway::start(&config_for(
        &[upstream.url()],
        &format!("{ONE_WORKER}[rate_limit]\nenabled = true\ntokens_per_minute = 100000\n"),
    ));
    let mut c = connect(gw.addr);
    let r = c.request(&chat_req(&chat("m"), ""));
    assert_eq!(r.status, 200, "{}", r.text());
    for _ in 0..3 {
        let r = c.request(&chat_req(&chat("m"), ""));
        assert_429(&r, "rate_limit_exceeded");
    }
    let huge = r#"{"model":"m","max_tokens":9223372036854775807,"messages":[{"role":"user","content":"x"}]}"#;
    assert_429(&c.request(&chat_req(huge, "")), "rate_limit_exceeded");
    assert!(metrics(gw.addr).contains("llmproxy_requests_total"), "the gateway still answers");
}

#[test]
fn cut_stream_counts_what_it_cost() {
    let (_b, gw) = limited_with(ONE_WORKER, "tokens_per_minute = 100000\n");
    let body = r#"{"model":"m","max_tokens":1000,"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true},"messages":[{"role":"user","content":"say hello"}]}"#;
    let reserve = 1000 + (body.len() as i64 + 3) / 4;
    // The backend breaks off after 3 events (having reported cumulative usage on each): billed what
    // it reported, not the reservation.
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    std::io::Write::write_all(&mut s, &chat_req(body, "x-mock-tokens: 50\r\nx-mock-abort-after: 3\r\n"))
        .unwrap();
    let (got, closed) = read_to_close(&mut s, 20);
    assert!(closed && got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.contains("\r\nx-ratelimit-remaining-tokens: "), "a cut stream's head has the block: {text}");
    eventually(10, "the cut stream settled", || {
        remaining_gauge(&gw, "anonymous", "tokens_per_minute").is_some_and(|v| v > (100000 - reserve) as f64)
    });
    let next = request(gw.addr, &chat_req(body, "x-mock-tokens: 1\r\n"));
    let used_by_cut = 100000 - reserve - num(&next, "x-ratelimit-remaining-tokens");
    assert!(used_by_cut < reserve, "the cut stream was billed {used_by_cut}, less than its reservation");
}

#[test]
fn max_concurrent_counts_requests_in_flight_across_cores() {
    let (b, gw) = limited("max_concurrent = 2\n");
    let streams = spawn_requests(gw.addr, 2, &slow_stream(5, None));
    eventually(10, "two streams in flight", || hits(&b, "/v1/chat/completions") == 2);
    for r in burst(gw.addr, 4, &chat_req(&chat("m"), "")) {
        assert_429(&r, "rate_limit_exceeded");
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_block(&r, UNLIMITED, UNLIMITED);
    }
    assert!(join(streams).iter().all(|r| r.status == 200));
    // A client has its last byte a moment before the gateway ends the request and frees the slot.
    eventually(10, "both slots free", || remaining_gauge(&gw, "anonymous", "max_concurrent") == Some(2.0));
    let rs = burst(gw.addr, 2, &chat_req(&chat("m"), ""));
    assert!(rs.iter().all(|r| r.status == 200), "slots are free again");
    assert_eq!(refusals(&gw, "concurrent"), Some(4.0));
}

#[test]
fn tokens_per_day_budget_per_key_and_per_user() {
    let (_b, gw) = limited(
        "tokens_per_day = 60\n[auth]\n[[auth.keys]]\nkey = \"sk-a\"\nuser_id = \"alice\"\ntokens_per_day = 100\n",
    );
    let body = chat("m");
    let reserve = (body.len() as u64).div_ceil(4);
    // Each request reserves ⌈body ÷ 4⌉ and is billed 2 + 5 = 7 tokens.
    let mut last = None;
    let mut admitted = 0;
    for _ in 0..40 {
        let r = request(gw.addr, &chat_req(&body, "Authorization: Bearer sk-a\r\nx-mock-tokens: 5\r\n"));
        if r.status != 200 {
            last = Some(r);
            break;
        }
        assert_block(&r, UNLIMITED, 100);
        admitted += 1;
    }
    let r = last.expect("the budget ran out");
    assert_429(&r, "budget_exceeded");
    // Refused exactly when what is left cannot hold the reservation; the billed tokens (less than
    // the reservations) are what was spent.
    let left = num(&r, "x-ratelimit-remaining-tokens") as u64;
    assert!(left < reserve, "refused with {left} left, reservation {reserve}");
    assert!(admitted as u64 * 5 <= 100 - left, "{admitted} requests of at least 5 tokens each");
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(ra <= 86_400, "until 00:00 UTC: {ra}");
    // Users named by the user header have their own budget (the default), separate from alice's.
    let u = request(gw.addr, &chat_req(&body, "x-user-id: bob\r\nx-mock-tokens: 5\r\n"));
    assert_eq!(u.status, 200);
    assert_block(&u, UNLIMITED, 60);
    assert_eq!(refusals(&gw, "budget"), Some(1.0));
}

#[test]
fn openai_sdk_retry_honours_retry_after_then_succeeds() {
    let has = |m: &str| Command::new("python3").args(["-c", m]).output().is_ok_and(|o| o.status.success());
    if !has("import openai, pytest, httpx") {
        return missing("python3 with openai, pytest and httpx (pip install openai pytest httpx)");
    }
    let b = mock(Flavor::Openai);
    let gw = Gateway::start(&config_for(&[b.url()], "[rate_limit]\nenabled = true\nmax_concurrent = 1\n"));
    let started = Instant::now();
    let out = Command::new("python3")
        .args(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/python/test_rate_limit_sdk.py"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("LLMPROXY_LIMITED_URL", gw.url())
        .output()
        .expect("run pytest");
    let text = [out.stdout, out.stderr].map(|o| String::from_utf8_lossy(&o).into_owned()).concat();
    assert!(out.status.success() && text.contains("1 passed"), "{text}\ngateway log:\n{}", gw.log_text());
    assert!(started.elapsed() < Duration::from_secs(60));
}
