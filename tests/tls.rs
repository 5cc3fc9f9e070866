//! TLS on every gateway hop, through the real binary, with certificates made by `openssl` for each
//! test: https backends (private CA, mutual TLS, wrong CA, tls_server_name), pooled TLS connections,
//! config check of bad PEM files, the TLS listener (curl, a raw rustls client, plain HTTP sent to
//! it), and the client-disconnect watch on a TLS client (close_notify vs pipelined bytes).

mod common;
mod tls_util;

use common::*;
use std::io::{Read, Write};
use std::process::Command;
use tls_util::*;

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
const CHAT_STREAM: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn backend_cfg(url: &str, keys: &str) -> String {
    format!("[[backends]]\nurl = \"{url}\"\n{keys}\n")
}

#[test]
fn https_backend_with_a_private_ca_serves_streams_json_and_models() {
    let certs = Certs::make();
    let (b, front) = tls_mock(&certs, "server", None);
    let cfg =
        config_for(&[], &backend_cfg(&front.url(), &format!("tls_ca_file = \"{}\"", certs.path("ca.pem"))));
    let gw = Gateway::start(&cfg);
    let r = request(gw.addr, &post("/v1/chat/completions", CHAT, ""));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log_text());
    assert!(r.json()["usage"]["completion_tokens"].as_u64().is_some(), "{}", r.text());
    let r = request(gw.addr, &post("/v1/chat/completions", CHAT_STREAM, ""));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("[DONE]"), "{}", r.text());
    // The models merger and the health checker speak TLS to it too.
    let r = request(gw.addr, &get("/v1/models"));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log_text());
    assert!(r.text().contains(&b.options().model), "{}", r.text());
    let r = request(gw.addr, &get("/health"));
    assert!(r.text().contains("\"backends_up\":1"), "{}", r.text());
    eventually(10, "the health check reached the backend over TLS", || hits(&b, "/health") >= 1);
    assert!(front.handshakes() >= 1);
}

#[test]
fn pooled_tls_connections_are_reused() {
    let certs = Certs::make();
    let (b, front) = tls_mock(&certs, "server", None);
    let extra = format!(
        "[runtime]\nworkers = 1\npin_cores = false\n[health_check]\ninterval = \"1h\"\n{}",
        backend_cfg(&front.url(), &format!("tls_ca_file = \"{}\"", certs.path("ca.pem")))
    );
    let gw = Gateway::start(&config_for(&[], &extra));
    let mut c = connect(gw.addr);
    for i in 0..10 {
        let r = c.request(&post("/v1/chat/completions", if i % 2 == 0 { CHAT } else { CHAT_STREAM }, ""));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(hits(&b, "/v1/chat/completions"), 10);
    // One connection per health check (each says Connection: close) and per /v1/models read for
    // learning continuous usage (continuous_usage = "auto"), one pooled connection for all ten
    // requests.
    let checks = (hits(&b, "/health") + hits(&b, "/v1/models")) as u64;
    assert!(
        front.accepts() <= checks + 1,
        "{} TLS connections for 10 requests and {checks} checks",
        front.accepts()
    );
}

#[test]
fn mutual_tls_with_and_without_a_client_certificate() {
    let certs = Certs::make();
    let (b, front) = tls_mock(&certs, "server", Some("ca"));
    let with = format!(
        "tls_ca_file = \"{}\"\ntls_client_cert = \"{}\"\ntls_client_key = \"{}\"",
        certs.path("ca.pem"),
        certs.path("client.pem"),
        certs.path("client.key")
    );
    let gw = Gateway::start(&config_for(&[], &backend_cfg(&front.url(), &with)));
    let r = request(gw.addr, &post("/v1/chat/completions", CHAT, ""));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gw.log_text());
    assert_eq!(hits(&b, "/v1/chat/completions"), 1);
    drop(gw);

    let without = format!("tls_ca_file = \"{}\"", certs.path("ca.pem"));
    let gw = Gateway::start(&config_for(&[], &backend_cfg(&front.url(), &without)));
    let r = request(gw.addr, &post("/v1/chat/completions", CHAT, ""));
    assert_eq!(r.status, 502, "{}\n{}", r.text(), gw.log_text());
    assert_eq!(hits(&b, "/v1/chat/completions"), 1, "no request got through without a certificate");
    eventually(10, "the reason in the log", || gw.log_text().contains("CertificateRequired"));
}

