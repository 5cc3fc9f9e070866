//! Flavour-wide pieces of the mock backend: prompt token counting, response headers, error bodies,
//! and the Responses, Anthropic Messages, embeddings and model-list answers.

use super::flavor::{q, token, Ctx, Ev};
use super::Flavor;
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Deterministic prompt size: whitespace-separated words of every text in `v` (token ids count one
/// each); objects contribute their `content`, `text`, `input`, `prompt` and `instructions` fields.
pub(super) fn count_words(v: &Value) -> u32 {
    match v {
        Value::String(s) => s.split_whitespace().count() as u32,
        Value::Number(_) => 1,
        Value::Array(a) => a.iter().map(count_words).sum(),
        Value::Object(o) => ["content", "text", "input", "prompt", "instructions", "system", "messages"]
            .iter()
            .filter_map(|k| o.get(*k))
            .map(count_words)
            .sum(),
        _ => 0,
    }
}

/// Per-prompt token counts of a completions `prompt` / embeddings `input` (list = several prompts,
/// a list of token ids = one prompt).
pub(super) fn prompt_list(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Array(a)) if !a.is_empty() && !a.iter().all(Value::is_number) => {
            a.iter().take(256).map(|p| count_words(p).max(1)).collect()
        }
        Some(v) => vec![count_words(v).max(1)],
        None => vec![1],
    }
}

/// Content type and extra headers of a 2xx answer (framing headers are added by the writer).
pub(super) fn headers(f: Flavor, sse: bool, chat: bool, date: &str) -> Vec<(String, String)> {
    let h = |k: &str, v: &str| (k.to_string(), v.to_string());
    match f {
        Flavor::Vllm | Flavor::Sglang => vec![
            h("date", date),
            h("server", "uvicorn"),
            h("content-type", if sse { "text/event-stream; charset=utf-8" } else { "application/json" }),
        ],
        Flavor::Tgi if sse => vec![
            h("content-type", "text/event-stream"),
            h("cache-control", "no-cache"),
            h("x-compute-type", "gpu+optimized"),
            h("date", date),
        ],
        Flavor::Tgi => {
            vec![h("content-type", "application/json"), h("x-compute-type", "gpu+optimized"), h("date", date)]
        }
        Flavor::Llamacpp => vec![
            h("Access-Control-Allow-Origin", ""),
            h("Content-Type", if sse { "text/event-stream" } else { "application/json; charset=utf-8" }),
            h("Keep-Alive", "timeout=5, max=100"),
            h("Server", "llama.cpp"),
        ],
        Flavor::Ollama => vec![
            h("Content-Type", if sse { "text/event-stream" } else { "application/json; charset=utf-8" }),
            h("Date", date),
        ],
        Flavor::Openai => vec![
            h("date", date),
            h(
                "content-type",
                match (sse, chat) {
                    (true, true) => "text/event-stream; charset=utf-8",
                    (true, false) => "text/event-stream",
                    (false, _) => "application/json",
                },
            ),
            h("openai-version", "2020-10-01"),
            h("openai-processing-ms", "42"),
            h("x-content-type-options", "nosniff"),
        ],
    }
}

