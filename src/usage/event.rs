//! What one complete SSE event says: an error, a finish, generated content, where its first
//! `"usage":{...}` member starts, and the span to cut it out. One pass over the event's colons for
//! the keys (plus a prefix check for errors), no parsing, no allocation. Keys are read from `data:`
//! lines only, as a client reads the event: a comment or `event:` line carrying key-like text says
//! nothing. Runs on core threads; pure.

use crate::request::skip_ws;
use memchr::memmem;
use std::sync::LazyLock;

fn finder(needle: &'static [u8]) -> memmem::Finder<'static> {
    memmem::Finder::new(needle)
}

static DATA_LINE: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| finder(b"\ndata:"));

/// What one pass over an event found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    /// A choice finished: `"finish_reason":"<non-empty>"` (TGI sends `""` on ordinary chunks).
    pub finish: bool,
    /// The event carries generated content: non-empty `delta.content`, `delta.reasoning_content`,
    /// `text`, or a non-empty `tool_calls` array (CONTRACT section 7, "estimated").
    pub content: bool,
    /// Where the first `"usage":` key starts (its opening quote).
    pub usage: Option<usize>,
}

impl Keys {
    /// A `:` at `i`: when it ends one of the keys read here (a quote right before it, then the
    /// key's name) on a data line (`data_line`, asked only then), note what its value says. A
    /// key-like text inside a string ends in `\"`, never in a bare `"` before the colon, so it
    /// cannot match.
    #[inline(always)]
    fn colon(&mut self, ev: &[u8], i: usize, data_line: impl FnOnce() -> bool) {
        if i < 3 || ev[i - 1] != b'"' {
            return;
        }
        let key = &ev[..i];
        match ev[i - 2] {
            b'n' if !self.finish && key.ends_with(b"\"finish_reason\"") => {
                self.finish = non_empty_string_at(ev, skip_ws(ev, i + 1)) && data_line()
            }
            b't' if !self.content && (key.ends_with(b"content\"") || key.ends_with(b"\"text\"")) => {
                self.content = non_empty_string_at(ev, skip_ws(ev, i + 1)) && data_line()
            }
            b's' if !self.content && key.ends_with(b"\"tool_calls\"") => {
                self.content = non_empty_array_at(ev, i + 1) && data_line()
            }
            b'e' if self.usage.is_none() && key.ends_with(b"\"usage\"") && data_line() => {
                self.usage = Some(i - 7)
            }
            _ => {}
        }
    }
}

/// One pass over a complete event for every key the scanner reads (finish, content, usage), on its
/// `data:` lines. `one_line`: the caller saw no line end before the event's blank line (the common
/// event, one `data:` line), so every key is on the first line and no key's line is searched for.
pub fn scan_keys(ev: &[u8], one_line: bool) -> Keys {
    match one_line {
        true if ev.starts_with(b"data:") => scan_colons(ev, |_| true),
        true => Keys::default(),
        false => scan_colons(ev, |i| in_data_line(ev, i)),
    }
}

