//! A proxied request from body to usage record: read the gateway's fields, authenticate, admit it
//! under the limits, inject include_usage, pick a backend, retry once on a connection failure
//! before any response byte (CONTRACT 3; README, Retries), and emit exactly one usage record.
//! Returns a `Reply`: an error answer goes back to `connection` to write. Runs on core threads.

use crate::access_log::Entry;
use crate::auth;
use crate::balancer;
use crate::config::IncludeUsage;
use crate::core::CoreCtx;
use crate::endpoints::Endpoint;
use crate::error::GatewayError;
use crate::http1::RequestHead;
use crate::limits::{self, Admission, HeaderBlock};
use crate::net::{DialError, Stream};
use crate::relay::{self, End, Outcome, Outgoing, RequestBytes};
use crate::request::Edit;
use crate::snapshot::Snapshot;
use crate::usage::record::{rfc3339_now, RecordStatus, UsageRecord, UsageSource};
use crate::usage::sse::Cutting;
use crate::watch::ClientWatch;
use monoio::time::Sleep;
use std::pin::Pin;
use std::time::{Instant, SystemTime};

/// A client request ready to proxy.
pub struct Request<'a> {
    /// The config this request runs on, loaded once when its head arrived.
    pub snap: &'a Snapshot,
    /// What `endpoints::Route::of` found the path to be.
    pub endpoint: Endpoint,
    pub head: &'a RequestHead,
    /// The head's and body's bytes (in the connection's input buffer, released once the
    /// response head has come).
    pub bytes: &'a RequestBytes<'a>,
    pub ids: &'a crate::ids::RequestIds,
    /// The client's address (access log).
    pub peer: Option<std::net::SocketAddr>,
    pub started: Instant,
    pub arrived: SystemTime,
    pub keep_alive: bool,
}

/// How a proxied request ends for the client connection; `connection` writes what is left.
pub enum Reply {
    /// The backend's answer went to the client (whole, cut, or the client left): whether the
    /// client connection can serve another request.
    Done { keep: bool },
    /// Nothing went to the client: answer this error with the subject's `x-ratelimit-*` block
    /// when it has one, then close the connection when `close` (or when the error closes it).
    /// `log`: the request's access-log line (when the log is on), whose `bytes_out` and
    /// `duration_ms` the writer fills in. Boxed: only an error answer pays for them.
    Error { error: GatewayError, headers: Option<Box<HeaderBlock>>, close: bool, log: Option<Box<Entry>> },
}

/// What `admit` found out about a request before any backend is picked: only what the exchange
/// loop and the record need, so that the proxy future (inside the connection task every open
/// stream keeps, issue 14) holds no more than that across the exchange.
struct Admitted {
    stream: bool,
    /// The request's `model` (moved into the record once the backend is picked).
    model: Option<String>,
    /// The client asked for usage itself (`stream_options.include_usage`).
    include_usage: bool,
    /// The limit ticket. Boxed (it is about 450 bytes, its `x-ratelimit-*` block inline): a
    /// request that no limit applies to holds 8 bytes for it, not the whole ticket.
    ticket: Option<Box<limits::Ticket>>,
    user_id: Option<String>,
    api_key: Option<String>,
    /// The include_usage edit, and the edit asking for continuous usage too (for a backend
    /// that reports it; see `proxy`).
    edit: Option<Edit>,
    continuous_edit: Option<Edit>,
    cutting: Cutting,
}

