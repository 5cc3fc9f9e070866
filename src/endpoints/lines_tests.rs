//! LineScanner tests: every split position of whole native streams and bodies gives the same
//! result as one piece; cuts before the final object give the estimate.

use super::*;

const OLLAMA_CHAT: &str = concat!(
    r#"{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant","content":"The"},"done":false}"#,
    "\n",
    r#"{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant","content":" sky"},"done":false}"#,
    "\n",
    r#"{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant","content":""},"done":false}"#,
    "\n",
    r#"{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant","content":" is\nblue \"done\":true"},"done":false}"#,
    "\n",
    r#"{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","message":{"role":"assistant","content":""},"done_reason":"stop","done":true,"total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}"#,
    "\n",
);

const LLAMACPP_STREAM: &str = concat!(
    "data: {\"index\":0,\"content\":\" Paris\",\"tokens\":[],\"stop\":false,\"id_slot\":-1,\"tokens_predicted\":1,\"tokens_evaluated\":5}\n\n",
    "data: {\"index\":0,\"content\":\".\",\"tokens\":[],\"stop\":false,\"id_slot\":-1,\"tokens_predicted\":2,\"tokens_evaluated\":5}\n\n",
    "data: {\"content\":\"\",\"id_slot\":0,\"index\":0,\"model\":\"gpt-3.5-turbo\",\"prompt\":\"<s> Capital\",\"stop\":true,\"stop_type\":\"limit\",\"timings\":{\"predicted_n\":2,\"prompt_n\":5},\"tokens_cached\":7,\"tokens_evaluated\":5,\"tokens_predicted\":2,\"truncated\":false}\n\n",
);

const SGLANG_STREAM: &str = concat!(
    "data: {\"text\":\" Paris\",\"output_ids\":[12095],\"meta_info\":{\"id\":\"a1\",\"finish_reason\":null,\"prompt_tokens\":7,\"completion_tokens\":1}}\n\n",
    "data: {\"text\":\" Paris is\",\"output_ids\":[12095,374],\"meta_info\":{\"id\":\"a1\",\"finish_reason\":{\"type\":\"length\",\"length\":2},\"prompt_tokens\":7,\"completion_tokens\":2}}\n\n",
    "data: [DONE]\n\n",
);

fn run(shape: Shape, stream: bool, pieces: &[&[u8]]) -> LineScanner {
    let mut s = LineScanner::new(shape, stream);
    for p in pieces {
        s.feed(p);
    }
    s.finish();
    s
}

fn summary(s: &LineScanner) -> (Option<Usage>, u64, u64, bool) {
    (s.usage(), s.content_events(), s.objects(), s.error_seen())
}

/// Every 2-piece and many 3-piece splits give what one piece gives.
fn all_splits_agree(shape: Shape, stream: bool, body: &[u8]) -> (Option<Usage>, u64, u64, bool) {
    let want = summary(&run(shape, stream, &[body]));
    for a in 0..=body.len() {
        let got = summary(&run(shape, stream, &[&body[..a], &body[a..]]));
        assert_eq!(got, want, "split at {a}");
        for b in [a + 1, a + 7, a + 40] {
            let b = b.min(body.len());
            let got = summary(&run(shape, stream, &[&body[..a], &body[a..b], &body[b..]]));
            assert_eq!(got, want, "split at {a},{b}");
        }
    }
    // Byte by byte.
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(summary(&run(shape, stream, &bytes)), want, "byte by byte");
    want
}

#[allow(clippy::field_reassign_with_default)] // `Usage` may gain fields; they stay 0.
fn u(p: u64, c: u64) -> Option<Usage> {
    let mut x = Usage::default();
    x.prompt_tokens = p;
    x.completion_tokens = c;
    x.total_tokens = p + c;
    Some(x)
}

#[test]
fn ollama_ndjson_every_split() {
    let got = all_splits_agree(Shape::Ollama, true, OLLAMA_CHAT.as_bytes());
    assert_eq!(got, (u(26, 282), 3, 5, false));
}

#[test]
fn ollama_json_body_every_split() {
    // `stream: false`: one object; a newline inside (none in Go's output, but allowed) is harmless.
    let body = OLLAMA_CHAT.lines().last().unwrap();
    assert_eq!(all_splits_agree(Shape::Ollama, false, body.as_bytes()), (u(26, 282), 0, 1, false));
    let embed = br#"{"model":"all-minilm","embeddings":[[0.010071029,-0.0017594862,0.028599052]],"total_duration":14143917,"load_duration":1019500,"prompt_eval_count":8}"#;
    assert_eq!(all_splits_agree(Shape::Ollama, false, embed), (u(8, 0), 0, 1, false));
}

