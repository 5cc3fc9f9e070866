//! The access log: one JSON line per request (refused ones too). Core threads hand an `Entry` to
//! the access-log thread through a bounded queue (a full queue drops the line and counts it in
//! `llmproxy_access_log_dropped_total`: a request never waits for the log); that thread formats
//! and writes the lines to stderr or a file, which it reopens on SIGHUP (for logrotate).

use crate::config::AccessLogConfig;
use crate::doorbell::Doorbell;
use crate::json::{push_opt_str, push_str};
use crossbeam_channel::{Receiver, Sender};
use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

/// Lines that may wait for the access-log thread.
pub const QUEUE: usize = 65536;

/// One request as the access log shows it (CONTRACT section 9).
#[derive(Debug, Clone)]
pub struct Entry {
    pub time: SystemTime,
    pub request_id: String,
    pub client_request_id: Option<String>,
    pub client_addr: Option<SocketAddr>,
    pub method: &'static str,
    pub path: String,
    pub status: u16,
    pub bytes_out: u64,
    pub duration_ms: u64,
    pub ttft_ms: Option<u64>,
    pub backend_url: Option<String>,
    pub model: Option<String>,
    pub user_id: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The gateway's reason when it answered with an error itself.
    pub error: Option<&'static str>,
}

impl Entry {
    /// A line for a request the gateway answered without a backend (`head`: None when no head
    /// was read). Fields the gateway cannot know are null or 0.
    pub fn local(
        ids: &crate::ids::RequestIds,
        peer: Option<SocketAddr>,
        head: Option<&crate::http1::RequestHead>,
        started: std::time::Instant,
        status: u16,
        bytes_out: usize,
        error: Option<&'static str>,
    ) -> Entry {
        let took = started.elapsed();
        Entry {
            time: SystemTime::now() - took,
            request_id: ids.ours.clone(),
            client_request_id: ids.client.clone(),
            client_addr: peer,
            method: head.map_or("-", |h| method_name(h.method)),
            path: head.map_or_else(String::new, |h| h.target.clone()),
            status,
            bytes_out: bytes_out as u64,
            duration_ms: took.as_millis() as u64,
            ttft_ms: None,
            backend_url: None,
            model: None,
            user_id: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            error,
        }
    }
}

/// The method as the access log shows it.
pub fn method_name(m: crate::http1::Method) -> &'static str {
    match m {
        crate::http1::Method::Get => "GET",
        crate::http1::Method::Post => "POST",
        crate::http1::Method::Other => "OTHER",
    }
}

enum Msg {
    Line(Box<Entry>),
    /// Reopen (and maybe move) the output: SIGHUP.
    Reopen(AccessLogConfig),
    Stop,
}

/// The core threads' handle on the access log.
pub struct AccessLog {
    enabled: AtomicBool,
    tx: Sender<Msg>,
    control: Sender<Msg>,
    /// Wakes the access-log thread.
    bell: Arc<Doorbell>,
    pub dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Starts the access-log thread (also when disabled: a reload may enable it). It sleeps on a
    /// [`Doorbell`] between lines: a thread blocked in a channel `recv` would make every core's
    /// `try_send` take the channel's waker Mutex.
    pub fn start(cfg: &AccessLogConfig) -> io::Result<(Arc<AccessLog>, JoinHandle<()>)> {
        let (log, rx, crx) = Self::with_queue(cfg, QUEUE);
        let mut out = open(cfg)?;
        let bell = log.bell.clone();
        let t = std::thread::Builder::new().name("llmproxy-access-log".into()).spawn(move || {
            let mut line = String::with_capacity(512);
            loop {
                while let Ok(m) = crx.try_recv() {
                    let _ = out.flush();
                    match m {
                        Msg::Reopen(cfg) => match open(&cfg) {
                            Ok(o) => out = o,
                            Err(e) => {
                                log::error!("access log: cannot open {}: {e}; keeping the old file", cfg.path)
                            }
                        },
                        _ => {
                            while let Ok(Msg::Line(e)) = rx.try_recv() {
                                line.clear();
                                format(&e, &mut line);
                                let _ = out.write_all(line.as_bytes());
                            }
                            let _ = out.flush();
                            return;
                        }
                    }
                }
                let mut wrote = false;
                while let Ok(Msg::Line(e)) = rx.try_recv() {
                    line.clear();
                    format(&e, &mut line);
                    let _ = out.write_all(line.as_bytes());
                    wrote = true;
                }
                if wrote {
                    let _ = out.flush();
                }
                bell.sleep(|| !rx.is_empty() || !crx.is_empty(), None);
            }
        })?;
        Ok((log, t))
    }

