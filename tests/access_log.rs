//! The access log through the real binary: one JSON line per request, refused ones included, the
//! lines matching the requests one to one (by the client's x-request-id), with the contract's
//! fields; the file is reopened on SIGHUP (logrotate's rename-then-reload).

mod common;
use common::*;
use llmproxy::mock::Flavor;
use std::collections::HashMap;

const CHAT: &str = "/v1/chat/completions";

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn one_line_per_request_matching_one_to_one_and_reopened_on_sighup() {
    let a = mock(Flavor::Vllm);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let extra = format!("[access_log]\nenabled = true\npath = \"{}\"\n", log.display());
    let gw = Gateway::start(&config_for(&[a.url()], &extra));
    let rid = |i: usize| format!("x-request-id: t-{i}\r\n");
    // (request bytes, expected status)
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (post(CHAT, &chat("m"), &rid(0)), 200),
        (post(CHAT, r#"{"model":"m","stream":true,"messages":[]}"#, &rid(1)), 200),
        (post("/v1/nope", "{}", &rid(2)), 404),
        (format!("GET {CHAT} HTTP/1.1\r\nHost: gw\r\n{}\r\n", rid(3)).into_bytes(), 405),
        (post(CHAT, "{not json", &rid(4)), 400),
        (format!("GET /health HTTP/1.1\r\nHost: gw\r\n{}\r\n", rid(5)).into_bytes(), 200),
        (format!("GET /metrics HTTP/1.1\r\nHost: gw\r\n{}\r\n", rid(6)).into_bytes(), 200),
        (post(CHAT, &chat("m"), &format!("{}x-mock-status: 500\r\n", rid(7))), 500),
    ];
    let mut sizes = HashMap::new();
    for (i, (req, status)) in cases.iter().enumerate() {
        let r = request(gw.addr, req);
        assert_eq!(r.status, *status, "case {i}: {}", r.text());
        sizes.insert(format!("t-{i}"), r.body.len());
    }
    eventually(10, "every request logged", || lines(&log).len() >= cases.len());
    std::thread::sleep(std::time::Duration::from_millis(200));
    let got = lines(&log);
    assert_eq!(got.len(), cases.len(), "one line per request: {got:#?}");
    for (i, (_, status)) in cases.iter().enumerate() {
        let id = format!("t-{i}");
        let mine: Vec<_> = got.iter().filter(|l| l["client_request_id"] == id.as_str()).collect();
        assert_eq!(mine.len(), 1, "exactly one line for {id}: {got:#?}");
        let l = mine[0];
        assert_eq!(l["status"], *status, "{l}");
        for k in [
            "time",
            "request_id",
            "client_request_id",
            "client_addr",
            "method",
            "path",
            "status",
            "bytes_out",
            "duration_ms",
            "ttft_ms",
            "backend_url",
            "model",
            "user_id",
            "prompt_tokens",
            "completion_tokens",
            "error",
        ] {
            assert!(l.get(k).is_some(), "{k} missing in {l}");
        }
        assert!(l["client_addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{l}");
        assert!(l["bytes_out"].as_u64().unwrap() >= sizes[&id] as u64, "{l}");
    }
    let by =
        |i: usize| got.iter().find(|l| l["client_request_id"] == format!("t-{i}").as_str()).unwrap().clone();
    assert_eq!(by(0)["backend_url"], a.url().as_str());
    assert_eq!(by(0)["model"], "m");
    assert!(by(0)["completion_tokens"].as_u64().unwrap() > 0);
    assert!(by(0)["error"].is_null());
    assert!(by(1)["ttft_ms"].is_u64(), "{}", by(1));
    assert_eq!(by(2)["path"], "/v1/nope");
    assert!(by(2)["error"].is_string());
    assert_eq!(by(3)["method"], "GET");
    assert!(by(4)["error"].is_string());
    assert!(by(7)["error"].is_null(), "a backend's own 500 passes through: {}", by(7));

    // logrotate: rename, then SIGHUP; the next lines go to a new file.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    assert!(gw.reload());
    let r = request(gw.addr, &post(CHAT, &chat("m"), &rid(9)));
    assert_eq!(r.status, 200);
    eventually(10, "a line in the reopened file", || lines(&log).len() == 1);
    assert_eq!(lines(&log)[0]["client_request_id"], "t-9");
    assert_eq!(lines(&rotated).len(), cases.len());
    let m = metrics(gw.addr);
    assert_eq!(metric(&m, "llmproxy_access_log_dropped_total"), Some(0.0), "{m}");
}
