//! Reading the backend's response head within the first-byte timeout, watching the client
//! meanwhile. Interim (1xx) heads are dropped, however many arrive in one read, until a final
//! status. Runs on core threads.

use super::{Outcome, CAP, PREFIX, SUFFIX};
use crate::core::CoreCtx;
use crate::error::GatewayError;
use crate::http1::{self, Parse, ResponseHead};
use crate::net::Stream;
use crate::snapshot::Snapshot;
use crate::watch::{Armed, Stop};
use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use std::time::Instant;

/// Reads until a final (non-1xx) response head. Returns it with the buffer: the head's bytes at
/// `buf[PREFIX..PREFIX + head.head_len]`, any body bytes read with it after them.
pub(super) async fn read(
    ctx: &CoreCtx,
    snap: &Snapshot,
    conn: &mut Stream,
    armed: &mut Armed<'_>,
    mut timer: std::pin::Pin<&mut monoio::time::Sleep>,
    ids: &crate::ids::RequestIds,
    url: &str,
) -> Result<(ResponseHead, Vec<u8>), Outcome> {
    let deadline = Instant::now() + snap.config.limits.upstream_first_byte_timeout;
    let mut buf = ctx.take_buf();
    buf.reserve(CAP.saturating_sub(buf.capacity()));
    buf.resize(PREFIX, 0);
    let fail = |buf: Vec<u8>, o: Outcome| {
        ctx.give_buf(buf);
        Err(o)
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if buf.len() + 512 >= buf.capacity() - SUFFIX {
            // A head larger than the relay buffer: grow (once in a while), up to the head limit.
            if buf.len() > http1::MAX_HEAD + PREFIX {
                return fail(
                    buf,
                    Outcome::Failed(GatewayError::BadGateway("backend response head too large")),
                );
            }
            buf.reserve(http1::MAX_HEAD + CAP - buf.len());
        }
        let end = buf.capacity() - SUFFIX;
        let start = buf.len();
        let read = armed.within(timer.as_mut(), left, || false, conn.read(buf.slice_mut(start..end))).await;
        let (res, b) = match read {
            Err(Stop::Gone) => return Err(Outcome::ClientGone),
            Err(Stop::TimedOut) => return Err(Outcome::Failed(GatewayError::GatewayTimeout)),
            Ok(r) => r,
        };
        buf = b.into_inner();
        if let Err(e) = &res {
            // A TLS backend that refuses us after the handshake (TLS 1.3: e.g. no client certificate).
            if let Some(why) = crate::net::dial::tls_rejection(e) {
                log::warn!("request_id={} backend {}: TLS: {why}", ids.ours, url);
            }
        }
        match res {
            Ok(0) | Err(_) if buf.len() == PREFIX => {
                let error = GatewayError::BadGateway("backend closed the connection");
                return fail(buf, Outcome::Retryable { connect: false, error });
            }
            Ok(0) | Err(_) => {
                let e = GatewayError::BadGateway("backend closed the connection mid-head");
                return fail(buf, Outcome::Failed(e));
            }
            Ok(_) => {}
        }
        // Every complete head in the buffer: interim ones are dropped, a final one returned.
        loop {
            match http1::parse_response_into(&buf[PREFIX..], ctx.take_spans()) {
                Parse::Partial => break,
                Parse::Invalid(e) => return fail(buf, Outcome::Failed(GatewayError::response_head(e))),
                Parse::Complete(h) if (100..200).contains(&h.status) => {
                    // Interim response (100 Continue, 103 Early Hints): drop it, look again.
                    buf.copy_within(PREFIX + h.head_len.., PREFIX);
                    buf.truncate(buf.len() - h.head_len);
                    if buf.len() == PREFIX {
                        break;
                    }
                }
                Parse::Complete(h) => return Ok((h, buf)),
            }
        }
    }
}
