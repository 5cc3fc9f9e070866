//! What one complete SSE event says beyond its usage: an error, a finish, generated content, and
//! where its `"usage":{...}` member lies (to cut it out). Byte searches over one event, no parsing,
//! no allocation. Runs on core threads; pure.

use crate::request::skip_ws;
use memchr::memmem;
use std::sync::LazyLock;

fn finder(needle: &'static [u8]) -> memmem::Finder<'static> {
    memmem::Finder::new(needle)
}

static CONTENT: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| finder(b"content\":\""));
static TEXT: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| finder(b"\"text\":\""));
static TOOL_CALLS: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| finder(b"\"tool_calls\":"));
static FINISH: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| finder(b"\"finish_reason\":\""));
static DATA_LINE: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| finder(b"\ndata:"));

/// The byte after every match of `f` in `ev` is not `"` (a non-empty string value follows).
fn non_empty_string_after(f: &memmem::Finder<'_>, ev: &[u8]) -> bool {
    f.find_iter(ev).any(|i| ev.get(i + f.needle().len()).is_some_and(|&c| c != b'"'))
}

/// The event carries generated content: non-empty `delta.content`, `delta.reasoning_content`,
/// `text`, or a non-empty `tool_calls` array (CONTRACT section 7, "estimated").
pub fn has_content(ev: &[u8]) -> bool {
    if non_empty_string_after(&CONTENT, ev) || non_empty_string_after(&TEXT, ev) {
        return true;
    }
    TOOL_CALLS.find_iter(ev).any(|i| {
        let v = skip_ws(ev, i + TOOL_CALLS.needle().len());
        ev.get(v) == Some(&b'[') && !matches!(ev.get(skip_ws(ev, v + 1)), Some(b']') | None)
    })
}

/// A choice finished (`"finish_reason":"<non-empty>"`; TGI sends `""` on ordinary chunks).
pub fn has_finish(ev: &[u8]) -> bool {
    non_empty_string_after(&FINISH, ev)
}

/// An error reported inside the stream: `event: error`, llama.cpp's `error: {...}` line, or a data
/// line whose JSON is an error object (`{"error":...}`, vLLM's older `{"object":"error",...}`).
pub fn is_error(ev: &[u8]) -> bool {
    if ev.starts_with(b"error:") || ev.starts_with(b"event: error") || ev.starts_with(b"event:error") {
        return true;
    }
    let data = if ev.starts_with(b"data:") {
        5
    } else {
        match DATA_LINE.find(ev) {
            Some(i) => i + 6,
            None => return false,
        }
    };
    let j = skip_ws(ev, data);
    let rest = &ev[j.min(ev.len())..];
    rest.starts_with(b"{\"error\"") || rest.starts_with(b"{\"object\":\"error\"")
}

/// The bytes to remove to cut the member whose key starts at `key` and whose object value ends
/// (exclusive) at `end`: with the comma before it, or (first member) the comma after it.
pub fn member_span(ev: &[u8], key: usize, end: usize) -> Option<(usize, usize)> {
    let mut a = key;
    while a > 0 && matches!(ev[a - 1], b' ' | b'\t' | b'\r' | b'\n') {
        a -= 1;
    }
    match ev.get(a.wrapping_sub(1)) {
        Some(b',') => Some((a - 1, end)),
        Some(b'{') => {
            let c = skip_ws(ev, end);
            (ev.get(c) == Some(&b',')).then(|| (key, skip_ws(ev, c + 1)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_finish_error() {
        assert!(has_content(br#"data: {"choices":[{"delta":{"content":"Hi"}}]}"#));
        assert!(has_content(br#"data: {"choices":[{"delta":{"reasoning_content":"hm"}}]}"#));
        assert!(has_content(br#"data: {"choices":[{"text":"a","index":0}]}"#));
        assert!(has_content(br#"data: {"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#));
        assert!(!has_content(br#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#));
        assert!(!has_content(br#"data: {"choices":[{"delta":{"content":null,"tool_calls":[]}}]}"#));
        assert!(has_finish(br#"data: {"choices":[{"finish_reason":"stop"}]}"#));
        assert!(!has_finish(br#"data: {"choices":[{"finish_reason":""}]}"#));
        assert!(!has_finish(br#"data: {"choices":[{"finish_reason":null}]}"#));
        assert!(is_error(b"data: {\"error\":{\"message\":\"x\"}}\n\n"));
        assert!(is_error(b"data:{\"object\":\"error\",\"message\":\"x\"}\n\n"));
        assert!(is_error(b"event: error\ndata: {}\n\n"));
        assert!(is_error(b"error: {\"code\":500}\n\n"));
        assert!(is_error(b": c\ndata: {\"error\":\"x\"}\n\n"));
        assert!(!is_error(b"data: {\"choices\":[],\"error\":null}\n\n"));
    }

    #[test]
    fn member_spans() {
        let ev = br#"{"a":1, "usage":{"x":1},"b":2}"#;
        let k = 8;
        assert_eq!(&ev[k..k + 8], b"\"usage\":");
        let (a, b) = member_span(ev, k, k + 15).unwrap();
        let mut out = ev[..a].to_vec();
        out.extend_from_slice(&ev[b..]);
        assert_eq!(out, br#"{"a":1,"b":2}"#);
        let ev = br#"{"usage":{"x":1} , "b":2}"#;
        let (a, b) = member_span(ev, 1, 16).unwrap();
        let mut out = ev[..a].to_vec();
        out.extend_from_slice(&ev[b..]);
        assert_eq!(out, br#"{"b":2}"#);
        assert_eq!(member_span(br#"{"usage":{}}"#, 1, 11), None);
    }
}
