//! stream-load: the client side of the streams-at-scale benchmark. One thread, level-triggered epoll:
//! opens N streaming chat requests over `--ramp-ms` and holds them all; each event's delay is
//! measured from the send time `stream-backend` stamps into it (`"ts":`, CLOCK_MONOTONIC ns) to the
//! moment its bytes are read here. Once every stream has had its first event it waits `--settle-ms`,
//! then measures for `--window-ms`: the delays of the events read in the window, and, with `--pid`,
//! the proxy processes' CPU time (all its threads, from /proc/PID/task/*/schedstat) and resident memory.
//! Then it lets every stream finish and checks each got `--expect-events` token events, its usage
//! event and `data: [DONE]`. One JSON object on stdout, a summary on stderr.
//!
//!   stream-load --url http://127.0.0.1:18010/v1/chat/completions -c 6000 --ramp-ms 8000 \
//!       --settle-ms 2000 --window-ms 15000 --expect-events 30 --pid 1234

#[path = "ev.rs"]
mod ev;

use ev::{find, header, now_ns, parse_u64, Epoll};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

struct Opts {
    addr: SocketAddr,
    host: String,
    path: String,
    n: usize,
    ramp_ns: u64,
    settle_ns: u64,
    window_ns: u64,
    expect: u64,
    /// The proxy's processes (`--pid`, repeatable: their CPU and RSS are summed).
    pid: Option<Vec<u32>>,
    timeout_ns: u64,
    /// Extra request header lines (`--header 'name: value'`).
    headers: String,
}

enum Body {
    Chunked { size: Option<usize> },
    Length(u64),
    Close,
}

struct Conn {
    s: TcpStream,
    raw: Vec<u8>,
    /// None until the response head is read.
    body: Option<Body>,
    line: Vec<u8>,
    tokens: u64,
    usage: bool,
    done: bool,
}

#[derive(Default)]
struct Tally {
    streaming: usize,
    open: usize,
    ok: u64,
    err_connect: u64,
    err_status: u64,
    err_truncated: u64,
    err_count: u64,
    events: u64,
    in_window: bool,
    delays_ns: Vec<u64>,
}

fn usage() -> ! {
    eprintln!(
        "usage: stream-load --url http://HOST:PORT/PATH -c N [--ramp-ms MS] [--settle-ms MS] [--window-ms MS]\n\
         \x20      [--expect-events K] [--pid PID].. [--timeout-s S] [--header 'name: value']..."
    );
    std::process::exit(64)
}

fn parse() -> Opts {
    let mut url = None;
    let mut o = Opts {
        addr: "127.0.0.1:1".parse().unwrap_or_else(|_| usage()),
        host: String::new(),
        path: String::new(),
        n: 1,
        ramp_ns: 0,
        settle_ns: 2_000_000_000,
        window_ns: 10_000_000_000,
        expect: 0,
        pid: None,
        timeout_ns: 600_000_000_000,
        headers: String::new(),
    };
    let mut a = std::env::args().skip(1);
    let ms = |v: Option<String>| v.and_then(|s| s.parse::<u64>().ok()).unwrap_or_else(|| usage()) * 1_000_000;
    while let Some(k) = a.next() {
        match k.as_str() {
            "--url" => url = a.next(),
            "-c" => o.n = a.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| usage()),
            "--ramp-ms" => o.ramp_ns = ms(a.next()),
            "--settle-ms" => o.settle_ns = ms(a.next()),
            "--window-ms" => o.window_ns = ms(a.next()),
            "--expect-events" => o.expect = a.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| usage()),
            "--pid" => {
                let p = a.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| usage());
                o.pid.get_or_insert_with(Vec::new).push(p);
            }
            "--timeout-s" => o.timeout_ns = ms(a.next()) * 1000,
            "--header" => {
                o.headers += &a.next().unwrap_or_else(|| usage());
                o.headers += "\r\n";
            }
            _ => usage(),
        }
    }
    let url = url.unwrap_or_else(|| usage());
    let rest = url.strip_prefix("http://").unwrap_or_else(|| usage());
    let (h, p) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    o.host = h.to_string();
    o.path = if p.is_empty() { "/v1/chat/completions".into() } else { p.to_string() };
    o.addr = h.parse().unwrap_or_else(|_| usage());
    o
}

/// Resident memory of the processes in KiB.
fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| rss_kib1(p)).sum()
}