#[test]
fn llamacpp_sse_every_split() {
    assert_eq!(all_splits_agree(Shape::Llamacpp, true, LLAMACPP_STREAM.as_bytes()), (u(5, 2), 2, 3, false));
    let crlf = LLAMACPP_STREAM.replace('\n', "\r\n");
    assert_eq!(all_splits_agree(Shape::Llamacpp, true, crlf.as_bytes()), (u(5, 2), 2, 3, false));
}

#[test]
fn sglang_sse_every_split() {
    assert_eq!(all_splits_agree(Shape::Sglang, true, SGLANG_STREAM.as_bytes()), (u(7, 2), 1, 2, false));
}

#[test]
fn cut_before_the_final_object_is_estimated_from_content_lines() {
    let body = OLLAMA_CHAT.as_bytes();
    let last_nl = body[..body.len() - 1].iter().rposition(|&b| b == b'\n').unwrap();
    for cut in 0..=last_nl + 1 {
        let s = run(Shape::Ollama, true, &[&body[..cut]]);
        assert_eq!(s.usage(), None, "cut at {cut}");
        assert!(!s.final_seen());
        let complete_lines = body[..cut].iter().filter(|&&b| b == b'\n').count();
        // Lines 1, 2 and 4 carry content; an unterminated line is inspected by finish() too.
        let want = match (complete_lines, cut > 0 && body[cut - 1] != b'\n') {
            (0, false) => 0,
            _ => s.content_events(),
        };
        assert_eq!(s.content_events(), want);
        assert!(s.estimate().completion_tokens <= 3);
    }
    let s = run(Shape::Ollama, true, &[&body[..last_nl + 1]]);
    assert_eq!(s.estimate(), u(0, 3).unwrap());
}

/// A stream cut at every byte (no `finish()`: the relay calls it only for a whole body), fed in
/// every 2-piece split, keeps the cumulative counters of the last complete ordinary object of a
/// llama.cpp or SGLang native stream, and nothing before the first; Ollama's lines carry none.
#[test]
fn cut_native_streams_keep_the_last_cumulative_counters() {
    for (shape, body, counters) in [
        (Shape::Llamacpp, LLAMACPP_STREAM, &[(5, 1), (5, 2)][..]),
        (Shape::Sglang, SGLANG_STREAM, &[(7, 1)][..]),
    ] {
        let body = body.as_bytes();
        // An object is complete once its line's `\n` arrived: the first byte of each `\n\n`.
        let ends: Vec<usize> =
            body.windows(2).enumerate().filter(|(_, w)| *w == b"\n\n").map(|(i, _)| i + 1).collect();
        for cut in 0..ends[counters.len()] {
            let want = (0..counters.len())
                .rev()
                .find(|&k| cut >= ends[k])
                .and_then(|k| u(counters[k].0, counters[k].1));
            for a in 0..=cut {
                let mut s = LineScanner::new(shape, true);
                s.feed(&body[..a]);
                s.feed(&body[a..cut]);
                assert_eq!(s.partial(), want, "{shape:?} cut at {cut}, split at {a}");
                assert_eq!(s.usage(), None, "{shape:?} cut at {cut}");
            }
        }
    }
    let mut s = LineScanner::new(Shape::Ollama, true);
    s.feed(&OLLAMA_CHAT.as_bytes()[..300]);
    assert_eq!(s.partial(), None);
    assert_eq!(s.content_events(), 2);
}

#[test]
fn errors_and_overlong_lines() {
    let s = run(Shape::Ollama, true, &[b"{\"error\":\"model \\\"x\\\" not found\"}\n"]);
    assert!(s.error_seen());
    assert_eq!(s.usage(), None);
    // A final object far longer than LINE_CAP (a huge `context`) still gives its counters.
    let mut big = String::from(r#"{"model":"m","created_at":"x","response":"","done":true,"context":["#);
    while big.len() < 3 * LINE_CAP {
        big.push_str("123456,");
    }
    big.push_str(r#"1],"prompt_eval_count":11,"eval_count":22}"#);
    for stream in [true, false] {
        let pieces: Vec<&[u8]> = big.as_bytes().chunks(5000).collect();
        let s = run(Shape::Ollama, stream, &pieces);
        assert_eq!(s.usage(), u(11, 22), "stream {stream}");
    }
}

#[test]
fn audio_bodies() {
    let s = run(Shape::Audio, false, &[br#"{"text":"Hello","usage":{"type":"duration","seconds":7}}"#]);
    assert_eq!(s.audio_seconds(), Some(7.0));
    assert_eq!(s.usage(), u(0, 0));
    let pretty = b"{\n  \"text\": \"Hi\",\n  \"usage\": {\n    \"type\": \"tokens\",\n    \"input_tokens\": 12,\n    \"output_tokens\": 3,\n    \"total_tokens\": 15\n  }\n}\n";
    assert_eq!(all_splits_agree(Shape::Audio, false, pretty), (u(12, 3), 0, 1, false));
    let s = run(Shape::Audio, false, &[b"Hello there.\n"]);
    assert_eq!(s.usage(), None);
}
