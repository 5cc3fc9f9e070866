//! One exchange with a backend on a core thread: send the request (here), read the response head
//! (`head.rs`), then relay the body to the client while metering it (`body.rs`; the usage scanner
//! of each body kind is `meter.rs`). It tells a failure before any response byte
//! (`Outcome::Retryable`, `Failed`) from one after; `proxy.rs` decides whether to retry and builds
//! the record.

mod body;
mod head;
mod meter;

use crate::core::{CoreCtx, RELAY_BUF};
use crate::error::GatewayError;
use crate::http1::{self, RequestHead};
use crate::ids::RequestIds;
use crate::net::Stream;
use crate::request::Edit;
use crate::snapshot::Snapshot;
use crate::usage::record::UsageSource;
use crate::usage::sse::Cutting;
use crate::usage::Usage;
use crate::watch::ClientWatch;
use monoio::io::AsyncWriteRentExt;
use monoio::time::Sleep;
use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// Room before the payload for a chunk-size line.
const PREFIX: usize = 18;
/// Room after the payload for `\r\n0\r\n\r\n`.
const SUFFIX: usize = 7;
const CAP: usize = PREFIX + RELAY_BUF + SUFFIX;

/// Where a request's body is.
pub enum BodyAt<'a> {
    /// `inbuf[start..end]` of the client connection's input buffer.
    InBuf(usize, usize),
    /// Decoded from a chunked request body.
    Owned(&'a [u8]),
}

/// A request's bytes in its client connection's input buffer: the head at `[..head_len]` (its
/// header spans point into it), the body (`BodyAt`), then maybe the next request's first bytes,
/// from `next` on. The exchange hands the buffer back to the core (`release`) once the response
/// head has come (no retry can need the request after that), so that a response that streams for
/// minutes holds no input buffer (issue 14); the connection takes another for its next request.
/// A buffer that holds pipelined bytes is kept.
pub struct RequestBytes<'a> {
    /// The connection's input buffer, lent for the request (a `&RefCell`, not a `RefCell<&mut>`:
    /// this type stays covariant, so the exchange's borrows need not outlive the connection's).
    inbuf: &'a RefCell<Vec<u8>>,
    head_len: usize,
    body: BodyAt<'a>,
    next: usize,
}

impl<'a> RequestBytes<'a> {
    pub fn new(inbuf: &'a RefCell<Vec<u8>>, head_len: usize, body: BodyAt<'a>, next: usize) -> Self {
        RequestBytes { inbuf, head_len, body, next }
    }

    /// Runs `f` on the head's bytes and the body.
    pub fn with<R>(&self, f: impl FnOnce(&[u8], &[u8]) -> R) -> R {
        let buf = self.inbuf.borrow();
        debug_assert!(buf.len() >= self.next, "request bytes used after release");
        let body = match self.body {
            BodyAt::InBuf(s, e) => &buf[s..e],
            BodyAt::Owned(b) => b,
        };
        f(&buf[..self.head_len], body)
    }

    /// The body's length.
    pub fn body_len(&self) -> usize {
        match self.body {
            BodyAt::InBuf(s, e) => e - s,
            BodyAt::Owned(b) => b.len(),
        }
    }

    /// Gives the input buffer back to the core unless it holds bytes of the next request; the
    /// connection is left with an empty (unallocated) buffer. The request's bytes are not used
    /// after this.
    pub fn release(&self, ctx: &CoreCtx) {
        let mut buf = self.inbuf.borrow_mut();
        if buf.len() == self.next {
            ctx.give_inbuf(std::mem::take(&mut *buf));
        }
    }
}

/// The request as it goes to the backend.
pub struct Outgoing<'a> {
    pub endpoint: crate::endpoints::Endpoint,
    pub head: &'a RequestHead,
    /// The client's head and body bytes.
    pub bytes: &'a RequestBytes<'a>,
    pub edit: Option<&'a Edit>,
    pub ids: &'a RequestIds,
    /// Whether the client connection may be kept after this response.
    pub client_keep_alive: bool,
    /// What the SSE scanner cuts (what the gateway caused) and whether usage is continuous.
    pub cutting: Cutting,
    /// Gateway header lines for the client's response head (e.g. `x-ratelimit-*`), may be empty.
    pub gateway_headers: &'a [u8],
}

/// How an exchange ended.
pub enum Outcome {
    /// The response (or part of it) went to the client.
    Relayed(Relayed),
    /// No response byte came; the connection failed (`connect` = could not even connect).
    /// `proxy` retries it once on another backend (CONTRACT 3).
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
    /// What to bill, and what it rests on (CONTRACT section 7).
    pub usage: Option<Usage>,
    pub source: UsageSource,
    /// The stream carried an error event.
    pub error_event: bool,
    pub ttft: Option<Duration>,
    pub end: End,
    /// The client connection can serve another request.
    pub client_reusable: bool,
    /// The backend answered with a stream (SSE or NDJSON).
    pub streamed: bool,
    /// Native/rerank/audio bodies (endpoints/): `usage.seconds` of an audio answer.
    pub native: NativeMeter,
    /// Bytes written to the client (head, framing and body), for the access log.
    pub bytes_out: u64,
}

/// What the `LineScanner` of a native-API body adds to the usage (see `Relayed::native`).
#[derive(Debug, Default, Clone, Copy)]
pub struct NativeMeter {
    pub audio_seconds: Option<f64>,
}

