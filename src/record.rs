//! The usage record of CONTRACT section 5: one per proxied request, built on the core thread when the
//! request ends and handed to the webhook thread, which serializes and delivers it.

use serde::{Deserialize, Serialize};

/// How a proxied request ended, as billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// The backend's full response reached the client.
    Ok,
    /// The client went away before the response ended.
    ClientDisconnected,
    /// The backend failed, broke off or timed out; `http_status` says what the client saw.
    BackendError,
    /// The gateway refused the request (auth, no backend, bad body) before a backend saw it.
    Rejected,
}

/// One usage record. The first eleven fields are the original design's and keep its names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Present (and true) only when the backend reported no usage at all.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub usage_missing: bool,
}

impl UsageRecord {
    /// A record as JSON, for the webhook body and the spool.
    pub fn to_json(&self) -> String {
        // Serializing plain strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
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
        let back: UsageRecord = serde_json::from_str(&j).unwrap();
        assert_eq!(back, r);
    }
}