#[test]
fn a_certificate_that_does_not_verify_is_a_502_with_the_reason_logged() {
    let certs = Certs::make();
    let (b, front) = tls_mock(&certs, "other_server", None);
    let keys = format!("tls_ca_file = \"{}\"", certs.path("ca.pem"));
    let gw = Gateway::start(&config_for(&[], &backend_cfg(&front.url(), &keys)));
    let r = request(gw.addr, &post("/v1/chat/completions", CHAT, ""));
    assert_eq!(r.status, 502, "{}\n{}", r.text(), gw.log_text());
    assert!(r.text().contains("TLS"), "{}", r.text());
    // The log is read by a thread of the test harness: wait for the line rather than race it.
    eventually(10, "the reason in the log", || gw.log_text().contains("invalid peer certificate"));
    let log = gw.log_text();
    let line =
        log.lines().find(|l| l.contains("invalid peer certificate")).unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("UnknownIssuer") && line.contains(&front.url()), "{line}");
    assert_eq!(hits(&b, "/v1/chat/completions"), 0);
}

#[test]
fn tls_server_name_is_the_name_verified_for_an_ip_url() {
    let certs = Certs::make();
    let (_b, front) = tls_mock(&certs, "server", None);
    let ca = certs.path("ca.pem");
    let good = format!("tls_ca_file = \"{ca}\"\ntls_server_name = \"localhost\"");
    let gw = Gateway::start(&config_for(&[], &backend_cfg(&front.url(), &good)));
    assert_eq!(request(gw.addr, &post("/v1/chat/completions", CHAT, "")).status, 200, "{}", gw.log_text());
    drop(gw);
    let bad = format!("tls_ca_file = \"{ca}\"\ntls_server_name = \"elsewhere.example\"");
    let gw = Gateway::start(&config_for(&[], &backend_cfg(&front.url(), &bad)));
    assert_eq!(request(gw.addr, &post("/v1/chat/completions", CHAT, "")).status, 502);
    eventually(10, "the reason in the log", || gw.log_text().contains("not valid for name"));
}

#[test]
fn config_check_names_each_bad_tls_key() {
    let certs = Certs::make();
    std::fs::write(certs.file("garbage.pem"), "not a certificate\n").unwrap();
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         [[backends]]\nurl = \"https://127.0.0.1:1\"\ntls_ca_file = \"{}\"\n\
         [[backends]]\nurl = \"https://127.0.0.1:2\"\ntls_client_cert = \"{}\"\n\
         [[backends]]\nurl = \"http://127.0.0.1:3\"\ntls_server_name = \"x\"\n",
        certs.path("garbage.pem"),
        certs.path("missing.key"),
        certs.path("missing.pem"),
        certs.path("client.pem"),
    );
    let path = certs.file("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_llmproxy"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .expect("run llmproxy");
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{all}");
    for key in [
        "tls.cert_file",
        "tls.key_file",
        "backends[0].tls_ca_file",
        "backends[1].tls_client_key",
        "backends[2].url",
    ] {
        assert!(all.contains(key), "{key} not reported:\n{all}");
    }
    assert!(all.contains("missing.pem"), "{all}");
}

/// A gateway whose listener speaks TLS with the test CA's server certificate; `top` holds
/// top-level keys (they must come before any section).
fn tls_gateway(certs: &Certs, backend: &str, top: &str) -> Gateway {
    let tls = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        certs.path("server.pem"),
        certs.path("server.key")
    );
    Gateway::start(&format!("{top}{}", config_for(&[backend.to_string()], &tls)))
}

fn curl(certs: &Certs, gw: &Gateway, args: &[&str]) -> String {
    let port = gw.addr.port();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert", &certs.path("ca.pem")])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(args)
        .output()
        .expect("run curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl {args:?}: {}{text}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log_text()
    );
    text
}

