//! `GET /v1/models` merged across backends: each healthy backend is asked in turn (a rare,
//! administrative call, so a plain request per backend) and the model lists are joined by id.

use crate::chunked::ChunkedDecoder;
use crate::http1::{self, BodyFraming, Parse};
use crate::snapshot::Snapshot;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use std::time::Instant;

/// Largest /v1/models body read from one backend.
const MAX_MODELS_BODY: usize = 4 << 20;

/// Status and JSON body of the merged list.
pub async fn merged(snap: &Snapshot, ids: &crate::ids::RequestIds) -> (u16, Vec<u8>) {
    let rid = ids.trace();
    let mut data: Vec<serde_json::Value> = Vec::new();
    let mut answered = 0;
    for b in 0..snap.backends.len() {
        // The first endpoint of the backend that is up stands for it.
        let Some(e) = snap.backends[b].endpoints.clone().find(|&e| snap.endpoints[e].state.is_up()) else {
            continue;
        };
        let Some(body) = fetch(snap, e, rid).await else { continue };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else { continue };
        answered += 1;
        for m in v.get("data").and_then(|d| d.as_array()).into_iter().flatten() {
            let id = m.get("id");
            if id.is_some() && !data.iter().any(|x| x.get("id") == id) {
                data.push(m.clone());
            }
        }
        // Backends restricted to some models also serve those, even if they do not list them.
        for name in &snap.backends[b].cfg.models {
            if !data.iter().any(|x| x.get("id").and_then(|i| i.as_str()) == Some(name)) {
                data.push(serde_json::json!({"id": name, "object": "model", "owned_by": "llmproxy"}));
            }
        }
    }
    if answered == 0 {
        let e = if snap.any_up() {
            crate::error::GatewayError::BadGateway("no backend answered /v1/models")
        } else {
            crate::error::GatewayError::NoHealthyBackend
        };
        let mut out = Vec::new();
        e.write_response(&mut out, ids, false);
        let body_at = out.windows(4).position(|w| w == b"\r\n\r\n").map_or(0, |p| p + 4);
        return (e.status(), out[body_at..].to_vec());
    }
    let body = serde_json::json!({"object": "list", "data": data});
    (200, serde_json::to_vec(&body).unwrap_or_default())
}

async fn fetch(snap: &Snapshot, e: usize, rid: &str) -> Option<Vec<u8>> {
    let limits = &snap.config.limits;
    let bc = &snap.backend_of(e).cfg;
    let addr = snap.endpoints[e].addr;
    let mut conn = match crate::net::connect(addr, bc.tls.as_ref(), limits.upstream_connect_timeout).await {
        Ok(c) => c,
        Err(e) => {
            log::warn!("request_id={rid} /v1/models from {} ({addr}): {e}", bc.url);
            return None;
        }
    };
    let mut req = format!(
        "GET {}/v1/models HTTP/1.1\r\nhost: {}\r\nx-request-id: {rid}\r\n",
        bc.base_path, bc.host_header
    );
    if let Some(k) = &bc.api_key {
        req += &format!("authorization: Bearer {k}\r\n");
    }
    req += "connection: close\r\n\r\n";
    let (r, _) = conn.write_all(req.into_bytes()).await;
    r.ok()?;
    let deadline =
        Instant::now() + limits.upstream_first_byte_timeout.min(std::time::Duration::from_secs(10));
    let mut all = Vec::with_capacity(8192);
    loop {
        if all.len() > MAX_MODELS_BODY {
            return None;
        }
        all.reserve(8192);
        let left = deadline.saturating_duration_since(Instant::now());
        let start = all.len();
        let (res, buf) =
            monoio::time::timeout(left, conn.read(monoio::buf::IoBufMut::slice_mut(all, start..)))
                .await
                .ok()?;
        all = buf.into_inner();
        match res {
            Ok(0) => break,
            Ok(_) => {
                if let Some(body) = complete_body(&all, false) {
                    return body;
                }
            }
            Err(_) => return None,
        }
    }
    complete_body(&all, true).flatten()
}

/// The body of a complete 2xx response in `all`; None while incomplete, Some(None) when unusable.
pub(crate) fn complete_body(all: &[u8], eof: bool) -> Option<Option<Vec<u8>>> {
    let h = match http1::parse_response(all) {
        Parse::Complete(h) => h,
        Parse::Partial => return None,
        Parse::Invalid(_) => return Some(None),
    };
    if !(200..300).contains(&h.status) {
        return Some(None);
    }
    let rest = &all[h.head_len..];
    match h.body {
        BodyFraming::Length(n) if rest.len() as u64 >= n => Some(Some(rest[..n as usize].to_vec())),
        BodyFraming::Length(_) => None,
        BodyFraming::Chunked => {
            let mut copy = rest.to_vec();
            match ChunkedDecoder::default().decode_in_place(&mut copy) {
                Ok(d) if d.done => {
                    copy.truncate(d.payload);
                    Some(Some(copy))
                }
                Ok(_) => None,
                Err(_) => Some(None),
            }
        }
        // Close-delimited: complete only at EOF.
        BodyFraming::Close if eof => Some(Some(rest.to_vec())),
        BodyFraming::Close => None,
        BodyFraming::None => Some(Some(Vec::new())),
    }
}
