//! One client connection on a core: the keep-alive loop (read head within the timeouts, read the
//! body, answer local endpoints or hand over to `proxy`), with pipelined bytes kept for the next
//! request. Every error answer is written here, a proxied request's too (`proxy::Reply::Error`).

use crate::core::CoreCtx;
use crate::deadline::within;
use crate::endpoints::{Endpoint, Route};
use crate::error::GatewayError;
use crate::http1::{self, BodyFraming, Method, Parse, RequestHead};
use crate::ids::RequestIds;
use crate::net::Stream;
use crate::proxy::Reply;
use crate::relay::{BodyAt, RequestBytes};
use crate::snapshot::Snapshot;
use crate::watch::ClientWatch;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::time::Sleep;
use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long an idle keep-alive connection may wait for its next request.
pub const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(75);
/// Read size for client bytes once a request outgrows the first read.
const READ_CHUNK: usize = 4 * 1024;
/// How long a client has to take an answer the gateway writes itself (an error, `/health`,
/// `/metrics`, `/v1/models`): a client that pipelines requests and never reads is closed.
pub const ANSWER_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a Content-Length body's buffer grows by before more of it arrives (the Vec's doubling
/// keeps large bodies to a few copies).
const BODY_RESERVE_STEP: usize = 1 << 20;
/// A connection's input buffer above this size is released after the request.
const KEEP_INBUF: usize = 64 * 1024;

/// Why no request head could be read.
enum HeadError {
    /// Clean close or idle timeout with nothing pending: close quietly.
    Closed,
    /// Answer with this error, then close.
    Answer(GatewayError),
}

/// Serves one client connection until it closes, errs, or the gateway drains; a TLS client then
/// gets a close_notify.
///
/// Plain fns returning `async move` blocks here, not `async fn`s: an async fn keeps each argument
/// twice in its future (the argument and the local it is moved into), and this future is the
/// connection task every open stream keeps (issue 14).
// Not `async fn` on purpose (see above): clippy would fold it back.
#[allow(clippy::manual_async_fn)]
pub fn handle(
    ctx: Rc<CoreCtx>,
    mut client: Stream,
    accepted: Instant,
    peer: Option<SocketAddr>,
) -> impl Future<Output = ()> {
    async move {
        let _open = ctx.connection_opened();
        serve_connection(&ctx, &mut client, accepted, peer).await;
        if client.is_tls() {
            // Boxed: the close future holds the stream and a monoio timer (128-byte aligned);
            // inline, it would align and size every connection's task, TLS or not (issue 14).
            Box::pin(client.close()).await;
        }
    }
}

#[allow(clippy::manual_async_fn)]
fn serve_connection<'a>(
    ctx: &'a CoreCtx,
    client: &'a mut Stream,
    accepted: Instant,
    peer: Option<SocketAddr>,
) -> impl Future<Output = ()> + 'a {
    async move {
        let mut inbuf: Vec<u8> = ctx.take_inbuf();
        let mut watch: Option<ClientWatch> = None;
        let mut since = Some(accepted);
        // The connection's one timer: every read and write deadline of every request on it (head,
        // body, backend's first byte, relay; see `deadline`) resets it instead of creating, boxing
        // and registering a timer of its own. Boxed: a monoio `Sleep` is 640 bytes aligned to 128,
        // and inline it would size the connection task (issue 14).
        let mut timer = Box::pin(monoio::time::sleep(KEEP_ALIVE_IDLE));
        // A head that could not be read is answered after the loop, not inside the match on
        // `read_head`'s result: an await there would keep that result's 160 bytes in the
        // connection task for good (the coroutine layout cannot overlap it with the request's).
        let bad = loop {
            if inbuf.capacity() == 0 {
                // Released while the last response streamed (`relay::RequestBytes::release`).
                inbuf = ctx.take_inbuf();
            }
            let (head, snap) = match read_head(ctx, client, &mut inbuf, timer.as_mut(), since).await {
                Ok(h) => h,
                Err(HeadError::Closed) => break None,
                Err(HeadError::Answer(e)) => break Some(e),
            };
            since = None;
            let inflight = ctx.request_started();
            let keep =
                serve_request(ctx, &snap, client, &mut inbuf, &mut watch, timer.as_mut(), head, peer).await;
            drop(snap);
            drop(inflight);
            if !keep || ctx.shared.shutting_down() {
                break None;
            }
            if inbuf.capacity() > KEEP_INBUF && inbuf.len() <= READ_CHUNK {
                inbuf.shrink_to(READ_CHUNK);
            }
        };
        if let Some(e) = bad {
            answer_bad_head(ctx, client, peer, e).await;
        }
        ctx.give_inbuf(inbuf);
    }
}

