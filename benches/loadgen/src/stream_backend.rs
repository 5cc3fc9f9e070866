//! stream-backend: a slow SSE backend for the streams-at-scale benchmark. One thread, level-triggered
//! epoll, no thread per stream: it holds tens of thousands of open streams, each sending one small
//! OpenAI-style chunk every `--every-ms`, stamped with its send time (`"ts":` nanoseconds on
//! CLOCK_MONOTONIC, read just before the write) so that a client on the same machine can time each
//! event's delay. After `--events` chunks it sends a usage chunk and `data: [DONE]`, then serves the
//! next request on the connection (keep-alive: proxies pool backend connections). A request header
//! `x-stream-events: K` overrides `--events` for that stream (the benchmark's warm-up uses it).
//!
//!   stream-backend --listen 127.0.0.1:18004 --every-ms 1000 --events 40
//!
//! Responses are chunked, one chunk per event, as vLLM sends them. Every stream has the same
//! period, so the timer queue is a FIFO kept in due order without sorting.

#[path = "ev.rs"]
mod ev;

use ev::{find, header, now_ns, parse_u64, Epoll};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;

const LISTENER: u64 = u64::MAX;
const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";

struct Conn {
    s: TcpStream,
    gen: u32,
    inbuf: Vec<u8>,
    /// Bytes the socket did not take yet (EPOLLOUT armed while non-empty).
    out: Vec<u8>,
    /// Events sent in the current stream; None while reading a request.
    sent: Option<u32>,
    /// Token events of the current stream (`--events`, or the request's `x-stream-events`).
    events: u32,
    close_after: bool,
    polling_out: bool,
}

struct Opts {
    every_ns: u64,
    events: u32,
}

fn arg(name: &str) -> Option<String> {
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == name {
            return it.next();
        }
    }
    None
}

/// Appends one chunk holding one SSE event.
fn chunk(out: &mut Vec<u8>, event: &[u8]) {
    let _ = write!(out, "{:x}\r\n", event.len());
    out.extend_from_slice(event);
    out.extend_from_slice(b"\r\n");
}

fn token_event(buf: &mut Vec<u8>, n: u32) {
    buf.clear();
    let _ = write!(
        buf,
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1768386600,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" tok{n}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"ts\":{}}}\n\n",
        now_ns()
    );
}

struct Server {
    ep: Epoll,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    next_gen: u32,
    /// (due ns, slot, generation), in due order.
    timers: VecDeque<(u64, usize, u32)>,
    opts: Opts,
    scratch: Vec<u8>,
}

impl Server {
    fn token(slot: usize, gen: u32) -> u64 {
        (u64::from(gen) << 32) | slot as u64
    }

    fn close(&mut self, slot: usize) {
        // Dropping the stream closes it, which removes it from the epoll set.
        if self.conns[slot].take().is_some() {
            self.free.push(slot);
        }
    }

    /// Queues `bytes` on the connection and writes what the socket takes; false when it failed.
    fn send(&mut self, slot: usize, bytes: &[u8]) -> bool {
        let Some(c) = self.conns[slot].as_mut() else { return false };
        let was_empty = c.out.is_empty();
        c.out.extend_from_slice(bytes);
        if !was_empty {
            return true;
        }
        self.flush(slot)
    }

