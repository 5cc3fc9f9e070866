//! The HTTP sink: one webhook POST per batch (body in the configured format, `Idempotency-Key`,
//! optional `X-LLMProxy-Signature` HMAC), 2xx = delivered. One instance per delivery thread, each
//! with its own keep-alive connection ([`super::client`]).

use super::client::{Client, Target};
use super::format::Formatter;
use super::sink::Sink;
use super::Entry;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

pub struct HttpSink {
    client: Client,
    formatter: Arc<Formatter>,
    secret: Option<Arc<[u8]>>,
}

impl HttpSink {
    pub fn new(
        target: Target,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
        formatter: Arc<Formatter>,
        secret: Option<Arc<[u8]>>,
    ) -> HttpSink {
        HttpSink { client: Client::new(target, tls, timeout), formatter, secret }
    }
}

impl Sink for HttpSink {
    fn send(&mut self, entries: &[Entry]) -> Result<(), String> {
        let body = self.formatter.body(entries);
        let sig = self.secret.as_ref().and_then(|k| sign(k, &body.bytes));
        let mut headers: Vec<(&str, &str)> =
            vec![("Content-Type", body.content_type), ("Idempotency-Key", &body.idempotency_key)];
        if let Some(s) = &sig {
            headers.push(("X-LLMProxy-Signature", s));
        }
        match self.client.post(&headers, &body.bytes) {
            Ok(s) if (200..300).contains(&s) => Ok(()),
            Ok(s) => Err(format!("webhook answered {s}")),
            Err(e) => Err(format!("webhook unreachable: {e}")),
        }
    }
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn sign(secret: &[u8], body: &[u8]) -> Option<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(body);
    Some(format!("sha256={}", hex::encode(mac.finalize().into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let sig = sign(b"Jefe", b"what do ya want for nothing?").unwrap();
        assert_eq!(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
