//! `[usage_hook]` keys for durable, concurrent delivery and sinks (CONTRACT sections 7, 9, 10):
//! `crash_window`, `concurrency`, `tls_ca_file`, `format`, `sink`, `nats_url`, `nats_subject`.
//! Parsed with the rest of the config on the main thread.

use super::{Problems, RawUsageHook};
use std::path::PathBuf;
use std::time::Duration;

/// The body format of delivered records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFormat {
    /// The section 5/7 record (an array of them with `batch_max > 1`).
    Record,
    /// CloudEvents 1.0 structured mode (section 10).
    CloudEvents,
}

/// Where records go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    Http,
    Nats,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Records reach disk within this long; None = "off" (memory until delivered or spilled).
    pub crash_window: Option<Duration>,
    /// Batches in flight at once (one connection each).
    pub concurrency: usize,
    /// PEM roots for an https:// webhook; None = the OS trust store.
    pub tls_ca_file: Option<PathBuf>,
    pub format: RecordFormat,
    pub sink: SinkKind,
    pub nats_url: String,
    pub nats_subject: String,
}

impl Default for DeliveryConfig {
    fn default() -> DeliveryConfig {
        DeliveryConfig {
            crash_window: Some(Duration::from_millis(10)),
            concurrency: 16,
            tls_ca_file: None,
            format: RecordFormat::Record,
            sink: SinkKind::Http,
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_subject: "llm.usage".into(),
        }
    }
}

pub(super) const KEYS: &[&str] = &[
    "usage_hook.crash_window",
    "usage_hook.tls_ca_file",
    "usage_hook.format",
    "usage_hook.sink",
    "usage_hook.nats_url",
    "usage_hook.nats_subject",
];

pub(super) fn parse(p: &mut Problems<'_>, u: &RawUsageHook, enabled: bool, url: &str) -> DeliveryConfig {
    let d = DeliveryConfig::default();
    let crash_window = match u.crash_window.as_deref() {
        Some("off") => None,
        None => d.crash_window,
        Some(_) => {
            let w = p.duration("usage_hook.crash_window", &u.crash_window, "10ms");
            if w.is_zero() {
                p.push("usage_hook.crash_window", "must be a positive duration or \"off\"");
            }
            Some(w)
        }
    };
    let concurrency = p.int("usage_hook.concurrency", u.concurrency, 16, 1, 1024) as usize;
    let format = p.choice(
        "usage_hook.format",
        &u.format,
        RecordFormat::Record,
        &[("record", RecordFormat::Record), ("cloudevents", RecordFormat::CloudEvents)],
    );
    let sink = p.choice(
        "usage_hook.sink",
        &u.sink,
        SinkKind::Http,
        &[("http", SinkKind::Http), ("nats", SinkKind::Nats)],
    );
    let tls_ca_file = u.tls_ca_file.clone().filter(|s| !s.is_empty()).map(PathBuf::from);
    if enabled && sink == SinkKind::Http {
        if !url.starts_with("http://") && !url.starts_with("https://") {
            p.push("usage_hook.url", format_args!("{url:?} must start with http:// or https://"));
        } else if let Err(e) = parse_hook_url(url) {
            p.push("usage_hook.url", e);
        }
    }
    if let Some(f) = &tls_ca_file {
        if enabled && sink == SinkKind::Http && !f.is_file() {
            p.push("usage_hook.tls_ca_file", format_args!("{} is not a readable file", f.display()));
        }
    }
    let nats_url = u.nats_url.clone().unwrap_or(d.nats_url);
    if sink == SinkKind::Nats {
        if let Err(e) = check_nats_url(&nats_url) {
            p.push("usage_hook.nats_url", e);
        }
    }
    let nats_subject = u.nats_subject.clone().unwrap_or(d.nats_subject);
    if nats_subject.is_empty() || nats_subject.contains(|c: char| c.is_whitespace() || c == '*' || c == '>') {
        p.push("usage_hook.nats_subject", format_args!("{nats_subject:?} is not a publishable subject"));
    }
    DeliveryConfig { crash_window, concurrency, tls_ca_file, format, sink, nats_url, nats_subject }
}

/// `nats://host:port` (or `tls://`), comma-separated for several servers.
pub fn check_nats_url(s: &str) -> Result<(), String> {
    for one in s.split(',') {
        let one = one.trim();
        let rest = one
            .strip_prefix("nats://")
            .or_else(|| one.strip_prefix("tls://"))
            .ok_or_else(|| format!("{one:?} must start with nats:// or tls://"))?;
        let hostport = rest.rsplit('@').next().unwrap_or(rest);
        let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, "4222"));
        if host.is_empty() || port.parse::<u16>().is_err() || hostport.contains('/') {
            return Err(format!("{one:?} is not nats://host:port"));
        }
    }
    Ok(())
}

/// A parsed `http://` or `https://` URL (the webhook's, `usage_hook.url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookTarget {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Parses `http[s]://host[:port][/path]`.
pub fn parse_hook_url(url: &str) -> Result<HookTarget, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!("{url:?} must start with http:// or https://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let (h, after) = h.split_once(']').ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port"))?,
            None => default_port,
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| format!("{url:?}: bad port"))?),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok(HookTarget { tls, host, port, path: path.to_string() })
}