fn build_request(out: &mut Vec<u8>, req: &Outgoing<'_>, backend: &crate::config::BackendConfig) {
    req.bytes.with(|head_bytes, body| build_request_from(out, req, head_bytes, body, backend))
}

fn build_request_from(
    out: &mut Vec<u8>,
    req: &Outgoing<'_>,
    head_bytes: &[u8],
    body: &[u8],
    backend: &crate::config::BackendConfig,
) {
    let h = req.head;
    out.extend_from_slice(if h.method == http1::Method::Get { b"GET " } else { b"POST " });
    out.extend_from_slice(backend.base_path.as_bytes());
    out.extend_from_slice(h.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    http1::push_header(out, b"host", backend.host_header.as_bytes());
    for s in &h.forward {
        let name = s.name(head_bytes);
        if backend.api_key.is_some()
            && (name.eq_ignore_ascii_case(b"authorization") || name.eq_ignore_ascii_case(b"x-api-key"))
        {
            continue;
        }
        // A compressed answer could not be metered: backends are asked for identity (below).
        if name.eq_ignore_ascii_case(b"accept-encoding") {
            continue;
        }
        http1::push_header(out, name, s.value(head_bytes));
    }
    if let Some(k) = &backend.api_key {
        out.extend_from_slice(b"authorization: Bearer ");
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    http1::push_header(out, b"accept-encoding", b"identity");
    http1::push_header(out, b"x-request-id", req.ids.trace().as_bytes());
    let len = req.edit.map_or(body.len(), |e| e.new_len(body.len()));
    if h.method != http1::Method::Get || len > 0 {
        let mut n = itoa::Buffer::new();
        http1::push_header(out, b"content-length", n.format(len).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    match req.edit {
        Some(e) => e.apply_into(body, out),
        None => out.extend_from_slice(body),
    }
}

/// Sends the request on `conn` (to endpoint `backend` of `snap`) and relays the response to `client`. On `Relayed` with a complete,
/// reusable exchange the backend connection has been returned to the pool. While it runs, both
/// sockets are registered with the core so that a shutdown past its grace can cut them.
///
/// A plain fn returning an `async move` block, not an `async fn`: an async fn keeps each
/// by-value argument twice in its future (the argument and the local it is moved into), and the
/// layers below take the connection by `&mut`, so the 88-byte `Stream` is held once in the
/// connection task every open stream keeps (issue 14), not six times.
#[allow(clippy::too_many_arguments)]
// Not `async fn` on purpose (see the comment in the body): clippy would fold it back.
#[allow(clippy::manual_async_fn)]
pub fn exchange<'a>(
    ctx: &'a CoreCtx,
    snap: &'a Snapshot,
    backend: usize,
    mut conn: Stream,
    client: &'a mut Stream,
    watch: Option<&'a ClientWatch>,
    timer: Pin<&'a mut Sleep>,
    req: &'a Outgoing<'a>,
    started: Instant,
) -> impl std::future::Future<Output = Outcome> + 'a {
    async move {
        let fds = (conn.as_raw_fd(), client.as_raw_fd());
        ctx.exchange_started(fds);
        let (outcome, reusable) =
            run(ctx, snap, backend, &mut conn, client, watch, timer, req, started).await;
        ctx.exchange_ended(fds);
        if reusable {
            ctx.pool.borrow_mut().put(snap, backend, conn);
        }
        outcome
    }
}

/// The exchange; also says whether `conn` can go back to the pool.
#[allow(clippy::too_many_arguments)]
async fn run(
    ctx: &CoreCtx,
    snap: &Snapshot,
    backend: usize,
    conn: &mut Stream,
    client: &mut Stream,
    watch: Option<&ClientWatch>,
    mut timer: Pin<&mut Sleep>,
    req: &Outgoing<'_>,
    started: Instant,
) -> (Outcome, bool) {
    let bcfg = &snap.backend_of(backend).cfg;
    let mut out = ctx.take_buf();
    build_request(&mut out, req, bcfg);
    // A backend that stops reading the request (a hung server with a full receive window) has its
    // first-byte time for it; the cancelled write leaves the connection unusable: closed, not pooled.
    let first_byte = snap.config.limits.upstream_first_byte_timeout;
    let Ok((res, out)) = crate::deadline::within(timer.as_mut(), first_byte, conn.write_all(out)).await
    else {
        return (Outcome::Failed(GatewayError::GatewayTimeout), false);
    };
    ctx.give_buf(out);
    if res.is_err() {
        let error = GatewayError::BadGateway("backend connection failed while sending");
        return (Outcome::Retryable { connect: false, error }, false);
    }
    let mut armed = crate::watch::Armed::new(watch, client);
    // `timer` is the connection's one timer (see `connection::serve_connection`): first byte,
    // then each body read and write, and the watch's arm instant (see `deadline`, `watch`).
    let (resp, buf) = match head::read(ctx, snap, conn, &mut armed, timer.as_mut(), req.ids, &bcfg.url).await
    {
        Ok(r) => r,
        Err(o) => return (o, false),
    };
    // A response has come: no retry will send the request again.
    req.bytes.release(ctx);
    body::relay(ctx, snap, conn, client, armed, timer, req, resp, buf, started).await
}