/// Answers a head that could not be read (then the connection closes).
async fn answer_bad_head(ctx: &CoreCtx, client: &mut Stream, peer: Option<SocketAddr>, e: GatewayError) {
    let ids = ctx.request_ids(None);
    let t = Instant::now();
    ctx.metrics.request(Endpoint::Unknown, false, None, e.status());
    let n = answer_error(client, &e, &ids, true).await;
    log_local(ctx, &ids, peer, None, t, e.status(), n, Some(e.message()));
}

/// Reads until `inbuf` starts with a complete head. `accepted` is set for the first request (its
/// head timeout counts from accept); later ones first wait up to KEEP_ALIVE_IDLE for a first byte.
/// Returns the head with the config snapshot the request will run on (loaded as its bytes came).
#[allow(clippy::redundant_allocation)]
async fn read_head(
    ctx: &CoreCtx,
    client: &mut Stream,
    inbuf: &mut Vec<u8>,
    mut timer: Pin<&mut Sleep>,
    accepted: Option<Instant>,
) -> Result<(RequestHead, Rc<std::sync::Arc<Snapshot>>), HeadError> {
    let mut snap = ctx.snapshot();
    let header_timeout = snap.config.limits.header_read_timeout;
    let mut deadline = accepted.map(|t| t + header_timeout);
    loop {
        if !inbuf.is_empty() {
            match http1::parse_request_into(inbuf, &snap.config.auth.user_header, ctx.take_spare()) {
                Parse::Complete(h) => return Ok((h, snap)),
                Parse::Invalid(e) => return Err(HeadError::Answer(GatewayError::request_head(e))),
                Parse::Partial => {}
            }
            deadline.get_or_insert_with(|| Instant::now() + header_timeout);
        }
        let wait = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => KEEP_ALIVE_IDLE,
        };
        match read_more(client, inbuf, timer.as_mut(), wait).await {
            // The request runs on the config current when its bytes arrived, not when the
            // keep-alive wait began.
            ReadMore::Data => snap = ctx.snapshot(),
            ReadMore::Eof | ReadMore::Error => return Err(HeadError::Closed),
            ReadMore::TimedOut if inbuf.is_empty() && deadline.is_none() => return Err(HeadError::Closed),
            ReadMore::TimedOut => return Err(HeadError::Answer(GatewayError::RequestTimeout)),
        }
    }
}

enum ReadMore {
    Data,
    Eof,
    Error,
    /// The read was cancelled: the connection must be closed.
    TimedOut,
}

/// Appends at least one byte read from the client to `inbuf`, within `wait` (on the connection's
/// `timer`).
async fn read_more(
    client: &mut Stream,
    inbuf: &mut Vec<u8>,
    mut timer: Pin<&mut Sleep>,
    wait: Duration,
) -> ReadMore {
    if inbuf.capacity() - inbuf.len() < 1024 {
        inbuf.reserve(READ_CHUNK);
    }
    let buf = std::mem::take(inbuf);
    let start = buf.len();
    let end = buf.capacity();
    let (fd, tls) = (client.as_raw_fd(), client.is_tls());
    let mut read = std::pin::pin!(client.read(buf.slice_mut(start..end)));
    match within(timer.as_mut(), wait, read.as_mut()).await {
        Ok((Ok(0), b)) => {
            *inbuf = b.into_inner();
            ReadMore::Eof
        }
        Ok((Ok(_), b)) => {
            *inbuf = b.into_inner();
            ReadMore::Data
        }
        Ok((Err(_), b)) => {
            *inbuf = b.into_inner();
            ReadMore::Error
        }
        Err(_) if tls => {
            // A cancelled TLS read leaves the stream unusable (no 408, no close_notify could be
            // sent): end the read instead by shutting the socket's read side, which completes it
            // with an end of file, so the stream can still answer and close cleanly.
            // SAFETY: shutdown(2) on the live client socket; the descriptor stays valid.
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
            if let Ok((_, b)) = within(timer, Duration::from_secs(1), read).await {
                *inbuf = b.into_inner();
            }
            ReadMore::TimedOut
        }
        Err(_) => ReadMore::TimedOut,
    }
}

