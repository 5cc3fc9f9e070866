//! What the client and the usage record see when a backend fails or no backend can be chosen,
//! through the real binary under each I/O driver: the first-byte timeout (504), a stream that goes
//! quiet mid-body (stream_idle_timeout), `rejected` records, and the retry rule (a connection
//! failure before any response byte, on a reused idle connection or a new one, is retried once).

mod common;
mod metering_util;

use common::*;
use llmproxy::mock::Flavor;
use metering_util::*;
use std::io::Write;
use std::net::TcpStream;

const CHAT: &str = "/v1/chat/completions";
const STREAM: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"one two three"}]}"#;

fn start(driver: &str, cfg: &str) -> Gateway {
    Gateway::start_in(tempfile::tempdir().unwrap(), cfg, &[("LLMPROXY_DRIVER", driver)])
}

#[test]
fn first_byte_timeout_is_a_504_with_a_backend_error_record() {
    for driver in drivers() {
        let b = mock(Flavor::Vllm);
        let r = Receiver::start();
        let extra = format!(
            "[limits]\nupstream_first_byte_timeout = \"400ms\"\n[health_check]\ninterval = \"60s\"\n{}",
            hook(&r, "")
        );
        let gw = start(driver, &config_for(&[b.url()], &extra));
        // A JSON answer exists only after generation: nothing comes for 30 s.
        let resp = request(gw.addr, &post(CHAT, &chat("m"), "x-mock-ttft-ms: 30000\r\n"));
        assert_eq!(resp.status, 504, "{driver}: {}", resp.text());
        assert_eq!(resp.json()["error"]["code"], "backend_timeout", "{driver}");
        let rec = record_for(&r, &rid(&resp));
        assert_eq!(rec["status"], "backend_error", "{driver}: {rec}");
        assert_eq!(rec["http_status"], 504, "{driver}: {rec}");
        assert_eq!(rec["backend_url"], b.url().as_str(), "{driver}: {rec}");
        assert_eq!(rec_tokens(&rec), (0, 0, 0), "{driver}: {rec}");
        assert!(rec["usage_missing"].is_null(), "{driver}: nothing was answered: {rec}");
        // Not retried, and the timed-out backend connection is closed, not pooled (a read cut
        // by a timer may have lost bytes).
        assert_eq!(hits(&b, CHAT), 1, "{driver}: a timeout is not retried");
        eventually(10, "the backend connection closed", || b.open_connections() == 0);
        // The gateway still serves.
        let resp = request(gw.addr, &post(CHAT, &chat("m"), ""));
        assert_eq!(resp.status, 200, "{driver}: {}", resp.text());
    }
}

/// A backend that accepts the connection but never reads the request: a body larger than the
/// socket buffers cannot all be sent, and the send is cut at upstream_first_byte_timeout with a 504
/// (it used to wait for ever, holding the client connection and the backend's in-flight count).
#[test]
fn a_backend_that_never_reads_the_request_is_a_504() {
    for driver in drivers() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let h2 = held.clone();
        std::thread::spawn(move || {
            for mut s in l.incoming().map_while(Result::ok) {
                // Health checks (GET) are answered; a request (POST) is never read.
                let mut first = [0u8; 4];
                if s.peek(&mut first).is_ok() && &first == b"GET " {
                    let _ =
                        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
                } else {
                    h2.lock().unwrap().push(s);
                }
            }
        });
        let extra = "[limits]\nupstream_first_byte_timeout = \"500ms\"\nmax_request_body = \"64MiB\"\n";
        let gw = start(driver, &config_for(&[url], extra));
        let body =
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(32 << 20));
        let t = std::time::Instant::now();
        let resp = request(gw.addr, &post(CHAT, &body, ""));
        assert_eq!(resp.status, 504, "{driver}: {}", resp.text());
        assert!(t.elapsed() < std::time::Duration::from_secs(20), "{driver}: took {:?}", t.elapsed());
        assert_eq!(held.lock().unwrap().len(), 1, "{driver}: not retried elsewhere");
    }
}

