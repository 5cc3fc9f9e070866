//! JSON string contents decoded as every backend's parser decodes them: `\"` `\\` `\/` `\b` `\f`
//! `\n` `\r` `\t` and `\uXXXX` (surrogate pairs joined). What the parsers do not agree on (a lone
//! surrogate: Python keeps it, Go replaces it, serde refuses; a raw control character; an unknown
//! escape) is an error here. Pure, no allocation; runs on core threads.

/// Decodes the raw bytes between a string's quotes, handing `out` runs of decoded bytes in order;
/// `out` returning false stops early (Ok(false)). Err: the string is not one every parser reads alike.
pub(super) fn unescape(raw: &[u8], mut out: impl FnMut(&[u8]) -> bool) -> Result<bool, ()> {
    let mut i = 0;
    while i < raw.len() {
        let run_end = memchr::memchr(b'\\', &raw[i..]).map_or(raw.len(), |k| k + i);
        if run_end > i {
            let run = &raw[i..run_end];
            if run.iter().any(|&c| c < 0x20) {
                return Err(());
            }
            if !out(run) {
                return Ok(false);
            }
        }
        if run_end == raw.len() {
            break;
        }
        let esc = *raw.get(run_end + 1).ok_or(())?;
        i = run_end + 2;
        let one = match esc {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let hi = hex4(raw, i)?;
                i += 4;
                let c = if (0xD800..0xDC00).contains(&hi) {
                    if raw.get(i..i + 2) != Some(b"\\u") {
                        return Err(());
                    }
                    let lo = hex4(raw, i + 2)?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(());
                    }
                    i += 6;
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else if (0xDC00..0xE000).contains(&hi) {
                    return Err(());
                } else {
                    hi
                };
                let ch = char::from_u32(c).ok_or(())?;
                let mut buf = [0u8; 4];
                if !out(ch.encode_utf8(&mut buf).as_bytes()) {
                    return Ok(false);
                }
                continue;
            }
            _ => return Err(()),
        };
        if !out(&[one]) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn hex4(raw: &[u8], i: usize) -> Result<u32, ()> {
    let h = raw.get(i..i + 4).ok_or(())?;
    let mut v = 0u32;
    for &c in h {
        let d = (c as char).to_digit(16).ok_or(())?;
        v = v * 16 + d;
    }
    Ok(v)
}

/// A JSON string's contents as an owned `String`: escapes decoded, UTF-8 checked.
pub(super) fn to_string(raw: &[u8]) -> Option<String> {
    let mut v = Vec::with_capacity(raw.len());
    unescape(raw, |run| {
        v.extend_from_slice(run);
        true
    })
    .ok()?;
    String::from_utf8(v).ok()
}

/// A key decoded into a small buffer (keys longer than the buffer are never one of ours).
pub(super) struct ShortKey {
    buf: [u8; 32],
    len: usize,
}

impl ShortKey {
    /// None when the key is longer than 32 bytes decoded or not one every parser reads alike.
    pub(super) fn decode(raw: &[u8]) -> Option<ShortKey> {
        let mut k = ShortKey { buf: [0; 32], len: 0 };
        let fits = unescape(raw, |run| {
            let end = k.len + run.len();
            if end > k.buf.len() {
                return false;
            }
            k.buf[k.len..end].copy_from_slice(run);
            k.len = end;
            true
        })
        .ok()?;
        fits.then_some(k)
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_serde_or_refuses() {
        for s in [
            r#"plain"#,
            r#"str\u0065am"#,
            r#"a\"b\\c\/d\b\f\n\r\t"#,
            r#"\u00e9\u4e2d\ud83d\ude00x"#,
            r#"\u0000"#,
            "caf\u{e9}",
        ] {
            let want: String = serde_json::from_str(&format!("\"{s}\"")).unwrap();
            assert_eq!(to_string(s.as_bytes()).as_deref(), Some(want.as_str()), "{s}");
        }
        for s in [r#"\ud800"#, r#"\udc00x"#, r#"\ud800\u0041"#, r#"\x"#, r#"\u12"#, "a\u{1}b", "\\"] {
            assert_eq!(to_string(s.as_bytes()), None, "{s:?}");
        }
        assert_eq!(to_string(b"\xff"), None);
        assert_eq!(ShortKey::decode(br"mod\u0065l").unwrap().bytes(), b"model");
        assert!(ShortKey::decode(&[b'a'; 33]).is_none());
    }
}