    fn with_queue(cfg: &AccessLogConfig, cap: usize) -> (Arc<AccessLog>, Receiver<Msg>, Receiver<Msg>) {
        let (tx, rx) = crossbeam_channel::bounded(cap);
        let (control, crx) = crossbeam_channel::unbounded();
        let log = AccessLog {
            enabled: AtomicBool::new(cfg.enabled),
            tx,
            control,
            bell: Arc::default(),
            dropped: Arc::default(),
        };
        (Arc::new(log), rx, crx)
    }

    /// Whether lines are wanted (checked before building an entry).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// Queues a line; drops and counts it when the queue is full.
    pub fn log(&self, e: impl Into<Box<Entry>>) {
        self.bell.offer(&self.tx, &self.dropped, Msg::Line(e.into()));
    }

    /// SIGHUP: apply `cfg` (enabled, path) and reopen the output.
    pub fn reconfigure(&self, cfg: &AccessLogConfig) {
        self.enabled.store(cfg.enabled, Relaxed);
        let _ = self.control.send(Msg::Reopen(cfg.clone()));
        self.bell.ring();
    }

    /// Writes what is queued and stops the thread (join its handle after this).
    pub fn stop(&self) {
        let _ = self.control.send(Msg::Stop);
        self.bell.ring();
    }
}

fn open(cfg: &AccessLogConfig) -> io::Result<Box<dyn Write + Send>> {
    // Disabled, it writes nothing, and must not even flush stderr: that waits on std's stderr
    // lock, which a stalled process log holds (and would keep `stop` waiting).
    if !cfg.enabled {
        return Ok(Box::new(io::sink()));
    }
    if cfg.path == "-" || cfg.path.is_empty() {
        return Ok(Box::new(io::BufWriter::with_capacity(64 * 1024, io::stderr())));
    }
    let f = std::fs::OpenOptions::new().create(true).append(true).open(&cfg.path)?;
    Ok(Box::new(io::BufWriter::with_capacity(64 * 1024, f)))
}

/// One JSON line, fields in the contract's order.
pub fn format(e: &Entry, out: &mut String) {
    out.push_str("{\"time\":");
    push_str(out, &crate::usage::record::rfc3339_now(e.time));
    out.push_str(",\"request_id\":");
    push_str(out, &e.request_id);
    out.push_str(",\"client_request_id\":");
    push_opt_str(out, e.client_request_id.as_deref());
    out.push_str(",\"client_addr\":");
    push_opt_str(out, e.client_addr.map(|a| a.to_string()).as_deref());
    out.push_str(",\"method\":");
    push_str(out, e.method);
    out.push_str(",\"path\":");
    push_str(out, &e.path);
    let _ = write!(
        out,
        ",\"status\":{},\"bytes_out\":{},\"duration_ms\":{}",
        e.status, e.bytes_out, e.duration_ms
    );
    match e.ttft_ms {
        Some(t) => {
            let _ = write!(out, ",\"ttft_ms\":{t}");
        }
        None => out.push_str(",\"ttft_ms\":null"),
    }
    out.push_str(",\"backend_url\":");
    push_opt_str(out, e.backend_url.as_deref());
    out.push_str(",\"model\":");
    push_opt_str(out, e.model.as_deref());
    out.push_str(",\"user_id\":");
    push_opt_str(out, e.user_id.as_deref());
    let _ =
        write!(out, ",\"prompt_tokens\":{},\"completion_tokens\":{}", e.prompt_tokens, e.completion_tokens);
    out.push_str(",\"error\":");
    push_opt_str(out, e.error);
    out.push_str("}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH,
            request_id: "req_1".into(),
            client_request_id: Some("c\"1".into()),
            client_addr: Some(([127, 0, 0, 1], 5).into()),
            method: "POST",
            path: "/v1/chat/completions".into(),
            status: 200,
            bytes_out: 10,
            duration_ms: 3,
            ttft_ms: None,
            backend_url: None,
            model: Some("m".into()),
            user_id: None,
            prompt_tokens: 1,
            completion_tokens: 2,
            error: None,
        }
    }

    #[test]
    fn a_line_is_json_with_every_field() {
        let mut s = String::new();
        format(&entry(), &mut s);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        for k in [
            "time",
            "request_id",
            "client_request_id",
            "client_addr",
            "method",
            "path",
            "status",
            "bytes_out",
            "duration_ms",
            "ttft_ms",
            "backend_url",
            "model",
            "user_id",
            "prompt_tokens",
            "completion_tokens",
            "error",
        ] {
            assert!(keys.contains(&k), "{k} in {s}");
        }
        assert_eq!(v["client_request_id"], "c\"1");
        assert_eq!(v["client_addr"], "127.0.0.1:5");
        assert!(v["ttft_ms"].is_null());
        assert!(s.ends_with("}\n"));
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let cfg = AccessLogConfig { enabled: true, path: "-".into() };
        let (log, _rx, _crx) = AccessLog::with_queue(&cfg, 2);
        for _ in 0..5 {
            log.log(entry());
        }
        assert_eq!(log.dropped.load(Relaxed), 3);
    }
}
