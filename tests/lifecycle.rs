//! Process lifecycle and operations: SIGTERM drain, /metrics, merged /v1/models, --check-config,
//! a missing config file, the I/O driver in the startup log.
mod common;
use common::*;
use llmproxy::mock::Flavor;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

const CHAT: &str = "/v1/chat/completions";

#[test]
fn sigterm_drains_a_stream_in_flight_then_refuses_and_exits_0() {
    let m = mock(Flavor::Vllm);
    let mut gw = Gateway::start(&config_for(&[m.url()], ""));
    if let Ok(d) = std::env::var("LLMPROXY_DRIVER") {
        // The startup log names the driver actually in use (logged just after the address).
        let want = format!("I/O driver {d}");
        eventually(3, &want, || gw.log_text().contains(&want));
    }
    let addr = gw.addr;
    let mut s = TcpStream::connect(addr).unwrap();
    let body = r#"{"model":"m","stream":true,"messages":[]}"#;
    s.write_all(&post(CHAT, body, "x-mock-itl-ms: 40\r\nx-mock-tokens: 25\r\n")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("data: ") {
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&tmp[..n]);
    }
    let pid = gw.child.as_ref().unwrap().id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let t = Instant::now();
    eventually(2, "new connections refused after SIGTERM", || TcpStream::connect(addr).is_err());
    assert!(t.elapsed() < Duration::from_millis(700), "the stream should still be running");
    let (rest, closed) = read_to_close(&mut s, 10);
    got.extend(rest);
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(closed, "the drained connection closes");
    assert!(text.ends_with("data: [DONE]\n\n\r\n0\r\n\r\n"), "stream not complete: {text}");
    assert!(text.matches("\"content\":\"").count() >= 25, "{text}");
    assert_eq!(gw.terminate(), Some(0), "exit code; log:\n{}", gw.log_text());
    assert_eq!(m.streams_aborted(), 0);
}

