//! A small blocking HTTP/1.1 client for webhook POSTs, on std sockets (one per delivery thread).
//! Written here rather than using ureq because delivery needs control ureq 2 does not give:
//! headers and body leave in one `write` (one segment for a small record), TCP_NODELAY, and
//! TCP_QUICKACK before each response read, so a receiver that writes its answer in two segments
//! without TCP_NODELAY (Python's `http.server`) is not stalled ~40 ms by Nagle + delayed ACK.
//! Keep-alive: the connection is reused until the server closes it or an error occurs; a request on a
//! reused connection that finds it closed before any answer byte is sent once more on a new one.
//! `https://` goes through rustls (ring provider), see [`super::tls`].

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

/// Response bodies are read (so the connection can be reused) up to this much, then dropped.
const MAX_DRAIN: usize = 64 * 1024;
const MAX_HEAD: usize = 16 * 1024;

pub use crate::config::{parse_hook_url as parse_url, HookTarget as Target};

trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

struct Conn {
    io: Box<dyn Io>,
    fd: i32,
}

/// One keep-alive connection's worth of client; owned by one delivery thread.
pub struct Client {
    target: Target,
    host_header: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    conn: Option<Conn>,
    out: Vec<u8>,
    inb: Vec<u8>,
}

impl Client {
    pub fn new(target: Target, tls: Option<Arc<rustls::ClientConfig>>, timeout: Duration) -> Client {
        let default_port = if target.tls { 443 } else { 80 };
        let host = if target.host.contains(':') { format!("[{}]", target.host) } else { target.host.clone() };
        let host_header = if target.port == default_port { host } else { format!("{host}:{}", target.port) };
        Client { target, host_header, tls, timeout, conn: None, out: Vec::new(), inb: Vec::new() }
    }

    /// POSTs `body` with `headers`; the answer's status code, or what went wrong.
    pub fn post(&mut self, headers: &[(&str, &str)], body: &[u8]) -> Result<u16, String> {
        self.out.clear();
        self.out.extend_from_slice(b"POST ");
        self.out.extend_from_slice(self.target.path.as_bytes());
        self.out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.out.extend_from_slice(self.host_header.as_bytes());
        self.out.extend_from_slice(b"\r\nUser-Agent: llmproxy\r\nContent-Length: ");
        self.out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        self.out.extend_from_slice(b"\r\n");
        for (k, v) in headers {
            self.out.extend_from_slice(k.as_bytes());
            self.out.extend_from_slice(b": ");
            self.out.extend_from_slice(v.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(body);
        let reused = self.conn.is_some();
        match self.exchange() {
            Ok(s) => Ok(s),
            Err(Failure::ClosedBeforeAnswer) if reused => {
                self.conn = None;
                self.exchange().map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn exchange(&mut self) -> Result<u16, Failure> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().map_err(Failure::Connect)?);
        }
        let res = self.send_and_read();
        if !matches!(res, Ok((_, true))) {
            self.conn = None;
        }
        res.map(|(s, _)| s)
    }

    /// Returns the status and whether the connection may be reused.
    fn send_and_read(&mut self) -> Result<(u16, bool), Failure> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(Failure::Io(io::Error::other("no connection")));
        };
        conn.io.write_all(&self.out).map_err(Failure::Io)?;
        conn.io.flush().map_err(Failure::Io)?;
        self.inb.clear();
        // Head.
        let (status, head_len, body_len, keep) = loop {
            quickack(conn.fd);
            let n = read_some(&mut *conn.io, &mut self.inb)?;
            if n == 0 {
                return Err(if self.inb.is_empty() {
                    Failure::ClosedBeforeAnswer
                } else {
                    Failure::Truncated
                });
            }
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.inb) {
                Ok(httparse::Status::Complete(len)) => {
                    let status = resp.code.unwrap_or(0);
                    if (100..200).contains(&status) {
                        self.inb.drain(..len);
                        continue;
                    }
                    let mut body = BodyLen::Close;
                    let mut keep = resp.version == Some(1);
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let v = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok());
                            body = BodyLen::Length(v.ok_or(Failure::BadAnswer)?);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                            && h.value.eq_ignore_ascii_case(b"chunked")
                        {
                            body = BodyLen::Chunked;
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            if h.value.eq_ignore_ascii_case(b"close") {
                                keep = false;
                            } else if h.value.eq_ignore_ascii_case(b"keep-alive") {
                                keep = true;
                            }
                        }
                    }
                    if status == 204 || status == 304 {
                        body = BodyLen::Length(0);
                    }
                    break (status, len, body, keep);
                }
                Ok(httparse::Status::Partial) if self.inb.len() < MAX_HEAD => {}
                _ => return Err(Failure::BadAnswer),
            }
        };
        self.inb.drain(..head_len);
        let reusable = match body_len {
            BodyLen::Length(n) if n <= MAX_DRAIN => {
                while self.inb.len() < n {
                    if read_some(&mut *conn.io, &mut self.inb)? == 0 {
                        return Ok((status, false));
                    }
                }
                keep && self.inb.len() == n
            }
            BodyLen::Chunked => drain_chunked(&mut *conn.io, &mut self.inb)? && keep,
            _ => false,
        };
        Ok((status, reusable))
    }

    fn connect(&self) -> io::Result<Conn> {
        let addrs = (self.target.host.as_str(), self.target.port).to_socket_addrs()?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name resolved to no address");
        for a in addrs {
            match TcpStream::connect_timeout(&a, self.timeout) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(self.timeout))?;
                    s.set_write_timeout(Some(self.timeout))?;
                    let fd = s.as_raw_fd();
                    let io: Box<dyn Io> = match &self.tls {
                        Some(cfg) => Box::new(super::tls::wrap(cfg.clone(), &self.target.host, s)?),
                        None => Box::new(s),
                    };
                    return Ok(Conn { io, fd });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

enum BodyLen {
    Length(usize),
    Chunked,
    Close,
}

#[derive(Debug)]
enum Failure {
    Connect(io::Error),
    Io(io::Error),
    ClosedBeforeAnswer,
    Truncated,
    BadAnswer,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
            Failure::Io(e) => write!(f, "{e}"),
            Failure::ClosedBeforeAnswer => f.write_str("connection closed before an answer"),
            Failure::Truncated => f.write_str("connection closed inside the answer"),
            Failure::BadAnswer => f.write_str("not an HTTP/1.x answer"),
        }
    }
}