/// The flavour's error body for `status`.
pub(super) fn error_body(f: Flavor, status: u16, msg: &str) -> String {
    let m = q(msg);
    let oai_type = match status {
        401 => "authentication_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    match f {
        Flavor::Vllm => format!(
            r#"{{"error":{{"message":{m},"type":"{}","param":null,"code":{status}}}}}"#,
            py_error_type(status)
        ),
        Flavor::Sglang => format!(
            r#"{{"object":"error","message":{m},"type":"{}","param":null,"code":{status}}}"#,
            py_error_type(status)
        ),
        Flavor::Tgi => {
            let t = match status {
                429 => "overloaded",
                424 | 500.. => "generation",
                404 => "not_found",
                _ => "validation",
            };
            format!(r#"{{"error":{m},"error_type":"{t}"}}"#)
        }
        Flavor::Llamacpp => {
            let t = match status {
                503 => "unavailable_error",
                500.. => "server_error",
                _ => oai_type,
            };
            format!(r#"{{"error":{{"code":{status},"message":{m},"type":"{t}"}}}}"#)
        }
        Flavor::Ollama => {
            let t = if status >= 500 { "api_error" } else { oai_type };
            format!("{{\"error\":{{\"message\":{m},\"type\":\"{t}\",\"param\":null,\"code\":null}}}}\n")
        }
        Flavor::Openai => {
            let code = if status == 404 { "\"not_found\"" } else { "null" };
            format!(
                "{{\n    \"error\": {{\n        \"message\": {m},\n        \"type\": \"{oai_type}\",\n        \"param\": null,\n        \"code\": {code}\n    }}\n}}\n"
            )
        }
    }
}

fn py_error_type(status: u16) -> &'static str {
    match status {
        400 => "BadRequestError",
        401 => "UnauthorizedError",
        404 => "NotFoundError",
        405 => "MethodNotAllowedError",
        413 => "PayloadTooLargeError",
        422 => "UnprocessableEntityError",
        429 => "TooManyRequestsError",
        500 => "InternalServerError",
        503 => "ServiceUnavailableError",
        _ => "Error",
    }
}

pub(super) fn models(f: Flavor, model: &str, created: u64) -> String {
    let m = q(model);
    match f {
        Flavor::Vllm => format!(
            r#"{{"object":"list","data":[{{"id":{m},"object":"model","created":{created},"owned_by":"vllm","root":{m},"parent":null,"max_model_len":8192,"permission":[]}}]}}"#
        ),
        _ => {
            let owner = match f {
                Flavor::Tgi => "tgi",
                Flavor::Sglang => "sglang",
                Flavor::Llamacpp => "llamacpp",
                Flavor::Ollama => "library",
                _ => "system",
            };
            format!(
                r#"{{"object":"list","data":[{{"id":{m},"object":"model","created":{created},"owned_by":"{owner}"}}]}}"#
            )
        }
    }
}

pub(super) fn embeddings(c: &Ctx) -> String {
    let data: Vec<String> = (0..c.prompts.len())
        .map(|i| {
            let v: Vec<String> =
                (0..8).map(|k| format!("{:.6}", ((i * 8 + k) as f64 * 0.37).sin() / 3.0)).collect();
            format!(r#"{{"object":"embedding","embedding":[{}],"index":{i}}}"#, v.join(","))
        })
        .collect();
    let p = c.prompt_total();
    let usage = match c.flavor {
        _ if c.no_usage => String::new(),
        Flavor::Vllm | Flavor::Sglang => {
            format!(r#","usage":{{"prompt_tokens":{p},"total_tokens":{p},"completion_tokens":0}}"#)
        }
        _ => format!(r#","usage":{{"prompt_tokens":{p},"total_tokens":{p}}}"#),
    };
    format!(r#"{{"object":"list","data":[{}],"model":{}{usage}}}"#, data.join(","), q(&c.model))
}

fn text(c: &Ctx) -> String {
    (0..c.tokens).map(token).collect()
}

fn named_ev(paced: bool, event: &str, json: &str) -> Ev {
    Ev { paced, bytes: format!("event: {event}\ndata: {json}\n\n").into_bytes() }
}

/// OpenAI Responses API object; `done` = completed with output and usage, else in progress.
fn response_obj(c: &Ctx, done: bool) -> String {
    let (id, cr, m) = (q(&c.id), c.created, q(&c.model));
    let msg_id = q(&format!("msg_{}", &c.id[5.min(c.id.len())..]));
    let (status, output, usage) = if done {
        let (p, o) = (c.prompt_total(), c.tokens);
        let usage = if c.no_usage {
            "null".to_string()
        } else {
            let (cached, reasoning) = if c.details { (p / 2, o / 2) } else { (0, 0) };
            format!(
                r#"{{"input_tokens":{p},"input_tokens_details":{{"cached_tokens":{cached}}},"output_tokens":{o},"output_tokens_details":{{"reasoning_tokens":{reasoning}}},"total_tokens":{}}}"#,
                p + o
            )
        };
        let out = format!(
            r#"[{{"id":{msg_id},"type":"message","status":"completed","content":[{{"type":"output_text","annotations":[],"logprobs":[],"text":{}}}],"role":"assistant"}}]"#,
            q(&text(c))
        );
        ("completed", out, usage)
    } else {
        ("in_progress", "[]".to_string(), "null".to_string())
    };
    format!(
        r#"{{"id":{id},"object":"response","created_at":{cr},"status":"{status}","error":null,"incomplete_details":null,"instructions":null,"model":{m},"output":{output},"parallel_tool_calls":true,"temperature":1.0,"tool_choice":"auto","tools":[],"top_p":1.0,"usage":{usage}}}"#
    )
}

pub(super) fn responses_body(c: &Ctx) -> String {
    response_obj(c, true)
}

pub(super) fn responses_stream(c: &Ctx) -> Vec<Ev> {
    let msg_id = q(&format!("msg_{}", &c.id[5.min(c.id.len())..]));
    let mut seq = 0u32;
    let mut evs = Vec::new();
    let mut push = |paced: bool, ty: &str, rest: String| {
        let json = format!(r#"{{"type":"{ty}","sequence_number":{seq}{rest}}}"#);
        seq += 1;
        evs.push(named_ev(paced, ty, &json));
    };
    let created = response_obj(c, false);
    push(true, "response.created", format!(r#","response":{created}"#));
    push(false, "response.in_progress", format!(r#","response":{created}"#));
    push(
        false,
        "response.output_item.added",
        format!(
            r#","output_index":0,"item":{{"id":{msg_id},"type":"message","status":"in_progress","content":[],"role":"assistant"}}"#
        ),
    );
    push(
        false,
        "response.content_part.added",
        format!(
            r#","item_id":{msg_id},"output_index":0,"content_index":0,"part":{{"type":"output_text","annotations":[],"logprobs":[],"text":""}}"#
        ),
    );
    for k in 0..c.tokens {
        push(
            k > 0,
            "response.output_text.delta",
            format!(
                r#","item_id":{msg_id},"output_index":0,"content_index":0,"delta":{},"logprobs":[]"#,
                q(&token(k))
            ),
        );
    }
    let t = q(&text(c));
    push(
        false,
        "response.output_text.done",
        format!(r#","item_id":{msg_id},"output_index":0,"content_index":0,"text":{t},"logprobs":[]"#),
    );
    push(
        false,
        "response.content_part.done",
        format!(
            r#","item_id":{msg_id},"output_index":0,"content_index":0,"part":{{"type":"output_text","annotations":[],"logprobs":[],"text":{t}}}"#
        ),
    );
    push(
        false,
        "response.output_item.done",
        format!(
            r#","output_index":0,"item":{{"id":{msg_id},"type":"message","status":"completed","content":[{{"type":"output_text","annotations":[],"logprobs":[],"text":{t}}}],"role":"assistant"}}"#
        ),
    );
    push(true, "response.completed", format!(r#","response":{}"#, response_obj(c, true)));
    evs
}

/// Anthropic cache counts (creation, read): a quarter and half of the prompt with `details`.
fn anthropic_cache(c: &Ctx) -> (u32, u32) {
    if c.details {
        (c.prompt_total() / 4, c.prompt_total() / 2)
    } else {
        (0, 0)
    }
}

pub(super) fn messages_body(c: &Ctx) -> String {
    let usage = if c.no_usage {
        String::new()
    } else {
        let (created, read) = anthropic_cache(c);
        format!(
            r#","usage":{{"input_tokens":{},"cache_creation_input_tokens":{created},"cache_read_input_tokens":{read},"output_tokens":{}}}"#,
            c.prompt_total(),
            c.tokens
        )
    };
    format!(
        r#"{{"id":{},"type":"message","role":"assistant","model":{},"content":[{{"type":"text","text":{}}}],"stop_reason":"end_turn","stop_sequence":null{usage}}}"#,
        q(&c.id),
        q(&c.model),
        q(&text(c))
    )
}

/// Anthropic stream: input tokens in `message_start`, the final output count in `message_delta`.
pub(super) fn messages_stream(c: &Ctx) -> Vec<Ev> {
    let start_usage = if c.no_usage {
        String::new()
    } else {
        let (created, read) = anthropic_cache(c);
        format!(
            r#","usage":{{"input_tokens":{},"cache_creation_input_tokens":{created},"cache_read_input_tokens":{read},"output_tokens":1}}"#,
            c.prompt_total()
        )
    };
    let mut evs = vec![named_ev(
        true,
        "message_start",
        &format!(
            r#"{{"type":"message_start","message":{{"id":{},"type":"message","role":"assistant","model":{},"content":[],"stop_reason":null,"stop_sequence":null{start_usage}}}}}"#,
            q(&c.id),
            q(&c.model)
        ),
    )];
    evs.push(named_ev(
        false,
        "content_block_start",
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
    ));
    evs.push(named_ev(false, "ping", r#"{"type": "ping"}"#));
    for k in 0..c.tokens {
        evs.push(named_ev(
            k > 0,
            "content_block_delta",
            &format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{}}}}}"#,
                q(&token(k))
            ),
        ));
    }
    evs.push(named_ev(true, "content_block_stop", r#"{"type":"content_block_stop","index":0}"#));
    let usage =
        if c.no_usage { String::new() } else { format!(r#","usage":{{"output_tokens":{}}}"#, c.tokens) };
    evs.push(named_ev(
        false,
        "message_delta",
        &format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn","stop_sequence":null}}{usage}}}"#
        ),
    ));
    evs.push(named_ev(false, "message_stop", r#"{"type":"message_stop"}"#));
    evs
}

/// Ids: a splitmix64 sequence seeded by the clock (no rand dependency).
static SEQ: AtomicU64 = AtomicU64::new(0);

pub(super) fn rand64() -> u64 {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let mut z = nanos.wrapping_add(SEQ.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(super) fn alnum(len: usize) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = rand64();
    (0..len)
        .map(|i| {
            if i % 8 == 7 {
                x = rand64();
            }
            let c = ABC[(x % 62) as usize] as char;
            x /= 62;
            c
        })
        .collect()
}

pub(super) fn hex(len: usize) -> String {
    (0..len.div_ceil(16)).map(|_| format!("{:016x}", rand64())).collect::<String>()[..len].to_string()
}
