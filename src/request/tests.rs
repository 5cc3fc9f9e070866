//! Unit tests of the body walk: fields, spellings refused, usage edits in every shape.

use super::*;

fn edited(body: &str, iu: bool, cus: bool) -> serde_json::Value {
    let info = scan(body.as_bytes()).unwrap();
    let mut out = Vec::new();
    match info.usage_edit(iu, cus) {
        Some(e) => {
            e.apply_into(body.as_bytes(), &mut out);
            assert_eq!(out.len(), e.new_len(body.len()));
        }
        None => out.extend_from_slice(body.as_bytes()),
    }
    serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("edited body is not JSON ({e}): {}", String::from_utf8_lossy(&out)))
}

fn refused(body: &str) -> &'static str {
    match scan(body.as_bytes()) {
        Err(e) => e.0,
        Ok(i) => panic!("{body} was read as {i:?}"),
    }
}

#[test]
fn reads_top_level_fields_only() {
    let b = br#"{"messages":[{"role":"user","content":"{\"model\":\"fake\"}","model":"nested"}],"model":"llama-3","stream":true,"user":"u\u00e9","tools":[{"stream":false}],"metadata":{"stream":false}}"#;
    let i = scan(b).unwrap();
    assert_eq!(i.model.as_deref(), Some("llama-3"));
    assert_eq!(i.stream, Some(true));
    assert_eq!(i.user.as_deref(), Some("ué"));
    assert!(!i.include_usage);
    assert_eq!((i.max_output_tokens, i.n), (None, None));
}

