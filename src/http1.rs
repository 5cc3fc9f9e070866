//! HTTP/1.1 heads on both sides, parsed with httparse: the client's request head (routing, framing,
//! the headers the gateway reads, the bearer key) and the backend's response head; named limits;
//! hop-by-hop rules.

/// Most headers accepted in one head (client or backend); more is 431 / a broken backend.
pub const MAX_HEADERS: usize = 128;
/// Largest request or response head accepted; larger is 431 / a broken backend.
pub const MAX_HEAD: usize = 32 * 1024;

/// Outcome of parsing a head from the bytes read so far.
#[derive(Debug)]
pub enum Parse<T> {
    Complete(T),
    /// Not all of the head has arrived yet.
    Partial,
    Invalid(Invalid),
}

/// Why a head cannot be used. `error.rs` says it in the gateway's terms: a client's head is a
/// 400 or 431, a backend's a 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Malformed: what is wrong.
    Malformed(&'static str),
    /// Larger than `MAX_HEAD`, or more than `MAX_HEADERS` headers.
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Other,
}

/// How a message body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
    /// Response only: the body ends when the backend closes.
    Close,
}

/// Byte ranges of one header within the head buffer.
#[derive(Debug, Clone, Copy)]
pub struct HeaderSpan {
    pub name: (u32, u32),
    pub value: (u32, u32),
}

impl HeaderSpan {
    pub fn name<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        &head[self.name.0 as usize..self.name.1 as usize]
    }
    pub fn value<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        &head[self.value.0 as usize..self.value.1 as usize]
    }
}

#[derive(Debug)]
pub struct RequestHead {
    pub head_len: usize,
    pub method: Method,
    /// Path and query as sent by the client (`endpoints::Route` says what the path is).
    pub target: String,
    pub http10: bool,
    /// Whether the client wants the connection kept open after this request.
    pub keep_alive: bool,
    pub body: BodyFraming,
    pub expect_continue: bool,
    pub request_id: Option<String>,
    /// The client's API key: `Authorization: Bearer ...` or `x-api-key`.
    pub api_key: Option<Vec<u8>>,
    /// Value of the configured user header.
    pub user_header: Option<String>,
    /// Headers to pass on to the backend (hop-by-hop and the ones the gateway sets removed).
    pub forward: Vec<HeaderSpan>,
}

fn span(base: *const u8, s: &[u8]) -> (u32, u32) {
    let start = s.as_ptr() as usize - base as usize;
    (start as u32, (start + s.len()) as u32)
}

fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Keep-alive after a `Connection` header with `value`, given the version's default.
fn connection_keep_alive(value: &[u8], default: bool) -> bool {
    if has_token(value, b"close") {
        false
    } else {
        has_token(value, b"keep-alive") || default
    }
}

/// True when the comma-separated `list` contains `token` (case-insensitive).
pub fn has_token(list: &[u8], token: &[u8]) -> bool {
    list.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The bearer token of an `Authorization` header value (or an `x-api-key` value as is).
pub fn bearer(value: &[u8]) -> Option<&[u8]> {
    let v = value.trim_ascii();
    if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
        Some(v[7..].trim_ascii())
    } else if v.is_empty() {
        None
    } else {
        Some(v)
    }
}

/// Storage a parsed head can reuse instead of allocating: the header spans' Vec and the target's
/// String of an earlier head (`RequestHead::spare`), kept by the core (`CoreCtx::take_spare`).
#[derive(Debug, Default)]
pub struct Spare {
    pub spans: Vec<HeaderSpan>,
    pub target: String,
}

impl RequestHead {
    /// This head's storage, for the next head to reuse.
    pub fn spare(self) -> Spare {
        Spare { spans: self.forward, target: self.target }
    }
}

/// Parses a client request head from `buf` (which may hold more than the head).
pub fn parse_request(buf: &[u8], user_header: &str) -> Parse<RequestHead> {
    parse_request_into(buf, user_header, Spare::default())
}

