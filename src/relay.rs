//! One exchange with a backend on a core thread: send the request, read the response head, then the
//! hot loop relaying backend bytes to the client as they arrive, each read fed to the usage scanner
//! in place (no second copy). It tells a failure before any response byte (`Outcome::Retryable`,
//! `Failed`) from one after; `proxy.rs` decides whether to retry and builds the record.

use crate::chunked::{size_line, ChunkedDecoder};
use crate::core::{CoreCtx, RELAY_BUF};
use crate::error::GatewayError;
use crate::http1::{self, BodyFraming, Parse, RequestHead, ResponseHead};
use crate::net::Stream;
use crate::request::Edit;
use crate::usage::sse::SseScanner;
use crate::usage::{BodyUsageScanner, Usage};
use crate::watch::{Armed, ClientWatch};
use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use std::time::{Duration, Instant};

/// Room before the payload for a chunk-size line.
const PREFIX: usize = 18;
/// Room after the payload for `\r\n0\r\n\r\n`.
const SUFFIX: usize = 7;
const CAP: usize = PREFIX + RELAY_BUF + SUFFIX;

/// The request as it goes to the backend.
pub struct Outgoing<'a> {
    pub head: &'a RequestHead,
    /// The client's head bytes (header spans point into them).
    pub head_bytes: &'a [u8],
    pub body: &'a [u8],
    pub edit: Option<Edit>,
    pub request_id: &'a str,
    /// Whether the client connection may be kept after this response.
    pub client_keep_alive: bool,
    /// Cut usage-only SSE events (the gateway injected include_usage).
    pub strip_usage_only: bool,
}

/// How an exchange ended.
pub enum Outcome {
    /// The response (or part of it) went to the client.
    Relayed(Relayed),
    /// Nothing reached the client; the connection failed (`connect` = could not even connect).
    Retryable { connect: bool, error: GatewayError },
    /// Nothing reached the client; answer with this error, do not retry.
    Failed(GatewayError),
    /// The client went away before any response byte was sent.
    ClientGone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Complete,
    ClientGone,
    /// The backend broke off or went idle too long mid-body.
    BackendBroke,
}

pub struct Relayed {
    pub status: u16,
    pub usage: Option<Usage>,
    pub ttft: Option<Duration>,
    pub end: End,
    /// The client connection can serve another request.
    pub client_reusable: bool,
}