#[test]
fn a_stream_gone_quiet_is_cut_at_stream_idle_timeout_and_billed_so_far() {
    for driver in drivers() {
        let b = mock_with(Flavor::Vllm, 1, 1, 20);
        let r = Receiver::start();
        let extra = format!(
            "[limits]\nstream_idle_timeout = \"500ms\"\n{}[[backends]]\nurl = \"{}\"\ncontinuous_usage = \"on\"\n",
            hook(&r, ""),
            b.url()
        );
        let gw = start(driver, &config_for(&[b.url()], &extra));
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.write_all(&post(CHAT, STREAM, "x-mock-stall-after: 4\r\n")).unwrap();
        let (got, closed) = read_to_close(&mut s, 20);
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(closed, "{driver}: the client connection closes after a cut stream: {text}");
        assert!(text.starts_with("HTTP/1.1 200"), "{driver}: {text}");
        assert!(!text.ends_with("0\r\n\r\n"), "{driver}: a cut stream must not look complete: {text}");
        assert!(!text.contains("[DONE]"), "{driver}: {text}");
        assert!(!text.contains("\"usage\""), "{driver}: per-chunk usage reached the client: {text}");
        let rec = record_for(&r, &rid_of(&text));
        assert_eq!(rec["status"], "backend_error", "{driver}: {rec}");
        assert_eq!(rec["http_status"], 200, "{driver}: {rec}");
        assert_eq!(rec["usage_source"], "partial", "{driver}: {rec}");
        let (prompt, completion, total) = rec_tokens(&rec);
        assert_eq!(prompt, 3, "{driver}: {rec}");
        // Four events went out (the role chunk and three tokens): what the last one reported.
        assert!((1..=4).contains(&completion), "{driver}: {rec}");
        assert_eq!(total, prompt + completion, "{driver}: {rec}");
        assert!(rec["ttft_ms"].is_u64(), "{driver}: {rec}");
        // The gateway closed the quiet backend connection.
        eventually(10, "the backend saw the gateway close", || b.streams_aborted() == 1);
        assert_eq!(hits(&b, CHAT), 1, "{driver}");
    }
}

/// The `x-llmproxy-request-id` of a raw response text.
fn rid_of(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("x-llmproxy-request-id: "))
        .unwrap_or_else(|| panic!("no x-llmproxy-request-id in {text}"))
        .trim()
        .to_string()
}

#[test]
fn no_backend_to_choose_is_a_rejected_record() {
    for driver in drivers() {
        let b = mock(Flavor::Vllm);
        let r = Receiver::start();
        let extra = format!("{}[[backends]]\nurl = \"{}\"\nmodels = [\"served\"]\n", hook(&r, ""), b.url());
        let gw = start(driver, &config_for(&[b.url()], &extra));
        // A model no backend serves: 404, a `rejected` record (it names no backend).
        let resp = request(gw.addr, &post(CHAT, &chat("unknown"), ""));
        assert_eq!(resp.status, 404, "{driver}: {}", resp.text());
        assert_eq!(resp.json()["error"]["code"], "model_not_found", "{driver}");
        let rec = record_for(&r, &rid(&resp));
        assert_eq!(rec["status"], "rejected", "{driver}: {rec}");
        assert_eq!(rec["http_status"], 404, "{driver}: {rec}");
        assert!(rec["backend_url"].is_null(), "{driver}: {rec}");
        assert_eq!(rec["model"], "unknown", "{driver}: {rec}");
        assert_eq!(rec_tokens(&rec), (0, 0, 0), "{driver}: {rec}");
        // Every backend down: 503, `rejected` too.
        b.kill();
        eventually(10, "/health 503", || request(gw.addr, &get("/health")).status == 503);
        let resp = request(gw.addr, &post(CHAT, &chat("served"), ""));
        assert_eq!(resp.status, 503, "{driver}: {}", resp.text());
        assert_eq!(resp.json()["error"]["code"], "no_healthy_backend", "{driver}");
        let rec = record_for(&r, &rid(&resp));
        assert_eq!(rec["status"], "rejected", "{driver}: {rec}");
        assert_eq!(rec["http_status"], 503, "{driver}: {rec}");
        assert!(rec["backend_url"].is_null(), "{driver}: {rec}");
        assert_eq!(hits(&b, CHAT), 0, "{driver}");
        // Refused before proxying (no backend involved, nothing consumed): no record at all.
        let resp = request(gw.addr, &post(CHAT, "{not json", ""));
        assert_eq!(resp.status, 400, "{driver}");
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(count_for(&r, &rid(&resp)), 0, "{driver}: a 400 made a record");
    }
}

