//! JSON string literals, written by hand with serde_json's escapes (the two-character ones, `\u00xx`
//! for the other controls; a test holds them byte-equal to serde_json): one writer for the usage
//! records, the access log, the gateway's error bodies and the CloudEvents envelopes.

/// Appends `s` as a JSON string literal to `o`.
#[inline]
pub fn push_str(o: &mut String, s: &str) {
    escape(s, |piece| o.push_str(piece));
}

/// `push_str`, or `null` for None.
pub fn push_opt_str(o: &mut String, v: Option<&str>) {
    match v {
        Some(s) => push_str(o, s),
        None => o.push_str("null"),
    }
}

/// Appends `s` as a JSON string literal to a byte buffer.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    escape(s, |piece| out.extend_from_slice(piece.as_bytes()));
}

/// serde_json's escape of each control character: the two-character ones, else `\u00xx`.
const CONTROL: [&str; 32] = [
    "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007", "\\b", "\\t",
    "\\n", "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011", "\\u0012", "\\u0013",
    "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019", "\\u001a", "\\u001b", "\\u001c",
    "\\u001d", "\\u001e", "\\u001f",
];

/// `s` quoted and escaped, handed to `emit` piece by piece.
#[inline(always)]
fn escape(s: &str, mut emit: impl FnMut(&str)) {
    emit("\"");
    // Fast path (ids, models, URLs, times): nothing to escape. A fold without early exit, so that
    // it vectorizes (a per-byte `any` was a tenth of the webhook thread's time).
    let plain = !s.as_bytes().iter().fold(false, |a, &c| a | (c < 0x20) | (c == b'"') | (c == b'\\'));
    if plain {
        emit(s);
        emit("\"");
        return;
    }
    let mut from = 0;
    for (i, &c) in s.as_bytes().iter().enumerate() {
        let escaped = match c {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0..=0x1f => CONTROL[usize::from(c)],
            _ => continue,
        };
        // Escaped bytes are ASCII, so `i` and `i + 1` are char boundaries.
        emit(&s[from..i]);
        emit(escaped);
        from = i + 1;
    }
    emit(&s[from..]);
    emit("\"");
}

/// Strings that exercise every escape: every ASCII character, quotes, backslashes, controls and
/// multi-byte characters (for the tests here and the usage record's).
#[cfg(test)]
pub(crate) fn awkward_strings() -> Vec<String> {
    let every_ascii: String = (0u8..0x80).map(char::from).collect();
    ["", "plain", "qu\"ote\\back", "line\nfeed\ttab\r\u{8}\u{c}\u{1}\u{1f}\u{7f}", "ünï😀\"x", &every_ascii]
        .map(String::from)
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte for byte what serde_json writes, through both buffers.
    #[test]
    fn escapes_are_serde_jsons() {
        for s in awkward_strings() {
            let want = serde_json::to_string(&s).unwrap();
            let mut o = String::new();
            push_str(&mut o, &s);
            assert_eq!(o, want);
            let mut b = Vec::new();
            write_str(&mut b, &s);
            assert_eq!(b, want.as_bytes());
        }
        let mut o = String::new();
        push_opt_str(&mut o, None);
        assert_eq!(o, "null");
    }
}
