//! Unit tests of SseScanner: real backend transcripts split at every byte position, generated
//! streams with CRLF, comments, cumulative usage and huge events, and usage-only event cutting.

use super::*;
use crate::usage::Usage;
use std::path::PathBuf;

/// A missing fixtures folder skips on a developer's machine and fails under CI (`CI=true`).
fn fixtures_missing(dir: &std::path::Path) {
    let ci = std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    assert!(!ci, "fixtures folder {} missing under CI", dir.display());
    eprintln!("fixtures folder {} missing: skipping", dir.display());
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/backends")
}

/// Feeds `input` in the given pieces; returns (what the client got, usage).
fn run(input: &[u8], cuts: &[usize], strip: bool) -> (Vec<u8>, Option<Usage>) {
    let (out, s) = run_cut(input, cuts, Cutting { usage_only: strip, ..Cutting::default() });
    (out, s.usage())
}

/// The events of a stream separated by blank lines (LF or CRLF).
fn events(input: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < input.len() {
        let end = if input[i..].starts_with(b"\n\n") {
            Some(i + 2)
        } else if input[i..].starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else {
            None
        };
        if let Some(e) = end {
            out.push(input[start..e].to_vec());
            start = e;
            i = e;
        } else {
            i += 1;
        }
    }
    if start < input.len() {
        out.push(input[start..].to_vec());
    }
    out
}

fn without_usage_only_events(input: &[u8]) -> Vec<u8> {
    events(input)
        .into_iter()
        .filter(|e| {
            let s = String::from_utf8_lossy(e);
            !(s.contains("\"choices\":[]") && s.contains("\"usage\":{"))
        })
        .flatten()
        .collect()
}

fn check_every_split(input: &[u8], want: Option<Usage>, name: &str) {
    let stripped = without_usage_only_events(input);
    for k in 0..=input.len() {
        let (out, usage) = run(input, &[k], false);
        assert_eq!(usage, want, "{name}: usage with split at {k}");
        assert_eq!(out, input, "{name}: passthrough output with split at {k}");
        let (out, usage) = run(input, &[k], true);
        assert_eq!(usage, want, "{name}: usage (strip) with split at {k}");
        assert_eq!(out, stripped, "{name}: stripped output with split at {k}");
        // A read that brought only chunked framing feeds nothing between the two halves.
        let (out, usage) = run(input, &[k, k], true);
        assert_eq!(usage, want, "{name}: usage (strip) with an empty read at {k}");
        assert_eq!(out, stripped, "{name}: stripped output with an empty read at {k}");
    }
    // Byte by byte, and in three pieces around every position.
    let all: Vec<usize> = (1..input.len()).collect();
    assert_eq!(run(input, &all, true), (stripped.clone(), want), "{name}: byte by byte");
    for k in (0..input.len()).step_by(7) {
        let cuts = [k, (k + 3).min(input.len()), (k + 50).min(input.len())];
        assert_eq!(run(input, &cuts, true), (stripped.clone(), want), "{name}: three pieces at {k}");
    }
}

fn u(p: u64, c: u64, t: u64) -> Option<Usage> {
    Some(Usage { prompt_tokens: p, completion_tokens: c, total_tokens: t, ..Default::default() })
}

/// Usage each fixture stream reports, read off the files by hand.
type Expected = Option<(u64, u64, u64)>;

const FIXTURE_STREAMS: &[(&str, Expected)] = &[
    ("openai/chat_stream.sse", None),
    ("openai/chat_stream_usage.sse", Some((12, 100, 112))),
    ("openai/completions_stream_usage.sse", Some((31, 25, 56))),
    ("vllm/chat_stream_usage.sse", Some((13, 3, 16))),
    ("vllm/chat_stream_continuous_usage.sse", Some((46, 26, 72))),
    ("tgi/chat_stream.sse", None),
    ("tgi/chat_stream_usage.sse", Some((39, 3, 42))),
    ("tgi/chat_stream_usage_openai_client.sse", Some((39, 3, 42))),
    ("tgi/completions_stream.sse", Some((22, 40, 62))),
    ("sglang/chat_stream_usage_via_nearai_gateway.sse", Some((18, 4, 22))),
    ("llamacpp/chat_stream_usage_b6097.sse", Some((82, 43, 125))),
    ("llamacpp/chat_stream_usage_tail_b6497_PARTIAL.sse", Some((75, 31, 106))),
    ("ollama/chat_stream_usage_ABRIDGED.sse", Some((17, 40, 57))),
];

