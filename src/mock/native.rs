//! The mock backend's endpoints beyond chat and completions (CONTRACT 12), in each flavour's own
//! shapes: vLLM rerank/score/pooling/classify/audio/tokenize, SGLang `/generate`, `/v1/rerank` and
//! tokenize, llama.cpp `/completion` and tokenize, Ollama `/api/chat`, `/api/generate` (NDJSON
//! streams by default) and `/api/embed`, and TEI-style `/rerank` on the TGI flavour (which reports
//! no usage).
//! Shapes follow the servers' documentation and source; a path a flavour does not serve is its 404.
//! Runs on the mock's connection threads.

use super::api::{count_words, hex, rand64};
use super::flavor::{data_ev, q, token, Ev};
use super::Flavor;
use crate::endpoints::{multipart, Endpoint};
use serde_json::Value;

/// What the request asked, as the mock server parsed it.
pub(super) struct Native<'a> {
    pub flavor: Flavor,
    pub endpoint: Endpoint,
    /// The JSON body (None for a multipart form).
    pub json: Option<&'a Value>,
    pub body: &'a [u8],
    pub content_type: &'a str,
    pub model: &'a str,
    pub tokens: u32,
    pub no_usage: bool,
    pub created: u64,
}

pub(super) enum Answer {
    NotServed,
    Bad(String),
    Json {
        content_type: &'static str,
        body: String,
    },
    /// Paced events (SSE or NDJSON lines).
    Stream {
        content_type: &'static str,
        events: Vec<Ev>,
    },
}

const OLLAMA_TIME: &str = "2024-08-07T03:57:33.0365888Z";

/// The answer to a request for one of the CONTRACT 12 paths.
pub(super) fn answer(n: &Native) -> Answer {
    use Endpoint as E;
    use Flavor as F;
    match (n.flavor, n.endpoint) {
        (F::Vllm, E::RerankV1 | E::RerankV2 | E::Rerank) => rerank_vllm(n),
        (F::Tgi, E::Rerank) => rerank_tei(n),
        (F::Vllm, E::ScoreV1 | E::Score) => pooling(n, "score"),
        (F::Vllm, E::Pooling) => pooling(n, "pooling"),
        (F::Vllm, E::Classify) => pooling(n, "classify"),
        (F::Vllm, E::AudioTranscriptions | E::AudioTranslations) => audio(n),
        (F::Sglang, E::RerankV1) => rerank_sglang(n),
        (F::Vllm | F::Sglang, E::Tokenize) => tokenize(n, "prompt"),
        (F::Llamacpp, E::Tokenize) => tokenize(n, "content"),
        (F::Vllm | F::Sglang | F::Llamacpp, E::Detokenize) => detokenize(n),
        (F::Ollama, E::OllamaChat | E::OllamaGenerate) => ollama(n),
        (F::Ollama, E::OllamaEmbed) => ollama_embed(n),
        (F::Llamacpp, E::LlamacppCompletion) => llamacpp(n),
        (F::Sglang, E::SglangGenerate) => sglang(n),
        _ => Answer::NotServed,
    }
}

fn field<'a>(n: &'a Native, k: &str) -> Option<&'a Value> {
    n.json.and_then(|v| v.get(k))
}

fn words(n: &Native, keys: &[&str]) -> u32 {
    keys.iter().filter_map(|k| field(n, k)).map(count_words).sum::<u32>().max(1)
}

fn json(body: String) -> Answer {
    Answer::Json { content_type: "application/json", body }
}

fn stream_flag(n: &Native, default: bool) -> bool {
    field(n, "stream").and_then(Value::as_bool).unwrap_or(default)
}

fn text(n: &Native) -> String {
    (0..n.tokens).map(token).collect()
}