/// Where the request body is.
pub enum Body {
    /// `inbuf[start..end]`
    InBuf(usize, usize),
    Owned(Vec<u8>),
}

/// Reads the body; returns it and where the next request starts in `inbuf`.
async fn read_body(
    snap: &Snapshot,
    client: &mut Stream,
    inbuf: &mut Vec<u8>,
    mut timer: Pin<&mut Sleep>,
    head: &RequestHead,
) -> Result<(Body, usize), GatewayError> {
    let limits = &snap.config.limits;
    let start = head.head_len;
    let idle = limits.header_read_timeout;
    let mut continued = false;
    match head.body {
        BodyFraming::None | BodyFraming::Close => Ok((Body::InBuf(start, start), start)),
        BodyFraming::Length(n) => {
            if n > limits.max_request_body {
                return Err(GatewayError::PayloadTooLarge);
            }
            let end = start + n as usize;
            while inbuf.len() < end {
                if head.expect_continue && !continued {
                    continued = true;
                    send_continue(client).await?;
                }
                // Room for what is still to come, in steps: a declared length is not yet memory
                // (a client may announce the largest allowed body and send nothing).
                inbuf.reserve((end - inbuf.len()).min(BODY_RESERVE_STEP));
                match read_more(client, inbuf, timer.as_mut(), idle).await {
                    ReadMore::Data => {}
                    ReadMore::TimedOut => return Err(GatewayError::RequestTimeout),
                    _ => return Err(GatewayError::BadRequest("client closed before sending the whole body")),
                }
            }
            Ok((Body::InBuf(start, end), end))
        }
        BodyFraming::Chunked => {
            let mut decoder = crate::chunked::ChunkedDecoder::default();
            let mut body = Vec::new();
            loop {
                if inbuf.len() > start {
                    let r = decoder
                        .decode_in_place(&mut inbuf[start..])
                        .map_err(|e| GatewayError::BadRequest(e.0))?;
                    body.extend_from_slice(&inbuf[start..start + r.payload]);
                    inbuf.drain(start..start + r.consumed);
                    if body.len() as u64 > limits.max_request_body {
                        return Err(GatewayError::PayloadTooLarge);
                    }
                    if r.done {
                        return Ok((Body::Owned(body), start));
                    }
                }
                if head.expect_continue && !continued {
                    continued = true;
                    send_continue(client).await?;
                }
                match read_more(client, inbuf, timer.as_mut(), idle).await {
                    ReadMore::Data => {}
                    ReadMore::TimedOut => return Err(GatewayError::RequestTimeout),
                    _ => return Err(GatewayError::BadRequest("client closed before sending the whole body")),
                }
            }
        }
    }
}

/// `read_body`, or None once its error is answered (the connection then closes).
#[allow(clippy::too_many_arguments)]
async fn read_body_or_answer(
    ctx: &CoreCtx,
    snap: &Snapshot,
    client: &mut Stream,
    inbuf: &mut Vec<u8>,
    timer: Pin<&mut Sleep>,
    head: &RequestHead,
    rid: &RequestIds,
    peer: Option<SocketAddr>,
    started: Instant,
    endpoint: Endpoint,
) -> Option<(Body, usize)> {
    match read_body(snap, client, inbuf, timer, head).await {
        Ok(b) => Some(b),
        Err(e) => {
            ctx.metrics.request(endpoint, false, None, e.status());
            let n = answer_error(client, &e, rid, true).await;
            log_local(ctx, rid, peer, Some(head), started, e.status(), n, Some(e.message()));
            None
        }
    }
}

