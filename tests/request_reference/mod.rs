//! The reference reading of a request body, shared by the differential test
//! (`tests/request_differential.rs`) and the fuzz target `fuzz/fuzz_targets/request_body.rs`:
//! serde_json to a `Value` (escapes decoded, last duplicate wins, as Python's json.loads) plus
//! pydantic v2's lax rules as vLLM and SGLang apply them, and [`check_body`], which holds the walk
//! (`llmproxy::request::scan`) to it for one body.

use llmproxy::request::{scan, RequestInfo};
use serde_json::Value;

/// pydantic v2 lax `bool` (Python mode, on json.loads output): bools, the ints 0/1, the floats
/// 0.0/1.0, and the strings 0/off/f/false/n/no and 1/on/t/true/y/yes in any letter case.
fn lax_bool(v: &Value) -> Result<Option<bool>, ()> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(0.0) => Ok(Some(false)),
            Some(1.0) => Ok(Some(true)),
            _ => Err(()),
        },
        Value::Number(n) => match n.as_i64() {
            Some(0) => Ok(Some(false)),
            Some(1) => Ok(Some(true)),
            _ => Err(()),
        },
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "0" | "off" | "f" | "false" | "n" | "no" => Ok(Some(false)),
            "1" | "on" | "t" | "true" | "y" | "yes" => Ok(Some(true)),
            _ => Err(()),
        },
        _ => Err(()),
    }
}

/// pydantic v2 lax `int`: ints, bools, floats without a fractional part, numeric strings. (Values
/// a u64 cannot hold, negative ones included, are out of the gateway's range: reported as Err.)
fn lax_int(v: &Value) -> Result<Option<u64>, ()> {
    match v {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(u64::from(*b))),
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => Ok(Some(u)),
            (None, Some(f)) if f.fract() == 0.0 && (0.0..1.8e19).contains(&f) => Ok(Some(f as u64)),
            _ => Err(()),
        },
        Value::String(s) => s.trim().parse().map(Some).map_err(|_| ()),
        _ => Err(()),
    }
}

/// pydantic v2 lax `str`: strings only (numbers are not coerced by default).
fn lax_str(v: &Value) -> Result<Option<String>, ()> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(()),
    }
}

/// What vLLM reads from the body: Err(field) when pydantic refuses the named field.
#[derive(Debug, PartialEq)]
struct Reading {
    stream: Option<bool>,
    model: Option<String>,
    user: Option<String>,
    include_usage: bool,
    continuous_usage_stats: bool,
    max_output_tokens: Option<u64>,
    n: Option<u64>,
}

fn reference(v: &Value) -> Result<Reading, &'static str> {
    let o = v.as_object().ok_or("body")?;
    let f = |k: &str| o.get(k).unwrap_or(&Value::Null);
    let mut r = Reading {
        stream: lax_bool(f("stream")).map_err(|_| "stream")?,
        model: lax_str(f("model")).map_err(|_| "model")?,
        user: lax_str(f("user")).map_err(|_| "user")?,
        include_usage: false,
        continuous_usage_stats: false,
        max_output_tokens: None,
        n: lax_int(f("n")).map_err(|_| "n")?,
    };
    for k in ["max_tokens", "max_completion_tokens", "max_output_tokens"] {
        if let Some(m) = lax_int(f(k)).map_err(|_| k)? {
            r.max_output_tokens = Some(r.max_output_tokens.map_or(m, |x| x.max(m)));
        }
    }
    match f("stream_options") {
        Value::Null => {}
        Value::Object(so) => {
            let g = |k: &str| so.get(k).unwrap_or(&Value::Null);
            r.include_usage = lax_bool(g("include_usage")).map_err(|_| "include_usage")? == Some(true);
            r.continuous_usage_stats =
                lax_bool(g("continuous_usage_stats")).map_err(|_| "continuous_usage_stats")? == Some(true);
        }
        _ => return Err("stream_options"),
    }
    Ok(r)
}

fn walk_reading(i: &RequestInfo) -> Reading {
    Reading {
        stream: i.stream,
        model: i.model.clone(),
        user: i.user.clone(),
        include_usage: i.include_usage,
        continuous_usage_stats: i.continuous_usage_stats,
        max_output_tokens: i.max_output_tokens,
        n: i.n,
    }
}

/// How one body went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not JSON to serde_json either: no backend reads it; the walk only must not panic.
    NotJson,
    /// Read by the walk exactly as the reference reads it.
    Read,
    /// Refused by the walk (a 400), allowed because the body is not `canonical`.
    Refused,
}

/// Holds the walk to the reference for one body: it reads it identically or refuses it, never
/// reads a body the reference refuses, never refuses a `canonical` one (every field spelled the
/// way all backends agree on), and its usage edit always yields JSON that reads as asked.
pub fn check_body(b: &[u8], canonical: bool) -> Result<Verdict, String> {
    let text = String::from_utf8_lossy(b);
    let walk = scan(b);
    let parsed = serde_json::from_slice::<Value>(b);
    let verdict = match &parsed {
        Err(_) => Verdict::NotJson,
        Ok(v) => match (&walk, reference(v)) {
            (Ok(i), Ok(want)) => {
                let got = walk_reading(i);
                if got != want {
                    return Err(format!(
                        "read differently\nbody: {text}\nwalk: {got:?}\nreference: {want:?}"
                    ));
                }
                Verdict::Read
            }
            (Ok(i), Err(field)) => {
                return Err(format!(
                    "the walk read a body pydantic refuses ({field})\nbody: {text}\nwalk: {i:?}"
                ))
            }
            (Err(e), _) if canonical => {
                return Err(format!("refused a body spelled the agreed way: {}\nbody: {text}", e.0))
            }
            (Err(_), _) => Verdict::Refused,
        },
    };
    if let (Ok(i), Ok(_)) = (&walk, &parsed) {
        if let Some(e) = i.usage_edit(true, true) {
            let mut out = Vec::new();
            e.apply_into(b, &mut out);
            let v: Value = serde_json::from_slice(&out)
                .map_err(|er| format!("edit broke the JSON ({er})\nbody: {text}"))?;
            let again = reference(&v).map_err(|f| format!("edited body refused ({f})\nbody: {text}"))?;
            if !(again.include_usage && again.continuous_usage_stats) {
                return Err(format!("edit did not take\nbody: {text}"));
            }
        }
    }
    Ok(verdict)
}
