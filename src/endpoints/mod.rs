//! Endpoints beyond chat and completions (CONTRACT 12): the route table, and the pure parsers the
//! proxy needs for them: the line scanner for NDJSON and native SSE streams with the native usage
//! extractors, and the multipart form reader for audio requests. No I/O; used on core threads.

pub mod lines;
pub mod multipart;
pub mod native;
pub mod routes;

pub use lines::LineScanner;
pub use routes::{Endpoint, PathSet, Route, Shape};

use crate::http1::RequestHead;
use crate::request::RequestInfo;

/// What the proxy reads from a request body of any routed endpoint.
#[derive(Debug, Default)]
pub struct Scanned {
    pub info: RequestInfo,
    /// The request asks for a stream, with the API's default when it does not say.
    pub stream: bool,
}

/// Reads the gateway's fields from a request: the JSON body, or for audio the multipart form
/// (`model`, `stream`). A body that is neither is an error (400).
pub fn scan_request(
    endpoint: Endpoint,
    head: &RequestHead,
    head_bytes: &[u8],
    body: &[u8],
) -> Result<Scanned, &'static str> {
    if endpoint.shape() == Shape::Audio {
        let ct = head
            .forward
            .iter()
            .find(|h| h.name(head_bytes).eq_ignore_ascii_case(b"content-type"))
            .map_or(&b""[..], |h| h.value(head_bytes));
        let form = multipart::boundary(ct).and_then(|b| multipart::scan(body, b)).map_err(|e| e.0)?;
        let mut info = RequestInfo::default();
        info.model = form.model;
        return Ok(Scanned { info, stream: form.stream });
    }
    let info = crate::request::scan(body).map_err(|e| e.0)?;
    // Ollama's native API streams unless `"stream": false`; the OpenAI-style ones only when asked.
    let stream = info.streams(endpoint.streams_by_default());
    Ok(Scanned { info, stream })
}

/// Whether a backend response is NDJSON (`application/x-ndjson`, Ollama's native streams).
pub fn is_ndjson(resp: &crate::http1::ResponseHead, head_bytes: &[u8]) -> bool {
    resp.forward.iter().any(|h| {
        h.name(head_bytes).eq_ignore_ascii_case(b"content-type") && {
            let v = h.value(head_bytes).trim_ascii_start();
            v.len() >= 20 && v[..20].eq_ignore_ascii_case(b"application/x-ndjson")
        }
    })
}

/// Whether the body of a response of `shape` is scanned by [`LineScanner`] (native shapes, rerank,
/// and audio JSON bodies) rather than by the OpenAI-style scanners.
pub fn uses_line_scanner(shape: Shape, sse: bool) -> bool {
    match shape {
        Shape::Ollama | Shape::Llamacpp | Shape::Sglang | Shape::Rerank => true,
        Shape::Audio => !sse,
        _ => false,
    }
}