#[test]
fn fixture_streams_at_every_split() {
    let dir = fixtures_dir();
    if !dir.exists() {
        fixtures_missing(&dir);
        return;
    }
    for (name, _) in FIXTURE_STREAMS {
        let input = std::fs::read(dir.join(name)).unwrap();
        let (_, whole) = run(&input, &[], false);
        check_every_split(&input, whole, name);
    }
}

#[test]
fn fixture_streams_report_the_right_usage() {
    let dir = fixtures_dir();
    if !dir.exists() {
        fixtures_missing(&dir);
        return;
    }
    for (name, want) in FIXTURE_STREAMS {
        let input = std::fs::read(dir.join(name)).unwrap();
        let (_, got) = run(&input, &[], false);
        match want {
            None => assert_eq!(got, None, "{name}"),
            Some((p, c, t)) => {
                let got = got.map(|g| (g.prompt_tokens, g.completion_tokens, g.total_tokens));
                assert_eq!(got, Some((*p, *c, *t)), "{name}")
            }
        }
    }
}

#[test]
fn cumulative_usage_is_never_summed() {
    let mut s = String::new();
    for i in 1..=5 {
        s += &format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"x\"}}}}],\"usage\":{{\"prompt_tokens\":7,\"completion_tokens\":{i},\"total_tokens\":{}}}}}\n\n", 7 + i);
    }
    s += "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":5,\"total_tokens\":12}}\n\ndata: [DONE]\n\n";
    check_every_split(s.as_bytes(), u(7, 5, 12), "cumulative");
}

#[test]
fn crlf_comments_and_multiline_data() {
    let s = b": keep-alive\r\n\r\nevent: message\r\ndata: {\"choices\":[{\"index\":0,\r\ndata: \"delta\":{}}]}\r\n\r\n:\r\n\r\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}\r\n\r\ndata: [DONE]\r\n\r\n";
    check_every_split(s, u(1, 2, 3), "crlf");
}

/// A usage-only event whose first line is a comment is cut whole at every split, as it is when
/// it arrives in one read (found by the fuzzer: a split inside the comment used to forward it).
#[test]
fn a_usage_only_event_opening_with_a_comment_is_cut_at_every_split() {
    let s = b": keep-alive\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n\n: note\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\ndata: [DONE]\n\n";
    check_every_split(s, u(3, 1, 4), "comment first");
}

/// Usage, content and finish are read from data lines only, as a client reads the event: key-like
/// text on a comment, `event:` or `id:` line counts for nothing, at every split.
#[test]
fn keys_on_lines_other_than_data_are_not_read() {
    let s = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}]}\n: {\"usage\":{\"prompt_tokens\":50,\"completion_tokens\":50,\"total_tokens\":100}}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n: {\"usage\":{\"prompt_tokens\":99,\"completion_tokens\":99,\"total_tokens\":198}}\n\nevent: {\"usage\":{\"prompt_tokens\":98,\"completion_tokens\":1,\"total_tokens\":99}}\ndata: {}\n\nid: \"usage\":{\"prompt_tokens\":97}\r\ndata: {}\r\n\r\ndata: [DONE]\n\n";
    check_every_split(s, u(3, 1, 4), "keys on other lines");
    let s = b": {\"choices\":[{\"delta\":{\"content\":\"x\"},\"finish_reason\":\"stop\"}]}\nevent: \"text\":\"y\"\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"}}]}\n\n";
    let (_, sc) = run_cut(s, &[], Cutting::default());
    assert_eq!((sc.content_events(), sc.finished(), sc.usage()), (0, false, None));
}

#[test]
fn anthropic_usage_is_split_across_events() {
    let s = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    check_every_split(s, u(25, 15, 40), "anthropic");
}