/// Handles one request whose head is at the start of `inbuf`; returns whether to keep the connection.
#[allow(clippy::too_many_arguments)]
// Not `async fn` on purpose (see `handle`): clippy would fold it back.
#[allow(clippy::manual_async_fn)]
fn serve_request<'a>(
    ctx: &'a CoreCtx,
    snap: &'a Snapshot,
    client: &'a mut Stream,
    inbuf: &'a mut Vec<u8>,
    watch: &'a mut Option<ClientWatch>,
    mut timer: Pin<&'a mut Sleep>,
    head: RequestHead,
    peer: Option<SocketAddr>,
) -> impl Future<Output = bool> + 'a {
    async move {
        let started = Instant::now();
        let arrived = std::time::SystemTime::now();
        let rid = ctx.request_ids(head.request_id.clone());
        let route = Route::of(&head.target, head.method, snap.config.routes.disabled, ctx.admin_only);
        let endpoint = route.endpoint();
        let keep = head.keep_alive && !ctx.shared.shutting_down();
        let early = match route {
            Route::NotFound(_) => Some(GatewayError::NotFound),
            Route::WrongMethod(e) => {
                Some(GatewayError::MethodNotAllowed(if e.method() == Method::Get { "GET" } else { "POST" }))
            }
            Route::Local(_) | Route::Proxy(_) => None,
        };
        if let Some(e) = early {
            // The body was not read: keep the connection only when there is none.
            let close = !keep || head.body != BodyFraming::None;
            ctx.metrics.request(endpoint, false, None, e.status());
            let n = answer_error(client, &e, &rid, close).await;
            log_local(ctx, &rid, peer, Some(&head), started, e.status(), n, Some(e.message()));
            let keep = n > 0 && !close;
            // Consume the head, or the next turn of the keep-alive loop would serve it again.
            inbuf.drain(..head.head_len);
            return keep;
        }
        // (Answered inside, not in a match arm here: see `serve_connection`'s `bad`.)
        let read = read_body_or_answer(
            ctx,
            snap,
            client,
            inbuf,
            timer.as_mut(),
            &head,
            &rid,
            peer,
            started,
            endpoint,
        );
        let Some((body, next)) = read.await else {
            return false;
        };
        let keep = match route {
            Route::Proxy(endpoint) => {
                if watch.is_none() {
                    *watch = ClientWatch::new(client).ok();
                }
                let body = match &body {
                    Body::InBuf(s, e) => BodyAt::InBuf(*s, *e),
                    Body::Owned(v) => BodyAt::Owned(v),
                };
                // The exchange releases the buffer once the response head has come (see there);
                // lent to it in a RefCell, and back in `inbuf` (maybe unallocated) afterwards.
                let lent = RefCell::new(std::mem::take(inbuf));
                let bytes = RequestBytes::new(&lent, head.head_len, body, next);
                let req = crate::proxy::Request {
                    snap,
                    endpoint,
                    head: &head,
                    bytes: &bytes,
                    ids: &rid,
                    peer,
                    started,
                    arrived,
                    keep_alive: keep,
                };
                let reply = crate::proxy::proxy(ctx, client, watch.as_ref(), timer, &req).await;
                *inbuf = lent.into_inner();
                match reply {
                    Reply::Done { keep } => keep,
                    Reply::Error { error, headers, close, log } => {
                        let extra = headers.as_ref().map_or(&[][..], |h| h.as_bytes());
                        let n = answer_error_with(client, &error, &rid, close, extra).await;
                        if let Some(mut l) = log {
                            // As a line written after the answer: its bytes and its whole duration.
                            l.bytes_out = n as u64;
                            l.duration_ms = started.elapsed().as_millis() as u64;
                            ctx.shared.access_log.log(l);
                        }
                        n > 0 && !close
                    }
                }
            }
            Route::Local(Endpoint::Health) => {
                let (status, n) = answer_health(ctx, snap, client, &rid, keep).await;
                log_local(ctx, &rid, peer, Some(&head), started, status, n, None);
                n > 0 && keep
            }
            Route::Local(Endpoint::Metrics) => {
                let text = ctx.shared.registry.render();
                ctx.metrics.request(endpoint, false, None, 200);
                let n = answer(
                    client,
                    200,
                    b"text/plain; version=0.0.4; charset=utf-8",
                    text.as_bytes(),
                    &rid,
                    keep,
                )
                .await;
                log_local(ctx, &rid, peer, Some(&head), started, 200, n, None);
                n > 0 && keep
            }
            // `/v1/models` (`Route::of` makes no other Local, and no NotFound/WrongMethod gets here).
            _ => {
                // Boxed: the merge's future (3.3 KiB, a timer inline) would otherwise size the
                // connection task every open stream keeps (issue 14); `/v1/models` is rare.
                let (status, body) = Box::pin(crate::models::merged(snap, &rid)).await;
                ctx.metrics.request(endpoint, false, None, status);
                let n = answer(client, status, b"application/json", &body, &rid, keep).await;
                log_local(ctx, &rid, peer, Some(&head), started, status, n, None);
                n > 0 && keep
            }
        };
        // Proxied requests observe their latency in `proxy`.
        if matches!(route, Route::Local(_)) {
            ctx.metrics.latency.observe(started.elapsed().as_millis() as u64);
        }
        // A proxied request's exchange released the buffer (left it unallocated) unless bytes
        // past `next` (pipelined) were in it.
        if inbuf.len() >= next {
            inbuf.drain(..next);
        }
        // The head's Vec and String serve the next head on this core.
        ctx.give_spare(head.spare());
        keep
    }
}

