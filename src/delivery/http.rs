//! One webhook POST: body (object or array), Idempotency-Key, HMAC signature, 2xx check; plus the
//! retry backoff with jitter. Runs on the webhook thread only (blocking I/O).

use crate::delivery::spool::Entry;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Response bodies are read (so the connection can be reused) up to this much, then dropped.
const MAX_RESPONSE_DRAIN: u64 = 64 * 1024;

pub(crate) struct Deliverer {
    agent: ureq::Agent,
    url: String,
    secret: Option<Vec<u8>>,
    /// `batch_max > 1`: bodies are JSON arrays, even of one record.
    arrays: bool,
}

/// The exact bytes and headers of one POST.
pub(crate) struct Request {
    pub body: Vec<u8>,
    pub idempotency_key: String,
    pub signature: Option<String>,
}

impl Deliverer {
    pub(crate) fn new(url: &str, timeout: Duration, secret: Option<&str>, batch_max: usize) -> Deliverer {
        let agent = ureq::AgentBuilder::new().timeout(timeout).redirects(0).build();
        Deliverer {
            agent,
            url: url.to_string(),
            secret: secret.map(|s| s.as_bytes().to_vec()),
            arrays: batch_max > 1,
        }
    }

    pub(crate) fn request(&self, entries: &[Entry]) -> Request {
        let (body, idempotency_key) = if self.arrays || entries.len() != 1 {
            let mut body = Vec::with_capacity(entries.iter().map(|e| e.json.len() + 1).sum::<usize>() + 2);
            body.push(b'[');
            let mut h = Sha256::new();
            for (i, e) in entries.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                    h.update(b",");
                }
                body.extend_from_slice(e.json.as_bytes());
                h.update(e.request_id.as_bytes());
            }
            body.push(b']');
            (body, format!("batch-{}", hex::encode(h.finalize())))
        } else {
            (entries[0].json.as_bytes().to_vec(), entries[0].request_id.clone())
        };
        let signature = self.secret.as_ref().and_then(|k| sign(k, &body));
        Request { body, idempotency_key, signature }
    }

    /// One attempt. `Ok` on any 2xx; otherwise a description of what went wrong.
    pub(crate) fn post(&self, entries: &[Entry]) -> Result<(), String> {
        let req = self.request(entries);
        let mut r = self
            .agent
            .post(&self.url)
            .set("Content-Type", "application/json")
            .set("Idempotency-Key", &req.idempotency_key);
        if let Some(sig) = &req.signature {
            r = r.set("X-LLMProxy-Signature", sig);
        }
        match r.send_bytes(&req.body) {
            Ok(resp) => {
                let status = resp.status();
                drain(resp);
                if (200..300).contains(&status) {
                    Ok(())
                } else {
                    Err(format!("webhook answered {status}"))
                }
            }
            Err(ureq::Error::Status(status, resp)) => {
                drain(resp);
                Err(format!("webhook answered {status}"))
            }
            Err(ureq::Error::Transport(t)) => Err(format!("webhook unreachable: {t}")),
        }
    }
}

fn drain(resp: ureq::Response) {
    let _ = std::io::copy(&mut resp.into_reader().take(MAX_RESPONSE_DRAIN), &mut std::io::sink());
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub(crate) fn sign(secret: &[u8], body: &[u8]) -> Option<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(body);
    Some(format!("sha256={}", hex::encode(mac.finalize().into_bytes())))
}

/// Exponential backoff (100 ms doubling, capped at 5 s) with "equal jitter": half fixed, half random.
pub(crate) struct Backoff {
    state: u64,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        // xorshift must not start at 0.
        Backoff { state: (t ^ 0x9E37_79B9_7F4A_7C15) | 1 }
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    /// Delay before retry number `retry` (0 = the first retry).
    pub(crate) fn delay(&mut self, retry: u32) -> Duration {
        let full = BACKOFF_BASE.saturating_mul(1u32 << retry.min(16)).min(BACKOFF_CAP);
        let half = full.as_micros() as u64 / 2;
        Duration::from_micros(half + self.next_u64() % (half + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str) -> Entry {
        Entry { request_id: id.into(), json: format!(r#"{{"request_id":"{id}"}}"#) }
    }

    #[test]
    fn single_and_batch_bodies() {
        let d = Deliverer::new("http://127.0.0.1:1/x", Duration::from_secs(1), Some("k"), 1);
        let r = d.request(&[e("a")]);
        assert_eq!(r.body, br#"{"request_id":"a"}"#);
        assert_eq!(r.idempotency_key, "a");
        assert_eq!(r.signature, sign(b"k", &r.body));
        let d = Deliverer::new("http://127.0.0.1:1/x", Duration::from_secs(1), None, 5);
        let r = d.request(&[e("a"), e("b")]);
        assert_eq!(r.body, br#"[{"request_id":"a"},{"request_id":"b"}]"#);
        assert_eq!(r.idempotency_key, format!("batch-{}", hex::encode(Sha256::digest(b"a,b"))));
        assert!(r.signature.is_none());
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let sig = sign(b"Jefe", b"what do ya want for nothing?").unwrap();
        assert_eq!(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::new();
        for _ in 0..100 {
            let d0 = b.delay(0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100), "{d0:?}");
            let d3 = b.delay(3);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800), "{d3:?}");
            let d = b.delay(40);
            assert!(d >= Duration::from_millis(2500) && d <= BACKOFF_CAP, "{d:?}");
        }
    }
}