#[test]
fn responses_api_completed_event() {
    let s = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"usage\":null}}\n\nevent: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"status\":\"completed\",\"usage\":{\"input_tokens\":8,\"output_tokens\":2,\"total_tokens\":10}}}\n\n";
    check_every_split(s, u(8, 2, 10), "responses");
}

#[test]
fn multi_prompt_completions_add_up_per_choice() {
    let mut s = String::new();
    for idx in 0..3 {
        s += &format!("data: {{\"choices\":[{{\"index\":{idx},\"text\":\"a\",\"finish_reason\":\"\"}}],\"usage\":null}}\n\n");
        s += &format!("data: {{\"choices\":[{{\"index\":{idx},\"text\":\"b\",\"finish_reason\":\"length\"}}],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":2,\"total_tokens\":{t}}}}}\n\n", p = idx + 1, t = idx + 3);
    }
    s += "data: [DONE]\n\n";
    check_every_split(s.as_bytes(), u(6, 6, 12), "tgi multi-prompt");
}

#[test]
fn huge_events_pass_through_and_usage_after_them_is_found() {
    let big = "x".repeat(MAX_PARTIAL_EVENT + 100);
    let s = format!("data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{big}\"}}}}]}}\n\ndata: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}}}\n\ndata: [DONE]\n\n");
    let input = s.as_bytes();
    for k in [0, 10, 5000, MAX_PARTIAL_EVENT, input.len() - 20] {
        let (out, usage) = run(input, &[k, k + 1], true);
        assert_eq!(usage, u(3, 4, 7));
        assert_eq!(out, without_usage_only_events(input), "split {k}");
    }
}

#[test]
fn a_partial_usage_only_event_is_held_until_complete() {
    let ev = b"data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}\n\n";
    let mut s = SseScanner::new(true);
    let mut a = ev[..20].to_vec();
    let f = s.feed(&mut a);
    assert_eq!(f, Feed { release: false, forward: 0 }, "held while it may be usage-only");
    let mut b = ev[20..].to_vec();
    let f = s.feed(&mut b);
    assert_eq!(f, Feed { release: false, forward: 0 }, "cut when complete");
    assert_eq!(s.stripped(), 1);
}

#[test]
fn a_partial_content_event_is_forwarded_at_once() {
    let mut s = SseScanner::new(true);
    let mut a = b"data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"He".to_vec();
    let f = s.feed(&mut a);
    assert_eq!(f.forward, a.len(), "content bytes go out before the event ends");
    let mut b = b"llo\"}}]}\n\n".to_vec();
    assert_eq!(s.feed(&mut b).forward, b.len());
}

/// Feeds `input` in pieces with the given cutting; returns what the client got and the scanner.
fn run_cut(input: &[u8], cuts: &[usize], cut: Cutting) -> (Vec<u8>, SseScanner) {
    let mut s = SseScanner::with(cut);
    let mut out = Vec::new();
    let mut prev = 0;
    for &c in cuts.iter().chain(std::iter::once(&input.len())) {
        let mut piece = input[prev..c].to_vec();
        let f = s.feed(&mut piece);
        if f.release {
            out.extend_from_slice(s.released());
        }
        out.extend_from_slice(&piece[..f.forward]);
        prev = c;
    }
    out.extend_from_slice(s.finish());
    (out, s)
}

/// The reference: every event with choices loses its `,"usage":{...}` member; usage-only events
/// go when `usage_only`.
fn without_usage_members(input: &[u8], usage_only: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events(input) {
        let s = String::from_utf8_lossy(&e).into_owned();
        if s.contains("\"choices\":[]") && s.contains("\"usage\":{") {
            if !usage_only {
                out.extend_from_slice(&e);
            }
            continue;
        }
        match s.find(",\"usage\":{") {
            Some(i) if s.contains("\"choices\":[{") => {
                let v = i + ",\"usage\":".len();
                let n = crate::usage::object_len(&e[v..]).unwrap();
                out.extend_from_slice(&e[..i]);
                out.extend_from_slice(&e[v + n..]);
            }
            _ => out.extend_from_slice(&e),
        }
    }
    out
}

