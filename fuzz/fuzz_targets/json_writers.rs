//! The hand-written JSON writers on any strings: `json::push_str` and `UsageRecord::to_json` write
//! byte for byte what serde_json writes (the webhook's receivers parse them), and an access-log
//! line parses back to the fields it was given.
#![no_main]
use libfuzzer_sys::fuzz_target;
use llmproxy::usage::record::{RecordStatus, UsageRecord, UsageSource};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\u{1}');
    let mut next = || parts.next().map(str::to_string);
    let s = next().unwrap_or_default();
    let mut o = String::new();
    llmproxy::json::push_str(&mut o, &s);
    assert_eq!(o, serde_json::to_string(&s).expect("a str serializes"));

    let n = data.len() as u64;
    let r = UsageRecord {
        request_id: s.clone(),
        user_id: next(),
        api_key: next(),
        model: next(),
        prompt_tokens: n.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        completion_tokens: n,
        total_tokens: u64::MAX - n,
        is_stream: n.is_multiple_of(2),
        endpoint: next().unwrap_or_default(),
        timestamp: next().unwrap_or_default(),
        backend_url: next(),
        status: [RecordStatus::Ok, RecordStatus::ClientDisconnected, RecordStatus::BackendError]
            [n as usize % 3],
        http_status: (n % 600) as u16,
        duration_ms: n,
        ttft_ms: n.is_multiple_of(3).then_some(n),
        audio_seconds: n.is_multiple_of(5).then(|| n as f64 / 7.0),
        cached_tokens: (n % 2 == 1).then_some(n),
        cache_creation_tokens: None,
        reasoning_tokens: Some(n / 2),
        usage_source: [UsageSource::Final, UsageSource::Partial, UsageSource::Estimated][n as usize % 3],
        client_request_id: next(),
        usage_missing: n.is_multiple_of(7),
    };
    assert_eq!(r.to_json(), serde_json::to_string(&r).expect("a record serializes"));

    let e = llmproxy::access_log::Entry {
        time: std::time::SystemTime::UNIX_EPOCH,
        request_id: r.request_id.clone(),
        client_request_id: r.client_request_id.clone(),
        client_addr: None,
        method: "POST",
        path: r.endpoint.clone(),
        status: r.http_status,
        bytes_out: n,
        duration_ms: n,
        ttft_ms: r.ttft_ms,
        backend_url: r.backend_url.clone(),
        model: r.model.clone(),
        user_id: r.user_id.clone(),
        prompt_tokens: n,
        completion_tokens: n,
        error: None,
    };
    let mut line = String::new();
    llmproxy::access_log::format(&e, &mut line);
    let v: serde_json::Value = serde_json::from_str(&line).expect("an access-log line is JSON");
    assert_eq!(v["request_id"], e.request_id.as_str());
    assert_eq!(v["path"], e.path.as_str());
    assert_eq!(v["model"].as_str(), e.model.as_deref());
    assert_eq!(v["user_id"].as_str(), e.user_id.as_deref());
    assert_eq!(v["client_request_id"].as_str(), e.client_request_id.as_deref());
});
