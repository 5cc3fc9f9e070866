//! What the gateway reads from a JSON request body: `stream`, `model`, `user`,
//! `stream_options.include_usage`, by walking top-level keys only (values skipped unparsed), and the
//! small edit that injects `include_usage`. Pure, no I/O; runs on core threads.

/// Fields the gateway uses, read from the top-level JSON object.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestInfo {
    pub stream: bool,
    pub model: Option<String>,
    pub user: Option<String>,
    /// `stream_options.include_usage` as sent (None when absent).
    pub include_usage: Option<bool>,
    /// Where an injection goes (computed during the walk).
    edit_point: Option<Edit>,
}

/// A splice into the body: replace `remove` bytes at `at` with `insert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edit {
    pub at: usize,
    pub remove: usize,
    pub insert: &'static [u8],
}

impl Edit {
    /// Length of the body after the edit.
    pub fn new_len(&self, len: usize) -> usize {
        len - self.remove + self.insert.len()
    }

    /// Appends `body` with the edit applied to `out` (the copy the gateway makes anyway).
    pub fn apply_into(&self, body: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&body[..self.at]);
        out.extend_from_slice(self.insert);
        out.extend_from_slice(&body[self.at + self.remove..]);
    }
}

impl RequestInfo {
    /// The edit that makes a streaming request report usage, when it does not ask already.
    pub fn include_usage_edit(&self) -> Option<Edit> {
        if !self.stream || self.include_usage == Some(true) {
            return None;
        }
        self.edit_point
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyError(pub &'static str);

/// Reads the gateway's fields from a request body. An empty body gives defaults.
pub fn scan(body: &[u8]) -> Result<RequestInfo, BodyError> {
    let mut info = RequestInfo::default();
    let mut i = skip_ws(body, 0);
    if i == body.len() {
        return Ok(info);
    }
    if body[i] != b'{' {
        return Err(BodyError("request body must be a JSON object"));
    }
    let obj_start = i;
    i += 1;
    let mut stream_options: Option<(usize, usize)> = None;
    let mut empty = true;
    loop {
        i = skip_ws(body, i);
        match body.get(i) {
            Some(b'}') => break,
            Some(b'"') => {}
            _ => return Err(BodyError("invalid JSON in request body")),
        }
        empty = false;
        let key_end = skip_string(body, i).ok_or(BodyError("invalid JSON in request body"))?;
        let key = &body[i + 1..key_end - 1];
        i = skip_ws(body, key_end);
        if body.get(i) != Some(&b':') {
            return Err(BodyError("invalid JSON in request body"));
        }
        let v = skip_ws(body, i + 1);
        let v_end = skip_value(body, v).ok_or(BodyError("invalid JSON in request body"))?;
        let value = &body[v..v_end];
        match key {
            b"stream" => info.stream = value == b"true",
            b"model" => info.model = json_str(value),
            b"user" => info.user = json_str(value),
            b"stream_options" => stream_options = Some((v, v_end)),
            _ => {}
        }
        i = skip_ws(body, v_end);
        match body.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => break,
            _ => return Err(BodyError("invalid JSON in request body")),
        }
    }
    if skip_ws(body, i + 1) != body.len() {
        return Err(BodyError("invalid JSON in request body: data after the object"));
    }
    info.edit_point = Some(match stream_options {
        None => Edit {
            at: obj_start + 1,
            remove: 0,
            insert: if empty {
                b"\"stream_options\":{\"include_usage\":true}"
            } else {
                b"\"stream_options\":{\"include_usage\":true},"
            },
        },
        Some((v, v_end)) if body[v] == b'{' => stream_options_edit(body, v, v_end, &mut info)?,
        // null or another non-object: replace it.
        Some((v, v_end)) => Edit { at: v, remove: v_end - v, insert: b"{\"include_usage\":true}" },
    });
    Ok(info)
}

/// Walks the `stream_options` object: reads include_usage and says how to make it true.
fn stream_options_edit(
    body: &[u8],
    v: usize,
    v_end: usize,
    info: &mut RequestInfo,
) -> Result<Edit, BodyError> {
    let bad = BodyError("invalid JSON in stream_options");
    let mut i = v + 1;
    let mut empty = true;
    let mut found = None;
    while i < v_end {
        i = skip_ws(body, i);
        if body.get(i) == Some(&b'}') {
            break;
        }
        empty = false;
        let key_end = skip_string(body, i).ok_or(bad)?;
        let key = &body[i + 1..key_end - 1];
        i = skip_ws(body, key_end) + 1;
        let s = skip_ws(body, i);
        let e = skip_value(body, s).ok_or(bad)?;
        if key == b"include_usage" {
            info.include_usage = Some(&body[s..e] == b"true");
            found = Some((s, e));
        }
        i = skip_ws(body, e);
        if body.get(i) == Some(&b',') {
            i += 1;
        }
    }
    Ok(match found {
        Some((s, e)) => Edit { at: s, remove: e - s, insert: b"true" },
        None => Edit {
            at: v + 1,
            remove: 0,
            insert: if empty { b"\"include_usage\":true" } else { b"\"include_usage\":true," },
        },
    })
}

/// First index at or after `i` that is not JSON whitespace (the one helper for every byte scanner).
pub(crate) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

/// End (exclusive) of the string starting at `b[i] == '"'`.
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        let k = memchr::memchr2(b'"', b'\\', b.get(j..)?)? + j;
        if b[k] == b'\\' {
            j = k + 2;
        } else {
            return Some(k + 1);
        }
    }
}

