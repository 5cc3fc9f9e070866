//! `sse-load`: opens N concurrent streaming chat requests (`POST ... "stream": true`) against a URL
//! for a duration (or a request count) and measures, per stream, the time to the first event (first
//! `data:` line) and the gaps between consecutive events, timestamped when the bytes are read.
//! Prints a human summary on stderr and one JSON object on stdout for scripts.
//!
//! Gaps are counted between token events: `data: [DONE]` and usage-only events
//! (`"choices":[]`), which servers send right after the finish event, are not gap samples.
//! One current-thread tokio runtime: pin it with taskset like the rest of the benchmark.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::Instant as TInstant;

struct Opts {
    host: String,
    path: String,
    concurrency: usize,
    duration: Duration,
    grace: Duration,
    requests: u64,
    headers: Vec<(String, String)>,
    model: String,
    include_usage: bool,
    ramp: Duration,
    ready_file: Option<String>,
}

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    events: AtomicU64,
    err_connect: AtomicU64,
    err_status: AtomicU64,
    err_body: AtomicU64,
    err_truncated: AtomicU64,
    cut: AtomicU64,
    issued: AtomicU64,
    streaming: AtomicUsize,
    ready_written: AtomicBool,
}

#[derive(Default)]
struct Samples {
    gap: Vec<u32>,
    /// Each stream's request start and its time to first event (µs).
    firsts: Vec<(Instant, u32)>,
}

fn usage() -> ! {
    eprintln!(
        "usage: sse-load --url http://HOST:PORT/v1/chat/completions [-c N] [-d SECS] [-n TOTAL] [--grace SECS]\n\
         \x20      [--header 'name: value']... [--model M] [--no-include-usage] [--ramp-ms MS] [--ready-file PATH]"
    );
    std::process::exit(64)
}

fn parse_args() -> Opts {
    let mut o = Opts {
        host: String::new(),
        path: String::new(),
        concurrency: 1,
        duration: Duration::from_secs(5),
        grace: Duration::from_secs(5),
        requests: u64::MAX,
        headers: Vec::new(),
        model: "meta-llama/Llama-3.1-8B-Instruct".into(),
        include_usage: true,
        ramp: Duration::ZERO,
        ready_file: None,
    };
    let mut args = std::env::args().skip(1);
    let secs = |v: Option<String>| -> Duration {
        Duration::from_secs_f64(v.and_then(|s| s.parse::<f64>().ok()).unwrap_or_else(|| usage()))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--url" => {
                let u = args.next().unwrap_or_else(|| usage());
                let rest = u.strip_prefix("http://").unwrap_or_else(|| usage());
                let (h, p) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                o.host = h.to_string();
                o.path = if p.is_empty() { "/v1/chat/completions".into() } else { p.to_string() };
            }
            "-c" | "--concurrency" => {
                o.concurrency = args.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| usage())
            }
            "-d" | "--duration" => o.duration = secs(args.next()),
            "--grace" => o.grace = secs(args.next()),
            "-n" | "--requests" => {
                o.requests = args.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| usage())
            }
            "--header" => {
                let h = args.next().unwrap_or_else(|| usage());
                let (k, v) = h.split_once(':').unwrap_or_else(|| usage());
                o.headers.push((k.trim().to_string(), v.trim().to_string()));
            }
            "--model" => o.model = args.next().unwrap_or_else(|| usage()),
            "--no-include-usage" => o.include_usage = false,
            "--ramp-ms" => {
                o.ramp =
                    Duration::from_millis(args.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| usage()))
            }
            "--ready-file" => o.ready_file = Some(args.next().unwrap_or_else(|| usage())),
            _ => usage(),
        }
    }
    if o.host.is_empty() || o.concurrency == 0 {
        usage();
    }
    o
}

fn body(o: &Opts) -> Bytes {
    let so = if o.include_usage { r#","stream_options":{"include_usage":true}"# } else { "" };
    Bytes::from(format!(
        r#"{{"model":"{}","messages":[{{"role":"system","content":"You are a helpful assistant."}},{{"role":"user","content":"Write a short poem about the sea."}}],"max_tokens":256,"temperature":0.7,"stream":true{so}}}"#,
        o.model
    ))
}

async fn connect(host: &str) -> Option<SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(host).await.ok()?;
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(sender)
}

fn mark_streaming(o: &Opts, c: &Counters) {
    let n = c.streaming.fetch_add(1, Ordering::SeqCst) + 1;
    if n >= o.concurrency && !c.ready_written.swap(true, Ordering::SeqCst) {
        if let Some(p) = &o.ready_file {
            let _ = std::fs::write(p, b"ready\n");
        }
    }
}