fn rss_kib1(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time of every thread of the processes, in ns (first field of each task's schedstat).
fn cpu_ns(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| cpu_ns1(p)).sum()
}

fn cpu_ns1(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    dir.map_while(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Handles one SSE line of a stream.
fn on_line(c: &mut Conn, t: &mut Tally, line: &[u8], now: u64) {
    let Some(p) = line.strip_prefix(b"data:") else { return };
    let p = p.trim_ascii();
    if p == b"[DONE]" {
        c.done = true;
    } else if find(p, b"\"choices\":[]").is_some() {
        c.usage = true;
    } else {
        c.tokens += 1;
        if c.tokens == 1 {
            t.streaming += 1;
        }
        if t.in_window {
            t.events += 1;
            if let Some(ts) = find(p, b"\"ts\":").and_then(|i| parse_u64(&p[i + 5..])) {
                t.delays_ns.push(now.saturating_sub(ts));
            }
        }
    }
}

/// Feeds body payload bytes to the line splitter.
fn feed(c: &mut Conn, t: &mut Tally, mut data: &[u8], now: u64) {
    while let Some(i) = data.iter().position(|&b| b == b'\n') {
        let mut line = std::mem::take(&mut c.line);
        line.extend_from_slice(&data[..i]);
        let l = line.strip_suffix(b"\r").unwrap_or(&line);
        on_line(c, t, l, now);
        line.clear();
        c.line = line;
        data = &data[i + 1..];
    }
    c.line.extend_from_slice(data);
}

/// Decodes what is in `c.raw`; returns true when the response is complete.
fn decode(c: &mut Conn, t: &mut Tally, now: u64) -> Result<bool, ()> {
    if c.body.is_none() {
        let Some(h) = find(&c.raw, b"\r\n\r\n") else { return Ok(false) };
        let head = &c.raw[..h + 4];
        if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
            t.err_status += 1;
            return Err(());
        }
        c.body =
            Some(if header(head, b"transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case(b"chunked")) {
                Body::Chunked { size: None }
            } else if let Some(n) = header(head, b"content-length").and_then(parse_u64) {
                Body::Length(n)
            } else {
                Body::Close
            });
        c.raw.drain(..h + 4);
    }
    let mut raw = std::mem::take(&mut c.raw);
    let mut at = 0;
    let mut complete = false;
    loop {
        match c.body.as_mut() {
            Some(Body::Chunked { size: None }) => {
                let Some(e) = find(&raw[at..], b"\r\n") else { break };
                let hex = &raw[at..at + e];
                let hex = &hex[..hex.iter().position(|&b| b == b';').unwrap_or(hex.len())];
                let n = std::str::from_utf8(hex).ok().and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
                let Some(n) = n else { return Err(()) };
                at += e + 2;
                if n == 0 {
                    complete = true;
                    break;
                }
                c.body = Some(Body::Chunked { size: Some(n) });
            }
            // The payload is done; its CRLF follows.
            Some(Body::Chunked { size: Some(0) }) => {
                if raw.len() - at < 2 {
                    break;
                }
                at += 2;
                c.body = Some(Body::Chunked { size: None });
            }
            Some(Body::Chunked { size: Some(n) }) => {
                let n = *n;
                let take = n.min(raw.len() - at);
                if take == 0 {
                    break;
                }
                feed(c, t, &raw[at..at + take], now);
                at += take;
                c.body = Some(Body::Chunked { size: Some(n - take) });
            }
            Some(Body::Length(n)) => {
                let take = (*n).min((raw.len() - at) as u64) as usize;
                *n -= take as u64;
                let fin = *n == 0;
                feed(c, t, &raw[at..at + take], now);
                at += take;
                complete = fin;
                break;
            }
            Some(Body::Close) | None => {
                feed(c, t, &raw[at..], now);
                at = raw.len();
                break;
            }
        }
    }
    raw.drain(..at);
    c.raw = raw;
    Ok(complete)
}

fn request(o: &Opts) -> Vec<u8> {
    let body = r#"{"model":"bench","messages":[{"role":"user","content":"Write a long story."}],"max_tokens":4096,"stream":true,"stream_options":{"include_usage":true}}"#;
    format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\naccept: text/event-stream\r\ncontent-length: {}\r\n{}\r\n{body}",
        o.path,
        o.host,
        body.len(),
        o.headers
    )
    .into_bytes()
}

fn pct(v: &[u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v[(((v.len() - 1) as f64) * p).round() as usize]
}

fn main() -> std::io::Result<()> {
    let o = parse();
    let nofile = ev::raise_nofile();
    let req = request(&o);
    let mut ep = Epoll::new()?;
    let mut conns: Vec<Option<Conn>> = Vec::with_capacity(o.n);
    let mut t = Tally::default();
    let rss_idle = o.pid.as_deref().map(rss_kib);
    let t0 = now_ns();
    let mut opened = 0usize;
    let mut ready_at = None;
    let mut win: Option<(u64, u64, u64)> = None; // (start ns, cpu ns, rss)
    let mut result = serde_json::Map::new();
    let mut ready = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = now_ns();
        // Open the connections due by now.
        let due = if o.ramp_ns == 0 {
            o.n
        } else {
            (((now - t0) as u128 * o.n as u128 / o.ramp_ns as u128) as usize + 1).min(o.n)
        };
        while opened < due {
            opened += 1;
            match TcpStream::connect_timeout(&o.addr, Duration::from_secs(5)) {
                Ok(mut s) => {
                    let _ = s.set_nodelay(true);
                    if s.write_all(&req).is_err() || s.set_nonblocking(true).is_err() {
                        t.err_connect += 1;
                        continue;
                    }
                    let slot = conns.len();
                    ep.add(s.as_raw_fd(), slot as u64, false)?;
                    t.open += 1;
                    conns.push(Some(Conn {
                        s,
                        raw: Vec::new(),
                        body: None,
                        line: Vec::new(),
                        tokens: 0,
                        usage: false,
                        done: false,
                    }));
                }
                Err(_) => t.err_connect += 1,
            }
        }
        if ready_at.is_none() && t.streaming + t.err_connect as usize + t.err_status as usize >= o.n {
            ready_at = Some(now);
            eprintln!("stream-load: {} streams open after {:.1} s", t.streaming, (now - t0) as f64 / 1e9);
        }
        if let Some(r) = ready_at {
            if win.is_none() && now >= r + o.settle_ns {
                t.in_window = true;
                let pids = o.pid.as_deref().unwrap_or(&[]);
                win = Some((now, cpu_ns(pids), rss_kib(pids)));
            }
            if let Some((ws, c0, r0)) = win {
                if t.in_window && now >= ws + o.window_ns {
                    t.in_window = false;
                    let secs = (now - ws) as f64 / 1e9;
                    result.insert("window_s".into(), secs.into());
                    result.insert("window_events".into(), t.events.into());
                    result.insert("open_at_window_end".into(), t.open.into());
                    if let Some(pids) = o.pid.as_deref() {
                        let c1 = cpu_ns(pids);
                        let r1 = rss_kib(pids);
                        let idle = rss_idle.unwrap_or(0);
                        let busy = (r0 + r1) / 2;
                        result.insert("rss_idle_kib".into(), idle.into());
                        result.insert("rss_busy_kib".into(), busy.into());
                        result.insert(
                            "kib_per_stream".into(),
                            ((busy as f64 - idle as f64) / o.n as f64).into(),
                        );
                        let cpu = (c1 - c0) as f64 / 1e3;
                        result.insert("proxy_cpu_pct".into(), (cpu / 1e4 / secs).into());
                        if t.events > 0 {
                            result.insert("cpu_us_per_event".into(), (cpu / t.events as f64).into());
                        }
                    }
                }
            }
        }
        let finished = opened == o.n && t.open == 0;
        if finished || now - t0 > o.timeout_ns {
            break;
        }
        let timeout = if opened < o.n { 1 } else { 20 };
        ep.wait(timeout, &mut ready)?;
        let now = now_ns();
        for &(token, readable, _, hup) in &ready {
            let slot = token as usize;
            let Some(c) = conns[slot].as_mut() else { continue };
            if !readable && !hup {
                continue;
            }
            let mut end = false;
            let mut failed = false;
            loop {
                match c.s.read(&mut buf) {
                    Ok(0) => {
                        end = true;
                        break;
                    }
                    Ok(n) => {
                        c.raw.extend_from_slice(&buf[..n]);
                        if n < buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        end = true;
                        break;
                    }
                }
            }
            match decode(c, &mut t, now) {
                Ok(true) => end = true,
                Ok(false) => {}
                Err(()) => failed = true,
            }
            if end || failed {
                if !failed {
                    if !(c.done && c.usage) {
                        t.err_truncated += 1;
                    } else if o.expect > 0 && c.tokens != o.expect {
                        t.err_count += 1;
                    } else {
                        t.ok += 1;
                    }
                }
                conns[slot] = None;
                t.open -= 1;
            }
        }
    }
    let mut d = std::mem::take(&mut t.delays_ns);
    d.sort_unstable();
    let us = |v: u64| v as f64 / 1e3;
    result.insert("streams".into(), o.n.into());
    result.insert("streams_ok".into(), t.ok.into());
    result.insert("open_files_limit".into(), nofile.into());
    result.insert(
        "errors".into(),
        serde_json::json!({"connect": t.err_connect, "status": t.err_status, "truncated": t.err_truncated,
            "wrong_event_count": t.err_count, "unfinished": t.open}),
    );
    result.insert(
        "delay_us".into(),
        serde_json::json!({"n": d.len(), "p50": us(pct(&d, 0.5)), "p90": us(pct(&d, 0.9)),
            "p99": us(pct(&d, 0.99)), "p999": us(pct(&d, 0.999)), "max": us(d.last().copied().unwrap_or(0))}),
    );
    let out = serde_json::Value::Object(result);
    eprintln!("stream-load: {out}");
    println!("{out}");
    Ok(())
}