/// Reads the gateway's fields, authenticates and admits the request under the limits: the
/// request as the exchange loop will send it, or the error answer.
fn admit(ctx: &CoreCtx, req: &Request<'_>) -> Result<Admitted, Reply> {
    let cfg = &*req.snap.config;
    let endpoint = req.endpoint;
    // Who is calling (and, for limits, whom a response counts against).
    let key = req.head.api_key.as_deref();
    let matched = key.and_then(|k| auth::lookup(&cfg.auth, k));
    let who = match (matched, req.head.user_header.as_deref()) {
        (Some(m), _) => limits::Who::Key { index: m.index, id: m.id },
        (None, Some(u)) => limits::Who::User(u),
        (None, None) => limits::Who::Anonymous,
    };
    let scanned = req.bytes.with(|h, b| crate::endpoints::scan_request(endpoint, req.head, h, b));
    let (info, stream) = match scanned {
        Ok(s) => (s.info, s.stream),
        Err(e) => {
            // A limited subject's 400 carries its x-ratelimit-* block too (nothing is taken); not
            // for a caller the auth check will refuse (no subject is made for it).
            let known = !cfg.auth.required || matched.is_some();
            let block = if known { ctx.limits.headers(who) } else { None };
            return Err(reject(ctx, req, GatewayError::BadRequest(e), false, block));
        }
    };
    if cfg.auth.required && matched.is_none() {
        return Err(reject(ctx, req, GatewayError::Unauthorized, stream, None));
    }
    let user_id = matched
        .map(|m| m.user_id.to_string())
        .or_else(|| req.head.user_header.clone())
        .or_else(|| info.user.clone());
    let api_key = key.and_then(|k| auth::format_key(k, cfg.usage_hook.api_key_format));

    // Limits (CONTRACT 8), before a backend is picked: a refused request reaches none.
    let demand = limits::Demand {
        body_bytes: req.bytes.body_len(),
        max_output_tokens: info.max_output_tokens.unwrap_or(0),
        n: info.n.unwrap_or(1),
    };
    let ticket = match ctx.limits.admit(who, demand) {
        Admission::Unlimited => None,
        Admission::Admitted(t) => Some(Box::new(t)),
        Admission::Refused(r) => return Err(refuse(ctx, req, r, stream)),
    };

    let inject =
        cfg.usage_hook.include_usage == IncludeUsage::Inject && endpoint.takes_stream_options() && stream;
    let edit = if inject { info.usage_edit(true, false) } else { None };
    // With continuous usage (per backend, so decided once the backend is picked), the request
    // asks for cumulative usage on every chunk; what the gateway caused is cut from the stream.
    let continuous_edit =
        if inject && !info.continuous_usage_stats { info.usage_edit(true, true) } else { None };
    let cutting = Cutting {
        usage_only: edit.is_some() && !info.include_usage,
        usage_member: false,
        continuous: info.continuous_usage_stats,
    };
    Ok(Admitted {
        stream,
        model: info.model,
        include_usage: info.include_usage,
        ticket,
        user_id,
        api_key,
        edit,
        continuous_edit,
        cutting,
    })
}