#[test]
fn the_issue_table_is_read_or_refused() {
    // Escaped keys are decoded, as every backend's parser does.
    assert_eq!(scan(br#"{"str\u0065am":true}"#).unwrap().stream, Some(true));
    assert_eq!(scan(br#"{"mod\u0065l":"gpt-expensive"}"#).unwrap().model.as_deref(), Some("gpt-expensive"));
    let i = scan(br#"{"stream":true,"stream_options":{"include_us\u0061ge":true}}"#).unwrap();
    assert!(i.include_usage);
    assert_eq!(i.include_usage_edit(), None);
    // Lax spellings are refused, naming the field.
    for v in ["1", "1.0", "\"true\"", "\"on\"", "0", "\"false\"", "[]", "{}"] {
        assert!(refused(&format!(r#"{{"stream":{v}}}"#)).contains("\"stream\""), "{v}");
    }
}

#[test]
fn duplicates_last_wins_and_null_is_absent() {
    assert_eq!(scan(br#"{"stream":true,"stream":false}"#).unwrap().stream, Some(false));
    assert_eq!(scan(br#"{"stream":"yes","stream":true}"#).unwrap().stream, Some(true));
    assert_eq!(scan(br#"{"stream":null}"#).unwrap().stream, None);
    assert_eq!(scan(br#"{"model":null,"model":"m"}"#).unwrap().model.as_deref(), Some("m"));
    assert!(refused(r#"{"model":"m","model":null}"#).contains("\"model\" is repeated with null"));
    assert_eq!(scan(b" \t\r\n{ \"stream\" :\ttrue\n}\n").unwrap().stream, Some(true));
}

#[test]
fn counts_are_plain_integers_and_the_largest_limit_counts() {
    let i = scan(br#"{"max_tokens":100,"max_completion_tokens":300,"max_output_tokens":200,"n":2}"#).unwrap();
    assert_eq!((i.max_output_tokens, i.n), (Some(300), Some(2)));
    assert_eq!(scan(br#"{"max_tokens":18446744073709551615}"#).unwrap().max_output_tokens, Some(u64::MAX));
    for v in ["100.0", "1e2", "-1", "\"100\"", "true", "18446744073709551616", "01", "-0"] {
        assert!(refused(&format!(r#"{{"max_tokens":{v}}}"#)).contains("\"max_tokens\""), "{v}");
        assert!(refused(&format!(r#"{{"n":{v}}}"#)).contains("\"n\""), "{v}");
    }
}

#[test]
fn strings_and_key_spellings() {
    assert!(refused(r#"{"model":5}"#).contains("\"model\" must be a JSON string"));
    assert!(refused(r#"{"user":"\ud800"}"#).contains("\"user\""));
    assert!(refused(r#"{"Stream":true}"#).contains("\"stream\""));
    assert!(refused("{\"\u{17f}tream\":true}").contains("\"stream\""));
    assert!(refused(r#"{"stream_options":{"INCLUDE_USAGE":true}}"#).contains("include_usage"));
    assert!(refused(r#"{"stream_options":true}"#).contains("\"stream_options\" must be a JSON object"));
    assert!(refused(r#"{"stream_options":{"continuous_usage_stats":1}}"#).contains("continuous_usage_stats"));
    // A key that only looks like ours in a nested object, or is longer, is not ours.
    assert_eq!(scan(br#"{"streaming":1,"stream_options":{"include_usage_x":1}}"#).unwrap().stream, None);
}

#[test]
fn usage_edits_in_every_shape() {
    for (body, iu, cus) in [
        (r#"{"model":"m","stream":true}"#, true, false),
        (r#"{}"#, true, true),
        (r#"{ }"#, false, true),
        (r#"{"stream":true,"stream_options":{"continuous_usage_stats":true}}"#, true, true),
        (r#"{"stream":true,"stream_options":{"include_usage":false}}"#, true, true),
        (
            r#"{"stream":true,"stream_options":{"include_usage":false,"x":1,"continuous_usage_stats":null}}"#,
            true,
            true,
        ),
        (
            r#"{"stream":true,"stream_options":{"continuous_usage_stats":false,"include_usage":null}}"#,
            true,
            true,
        ),
        (r#"{"stream":true,"stream_options":{ }}"#, true, true),
        (r#"{"stream":true,"stream_options":null}"#, true, false),
        (r#"{"stream":true,"stream_options":{"include_usage":false},"stream_options":{"a":1}}"#, true, true),
        (r#"{"stream_options":{"include_us\u0061ge":false,"include_usage":false}}"#, true, false),
    ] {
        let v = edited(body, iu, cus);
        assert_eq!(
            v["stream_options"]["include_usage"].as_bool().unwrap_or(false),
            iu || body.contains("\"include_usage\":true"),
            "{body}"
        );
        if cus {
            assert_eq!(v["stream_options"]["continuous_usage_stats"], true, "{body}");
        }
        let again = scan(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(again.usage_edit(iu, cus), None, "{body}");
    }
    assert_eq!(edited(r#"{"stream_options":{"x":1}}"#, true, false)["stream_options"]["x"], 1);
}

#[test]
fn no_edit_when_not_needed() {
    let i = scan(br#"{"stream":true,"stream_options":{"include_usage":true}}"#).unwrap();
    assert!(i.include_usage);
    assert_eq!(i.include_usage_edit(), None);
    assert!(i.usage_edit(true, true).is_some());
    assert_eq!(scan(br#"{"stream":false}"#).unwrap().include_usage_edit(), None);
    assert_eq!(scan(br#"{"model":"m"}"#).unwrap().include_usage_edit(), None);
    assert_eq!(scan(br#"{"model":"m"}"#).unwrap().usage_edit(false, false), None);
    assert_eq!(scan(b"").unwrap(), RequestInfo::default());
    assert_eq!(scan(b"").unwrap().usage_edit(true, true), None);
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
        b"{\"a\":1,}",
        b"{\"stream_options\":{\"a\" 1}}",
        b"{\"stream_options\":{\"a\":1,}}",
    ] {
        assert!(scan(b).is_err(), "{:?}", String::from_utf8_lossy(b));
    }
    // Every prefix of a valid body is handled without a panic.
    let full = br#"{"model":"m","stream":true,"stream_options":{"include_usage":false},"messages":[{"a":"\"}"}],"max_tokens":5}"#;
    for k in 0..full.len() {
        let _ = scan(&full[..k]);
    }
    assert!(scan(full).is_ok());
}

/// `model` and `user` are copied into every record and log line: past MAX_NAME_BYTES (decoded) a
/// body is refused, at the limit it is read.
#[test]
fn model_and_user_longer_than_the_limit_are_refused() {
    let at = "m".repeat(MAX_NAME_BYTES);
    let i = scan(format!(r#"{{"model":"{at}","user":"{at}"}}"#).as_bytes()).unwrap();
    assert_eq!(i.model.map(|m| m.len()), Some(MAX_NAME_BYTES));
    let over = format!("{at}x");
    assert_eq!(
        refused(&format!(r#"{{"model":"{over}"}}"#)),
        "request field \"model\" is longer than 1024 bytes"
    );
    assert_eq!(
        refused(&format!(r#"{{"user":"{over}"}}"#)),
        "request field \"user\" is longer than 1024 bytes"
    );
    // Counted after decoding: 1,024 escaped letters are 1,024 bytes.
    let escaped = "\\u0061".repeat(MAX_NAME_BYTES);
    assert!(scan(format!(r#"{{"user":"{escaped}"}}"#).as_bytes()).is_ok());
}
