//! Relay fidelity: real backend transcripts come out byte-identical for every framing and every
//! split position; events keep the backend's pacing; a client that leaves stops the backend.
mod common;
use common::replay::{fixtures, split_events, Framing, Replay, Reply};
use common::*;
use llmproxy::mock::Flavor;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const STREAM_USAGE: &str = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
const STREAM_PLAIN: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const FRAMINGS: [Framing; 5] = [
    Framing::ChunkedPerEvent,
    Framing::ChunkedEvery(7),
    Framing::ChunkedEvery(4096),
    Framing::Length,
    Framing::Close,
];

/// The fixture as a client that did not ask for usage sees it: usage-only events cut.
fn without_usage_only(body: &[u8]) -> Vec<u8> {
    let needle = br#""choices":[]"#;
    split_events(body)
        .into_iter()
        .filter(|e| !e.windows(needle.len()).any(|w| w == needle))
        .flatten()
        .copied()
        .collect()
}

fn status_of(name: &str) -> u16 {
    name.split("error_").nth(1).and_then(|s| s.get(..3)).and_then(|s| s.parse().ok()).unwrap_or(200)
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn fixtures_relay_byte_identical_in_every_framing() {
    let sse = fixtures("sse");
    let json = fixtures("json");
    if sse.is_empty() && json.is_empty() {
        common::prereq::missing("fixture files (*.sse, *.json) under ../shared/fixtures/backends");
        return;
    }
    let rep = Replay::start(Reply::new(200, "text/plain", b"", Framing::Length));
    let gw = Gateway::start(&config_for(&[rep.url()], ""));
    let mut c = connect(gw.addr);
    let mut checked = 0;
    for (name, body) in &sse {
        for framing in FRAMINGS {
            rep.set(Reply::new(200, "text/event-stream; charset=utf-8", body, framing));
            let r = c.request(&post("/v1/chat/completions", STREAM_USAGE, ""));
            assert_eq!(r.status, 200, "{name} {framing:?}");
            assert_eq!(r.header("content-type"), Some("text/event-stream; charset=utf-8"), "{name}");
            assert!(
                r.body == *body,
                "{name} {framing:?}: body differs\n got: {}\nwant: {}",
                show(&r.body),
                show(body)
            );
            // The gateway injected include_usage: the usage-only event is cut, nothing else.
            let r = c.request(&post("/v1/chat/completions", STREAM_PLAIN, ""));
            let want = without_usage_only(body);
            assert!(
                r.body == want,
                "{name} {framing:?} (injected): body differs\n got: {}\nwant: {}",
                show(&r.body),
                show(&want)
            );
            checked += 1;
        }
    }
    for (name, body) in &json {
        let status = status_of(name);
        for framing in FRAMINGS {
            rep.set(Reply::new(status, "application/json", body, framing));
            let r = c.request(&post("/v1/chat/completions", &chat("m"), ""));
            assert_eq!(r.status, status, "{name} {framing:?}");
            assert_eq!(r.header("content-type"), Some("application/json"), "{name}");
            assert!(
                r.body == *body,
                "{name} {framing:?}: body differs\n got: {}\nwant: {}",
                show(&r.body),
                show(body)
            );
            checked += 1;
        }
    }
    // The backend saw the injected option exactly on the plain stream requests.
    let seen = rep.seen();
    let injected = seen.iter().filter(|s| show(&s.body).contains("\"include_usage\":true")).count();
    assert_eq!(injected, 2 * sse.len() * FRAMINGS.len());
    eprintln!("checked {checked} fixture/framing pairs");
}

#[test]
fn every_split_position_gives_identical_output() {
    let Some(dir) = common::replay::fixtures_dir() else { return };
    let body = std::fs::read(dir.join("vllm/chat_stream_usage.sse")).expect("fixture");
    let stripped = without_usage_only(&body);
    assert!(stripped.len() < body.len(), "the fixture has a usage-only event");
    let rep = Replay::start(Reply::new(200, "text/event-stream", &body, Framing::ChunkedPerEvent));
    let gw = Gateway::start(&config_for(&[rep.url()], ""));
    let mut c = connect(gw.addr);
    let t0 = Instant::now();
    for framing in [Framing::ChunkedPerEvent, Framing::Length] {
        let mut reply = Reply::new(200, "text/event-stream", &body, framing);
        let wire = reply.wire_body();
        for at in 1..wire.len() {
            reply.splits = vec![at];
            rep.set(reply.clone());
            let r = c.request(&post("/v1/chat/completions", STREAM_USAGE, ""));
            assert!(r.body == body, "{framing:?} split at {at}: got {}", show(&r.body));
            if framing == Framing::ChunkedPerEvent {
                // With the injected option the usage-only event is held and cut at every split.
                let r = c.request(&post("/v1/chat/completions", STREAM_PLAIN, ""));
                assert!(r.body == stripped, "{framing:?} split at {at} (injected): got {}", show(&r.body));
            }
        }
    }
    eprintln!("split positions checked in {:?}", t0.elapsed());
}

/// A blank line whose two newlines arrive in different chunks, with a read in between that holds
/// only the chunked framing (the first chunk's CRLF and the next one's size line): the relay feeds
/// the SSE scanner an empty payload there, which must not make it forget the first newline. Found
/// by the fuzzer (`fuzz/fuzz_targets/sse_split.rs`): the event ran on into the next one, and the
/// usage-only event the gateway injected reached a client that had not asked for it.
#[test]
fn a_read_of_only_chunk_framing_between_a_blank_lines_newlines() {
    let Some(dir) = common::replay::fixtures_dir() else { return };
    let body = std::fs::read(dir.join("vllm/chat_stream_usage.sse")).expect("fixture");
    let stripped = without_usage_only(&body);
    let rep = Replay::start(Reply::new(200, "text/event-stream", &body, Framing::ChunkedPerEvent));
    let gw = Gateway::start(&config_for(&[rep.url()], ""));
    let mut c = connect(gw.addr);
    let mut checked = 0;
    for n in 2..=64 {
        let mut reply = Reply::new(200, "text/event-stream", &body, Framing::ChunkedEvery(n));
        let (_, spans) = reply.wire_and_chunks();
        for pair in spans.windows(2) {
            let ((_, _, end), (next, start, _)) = (pair[0], pair[1]);
            if body[next - 1] != b'\n' || body[next] != b'\n' {
                continue;
            }
            // Reads: ... "\n" | "\r\n<size>\r\n" | "\n" ...
            reply.splits = vec![end, start];
            rep.set(reply.clone());
            let r = c.request(&post("/v1/chat/completions", STREAM_PLAIN, ""));
            assert!(r.body == stripped, "chunks of {n}, blank line at {next}: got {}", show(&r.body));
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} blank lines fell on a chunk boundary");
    eprintln!("{checked} blank lines split around a framing-only read");
}

#[test]
fn events_keep_the_backend_pacing() {
    let m = mock(Flavor::Vllm);
    let gw = Gateway::start(&config_for(&[m.url()], ""));
    let r = request(
        gw.addr,
        &post(
            "/v1/chat/completions",
            STREAM_USAGE,
            "x-mock-itl-ms: 60\r\nx-mock-tokens: 6\r\nx-mock-ttft-ms: 10\r\n",
        ),
    );
    assert_eq!(r.status, 200);
    // Times at which each content event arrived (one piece may hold several events).
    let mut times = Vec::new();
    for (t, data) in &r.pieces {
        for ev in split_events(data) {
            if show(ev).contains("\"content\":\"") && !show(ev).contains("\"content\":\"\"") {
                times.push(*t);
            }
        }
    }
    assert!(times.len() >= 6, "expected 6 token events, got {} in {}", times.len(), r.text());
    for w in times.windows(2) {
        assert!(w[1] - w[0] >= Duration::from_millis(30), "events bunched: arrival times {times:?}");
    }
    let end = r.pieces.last().unwrap().0;
    assert!(
        times[0] + Duration::from_millis(200) < end,
        "first event came only at the end: {times:?}, end {end:?}"
    );
}

/// Reads from `s` until `n` SSE `data:` lines have arrived (bounded by a read timeout).
fn read_events(s: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while show(&got).matches("data:").count() < n {
        let k = s.read(&mut tmp).expect("read stream");
        assert!(k > 0, "stream closed early: {}", show(&got));
        got.extend_from_slice(&tmp[..k]);
    }
    got
}

#[test]
fn client_disconnect_mid_stream_stops_the_backend() {
    let m = mock(Flavor::Vllm);
    let gw = Gateway::start(&config_for(&[m.url()], ""));
    // A second stream runs alongside and must complete untouched.
    let addr = gw.addr;
    let other = std::thread::spawn(move || {
        request(
            addr,
            &post("/v1/chat/completions", STREAM_PLAIN, "x-mock-itl-ms: 20\r\nx-mock-tokens: 40\r\n"),
        )
    });
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.write_all(&post("/v1/chat/completions", STREAM_PLAIN, "x-mock-itl-ms: 100\r\nx-mock-tokens: 100\r\n"))
        .unwrap();
    read_events(&mut s, 2);
    let left = Instant::now();
    drop(s);
    eventually(3, "the backend saw the stream aborted", || m.streams_aborted() == 1);
    assert!(left.elapsed() < Duration::from_millis(1500), "abort took {:?}", left.elapsed());
    let r = other.join().unwrap();
    assert_eq!(r.status, 200);
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{}", r.text());
    assert!(data.iter().filter(|d| d.contains("\"content\":\"")).count() >= 40, "{}", r.text());
    assert_eq!(m.streams_aborted(), 1);
}

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A stream through the gateway holds two descriptors (client and backend socket): the client
/// watch polls the client's own socket instead of a `dup` of it (issue 14: 10,000 streams must fit
/// the open-files limit). Streams that outlive the watch's arming delay still relay every event.
#[test]
fn a_slow_stream_holds_two_descriptors() {
    const N: usize = 20;
    let m = mock(Flavor::Vllm);
    let gw = Gateway::start(&config_for(&[m.url()], "[runtime]\nworkers = 1\npin_cores = false\n"));
    let pid = gw.child.as_ref().expect("gateway running").id();
    // One request first, so the worker's lazily made state (pools, buffers) exists.
    let r = request(gw.addr, &post("/v1/chat/completions", STREAM_PLAIN, ""));
    assert_eq!(r.status, 200);
    let idle = open_fds(pid);
    let mut streams: Vec<_> = (0..N)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
            let h = "x-mock-itl-ms: 300\r\nx-mock-tokens: 8\r\nx-mock-ttft-ms: 10\r\n";
            s.write_all(&post("/v1/chat/completions", STREAM_PLAIN, h)).unwrap();
            s
        })
        .collect();
    for s in &mut streams {
        read_events(s, 1);
    }
    // The watches are armed (2 ms) long before the second event (300 ms).
    std::thread::sleep(Duration::from_millis(100));
    let held = open_fds(pid).saturating_sub(idle);
    // Slack of 2 either way: the warm-up's pooled backend connection is reused by one stream, and
    // a health check connection may be open at either moment of counting.
    assert!((2 * N - 2..=2 * N + 2).contains(&held), "{N} streams hold {held} descriptors (idle: {idle})");
    for s in &mut streams {
        let mut got = Vec::new();
        let mut tmp = [0u8; 4096];
        while !show(&got).contains("data: [DONE]") {
            let k = s.read(&mut tmp).expect("read stream");
            assert!(k > 0, "stream closed before [DONE]: {}", show(&got));
            got.extend_from_slice(&tmp[..k]);
        }
        assert!(show(&got).matches("\"content\":\"").count() >= 8, "{}", show(&got));
    }
}

