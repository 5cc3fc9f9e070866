//! Metrics: per-core counters written only by their own core (no contended cache lines on the hot
//! path), merged with the shared gauges when `/metrics` is scraped, and rendered as Prometheus text.

use crate::counters::STATUS_SLOTS;
pub use crate::counters::{BackendStats, CoreMetrics, Histogram, TokenCounters, BUCKETS_MS};
use crate::endpoints::Endpoint;
use crate::snapshot::SnapshotCell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Config reloads (SIGHUP), by result.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub ok: AtomicU64,
    pub error: AtomicU64,
}

/// Appends metric families owned elsewhere to the `/metrics` text.
pub type RenderFn = Box<dyn Fn(&mut String) + Send + Sync>;

/// Everything `/metrics` shows: the cores' counters, the backends of the current snapshot (their
/// per-core counters and health), and the gauges owned elsewhere.
pub struct Registry {
    pub snapshots: Arc<SnapshotCell>,
    pub cores: Vec<Arc<CoreMetrics>>,
    pub webhook: Arc<crate::delivery::WebhookStats>,
    /// Records queued in memory for the webhook thread.
    pub queue_depth: Box<dyn Fn() -> usize + Send + Sync>,
    /// Families owned by other modules (limits), appended at the end of the text.
    pub extra: Vec<RenderFn>,
    pub reloads: Arc<ReloadStats>,
    /// Access-log lines dropped because the queue was full.
    pub access_log_dropped: Arc<AtomicU64>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Registry {
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let snap = self.snapshots.load();
        let _ = writeln!(
            out,
            "# HELP llmproxy_requests_total Requests answered, by endpoint, stream, backend and HTTP status."
        );
        let _ = writeln!(out, "# TYPE llmproxy_requests_total counter");
        for ep in Endpoint::ALL {
            for stream in [false, true] {
                for b in 0..=snap.backends.len() {
                    for s in 0..=STATUS_SLOTS.len() {
                        let (bname, total): (&str, u64) = if b == 0 {
                            ("none", self.cores.iter().map(|c| c.unrouted.get(ep.index(), stream, s)).sum())
                        } else {
                            let be = &snap.backends[b - 1];
                            (
                                be.cfg.url.as_str(),
                                be.stats.per_core.iter().map(|c| c.requests.get(ep.index(), stream, s)).sum(),
                            )
                        };
                        if total == 0 {
                            continue;
                        }
                        let status = STATUS_SLOTS.get(s).map_or("other".to_string(), u16::to_string);
                        let _ = writeln!(
                            out,
                            "llmproxy_requests_total{{endpoint=\"{}\",stream=\"{stream}\",backend=\"{}\",status=\"{status}\"}} {total}",
                            ep.path(),
                            escape(bname)
                        );
                    }
                }
            }
        }
        self.histogram(
            &mut out,
            "llmproxy_latency_ms",
            "Request duration in milliseconds, head received to response end.",
            |c| &c.latency,
        );
        self.histogram(
            &mut out,
            "llmproxy_ttft_ms",
            "Streams: milliseconds from request to the first byte of the response body.",
            |c| &c.ttft,
        );

        let _ = writeln!(out, "# HELP llmproxy_tokens_total Tokens reported by backends, by model and kind (prompt, completion, cached, reasoning).");
        let _ = writeln!(out, "# TYPE llmproxy_tokens_total counter");
        // Scraped on a core thread: never block on the webhook thread's lock (it holds it for one
        // map update at a time), try a bounded number of times instead.
        let guard = (0..10_000).find_map(|_| match self.webhook.tokens.by_model.try_lock() {
            Ok(g) => Some(g),
            Err(_) => {
                std::hint::spin_loop();
                None
            }
        });
        if let Some(m) = guard {
            let mut models: Vec<_> = m.iter().collect();
            models.sort();
            for (model, [p, c, cached, reasoning]) in models {
                let model = escape(model);
                let _ = writeln!(out, "llmproxy_tokens_total{{model=\"{model}\",kind=\"prompt\"}} {p}");
                let _ = writeln!(out, "llmproxy_tokens_total{{model=\"{model}\",kind=\"completion\"}} {c}");
                let _ = writeln!(out, "llmproxy_tokens_total{{model=\"{model}\",kind=\"cached\"}} {cached}");
                let _ = writeln!(
                    out,
                    "llmproxy_tokens_total{{model=\"{model}\",kind=\"reasoning\"}} {reasoning}"
                );
            }
        }
        let w = &self.webhook;
        let scalar = |out: &mut String, name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        scalar(
            &mut out,
            "llmproxy_webhook_success_total",
            "counter",
            "Usage records delivered to the webhook (2xx).",
            w.success.load(Relaxed),
        );
        scalar(
            &mut out,
            "llmproxy_webhook_failure_total",
            "counter",
            "Failed webhook delivery attempts.",
            w.failure.load(Relaxed),
        );
        scalar(
            &mut out,
            "llmproxy_webhook_queue_depth",
            "gauge",
            "Usage records queued in memory for the webhook thread.",
            (self.queue_depth)() as u64,
        );
        scalar(
            &mut out,
            "llmproxy_spool_records",
            "gauge",
            "Usage records in the journal (spool_dir) not yet delivered.",
            w.spool_records.load(Relaxed),
        );
        crate::delivery::render_metrics(&mut out, w);
        scalar(
            &mut out,
            "llmproxy_usage_missing_total",
            "counter",
            "Responses for which the backend reported no usage.",
            w.tokens.usage_missing.load(Relaxed),
        );
        let _ =
            writeln!(out, "# HELP llmproxy_backend_up Backend health as the gateway sees it (1: at least one of its addresses is up).");
        let _ = writeln!(out, "# TYPE llmproxy_backend_up gauge");
        for (i, b) in snap.backends.iter().enumerate() {
            let _ = writeln!(
                out,
                "llmproxy_backend_up{{backend=\"{}\"}} {}",
                escape(&b.cfg.url),
                u8::from(snap.backend_up(i))
            );
        }
        let _ = writeln!(
            out,
            "# HELP llmproxy_backend_continuous_usage Streams to the backend ask for usage on every chunk (1) or not (0)."
        );
        let _ = writeln!(out, "# TYPE llmproxy_backend_continuous_usage gauge");
        for b in &snap.backends {
            let on = u8::from(b.continuous_usage());
            let _ =
                writeln!(out, "llmproxy_backend_continuous_usage{{backend=\"{}\"}} {on}", escape(&b.cfg.url));
        }
        let _ = writeln!(out, "# HELP llmproxy_backend_endpoints Addresses a backend currently resolves to, and how many of them are up.");
        let _ = writeln!(out, "# TYPE llmproxy_backend_endpoints gauge");
        for b in &snap.backends {
            let eps = &snap.endpoints[b.endpoints.clone()];
            let up = eps.iter().filter(|e| e.state.is_up()).count();
            let name = escape(&b.cfg.url);
            let _ = writeln!(out, "llmproxy_backend_endpoints{{backend=\"{name}\",state=\"up\"}} {up}");
            let _ = writeln!(
                out,
                "llmproxy_backend_endpoints{{backend=\"{name}\",state=\"down\"}} {}",
                eps.len() - up
            );
        }
        let _ = writeln!(out, "# HELP llmproxy_backend_inflight Requests in flight to each backend.");
        let _ = writeln!(out, "# TYPE llmproxy_backend_inflight gauge");
        for b in &snap.backends {
            let v: i64 = b.stats.per_core.iter().map(|c| c.inflight.load(Relaxed)).sum();
            let _ =
                writeln!(out, "llmproxy_backend_inflight{{backend=\"{}\"}} {}", escape(&b.cfg.url), v.max(0));
        }
        let _ = writeln!(out, "# HELP llmproxy_access_log_dropped_total Access-log lines dropped because the log queue was full.\n# TYPE llmproxy_access_log_dropped_total counter\nllmproxy_access_log_dropped_total {}", self.access_log_dropped.load(Relaxed));
        let _ = writeln!(out, "# HELP llmproxy_log_lines_dropped_total Process log lines (stderr) dropped because the log queue was full.\n# TYPE llmproxy_log_lines_dropped_total counter\nllmproxy_log_lines_dropped_total {}", crate::logging::dropped());
        let _ = writeln!(out, "# HELP llmproxy_config_reloads_total Config reloads (SIGHUP), by result.\n# TYPE llmproxy_config_reloads_total counter");
        let _ =
            writeln!(out, "llmproxy_config_reloads_total{{result=\"ok\"}} {}", self.reloads.ok.load(Relaxed));
        let _ = writeln!(
            out,
            "llmproxy_config_reloads_total{{result=\"error\"}} {}",
            self.reloads.error.load(Relaxed)
        );
        let _ = writeln!(out, "# HELP llmproxy_config_generation Generation of the snapshot in use (bumped by each reload and each DNS change).\n# TYPE llmproxy_config_generation gauge\nllmproxy_config_generation {}", snap.generation);
        let conns: i64 = self.cores.iter().map(|c| c.connections.load(Relaxed)).sum();
        let _ = writeln!(out, "# HELP llmproxy_tls_handshake_failures_total TLS handshakes on the listener that failed, by reason (timeout: none within header_read_timeout; plain_http: plain HTTP sent to the TLS port; error: protocol or certificate error).\n# TYPE llmproxy_tls_handshake_failures_total counter");
        for (i, f) in crate::net::HandshakeFailure::COUNTED.iter().enumerate() {
            let v: u64 = self.cores.iter().map(|c| c.tls_handshake_failures[i].load(Relaxed)).sum();
            let _ = writeln!(
                out,
                "llmproxy_tls_handshake_failures_total{{reason=\"{}\"}} {v}",
                f.label().unwrap_or("")
            );
        }
        let _ = writeln!(out, "# HELP llmproxy_connections_active Open client connections.\n# TYPE llmproxy_connections_active gauge\nllmproxy_connections_active {}", conns.max(0));
        for f in &self.extra {
            f(&mut out);
        }
        out
    }

