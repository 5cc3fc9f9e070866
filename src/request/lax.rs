//! pydantic v2's lax boolean reading of a string, for form fields: a multipart form reaches the
//! backend (vLLM's audio endpoints) as strings, so a form's `stream` is read as pydantic reads it,
//! never by a looser or stricter rule of our own. Pure; runs on core threads.

/// `stream` and other boolean form fields as FastAPI + pydantic read them: an empty value is the
/// default (FastAPI treats `""` as absent); `0`, `1` and, in any letter case, `f n no off false` /
/// `t y on yes true` (no whitespace trimmed, as pydantic-core's `str_as_bool`); None for anything
/// else, which the backend refuses (the gateway refuses it too).
pub fn form_bool(v: &[u8], default: bool) -> Option<bool> {
    const FALSE: [&[u8]; 5] = [b"f", b"n", b"no", b"off", b"false"];
    const TRUE: [&[u8]; 5] = [b"t", b"y", b"on", b"yes", b"true"];
    if v.is_empty() {
        Some(default)
    } else if v == b"0" || FALSE.iter().any(|w| w.eq_ignore_ascii_case(v)) {
        Some(false)
    } else if v == b"1" || TRUE.iter().any(|w| w.eq_ignore_ascii_case(v)) {
        Some(true)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::form_bool;

    #[test]
    fn reads_what_pydantic_reads() {
        for t in ["1", "true", "True", "TRUE", "on", "ON", "yes", "Y", "t"] {
            assert_eq!(form_bool(t.as_bytes(), false), Some(true), "{t}");
        }
        for f in ["0", "false", "False", "off", "no", "N", "f"] {
            assert_eq!(form_bool(f.as_bytes(), true), Some(false), "{f}");
        }
        assert_eq!(form_bool(b"", false), Some(false));
        for bad in [" true", "true ", "2", "1.0", "yess", "nul", "\u{17f}"] {
            assert_eq!(form_bool(bad.as_bytes(), false), None, "{bad:?}");
        }
    }
}
