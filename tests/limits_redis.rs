//! Limits shared through a real `redis-server` (started by the test on a free port, killed at the
//! end), through the real binary: two gateways hold one requests-per-minute limit within 10 %;
//! Redis killed mid-run fails no request; `on_store_error = "deny"` gives 503 for limited subjects.

mod common;

use common::redis;
use common::redis::{redis_available, Redis};
use common::*;
use llmproxy::mock::Flavor;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn redis_cfg(url: &str, extra: &str) -> String {
    format!("[rate_limit]\nenabled = true\nstore = \"redis\"\nredis_url = \"{url}\"\nsync_interval = \"50ms\"\n{extra}")
}

#[test]
fn two_gateways_hold_a_requests_per_minute_limit_within_ten_percent() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let b = mock(Flavor::Vllm);
    let cfg = config_for(&[b.url()], &redis_cfg(&redis.url(), "requests_per_minute = 200\n"));
    let gws = [Gateway::start(&cfg), Gateway::start(&cfg)];
    eventually(10, "both gateways connected to redis", || {
        gws.iter().all(|g| g.log_text().contains("connected to redis"))
    });
    // A burst: 8 clients, alternating gateways, 600 requests as fast as they go.
    let ok = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let addrs = [gws[0].addr, gws[1].addr];
    let hs: Vec<_> = (0..8)
        .map(|i| {
            let (ok, sent) = (ok.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut c = connect(addrs[i % 2]);
                while sent.fetch_add(1, Ordering::Relaxed) < 600 {
                    let r = c.request(&post("/v1/chat/completions", &chat("m"), ""));
                    match r.status {
                        200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        429 => {}
                        s => panic!("unexpected status {s}: {}", r.text()),
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let ok = ok.load(Ordering::Relaxed);
    eprintln!("admitted {ok} of 200 across two gateways");
    assert!((180..=220).contains(&ok), "admitted {ok} of a 200/min limit shared by two gateways");
    assert_eq!(hits(&b, "/v1/chat/completions"), ok);
}

#[test]
fn redis_killed_mid_run_fails_no_request_and_reconnect_picks_up() {
    if !redis_available() {
        return;
    }
    let mut redis = Redis::start();
    let port = redis.port;
    let b = mock(Flavor::Vllm);
    let cfg = config_for(
        &[b.url()],
        &redis_cfg(
            &redis.url(),
            "requests_per_minute = 100000\n[auth]\n[[auth.keys]]\nkey = \"sk-free\"\nuser_id = \"free\"\nrequests_per_minute = 0\n",
        ),
    );
    let gw = Gateway::start(&cfg);
    eventually(10, "connected to redis", || gw.log_text().contains("connected to redis"));
    let stop = Arc::new(AtomicBool::new(false));
    let addr = gw.addr;
    let load = |auth: &'static str| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = connect(addr);
            let (mut n, mut worst) = (0usize, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = c.request(&post("/v1/chat/completions", &chat("m"), auth));
                worst = worst.max(t.elapsed());
                assert_eq!(r.status, 200, "{auth}: {}", r.text());
                n += 1;
            }
            (n, worst)
        })
    };
    let free = load("Authorization: Bearer sk-free\r\n");
    let limited = load("");
    std::thread::sleep(Duration::from_millis(500));
    redis.kill();
    eventually(10, "the gateway noticed", || gw.log_text().contains("unreachable"));
    std::thread::sleep(Duration::from_millis(500));
    // Back on the same port: the gateway reconnects and adds what it admitted meanwhile.
    let redis = Redis::start_on(port);
    eventually(10, "reconnected", || gw.log_text().matches("connected to redis").count() >= 2);
    let keys = redis.command(&["KEYS", "llmproxy:rl:anonymous:rpm:*"]).unwrap_or_default();
    assert!(keys.contains("llmproxy:rl:anonymous:rpm:"), "usage during the outage was added: {keys}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (nf, worst_f) = free.join().unwrap();
    let (nl, _) = limited.join().unwrap();
    assert!(nf > 10 && nl > 10, "requests went on: {nf} unlimited, {nl} limited");
    // Generous: a loaded 2-core machine, debug build. Redis being away must not stall a request.
    assert!(worst_f < Duration::from_secs(2), "slowest unlimited request {worst_f:?}");
}

#[test]
fn on_store_error_deny_gives_503_to_limited_subjects_only() {
    // No redis-server needed: the store's port has nobody listening.
    let port = redis::free_port();
    let b = mock(Flavor::Vllm);
    let cfg = config_for(
        &[b.url()],
        &redis_cfg(
            &format!("redis://127.0.0.1:{port}/0"),
            "on_store_error = \"deny\"\nrequests_per_minute = 100\n[auth]\n[[auth.keys]]\nkey = \"sk-free\"\nuser_id = \"free\"\nrequests_per_minute = 0\n",
        ),
    );
    let gw = Gateway::start(&cfg);
    eventually(10, "store marked down", || gw.log_text().contains("unreachable"));
    let r = request(gw.addr, &post("/v1/chat/completions", &chat("m"), ""));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "rate_limit_store_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = request(gw.addr, &post("/v1/chat/completions", &chat("m"), "Authorization: Bearer sk-free\r\n"));
    assert_eq!(r.status, 200);
    let m = metrics(gw.addr);
    assert_eq!(metric(&m, "llmproxy_rate_limited_total{reason=\"store_unavailable\"}"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "llmproxy_rate_limit_store_up"), Some(0.0));
}
