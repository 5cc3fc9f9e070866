//! The TLS listener and backend certificates through the real binary, with certificates made by
//! `openssl` for each test: a SIGHUP reload swaps the listener's certificate (new handshakes) and a
//! backend's CA file (new connections); a TLS client that sends no full head (or stalls its body)
//! within header_read_timeout gets the plain listener's 408, then a close_notify; failed
//! handshakes are counted by reason in `llmproxy_tls_handshake_failures_total`.

mod common;
mod tls_util;

use common::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tls_util::*;

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

/// One request over TLS (trusting `ca`), read to the end of its body; Err when the handshake fails.
fn tls_call(addr: SocketAddr, ca: &str, req: &[u8]) -> Result<String, String> {
    let mut c = tls_client(addr, ca);
    c.write_all(req).map_err(|e| e.to_string())?;
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&all).to_string();
        if let Some(h) = text.find("\r\n\r\n") {
            let len = text[..h]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok());
            if len.is_some_and(|n| all.len() >= h + 4 + n) {
                return Ok(text);
            }
        }
        match c.read(&mut buf) {
            Ok(0) => return Ok(text),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("{e}; so far: {text}")),
        }
    }
}

fn copy(certs: &Certs, from: &str, to: &str) {
    std::fs::copy(certs.file(from), certs.file(to)).expect("copy certificate file");
}

fn admin_addr(gw: &Gateway) -> SocketAddr {
    let log = gw.log_text();
    let a = log.lines().find_map(|l| l.split("(/health, /metrics) on ").nth(1)).expect("admin address");
    a.trim().parse().expect("admin address")
}

#[test]
fn sighup_reloads_the_listener_certificate_and_a_backend_ca() {
    let certs = Certs::make();
    // The backend's certificate is signed by other_ca; the gateway first trusts the wrong CA.
    let (b, front) = tls_mock(&certs, "other_server", None);
    copy(&certs, "ca.pem", "backend_ca.pem");
    copy(&certs, "server.pem", "listener.pem");
    copy(&certs, "server.key", "listener.key");
    let cfg = config_for(
        &[],
        &format!(
            "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[[backends]]\nurl = \"{}\"\ntls_ca_file = \"{}\"\n",
            certs.path("listener.pem"),
            certs.path("listener.key"),
            front.url(),
            certs.path("backend_ca.pem")
        ),
    );
    let gw = Gateway::start(&cfg);
    let (ca, other) = (certs.path("ca.pem"), certs.path("other_ca.pem"));
    let r = tls_call(gw.addr, &ca, &post("/v1/chat/completions", CHAT, "")).expect("TLS with the first CA");
    assert!(r.starts_with("HTTP/1.1 502"), "the backend CA is wrong: {r}");
    assert!(
        tls_call(gw.addr, &other, &get("/health")).is_err(),
        "other_ca did not sign the listener's certificate"
    );

    // Renewed files at the same paths, then a reload.
    copy(&certs, "other_ca.pem", "backend_ca.pem");
    copy(&certs, "other_server.pem", "listener.pem");
    copy(&certs, "other_server.key", "listener.key");
    assert!(gw.reload(), "{}", gw.log_text());
    let r = tls_call(gw.addr, &other, &post("/v1/chat/completions", CHAT, ""))
        .expect("TLS with the new certificate");
    assert!(
        r.starts_with("HTTP/1.1 200"),
        "the new backend CA is used for new connections: {r}\n{}",
        gw.log_text()
    );
    assert!(r.contains("completion_tokens"), "{r}");
    assert_eq!(hits(&b, "/v1/chat/completions"), 1);
    assert!(tls_call(gw.addr, &ca, &get("/health")).is_err(), "new handshakes use the new certificate");

    // A renewal that left a broken file: the reload is refused, the running certificate stays.
    std::fs::write(certs.file("listener.pem"), "not a certificate").unwrap();
    assert!(!gw.reload(), "{}", gw.log_text());
    assert!(gw.log_text().contains("tls.cert_file"), "{}", gw.log_text());
    let r = tls_call(gw.addr, &other, &get("/health")).expect("the running certificate stays in use");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[test]
fn a_slow_tls_head_gets_the_plain_listeners_408_and_failed_handshakes_are_counted() {
    let certs = Certs::make();
    let b = mock(llmproxy::mock::Flavor::Vllm);
    let top = "admin_listen = \"127.0.0.1:0\"\n";
    let limits = "[limits]\nheader_read_timeout = \"1s\"\n";
    let tls = format!(
        "{limits}[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        certs.path("server.pem"),
        certs.path("server.key")
    );
    let gw = Gateway::start(&format!("{top}{}", config_for(&[b.url()], &tls)));
    let plain = Gateway::start(&config_for(&[b.url()], limits));

    // Half a head, then nothing: the plain listener answers 408 and closes; so does TLS (with a
    // close_notify: read_to_end would fail on a bare FIN).
    let half = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n";
    let mut p = std::net::TcpStream::connect(plain.addr).unwrap();
    p.write_all(half).unwrap();
    let (got, _) = read_to_close(&mut p, 20);
    let plain_answer = String::from_utf8_lossy(&got).to_string();
    assert!(plain_answer.starts_with("HTTP/1.1 408 "), "plain: {plain_answer}");
    let mut c = tls_client(gw.addr, &certs.path("ca.pem"));
    c.write_all(half).unwrap();
    let mut got = Vec::new();
    let end = c.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 "), "TLS: {text}");
    assert!(end.is_ok(), "closed with close_notify: {end:?}");
    // A body that stalls gets the same over TLS.
    let mut c = tls_client(gw.addr, &certs.path("ca.pem"));
    c.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-length: 100\r\n\r\n{\"mo")
        .unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408 "),
        "TLS body: {}",
        String::from_utf8_lossy(&got)
    );

    let admin = admin_addr(&gw);
    let count = |reason: &str| {
        metric(&metrics(admin), &format!("llmproxy_tls_handshake_failures_total{{reason=\"{reason}\"}}"))
    };
    assert_eq!(count("timeout"), Some(0.0));

    // No handshake at all: closed once header_read_timeout passed, counted as a timeout.
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    let (got, _) = read_to_close(&mut s, 20);
    assert!(got.is_empty());
    assert!(t.elapsed() >= Duration::from_millis(900), "closed by the timeout, not at once");
    eventually(10, "timeout counted", || count("timeout") == Some(1.0));

    // Plain HTTP to the TLS port, and a handshake that is not one.
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.write_all(half).unwrap();
    let _ = read_to_close(&mut s, 20);
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef]).unwrap();
    let _ = read_to_close(&mut s, 20);
    eventually(10, "plain_http and error counted", || {
        count("plain_http") == Some(1.0) && count("error") == Some(1.0)
    });
    // A client that connects and leaves without a byte (a TCP probe) is not a failure.
    drop(std::net::TcpStream::connect(gw.addr).unwrap());
    let r = tls_call(gw.addr, &certs.path("ca.pem"), &get("/health")).unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!((count("timeout"), count("plain_http"), count("error")), (Some(1.0), Some(1.0), Some(1.0)));
}