/// vLLM `/v1/rerank` (Jina/Cohere-style): usage is `total_tokens` only, every query+document pair.
fn rerank_vllm(n: &Native) -> Answer {
    let Some(docs) = field(n, "documents").and_then(Value::as_array) else {
        return Answer::Bad("documents: field required".into());
    };
    let query = field(n, "query").map(count_words).unwrap_or(0);
    let mut total = 0;
    let results: Vec<String> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            total += query + count_words(d).max(1);
            let text = d
                .as_str()
                .map(str::to_string)
                .or_else(|| d.get("text").and_then(Value::as_str).map(str::to_string));
            format!(
                r#"{{"index":{i},"document":{{"text":{}}},"relevance_score":{}}}"#,
                q(&text.unwrap_or_default()),
                1.0 / (i as f64 + 1.5)
            )
        })
        .collect();
    let usage = if n.no_usage { String::new() } else { format!(r#","usage":{{"total_tokens":{total}}}"#) };
    json(format!(
        r#"{{"id":"rerank-{}","model":{}{usage},"results":[{}]}}"#,
        hex(32),
        q(n.model),
        results.join(",")
    ))
}

/// SGLang `/v1/rerank` (cross-encoder models, `--is-embedding`): a bare JSON array of
/// `{score, document, index, meta_info}` sorted by score, highest first (`RerankResponse` of
/// sglang's openai protocol; `document` left out when `return_documents` is false). Each item's
/// `meta_info` is the tokenizer manager's for its (query, document) pair, `prompt_tokens` included;
/// there is no `usage` object, so the bill is the sum of the items' prompt tokens.
fn rerank_sglang(n: &Native) -> Answer {
    let Some(docs) = field(n, "documents").and_then(Value::as_array) else {
        return Answer::Bad("documents: field required".into());
    };
    let query = field(n, "query").map(count_words).unwrap_or(0);
    let with_docs = field(n, "return_documents").and_then(Value::as_bool).unwrap_or(true);
    // Scores fall with the index, so the sorted order is the request's order.
    let items: Vec<String> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let doc = if with_docs { format!(r#","document":{}"#, q(d.as_str().unwrap_or_default())) } else { String::new() };
            let prompt = if n.no_usage { String::new() } else { format!(r#","prompt_tokens":{}"#, query + count_words(d).max(1)) };
            format!(
                r#"{{"score":{}{doc},"index":{i},"meta_info":{{"id":"{}","finish_reason":{{"type":"length","length":0}}{prompt},"weight_version":"default","e2e_latency":0.{}}}}}"#,
                1.0 / (i as f64 + 1.5),
                hex(32),
                rand64() % 1000 + 1
            )
        })
        .collect();
    json(format!("[{}]", items.join(",")))
}

/// TEI `/rerank`: a bare array of `{index, score}`; TEI reports no token usage in the body.
fn rerank_tei(n: &Native) -> Answer {
    let Some(texts) = field(n, "texts").and_then(Value::as_array) else {
        return Answer::Bad("texts: field required".into());
    };
    let items: Vec<String> =
        (0..texts.len()).map(|i| format!(r#"{{"index":{i},"score":{}}}"#, 1.0 / (i as f64 + 1.5))).collect();
    json(format!("[{}]", items.join(",")))
}

/// vLLM pooling-model endpoints: `/score`, `/pooling`, `/classify`; usage is prompt tokens only.
fn pooling(n: &Native, kind: &str) -> Answer {
    let p = words(n, &["input", "text_1", "text_2", "queries", "documents", "data"]);
    let (prefix, data) = match kind {
        "score" => ("score", r#"{"index":0,"object":"score","score":0.8125}"#.to_string()),
        "pooling" => ("pool", r#"{"index":0,"object":"pooling","data":[0.015625,-0.25,0.5]}"#.to_string()),
        _ => (
            "classify",
            r#"{"index":0,"label":"positive","probs":[0.125,0.875],"num_classes":2}"#.to_string(),
        ),
    };
    let usage = if n.no_usage {
        String::new()
    } else {
        format!(
            r#","usage":{{"prompt_tokens":{p},"total_tokens":{p},"completion_tokens":0,"prompt_tokens_details":null}}"#
        )
    };
    json(format!(
        r#"{{"id":"{prefix}-{}","object":"list","created":{},"model":{},"data":[{data}]{usage}}}"#,
        hex(32),
        n.created,
        q(n.model)
    ))
}

/// vLLM Whisper `/v1/audio/transcriptions` and `/translations`: a multipart form in; JSON with
/// `usage: {"type":"duration","seconds":N}` out (N: the form's length as 16 kHz 16-bit mono, whole
/// seconds rounded up, at least 1).
fn audio(n: &Native) -> Answer {
    let form = match multipart::boundary(n.content_type.as_bytes()).and_then(|b| multipart::scan(n.body, b)) {
        Ok(f) => f,
        Err(e) => return Answer::Bad(e.0.to_string()),
    };
    if form.parts == 0 {
        return Answer::Bad("file: field required".into());
    }
    let seconds = (n.body.len() as u64).div_ceil(32_000).max(1);
    let usage = if n.no_usage {
        String::new()
    } else {
        format!(r#","usage":{{"type":"duration","seconds":{seconds}}}"#)
    };
    json(format!(r#"{{"text":{}{usage}}}"#, q(text(n).trim_start())))
}

fn tokenize(n: &Native, key: &str) -> Answer {
    let c = words(n, &[key, "messages"]);
    let ids: Vec<String> = (0..c).map(|i| (1000 + i).to_string()).collect();
    if key == "content" {
        return Answer::Json {
            content_type: "application/json; charset=utf-8",
            body: format!(r#"{{"tokens":[{}]}}"#, ids.join(",")),
        };
    }
    if n.flavor == Flavor::Sglang {
        // SGLang's TokenizeResponse: tokens, count, max_model_len.
        return json(format!(r#"{{"tokens":[{}],"count":{c},"max_model_len":32768}}"#, ids.join(",")));
    }
    json(format!(r#"{{"count":{c},"max_model_len":8192,"tokens":[{}],"token_strs":null}}"#, ids.join(",")))
}

fn detokenize(n: &Native) -> Answer {
    let k = field(n, "tokens").and_then(Value::as_array).map_or(0, Vec::len) as u32;
    let t: String = (0..k).map(token).collect();
    if n.flavor == Flavor::Llamacpp {
        return Answer::Json {
            content_type: "application/json; charset=utf-8",
            body: format!(r#"{{"content":{}}}"#, q(&t)),
        };
    }
    if n.flavor == Flavor::Sglang {
        // SGLang's DetokenizeResponse: `text`.
        return json(format!(r#"{{"text":{}}}"#, q(&t)));
    }
    json(format!(r#"{{"prompt":{}}}"#, q(&t)))
}

/// Ollama's timing and counter members of a final object (`omitempty` counters left out when 0).
fn ollama_tail(n: &Native, p: u32) -> String {
    let c = n.tokens;
    if n.no_usage {
        return r#","total_duration":4883583458,"load_duration":1334875"#.to_string();
    }
    let mut s = String::from(r#","total_duration":4883583458,"load_duration":1334875"#);
    if p > 0 {
        s.push_str(&format!(r#","prompt_eval_count":{p},"prompt_eval_duration":342546000"#));
    }
    if c > 0 {
        s.push_str(&format!(r#","eval_count":{c},"eval_duration":4535599000"#));
    }
    s
}

/// Ollama `/api/chat` and `/api/generate`: NDJSON lines unless `"stream": false`.
fn ollama(n: &Native) -> Answer {
    let chat = n.endpoint == Endpoint::OllamaChat;
    let p = if chat { words(n, &["messages"]) } else { words(n, &["prompt", "system"]) };
    let m = q(n.model);
    let piece = |s: &str| {
        if chat {
            format!(r#""message":{{"role":"assistant","content":{}}}"#, q(s))
        } else {
            format!(r#""response":{}"#, q(s))
        }
    };
    let context = if chat { String::new() } else { r#","context":[128006,882,128007]"#.to_string() };
    let fin = |content: &str| {
        format!(
            r#"{{"model":{m},"created_at":"{OLLAMA_TIME}",{},"done_reason":"stop","done":true{context}{}}}"#,
            piece(content),
            ollama_tail(n, p)
        )
    };
    if !stream_flag(n, true) {
        return Answer::Json { content_type: "application/json; charset=utf-8", body: fin(&text(n)) };
    }
    let mut events: Vec<Ev> = (0..n.tokens)
        .map(|k| Ev {
            paced: true,
            bytes: format!(
                r#"{{"model":{m},"created_at":"{OLLAMA_TIME}",{},"done":false}}"#,
                piece(&token(k))
            )
            .into_bytes(),
        })
        .collect();
    events.push(Ev { paced: false, bytes: fin("").into_bytes() });
    for e in &mut events {
        e.bytes.push(b'\n');
    }
    Answer::Stream { content_type: "application/x-ndjson", events }
}

fn ollama_embed(n: &Native) -> Answer {
    let inputs = match field(n, "input") {
        Some(Value::Array(a)) => a.len().max(1),
        _ => 1,
    };
    let p = words(n, &["input"]);
    let embs: Vec<&str> = (0..inputs).map(|_| "[0.010071029,-0.0017594862,0.028599052]").collect();
    let counter = if n.no_usage { String::new() } else { format!(r#","prompt_eval_count":{p}"#) };
    Answer::Json {
        content_type: "application/json; charset=utf-8",
        body: format!(
            r#"{{"model":{},"embeddings":[{}],"total_duration":14143917,"load_duration":1019500{counter}}}"#,
            q(n.model),
            embs.join(",")
        ),
    }
}

/// llama.cpp `/completion`: the final object with sorted keys (as nlohmann::json wrote it); a
/// stream is SSE `data:` events ending with the `"stop": true` object (no `[DONE]`).
fn llamacpp(n: &Native) -> Answer {
    let p = words(n, &["prompt"]);
    let c = n.tokens;
    let counters = |tp: u32| {
        if n.no_usage {
            String::new()
        } else {
            format!(r#","tokens_evaluated":{p},"tokens_predicted":{tp}"#)
        }
    };
    let fin = |content: &str| {
        format!(
            r#"{{"content":{},"generation_settings":{{"n_predict":{c},"temperature":0.800000011920929}},"id_slot":0,"index":0,"model":{},"prompt":"<s> prompt","stop":true,"stop_type":"limit","stopping_word":"","timings":{{"predicted_n":{c},"prompt_n":{p}}},"tokens_cached":{}{},"truncated":false}}"#,
            q(content),
            q(n.model),
            p + c,
            counters(c)
        )
    };
    if !stream_flag(n, false) {
        return Answer::Json { content_type: "application/json; charset=utf-8", body: fin(&text(n)) };
    }
    // Partials in `server_task_result_cmpl_partial::to_json_non_oaicompat`'s key order
    // (ordered_json), with the cumulative counters current llama-server builds send on each.
    let partial_counters = |tp: u32| {
        if n.no_usage {
            String::new()
        } else {
            format!(r#","tokens_predicted":{tp},"tokens_evaluated":{p}"#)
        }
    };
    let mut events: Vec<Ev> = (0..c)
        .map(|k| {
            data_ev(
                true,
                &format!(
                    r#"{{"index":0,"content":{},"tokens":[],"stop":false,"id_slot":-1{}}}"#,
                    q(&token(k)),
                    partial_counters(k + 1)
                ),
            )
        })
        .collect();
    events.push(data_ev(false, &fin("")));
    Answer::Stream { content_type: "text/event-stream", events }
}

/// SGLang `/generate`: `meta_info` with cumulative counters on every chunk; text is cumulative in
/// a stream; the stream ends with `data: [DONE]`.
fn sglang(n: &Native) -> Answer {
    let p = words(n, &["text", "input_ids"]);
    let c = n.tokens;
    let id = hex(32);
    let obj = |k: u32, done: bool| {
        let t: String = (0..k).map(token).collect();
        let ids: Vec<String> = (0..k).map(|i| (2000 + i).to_string()).collect();
        let fr = if done { format!(r#"{{"type":"length","length":{k}}}"#) } else { "null".into() };
        let counters = if n.no_usage {
            String::new()
        } else {
            format!(r#","prompt_tokens":{p},"completion_tokens":{k},"cached_tokens":0"#)
        };
        format!(
            r#"{{"text":{},"output_ids":[{}],"meta_info":{{"id":"{id}","finish_reason":{fr}{counters},"e2e_latency":0.{}}}}}"#,
            q(&t),
            ids.join(","),
            rand64() % 1000 + 1
        )
    };
    if !stream_flag(n, false) {
        return json(obj(c, true));
    }
    let mut events: Vec<Ev> = (1..=c).map(|k| data_ev(true, &obj(k, k == c))).collect();
    if c == 0 {
        events.push(data_ev(true, &obj(0, true)));
    }
    events.push(data_ev(false, "[DONE]"));
    Answer::Stream { content_type: "text/event-stream; charset=utf-8", events }
}
