//! A raw HTTP/1.1 test client over std TcpStream: sends exact bytes, reads one response, decodes
//! chunked bodies and timestamps every body piece as it arrives (to check streaming pacing).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// (time since the request was sent, decoded bytes) for each piece as it arrived.
    pub pieces: Vec<(Duration, Vec<u8>)>,
    /// The server closed the connection after this response.
    pub closed: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    /// The `data:` payloads of an SSE body.
    pub fn sse_data(&self) -> Vec<String> {
        self.text().split("\n\n").filter_map(|e| e.strip_prefix("data: ").map(str::to_string)).collect()
    }
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

pub fn connect(addr: SocketAddr) -> Client {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.set_nodelay(true).unwrap();
    Client { stream, buf: Vec::new() }
}

/// A JSON POST request's bytes.
pub fn post(path: &str, body: &str, extra_headers: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra_headers}\r\n{body}", body.len())
        .into_bytes()
}

pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").into_bytes()
}

impl Client {
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write request");
    }

    fn fill(&mut self) -> usize {
        let mut tmp = [0u8; 16384];
        match self.stream.read(&mut tmp) {
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                n
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!(
                    "read timed out waiting for the response; got so far: {:?}",
                    String::from_utf8_lossy(&self.buf)
                )
            }
            Err(_) => 0,
        }
    }

    /// Reads one response (head + body).
    pub fn read_response(&mut self) -> Response {
        let t0 = Instant::now();
        let (status, headers, head_len) = loop {
            let mut h = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut h);
            if let Ok(httparse::Status::Complete(n)) = r.parse(&self.buf) {
                let hs = r
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect();
                break (r.code.unwrap_or(0), hs, n);
            }
            if self.fill() == 0 {
                panic!(
                    "connection closed before a response head; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        };
        self.buf.drain(..head_len);
        let mut resp = Response { status, headers, body: Vec::new(), pieces: Vec::new(), closed: false };
        let chunked = resp.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let length: Option<usize> = resp.header("content-length").and_then(|v| v.parse().ok());
        let close = resp.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if status == 204 || status == 304 || (100..200).contains(&status) {
            return resp;
        }
        if chunked {
            loop {
                // size line
                let line_end = loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break p;
                    }
                    assert!(self.fill() > 0, "closed inside chunked body");
                };
                let size_text = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                    .expect("chunk size");
                self.buf.drain(..line_end + 2);
                if size == 0 {
                    while self.buf.len() < 2 {
                        assert!(self.fill() > 0, "closed before final CRLF");
                    }
                    assert_eq!(&self.buf[..2], b"\r\n", "trailers not expected");
                    self.buf.drain(..2);
                    break;
                }
                while self.buf.len() < size + 2 {
                    assert!(self.fill() > 0, "closed inside a chunk");
                }
                let data: Vec<u8> = self.buf.drain(..size).collect();
                assert_eq!(&self.buf[..2], b"\r\n", "chunk not followed by CRLF");
                self.buf.drain(..2);
                resp.pieces.push((t0.elapsed(), data.clone()));
                resp.body.extend_from_slice(&data);
            }
        } else if let Some(n) = length {
            while self.buf.len() < n {
                assert!(self.fill() > 0, "closed inside a Content-Length body");
                resp.pieces.push((t0.elapsed(), Vec::new()));
            }
            resp.body = self.buf.drain(..n).collect();
        } else {
            while self.fill() > 0 {}
            resp.body = std::mem::take(&mut self.buf);
            resp.closed = true;
            return resp;
        }
        if close {
            resp.closed = self.is_closed();
        }
        resp
    }

    /// True when the server has closed the connection (EOF within 2 s).
    pub fn is_closed(&mut self) -> bool {
        self.stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut tmp = [0u8; 1];
        let r = matches!(self.stream.read(&mut tmp), Ok(0) | Err(_));
        self.stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        r
    }

    pub fn request(&mut self, bytes: &[u8]) -> Response {
        self.send(bytes);
        self.read_response()
    }
}

/// One request on a new connection.
pub fn request(addr: SocketAddr, bytes: &[u8]) -> Response {
    connect(addr).request(bytes)
}
