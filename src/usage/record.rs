//! The usage record of CONTRACT section 5: one per proxied request, built on the core thread when the
//! request ends and handed to the webhook thread, which serializes and delivers it.

use crate::json::{push_opt_str, push_str};
use serde::{Deserialize, Serialize};

/// How a proxied request ended, as billed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// The backend's 2xx response reached the client whole.
    #[default]
    Ok,
    /// The client went away before the response ended.
    ClientDisconnected,
    /// The backend failed, broke off or timed out; `http_status` says what the client saw.
    BackendError,
    /// No backend could be chosen (none healthy, no backend for the model). Requests refused before
    /// that (auth, malformed HTTP, an invalid body) produce no record: nothing was consumed.
    Rejected,
    /// Cut because `shutdown_grace` ran out; billed like any cut stream.
    GatewayShutdown,
}

/// What the token counts of a record rest on (CONTRACT section 7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    /// The backend's usage for the whole response.
    Final,
    /// Cut stream: the last cumulative usage the backend reported before the cut.
    Partial,
    /// Cut before any usage was reported: content events forwarded, prompt 0.
    Estimated,
    /// Nothing to bill from.
    #[default]
    None,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Final => "final",
            UsageSource::Partial => "partial",
            UsageSource::Estimated => "estimated",
            UsageSource::None => "none",
        }
    }
}

/// One usage record. The first eleven fields are the original design's and keep its names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub request_id: String,
    pub user_id: Option<String>,
    pub api_key: Option<String>,
    pub model: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub is_stream: bool,
    pub endpoint: String,
    /// RFC 3339, UTC, seconds precision: when the request arrived.
    pub timestamp: String,
    pub backend_url: Option<String>,
    pub status: RecordStatus,
    pub http_status: u16,
    pub duration_ms: u64,
    pub ttft_ms: Option<u64>,
    /// `usage.seconds` of an audio transcription/translation answer (CONTRACT 12); else null.
    #[serde(default)]
    pub audio_seconds: Option<f64>,
    pub cached_tokens: Option<u64>,
    pub cache_creation_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    pub usage_source: UsageSource,
    /// The client's `x-request-id`, if it sent one (never used as `request_id`).
    pub client_request_id: Option<String>,
    /// Present (and true) only when the backend reported no usage at all.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub usage_missing: bool,
}

impl RecordStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordStatus::Ok => "ok",
            RecordStatus::ClientDisconnected => "client_disconnected",
            RecordStatus::BackendError => "backend_error",
            RecordStatus::Rejected => "rejected",
            RecordStatus::GatewayShutdown => "gateway_shutdown",
        }
    }
}

impl UsageRecord {
    /// A record as JSON, for the webhook body and the spool: byte for byte what serde_json writes
    /// for the derived `Serialize` (a test holds them equal), written straight into one buffer.
    /// serde_json's generic path was the webhook thread's largest cost (about a sixth of it).
    pub fn to_json(&self) -> String {
        let mut o = String::with_capacity(448 + self.request_id.len());
        o.push_str("{\"request_id\":");
        push_str(&mut o, &self.request_id);
        o.push_str(",\"user_id\":");
        push_opt_str(&mut o, self.user_id.as_deref());
        o.push_str(",\"api_key\":");
        push_opt_str(&mut o, self.api_key.as_deref());
        o.push_str(",\"model\":");
        push_opt_str(&mut o, self.model.as_deref());
        o.push_str(",\"prompt_tokens\":");
        push_u64(&mut o, self.prompt_tokens);
        o.push_str(",\"completion_tokens\":");
        push_u64(&mut o, self.completion_tokens);
        o.push_str(",\"total_tokens\":");
        push_u64(&mut o, self.total_tokens);
        o.push_str(if self.is_stream { ",\"is_stream\":true" } else { ",\"is_stream\":false" });
        o.push_str(",\"endpoint\":");
        push_str(&mut o, &self.endpoint);
        o.push_str(",\"timestamp\":");
        push_str(&mut o, &self.timestamp);
        o.push_str(",\"backend_url\":");
        push_opt_str(&mut o, self.backend_url.as_deref());
        o.push_str(",\"status\":\"");
        o.push_str(self.status.as_str());
        o.push_str("\",\"http_status\":");
        push_u64(&mut o, u64::from(self.http_status));
        o.push_str(",\"duration_ms\":");
        push_u64(&mut o, self.duration_ms);
        o.push_str(",\"ttft_ms\":");
        push_opt_u64(&mut o, self.ttft_ms);
        o.push_str(",\"audio_seconds\":");
        match self.audio_seconds.and_then(|x| serde_json::to_string(&x).ok()) {
            Some(x) => o.push_str(&x),
            None => o.push_str("null"),
        }
        o.push_str(",\"cached_tokens\":");
        push_opt_u64(&mut o, self.cached_tokens);
        o.push_str(",\"cache_creation_tokens\":");
        push_opt_u64(&mut o, self.cache_creation_tokens);
        o.push_str(",\"reasoning_tokens\":");
        push_opt_u64(&mut o, self.reasoning_tokens);
        o.push_str(",\"usage_source\":\"");
        o.push_str(self.usage_source.as_str());
        o.push_str("\",\"client_request_id\":");
        push_opt_str(&mut o, self.client_request_id.as_deref());
        if self.usage_missing {
            o.push_str(",\"usage_missing\":true");
        }
        o.push('}');
        o
    }
}

