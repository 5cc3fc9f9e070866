//! Conformance of the simulator with the real backend captures in `../shared/fixtures/backends`: per
//! chunk kind, the same top-level keys and the same usage placement (skipped when the folder is absent).

mod mock_util;
#[path = "common/prereq.rs"]
mod prereq;

use llmproxy::mock::Flavor;
use mock_util::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/backends");

struct Case {
    flavor: Flavor,
    fixture: &'static str,
    path: &'static str,
    body: &'static str,
    /// Keys that differ between server versions and are left out of the comparison.
    ignore: &'static [&'static str],
    /// The capture was re-serialized by a gateway that drops `"usage":null`.
    null_usage_is_absent: bool,
    /// Compare the key set of the usage objects too (off where a client added fields).
    usage_keys: bool,
}

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi there"}],"stream":true}"#;
const CHAT_IU: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi there"}],"stream":true,"stream_options":{"include_usage":true}}"#;

fn cases() -> Vec<Case> {
    let c = |flavor, fixture, path, body| Case {
        flavor,
        fixture,
        path,
        body,
        ignore: &[],
        null_usage_is_absent: false,
        usage_keys: true,
    };
    vec![
        c(Flavor::Vllm, "vllm/chat_stream_usage.sse", "/v1/chat/completions", CHAT_IU),
        Case {
            ignore: &["prompt_token_ids"],
            ..c(
                Flavor::Vllm,
                "vllm/chat_stream_continuous_usage.sse",
                "/v1/chat/completions",
                r#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#,
            )
        },
        c(Flavor::Tgi, "tgi/chat_stream_usage.sse", "/v1/chat/completions", CHAT_IU),
        c(Flavor::Tgi, "tgi/chat_stream.sse", "/v1/chat/completions", CHAT),
        Case {
            usage_keys: false,
            ..c(
                Flavor::Tgi,
                "tgi/completions_stream.sse",
                "/v1/completions",
                r#"{"prompt":["a b","c","d e f","g"],"stream":true}"#,
            )
        },
        Case {
            null_usage_is_absent: true,
            ..c(
                Flavor::Sglang,
                "sglang/chat_stream_usage_via_nearai_gateway.sse",
                "/v1/chat/completions",
                CHAT_IU,
            )
        },
        c(Flavor::Llamacpp, "llamacpp/chat_stream_usage_b6097.sse", "/v1/chat/completions", CHAT),
        c(Flavor::Ollama, "ollama/chat_stream_usage_ABRIDGED.sse", "/v1/chat/completions", CHAT_IU),
        c(Flavor::Openai, "openai/chat_stream.sse", "/v1/chat/completions", CHAT),
        c(Flavor::Openai, "openai/chat_stream_usage.sse", "/v1/chat/completions", CHAT_IU),
        c(
            Flavor::Openai,
            "openai/completions_stream_usage.sse",
            "/v1/completions",
            r#"{"prompt":"def fib","stream":true,"stream_options":{"include_usage":true}}"#,
        ),
    ]
}

fn kind(i: usize, chunk: &Value) -> &'static str {
    let choices = chunk["choices"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    if choices.is_empty() {
        "usage_tail"
    } else if choices.iter().any(|c| c["finish_reason"].as_str().is_some_and(|f| !f.is_empty())) {
        "finish"
    } else if i == 0 {
        "first"
    } else {
        "content"
    }
}

type Shape = BTreeMap<&'static str, BTreeSet<String>>;

/// Per chunk kind, the distinct signatures `keys | usage placement [| usage keys]`.
fn shape(text: &str, case: &Case) -> Shape {
    let events = sse_events(text);
    assert_eq!(events.last().map(|e| e.1.as_str()), Some("[DONE]"), "{}: no [DONE]", case.fixture);
    let mut out = Shape::new();
    for (i, (_, data)) in events.iter().filter(|e| e.1 != "[DONE]").enumerate() {
        let v: Value = serde_json::from_str(data).unwrap_or_else(|e| panic!("{}: {e}: {data}", case.fixture));
        let obj = v.as_object().unwrap();
        let usage = match obj.get("usage") {
            None => "absent",
            Some(Value::Null) if case.null_usage_is_absent => "absent",
            Some(Value::Null) => "null",
            Some(_) => "obj",
        };
        let keys: Vec<&str> = obj
            .iter()
            .filter(|(k, _)| !case.ignore.contains(&k.as_str()))
            .filter(|(k, v)| !(k.as_str() == "usage" && usage == "absent" && v.is_null()))
            .map(|(k, _)| k.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut sig = format!("{} | usage {usage}", keys.join(","));
        if case.usage_keys {
            if let Some(u) = obj.get("usage").and_then(Value::as_object) {
                sig += &format!(
                    " | usage keys {}",
                    u.keys().cloned().collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>().join(",")
                );
            }
        }
        out.entry(kind(i, &v)).or_default().insert(sig);
    }
    out
}

#[test]
fn simulator_matches_captured_streams() {
    let dir = Path::new(FIXTURES);
    if !dir.is_dir() {
        prereq::missing(&format!("the fixtures at {FIXTURES}"));
        return;
    }
    let mut failures = Vec::new();
    for case in cases() {
        let Ok(text) = std::fs::read_to_string(dir.join(case.fixture)) else {
            prereq::missing(&format!("fixture {}", case.fixture));
            continue;
        };
        let want = shape(&text, &case);
        let b = fast(case.flavor, 5);
        let r = once(&b, "POST", case.path, &[], case.body);
        assert_eq!(r.status, 200);
        let mut got = shape(&r.text(), &case);
        // Short or abridged captures have no plain content chunks; compare the kinds they do have.
        if !want.contains_key("content") {
            got.remove("content");
        }
        if want != got {
            failures.push(format!(
                "{} ({}):\n  fixture   {want:?}\n  simulator {got:?}",
                case.fixture, case.flavor
            ));
        }
    }
    assert!(failures.is_empty(), "shape mismatches:\n{}", failures.join("\n"));
}

/// vLLM continuous usage: every chunk carries the running totals, the last two the same full totals.
#[test]
fn continuous_usage_runs_like_the_capture() {
    let path = Path::new(FIXTURES).join("vllm/chat_stream_continuous_usage.sse");
    let Ok(text) = std::fs::read_to_string(&path) else {
        prereq::missing(&format!("fixture {}", path.display()));
        return;
    };
    let comp = |t: &str| -> Vec<u64> {
        sse_events(t)
            .into_iter()
            .filter(|e| e.1 != "[DONE]")
            .map(|e| {
                serde_json::from_str::<Value>(&e.1).unwrap()["usage"]["completion_tokens"].as_u64().unwrap()
            })
            .collect()
    };
    // Both: start at 0, grow by one per token chunk, and the finish and `choices: []` chunks carry the
    // same full totals. (The capture counts the EOS token on the finish chunk; the simulator emits one
    // word per completion token, so its finish chunk repeats the last count.)
    let check = |v: &[u64], who: &str| {
        let n = v.len();
        assert_eq!(v[0], 0, "{who}: {v:?}");
        assert!(v.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1), "{who}: {v:?}");
        assert_eq!(v[n - 1], v[n - 2], "{who}: {v:?}");
        assert!(v[..n - 2].windows(2).all(|w| w[1] == w[0] + 1), "{who}: {v:?}");
    };
    let fixture = comp(&text);
    check(&fixture, "fixture");
    let b = fast(Flavor::Vllm, 7);
    let body = r#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}"#;
    let got = comp(&once(&b, "POST", "/v1/chat/completions", &[], body).text());
    check(&got, "simulator");
    assert_eq!(got.last(), Some(&7));
}
