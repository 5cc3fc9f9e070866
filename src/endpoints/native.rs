//! Usage extractors for the native response shapes of CONTRACT 12, each a pure function over one
//! complete JSON object (an NDJSON line, a native SSE event's data, or a whole small body). Ordinary
//! stream objects are classified by a cheap byte check (a suffix or one key lookup) and never
//! parsed; only the final object's counters are read. Runs on core threads.

use super::routes::Shape;
use crate::usage::object_len;
use memchr::memmem;

/// What one object says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Seen {
    /// A stream object before the final one; `content` when it carries generated text.
    Ordinary { content: bool },
    /// A stream object before the final one that carries the backend's cumulative counters so far
    /// (llama.cpp `/completion` partials, SGLang `/generate` chunks): what a cut stream is billed.
    Running { content: bool, prompt: u64, completion: u64 },
    /// The object that ends the response, with the counters it reported (absent ones None).
    Final { prompt: Option<u64>, completion: Option<u64>, audio_seconds: Option<f64> },
    /// An error object (`{"error": ...}`).
    Error,
    /// Nothing the gateway reads (an unrelated object, or not JSON).
    Other,
}

/// Classifies one complete JSON text of a response of `shape`.
pub fn inspect(shape: Shape, obj: &[u8]) -> Seen {
    let obj = obj.trim_ascii();
    if obj.is_empty() {
        return Seen::Other;
    }
    if is_error(obj) {
        return Seen::Error;
    }
    match shape {
        Shape::Ollama => ollama(obj),
        Shape::Llamacpp => llamacpp(obj),
        Shape::Sglang => sglang(obj),
        Shape::Audio => audio(obj),
        Shape::Rerank => rerank(obj),
        _ => Seen::Other,
    }
}

/// `{"error": ...}` (Ollama, llama.cpp, vLLM) or `{"object":"error", ...}` (SGLang, older vLLM).
fn is_error(obj: &[u8]) -> bool {
    let body = &obj[1.min(obj.len())..];
    let body = body.trim_ascii_start();
    body.starts_with(b"\"error\"")
        || (body.starts_with(b"\"object\"") && value_is(obj, b"\"object\"", b"\"error\""))
}

/// Ollama `/api/chat`, `/api/generate` lines end with `"done":false}` until the final object, which
/// has `"done":true` and the counters; `/api/embed` has no `done` at all, only `prompt_eval_count`.
fn ollama(obj: &[u8]) -> Seen {
    if obj.ends_with(b"\"done\":false}") || value_is(obj, b"\"done\"", b"false") {
        let content = non_empty_string(obj, b"\"content\"")
            || non_empty_string(obj, b"\"response\"")
            || non_empty_string(obj, b"\"thinking\"")
            || find_value(obj, b"\"tool_calls\"").is_some_and(|v| obj.get(v) == Some(&b'['));
        return Seen::Ordinary { content };
    }
    let prompt = int_value(obj, b"\"prompt_eval_count\"");
    let completion = int_value(obj, b"\"eval_count\"");
    if value_is(obj, b"\"done\"", b"true") || prompt.is_some() || completion.is_some() {
        // Ollama leaves out zero counters (`omitempty`): a final object without them reports 0.
        Seen::Final { prompt: prompt.or(Some(0)), completion: completion.or(Some(0)), audio_seconds: None }
    } else {
        Seen::Other
    }
}

/// llama.cpp `/completion`: every event has `"stop"`; the one with `true` carries the totals.
/// Partials of llama-server builds since the end of 2024 (`server_task_result_cmpl_partial`) carry
/// the cumulative `tokens_predicted` (tokens decoded so far) and `tokens_evaluated` (the prompt);
/// older builds send only `content` and `stop`.
fn llamacpp(obj: &[u8]) -> Seen {
    let prompt = int_value(obj, b"\"tokens_evaluated\"");
    let completion = int_value(obj, b"\"tokens_predicted\"");
    if value_is(obj, b"\"stop\"", b"true") {
        return Seen::Final { prompt, completion, audio_seconds: None };
    }
    running(non_empty_string(obj, b"\"content\""), prompt, completion)
}

/// An ordinary object, with its cumulative counters when it carries any.
fn running(content: bool, prompt: Option<u64>, completion: Option<u64>) -> Seen {
    match (prompt, completion) {
        (None, None) => Seen::Ordinary { content },
        (p, c) => Seen::Running { content, prompt: p.unwrap_or(0), completion: c.unwrap_or(0) },
    }
}

/// SGLang `/generate`: `meta_info.finish_reason` is null until the last event; every streamed
/// chunk's `meta_info` carries the cumulative `prompt_tokens`/`completion_tokens`; a batch body is
/// a JSON array of such objects, whose counters add up.
fn sglang(obj: &[u8]) -> Seen {
    if obj.first() == Some(&b'[') {
        let prompt = sum_ints(obj, b"\"prompt_tokens\"");
        let completion = sum_ints(obj, b"\"completion_tokens\"");
        if prompt.is_none() && completion.is_none() {
            return Seen::Other;
        }
        return Seen::Final { prompt, completion, audio_seconds: None };
    }
    let prompt = int_value(obj, b"\"prompt_tokens\"");
    let completion = int_value(obj, b"\"completion_tokens\"");
    if value_is(obj, b"\"finish_reason\"", b"null") {
        return running(non_empty_string(obj, b"\"text\""), prompt, completion);
    }
    if prompt.is_none() && completion.is_none() {
        return Seen::Ordinary { content: non_empty_string(obj, b"\"text\"") };
    }
    Seen::Final { prompt, completion, audio_seconds: None }
}

