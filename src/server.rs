//! The per-core accept loop: `serve(listener, ctx)` accepts on this core's SO_REUSEPORT listener
//! until shutdown, spawns a task per connection (after the TLS handshake on a TLS listener), then
//! drains in-flight requests up to the grace.

use crate::connection;
use crate::core::CoreCtx;
use crate::error::GatewayError;
use crate::net::Stream;
use crate::warm::Warm;
use monoio::net::TcpListener;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Resolves once the shared shutdown flag is set (checked every 50 ms, one timer per core).
async fn shutdown_signal(ctx: Rc<CoreCtx>) {
    while !ctx.shared.shutting_down() {
        monoio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Serves connections accepted on `listener` until shutdown, then waits for in-flight requests
/// (at most `shutdown_grace`). Idle keep-alive connections are closed when this returns.
pub async fn serve(listener: TcpListener, ctx: Rc<CoreCtx>) {
    let mut stop = std::pin::pin!(shutdown_signal(ctx.clone()));
    // The admin listener stays plain.
    let tls = if ctx.admin_only { None } else { ctx.shared.listener_tls.clone() };
    loop {
        monoio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let peer = Some(peer);
                    let accepted = Instant::now();
                    match &tls {
                        None => {
                            let _ = stream.set_nodelay(true);
                            let stream = Stream::Plain(stream);
                            if ctx.connections() >= ctx.max_connections(&ctx.snapshot()) {
                                monoio::spawn(refuse(stream, ctx.clone(), peer));
                                continue;
                            }
                            monoio::spawn(Warm(connection::handle(ctx.clone(), stream, accepted, peer)));
                        }
                        // Over max_connections a TLS client is just closed: a plain 503 would
                        // be noise to it, and a handshake to refuse is work to avoid.
                        Some(_) if ctx.connections() >= ctx.max_connections(&ctx.snapshot()) => drop(stream),
                        Some(t) => {
                            let timeout = ctx.snapshot().config.limits.header_read_timeout;
                            // Boxed, and made before the task: inline, the handshake future
                            // (about 3 KiB, a timer inline, 128-byte aligned) would align the
                            // connection task, and the task would keep the TCP stream beside it
                            // (issue 14). Freed once the handshake is over.
                            let handshake = Box::pin(crate::net::accept_tls(stream, t.current(), timeout));
                            let ctx = ctx.clone();
                            monoio::spawn(Warm(async move {
                                let shaken = handshake.await;
                                match shaken {
                                    Ok(s) => connection::handle(ctx, s, accepted, peer).await,
                                    Err(f) => ctx.metrics.tls_handshake_failed(f),
                                }
                            }));
                        }
                    }
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    log::warn!("accept failed on core {}: {e}", ctx.core);
                    monoio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    drop(listener);
    let deadline = Instant::now() + ctx.snapshot().config.shutdown_grace;
    while ctx.inflight() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    if ctx.inflight() > 0 {
        log::warn!(
            "core {}: shutdown grace over with {} requests in flight: cutting them",
            ctx.core,
            ctx.inflight()
        );
        // Each cut exchange ends at once and hands its record (gateway_shutdown) to the sink;
        // wait for that, briefly (nothing left blocks once the sockets are shut down).
        ctx.cut_exchanges();
        let deadline = Instant::now() + CUT_WAIT;
        while ctx.inflight() > 0 && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// How long cut requests get to emit their records after the grace ran out.
const CUT_WAIT: Duration = Duration::from_secs(2);

/// Over `max_connections`: a 503 and close.
async fn refuse(mut stream: Stream, ctx: Rc<CoreCtx>, peer: Option<std::net::SocketAddr>) {
    let ids = ctx.request_ids(None);
    let t = Instant::now();
    let e = GatewayError::Overloaded;
    let n = connection::answer_error(&mut stream, &e, &ids, true).await;
    if ctx.shared.access_log.enabled() {
        let l = crate::access_log::Entry::local(&ids, peer, None, t, e.status(), n, Some(e.message()));
        ctx.shared.access_log.log(l);
    }
}