fn read_some(io: &mut dyn Io, buf: &mut Vec<u8>) -> Result<usize, Failure> {
    let old = buf.len();
    buf.resize(old + 16 * 1024, 0);
    let r = loop {
        match io.read(&mut buf[old..]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r,
        }
    };
    match r {
        Ok(n) => {
            buf.truncate(old + n);
            Ok(n)
        }
        Err(e) => {
            buf.truncate(old);
            Err(Failure::Io(e))
        }
    }
}

/// Reads a chunked body to its end (bounded); true when it ended cleanly and within bounds.
fn drain_chunked(io: &mut dyn Io, buf: &mut Vec<u8>) -> Result<bool, Failure> {
    let mut total = 0usize;
    loop {
        let line_end = loop {
            if let Some(i) = memchr::memmem::find(buf, b"\r\n") {
                break i;
            }
            if buf.len() > 1024 || read_some(io, buf)? == 0 {
                return Ok(false);
            }
        };
        let line = std::str::from_utf8(&buf[..line_end]).map_err(|_| Failure::BadAnswer)?;
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| Failure::BadAnswer)?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers until an empty line.
            loop {
                if let Some(i) = memchr::memmem::find(buf, b"\r\n") {
                    buf.drain(..i + 2);
                    if i == 0 {
                        return Ok(buf.is_empty());
                    }
                    continue;
                }
                if buf.len() > MAX_HEAD || read_some(io, buf)? == 0 {
                    return Ok(false);
                }
            }
        }
        total += size;
        if total > MAX_DRAIN {
            return Ok(false);
        }
        while buf.len() < size + 2 {
            if read_some(io, buf)? == 0 {
                return Ok(false);
            }
        }
        buf.drain(..size + 2);
    }
}

/// Acknowledge at once what arrives next (Linux resets quick-ack mode after a while; set it before
/// each read). Failure is harmless: the read only gets slower.
fn quickack(fd: i32) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a valid pointer to a c_int and its size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:3001/llm-usage?x=1").unwrap();
        assert_eq!(
            t,
            Target { tls: false, host: "127.0.0.1".into(), port: 3001, path: "/llm-usage?x=1".into() }
        );
        let t = parse_url("https://billing.example.com").unwrap();
        assert_eq!((t.tls, t.port, t.path.as_str()), (true, 443, "/"));
        let t = parse_url("http://[::1]:8080/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8080));
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://h:port/").is_err());
    }
}