/// Proxies one request. Its metrics, usage record and limit ticket are done when this returns;
/// an error answer is returned for the caller to write (and its access-log line to send).
pub async fn proxy(
    ctx: &CoreCtx,
    client: &mut Stream,
    watch: Option<&ClientWatch>,
    mut timer: Pin<&mut Sleep>,
    req: &Request<'_>,
) -> Reply {
    let snap = req.snap;
    let endpoint = req.endpoint;
    let mut a = match admit(ctx, req) {
        Ok(a) => a,
        Err(reply) => return reply,
    };
    let stream = a.stream;
    let gateway_headers = a.ticket.as_ref().map_or(&[][..], |t| t.headers());
    let mut out = Outgoing {
        endpoint,
        head: req.head,
        bytes: req.bytes,
        edit: a.edit.as_ref(),
        ids: req.ids,
        client_keep_alive: req.keep_alive,
        cutting: a.cutting,
        gateway_headers,
    };
    let mut exclude = None;
    let mut retried = false;
    let (backend, result) = loop {
        let b = match ctx.balancer.borrow_mut().pick_for(snap, Some(endpoint), a.model.as_deref(), exclude) {
            Ok(b) => b,
            Err(e) => break (None, Err(e)),
        };
        (out.edit, out.cutting) = (a.edit.as_ref(), a.cutting);
        if let Some(e) = a.continuous_edit.as_ref().filter(|_| snap.backend_of(b).continuous_usage()) {
            out.edit = Some(e);
            out.cutting = Cutting { usage_only: !a.include_usage, usage_member: true, continuous: true };
        }
        let busy = balancer::busy(snap, b, ctx.core);
        let outcome = attempt(ctx, snap, b, client, watch, timer.as_mut(), &out, req.started).await;
        drop(busy);
        match outcome {
            Outcome::Retryable { connect, error } => {
                // A refused connect or a pooled connection the backend had closed: the other idle
                // connections to it are as old (a restart closed them all), so none is reused.
                ctx.pool.borrow_mut().clear(snap, b);
                if connect && ctx.shared.snapshots.mark_down(&snap.endpoints[b]) {
                    log::warn!(
                        "request_id={} backend {} ({}) marked down: connect failed",
                        req.ids.ours,
                        snap.backend_of(b).cfg.url,
                        snap.endpoints[b].addr
                    );
                }
                if retried || ctx.cutting() {
                    break (Some(b), Err(error));
                }
                log::info!(
                    "request_id={} retrying after connection failure on {}",
                    req.ids.ours,
                    snap.backend_of(b).cfg.url
                );
                retried = true;
                exclude = Some(b);
            }
            other => break (Some(b), Ok(other)),
        }
    };
    // The record is built once the exchange is over: it is not held across it.
    let mut record = UsageRecord {
        request_id: req.ids.ours.clone(),
        client_request_id: req.ids.client.clone(),
        user_id: a.user_id.take(),
        api_key: a.api_key.take(),
        model: a.model.take(),
        prompt_tokens: 0,
        completion_tokens: 0,
        total_tokens: 0,
        is_stream: stream,
        endpoint: endpoint.path().to_string(),
        timestamp: rfc3339_now(req.arrived),
        backend_url: None,
        status: RecordStatus::Ok,
        http_status: 0,
        duration_ms: 0,
        ttft_ms: None,
        audio_seconds: None,
        usage_missing: false,
        ..Default::default()
    };
    record.backend_url = backend.map(|b| snap.backend_of(b).cfg.url.clone());
    let mut bytes_out = 0;
    let mut gw_error = None;
    let mut reply = match result {
        // (The loop turns a second Retryable into Err; the pattern keeps the match total.)
        Err(e) | Ok(Outcome::Failed(e)) | Ok(Outcome::Retryable { error: e, .. }) => {
            record.status = RecordStatus::BackendError;
            record.http_status = e.status();
            if backend.is_none() {
                record.status = RecordStatus::Rejected;
            }
            log::warn!("request_id={} failed: {} ({})", req.ids.ours, e.message(), e.status());
            gw_error = Some(e.message());
            let headers = a.ticket.as_ref().map(|t| Box::new(t.header_block().clone()));
            Reply::Error { error: e, headers, close: !req.keep_alive, log: None }
        }
        Ok(Outcome::ClientGone) => {
            record.status = RecordStatus::ClientDisconnected;
            record.http_status = 499;
            // The backend was working on it: nothing to bill from.
            record.usage_missing = true;
            Reply::Done { keep: false }
        }
        Ok(Outcome::Relayed(r)) => {
            record.http_status = r.status;
            let ok = (200..300).contains(&r.status) && !r.error_event;
            record.status = match r.end {
                End::Complete if ok => RecordStatus::Ok,
                End::Complete => RecordStatus::BackendError,
                End::ClientGone => RecordStatus::ClientDisconnected,
                End::BackendBroke => RecordStatus::BackendError,
            };
            record.usage_source = r.source;
            record.ttft_ms = r.ttft.filter(|_| stream).map(|t| t.as_millis() as u64);
            if let Some(t) = r.ttft.filter(|_| stream) {
                ctx.metrics.ttft.observe(t.as_millis() as u64);
            }
            match r.usage {
                Some(u) => {
                    record.prompt_tokens = u.prompt_tokens;
                    record.completion_tokens = u.completion_tokens;
                    record.total_tokens = u.total_tokens;
                    record.cached_tokens = u.cached_tokens;
                    record.cache_creation_tokens = u.cache_creation_tokens;
                    record.reasoning_tokens = u.reasoning_tokens;
                }
                // An error answer consumed nothing; any 2xx answer without usage is flagged,
                // stream or JSON body, whole or cut.
                None => record.usage_missing = (200..300).contains(&r.status),
            }
            // Endpoints of CONTRACT 12 (endpoints hook): what the backend did, and audio seconds.
            if endpoint.shape() != crate::endpoints::Shape::OpenAi && (200..300).contains(&r.status) {
                record.is_stream = r.streamed;
            }
            record.audio_seconds = r.native.audio_seconds;
            bytes_out = r.bytes_out;
            Reply::Done { keep: r.client_reusable }
        }
    };
    if ctx.cutting() {
        // shutdown_grace ran out while this request was in flight (billed as cut above).
        record.status = RecordStatus::GatewayShutdown;
        if record.usage_source == UsageSource::None && backend.is_some() {
            record.usage_missing = true;
        }
    }
    let elapsed = req.started.elapsed();
    record.duration_ms = elapsed.as_millis() as u64;
    ctx.metrics.latency.observe(record.duration_ms);
    ctx.metrics.request(endpoint, stream, backend.map(|b| &*snap.backend_of(b).stats), record.http_status);
    if ctx.shared.access_log.enabled() {
        let line = Entry {
            time: req.arrived,
            request_id: record.request_id.clone(),
            client_request_id: record.client_request_id.clone(),
            client_addr: req.peer,
            method: crate::access_log::method_name(req.head.method),
            path: req.head.target.clone(),
            status: record.http_status,
            bytes_out,
            duration_ms: record.duration_ms,
            ttft_ms: record.ttft_ms,
            backend_url: record.backend_url.clone(),
            model: record.model.clone(),
            user_id: record.user_id.clone(),
            prompt_tokens: record.prompt_tokens,
            completion_tokens: record.completion_tokens,
            error: gw_error,
        };
        match &mut reply {
            // Sent by `connection` once the error answer is written (its bytes_out known then).
            Reply::Error { log, .. } => *log = Some(Box::new(line)),
            Reply::Done { .. } => ctx.shared.access_log.log(line),
        }
    }
    if let Some(t) = a.ticket.take() {
        // The reservation becomes what is billed (kept when the backend reported no usage).
        t.finish((!record.usage_missing).then_some(record.total_tokens));
    }
    // /tokenize and /detokenize consume nothing: no record (CONTRACT 12).
    if endpoint.billed() {
        (ctx.shared.records)(record);
    }
    reply
}