/// Rerank bodies: vLLM/Jina/Cohere-style `usage.total_tokens` (all of it input, so it is the
/// prompt), or SGLang's array of results, each with `meta_info.prompt_tokens`, which add up. TEI
/// answers a bare array of scores without any count: no usage.
fn rerank(obj: &[u8]) -> Seen {
    if obj.first() == Some(&b'[') {
        return match sum_ints(obj, b"\"prompt_tokens\"") {
            Some(p) => Seen::Final { prompt: Some(p), completion: Some(0), audio_seconds: None },
            None => Seen::Other,
        };
    }
    let Some(v) = find_value(obj, b"\"usage\"") else { return Seen::Other };
    if obj.get(v) != Some(&b'{') {
        return Seen::Other;
    }
    let Some(n) = object_len(&obj[v..]) else { return Seen::Other };
    let u = &obj[v..v + n];
    let total = int_value(u, b"\"total_tokens\"");
    let prompt = int_value(u, b"\"prompt_tokens\"").or(total);
    if prompt.is_none() {
        return Seen::Other;
    }
    let completion = int_value(u, b"\"completion_tokens\"").or(Some(0));
    Seen::Final { prompt, completion, audio_seconds: None }
}

/// Audio JSON bodies: `usage` with `input_tokens`/`output_tokens` (token-billed models), or
/// `{"type":"duration","seconds":N}` (duration-billed ones).
fn audio(obj: &[u8]) -> Seen {
    let Some(v) = find_value(obj, b"\"usage\"") else { return Seen::Other };
    if obj.get(v) != Some(&b'{') {
        return Seen::Other;
    }
    let Some(n) = object_len(&obj[v..]) else { return Seen::Other };
    let u = &obj[v..v + n];
    let prompt = int_value(u, b"\"input_tokens\"").or_else(|| int_value(u, b"\"prompt_tokens\""));
    let completion = int_value(u, b"\"output_tokens\"").or_else(|| int_value(u, b"\"completion_tokens\""));
    let audio_seconds = num_value(u, b"\"seconds\"");
    if prompt.is_none() && completion.is_none() && audio_seconds.is_none() {
        return Seen::Other;
    }
    Seen::Final { prompt, completion, audio_seconds }
}

/// Index of the value of the first `key` (quoted, as a JSON key: followed by `:`) in `obj`.
/// A string's contents cannot hold an unescaped quote, so a match is always a real key.
pub fn find_value(obj: &[u8], key: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(i) = memmem::find(&obj[at..], key) {
        let after = skip_ws(obj, at + i + key.len());
        if obj.get(after) == Some(&b':') {
            return Some(skip_ws(obj, after + 1));
        }
        at += i + 1;
    }
    None
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

/// Whether the value of `key` starts with the literal `lit`.
fn value_is(obj: &[u8], key: &[u8], lit: &[u8]) -> bool {
    find_value(obj, key).is_some_and(|v| obj[v..].starts_with(lit))
}

/// Whether the value of `key` is a string with at least one character.
fn non_empty_string(obj: &[u8], key: &[u8]) -> bool {
    find_value(obj, key)
        .is_some_and(|v| obj.get(v) == Some(&b'"') && obj.get(v + 1).is_some_and(|&c| c != b'"'))
}

/// The unsigned integer value of `key` (None when absent, negative, fractional or not a number).
pub fn int_value(obj: &[u8], key: &[u8]) -> Option<u64> {
    let v = find_value(obj, key)?;
    parse_uint(&obj[v..])
}

fn parse_uint(b: &[u8]) -> Option<u64> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 19 || matches!(b.get(digits), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    std::str::from_utf8(&b[..digits]).ok()?.parse().ok()
}

/// A JSON number value of `key` as f64.
fn num_value(obj: &[u8], key: &[u8]) -> Option<f64> {
    let v = find_value(obj, key)?;
    let len = obj[v..]
        .iter()
        .take_while(|c| c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'+' | b'e' | b'E'))
        .count();
    let x: f64 = std::str::from_utf8(&obj[v..v + len]).ok()?.parse().ok()?;
    (x.is_finite() && x >= 0.0).then_some(x)
}

/// Sum of every integer value of `key` in `obj` (None when it never occurs).
fn sum_ints(obj: &[u8], key: &[u8]) -> Option<u64> {
    let mut at = 0;
    let mut sum: Option<u64> = None;
    while let Some(v) = find_value(&obj[at..], key) {
        if let Some(n) = parse_uint(&obj[at + v..]) {
            sum = Some(sum.unwrap_or(0).saturating_add(n));
        }
        at += v;
    }
    sum
}

#[cfg(test)]
#[path = "native_tests.rs"]
mod tests;