fn push_u64(o: &mut String, v: u64) {
    o.push_str(itoa::Buffer::new().format(v));
}

fn push_opt_u64(o: &mut String, v: Option<u64>) {
    match v {
        Some(v) => push_u64(o, v),
        None => o.push_str("null"),
    }
}

/// RFC 3339 UTC timestamp with second precision, e.g. `2026-01-14T10:30:00Z`.
pub fn rfc3339_now(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_serializes_with_contract_names() {
        let r = UsageRecord {
            request_id: "req_1".into(),
            user_id: Some("u".into()),
            api_key: None,
            model: Some("m".into()),
            prompt_tokens: 1,
            completion_tokens: 2,
            total_tokens: 3,
            is_stream: true,
            endpoint: "/v1/chat/completions".into(),
            timestamp: rfc3339_now(std::time::UNIX_EPOCH),
            backend_url: Some("http://b".into()),
            status: RecordStatus::ClientDisconnected,
            http_status: 200,
            duration_ms: 5,
            ttft_ms: Some(1),
            audio_seconds: None,
            cached_tokens: None,
            cache_creation_tokens: None,
            reasoning_tokens: Some(2),
            usage_source: UsageSource::Final,
            client_request_id: None,
            usage_missing: false,
        };
        let j = r.to_json();
        assert!(
            j.starts_with(
                r#"{"request_id":"req_1","user_id":"u","api_key":null,"model":"m","prompt_tokens":1"#
            ),
            "{j}"
        );
        assert!(j.contains(r#""timestamp":"1970-01-01T00:00:00Z""#), "{j}");
        assert!(j.contains(r#""status":"client_disconnected""#), "{j}");
        assert!(!j.contains("usage_missing"), "{j}");
        assert!(j.ends_with(r#""cached_tokens":null,"cache_creation_tokens":null,"reasoning_tokens":2,"usage_source":"final","client_request_id":null}"#), "{j}");
        let back: UsageRecord = serde_json::from_str(&j).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn hand_written_json_is_serde_json_byte_for_byte() {
        let strings = crate::json::awkward_strings();
        for (i, s) in strings.iter().enumerate() {
            for missing in [false, true] {
                let r = UsageRecord {
                    request_id: s.to_string(),
                    user_id: (i % 2 == 0).then(|| s.to_string()),
                    api_key: (i % 3 == 0).then(|| format!("k{s}")),
                    model: Some(s.to_string()),
                    prompt_tokens: u64::MAX,
                    completion_tokens: 0,
                    total_tokens: i as u64,
                    is_stream: missing,
                    endpoint: s.to_string(),
                    timestamp: s.to_string(),
                    backend_url: (i % 2 == 1).then(|| s.to_string()),
                    status: [
                        RecordStatus::Ok,
                        RecordStatus::ClientDisconnected,
                        RecordStatus::BackendError,
                        RecordStatus::Rejected,
                        RecordStatus::GatewayShutdown,
                    ][i % 5],
                    http_status: 499,
                    duration_ms: 12,
                    ttft_ms: missing.then_some(3),
                    audio_seconds: None,
                    cached_tokens: missing.then_some(u64::MAX),
                    cache_creation_tokens: (i % 2 == 0).then_some(7),
                    reasoning_tokens: (i % 3 == 0).then_some(0),
                    usage_source: [
                        UsageSource::Final,
                        UsageSource::Partial,
                        UsageSource::Estimated,
                        UsageSource::None,
                    ][i % 4],
                    client_request_id: (i % 2 == 0).then(|| s.to_string()),
                    usage_missing: missing,
                };
                let reference = serde_json::to_string(&r).unwrap();
                assert_eq!(r.to_json(), reference);
            }
        }
    }
}
