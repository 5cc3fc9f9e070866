//! One error type at the request boundary: every way the gateway itself can answer a request, with
//! its HTTP status, OpenAI-style JSON body, the headers it carries (`allow`, `retry-after`), and
//! whether the client connection must close after it. Gateway headers for the subject (e.g. the
//! `x-ratelimit-*` block) are passed in as ready header lines.

use crate::http1::{push_header, push_status_line, Invalid};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// Malformed HTTP or request body (400); the connection closes when framing is in doubt.
    BadRequest(&'static str),
    Unauthorized,
    NotFound,
    /// Known path, wrong method (405); `allow` is the method to use.
    MethodNotAllowed(&'static str),
    /// The head did not arrive within `header_read_timeout`, or the body stalled: no body bytes for
    /// `header_read_timeout` between two reads.
    RequestTimeout,
    PayloadTooLarge,
    HeadTooLarge,
    /// No backend serves the requested model.
    ModelNotFound,
    /// The backend could not be reached or broke the protocol (502).
    BadGateway(&'static str),
    /// Every backend that could serve the request is marked down (503).
    NoHealthyBackend,
    /// The backend did not answer in time (504).
    GatewayTimeout,
    /// Shutting down or `max_connections` reached (503).
    Overloaded,
    /// A limit of the caller would be passed (429); `budget`: the daily token budget. Carries
    /// `retry-after` (whole seconds).
    RateLimited {
        budget: bool,
        retry_after: u32,
    },
    /// The shared limit store (Redis) is unreachable and `on_store_error = "deny"` (503).
    LimitStoreUnavailable,
}

impl GatewayError {
    /// A client's request head that cannot be used: 431 when too large, else 400.
    pub fn request_head(why: Invalid) -> GatewayError {
        match why {
            Invalid::TooLarge => GatewayError::HeadTooLarge,
            Invalid::Malformed(m) => GatewayError::BadRequest(m),
        }
    }

    /// A backend's response head that cannot be used: a broken backend (502).
    pub fn response_head(why: Invalid) -> GatewayError {
        match why {
            Invalid::TooLarge => GatewayError::BadGateway("backend response head too large"),
            Invalid::Malformed(m) => GatewayError::BadGateway(m),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            GatewayError::BadRequest(_) => 400,
            GatewayError::Unauthorized => 401,
            GatewayError::NotFound | GatewayError::ModelNotFound => 404,
            GatewayError::MethodNotAllowed(_) => 405,
            GatewayError::RequestTimeout => 408,
            GatewayError::PayloadTooLarge => 413,
            GatewayError::HeadTooLarge => 431,
            GatewayError::RateLimited { .. } => 429,
            GatewayError::LimitStoreUnavailable => 503,
            GatewayError::BadGateway(_) => 502,
            GatewayError::NoHealthyBackend | GatewayError::Overloaded => 503,
            GatewayError::GatewayTimeout => 504,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(_)
            | GatewayError::PayloadTooLarge
            | GatewayError::HeadTooLarge
            | GatewayError::RequestTimeout
            | GatewayError::MethodNotAllowed(_) => "invalid_request_error",
            GatewayError::Unauthorized => "authentication_error",
            GatewayError::NotFound | GatewayError::ModelNotFound => "not_found_error",
            GatewayError::BadGateway(_) | GatewayError::NoHealthyBackend | GatewayError::GatewayTimeout => {
                "upstream_error"
            }
            GatewayError::Overloaded | GatewayError::LimitStoreUnavailable => "overloaded_error",
            GatewayError::RateLimited { .. } => "rate_limit_error",
        }
    }

    fn code(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::Unauthorized => "invalid_api_key",
            GatewayError::NotFound => "not_found",
            GatewayError::ModelNotFound => "model_not_found",
            GatewayError::MethodNotAllowed(_) => "method_not_allowed",
            GatewayError::RequestTimeout => "request_timeout",
            GatewayError::PayloadTooLarge => "request_too_large",
            GatewayError::HeadTooLarge => "header_too_large",
            GatewayError::BadGateway(_) => "bad_gateway",
            GatewayError::NoHealthyBackend => "no_healthy_backend",
            GatewayError::GatewayTimeout => "backend_timeout",
            GatewayError::Overloaded => "overloaded",
            GatewayError::RateLimited { budget: false, .. } => "rate_limit_exceeded",
            GatewayError::RateLimited { budget: true, .. } => "budget_exceeded",
            GatewayError::LimitStoreUnavailable => "rate_limit_store_unavailable",
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(m) | GatewayError::BadGateway(m) => m,
            GatewayError::Unauthorized => "missing or unknown API key",
            GatewayError::NotFound => "no such endpoint on this gateway",
            GatewayError::ModelNotFound => "no backend serves the requested model",
            GatewayError::MethodNotAllowed(_) => "method not allowed for this endpoint",
            GatewayError::RequestTimeout => "request head or body not received in time",
            GatewayError::PayloadTooLarge => "request body larger than limits.max_request_body",
            GatewayError::HeadTooLarge => "request head too large or too many headers",
            GatewayError::NoHealthyBackend => "no healthy backend available",
            GatewayError::GatewayTimeout => "backend did not answer in time",
            GatewayError::Overloaded => "gateway overloaded or shutting down",
            GatewayError::RateLimited { budget: false, .. } => {
                "rate limit exceeded for this API key or user; retry after the time in retry-after"
            }
            GatewayError::RateLimited { budget: true, .. } => {
                "daily token budget exhausted for this API key or user; it resets at 00:00 UTC"
            }
            GatewayError::LimitStoreUnavailable => {
                "the shared rate limit store is unreachable and this gateway denies limited requests meanwhile"
            }
        }
    }

    /// After this error the client connection cannot be trusted (framing unknown) and is closed.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            GatewayError::BadRequest(_)
                | GatewayError::RequestTimeout
                | GatewayError::PayloadTooLarge
                | GatewayError::HeadTooLarge
                | GatewayError::Overloaded
        )
    }

    /// Appends the whole HTTP response for this error.
    pub fn write_response(&self, out: &mut Vec<u8>, ids: &crate::ids::RequestIds, close: bool) {
        self.write_response_with(out, ids, close, &[]);
    }

    /// Appends the whole HTTP response, with `extra` (complete `name: value\r\n` lines) in its head.
    pub fn write_response_with(
        &self,
        out: &mut Vec<u8>,
        ids: &crate::ids::RequestIds,
        close: bool,
        extra: &[u8],
    ) {
        let mut body = Vec::with_capacity(160);
        body.extend_from_slice(b"{\"error\":{\"message\":");
        crate::json::write_str(&mut body, self.message());
        body.extend_from_slice(b",\"type\":\"");
        body.extend_from_slice(self.kind().as_bytes());
        body.extend_from_slice(b"\",\"code\":\"");
        body.extend_from_slice(self.code().as_bytes());
        body.extend_from_slice(b"\"}}\n");
        push_status_line(out, self.status());
        push_header(out, b"content-type", b"application/json");
        let mut n = itoa::Buffer::new();
        push_header(out, b"content-length", n.format(body.len()).as_bytes());
        ids.push_headers(out);
        match self {
            GatewayError::MethodNotAllowed(allow) => push_header(out, b"allow", allow.as_bytes()),
            GatewayError::RateLimited { retry_after, .. } => {
                push_header(out, b"retry-after", n.format(*retry_after).as_bytes())
            }
            GatewayError::LimitStoreUnavailable => push_header(out, b"retry-after", b"1"),
            _ => {}
        }
        out.extend_from_slice(extra);
        if close {
            push_header(out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_is_openai_style_json() {
        let mut out = Vec::new();
        let ids = crate::ids::RequestIds { ours: "req_2".into(), client: Some("req_1".into()) };
        GatewayError::NoHealthyBackend.write_response(&mut out, &ids, false);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("x-request-id: req_1"));
        assert!(head.contains("x-llmproxy-request-id: req_2"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "no_healthy_backend");
        assert_eq!(v["error"]["type"], "upstream_error");
    }

    #[test]
    fn rate_limited_carries_retry_after_and_extra_headers() {
        let mut out = Vec::new();
        let e = GatewayError::RateLimited { budget: true, retry_after: 7 };
        let ids = crate::ids::RequestIds { ours: "req_1".into(), client: None };
        e.write_response_with(&mut out, &ids, false, b"x-ratelimit-limit-tokens: 5\r\n");
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{head}");
        assert!(head.contains("\r\nretry-after: 7\r\n"), "{head}");
        assert!(head.ends_with("\r\nx-ratelimit-limit-tokens: 5"), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "budget_exceeded");
        assert_eq!(v["error"]["type"], "rate_limit_error");
    }
}
