//! The NATS JetStream sink (`usage_hook.sink = "nats"`): each record (in the configured format) is
//! published to `nats_subject` with `Nats-Msg-Id: <request_id>` (JetStream deduplicates on it) and
//! counts as delivered only on the stream's PubAck. async-nats runs on a current-thread tokio
//! runtime owned by this delivery thread (never a core thread); the client reconnects by itself
//! after a broker restart, and a batch whose acks do not all arrive within `timeout` fails (retried,
//! then kept in the journal like an HTTP failure).

use super::format::Formatter;
use super::sink::Sink;
use super::Entry;
use std::sync::Arc;
use std::time::Duration;

pub struct NatsSink {
    rt: tokio::runtime::Runtime,
    url: String,
    subject: String,
    timeout: Duration,
    formatter: Arc<Formatter>,
    js: Option<async_nats::jetstream::Context>,
}

impl NatsSink {
    pub fn new(
        url: String,
        subject: String,
        timeout: Duration,
        formatter: Arc<Formatter>,
    ) -> std::io::Result<NatsSink> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
        Ok(NatsSink { rt, url, subject, timeout, formatter, js: None })
    }

    fn context(&mut self) -> Result<async_nats::jetstream::Context, String> {
        if let Some(js) = &self.js {
            return Ok(js.clone());
        }
        let opts = async_nats::ConnectOptions::new()
            .name("llmproxy-usage")
            .connection_timeout(self.timeout)
            .retry_on_initial_connect()
            .max_reconnects(None);
        let url = self.url.clone();
        let timeout = self.timeout;
        // The JetStream context spawns its acker task: build it inside the runtime.
        let js = self.rt.block_on(async move {
            let client = opts.connect(url).await.map_err(|e| format!("nats connect: {e}"))?;
            let mut js = async_nats::jetstream::new(client);
            js.set_timeout(timeout);
            Ok::<_, String>(js)
        })?;
        self.js = Some(js.clone());
        Ok(js)
    }
}

impl Sink for NatsSink {
    fn send(&mut self, entries: &[Entry]) -> Result<(), String> {
        let js = self.context()?;
        let subject = self.subject.clone();
        let formatter = self.formatter.clone();
        let timeout = self.timeout;
        self.rt.block_on(async move {
            let work = async {
                // Publish everything first, then wait for the acks (pipelined).
                let mut acks = Vec::with_capacity(entries.len());
                for e in entries {
                    let mut payload = Vec::with_capacity(e.json.len() + 256);
                    formatter.one(&mut payload, e);
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", e.request_id.as_str());
                    let ack = js
                        .publish_with_headers(subject.clone(), headers, payload.into())
                        .await
                        .map_err(|err| format!("nats publish: {err}"))?;
                    acks.push(ack);
                }
                for ack in acks {
                    ack.await.map_err(|err| format!("nats: no PubAck: {err}"))?;
                }
                Ok(())
            };
            match tokio::time::timeout(timeout + timeout, work).await {
                Ok(r) => r,
                Err(_) => Err("nats: no PubAck in time".to_string()),
            }
        })
    }
}