    fn flush(&mut self, slot: usize) -> bool {
        let Some(c) = self.conns[slot].as_mut() else { return false };
        let mut w = 0;
        while w < c.out.len() {
            match c.s.write(&c.out[w..]) {
                Ok(0) => return false,
                Ok(n) => w += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        c.out.drain(..w);
        let want = !c.out.is_empty();
        if want != c.polling_out {
            c.polling_out = want;
            let _ = self.ep.modify(c.s.as_raw_fd(), Self::token(slot, c.gen), want);
        }
        true
    }

    fn on_readable(&mut self, slot: usize) {
        let Some(c) = self.conns[slot].as_mut() else { return };
        let mut buf = [0u8; 4096];
        loop {
            match c.s.read(&mut buf) {
                Ok(0) => return self.close(slot),
                Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => return self.close(slot),
            }
        }
        self.try_start(slot);
    }

    /// Starts a stream when a whole request is buffered and none is running.
    fn try_start(&mut self, slot: usize) {
        let Some(c) = self.conns[slot].as_mut() else { return };
        if c.sent.is_some() {
            return;
        }
        let Some(h) = find(&c.inbuf, b"\r\n\r\n") else { return };
        let head = &c.inbuf[..h + 4];
        let len = header(head, b"content-length").and_then(parse_u64).unwrap_or(0) as usize;
        if c.inbuf.len() < h + 4 + len {
            return;
        }
        c.close_after = header(head, b"connection").is_some_and(|v| v.eq_ignore_ascii_case(b"close"));
        c.events = header(head, b"x-stream-events")
            .and_then(parse_u64)
            .map_or(self.opts.events, |n| n.clamp(1, 1_000_000) as u32);
        c.inbuf.drain(..h + 4 + len);
        c.sent = Some(1);
        let gen = c.gen;
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        out.extend_from_slice(HEAD);
        let mut ev = Vec::with_capacity(256);
        token_event(&mut ev, 0);
        chunk(&mut out, &ev);
        let ok = self.send(slot, &out);
        self.scratch = out;
        if !ok {
            return self.close(slot);
        }
        self.timers.push_back((now_ns() + self.opts.every_ns, slot, gen));
    }

    /// Sends the next event of a stream (or its end); re-arms its timer.
    fn tick(&mut self, slot: usize) {
        let Some(c) = self.conns[slot].as_mut() else { return };
        let events = c.events;
        let Some(sent) = c.sent else { return };
        let gen = c.gen;
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        let mut ev = Vec::with_capacity(256);
        let done = sent >= events;
        if done {
            let usage = format!(
                "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1768386600,\"model\":\"bench\",\"choices\":[],\"usage\":{{\"prompt_tokens\":10,\"completion_tokens\":{events},\"total_tokens\":{}}}}}\n\n",
                events + 10
            );
            chunk(&mut out, usage.as_bytes());
            chunk(&mut out, b"data: [DONE]\n\n");
            out.extend_from_slice(b"0\r\n\r\n");
            c.sent = None;
        } else {
            token_event(&mut ev, sent);
            chunk(&mut out, &ev);
            c.sent = Some(sent + 1);
        }
        let close_after = c.close_after;
        let ok = self.send(slot, &out);
        self.scratch = out;
        if !ok {
            return self.close(slot);
        }
        if !done {
            self.timers.push_back((now_ns() + self.opts.every_ns, slot, gen));
        } else if close_after {
            self.close(slot);
        } else {
            self.try_start(slot);
        }
    }

    fn accept(&mut self, l: &TcpListener) {
        while let Ok((s, _)) = l.accept() {
            let _ = s.set_nodelay(true);
            if s.set_nonblocking(true).is_err() {
                continue;
            }
            let slot = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            self.next_gen = self.next_gen.wrapping_add(1);
            let gen = self.next_gen;
            if self.ep.add(s.as_raw_fd(), Self::token(slot, gen), false).is_err() {
                self.free.push(slot);
                continue;
            }
            self.conns[slot] = Some(Conn {
                s,
                gen,
                inbuf: Vec::new(),
                out: Vec::new(),
                sent: None,
                events: 1,
                close_after: false,
                polling_out: false,
            });
        }
    }
}

fn main() -> std::io::Result<()> {
    let Some(listen) = arg("--listen") else {
        eprintln!("usage: stream-backend --listen ADDR [--every-ms 1000] [--events 40]");
        std::process::exit(2);
    };
    let every_ms: u64 = arg("--every-ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
    let events: u32 = arg("--events").and_then(|v| v.parse().ok()).unwrap_or(40);
    let nofile = ev::raise_nofile();
    let l = TcpListener::bind(&listen)?;
    // A long accept queue: thousands of streams open within seconds while this thread is busy,
    // and an overflowing queue drops SYNs, which a proxy sees as a connect timeout.
    // SAFETY: listen(2) again on our bound socket only changes its backlog.
    unsafe { libc::listen(l.as_raw_fd(), 65535) };
    l.set_nonblocking(true)?;
    let mut sv = Server {
        ep: Epoll::new()?,
        conns: Vec::new(),
        free: Vec::new(),
        next_gen: 0,
        timers: VecDeque::new(),
        opts: Opts { every_ns: every_ms * 1_000_000, events: events.max(1) },
        scratch: Vec::new(),
    };
    sv.ep.add(l.as_raw_fd(), LISTENER, false)?;
    eprintln!("stream-backend on {listen}: one event every {every_ms} ms, {events} events a stream; open files {nofile}");
    let mut ready = Vec::new();
    loop {
        let now = now_ns();
        while let Some(&(due, slot, gen)) = sv.timers.front() {
            if due > now {
                break;
            }
            sv.timers.pop_front();
            if sv.conns[slot].as_ref().is_some_and(|c| c.gen == gen) {
                sv.tick(slot);
            }
        }
        let timeout = sv.timers.front().map_or(-1, |&(due, _, _)| {
            let left = due.saturating_sub(now_ns());
            left.div_ceil(1_000_000).min(1000) as i32
        });
        sv.ep.wait(timeout, &mut ready)?;
        for &(token, readable, writable, _hup) in &ready {
            if token == LISTENER {
                sv.accept(&l);
                continue;
            }
            let (slot, gen) = ((token & 0xffff_ffff) as usize, (token >> 32) as u32);
            if sv.conns.get(slot).and_then(|c| c.as_ref()).is_none_or(|c| c.gen != gen) {
                continue;
            }
            if writable && !sv.flush(slot) {
                sv.close(slot);
                continue;
            }
            if readable {
                sv.on_readable(slot);
            }
        }
    }
}