#[test]
fn a_reused_connection_the_backend_closed_is_retried_on_a_new_one() {
    for driver in drivers() {
        let b = mock(Flavor::Vllm);
        let r = Receiver::start();
        // One worker: the second request finds the first one's connection in that core's pool.
        let extra = format!(
            "[runtime]\nworkers = 1\npin_cores = false\n[health_check]\ninterval = \"60s\"\n{}",
            hook(&r, "")
        );
        let gw = start(driver, &config_for(&[b.url()], &extra));
        let mut c = connect(gw.addr);
        // Answered as keep-alive, then closed by the backend (its idle timeout fired at once).
        let first = c.request(&post(CHAT, &chat("m"), "x-mock-close-idle: 1\r\n"));
        assert_eq!(first.status, 200, "{driver}: {}", first.text());
        eventually(10, "the backend closed its side", || b.open_connections() == 0);
        let resp = c.request(&post(CHAT, &chat("m"), ""));
        assert_eq!(resp.status, 200, "{driver}: {}", resp.text());
        let rec = record_for(&r, &rid(&resp));
        assert_eq!(rec["status"], "ok", "{driver}: {rec}");
        assert_eq!(rec_tokens(&rec).1, 5, "{driver}: {rec}");
        assert_eq!(count_for(&r, &rid(&resp)), 1, "{driver}: one record per request");
        assert_eq!(hits(&b, CHAT), 2, "{driver}: the dead connection delivered nothing");
        assert_eq!(gw.log_text().matches("retrying after connection failure").count(), 1, "{driver}");
    }
}

#[test]
fn a_new_connection_that_fails_before_any_response_byte_is_retried_once_elsewhere() {
    for driver in drivers() {
        let a = mock(Flavor::Vllm);
        let b = mock(Flavor::Vllm);
        let r = Receiver::start();
        let gw = start(driver, &config_for(&[a.url(), b.url()], &hook(&r, "")));
        // Both backends read the request and close without a byte: sent once more (CONTRACT 3),
        // on the other backend, then a 502 and one backend_error record.
        let resp = request(gw.addr, &post(CHAT, &chat("m"), "x-mock-hang-up: 1\r\n"));
        assert_eq!(resp.status, 502, "{driver}: {}", resp.text());
        assert_eq!(resp.json()["error"]["code"], "bad_gateway", "{driver}");
        assert_eq!(hits(&a, CHAT), 1, "{driver}: each backend tried once");
        assert_eq!(hits(&b, CHAT), 1, "{driver}: each backend tried once");
        let rec = record_for(&r, &rid(&resp));
        assert_eq!(rec["status"], "backend_error", "{driver}: {rec}");
        assert_eq!(rec["http_status"], 502, "{driver}: {rec}");
        assert_eq!(gw.log_text().matches("retrying after connection failure").count(), 1, "{driver}");
        // A backend refusing connections is retried elsewhere too.
        a.kill();
        let mut c = connect(gw.addr);
        for i in 0..4 {
            let resp = c.request(&post(CHAT, &chat("m"), ""));
            assert_eq!(resp.status, 200, "{driver} request {i}: {}", resp.text());
        }
    }
}