/// A backend response head larger than the relay buffer (but under the 32 KiB head limit) is
/// relayed whole; one over the limit is a 502, not a hang or a crash.
#[test]
fn large_backend_heads_are_relayed_up_to_the_limit() {
    let mut reply = Reply::new(
        200,
        "application/json",
        br#"{"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
        Framing::Length,
    );
    reply.headers.push(("X-Big".into(), "v".repeat(20 * 1024)));
    let backend = Replay::start(reply.clone());
    let gw = Gateway::start(&config_for(&[backend.url()], ""));
    let r = request(gw.addr, &post("/v1/chat/completions", r#"{"model":"m"}"#, ""));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-big").map(str::len), Some(20 * 1024));
    assert_eq!(r.body, reply.body);
    let mut too_big = reply;
    too_big.headers.push(("X-Bigger".into(), "v".repeat(40 * 1024)));
    backend.set(too_big);
    let r = request(gw.addr, &post("/v1/chat/completions", r#"{"model":"m"}"#, ""));
    assert_eq!(r.status, 502, "{}", r.text());
}

/// A stream whose last event never ends (no blank line) while the gateway holds it back as a
/// possible usage-only event still reaches the client whole when the body ends.
#[test]
fn an_unterminated_held_last_event_is_flushed_at_the_end() {
    let body = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\ndata: {\"id\":\"x\",\"model\":\"m\"";
    for framing in [Framing::Close, Framing::Length, Framing::ChunkedEvery(7)] {
        let backend = Replay::start(Reply::new(200, "text/event-stream", body, framing));
        let gw = Gateway::start(&config_for(&[backend.url()], ""));
        // No stream_options: the gateway injects include_usage and cuts usage-only events.
        let r = request(gw.addr, &post("/v1/chat/completions", r#"{"model":"m","stream":true}"#, ""));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, body, "{framing:?}: {}", r.text());
    }
}

/// A client that stops reading fills its socket: the relay's non-blocking send takes what fits and
/// the rest waits for the socket to drain (`Stream::write_rest`), under the body timeout, losing and
/// reordering nothing. A 8 MB stream (more than a socket send buffer grows to) to a client with a small receive buffer that reads nothing for
/// 300 ms, then everything.
#[test]
fn a_client_that_stops_reading_gets_every_byte_once_it_reads_again() {
    let mut body = Vec::new();
    for i in 0..60_000 {
        let ev = format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token {i:05} {}\"}}}}]}}\n\n",
            "x".repeat(120)
        );
        body.extend_from_slice(ev.as_bytes());
    }
    let rep = Replay::start(Reply::new(200, "text/event-stream", &body, Framing::ChunkedEvery(4096)));
    let gw = Gateway::start(&config_for(&[rep.url()], ""));
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&gw.addr.into()).unwrap();
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&post("/v1/chat/completions", STREAM_USAGE, "")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut got = Vec::new();
    let mut tmp = [0u8; 65536];
    loop {
        let k = s.read(&mut tmp).expect("read");
        if k == 0 {
            break;
        }
        got.extend_from_slice(&tmp[..k]);
        if got.ends_with(b"0\r\n\r\n") {
            break;
        }
    }
    let at = got.windows(4).position(|w| w == b"\r\n\r\n").expect("response head") + 4;
    assert!(show(&got[..at]).starts_with("HTTP/1.1 200"), "{}", show(&got[..at]));
    // Undo the client-side chunked framing.
    let mut rest = &got[at..];
    let mut plain = Vec::new();
    loop {
        let nl = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let n = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16).unwrap();
        rest = &rest[nl + 2..];
        if n == 0 {
            break;
        }
        plain.extend_from_slice(&rest[..n]);
        rest = &rest[n + 2..];
    }
    assert_eq!(plain.len(), body.len());
    assert!(plain == body, "the relayed body differs from the backend's");
}

/// A streaming response holds no client input buffer (issue 14: the exchange releases it once the
/// response head has come, and the connection takes another for its next request). Requests
/// pipelined while the stream runs, a chunked request body, a head larger than the buffer and a
/// body larger than it, each on the same keep-alive connection after a stream, are all served in
/// order and whole.
#[test]
fn a_connection_serves_on_after_a_stream_and_takes_requests_sent_mid_stream() {
    let m = mock(Flavor::Vllm);
    let gw = Gateway::start(&config_for(&[m.url()], "[runtime]\nworkers = 1\npin_cores = false\n"));
    let mut c = connect(gw.addr);
    let slow = "x-mock-itl-ms: 60\r\nx-mock-tokens: 8\r\nx-mock-ttft-ms: 10\r\nx-request-id: first\r\n";
    c.send(&post("/v1/chat/completions", STREAM_USAGE, slow));
    // The response head and the first events are out (the buffer released), the stream runs on
    // for about half a second: two more requests arrive meanwhile, in two writes.
    std::thread::sleep(Duration::from_millis(150));
    c.send(&post("/v1/chat/completions", &chat("m"), "x-request-id: second\r\n"));
    std::thread::sleep(Duration::from_millis(50));
    c.send(b"GET /health HTTP/1.1\r\nx-request-id: third\r\n\r\n");
    let r1 = c.read_response();
    assert_eq!(r1.status, 200, "{}", r1.text());
    assert_eq!(r1.header("x-request-id"), Some("first"));
    let data = r1.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{}", r1.text());
    assert!(data.iter().filter(|d| d.contains("\"content\":\"")).count() >= 8, "{}", r1.text());
    assert!(data.iter().any(|d| d.contains("\"completion_tokens\":8")), "{}", r1.text());
    let r2 = c.read_response();
    assert_eq!(r2.status, 200, "{}", r2.text());
    assert_eq!(r2.header("x-request-id"), Some("second"));
    assert_eq!(r2.json()["usage"]["completion_tokens"], 5, "{}", r2.text());
    let r3 = c.read_response();
    assert_eq!(r3.status, 200, "{}", r3.text());
    assert_eq!(r3.header("x-request-id"), Some("third"));
    assert!(!r3.closed);

    // A stream whose request body came chunked, then a head larger than a new connection's
    // buffer and a body larger than it, on the same connection.
    let mut chunked = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
transfer-encoding: chunked\r\nx-mock-itl-ms: 20\r\nx-mock-tokens: 3\r\n\r\n"
        .to_vec();
    for part in STREAM_PLAIN.as_bytes().chunks(20) {
        chunked.extend(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend(part);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    let r4 = c.request(&chunked);
    assert_eq!(r4.status, 200, "{}", r4.text());
    assert_eq!(r4.sse_data().last().map(String::as_str), Some("[DONE]"), "{}", r4.text());
    let big_head = format!("x-padding: {}\r\nx-request-id: fifth\r\n", "p".repeat(3000));
    let r5 = c.request(&post("/v1/chat/completions", STREAM_PLAIN, &big_head));
    assert_eq!(r5.status, 200, "{}", r5.text());
    assert_eq!(r5.header("x-request-id"), Some("fifth"));
    assert_eq!(r5.sse_data().last().map(String::as_str), Some("[DONE]"), "{}", r5.text());
    let long = format!(
        r#"{{"model":"m","stream":true,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(5000)
    );
    let r6 = c.request(&post("/v1/chat/completions", &long, "x-request-id: sixth\r\n"));
    assert_eq!(r6.status, 200, "{}", r6.text());
    assert_eq!(r6.header("x-request-id"), Some("sixth"));
    assert_eq!(r6.sse_data().last().map(String::as_str), Some("[DONE]"), "{}", r6.text());
    let seen = m.requests().into_iter().rfind(|r| r.path == "/v1/chat/completions").unwrap();
    assert!(seen.body.len() > 5000, "the whole body reached the backend: {} bytes", seen.body.len());
    // Then a non-stream request: the connection is still in step.
    let r7 = c.request(&post("/v1/chat/completions", &chat("m"), "x-request-id: seventh\r\n"));
    assert_eq!(r7.status, 200, "{}", r7.text());
    assert_eq!(r7.header("x-request-id"), Some("seventh"));
    assert!(!r7.closed);
}