async fn answer_health(
    ctx: &CoreCtx,
    snap: &Snapshot,
    client: &mut Stream,
    rid: &RequestIds,
    keep: bool,
) -> (u16, usize) {
    let up = (0..snap.backends.len()).filter(|&i| snap.backend_up(i)).count();
    let status = if up > 0 { 200 } else { 503 };
    let body = format!(
        "{{\"status\":\"{}\",\"backends_up\":{up},\"backends\":{}}}\n",
        if up > 0 { "ok" } else { "unavailable" },
        snap.backends.len()
    );
    ctx.metrics.request(Endpoint::Health, false, None, status);
    (status, answer(client, status, b"application/json", body.as_bytes(), rid, keep).await)
}

/// An access-log line for a request the gateway answered itself (when the log is on).
#[allow(clippy::too_many_arguments)]
fn log_local(
    ctx: &CoreCtx,
    ids: &RequestIds,
    peer: Option<SocketAddr>,
    head: Option<&RequestHead>,
    started: Instant,
    status: u16,
    bytes_out: usize,
    error: Option<&'static str>,
) {
    if ctx.shared.access_log.enabled() {
        let e = crate::access_log::Entry::local(ids, peer, head, started, status, bytes_out, error);
        ctx.shared.access_log.log(e);
    }
}

/// Writes a whole response with a body; returns the bytes written (0: the write failed).
pub async fn answer(
    client: &mut Stream,
    status: u16,
    content_type: &[u8],
    body: &[u8],
    rid: &RequestIds,
    keep: bool,
) -> usize {
    let mut out = Vec::with_capacity(256 + body.len());
    http1::push_status_line(&mut out, status);
    http1::push_header(&mut out, b"content-type", content_type);
    let mut n = itoa::Buffer::new();
    http1::push_header(&mut out, b"content-length", n.format(body.len()).as_bytes());
    rid.push_headers(&mut out);
    if !keep {
        http1::push_header(&mut out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    written(client, out).await
}

/// Writes `out` within [`ANSWER_WRITE_TIMEOUT`]; returns its length, or 0 when the write failed or
/// timed out (the caller then closes the connection: a cancelled write leaves it unusable). The
/// timer is boxed so that it does not size the connection task (issue 14); these answers (errors,
/// `/health`, `/metrics`, `/v1/models`) allocate their bytes anyway.
async fn written(client: &mut Stream, out: Vec<u8>) -> usize {
    let n = out.len();
    match Box::pin(monoio::time::timeout(ANSWER_WRITE_TIMEOUT, client.write_all(out))).await {
        Ok((Ok(_), _)) => n,
        _ => 0,
    }
}

/// `100 Continue`, within the same time as any answer the gateway writes itself (a client that
/// stopped reading may have filled its window with pipelined answers).
async fn send_continue(client: &mut Stream) -> Result<(), GatewayError> {
    match written(client, b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()).await {
        0 => Err(GatewayError::BadRequest("client went away")),
        _ => Ok(()),
    }
}

/// Writes a gateway error response; returns the bytes written (0: the write failed).
pub async fn answer_error(client: &mut Stream, e: &GatewayError, rid: &RequestIds, close: bool) -> usize {
    answer_error_with(client, e, rid, close, &[]).await
}

/// Writes a gateway error response with `extra` header lines (e.g. `x-ratelimit-*`).
pub async fn answer_error_with(
    client: &mut Stream,
    e: &GatewayError,
    rid: &RequestIds,
    close: bool,
    extra: &[u8],
) -> usize {
    let mut out = Vec::with_capacity(384 + extra.len());
    e.write_response_with(&mut out, rid, close || e.closes_connection(), extra);
    written(client, out).await
}