fn build_request(out: &mut Vec<u8>, req: &Outgoing<'_>, backend: &crate::config::BackendConfig) {
    let h = req.head;
    out.extend_from_slice(if h.method == http1::Method::Get { b"GET " } else { b"POST " });
    out.extend_from_slice(backend.base_path.as_bytes());
    out.extend_from_slice(h.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    http1::push_header(out, b"host", backend.host_header.as_bytes());
    for s in &h.forward {
        let name = s.name(req.head_bytes);
        if backend.api_key.is_some()
            && (name.eq_ignore_ascii_case(b"authorization") || name.eq_ignore_ascii_case(b"x-api-key"))
        {
            continue;
        }
        http1::push_header(out, name, s.value(req.head_bytes));
    }
    if let Some(k) = &backend.api_key {
        out.extend_from_slice(b"authorization: Bearer ");
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    http1::push_header(out, b"x-request-id", req.request_id.as_bytes());
    let len = req.edit.map_or(req.body.len(), |e| e.new_len(req.body.len()));
    if h.method != http1::Method::Get || len > 0 {
        let mut n = itoa::Buffer::new();
        http1::push_header(out, b"content-length", n.format(len).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    match req.edit {
        Some(e) => e.apply_into(req.body, out),
        None => out.extend_from_slice(req.body),
    }
}

/// How the body is framed towards the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientFraming {
    Chunked,
    Length,
    Close,
    None,
}

fn build_client_head(
    out: &mut Vec<u8>,
    resp: &ResponseHead,
    resp_bytes: &[u8],
    request_id: &str,
    framing: ClientFraming,
    keep: bool,
    http10: bool,
) {
    http1::push_status_line(out, resp.status);
    for s in &resp.forward {
        http1::push_header(out, s.name(resp_bytes), s.value(resp_bytes));
    }
    http1::push_header(out, b"x-request-id", request_id.as_bytes());
    match (framing, resp.body) {
        (ClientFraming::Chunked, _) => http1::push_header(out, b"transfer-encoding", b"chunked"),
        (ClientFraming::Length, BodyFraming::Length(n)) => {
            let mut b = itoa::Buffer::new();
            http1::push_header(out, b"content-length", b.format(n).as_bytes());
        }
        _ => {}
    }
    if !keep {
        http1::push_header(out, b"connection", b"close");
    } else if http10 {
        // HTTP/1.0 clients keep the connection only when told so.
        http1::push_header(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

/// Body decoding state for the backend's framing.
enum Decoder {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
    Empty,
}

impl Decoder {
    /// Decodes `data` in place; returns (payload length, body done, stray bytes after the body).
    fn decode(&mut self, data: &mut [u8]) -> Result<(usize, bool, bool), GatewayError> {
        match self {
            Decoder::Length(rem) => {
                let p = (data.len() as u64).min(*rem) as usize;
                *rem -= p as u64;
                Ok((p, *rem == 0, data.len() > p))
            }
            Decoder::Chunked(d) => {
                let r = d
                    .decode_in_place(data)
                    .map_err(|_| GatewayError::BadGateway("invalid chunked body from backend"))?;
                Ok((r.payload, r.done, r.consumed < data.len()))
            }
            Decoder::Close => Ok((data.len(), false, false)),
            Decoder::Empty => Ok((0, true, !data.is_empty())),
        }
    }
}

enum Scanner {
    Sse(SseScanner),
    Body(BodyUsageScanner),
}

/// Sends the request on `conn` and relays the response to `client`. On `Relayed` with a complete,
/// reusable exchange the backend connection has been returned to the pool.
#[allow(clippy::too_many_arguments)]
pub async fn exchange(
    ctx: &CoreCtx,
    backend: usize,
    mut conn: Stream,
    client: &mut Stream,
    watch: Option<&ClientWatch>,
    req: &Outgoing<'_>,
    started: Instant,
) -> Outcome {
    let cfg = &ctx.shared.config;
    let bcfg = &ctx.shared.backends.backends[backend];
    let mut out = ctx.take_buf();
    build_request(&mut out, req, bcfg);
    let (res, out) = conn.write_all(out).await;
    ctx.give_buf(out);
    if res.is_err() {
        return Outcome::Retryable {
            connect: false,
            error: GatewayError::BadGateway("backend connection failed while sending"),
        };
    }

    // Response head, within the first-byte timeout, watching the client meanwhile.
    let mut armed = Armed::new(watch);
    let deadline = Instant::now() + cfg.limits.upstream_first_byte_timeout;
    let mut buf = ctx.take_buf();
    buf.reserve(CAP.saturating_sub(buf.capacity()));
    buf.resize(PREFIX, 0);
    let resp = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if buf.len() + 512 >= buf.capacity() - SUFFIX {
            // A head larger than the relay buffer: grow (once in a while), up to the head limit.
            if buf.len() > http1::MAX_HEAD + PREFIX {
                return Outcome::Failed(GatewayError::BadGateway("backend response head too large"));
            }
            buf.reserve(http1::MAX_HEAD + CAP - buf.len());
        }
        let end = buf.capacity() - SUFFIX;
        let start = buf.len();
        let read = armed.until(monoio::time::timeout(left, conn.read(buf.slice_mut(start..end)))).await;
        let (res, b) = match read {
            Err(_) => return Outcome::ClientGone,
            Ok(Err(_)) => return Outcome::Failed(GatewayError::GatewayTimeout),
            Ok(Ok(r)) => r,
        };
        buf = b.into_inner();
        if let Err(e) = &res {
            // A TLS backend that refuses us after the handshake (TLS 1.3: e.g. no client certificate).
            if let Some(why) = crate::net::dial::tls_rejection(e) {
                log::warn!("request_id={} backend {}: TLS: {why}", req.request_id, bcfg.url);
            }
        }
        match res {
            Ok(0) | Err(_) if buf.len() == PREFIX => {
                return Outcome::Retryable {
                    connect: false,
                    error: GatewayError::BadGateway("backend closed the connection"),
                }
            }
            Ok(0) | Err(_) => {
                return Outcome::Failed(GatewayError::BadGateway("backend closed the connection mid-head"))
            }
            Ok(_) => {}
        }
        match http1::parse_response(&buf[PREFIX..]) {
            Parse::Partial => continue,
            Parse::Invalid(e) => return Outcome::Failed(e),
            Parse::Complete(h) if (100..200).contains(&h.status) => {
                // Interim response (e.g. 100 Continue): drop it and read on.
                let rest = PREFIX + h.head_len;
                buf.copy_within(rest.., PREFIX);
                buf.truncate(buf.len() - h.head_len);
                if buf.len() > PREFIX {
                    if let Parse::Complete(h) = http1::parse_response(&buf[PREFIX..]) {
                        break h;
                    }
                }
            }
            Parse::Complete(h) => break h,
        }
    };

    // Client framing and head.
    let sse = resp.is_sse;
    let strip = req.strip_usage_only && sse;
    let http10 = req.head.http10;
    let framing = match resp.body {
        BodyFraming::None => ClientFraming::None,
        BodyFraming::Length(_) if !strip => ClientFraming::Length,
        _ if http10 => ClientFraming::Close,
        _ => ClientFraming::Chunked,
    };
    let mut keep = req.client_keep_alive && framing != ClientFraming::Close;
    let mut pending = ctx.take_buf();
    build_client_head(&mut pending, &resp, &buf[PREFIX..], req.request_id, framing, keep, http10);
    let mut pending = Some(pending);
    let body_at = PREFIX + resp.head_len;
    let body_len = buf.len() - body_at;
    buf.copy_within(body_at.., PREFIX);
    buf.truncate(PREFIX + body_len);

    let mut decoder = match resp.body {
        BodyFraming::Length(n) => Decoder::Length(n),
        BodyFraming::Chunked => Decoder::Chunked(ChunkedDecoder::default()),
        BodyFraming::Close => Decoder::Close,
        BodyFraming::None => Decoder::Empty,
    };
    let mut scanner =
        if sse { Scanner::Sse(SseScanner::new(strip)) } else { Scanner::Body(BodyUsageScanner::default()) };
    let mut ttft = None;
    let mut stray = false;
    let idle = cfg.limits.stream_idle_timeout;
    let end = loop {
        // Decode and scan what is in the buffer.
        let raw_len = buf.len() - PREFIX;
        let (payload, done, extra) = match decoder.decode(&mut buf[PREFIX..PREFIX + raw_len]) {
            Ok(r) => r,
            Err(_) => break End::BackendBroke,
        };
        stray |= extra;
        let (forward, release) = match &mut scanner {
            Scanner::Sse(s) => {
                let f = s.feed(&mut buf[PREFIX..PREFIX + payload]);
                (f.forward, f.release)
            }
            Scanner::Body(s) => {
                s.feed(&buf[PREFIX..PREFIX + payload]);
                (payload, false)
            }
        };
        if release {
            if let Scanner::Sse(s) = &scanner {
                let p = pending.get_or_insert_with(|| ctx.take_buf());
                append_framed(p, s.released(), framing, false);
            }
        }
        if forward > 0 && ttft.is_none() {
            ttft = Some(started.elapsed());
        }
        let mut forward = forward;
        if done {
            if let Scanner::Sse(s) = &mut scanner {
                let tail = s.finish();
                if !tail.is_empty() {
                    // An unterminated last event that was held goes after this read's data.
                    let p = pending.get_or_insert_with(|| ctx.take_buf());
                    append_framed(p, &buf[PREFIX..PREFIX + forward], framing, false);
                    append_framed(p, tail, framing, false);
                    forward = 0;
                    ttft.get_or_insert_with(|| started.elapsed());
                }
            }
        }
        if forward > 0 || done || pending.is_some() {
            let (ok, b) = send(client, buf, forward, done, framing, &mut pending, ctx, idle).await;
            buf = b;
            if !ok {
                break End::ClientGone;
            }
        }
        if done {
            break End::Complete;
        }
        // Read more from the backend.
        buf.truncate(PREFIX);
        let read =
            armed.until(monoio::time::timeout(idle, conn.read(buf.slice_mut(PREFIX..CAP - SUFFIX)))).await;
        let (res, b) = match read {
            Err(_) => {
                buf = ctx.take_buf();
                break End::ClientGone;
            }
            Ok(Err(_)) => {
                buf = ctx.take_buf();
                break End::BackendBroke;
            }
            Ok(Ok(r)) => r,
        };
        buf = b.into_inner();
        match res {
            Ok(0) if matches!(decoder, Decoder::Close) => {
                // End of a close-delimited body.
                decoder = Decoder::Empty;
                buf.truncate(PREFIX);
            }
            Ok(0) | Err(_) => break End::BackendBroke,
            Ok(_) => {}
        }
    };
    if let Some(p) = pending.take() {
        ctx.give_buf(p);
    }
    ctx.give_buf(buf);
    let usage = match &scanner {
        Scanner::Sse(s) => s.usage(),
        Scanner::Body(s) => s.result(),
    };
    if end == End::Complete && resp.keep_alive && !stray && !matches!(resp.body, BodyFraming::Close) {
        ctx.pool.borrow_mut().put(backend, conn);
    }
    if end != End::Complete {
        keep = false;
    }
    Outcome::Relayed(Relayed { status: resp.status, usage, ttft, end, client_reusable: keep })
}

/// Appends `data` framed for the client (a whole chunk when chunked; the terminator when `last`).
fn append_framed(out: &mut Vec<u8>, data: &[u8], framing: ClientFraming, last: bool) {
    if framing == ClientFraming::Chunked {
        if !data.is_empty() {
            let mut p = [0u8; PREFIX];
            let k = size_line(data.len(), &mut p);
            out.extend_from_slice(&p[PREFIX - k..]);
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        if last {
            out.extend_from_slice(b"0\r\n\r\n");
        }
    } else {
        out.extend_from_slice(data);
    }
}

/// Writes `buf[PREFIX..PREFIX + n]` framed (after any pending bytes, in one write).
#[allow(clippy::too_many_arguments)]
async fn send(
    client: &mut Stream,
    mut buf: Vec<u8>,
    n: usize,
    last: bool,
    framing: ClientFraming,
    pending: &mut Option<Vec<u8>>,
    ctx: &CoreCtx,
    timeout: Duration,
) -> (bool, Vec<u8>) {
    if let Some(mut p) = pending.take() {
        append_framed(&mut p, &buf[PREFIX..PREFIX + n], framing, last);
        let r = monoio::time::timeout(timeout, client.write_all(p)).await;
        return match r {
            Ok((Ok(_), p)) => {
                ctx.give_buf(p);
                (true, buf)
            }
            Ok((Err(_), p)) => {
                ctx.give_buf(p);
                (false, buf)
            }
            Err(_) => (false, buf),
        };
    }
    let start = if framing == ClientFraming::Chunked && n > 0 {
        let mut p = [0u8; PREFIX];
        let k = size_line(n, &mut p);
        buf[PREFIX - k..PREFIX].copy_from_slice(&p[PREFIX - k..]);
        PREFIX - k
    } else {
        PREFIX
    };
    buf.truncate(PREFIX + n);
    if framing == ClientFraming::Chunked {
        if n > 0 {
            buf.extend_from_slice(b"\r\n");
        }
        if last {
            buf.extend_from_slice(b"0\r\n\r\n");
        }
    }
    if buf.len() == start {
        return (true, buf);
    }
    match monoio::time::timeout(timeout, client.write_all(buf.slice(start..))).await {
        Ok((Ok(_), s)) => (true, s.into_inner()),
        Ok((Err(_), s)) => (false, s.into_inner()),
        Err(_) => (false, ctx.take_buf()),
    }
}
