//! The listeners through the real binary under each I/O driver: `max_connections` (a 503 and a
//! close beyond it, served again once a connection goes), and `admin_listen` serving `/health` and
//! `/metrics` only while the main listener serves them beside the proxied paths.

mod common;

use common::*;
use llmproxy::mock::Flavor;
use std::net::{SocketAddr, TcpStream};

const CHAT: &str = "/v1/chat/completions";

fn start(driver: &str, cfg: &str) -> Gateway {
    Gateway::start_in(tempfile::tempdir().unwrap(), cfg, &[("LLMPROXY_DRIVER", driver)])
}

#[test]
fn beyond_max_connections_a_503_and_a_close() {
    for driver in drivers() {
        let b = mock(Flavor::Vllm);
        // One worker, so its share of max_connections is all of it.
        let extra = "[runtime]\nworkers = 1\npin_cores = false\n[limits]\nmax_connections = 2\n";
        let gw = start(driver, &config_for(&[b.url()], extra));
        let mut c1 = connect(gw.addr);
        let mut c2 = connect(gw.addr);
        assert_eq!(c1.request(&get("/health")).status, 200, "{driver}");
        assert_eq!(c2.request(&post(CHAT, &chat("m"), "")).status, 200, "{driver}");
        // The third is answered at once, before it sends anything, and closed.
        let mut s = TcpStream::connect(gw.addr).unwrap();
        let (got, closed) = read_to_close(&mut s, 10);
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(closed, "{driver}: {text}");
        assert!(text.starts_with("HTTP/1.1 503 "), "{driver}: {text}");
        assert!(text.contains("\"code\":\"overloaded\""), "{driver}: {text}");
        assert!(text.to_ascii_lowercase().contains("connection: close"), "{driver}: {text}");
        // The two admitted connections still serve.
        assert_eq!(c1.request(&post(CHAT, &chat("m"), "")).status, 200, "{driver}");
        assert_eq!(c2.request(&get("/metrics")).status, 200, "{driver}");
        // One goes: a new connection is served again.
        drop(c1);
        eventually(10, "a slot freed", || {
            let mut s = TcpStream::connect(gw.addr).unwrap();
            let _ = std::io::Write::write_all(&mut s, &get("/health"));
            let (got, _) = read_to_close(&mut s, 5);
            got.starts_with(b"HTTP/1.1 200 ")
        });
        assert_eq!(hits(&b, CHAT), 2, "{driver}");
    }
}

/// The admin address from the startup log.
fn admin_addr(gw: &Gateway) -> SocketAddr {
    let mut found = None;
    eventually(10, "the admin address in the log", || {
        found = gw
            .log_text()
            .lines()
            .find_map(|l| l.split("(/health, /metrics) on ").nth(1)?.trim().parse().ok());
        found.is_some()
    });
    found.unwrap()
}

#[test]
fn admin_listen_serves_health_and_metrics_only() {
    for driver in drivers() {
        let b = mock(Flavor::Vllm);
        let gw = start(driver, &format!("admin_listen = \"127.0.0.1:0\"\n{}", config_for(&[b.url()], "")));
        let admin = admin_addr(&gw);
        assert_ne!(admin, gw.addr);
        let mut c = connect(admin);
        let r = c.request(&get("/health"));
        assert_eq!(r.status, 200, "{driver}: {}", r.text());
        assert_eq!(r.json()["status"], "ok", "{driver}");
        let r = c.request(&get("/metrics"));
        assert_eq!(r.status, 200, "{driver}");
        assert!(r.text().contains("llmproxy_requests_total"), "{driver}");
        // Everything else is a 404 there, keep-alive kept when there was no body to skip.
        for path in ["/v1/models", "/nope"] {
            let r = c.request(&get(path));
            assert_eq!(r.status, 404, "{driver} {path}: {}", r.text());
            assert_eq!(r.json()["error"]["code"], "not_found", "{driver} {path}");
        }
        assert_eq!(c.request(&get("/health")).status, 200, "{driver}: still open after the 404s");
        // A proxied path with a body: 404 and closed (the body was not read).
        let r = c.request(&post(CHAT, &chat("m"), ""));
        assert_eq!(r.status, 404, "{driver}: {}", r.text());
        assert!(r.closed, "{driver}: the unread body closes the connection");
        assert_eq!(hits(&b, CHAT), 0, "{driver}: the admin listener proxied");
        // The main listener serves /health and /metrics too, beside the proxied paths.
        let mut m = connect(gw.addr);
        assert_eq!(m.request(&get("/health")).status, 200, "{driver}");
        assert_eq!(m.request(&get("/metrics")).status, 200, "{driver}");
        assert_eq!(m.request(&get("/v1/models")).status, 200, "{driver}");
        assert_eq!(m.request(&post(CHAT, &chat("m"), "")).status, 200, "{driver}");
        assert_eq!(hits(&b, CHAT), 1, "{driver}");
    }
}
