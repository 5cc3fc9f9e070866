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
    let mut answer = Answer::default();
    loop {
        if all.len() > MAX_MODELS_BODY {
            return None;
        }
        all.reserve(all.len().clamp(8192, 1 << 20));
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
                if let Some(body) = answer.feed(&mut all, false) {
                    return body;
                }
            }
            Err(_) => return None,
        }
    }
    answer.feed(&mut all, true).flatten()
}

/// The body of a complete 2xx response in `all`; None while incomplete, Some(None) when unusable.
pub(crate) fn complete_body(all: &[u8], eof: bool) -> Option<Option<Vec<u8>>> {
    Answer::default().feed(&mut all.to_vec(), eof)
}

/// A backend's answer judged as it grows, each byte looked at once: the head is parsed once, and a
/// chunked body is decoded in place as its bytes come (before, every read re-decoded a copy of the
/// whole body so far: quadratic in its size, on a core thread).
#[derive(Default)]
pub(crate) struct Answer {
    /// Head length and framing, once the head is complete.
    head: Option<(usize, BodyFraming)>,
    chunked: ChunkedDecoder,
    /// Decoded payload bytes, kept at `all[head_len..head_len + payload]`.
    payload: usize,
    /// Where the bytes not yet decoded start.
    raw: usize,
}

impl Answer {
    /// Called after more bytes were appended to `all` (the same buffer every time; it may rewrite
    /// the part after the head): the body of a complete 2xx response; None while incomplete;
    /// Some(None) when unusable.
    pub(crate) fn feed(&mut self, all: &mut [u8], eof: bool) -> Option<Option<Vec<u8>>> {
        let (head_len, framing) = match self.head {
            Some(h) => h,
            None => {
                let h = match http1::parse_response(all) {
                    Parse::Complete(h) => h,
                    Parse::Partial => return None,
                    Parse::Invalid(_) => return Some(None),
                };
                if !(200..300).contains(&h.status) {
                    return Some(None);
                }
                self.head = Some((h.head_len, h.body));
                self.raw = h.head_len;
                (h.head_len, h.body)
            }
        };
        let rest = &all[head_len..];
        match framing {
            BodyFraming::Length(n) if rest.len() as u64 >= n => Some(Some(rest[..n as usize].to_vec())),
            BodyFraming::Length(_) => None,
            BodyFraming::Chunked => {
                if self.raw < all.len() {
                    let d = match self.chunked.decode_in_place(&mut all[self.raw..]) {
                        Ok(d) => d,
                        Err(_) => return Some(None),
                    };
                    all.copy_within(self.raw..self.raw + d.payload, head_len + self.payload);
                    self.payload += d.payload;
                    self.raw += d.consumed;
                }
                self.chunked.is_done().then(|| Some(all[head_len..head_len + self.payload].to_vec()))
            }
            // Close-delimited: complete only at EOF.
            BodyFraming::Close if eof => Some(Some(rest.to_vec())),
            BodyFraming::Close => None,
            BodyFraming::None => Some(Some(Vec::new())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fed as it would arrive, split at every byte (two reads) and one byte at a time: the same
    /// verdict as the whole answer at once.
    #[test]
    fn an_answer_reads_the_same_at_every_split() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n3;x=y\r\n[1]\r\n1\r\n}\r\n0\r\nt: v\r\n\r\n";
        type Verdict<'a> = Option<Option<&'a [u8]>>;
        let cases: [(&[u8], Verdict); 5] = [
            (chunked, Some(Some(b"{\"a\":[1]}"))),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n{\"x\":1}", Some(Some(b"{\"x\":1}"))),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", Some(None)),
            (b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\n\r\n", Some(None)),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nab", None),
        ];
        for (bytes, want) in cases {
            let want = want.map(|o| o.map(<[u8]>::to_vec));
            assert_eq!(complete_body(bytes, false), want, "{}", String::from_utf8_lossy(bytes));
            for cut in 0..=bytes.len() {
                let mut a = Answer::default();
                let mut all = bytes[..cut].to_vec();
                let first = a.feed(&mut all, false);
                let got = match first {
                    Some(v) => Some(v),
                    None => {
                        all.extend_from_slice(&bytes[cut..]);
                        a.feed(&mut all, false)
                    }
                };
                assert_eq!(got, want, "cut at {cut}: {}", String::from_utf8_lossy(bytes));
            }
            let (mut a, mut all, mut got) = (Answer::default(), Vec::new(), None);
            for &b in bytes {
                all.push(b);
                if let Some(v) = a.feed(&mut all, false) {
                    got = Some(v);
                    break;
                }
            }
            assert_eq!(got, want, "byte by byte: {}", String::from_utf8_lossy(bytes));
        }
        // Close-delimited: complete at EOF only.
        let close = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{\"data\":[]}";
        assert_eq!(complete_body(close, false), None);
        assert_eq!(complete_body(close, true), Some(Some(b"{\"data\":[]}".to_vec())));
    }
}
