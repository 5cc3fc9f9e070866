//! Plain std TcpStream HTTP/1.1 client for the mock-backend tests: writes requests, reads responses
//! (chunked, Content-Length or until close) and splits SSE bodies into events.
#![allow(dead_code)]

use llmproxy::mock::{MockBackend, MockOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

pub fn start(opts: MockOptions) -> MockBackend {
    MockBackend::start(TcpListener::bind("127.0.0.1:0").unwrap(), opts)
}

pub fn fast(flavor: llmproxy::mock::Flavor, tokens: u32) -> MockBackend {
    start(MockOptions { ttft: Duration::ZERO, itl: Duration::ZERO, tokens, ..MockOptions::new(flavor) })
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body's framing ended properly (last chunk, full length, or EOF for close framing).
    pub complete: bool,
    /// When the first SSE line (`data:`/`event:`) arrived, measured from the request write.
    pub first_event_at: Option<Duration>,
    pub elapsed: Duration,
    /// EOF was already seen while reading this response (see `Client::closed_now`).
    pub closed: bool,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("bad JSON {e}: {}", self.text()))
    }
    /// `(event name, data)` of every SSE event.
    pub fn events(&self) -> Vec<(Option<String>, String)> {
        sse_events(&self.text())
    }
    /// The JSON of every `data:` event except `[DONE]`.
    pub fn data_json(&self) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|(_, d)| d != "[DONE]")
            .map(|(_, d)| serde_json::from_str(&d).unwrap_or_else(|e| panic!("bad chunk {e}: {d}")))
            .collect()
    }
}

pub fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let mut ev = None;
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    ev = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                }
            }
            (ev, data.join("\n"))
        })
        .collect()
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Client {
    pub fn connect(b: &MockBackend) -> Client {
        let stream = TcpStream::connect(b.addr()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { stream, buf: Vec::new(), eof: false }
    }

    pub fn write_request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: mock\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if method == "POST" {
            req.push_str(&format!("content-type: application/json\r\ncontent-length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.stream.write_all(req.as_bytes()).unwrap();
    }

    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 65536];
        match self.stream.read(&mut tmp) {
            Ok(0) | Err(_) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        let t0 = Instant::now();
        self.write_request(method, path, headers, body);
        self.read_response(t0)
    }

    pub fn read_response(&mut self, t0: Instant) -> Resp {
        let (head_len, status, headers) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).unwrap() {
                let h = r
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect::<Vec<_>>();
                break (n, r.code.unwrap(), h);
            }
            assert!(self.fill(), "connection closed before a response head");
        };
        self.buf.drain(..head_len);
        let get = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
        let mut first_event_at = None;
        let mut mark = |body: &[u8]| {
            if first_event_at.is_none() && (contains(body, b"data:") || contains(body, b"event:")) {
                first_event_at = Some(t0.elapsed());
            }
        };
        let mut body = Vec::new();
        let complete;
        if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                // Decode every complete chunk in the buffer.
                let mut done = false;
                while let Some(eol) = find(&self.buf, b"\r\n") {
                    let size =
                        usize::from_str_radix(std::str::from_utf8(&self.buf[..eol]).unwrap(), 16).unwrap();
                    if self.buf.len() < eol + 2 + size + 2 {
                        break;
                    }
                    body.extend_from_slice(&self.buf[eol + 2..eol + 2 + size]);
                    assert_eq!(&self.buf[eol + 2 + size..eol + 4 + size], b"\r\n");
                    self.buf.drain(..eol + 4 + size);
                    mark(&body);
                    if size == 0 {
                        done = true;
                        break;
                    }
                }
                if done {
                    complete = true;
                    break;
                }
                if !self.fill() {
                    complete = false;
                    break;
                }
            }
        } else if let Some(len) = get("content-length") {
            let len: usize = len.trim().parse().unwrap();
            while self.buf.len() < len {
                mark(&self.buf);
                if !self.fill() {
                    break;
                }
            }
            let n = len.min(self.buf.len());
            complete = n == len;
            body.extend(self.buf.drain(..n));
            mark(&body);
        } else {
            loop {
                mark(&self.buf);
                if !self.fill() {
                    break;
                }
            }
            body = std::mem::take(&mut self.buf);
            mark(&body);
            complete = true;
        }
        let closed = self.eof;
        Resp { status, headers, body, complete, first_event_at, elapsed: t0.elapsed(), closed }
    }

    /// Whether the server has closed the connection (EOF within a short wait).
    pub fn closed_now(&mut self) -> bool {
        if self.eof {
            return true;
        }
        self.stream.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut b = [0u8; 1];
        let r = match self.stream.peek(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        };
        self.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        r
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn contains(h: &[u8], n: &[u8]) -> bool {
    find(h, n).is_some()
}

/// One request on a fresh connection.
pub fn once(b: &MockBackend, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    Client::connect(b).request(method, path, headers, body)
}

pub fn chat_body(stream: bool, include_usage: Option<bool>) -> String {
    let so = match include_usage {
        Some(iu) => format!(r#","stream_options":{{"include_usage":{iu}}}"#),
        None => String::new(),
    };
    format!(
        r#"{{"model":"m1","messages":[{{"role":"user","content":"hello there world"}}],"stream":{stream}{so}}}"#
    )
}
