//! One mock-backend connection: read requests (keep-alive), route them, apply the `x-mock-*` knobs,
//! and write paced, framed answers, noticing a peer that goes away mid-stream.

use super::api::{self, alnum, hex, rand64};
use super::flavor::{self, Ctx, Ev};
use super::http::{http_date, Framing, Out, ReadError, Reader, Request};
use super::{Flavor, RecordedRequest, Shared};
use crate::endpoints::Endpoint;
use crate::http1::{reason, Method};
use serde_json::Value;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const MAX_TOKENS: u32 = 100_000;

enum Next {
    KeepAlive,
    Close,
    Abort,
}

struct Knobs {
    framing: Option<Framing>,
    split: usize,
    status: Option<u16>,
    abort: Option<usize>,
    ttft: Option<Duration>,
    itl: Option<Duration>,
    tokens: Option<u32>,
    no_usage: bool,
    gzip: Option<bool>,
    details: Option<bool>,
    stall: Option<usize>,
    hang_up: bool,
    close_idle: bool,
}

impl Knobs {
    fn parse(r: &Request) -> Knobs {
        let num = |k: &str| r.header(k).and_then(|v| v.parse::<u64>().ok());
        Knobs {
            framing: match r.header("x-mock-framing").map(str::to_ascii_lowercase).as_deref() {
                Some("chunked") => Some(Framing::Chunked),
                Some("length") => Some(Framing::Length),
                Some("close") => Some(Framing::Close),
                _ => None,
            },
            split: num("x-mock-split").unwrap_or(0) as usize,
            status: num("x-mock-status")
                .filter(|c| (100..=999).contains(c) && !(200..300).contains(c))
                .map(|c| c as u16),
            abort: num("x-mock-abort-after").map(|n| n as usize),
            ttft: num("x-mock-ttft-ms").map(Duration::from_millis),
            itl: num("x-mock-itl-ms").map(Duration::from_millis),
            tokens: num("x-mock-tokens").map(|t| t.min(MAX_TOKENS as u64) as u32),
            no_usage: matches!(r.header("x-mock-no-usage"), Some(v) if v != "0" && !v.eq_ignore_ascii_case("false")),
            gzip: r.header("x-mock-gzip").map(|v| v != "0" && !v.eq_ignore_ascii_case("false")),
            details: r.header("x-mock-details").map(|v| v != "0" && !v.eq_ignore_ascii_case("false")),
            stall: num("x-mock-stall-after").map(|n| n as usize),
            hang_up: num("x-mock-hang-up").is_some_and(|v| v != 0),
            close_idle: num("x-mock-close-idle").is_some_and(|v| v != 0),
        }
    }
}