/// One try on endpoint `b`: a pooled connection or a new one, then the exchange.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    ctx: &CoreCtx,
    snap: &Snapshot,
    b: usize,
    client: &mut Stream,
    watch: Option<&ClientWatch>,
    timer: Pin<&mut Sleep>,
    out: &Outgoing<'_>,
    started: Instant,
) -> Outcome {
    let pooled = ctx.pool.borrow_mut().take(snap, b);
    let conn = match pooled {
        Some(c) => c,
        None => {
            let bc = &snap.backend_of(b).cfg;
            let timeout = snap.config.limits.upstream_connect_timeout;
            // Boxed: the dial future (a TLS handshake included) is about 3 KiB, and inline it
            // would size the connection task that every open stream keeps (issue 14).
            match Box::pin(crate::net::connect(snap.endpoints[b].addr, bc.tls.as_ref(), timeout)).await {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("request_id={} backend {}: {e}", out.ids.ours, bc.url);
                    // A certificate that does not verify is a configuration error: a 502 (after
                    // one retry elsewhere), but the backend is not marked down for it.
                    let error = match e {
                        DialError::Connect(_) => GatewayError::BadGateway("backend unreachable"),
                        DialError::Tls { .. } => GatewayError::BadGateway("backend TLS handshake failed"),
                    };
                    return Outcome::Retryable { connect: !e.is_tls_rejection(), error };
                }
            }
        }
    };
    relay::exchange(ctx, snap, b, conn, client, watch, timer, out, started).await
}

/// A request a limit refuses: 429 (503 when the limit store is down and denies), with
/// `retry-after` and the subject's `x-ratelimit-*` headers; no usage record.
fn refuse(ctx: &CoreCtx, req: &Request<'_>, r: limits::Refusal, stream: bool) -> Reply {
    let e = match r.reason {
        limits::Reason::StoreUnavailable => GatewayError::LimitStoreUnavailable,
        reason => {
            GatewayError::RateLimited { budget: reason == limits::Reason::Budget, retry_after: r.retry_after }
        }
    };
    ctx.metrics.request(req.endpoint, stream, None, e.status());
    let log = refused_line(ctx, req, &e);
    Reply::Error { error: e, headers: Some(Box::new(r.headers)), close: !req.keep_alive, log }
}

/// A request the gateway refuses before any backend sees it (no usage record: nothing was
/// consumed), with `headers` (a limited subject's `x-ratelimit-*` block) when there are any.
fn reject(
    ctx: &CoreCtx,
    req: &Request<'_>,
    e: GatewayError,
    stream: bool,
    headers: Option<HeaderBlock>,
) -> Reply {
    ctx.metrics.request(req.endpoint, stream, None, e.status());
    let close = !req.keep_alive || e.closes_connection();
    let log = refused_line(ctx, req, &e);
    Reply::Error { error: e, headers: headers.map(Box::new), close, log }
}

/// The access-log line of a request refused before any backend (when the log is on).
fn refused_line(ctx: &CoreCtx, req: &Request<'_>, e: &GatewayError) -> Option<Box<Entry>> {
    if !ctx.shared.access_log.enabled() {
        return None;
    }
    let mut l =
        Entry::local(req.ids, req.peer, Some(req.head), req.started, e.status(), 0, Some(e.message()));
    l.time = req.arrived;
    Some(Box::new(l))
}
