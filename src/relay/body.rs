//! The hot loop of an exchange: backend body bytes are decoded in place, fed to the usage scanner
//! (`meter.rs`; it may cut or splice them in place) and written to the client framed, one read at a time.
//! Once a `finish_reason` was seen (or a JSON body started), a client that leaves no longer cuts
//! the backend: the loop reads on to the final usage, bounded by `stream_idle_timeout`.
//! Runs on core threads; one relay buffer, no allocation per read or event.
//!
//! Scanner call order per read (see `usage::sse::Feed`): `feed` → if `release`, queue
//! `released()` → queue the fed bytes' first `forward` → (body done) `finish()` and queue what it
//! returns → write. Queued held bytes live in `pending` until that write; nothing is fed before it.

use super::meter::Scanner;
use super::{End, NativeMeter, Outcome, Outgoing, Relayed, CAP, PREFIX, SUFFIX};
use crate::chunked::{size_line, ChunkedDecoder};
use crate::core::{CoreCtx, RELAY_BUF, SMALL_BUF};
use crate::deadline::within;
use crate::endpoints::LineScanner;
use crate::error::GatewayError;
use crate::http1::{self, BodyFraming, ResponseHead};
use crate::net::Stream;
use crate::snapshot::Snapshot;
use crate::usage::sse::SseScanner;
use crate::usage::BodyUsageScanner;
use crate::watch::{Armed, Stop};
use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::time::Sleep;
use std::pin::Pin;
use std::time::{Duration, Instant};

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
    req: &Outgoing<'_>,
    framing: ClientFraming,
    keep: bool,
) {
    http1::push_status_line(out, resp.status);
    // Hook (limits): a limited subject gets the gateway's x-ratelimit-* block instead of the
    // backend's own (an upstream's quota is not the client's).
    let ours = !req.gateway_headers.is_empty();
    for s in &resp.forward {
        let name = s.name(resp_bytes);
        if ours && name.len() >= 12 && name[..12].eq_ignore_ascii_case(b"x-ratelimit-") {
            continue;
        }
        http1::push_header(out, name, s.value(resp_bytes));
    }
    req.ids.push_headers(out);
    out.extend_from_slice(req.gateway_headers);
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
    } else if req.head.http10 {
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

/// Relays the body of `resp` (head bytes at `buf[PREFIX..]`, maybe body bytes after them); also
/// says whether `conn` can serve another request (the caller pools it).
#[allow(clippy::too_many_arguments)]
// Not `async fn` on purpose (see the comment in the body): clippy would fold it back.
#[allow(clippy::manual_async_fn)]
pub(super) fn relay<'a>(
    ctx: &'a CoreCtx,
    snap: &'a Snapshot,
    conn: &'a mut Stream,
    client: &'a mut Stream,
    mut armed: Armed<'a>,
    mut timer: Pin<&'a mut Sleep>,
    req: &'a Outgoing<'a>,
    mut resp: ResponseHead,
    mut buf: Vec<u8>,
    started: Instant,
) -> impl std::future::Future<Output = (Outcome, bool)> + 'a {
    // An `async move` block, not an `async fn`: the arguments are used where they were captured
    // instead of each being kept twice (the argument and the local it is moved into).
    async move {
        // Client framing and head.
        let sse = resp.is_sse;
        let shape = req.endpoint.shape();
        let streamed = sse || crate::endpoints::is_ndjson(&resp, &buf[PREFIX..]);
        let cutting = if sse { req.cutting } else { Default::default() };
        let changes_length = cutting.usage_only || cutting.usage_member;
        let framing = match resp.body {
            BodyFraming::None => ClientFraming::None,
            BodyFraming::Length(_) if !changes_length => ClientFraming::Length,
            _ if req.head.http10 => ClientFraming::Close,
            _ => ClientFraming::Chunked,
        };
        let mut keep = req.client_keep_alive && framing != ClientFraming::Close;
        let mut pending = ctx.take_buf();
        build_client_head(&mut pending, &resp, &buf[PREFIX..], req, framing, keep);
        // The header spans are done with: a stream that lasts minutes should not hold them.
        ctx.give_spans(std::mem::take(&mut resp.forward));
        let mut pending = Some(pending);
        let body_at = PREFIX + resp.head_len;
        let body_len = buf.len() - body_at;
        // Whether the last read filled its buffer (more bytes likely queued): decides the next read's
        // buffer. For the head phase's read: whether it brought more than a small buffer holds.
        let mut filled = buf.len() - PREFIX >= SMALL_BUF - PREFIX - SUFFIX;
        buf.copy_within(body_at.., PREFIX);
        buf.truncate(PREFIX + body_len);

        let mut decoder = match resp.body {
            BodyFraming::Length(n) => Decoder::Length(n),
            BodyFraming::Chunked => Decoder::Chunked(ChunkedDecoder::default()),
            BodyFraming::Close => Decoder::Close,
            BodyFraming::None => Decoder::Empty,
        };
        let mut scanner = if crate::endpoints::uses_line_scanner(shape, sse) {
            Scanner::Native(LineScanner::new(shape, streamed))
        } else if sse {
            Scanner::Sse(SseScanner::with(cutting))
        } else {
            Scanner::Body(BodyUsageScanner::default())
        };
        let ok_status = (200..300).contains(&resp.status);
        let mut ttft = None;
        let mut sent = 0u64;
        let mut stray = false;
        // The client left after the backend finished generating: read on without sending.
        let mut draining = false;
        let idle = snap.config.limits.stream_idle_timeout;
        // The exchange's timer, now for the body's reads and writes, reset before each (see
        // `deadline::within`).
        let (end, whole) = loop {
            // Decode and scan what is in the buffer.
            let raw_len = buf.len() - PREFIX;
            let (payload, done, extra) = match decoder.decode(&mut buf[PREFIX..PREFIX + raw_len]) {
                Ok(r) => r,
                Err(_) => break (if draining { End::ClientGone } else { End::BackendBroke }, false),
            };
            stray |= extra;
            let fed = scanner.feed(&mut buf[PREFIX..PREFIX + payload]);
            if draining {
                if done {
                    scanner.finish();
                    break (End::ClientGone, true);
                }
            } else {
                if fed.release {
                    let p = pending.get_or_insert_with(|| ctx.take_buf());
                    append_framed(p, scanner.released(), framing, false);
                }
                if fed.forward > 0 && ttft.is_none() {
                    ttft = Some(started.elapsed());
                }
                let mut forward = fed.forward;
                if done {
                    let tail = scanner.finish();
                    if !tail.is_empty() {
                        // An unterminated last event that was held goes after this read's data.
                        let p = pending.get_or_insert_with(|| ctx.take_buf());
                        append_framed(p, &buf[PREFIX..PREFIX + forward], framing, false);
                        append_framed(p, tail, framing, false);
                        forward = 0;
                        ttft.get_or_insert_with(|| started.elapsed());
                    }
                }
                if forward > 0 || done || pending.is_some() {
                    let (ok, b) = send(
                        client,
                        buf,
                        forward,
                        done,
                        framing,
                        &mut pending,
                        ctx,
                        timer.as_mut(),
                        idle,
                        &mut sent,
                    )
                    .await;
                    buf = b;
                    if !ok {
                        if done {
                            break (End::ClientGone, true);
                        }
                        if !(ok_status && scanner.finished()) || ctx.cutting() {
                            break (End::ClientGone, false);
                        }
                        draining = true;
                    }
                }
                if done {
                    break (End::Complete, true);
                }
            }
            // Read more from the backend. An SSE stream whose last read did not fill its buffer (the
            // socket was drained: the next read waits for the next event) waits with a small buffer
            // and gives its relay buffer back to the core's pool, so thousands of idle streams do not
            // each hold 8 KiB across their wait, also when a busy core finds several events queued at
            // once; a read that fills the small buffer switches to a relay buffer for the next one.
            let small = sse && !filled;
            if small != (buf.capacity() < RELAY_BUF) {
                let next = if small { ctx.take_small_buf() } else { relay_buf(ctx) };
                ctx.give_buf(std::mem::replace(&mut buf, next));
            }
            buf.resize(PREFIX, 0);
            let end = buf.capacity() - SUFFIX;
            // Once generation is over, a client that leaves during this read does not cancel it
            // (no bytes lost to a cancel): the loop reads on to the final usage.
            let read = conn.read(buf.slice_mut(PREFIX..end));
            let res = if draining {
                within(timer.as_mut(), idle, read).await.map_err(|()| Stop::TimedOut)
            } else {
                let read_on = || ok_status && scanner.finished() && !ctx.cutting();
                let r = armed.within(timer.as_mut(), idle, read_on, read).await;
                draining = armed.client_left();
                r
            };
            let (res, b) = match res {
                Err(Stop::Gone) => {
                    buf = ctx.take_buf();
                    break (End::ClientGone, false);
                }
                Err(Stop::TimedOut) => {
                    buf = ctx.take_buf();
                    break (if draining { End::ClientGone } else { End::BackendBroke }, false);
                }
                Ok(r) => r,
            };
            buf = b.into_inner();
            // The connection's boxed timer and the watch's boxed poll are next touched by the next
            // read's `within`, after this event is scanned and sent: their cache misses (each a
            // few per cent of an event's CPU with thousands of streams) overlap that work.
            crate::warm::prefetch_val(&*timer);
            armed.prefetch();
            match res {
                Ok(0) if matches!(decoder, Decoder::Close) => {
                    // End of a close-delimited body.
                    decoder = Decoder::Empty;
                    buf.truncate(PREFIX);
                }
                Ok(0) | Err(_) => break (if draining { End::ClientGone } else { End::BackendBroke }, false),
                Ok(n) => filled = n == end - PREFIX,
            }
        };
        if let Some(p) = pending.take() {
            ctx.give_buf(p);
        }
        ctx.give_buf(buf);
        let (usage, source, error_event) = scanner.metered(whole);
        let native = match &scanner {
            Scanner::Native(s) => NativeMeter { audio_seconds: s.audio_seconds() },
            _ => NativeMeter::default(),
        };
        let reusable = whole && resp.keep_alive && !stray && !matches!(resp.body, BodyFraming::Close);
        if end != End::Complete {
            keep = false;
        }
        let relayed = Outcome::Relayed(Relayed {
            status: resp.status,
            usage,
            source,
            error_event,
            ttft,
            end,
            client_reusable: keep,
            streamed,
            native,
            bytes_out: sent,
        });
        (relayed, reusable)
    }
}

