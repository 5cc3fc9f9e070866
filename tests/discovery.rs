//! Backends that move, through the real binary: a host name whose addresses change (a hosts file
//! the test controls, named by LLMPROXY_TEST_HOSTS) is followed, every address is an endpoint, and a
//! stream on a removed address finishes whole. Start-up: a gateway started before its backend
//! follows it within the first backoff steps, not after a whole health-check interval.

mod common;
use common::*;
use llmproxy::mock::{Flavor, MockBackend, MockOptions};
use std::net::TcpListener;
use std::time::{Duration, Instant};

const CHAT: &str = "/v1/chat/completions";

fn mock_on(ip: &str, port: u16) -> MockBackend {
    let l = TcpListener::bind((ip, port)).expect("bind mock");
    let mut o = MockOptions::new(Flavor::Vllm);
    o.ttft = Duration::from_millis(2);
    o.itl = Duration::from_millis(1);
    o.tokens = 5;
    MockBackend::start(l, o)
}

fn write_hosts(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_dns_change_is_followed_and_every_address_is_an_endpoint() {
    let a = mock(Flavor::Vllm);
    let port = a.addr().port();
    // The second address of the same name: same port, another loopback address.
    let b = mock_on("127.0.0.2", port);
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    write_hosts(&hosts, "127.0.0.1 backend.test\n");
    let url = format!("http://backend.test:{port}");
    let config = config_for(&[], &format!("[[backends]]\nurl = \"{url}\"\ndns_refresh = \"100ms\"\n"));
    let hosts_env = hosts.display().to_string();
    let gw = Gateway::start_in(tempfile::tempdir().unwrap(), &config, &[("LLMPROXY_TEST_HOSTS", &hosts_env)]);
    let addr = gw.addr;
    let call = || {
        let r = request(addr, &post(CHAT, &chat("m"), ""));
        assert_eq!(r.status, 200, "{}", r.text());
    };
    for _ in 0..3 {
        call();
    }
    assert_eq!((hits(&a, CHAT), hits(&b, CHAT)), (3, 0));

    // A stream on the first address, then the name moves to the second one.
    let stream = std::thread::spawn(move || {
        request(
            addr,
            &post(
                CHAT,
                r#"{"model":"m","stream":true,"messages":[]}"#,
                "x-mock-itl-ms: 100\r\nx-mock-tokens: 20\r\n",
            ),
        )
    });
    eventually(10, "stream started on the first address", || hits(&a, CHAT) == 4);
    write_hosts(&hosts, "127.0.0.2 backend.test\n");
    eventually(20, "the gateway followed the name", || gw.log_text().contains("now resolves to [127.0.0.2:"));
    for _ in 0..3 {
        call();
    }
    assert_eq!((hits(&a, CHAT), hits(&b, CHAT)), (4, 3), "new requests go to the new address only");
    let r = stream.join().unwrap();
    assert_eq!(
        r.sse_data().last().map(String::as_str),
        Some("[DONE]"),
        "the stream on the removed address finished whole"
    );

    // Both addresses: both endpoints take traffic.
    write_hosts(&hosts, "127.0.0.1 backend.test\n127.0.0.2 backend.test\n");
    eventually(20, "two endpoints", || {
        metric(&metrics(addr), &format!("llmproxy_backend_endpoints{{backend=\"{url}\",state=\"up\"}}"))
            == Some(2.0)
    });
    let (a0, b0) = (hits(&a, CHAT), hits(&b, CHAT));
    for _ in 0..6 {
        call();
    }
    // Each core rotates over both endpoints (its own rotation), so both take traffic.
    let (da, db) = (hits(&a, CHAT) - a0, hits(&b, CHAT) - b0);
    assert!(da >= 1 && db >= 1 && da + db == 6, "balanced over every address: {da} + {db}");

    // A name that stops resolving keeps its last addresses.
    write_hosts(&hosts, "# empty\n");
    std::fs::remove_file(&hosts).unwrap();
    eventually(20, "resolution failure logged", || gw.log_text().contains("cannot resolve backend.test"));
    call();
}

#[test]
fn a_gateway_started_before_its_backend_follows_it_well_within_the_interval() {
    // A free port for a backend that is not there yet.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let config = config_for(&[url], "[health_check]\ninterval = \"10s\"\ntimeout = \"500ms\"\n");
    let gw = Gateway::start(&config);
    eventually(10, "backend seen down", || request(gw.addr, &get("/health")).status == 503);
    // Long enough for the backoff to reach its 1 s ceiling.
    std::thread::sleep(Duration::from_secs(3));
    let up_at = Instant::now();
    let _b = mock_on("127.0.0.1", port);
    eventually(10, "requests served", || request(gw.addr, &post(CHAT, &chat("m"), "")).status == 200);
    // About a second (the backoff's ceiling), not the 10 s interval; generous for a loaded machine.
    let took = up_at.elapsed();
    assert!(took < Duration::from_secs(4), "followed by the backoff, not the interval: {took:?}");
    assert_eq!(request(gw.addr, &get("/health")).status, 200);
}