/// End (exclusive) of the JSON value starting at `b[i]`, checked only as far as needed to skip it.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                let k = memchr::memchr3(b'"', b'{', b'}', b.get(j..)?).map(|k| k + j);
                // Brackets are counted with braces; find the nearest of any structural byte.
                let k2 = memchr::memchr2(b'[', b']', b.get(j..)?).map(|k| k + j);
                let k = match (k, k2) {
                    (Some(a), Some(c)) => a.min(c),
                    (a, c) => a.or(c)?,
                };
                match b[k] {
                    b'"' => j = skip_string(b, k)?,
                    b'{' | b'[' => {
                        depth += 1;
                        j = k + 1;
                    }
                    _ => {
                        depth -= 1;
                        j = k + 1;
                        if depth == 0 {
                            return Some(j);
                        }
                    }
                }
            }
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n') {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// A JSON string value, unescaped; None for non-strings.
fn json_str(v: &[u8]) -> Option<String> {
    if v.first() != Some(&b'"') {
        return None;
    }
    if !v.contains(&b'\\') {
        return std::str::from_utf8(&v[1..v.len() - 1]).ok().map(str::to_string);
    }
    serde_json::from_slice(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn injected(body: &str) -> String {
        let info = scan(body.as_bytes()).unwrap();
        let mut out = Vec::new();
        match info.include_usage_edit() {
            Some(e) => {
                e.apply_into(body.as_bytes(), &mut out);
                assert_eq!(out.len(), e.new_len(body.len()));
            }
            None => out.extend_from_slice(body.as_bytes()),
        }
        let s = String::from_utf8(out).unwrap();
        serde_json::from_str::<serde_json::Value>(&s).expect("edited body is valid JSON");
        s
    }

    #[test]
    fn reads_top_level_fields_only() {
        let b = br#"{"messages":[{"role":"user","content":"{\"model\":\"fake\"}","model":"nested"}],"model":"llama-3","stream":true,"user":"u\u00e9","tools":[{"stream":false}]}"#;
        let i = scan(b).unwrap();
        assert_eq!(i.model.as_deref(), Some("llama-3"));
        assert!(i.stream);
        assert_eq!(i.user.as_deref(), Some("ué"));
        assert_eq!(i.include_usage, None);
    }

    #[test]
    fn injects_include_usage_in_every_shape() {
        let v: serde_json::Value = serde_json::from_str(&injected(r#"{"model":"m","stream":true}"#)).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m");
        let v: serde_json::Value = serde_json::from_str(&injected(
            r#"{"stream":true,"stream_options":{"continuous_usage_stats":true}}"#,
        ))
        .unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["continuous_usage_stats"], true);
        let v: serde_json::Value =
            serde_json::from_str(&injected(r#"{"stream":true,"stream_options":{"include_usage":false}}"#))
                .unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let v: serde_json::Value =
            serde_json::from_str(&injected(r#"{"stream":true,"stream_options":{ }}"#)).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        let v: serde_json::Value =
            serde_json::from_str(&injected(r#"{"stream":true,"stream_options":null}"#)).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn no_edit_when_not_needed() {
        let b = br#"{"stream":true,"stream_options":{"include_usage":true}}"#;
        let i = scan(b).unwrap();
        assert_eq!(i.include_usage, Some(true));
        assert_eq!(i.include_usage_edit(), None);
        assert_eq!(scan(br#"{"stream":false}"#).unwrap().include_usage_edit(), None);
        assert_eq!(scan(b"").unwrap(), RequestInfo::default());
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        for b in [
            &b"[1]"[..],
            b"{",
            b"{\"a\"",
            b"{\"a\":",
            b"{\"a\":1",
            b"{\"a\":1}x",
            b"{\"a\":\"\\",
            b"{\"a\":[}",
            b"{1:2}",
            b"\"s\"",
        ] {
            assert!(scan(b).is_err(), "{:?}", String::from_utf8_lossy(b));
        }
        // Every prefix of a valid body is handled without a panic.
        let full = br#"{"model":"m","stream":true,"stream_options":{"include_usage":false},"messages":[{"a":"\"}"}]}"#;
        for k in 0..full.len() {
            let _ = scan(&full[..k]);
        }
        assert!(scan(full).is_ok());
    }
}