/// One stream: returns false when the connection must be replaced.
async fn one_stream(
    o: &Opts,
    c: &Counters,
    s: &mut Samples,
    sender: &mut SendRequest<Full<Bytes>>,
    body: Bytes,
    counted_ready: &mut bool,
) -> bool {
    if sender.ready().await.is_err() {
        c.err_connect.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    let mut req = Request::post(o.path.as_str())
        .header("host", o.host.as_str())
        .header("content-type", "application/json")
        .header("accept", "text/event-stream");
    for (k, v) in &o.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let Ok(req) = req.body(Full::new(body)) else { return false };
    let t0 = Instant::now();
    let resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(_) => {
            c.err_connect.fetch_add(1, Ordering::Relaxed);
            return false;
        }
    };
    let status = resp.status();
    let mut rb = resp.into_body();
    if status != hyper::StatusCode::OK {
        c.err_status.fetch_add(1, Ordering::Relaxed);
        while let Some(f) = rb.frame().await {
            if f.is_err() {
                return false;
            }
        }
        return true;
    }
    let mut carry: Vec<u8> = Vec::new();
    let mut first = true;
    let mut last = t0;
    let mut done = false;
    let mut events = 0u64;
    while let Some(frame) = rb.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(_) => {
                c.err_body.fetch_add(1, Ordering::Relaxed);
                c.events.fetch_add(events, Ordering::Relaxed);
                return false;
            }
        };
        let Ok(data) = frame.into_data() else { continue };
        let now = Instant::now();
        carry.extend_from_slice(&data);
        let mut start = 0;
        while let Some(k) = memchr_nl(&carry[start..]) {
            let line = &carry[start..start + k];
            start += k + 1;
            let Some(payload) = line.strip_prefix(b"data:") else { continue };
            let payload = payload.trim_ascii();
            if payload == b"[DONE]" {
                done = true;
                continue;
            }
            events += 1;
            if first {
                let us = now.duration_since(t0).as_micros().min(u32::MAX as u128) as u32;
                s.firsts.push((t0, us));
                first = false;
                last = now;
                if !*counted_ready {
                    *counted_ready = true;
                    mark_streaming(o, c);
                }
            } else if !contains(payload, b"\"choices\":[]") {
                s.gap.push(now.duration_since(last).as_micros().min(u32::MAX as u128) as u32);
                last = now;
            }
        }
        carry.drain(..start);
    }
    c.events.fetch_add(events, Ordering::Relaxed);
    if done {
        c.ok.fetch_add(1, Ordering::Relaxed);
    } else {
        c.err_truncated.fetch_add(1, Ordering::Relaxed);
    }
    true
}

fn memchr_nl(b: &[u8]) -> Option<usize> {
    b.iter().position(|&x| x == b'\n')
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn worker(i: usize, o: Arc<Opts>, c: Arc<Counters>, deadline: TInstant, hard: TInstant) -> Samples {
    let mut s = Samples::default();
    if !o.ramp.is_zero() {
        tokio::time::sleep(o.ramp.mul_f64(i as f64 / o.concurrency as f64)).await;
    }
    let body = body(&o);
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut counted_ready = false;
    while TInstant::now() < deadline && c.issued.fetch_add(1, Ordering::Relaxed) < o.requests {
        if sender.is_none() {
            sender = connect(&o.host).await;
            if sender.is_none() {
                c.err_connect.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        }
        let Some(snd) = sender.as_mut() else { continue };
        match tokio::time::timeout_at(hard, one_stream(&o, &c, &mut s, snd, body.clone(), &mut counted_ready))
            .await
        {
            Ok(true) => {}
            Ok(false) => sender = None,
            Err(_) => {
                c.cut.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    s
}

fn pct(v: &[u32], p: f64) -> u32 {
    if v.is_empty() {
        return 0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn stats(v: &mut [u32]) -> serde_json::Value {
    v.sort_unstable();
    serde_json::json!({
        "n": v.len(),
        "p50": pct(v, 0.50),
        "p90": pct(v, 0.90),
        "p99": pct(v, 0.99),
        "max": v.last().copied().unwrap_or(0),
    })
}

fn firsts(v: &mut [(Instant, u32)], started: Instant) -> serde_json::Value {
    v.sort_unstable_by_key(|&(t, _)| t);
    v.iter()
        .map(|&(t, us)| serde_json::json!([t.saturating_duration_since(started).as_millis() as u64, us]))
        .collect()
}

fn main() {
    let o = Arc::new(parse_args());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let started = Instant::now();
    let (mut all, c) = rt.block_on(async {
        let c = Arc::new(Counters::default());
        let now = TInstant::now();
        let deadline = now + o.duration;
        let hard = deadline + o.grace;
        let tasks: Vec<_> = (0..o.concurrency)
            .map(|i| tokio::spawn(worker(i, o.clone(), c.clone(), deadline, hard)))
            .collect();
        let mut all = Samples::default();
        for t in tasks {
            if let Ok(s) = t.await {
                all.firsts.extend(s.firsts);
                all.gap.extend(s.gap);
            }
        }
        (all, c)
    });
    let elapsed = started.elapsed().as_secs_f64();
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let out = serde_json::json!({
        "url": format!("http://{}{}", o.host, o.path),
        "concurrency": o.concurrency,
        "elapsed_s": elapsed,
        "streams_ok": ld(&c.ok),
        "events": ld(&c.events),
        "errors": {
            "connect": ld(&c.err_connect),
            "status": ld(&c.err_status),
            "body": ld(&c.err_body),
            "truncated": ld(&c.err_truncated),
        },
        "cut_at_deadline": ld(&c.cut),
        "max_streaming": c.streaming.load(Ordering::Relaxed),
        "ttft_us": stats(&mut all.firsts.iter().map(|&(_, us)| us).collect::<Vec<_>>()),
        "gap_us": stats(&mut all.gap),
        // Which streams were slow to start, and when: [ms after the run started, µs to first event].
        "first_event_by_start": firsts(&mut all.firsts, started),
    });
    eprintln!(
        "sse-load: {} streams ok in {:.1}s, errors {}, ttft p50 {}us p99 {}us, gap p50 {}us p99 {}us",
        out["streams_ok"],
        elapsed,
        out["errors"],
        out["ttft_us"]["p50"],
        out["ttft_us"]["p99"],
        out["gap_us"]["p50"],
        out["gap_us"]["p99"]
    );
    println!("{out}");
}
