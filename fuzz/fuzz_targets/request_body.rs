//! A request body from any bytes, held to the reference reading the differential test uses
//! (`tests/request_reference`: serde_json plus pydantic's lax rules, as vLLM and SGLang read it):
//! the walk reads it identically or refuses it, never panics, and its usage edits (each of the
//! three kinds) leave JSON that still parses and reads as asked.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/request_reference/mod.rs"]
mod request_reference;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else { return };
    if let Err(e) = request_reference::check_body(body, false) {
        panic!("{e}");
    }
    // check_body tries the edit that adds both options; the two single ones here.
    let Ok(info) = llmproxy::request::scan(body) else { return };
    let (include, continuous) = if flags & 1 == 0 { (true, false) } else { (false, true) };
    let Some(edit) = info.usage_edit(include, continuous) else { return };
    let mut out = Vec::new();
    edit.apply_into(body, &mut out);
    assert_eq!(out.len(), edit.new_len(body.len()));
    if let Ok(serde_json::Value::Object(_)) = serde_json::from_slice::<serde_json::Value>(body) {
        let v: serde_json::Value = match serde_json::from_slice(&out) {
            Ok(v) => v,
            Err(e) => panic!("edited body is not JSON: {e}\n{}", String::from_utf8_lossy(&out)),
        };
        let key = if include { "include_usage" } else { "continuous_usage_stats" };
        assert_eq!(v["stream_options"][key], serde_json::Value::Bool(true), "{v}");
    }
});