    fn histogram(&self, out: &mut String, name: &str, help: &str, pick: impl Fn(&CoreMetrics) -> &Histogram) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            cumulative += self.cores.iter().map(|c| pick(c).buckets[i].load(Relaxed)).sum::<u64>();
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count: u64 = self.cores.iter().map(|c| pick(c).count.load(Relaxed)).sum();
        let sum: u64 = self.cores.iter().map(|c| pick(c).sum.load(Relaxed)).sum();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_cores_and_renders_every_family() {
        let config = crate::config::Config::parse(
            "[[backends]]\nurl = \"http://127.0.0.1:1\"\n[[backends]]\nurl = \"http://127.0.0.2:1\"\n",
            "t",
        )
        .unwrap();
        let snapshots = Arc::new(SnapshotCell::new(config, 2).unwrap());
        let snap = snapshots.load();
        let cores: Vec<_> = (0..2).map(|i| Arc::new(CoreMetrics::new(i))).collect();
        cores[0].request(Endpoint::ChatCompletions, true, Some(&snap.backends[1].stats), 200);
        cores[1].request(Endpoint::ChatCompletions, true, Some(&snap.backends[1].stats), 200);
        cores[1].request(Endpoint::Unknown, false, None, 404);
        cores[0].latency.observe(7);
        cores[1].latency.observe(70_000_000);
        snap.endpoints[1].state.set_up(false);
        let webhook = Arc::new(crate::delivery::WebhookStats::default());
        webhook.spool_records.store(5, Relaxed);
        let reg = Registry {
            snapshots,
            cores,
            webhook,
            queue_depth: Box::new(|| 2),
            extra: Vec::new(),
            reloads: Arc::new(ReloadStats::default()),
            access_log_dropped: Arc::default(),
        };
        let text = reg.render();
        assert!(text.contains("llmproxy_requests_total{endpoint=\"/v1/chat/completions\",stream=\"true\",backend=\"http://127.0.0.2:1\",status=\"200\"} 2"), "{text}");
        assert!(text.contains(
            "llmproxy_requests_total{endpoint=\"other\",stream=\"false\",backend=\"none\",status=\"404\"} 1"
        ));
        assert!(text.contains("llmproxy_latency_ms_bucket{le=\"10\"} 1\n"));
        assert!(text.contains("llmproxy_latency_ms_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("llmproxy_backend_up{backend=\"http://127.0.0.1:1\"} 1"));
        assert!(text.contains("llmproxy_backend_up{backend=\"http://127.0.0.2:1\"} 0"));
        assert!(text.contains("llmproxy_spool_records 5"));
        assert!(text.contains("llmproxy_webhook_queue_depth 2"));
        assert!(text.contains("llmproxy_usage_missing_total 0"));
        assert!(text.contains("llmproxy_connections_active 0"));
        assert!(text.contains("llmproxy_config_reloads_total{result=\"ok\"} 0"));
        assert!(text.contains("llmproxy_config_reloads_total{result=\"error\"} 0"));
    }
}