fn check_cutting_every_split(input: &[u8], name: &str) {
    let cut = Cutting { usage_only: true, usage_member: true, continuous: true };
    let want_out = without_usage_members(input, true);
    assert!(want_out.len() < input.len(), "{name}: nothing to cut");
    let (_, whole) = run_cut(input, &[], cut);
    let want = whole.usage();
    assert!(want.is_some());
    for k in 0..=input.len() {
        let (out, s) = run_cut(input, &[k], cut);
        assert_eq!(s.usage(), want, "{name}: usage with split at {k}");
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&want_out), "{name}: split at {k}");
        assert!(!String::from_utf8_lossy(&out).contains("\"usage\":{"), "{name}: split at {k}");
        let (out, s) = run_cut(input, &[k, k], cut);
        assert_eq!((out, s.usage()), (want_out.clone(), want), "{name}: an empty read at {k}");
    }
    let all: Vec<usize> = (1..input.len()).collect();
    let (out, s) = run_cut(input, &all, cut);
    assert_eq!((out, s.usage()), (want_out.clone(), want), "{name}: byte by byte");
    for k in (0..input.len()).step_by(5) {
        let cuts = [k, (k + 3).min(input.len()), (k + 90).min(input.len())];
        let (out, s) = run_cut(input, &cuts, cut);
        assert_eq!((out, s.usage()), (want_out.clone(), want), "{name}: three pieces at {k}");
    }
    // A client that asked for continuous usage itself gets every byte.
    let (out, _) = run_cut(input, &[input.len() / 2], Cutting { continuous: true, ..Cutting::default() });
    assert_eq!(out, input, "{name}: passthrough");
}

#[test]
fn vllm_continuous_usage_members_cut_at_every_split() {
    let dir = fixtures_dir();
    if !dir.exists() {
        eprintln!("fixtures folder {} missing: skipping", dir.display());
        return;
    }
    let input = std::fs::read(dir.join("vllm/chat_stream_continuous_usage.sse")).unwrap();
    check_cutting_every_split(&input, "vllm continuous");
}

/// Reads a raw SSE body from the simulated backend (close-framed, so the body is the stream).
fn simulator_stream(flavor: crate::mock::Flavor, body: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut opts = crate::mock::MockOptions::new(flavor);
    opts.ttft = std::time::Duration::ZERO;
    opts.itl = std::time::Duration::ZERO;
    opts.tokens = 6;
    let m = crate::mock::MockBackend::start(l, opts);
    let mut c = std::net::TcpStream::connect(m.addr()).unwrap();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-mock-framing: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).unwrap();
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    all[at..].to_vec()
}

#[test]
fn simulator_continuous_usage_members_cut_at_every_split() {
    for flavor in [crate::mock::Flavor::Vllm, crate::mock::Flavor::Sglang] {
        for n in [1, 2] {
            let body = format!(
                r#"{{"model":"m","n":{n},"stream":true,"messages":[{{"role":"user","content":"a b c"}}],"stream_options":{{"include_usage":true,"continuous_usage_stats":true}}}}"#
            );
            let input = simulator_stream(flavor, &body);
            check_cutting_every_split(&input, &format!("{flavor} n={n}"));
            let (_, s) = run_cut(&input, &[], Cutting { continuous: true, ..Cutting::default() });
            let u = s.usage().unwrap();
            assert_eq!((u.prompt_tokens, u.completion_tokens), (3, 6 * n), "{flavor} n={n}");
        }
    }
}

#[test]
fn cut_streams_know_content_finish_and_errors() {
    let s = "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"b\"}}]}\n\n";
    let (_, sc) = run_cut(s.as_bytes(), &[], Cutting::default());
    assert_eq!((sc.content_events(), sc.finished(), sc.error_seen()), (2, false, false));
    let s = format!("{s}data: {{\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\ndata: {{\"error\":{{\"message\":\"boom\"}}}}\n\ndata: [DONE]\n\n");
    let (_, sc) = run_cut(s.as_bytes(), &[], Cutting::default());
    assert_eq!((sc.content_events(), sc.finished(), sc.error_seen()), (2, true, true));
}