/// `parse_request`, filling `spare`'s Vec and String (cleared first) instead of new ones.
pub fn parse_request_into(buf: &[u8], user_header: &str, spare: Spare) -> Parse<RequestHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD { Parse::Invalid(Invalid::TooLarge) } else { Parse::Partial }
        }
        Err(httparse::Error::TooManyHeaders) => return Parse::Invalid(Invalid::TooLarge),
        Err(e) => return Parse::Invalid(Invalid::Malformed(httparse_reason(e))),
    };
    if head_len > MAX_HEAD {
        return Parse::Invalid(Invalid::TooLarge);
    }
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        _ => Method::Other,
    };
    let Spare { spans: mut forward, mut target } = spare;
    target.clear();
    target.push_str(req.path.unwrap_or("/"));
    let http10 = req.version == Some(0);
    let base = buf.as_ptr();
    let mut keep_alive = !http10;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut expect_continue = false;
    let mut request_id = None;
    let mut api_key = None;
    let mut user = None;
    forward.clear();
    forward.reserve(req.headers.len());
    let mut connection_tokens: Option<&[u8]> = None;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = parse_content_length(value) else {
                return Parse::Invalid(Invalid::Malformed("invalid Content-Length"));
            };
            if content_length.is_some_and(|old| old != n) {
                return Parse::Invalid(Invalid::Malformed("conflicting Content-Length headers"));
            }
            content_length = Some(n);
            continue;
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Parse::Invalid(Invalid::Malformed("unsupported Transfer-Encoding"));
            }
            chunked = true;
            continue;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            keep_alive = connection_keep_alive(value, keep_alive);
            connection_tokens = Some(value);
            continue;
        }
        if name.eq_ignore_ascii_case(b"expect") {
            if value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-request-id") {
            let v = value.trim_ascii();
            if !v.is_empty() && v.len() <= 200 && v.iter().all(|b| b.is_ascii_graphic()) {
                request_id = Some(String::from_utf8_lossy(v).into_owned());
            }
            continue;
        }
        let key_header = name.eq_ignore_ascii_case(b"authorization")
            || (name.eq_ignore_ascii_case(b"x-api-key") && api_key.is_none());
        if key_header {
            api_key = bearer(value).map(<[u8]>::to_vec);
        }
        if name.eq_ignore_ascii_case(user_header.as_bytes()) {
            let v = value.trim_ascii();
            if v.len() > crate::request::MAX_NAME_BYTES {
                return Parse::Invalid(Invalid::Malformed("the user header is longer than 1024 bytes"));
            }
            if !v.is_empty() {
                user = Some(String::from_utf8_lossy(v).into_owned());
            }
        }
        if name.eq_ignore_ascii_case(b"host") || is_hop_by_hop(name) {
            continue;
        }
        forward.push(HeaderSpan { name: span(base, name), value: span(base, value) });
    }
    if let Some(tokens) = connection_tokens {
        forward.retain(|h| !has_token(tokens, h.name(buf)));
    }
    if chunked && content_length.is_some() {
        return Parse::Invalid(Invalid::Malformed("both Content-Length and Transfer-Encoding"));
    }
    let body = match (chunked, content_length) {
        (true, _) => BodyFraming::Chunked,
        (false, Some(0)) | (false, None) => BodyFraming::None,
        (false, Some(n)) => BodyFraming::Length(n),
    };
    Parse::Complete(RequestHead {
        head_len,
        method,
        target,
        http10,
        keep_alive,
        body,
        expect_continue,
        request_id,
        api_key,
        user_header: user,
        forward,
    })
}

fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid method or token",
        httparse::Error::Version => "unsupported HTTP version",
        _ => "malformed request head",
    }
}

/// A backend's response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub head_len: usize,
    pub status: u16,
    pub body: BodyFraming,
    /// The backend will keep the connection open after this response.
    pub keep_alive: bool,
    /// `text/event-stream`
    pub is_sse: bool,
    /// Headers to pass on to the client.
    pub forward: Vec<HeaderSpan>,
}

/// Parses a backend response head. `Invalid` means a broken backend (502).
pub fn parse_response(buf: &[u8]) -> Parse<ResponseHead> {
    parse_response_into(buf, Vec::new())
}

/// `parse_response`, filling `forward` (cleared first) instead of a new Vec.
pub fn parse_response_into(buf: &[u8], mut forward: Vec<HeaderSpan>) -> Parse<ResponseHead> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Parse::Partial,
        Ok(httparse::Status::Partial) => return Parse::Invalid(Invalid::TooLarge),
        Err(_) => return Parse::Invalid(Invalid::Malformed("malformed response head from backend")),
    };
    let status = resp.code.unwrap_or(502);
    let base = buf.as_ptr();
    let mut keep_alive = resp.version == Some(1);
    let mut content_length = None;
    let mut chunked = false;
    let mut is_sse = false;
    forward.clear();
    forward.reserve(resp.headers.len());
    let mut connection_tokens: Option<&[u8]> = None;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        if name.eq_ignore_ascii_case(b"content-length") {
            match parse_content_length(value) {
                Some(n) if content_length.is_none_or(|old| old == n) => content_length = Some(n),
                _ => return Parse::Invalid(Invalid::Malformed("invalid Content-Length from backend")),
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if has_token(value, b"chunked") {
                chunked = true;
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            keep_alive = connection_keep_alive(value, keep_alive);
            connection_tokens = Some(value);
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-request-id") || is_hop_by_hop(name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-type") {
            is_sse = value.trim_ascii_start().len() >= 17
                && value.trim_ascii_start()[..17].eq_ignore_ascii_case(b"text/event-stream");
        }
        forward.push(HeaderSpan { name: span(base, name), value: span(base, value) });
    }
    if let Some(tokens) = connection_tokens {
        forward.retain(|h| !has_token(tokens, h.name(buf)));
    }
    let body = if (100..200).contains(&status) || status == 204 || status == 304 {
        BodyFraming::None
    } else if chunked {
        // Both headers: chunked wins (RFC 9112), but the connection cannot be trusted afterwards.
        if content_length.is_some() {
            keep_alive = false;
        }
        BodyFraming::Chunked
    } else if let Some(n) = content_length {
        BodyFraming::Length(n)
    } else {
        keep_alive = false;
        BodyFraming::Close
    };
    Parse::Complete(ResponseHead { head_len, status, body, keep_alive, is_sse, forward })
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        424 => "Failed Dependency",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Appends `Name: value\r\n`.
pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub fn push_status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
#[path = "http1_tests.rs"]
mod tests;