enum Body {
    Json(Vec<u8>, Duration),
    Sse(Vec<Ev>, Duration, Duration),
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

pub(super) fn serve(sh: &Shared, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut reader = Reader::new();
    loop {
        let _ = stream.set_read_timeout(None);
        let req = match reader.read_request(&stream) {
            Ok(r) => r,
            Err(ReadError::Closed) => return,
            Err(ReadError::Bad(msg)) => return refuse(sh, &stream, 400, &msg),
            Err(ReadError::TooLarge(code)) => return refuse(sh, &stream, code, "request too large"),
        };
        sh.record(RecordedRequest {
            method: req.method.clone(),
            path: req.path.clone(),
            headers: req.headers.clone(),
            body: req.body.clone(),
        });
        let knobs = Knobs::parse(&req);
        if knobs.hang_up {
            return graceful_close(&stream);
        }
        let resp = route(sh, &req, &knobs);
        match send(sh, &stream, &req, &knobs, resp) {
            // Framed for keep-alive, then closed: a server whose idle timeout fired.
            Next::KeepAlive if knobs.close_idle => return graceful_close(&stream),
            Next::KeepAlive => continue,
            Next::Close => return graceful_close(&stream),
            Next::Abort => {
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

fn refuse(sh: &Shared, stream: &TcpStream, status: u16, msg: &str) {
    let f = sh.opts.flavor;
    let body = api::error_body(f, status, msg).into_bytes();
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in api::headers(f, false, true, &http_date()) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "{}: {}\r\n{}: close\r\n\r\n",
        hname(f, "content-length"),
        body.len(),
        hname(f, "connection")
    ));
    let mut out = Out { stream, split: 0, framing: Framing::Length };
    if out.raw(head.as_bytes()).and_then(|_| out.raw(&body)).is_ok() {
        graceful_close(stream);
    }
}

/// Send FIN, then drain what the peer still sends so the close is not turned into a reset.
fn graceful_close(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut s = stream;
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

fn hname(f: Flavor, lower: &str) -> String {
    if matches!(f, Flavor::Llamacpp | Flavor::Ollama) {
        let mut up = true;
        lower
            .chars()
            .map(|c| {
                let r = if up { c.to_ascii_uppercase() } else { c };
                up = c == '-';
                r
            })
            .collect()
    } else {
        lower.to_string()
    }
}

fn new_id(f: Flavor, ep: Endpoint) -> String {
    let chat = ep == Endpoint::ChatCompletions;
    match (ep, f) {
        (Endpoint::Responses, _) => format!("resp_{}", hex(48)),
        (Endpoint::Messages, _) => format!("msg_01{}", alnum(22)),
        (_, Flavor::Tgi) => String::new(),
        (_, Flavor::Sglang) => hex(32),
        (_, Flavor::Vllm) if chat => format!("chatcmpl-{}", hex(16)),
        (_, Flavor::Vllm) => format!("cmpl-{}", hex(32)),
        (_, Flavor::Ollama) => format!("{}-{}", if chat { "chatcmpl" } else { "cmpl" }, rand64() % 1000),
        (_, Flavor::Llamacpp) => format!("{}-{}", if chat { "chatcmpl" } else { "cmpl" }, alnum(32)),
        (_, Flavor::Openai) => format!("{}-{}", if chat { "chatcmpl" } else { "cmpl" }, alnum(29)),
    }
}

fn error(f: Flavor, status: u16, msg: &str) -> Resp {
    Resp {
        status,
        headers: api::headers(f, false, true, &http_date()),
        body: Body::Json(api::error_body(f, status, msg).into_bytes(), Duration::ZERO),
    }
}

fn route(sh: &Shared, req: &Request, k: &Knobs) -> Resp {
    let f = sh.opts.flavor;
    if let Some(code) = k.status {
        return error(f, code, &format!("simulated failure (x-mock-status: {code})"));
    }
    let path = req.path.split('?').next().unwrap_or("");
    let ep = match Endpoint::from_path(path) {
        Endpoint::Unknown | Endpoint::Metrics => return error(f, 404, &format!("Not Found: {path}")),
        ep => ep,
    };
    let want = if ep.method() == Method::Get { "GET" } else { "POST" };
    if req.method != want {
        return error(f, 405, &format!("Method {} not allowed on {path}", req.method));
    }
    let date = http_date();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let json = |body: String, delay| Resp {
        status: 200,
        headers: api::headers(f, false, ep == Endpoint::ChatCompletions, &date),
        body: Body::Json(body.into_bytes(), delay),
    };
    match ep {
        Endpoint::Health => {
            return json(
                if f == Flavor::Llamacpp { r#"{"status":"ok"}"#.into() } else { String::new() },
                Duration::ZERO,
            )
        }
        Endpoint::Models => return json(api::models(f, sh.opts.model_id(), now), Duration::ZERO),
        _ => {}
    }
    if !ep.is_core() {
        return native(sh, req, k, ep, now);
    }
    let v: Value = match serde_json::from_slice(&req.body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return error(f, 400, "request body is not a JSON object"),
    };
    let ttft = k.ttft.unwrap_or(sh.opts.ttft);
    let itl = k.itl.unwrap_or(sh.opts.itl);
    let tokens = k.tokens.unwrap_or(sh.opts.tokens.min(MAX_TOKENS));
    let so = v.get("stream_options");
    let flag =
        |o: Option<&Value>, key: &str| o.and_then(|o| o.get(key)).and_then(Value::as_bool) == Some(true);
    let words = |keys: &[&str]| keys.iter().filter_map(|key| v.get(*key)).map(api::count_words).sum::<u32>();
    let prompts = match ep {
        Endpoint::ChatCompletions => vec![words(&["messages"]).max(1)],
        Endpoint::Completions => api::prompt_list(v.get("prompt")),
        Endpoint::Embeddings => api::prompt_list(v.get("input")),
        Endpoint::Responses => vec![words(&["input", "instructions"]).max(1)],
        _ => vec![words(&["messages", "system"]).max(1)],
    };
    let n = match (ep, f) {
        (Endpoint::ChatCompletions | Endpoint::Completions, f) if f != Flavor::Llamacpp => {
            v.get("n").and_then(Value::as_u64).unwrap_or(1).clamp(1, 16) as u32
        }
        _ => 1,
    };
    let c = Ctx {
        flavor: f,
        chat: ep == Endpoint::ChatCompletions,
        model: v
            .get("model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .unwrap_or(sh.opts.model_id())
            .to_string(),
        id: new_id(f, ep),
        created: now,
        tokens,
        prompts,
        n,
        include_usage: flag(so, "include_usage"),
        continuous: flag(so, "continuous_usage_stats"),
        no_usage: k.no_usage,
        details: k.details.unwrap_or(sh.opts.details),
        ttft_ms: ttft.as_secs_f64() * 1000.0,
        itl_ms: itl.as_secs_f64() * 1000.0,
    };
    let gen_time = ttft + itl * tokens;
    if ep == Endpoint::Embeddings {
        return json(api::embeddings(&c), ttft);
    }
    if v.get("stream").and_then(Value::as_bool) != Some(true) {
        let body = match ep {
            Endpoint::Responses => api::responses_body(&c),
            Endpoint::Messages => api::messages_body(&c),
            _ => flavor::body(&c),
        };
        return json(body, gen_time);
    }
    let evs = match ep {
        Endpoint::Responses => api::responses_stream(&c),
        Endpoint::Messages => api::messages_stream(&c),
        _ => flavor::stream(&c),
    };
    Resp {
        status: 200,
        headers: api::headers(f, true, ep == Endpoint::ChatCompletions, &date),
        body: Body::Sse(evs, ttft, itl),
    }
}

/// Wait until `deadline` while watching the socket: false when the peer closed or reset it.
fn wait_until(stream: &TcpStream, deadline: Instant) -> bool {
    let mut b = [0u8; 1];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        if stream.set_read_timeout(Some(deadline - now)).is_err() {
            std::thread::sleep(deadline - now);
            return true;
        }
        match stream.peek(&mut b) {
            Ok(0) => return false,
            Ok(_) => {
                // A pipelined request waits in the socket; it cannot signal EOF, so just sleep.
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                return true;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return false,
        }
    }
}

/// Gzips the body when the server compresses and the request accepts it.
fn compress(sh: &Shared, req: &Request, k: &Knobs, mut resp: Resp) -> Resp {
    if !k.gzip.unwrap_or(sh.opts.gzip) || !super::gzip::accepted(req.header("accept-encoding")) {
        return resp;
    }
    resp.body = match resp.body {
        Body::Json(b, d) => {
            Body::Json(super::gzip::encode_parts(&[&b]).into_iter().next().unwrap_or_default(), d)
        }
        Body::Sse(mut evs, t, i) => {
            let parts: Vec<&[u8]> = evs.iter().map(|e| e.bytes.as_slice()).collect();
            let enc = super::gzip::encode_parts(&parts);
            for (e, z) in evs.iter_mut().zip(enc) {
                e.bytes = z;
            }
            Body::Sse(evs, t, i)
        }
    };
    resp.headers.push(("content-encoding".into(), "gzip".into()));
    resp.headers.push(("vary".into(), "Accept-Encoding".into()));
    resp
}

fn send(sh: &Shared, stream: &TcpStream, req: &Request, k: &Knobs, resp: Resp) -> Next {
    let resp = compress(sh, req, k, resp);
    let f = sh.opts.flavor;
    let sse = matches!(resp.body, Body::Sse(..));
    let mut framing = k.framing.unwrap_or(if sse { Framing::Chunked } else { Framing::Length });
    if req.version == 0 && framing == Framing::Chunked {
        framing = Framing::Close;
    }
    let closing = framing == Framing::Close || req.wants_close();
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (name, value) in &resp.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let len = match &resp.body {
        Body::Json(b, _) => b.len(),
        Body::Sse(evs, ..) => evs.iter().map(|e| e.bytes.len()).sum(),
    };
    match framing {
        Framing::Chunked => head.push_str(&format!("{}: chunked\r\n", hname(f, "transfer-encoding"))),
        Framing::Length => head.push_str(&format!("{}: {len}\r\n", hname(f, "content-length"))),
        Framing::Close => {}
    }
    if closing {
        head.push_str(&format!("{}: close\r\n", hname(f, "connection")));
    }
    head.push_str("\r\n");
    let mut out = Out { stream, split: k.split, framing };
    let start = Instant::now();
    // A JSON answer exists only once generation is over; a stream's head goes out at once.
    if let Body::Json(_, delay) = &resp.body {
        if !wait_until(stream, start + *delay) {
            return Next::Abort;
        }
    }
    if out.raw(head.as_bytes()).is_err() {
        return Next::Abort;
    }
    let peer_gone = |sh: &Shared| {
        if !sh.killed.load(Ordering::SeqCst) {
            sh.aborted.fetch_add(1, Ordering::SeqCst);
        }
        Next::Abort
    };
    match resp.body {
        Body::Json(body, _) => {
            if let Some(n) = k.abort {
                let _ = out.part(&body[..n.min(body.len())]);
                return Next::Abort;
            }
            if out.part(&body).and_then(|_| out.finish()).is_err() {
                return Next::Abort;
            }
        }
        Body::Sse(evs, ttft, itl) => {
            let mut deadline = start + ttft;
            for (i, ev) in evs.iter().enumerate() {
                if k.abort == Some(i) {
                    return Next::Abort;
                }
                if k.stall == Some(i) {
                    // Silent until the peer gives up on us (or the mock is killed).
                    while wait_until(stream, Instant::now() + Duration::from_secs(3600)) {}
                    return peer_gone(sh);
                }
                if i > 0 && ev.paced {
                    deadline += itl;
                }
                if !wait_until(stream, deadline) || out.part(&ev.bytes).is_err() {
                    return peer_gone(sh);
                }
            }
            if k.abort == Some(evs.len()) {
                return Next::Abort;
            }
            if out.finish().is_err() {
                return peer_gone(sh);
            }
        }
    }
    if closing {
        Next::Close
    } else {
        Next::KeepAlive
    }
}

/// A CONTRACT 12 path (rerank, audio, native APIs...), answered by `native.rs`.
fn native(sh: &Shared, req: &Request, k: &Knobs, ep: Endpoint, now: u64) -> Resp {
    let f = sh.opts.flavor;
    let ct = req.header("content-type").unwrap_or("");
    let v: Option<Value> = if ct.to_ascii_lowercase().starts_with("multipart/") {
        None
    } else {
        match serde_json::from_slice(&req.body) {
            Ok(v @ (Value::Object(_) | Value::Array(_))) => Some(v),
            _ => return error(f, 400, "request body is not a JSON object"),
        }
    };
    let model = v.as_ref().and_then(|v| v.get("model")).and_then(Value::as_str).filter(|m| !m.is_empty());
    let form_model;
    let model = match model {
        Some(m) => m,
        None if v.is_none() => {
            form_model = crate::endpoints::multipart::boundary(ct.as_bytes())
                .and_then(|b| crate::endpoints::multipart::scan(&req.body, b))
                .ok()
                .and_then(|i| i.model);
            form_model.as_deref().unwrap_or(sh.opts.model_id())
        }
        None => sh.opts.model_id(),
    };
    let n = super::native::Native {
        flavor: f,
        endpoint: ep,
        json: v.as_ref(),
        body: &req.body,
        content_type: ct,
        model,
        tokens: k.tokens.unwrap_or(sh.opts.tokens.min(MAX_TOKENS)),
        no_usage: k.no_usage,
        created: now,
    };
    let ttft = k.ttft.unwrap_or(sh.opts.ttft);
    let itl = k.itl.unwrap_or(sh.opts.itl);
    let headers = |ct: &str| {
        let mut h = api::headers(f, false, false, &http_date());
        for (name, value) in h.iter_mut() {
            if name.eq_ignore_ascii_case("content-type") {
                *value = ct.to_string();
            }
        }
        h
    };
    use super::native::Answer;
    match super::native::answer(&n) {
        Answer::NotServed => error(f, 404, &format!("Not Found: {}", ep.path())),
        Answer::Bad(m) => error(f, 400, &m),
        Answer::Json { content_type, body } => {
            Resp { status: 200, headers: headers(content_type), body: Body::Json(body.into_bytes(), ttft) }
        }
        Answer::Stream { content_type, events } => {
            Resp { status: 200, headers: headers(content_type), body: Body::Sse(events, ttft, itl) }
        }
    }
}