#[test]
fn tls_listener_serves_curl_over_http1_and_admin_stays_plain() {
    let certs = Certs::make();
    let b = mock(llmproxy::mock::Flavor::Vllm);
    let gw = tls_gateway(&certs, &b.url(), "admin_listen = \"127.0.0.1:0\"\n");
    let url = format!("https://localhost:{}/v1/chat/completions", gw.addr.port());
    let out = curl(
        &certs,
        &gw,
        &["-w", "\n%{http_code} %{http_version}", "-H", "content-type: application/json", "-d", CHAT, &url],
    );
    assert!(out.ends_with("200 1.1"), "{out}");
    assert!(out.contains("\"completion_tokens\""), "{out}");
    let out = curl(&certs, &gw, &["-N", "-H", "content-type: application/json", "-d", CHAT_STREAM, &url]);
    assert!(out.contains("data: [DONE]"), "{out}");
    // Several requests on one TLS connection (curl reuses it for URLs given together).
    let health = format!("https://localhost:{}/health", gw.addr.port());
    let out = curl(&certs, &gw, &["-w", "%{num_connects}\n", &health, &health, &health]);
    assert_eq!(out.matches("\"status\":\"ok\"").count(), 3, "{out}");
    assert_eq!(
        out.lines().filter(|l| l.trim() == "0").count(),
        2,
        "later requests reuse the connection: {out}"
    );
    // admin_listen is plain HTTP.
    let log = gw.log_text();
    let admin = log.lines().find_map(|l| l.split("(/health, /metrics) on ").nth(1)).expect("admin address");
    let r = request(admin.trim().parse().unwrap(), &get("/health"));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn plain_http_to_the_tls_listener_gets_a_400_and_a_clean_close() {
    let certs = Certs::make();
    let b = mock(llmproxy::mock::Flavor::Vllm);
    let gw = tls_gateway(&certs, &b.url(), "");
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-length: 2\r\n\r\n{}").unwrap();
    let mut got = Vec::new();
    // read_to_end fails on a reset: the close must be a FIN after the answer.
    s.read_to_end(&mut got).expect("a clean close, not a reset");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.contains("speaks TLS"), "{text}");
    assert_eq!(hits(&b, "/v1/chat/completions"), 0);
    // The listener still serves TLS.
    let out = curl(&certs, &gw, &[&format!("https://localhost:{}/health", gw.addr.port())]);
    assert!(out.contains("\"status\":\"ok\""), "{out}");
}

/// Reads from a TLS client until `done(text so far)`.
fn read_until(s: &mut impl Read, mut done: impl FnMut(&str) -> bool) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&String::from_utf8_lossy(&all)) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read: {e}; so far: {}", String::from_utf8_lossy(&all)),
        }
    }
    String::from_utf8_lossy(&all).to_string()
}

#[test]
fn a_tls_client_closing_with_close_notify_mid_wait_is_a_disconnect() {
    let certs = Certs::make();
    // The backend sends its head at once, then waits 30 s for the first token.
    let b = mock(llmproxy::mock::Flavor::Vllm);
    let gw = tls_gateway(&certs, &b.url(), "");
    let mut c = tls_client(gw.addr, &certs.path("ca.pem"));
    c.write_all(&post("/v1/chat/completions", CHAT_STREAM, "x-mock-ttft-ms: 30000\r\n")).unwrap();
    c.flush().unwrap();
    read_until(&mut c, |t| t.contains("\r\n\r\n"));
    std::thread::sleep(std::time::Duration::from_millis(100));
    // A client that closes: close_notify (an encrypted record, which a peek sees as bytes), then FIN.
    c.conn.send_close_notify();
    c.conn.complete_io(&mut c.sock).unwrap();
    drop(c);
    eventually(10, "the gateway closed the backend stream", || b.streams_aborted() == 1);
}