/// A relay buffer from the core's pool with room for PREFIX + RELAY_BUF + SUFFIX.
fn relay_buf(ctx: &CoreCtx) -> Vec<u8> {
    let mut buf = ctx.take_buf();
    buf.reserve(CAP.saturating_sub(buf.capacity()));
    buf
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
///
/// A plain client's socket takes an event at once: one non-blocking send instead of an io_uring
/// write and the wake-up its completion costs (issue 14, CPU per event). What the socket does not
/// take now (and all of a TLS client's bytes) goes through `Stream::write_rest` under the timeout,
/// whose future is small: this one sits in the connection task every open stream keeps.
#[allow(clippy::too_many_arguments)]
async fn send(
    client: &mut Stream,
    mut buf: Vec<u8>,
    n: usize,
    last: bool,
    framing: ClientFraming,
    pending: &mut Option<Vec<u8>>,
    ctx: &CoreCtx,
    timer: Pin<&mut Sleep>,
    timeout: Duration,
    sent: &mut u64,
) -> (bool, Vec<u8>) {
    // What to write: the pending bytes with this read's data appended, or this read's data framed
    // in place around it.
    let (data, start, own) = match pending.take() {
        Some(mut p) => {
            append_framed(&mut p, &buf[PREFIX..PREFIX + n], framing, last);
            (p, 0, false)
        }
        None => {
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
            (std::mem::take(&mut buf), start, true)
        }
    };
    let len = (data.len() - start) as u64;
    // Gives back what is not the relay's buffer, and the relay's buffer.
    let done = |ok: bool, data: Vec<u8>, buf: Vec<u8>| {
        if own {
            (ok, data)
        } else {
            ctx.give_buf(data);
            (ok, buf)
        }
    };
    let from = match client.try_write(&data[start..]) {
        Some(k) => start + k,
        None => return done(false, data, buf),
    };
    if from == data.len() {
        *sent += len;
        return done(true, data, buf);
    }
    match within(timer, timeout, client.write_rest(data, from)).await {
        Ok((Ok(()), data)) => {
            *sent += len;
            done(true, data, buf)
        }
        Ok((Err(_), data)) => done(false, data, buf),
        // Timed out: the bytes went with the cancelled write.
        Err(_) if own => (false, ctx.take_buf()),
        Err(_) => (false, buf),
    }
}
