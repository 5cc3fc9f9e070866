//! Table tests of the native extractors, on objects shaped as each server writes them.

use super::*;

fn fin(p: Option<u64>, c: Option<u64>) -> Seen {
    Seen::Final { prompt: p, completion: c, audio_seconds: None }
}

#[test]
fn ollama_objects() {
    let table: &[(&str, Seen)] = &[
        (
            r#"{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant","content":"The"},"done":false}"#,
            Seen::Ordinary { content: true },
        ),
        (
            r#"{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00","message":{"role":"assistant","content":""},"done":false}"#,
            Seen::Ordinary { content: false },
        ),
        (
            r#"{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","response":"The","done":false}"#,
            Seen::Ordinary { content: true },
        ),
        (
            r#"{"model":"qwen3","created_at":"x","message":{"role":"assistant","content":"","thinking":"Hmm"},"done":false}"#,
            Seen::Ordinary { content: true },
        ),
        (
            r#"{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","message":{"role":"assistant","content":""},"done_reason":"stop","done":true,"total_duration":4883583458,"load_duration":1334875,"prompt_eval_count":26,"prompt_eval_duration":342546000,"eval_count":282,"eval_duration":4535599000}"#,
            fin(Some(26), Some(282)),
        ),
        (
            r#"{"model":"llama3.2","created_at":"x","response":"","done":true,"context":[1,2,3],"total_duration":10706818083,"load_duration":6338219291,"prompt_eval_count":26,"prompt_eval_duration":130079000,"eval_count":259,"eval_duration":4232710000}"#,
            fin(Some(26), Some(259)),
        ),
        // A cached prompt: Ollama leaves the zero counter out.
        (r#"{"model":"m","created_at":"x","response":"","done":true,"eval_count":3}"#, fin(Some(0), Some(3))),
        (
            r#"{"model":"all-minilm","embeddings":[[0.010071029,-0.0017594862]],"total_duration":14143917,"load_duration":1019500,"prompt_eval_count":8}"#,
            fin(Some(8), Some(0)),
        ),
        (r#"{"error":"model \"nope\" not found, try pulling it first"}"#, Seen::Error),
        // A message that talks about the counters is still an ordinary line.
        (
            r#"{"model":"m","created_at":"x","message":{"role":"assistant","content":"\"eval_count\":9, \"done\":true"},"done":false}"#,
            Seen::Ordinary { content: true },
        ),
        (r#"{"status":"success"}"#, Seen::Other),
        ("", Seen::Other),
    ];
    for (obj, want) in table {
        assert_eq!(inspect(Shape::Ollama, obj.as_bytes()), *want, "{obj}");
    }
}

#[test]
fn llamacpp_objects() {
    let table: &[(&str, Seen)] = &[
        (
            r#"{"index":0,"content":" Paris","tokens":[],"stop":false,"id_slot":-1,"tokens_predicted":1,"tokens_evaluated":5}"#,
            Seen::Running { content: true, prompt: 5, completion: 1 },
        ),
        (r#"{"content":"","stop":false}"#, Seen::Ordinary { content: false }),
        (
            r#"{"content":"","generation_settings":{"n_predict":16},"id_slot":0,"index":0,"model":"gpt-3.5-turbo","prompt":"<s> Hello","stop":true,"stop_type":"limit","stopping_word":"","timings":{"predicted_n":16,"prompt_n":5},"tokens_cached":20,"tokens_evaluated":5,"tokens_predicted":16,"truncated":false}"#,
            fin(Some(5), Some(16)),
        ),
        (
            r#"{"error":{"code":400,"message":"the request exceeds the available context size","type":"exceed_context_size_error"}}"#,
            Seen::Error,
        ),
    ];
    for (obj, want) in table {
        assert_eq!(inspect(Shape::Llamacpp, obj.as_bytes()), *want, "{obj}");
    }
}

#[test]
fn sglang_objects() {
    let table: &[(&str, Seen)] = &[
        (
            r#"{"text":" Paris","output_ids":[12095],"meta_info":{"id":"a1","finish_reason":null,"prompt_tokens":7,"completion_tokens":1,"cached_tokens":0}}"#,
            Seen::Running { content: true, prompt: 7, completion: 1 },
        ),
        (
            r#"{"text":"","output_ids":[],"meta_info":{"id":"a1","finish_reason":null}}"#,
            Seen::Ordinary { content: false },
        ),
        (
            r#"{"text":" Paris is","output_ids":[12095,374],"meta_info":{"id":"a1","finish_reason":{"type":"length","length":2},"prompt_tokens":7,"weight_version":"default","completion_tokens":2,"cached_tokens":0,"e2e_latency":0.1}}"#,
            fin(Some(7), Some(2)),
        ),
        (
            r#"[{"text":"a","meta_info":{"finish_reason":{"type":"stop"},"prompt_tokens":3,"completion_tokens":1}},{"text":"b","meta_info":{"finish_reason":{"type":"stop"},"prompt_tokens":4,"completion_tokens":2}}]"#,
            fin(Some(7), Some(3)),
        ),
        (
            r#"{"object":"error","message":"bad","type":"BadRequestError","param":null,"code":400}"#,
            Seen::Error,
        ),
    ];
    for (obj, want) in table {
        assert_eq!(inspect(Shape::Sglang, obj.as_bytes()), *want, "{obj}");
    }
}

#[test]
fn audio_objects() {
    let table: &[(&str, Seen)] = &[
        (
            r#"{"text":"Hello there.","usage":{"type":"duration","seconds":3}}"#,
            Seen::Final { prompt: None, completion: None, audio_seconds: Some(3.0) },
        ),
        (
            r#"{"text":"Hi","usage":{"type":"duration","seconds":2.5}}"#,
            Seen::Final { prompt: None, completion: None, audio_seconds: Some(2.5) },
        ),
        (
            r#"{"text":"Hi","usage":{"type":"tokens","input_tokens":14,"input_token_details":{"text_tokens":0,"audio_tokens":14},"output_tokens":45,"total_tokens":59}}"#,
            Seen::Final { prompt: Some(14), completion: Some(45), audio_seconds: None },
        ),
        (r#"{"text":"no usage here"}"#, Seen::Other),
        (r#"{"error":{"message":"bad","type":"BadRequestError","param":null,"code":400}}"#, Seen::Error),
    ];
    for (obj, want) in table {
        assert_eq!(inspect(Shape::Audio, obj.as_bytes()), *want, "{obj}");
    }
}

#[test]
fn keys_with_spaces_and_odd_values() {
    assert_eq!(int_value(br#"{"a" : 12 }"#, b"\"a\""), Some(12));
    assert_eq!(int_value(br#"{"a":-1}"#, b"\"a\""), None);
    assert_eq!(int_value(br#"{"a":1.5}"#, b"\"a\""), None);
    assert_eq!(int_value(br#"{"b":"a","a":3}"#, b"\"a\""), Some(3));
    assert_eq!(int_value(br#"{"a":99999999999999999999999}"#, b"\"a\""), None);
    // Every prefix of a final object is handled without a panic.
    let full = br#"{"model":"m","done":true,"prompt_eval_count":26,"eval_count":282}"#;
    for k in 0..full.len() {
        for s in [Shape::Ollama, Shape::Llamacpp, Shape::Sglang, Shape::Audio] {
            let _ = inspect(s, &full[..k]);
        }
    }
}

#[test]
fn rerank_objects() {
    let table: &[(&str, Seen)] = &[
        (
            r#"{"id":"rerank-1","model":"BAAI/bge-reranker-base","usage":{"total_tokens":56},"results":[{"index":1,"document":{"text":"Paris"},"relevance_score":0.99}]}"#,
            fin(Some(56), Some(0)),
        ),
        (r#"{"results":[],"usage":{"prompt_tokens":9,"total_tokens":9}}"#, fin(Some(9), Some(0))),
        (
            r#"[{"score":0.9,"document":"a","index":0,"meta_info":{"id":"x","prompt_tokens":5}},{"score":0.1,"document":"b","index":1,"meta_info":{"id":"y","prompt_tokens":7}}]"#,
            fin(Some(12), Some(0)),
        ),
        (r#"[{"index":0,"score":0.99},{"index":1,"score":0.01}]"#, Seen::Other),
    ];
    for (obj, want) in table {
        assert_eq!(inspect(Shape::Rerank, obj.as_bytes()), *want, "{obj}");
    }
}
