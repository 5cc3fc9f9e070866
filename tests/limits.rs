//! Limits on one gateway (store = "local"), through the real binary: each limit exact across two
//! worker cores, the 429 as OpenAI clients expect it, the x-ratelimit-* headers, token reservation
//! replaced by the billed tokens, and the openai SDK's retry honouring retry-after.

mod common;

use common::*;
use llmproxy::mock::Flavor;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn chat_req(body: &str, headers: &str) -> Vec<u8> {
    post("/v1/chat/completions", body, headers)
}

/// Sends `n` requests at once from `n` threads, each on its own connection (spread over cores).
fn burst(addr: SocketAddr, n: usize, bytes: Vec<u8>) -> Vec<Response> {
    let gate = Arc::new(Barrier::new(n));
    let hs: Vec<_> = (0..n)
        .map(|_| {
            let (gate, bytes) = (gate.clone(), bytes.clone());
            std::thread::spawn(move || {
                let mut c = connect(addr);
                gate.wait();
                c.request(&bytes)
            })
        })
        .collect();
    hs.into_iter().map(|h| h.join().expect("client thread")).collect()
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

#[test]
fn requests_per_minute_is_exact_across_cores_and_unlimited_keys_are_untouched() {
    let b = mock(Flavor::Vllm);
    let cfg = config_for(
        &[b.url()],
        "[rate_limit]\nenabled = true\nrequests_per_minute = 10\n[auth]\n[[auth.keys]]\nkey = \"sk-free\"\nuser_id = \"free\"\nrequests_per_minute = 0\n",
    );
    let gw = Gateway::start(&cfg);
    let rs = burst(gw.addr, 16, chat_req(&chat("m"), ""));
    let ok: Vec<_> = rs.iter().filter(|r| r.status == 200).collect();
    let refused: Vec<_> = rs.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        (ok.len(), refused.len()),
        (10, 6),
        "statuses: {:?}",
        rs.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in &refused {
        assert_429(r, "rate_limit_exceeded");
    }
    for r in rs.iter() {
        assert_eq!(num(r, "x-ratelimit-limit-requests"), 10);
        assert!((0..10).contains(&num(r, "x-ratelimit-remaining-requests")));
        assert!(r.header("x-ratelimit-reset-requests").is_some_and(|v| v.ends_with('s')));
        assert!(r.header("x-ratelimit-limit-tokens").is_none(), "no token limit set");
    }
    assert_eq!(hits(&b, "/v1/chat/completions"), 10, "a refused request reaches no backend");
    // The key with its own "no limit" goes on, without limit headers.
    for _ in 0..5 {
        let r = request(gw.addr, &chat_req(&chat("m"), "Authorization: Bearer sk-free\r\n"));
        assert_eq!(r.status, 200);
        assert!(r.header("x-ratelimit-limit-requests").is_none());
    }
    let m = metrics(gw.addr);
    assert_eq!(metric(&m, "llmproxy_rate_limited_total{reason=\"requests\"}"), Some(6.0), "{m}");
    assert_eq!(metric(&m, "llmproxy_rate_limited_total{reason=\"budget\"}"), Some(0.0));
    eventually(10, "remaining gauge", || {
        metric(
            &metrics(gw.addr),
            "llmproxy_rate_limit_remaining{subject=\"anonymous\",limit=\"requests_per_minute\"}",
        ) == Some(0.0)
    });
}

#[test]
fn token_limit_reserves_at_admission_and_settles_to_the_billed_tokens() {
    let b = mock(Flavor::Vllm);
    // One worker, so that the remaining counts in the headers are exact.
    let cfg = config_for(
        &[b.url()],
        "[runtime]\nworkers = 1\npin_cores = false\n[rate_limit]\nenabled = true\ntokens_per_minute = 1000\n",
    );
    let gw = Gateway::start(&cfg);
    let body =
        r#"{"model":"m","max_tokens":350,"stream":true,"messages":[{"role":"user","content":"say hello"}]}"#;
    let reserve = 350 + (body.len() as i64 + 3) / 4;
    // One keep-alive connection: its next request is read only after the previous one ended.
    let mut c = connect(gw.addr);
    let r1 = c.request(&chat_req(body, "x-mock-tokens: 5\r\n"));
    assert_eq!(r1.status, 200);
    assert_eq!(num(&r1, "x-ratelimit-limit-tokens"), 1000);
    assert_eq!(num(&r1, "x-ratelimit-remaining-tokens"), 1000 - reserve, "remaining after the reservation");
    // The first request billed prompt 2 + completion 5 = 7 tokens: its reservation was replaced.
    let r2 = c.request(&chat_req(body, "x-mock-tokens: 5\r\n"));
    assert_eq!(r2.status, 200);
    assert_eq!(num(&r2, "x-ratelimit-remaining-tokens"), 1000 - 7 - reserve);

    // Reservations hold while requests run: two slow streams take 2 × reserve of what is left, a
    // third does not fit, and once they are billed there is room again.
    let left = 1000 - 14;
    assert!(2 * reserve <= left && 3 * reserve > left);
    let slow = chat_req(body, "x-mock-tokens: 4\r\nx-mock-itl-ms: 300\r\n");
    let streams: Vec<_> = (0..2)
        .map(|_| {
            let slow = slow.clone();
            let addr = gw.addr;
            std::thread::spawn(move || request(addr, &slow))
        })
        .collect();
    eventually(10, "both slow streams admitted", || hits(&b, "/v1/chat/completions") == 4);
    let r3 = request(gw.addr, &chat_req(body, ""));
    assert_429(&r3, "rate_limit_exceeded");
    for s in streams {
        assert_eq!(s.join().unwrap().status, 200);
    }
    let gauge = "llmproxy_rate_limit_remaining{subject=\"anonymous\",limit=\"tokens_per_minute\"}";
    eventually(10, "both streams settled", || {
        metric(&metrics(gw.addr), gauge) == Some((1000 - 14 - 12) as f64)
    });
    let r4 = request(gw.addr, &chat_req(body, "x-mock-tokens: 5\r\n"));
    assert_eq!(r4.status, 200, "{}", r4.text());
    assert_eq!(num(&r4, "x-ratelimit-remaining-tokens"), 1000 - 14 - 2 * 6 - reserve);
    // A request that can never fit is refused too (and counted as a token refusal).
    let huge = r#"{"model":"m","max_tokens":5000,"messages":[]}"#;
    assert_429(&request(gw.addr, &chat_req(huge, "")), "rate_limit_exceeded");
    let m = metrics(gw.addr);
    assert_eq!(metric(&m, "llmproxy_rate_limited_total{reason=\"tokens\"}"), Some(2.0), "{m}");
}

#[test]
fn cut_stream_counts_what_it_cost() {
    let b = mock(Flavor::Vllm);
    let cfg = config_for(
        &[b.url()],
        "[runtime]\nworkers = 1\npin_cores = false\n[rate_limit]\nenabled = true\ntokens_per_minute = 100000\n",
    );
    let gw = Gateway::start(&cfg);
    let body = r#"{"model":"m","max_tokens":1000,"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true},"messages":[{"role":"user","content":"say hello"}]}"#;
    let reserve = 1000 + (body.len() as i64 + 3) / 4;
    // The backend breaks off after 3 events (having reported cumulative usage on each): billed what
    // it reported, not the reservation.
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    std::io::Write::write_all(&mut s, &chat_req(body, "x-mock-tokens: 50\r\nx-mock-abort-after: 3\r\n"))
        .unwrap();
    let (got, closed) = read_to_close(&mut s, 20);
    assert!(closed && got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    let gauge = "llmproxy_rate_limit_remaining{subject=\"anonymous\",limit=\"tokens_per_minute\"}";
    eventually(10, "the cut stream settled", || {
        metric(&metrics(gw.addr), gauge).is_some_and(|v| v > (100000 - reserve) as f64)
    });
    let next = request(gw.addr, &chat_req(body, "x-mock-tokens: 1\r\n"));
    let used_by_cut = 100000 - reserve - num(&next, "x-ratelimit-remaining-tokens");
    assert!(used_by_cut < reserve, "the cut stream was billed {used_by_cut}, less than its reservation");
}

#[test]
fn max_concurrent_counts_requests_in_flight_across_cores() {
    let b = mock(Flavor::Vllm);
    let cfg = config_for(&[b.url()], "[rate_limit]\nenabled = true\nmax_concurrent = 2\n");
    let gw = Gateway::start(&cfg);
    let slow = chat_req(
        r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        "x-mock-tokens: 5\r\nx-mock-itl-ms: 300\r\n",
    );
    let streams: Vec<_> = (0..2)
        .map(|_| {
            let slow = slow.clone();
            let addr = gw.addr;
            std::thread::spawn(move || request(addr, &slow))
        })
        .collect();
    eventually(10, "two streams in flight", || hits(&b, "/v1/chat/completions") == 2);
    let rs = burst(gw.addr, 4, chat_req(&chat("m"), ""));
    for r in &rs {
        assert_429(r, "rate_limit_exceeded");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    for s in streams {
        assert_eq!(s.join().unwrap().status, 200);
    }
    // A client has its last byte a moment before the gateway ends the request and frees the slot.
    eventually(10, "both slots free", || {
        metric(
            &metrics(gw.addr),
            "llmproxy_rate_limit_remaining{subject=\"anonymous\",limit=\"max_concurrent\"}",
        ) == Some(2.0)
    });
    let rs = burst(gw.addr, 2, chat_req(&chat("m"), ""));
    assert!(rs.iter().all(|r| r.status == 200), "slots are free again");
    let m = metrics(gw.addr);
    assert_eq!(metric(&m, "llmproxy_rate_limited_total{reason=\"concurrent\"}"), Some(4.0), "{m}");
}

#[test]
fn tokens_per_day_budget_per_key_and_per_user() {
    let b = mock(Flavor::Vllm);
    let cfg = config_for(
        &[b.url()],
        "[rate_limit]\nenabled = true\ntokens_per_day = 60\n[auth]\n[[auth.keys]]\nkey = \"sk-a\"\nuser_id = \"alice\"\ntokens_per_day = 100\n",
    );
    let gw = Gateway::start(&cfg);
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
        assert_eq!(num(&r, "x-ratelimit-limit-tokens"), 100);
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
    assert_eq!(num(&u, "x-ratelimit-limit-tokens"), 60);
    let m = metrics(gw.addr);
    assert_eq!(metric(&m, "llmproxy_rate_limited_total{reason=\"budget\"}"), Some(1.0), "{m}");
}

#[test]
fn openai_sdk_retry_honours_retry_after_then_succeeds() {
    if !Command::new("python3")
        .args(["-c", "import openai, pytest, httpx"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "python3 with openai and pytest is missing"
        );
        eprintln!("skipped: python3 with openai/pytest not found (pip install openai pytest)");
        return;
    }
    let b = mock(Flavor::Openai);
    let cfg = config_for(&[b.url()], "[rate_limit]\nenabled = true\nmax_concurrent = 1\n");
    let gw = Gateway::start(&cfg);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let started = Instant::now();
    let out = Command::new("python3")
        .args(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/python/test_rate_limit_sdk.py"])
        .current_dir(dir)
        .env("LLMPROXY_LIMITED_URL", gw.url())
        .output()
        .expect("run pytest");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pytest failed:\n{text}\ngateway log:\n{}", gw.log_text());
    assert!(text.contains("1 passed"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(60));
}

use std::process::Command;