#[test]
fn a_tls_client_pipelining_during_a_wait_is_not_a_disconnect() {
    let certs = Certs::make();
    let b = mock(llmproxy::mock::Flavor::Vllm);
    let gw = tls_gateway(&certs, &b.url(), "");
    let mut c = tls_client(gw.addr, &certs.path("ca.pem"));
    c.write_all(&post("/v1/chat/completions", CHAT_STREAM, "x-mock-ttft-ms: 600\r\n")).unwrap();
    c.flush().unwrap();
    // The second request arrives while the first waits on the backend (the watch is armed).
    std::thread::sleep(std::time::Duration::from_millis(200));
    c.write_all(&post("/v1/chat/completions", CHAT, "")).unwrap();
    c.flush().unwrap();
    let text = read_until(&mut c, |t| {
        t.matches("HTTP/1.1 200").count() == 2
            && t.contains("\"usage\":{\"prompt_tokens\"")
            && t.rfind("[DONE]").is_some_and(|d| t[d..].contains("HTTP/1.1 200") && t.ends_with('}'))
    });
    assert!(text.contains("[DONE]"), "{text}");
    assert_eq!(b.streams_aborted(), 0);
    assert_eq!(hits(&b, "/v1/chat/completions"), 2);
}

#[test]
fn openai_python_sdk_over_the_tls_listener_with_a_custom_ca() {
    let ready = Command::new("python3")
        .args(["-c", "import openai, pytest"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ready {
        common::prereq::missing("python3 with the openai and pytest packages (pip install openai pytest)");
        return;
    }
    let certs = Certs::make();
    let b = mock(llmproxy::mock::Flavor::Vllm);
    let gw = tls_gateway(&certs, &b.url(), "");
    let out = Command::new("python3")
        .args(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/python/test_tls_openai_sdk.py"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("LLMPROXY_TLS_URL", format!("https://localhost:{}", gw.addr.port()))
        .env("LLMPROXY_TLS_CA", certs.path("ca.pem"))
        .output()
        .expect("run pytest");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}\n{}", gw.log_text());
    assert!(text.contains("passed") && !text.contains("skipped"), "{text}");
}

/// A TLS client that trusts `ca` completes a handshake with the gateway and gets /health.
fn health_over_tls(addr: std::net::SocketAddr, ca: &str) -> Result<String, String> {
    let mut c = tls_client(addr, ca);
    c.write_all(&get("/health")).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 1024];
    let n = c.read(&mut buf).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf[..n]).to_string())
}

#[test]
fn listener_certificates_swap_on_reload_and_open_connections_keep_theirs() {
    // The entry point a reload calls (in-process gateway: the swap itself, not the signal).
    let certs = Certs::make();
    let b = mock(llmproxy::mock::Flavor::Vllm);
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[runtime]\nworkers = 2\npin_cores = false\n[usage_hook]\nenabled = false\nspool_dir = \"{}\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n[[backends]]\nurl = \"{}\"\n",
        certs.path("spool"),
        certs.path("server.pem"),
        certs.path("server.key"),
        b.url()
    );
    let cfg = llmproxy::config::Config::parse(&text, "test").unwrap();
    let gw = llmproxy::gateway::Gateway::start(
        cfg,
        llmproxy::gateway::Options { echo_records: false, ..Default::default() },
    )
    .unwrap();
    let (ca, other) = (certs.path("ca.pem"), certs.path("other_ca.pem"));
    assert!(health_over_tls(gw.addr, &ca).unwrap().starts_with("HTTP/1.1 200"));
    assert!(health_over_tls(gw.addr, &other).is_err(), "the other CA did not sign the first certificate");
    // A connection opened before the swap.
    let mut old = tls_client(gw.addr, &ca);
    old.write_all(&get("/health")).unwrap();
    read_until(&mut old, |t| t.contains("}\n"));

    let tls = gw.listener_tls().expect("TLS listener");
    let bad = tls.reload_files(&certs.path("missing.pem"), &certs.path("other_server.key"));
    assert!(bad.is_err_and(|p| p[0].0 == "tls.cert_file"), "a bad file changes nothing");
    assert!(health_over_tls(gw.addr, &ca).is_ok());
    tls.reload_files(&certs.path("other_server.pem"), &certs.path("other_server.key")).unwrap();
    assert!(health_over_tls(gw.addr, &other).unwrap().starts_with("HTTP/1.1 200"));
    assert!(health_over_tls(gw.addr, &ca).is_err(), "new handshakes use the new certificate");
    old.write_all(&get("/health")).unwrap();
    assert!(read_until(&mut old, |t| t.contains("}\n")).starts_with("HTTP/1.1 200"));
    drop(old);
    gw.stop();
}
