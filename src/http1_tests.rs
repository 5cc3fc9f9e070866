//! Unit tests of request and response head parsing: limits, framing conflicts, hop-by-hop headers.

use super::*;
use crate::error::GatewayError;

fn req(text: &str) -> Parse<RequestHead> {
    parse_request(text.as_bytes(), "x-user-id")
}

fn complete(text: &str) -> RequestHead {
    match req(text) {
        Parse::Complete(h) => h,
        other => panic!("expected complete, got {other:?}"),
    }
}

fn invalid(text: &str) -> GatewayError {
    match req(text) {
        Parse::Invalid(e) => GatewayError::request_head(e),
        other => panic!("expected invalid, got {other:?}"),
    }
}

#[test]
fn parses_a_chat_request() {
    let t = "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Length: 12\r\nAuthorization: Bearer sk-1\r\nX-User-Id: bob\r\nX-Request-Id: abc\r\nUser-Agent: t\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n\r\n{\"a\":1}";
    let h = complete(t);
    assert_eq!(crate::endpoints::Endpoint::from_path(&h.target), crate::endpoints::Endpoint::ChatCompletions);
    assert_eq!(h.method, Method::Post);
    assert_eq!(h.body, BodyFraming::Length(12));
    assert_eq!(h.api_key.as_deref(), Some(&b"sk-1"[..]));
    assert_eq!(h.user_header.as_deref(), Some("bob"));
    assert_eq!(h.request_id.as_deref(), Some("abc"));
    assert!(h.keep_alive);
    let names: Vec<String> =
        h.forward.iter().map(|s| String::from_utf8_lossy(s.name(t.as_bytes())).to_lowercase()).collect();
    assert_eq!(names, ["authorization", "x-user-id", "user-agent"]);
    assert_eq!(h.head_len, t.len() - 7);
}

#[test]
fn partial_until_blank_line() {
    assert!(matches!(req("POST /v1/completions HTTP/1.1\r\nHost: x\r\n"), Parse::Partial));
}

#[test]
fn conflicting_framing_is_rejected() {
    assert_eq!(
        invalid("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
        GatewayError::BadRequest("both Content-Length and Transfer-Encoding")
    );
    assert_eq!(
        invalid("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
        GatewayError::BadRequest("conflicting Content-Length headers")
    );
    assert_eq!(
        invalid("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
        GatewayError::BadRequest("invalid Content-Length")
    );
    assert_eq!(
        invalid("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
        GatewayError::BadRequest("unsupported Transfer-Encoding")
    );
    // Same value twice is allowed.
    assert_eq!(
        complete("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n").body,
        BodyFraming::Length(3)
    );
}

#[test]
fn too_large_heads_are_431() {
    let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n", "a".repeat(MAX_HEAD + 10));
    assert_eq!(invalid(&big), GatewayError::HeadTooLarge);
    let mut many = String::from("GET / HTTP/1.1\r\n");
    for i in 0..MAX_HEADERS + 1 {
        many += &format!("X-{i}: v\r\n");
    }
    many += "\r\n";
    assert_eq!(invalid(&many), GatewayError::HeadTooLarge);
}

#[test]
fn garbage_is_400() {
    assert!(matches!(invalid("\x01\x02 nonsense\r\n\r\n"), GatewayError::BadRequest(_)));
    assert!(matches!(invalid("GET / HTTP/2.0\r\n\r\n"), GatewayError::BadRequest(_)));
}

#[test]
fn http10_defaults_to_close() {
    let h = complete("GET /health HTTP/1.0\r\n\r\n");
    assert!(h.http10 && !h.keep_alive);
    let h = complete("GET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(!h.keep_alive);
}

#[test]
fn response_framing() {
    let t = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\nX-Request-Id: theirs\r\nServer: uvicorn\r\n\r\n";
    let Parse::Complete(r) = parse_response(t) else { panic!() };
    assert_eq!(r.body, BodyFraming::Chunked);
    assert!(r.is_sse && r.keep_alive);
    let names: Vec<&[u8]> = r.forward.iter().map(|s| s.name(t)).collect();
    assert_eq!(names, [&b"Content-Type"[..], b"Server"]);

    let Parse::Complete(r) = parse_response(b"HTTP/1.1 200 OK\r\n\r\n") else { panic!() };
    assert_eq!(r.body, BodyFraming::Close);
    assert!(!r.keep_alive);
    let Parse::Complete(r) = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n") else { panic!() };
    assert_eq!(r.body, BodyFraming::None);
    let Parse::Complete(r) = parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi") else {
        panic!()
    };
    assert_eq!(r.body, BodyFraming::Length(2));
    assert!(!r.keep_alive);
    assert!(matches!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"), Parse::Invalid(_)));
    assert!(matches!(parse_response(b"garbage\r\n\r\n"), Parse::Invalid(_)));
}

#[test]
fn bearer_parsing() {
    assert_eq!(bearer(b"Bearer sk-1"), Some(&b"sk-1"[..]));
    assert_eq!(bearer(b"bearer   sk-1 "), Some(&b"sk-1"[..]));
    assert_eq!(bearer(b"sk-raw"), Some(&b"sk-raw"[..]));
    assert_eq!(bearer(b"  "), None);
}

/// The user header's value is copied into records and limit subjects: past 1,024 bytes the head is
/// refused (400), at the limit it is read.
#[test]
fn a_user_header_longer_than_the_limit_is_refused() {
    let at = "u".repeat(crate::request::MAX_NAME_BYTES);
    let h = complete(&format!("GET /health HTTP/1.1\r\nHost: gw\r\nX-User-Id: {at}\r\n\r\n"));
    assert_eq!(h.user_header.map(|u| u.len()), Some(crate::request::MAX_NAME_BYTES));
    let e = invalid(&format!("GET /health HTTP/1.1\r\nHost: gw\r\nX-User-Id: {at}u\r\n\r\n"));
    assert_eq!(e.status(), 400);
    assert_eq!(e.message(), "the user header is longer than 1024 bytes");
}