#[test]
fn metrics_expose_every_contract_series() {
    let a = mock(Flavor::Vllm);
    let b = mock(Flavor::Sglang);
    let gw = Gateway::start(&config_for(&[a.url(), b.url()], "[balancer]\nstrategy = \"round_robin\"\n"));
    // Before traffic the unlabelled ones are there already.
    let text = metrics(gw.addr);
    for name in [
        "llmproxy_webhook_success_total",
        "llmproxy_webhook_failure_total",
        "llmproxy_webhook_queue_depth",
        "llmproxy_spool_records",
        "llmproxy_usage_missing_total",
        "llmproxy_connections_active",
    ] {
        assert!(metric(&text, name).is_some(), "{name} missing before traffic:\n{text}");
    }
    let mut c = connect(gw.addr);
    for _ in 0..2 {
        assert_eq!(c.request(&post(CHAT, r#"{"model":"m","stream":true,"messages":[]}"#, "")).status, 200);
        assert_eq!(c.request(&post(CHAT, &chat("m"), "")).status, 200);
    }
    assert_eq!(c.request(&get("/nope")).status, 404);
    let text = metrics(gw.addr);
    for name in [
        "llmproxy_requests_total{",
        "llmproxy_latency_ms_bucket{",
        "llmproxy_latency_ms_sum",
        "llmproxy_latency_ms_count",
        "llmproxy_ttft_ms_bucket{",
        "llmproxy_ttft_ms_count",
        "llmproxy_tokens_total{",
        "llmproxy_webhook_success_total",
        "llmproxy_webhook_failure_total",
        "llmproxy_webhook_queue_depth",
        "llmproxy_spool_records",
        "llmproxy_usage_missing_total",
        "llmproxy_backend_up{",
        "llmproxy_backend_inflight{",
        "llmproxy_connections_active",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing:\n{text}");
    }
    for stream in ["true", "false"] {
        let total: f64 = [a.url(), b.url()]
            .iter()
            .filter_map(|u| {
                metric(&text, &format!(
                    "llmproxy_requests_total{{endpoint=\"/v1/chat/completions\",stream=\"{stream}\",backend=\"{u}\",status=\"200\"}}"
                ))
            })
            .sum();
        assert_eq!(total, 2.0, "stream={stream}:\n{text}");
    }
    let s404 = "llmproxy_requests_total{endpoint=\"other\",stream=\"false\",backend=\"none\",status=\"404\"}";
    assert_eq!(metric(&text, s404), Some(1.0), "{text}");
    assert_eq!(metric(&text, "llmproxy_ttft_ms_count"), Some(2.0), "{text}");
    assert!(metric(&text, "llmproxy_latency_ms_count").is_some_and(|v| v >= 4.0), "{text}");
    for u in [a.url(), b.url()] {
        assert_eq!(metric(&text, &format!("llmproxy_backend_up{{backend=\"{u}\"}}")), Some(1.0));
        assert_eq!(metric(&text, &format!("llmproxy_backend_inflight{{backend=\"{u}\"}}")), Some(0.0));
    }
    eventually(3, "completion tokens counted", || {
        metric(&metrics(gw.addr), "llmproxy_tokens_total{model=\"m\",kind=\"completion\"}") == Some(20.0)
    });
}

#[test]
fn v1_models_merges_the_backends_lists() {
    let a = mock(Flavor::Vllm);
    let b = mock(Flavor::Sglang);
    let c = mock(Flavor::Vllm); // same model as `a`: listed once
    let gw = Gateway::start(&config_for(&[a.url(), b.url(), c.url()], ""));
    let r = request(gw.addr, &get("/v1/models"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "list");
    let mut ids: Vec<String> =
        v["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    let mut want = vec![Flavor::Vllm.default_model().to_string(), Flavor::Sglang.default_model().to_string()];
    want.sort();
    assert_eq!(ids, want);
    assert!(r.header("x-request-id").is_some());
}

fn llmproxy(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llmproxy")).args(args).output().expect("run llmproxy");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code(), text)
}

#[test]
fn check_config_and_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, config_for(&["http://127.0.0.1:9".to_string()], "").replace("@SPOOL@", "/tmp/x"))
        .unwrap();
    let (code, text) = llmproxy(&["--check-config", "--config", good.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{text}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "listen = \"nope\"\n[limits]\nheader_read_timeout = \"ten\"\n[balancer]\nstrategy = \"random\"\n[[backends]]\nurl = \"https://x\"\nweight = 0\n",
    )
    .unwrap();
    let (code, text) = llmproxy(&["--check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, Some(64), "{text}");
    for (line, key) in [
        (1, "listen"),
        (3, "limits.header_read_timeout"),
        (5, "balancer.strategy"),
        (7, "backends[0].url"),
        (8, "backends[0].weight"),
    ] {
        assert!(
            text.contains(&format!("bad.toml:{line}: {key}")),
            "problem with {key} not named at line {line}:\n{text}"
        );
    }
    // An unknown key is named with its line.
    std::fs::write(
        &bad,
        "listen = \"127.0.0.1:0\"\nbogus_key = 1\n[[backends]]\nurl = \"http://127.0.0.1:9\"\n",
    )
    .unwrap();
    let (code, text) = llmproxy(&["--check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, Some(64), "{text}");
    assert!(text.contains("bad.toml:2:") && text.contains("bogus_key"), "{text}");

    let missing = dir.path().join("does-not-exist.toml");
    let m = missing.to_str().unwrap();
    for args in [vec!["--check-config", "--config", m], vec!["--config", m]] {
        let (code, text) = llmproxy(&args);
        assert_ne!(code, Some(0), "{text}");
        assert!(text.contains(m), "the missing path is named: {text}");
    }
}

/// Whoever reads the gateway's stderr (journald, a container's log pipe) stalls: the 64 KiB pipe
/// fills, yet every request is still answered (a core thread never waits on the log: the line is
/// dropped and counted), the writer reports the loss once it gets through, and SIGTERM still ends
/// the process while the pipe is full.
#[test]
fn a_stalled_log_reader_never_holds_up_requests_or_the_exit() {
    // A backend that refuses connections: every request is a 5xx the gateway logs a warning for.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    // With the access log off, and on stderr too (its own thread then waits on the pipe as well).
    for access_log in ["", "[access_log]\nenabled = true\npath = \"-\"\n"] {
        let top = format!("[runtime]\nworkers = 1\npin_cores = false\n{access_log}");
        let mut gw = Gateway::start(&config_for(std::slice::from_ref(&url), &top));
        gw.log_paused.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut c = connect(gw.addr);
        let t = Instant::now();
        // ~110 bytes a line, a line a request: past the log queue (4,096 lines) and the pipe (64 KiB).
        for i in 0..8000 {
            let r = c.request(&post(CHAT, &chat("m"), ""));
            assert!(r.status >= 500, "request {i}: {}", r.status);
        }
        let dropped = metric(&metrics(gw.addr), "llmproxy_log_lines_dropped_total").unwrap_or(0.0);
        assert!(dropped > 0.0, "the pipe never filled: no line dropped ({:?})", t.elapsed());
        // The reader comes back: the writer says how many lines were lost.
        gw.log_paused.store(false, std::sync::atomic::Ordering::Relaxed);
        let said = "log lines dropped: stderr was not read";
        eventually(10, "the dropped lines reported", || gw.log_text().contains(said));
        // Stalled again, and stopped: the exit does not wait on the pipe for ever.
        gw.log_paused.store(true, std::sync::atomic::Ordering::Relaxed);
        for _ in 0..8000 {
            assert!(c.request(&post(CHAT, &chat("m"), "")).status >= 500);
        }
        let t = Instant::now();
        assert_eq!(gw.terminate(), Some(0));
        assert!(t.elapsed() < Duration::from_secs(10), "exit took {:?} ({access_log})", t.elapsed());
    }
}