/// Visits each `:` and looks back at the few bytes before it, instead of one memmem search over
/// the whole event per key. On x86_64, SSE2 (part of every x86_64 target) compares 16 bytes at a
/// time; elsewhere memchr's iterator finds the colons. No allocation. `data_line(i)`: byte `i` is
/// on a data line (asked only when a key matched).
#[inline(always)]
fn scan_colons(ev: &[u8], data_line: impl Fn(usize) -> bool) -> Keys {
    let mut k = Keys::default();
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        use std::arch::x86_64::{__m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
        let mut o = 0;
        // SAFETY: SSE2 is enabled at compile time (the cfg above), and each unaligned load reads
        // ev[o..o + 16], inside the slice.
        unsafe {
            let colon = _mm_set1_epi8(b':' as i8);
            while o + 16 <= ev.len() {
                let v = _mm_loadu_si128(ev.as_ptr().add(o).cast::<__m128i>());
                let mut m = _mm_movemask_epi8(_mm_cmpeq_epi8(v, colon)) as u32;
                while m != 0 {
                    let i = o + m.trailing_zeros() as usize;
                    k.colon(ev, i, || data_line(i));
                    m &= m - 1;
                }
                o += 16;
            }
        }
        for (i, &b) in ev.iter().enumerate().skip(o) {
            if b == b':' {
                k.colon(ev, i, || data_line(i));
            }
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    for i in memchr::memchr_iter(b':', ev) {
        k.colon(ev, i, || data_line(i));
    }
    k
}

/// Byte `i` of an event lies on a `data:` line, the only lines a client parses as JSON. An event
/// starts at a line start; lines end in LF or CRLF, as the scanner's event boundaries do (a bare
/// CR is not read as a line end). A backward search over one line.
#[cold]
#[inline(never)]
pub fn in_data_line(ev: &[u8], i: usize) -> bool {
    let start = memchr::memrchr(b'\n', &ev[..i.min(ev.len())]).map_or(0, |n| n + 1);
    ev[start..].starts_with(b"data:")
}
/// A string with at least one character starts at `v`.
fn non_empty_string_at(ev: &[u8], v: usize) -> bool {
    ev.get(v) == Some(&b'"') && ev.get(v + 1).is_some_and(|&c| c != b'"')
}

/// An array with at least one element starts at `v` (after optional whitespace).
fn non_empty_array_at(ev: &[u8], v: usize) -> bool {
    let v = skip_ws(ev, v);
    ev.get(v) == Some(&b'[') && !matches!(ev.get(skip_ws(ev, v + 1)), Some(b']') | None)
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

    /// Keys read with the caller's line knowledge, and without (which must agree).
    fn scan(ev: &[u8]) -> Keys {
        let one_line = !ev.contains(&b'\n');
        let k = scan_keys(ev, false);
        assert_eq!(scan_keys(ev, one_line), k, "{}", String::from_utf8_lossy(ev));
        k
    }

    fn content(ev: &[u8]) -> bool {
        scan(ev).content
    }

    fn finish(ev: &[u8]) -> bool {
        scan(ev).finish
    }

    #[test]
    fn content_finish_error() {
        assert!(content(br#"data: {"choices":[{"delta":{"content":"Hi"}}]}"#));
        assert!(content(br#"data: {"choices":[{"delta":{"reasoning_content":"hm"}}]}"#));
        assert!(content(br#"data: {"choices":[{"text":"a","index":0}]}"#));
        assert!(content(br#"data: {"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#));
        assert!(content(br#"data: {"choices":[{"delta":{"content": "Hi"}}]}"#));
        assert!(content(br#"data: {"choices":[{"delta":{"role":"assistant","content":""},"text":"x"}]}"#));
        assert!(!content(br#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#));
        assert!(!content(br#"data: {"choices":[{"delta":{"content":null,"tool_calls":[]}}]}"#));
        assert!(!content(br#"data: {"choices":[{"delta":{"role":"a\"content\":\"x"}}]}"#));
        assert!(finish(br#"data: {"choices":[{"finish_reason":"stop"}]}"#));
        assert!(finish(
            br#"data: {"choices":[{"index":0,"finish_reason":""},{"index":1,"finish_reason":"length"}]}"#
        ));
        assert!(!finish(br#"data: {"choices":[{"finish_reason":""}]}"#));
        assert!(!finish(br#"data: {"choices":[{"finish_reason":null,"stop_reason":"x"}]}"#));
        assert!(!finish(br#"data: {"choices":[{"delta":{"content":"\"finish_reason\":\"stop\""}}]}"#));
        assert!(is_error(b"data: {\"error\":{\"message\":\"x\"}}\n\n"));
        assert!(is_error(b"data:{\"object\":\"error\",\"message\":\"x\"}\n\n"));
        assert!(is_error(b"event: error\ndata: {}\n\n"));
        assert!(is_error(b"error: {\"code\":500}\n\n"));
        assert!(is_error(b": c\ndata: {\"error\":\"x\"}\n\n"));
        assert!(!is_error(b"data: {\"choices\":[],\"error\":null}\n\n"));
        assert!(!content(b": {\"content\":\"x\"}\ndata: {}"));
        assert!(!finish(b"event: \"finish_reason\":\"stop\"\r\ndata: {}"));
        assert!(finish(b"event: x\r\ndata: {\"finish_reason\":\"stop\"}"));
        assert!(content(b": c\ndata: {\"text\":\"x\"}"));
    }

    /// The usage key is found wherever it lies relative to the 16-byte blocks, and a key-like
    /// text inside a string is not a key.
    #[test]
    fn usage_key_at_every_offset() {
        for pad in 0..40 {
            let ev =
                format!(r#"data: {{"id":"{}","choices":[],"usage":{{"prompt_tokens":1}}}}"#, "x".repeat(pad));
            let at = ev.find("\"usage\":").unwrap();
            assert_eq!(scan(ev.as_bytes()).usage, Some(at), "pad {pad}");
            for end in 0..ev.len() {
                let k = scan(&ev.as_bytes()[..end]);
                assert_eq!(k.usage, (end > at + 7).then_some(at), "pad {pad}, end {end}");
            }
        }
        let ev = r#"data: {"choices":[{"delta":{"content":"a \"usage\":{} b"}}],"usage":{"x":1}}"#;
        let k = scan(ev.as_bytes());
        assert_eq!(k.usage, ev.rfind("\"usage\":"));
        assert!(k.content);
        assert_eq!(scan(br#"{"choices":[{"delta":{"content":"\"usage\":{}"}}]}"#).usage, None);
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
