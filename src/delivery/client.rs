//! A small blocking HTTP/1.1 client for webhook POSTs, on std sockets (one per delivery thread).
//! Written here rather than using ureq because delivery needs control ureq 2 does not give:
//! headers and body leave in one `write` (one segment for a small record), TCP_NODELAY, and
//! TCP_QUICKACK before each response read, so a receiver that writes its answer in two segments
//! without TCP_NODELAY (Python's `http.server`) is not stalled ~40 ms by Nagle + delayed ACK.
//! Keep-alive: the connection is reused until the server closes it or an error occurs; a request on a
//! reused connection that finds it closed before any answer byte is sent once more on a new one.
//! `https://` goes through rustls (ring provider), see [`super::tls`].

use crate::chunked::ChunkedDecoder;
use crate::http1::{self, BodyFraming, Parse, MAX_HEAD};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Response bodies are read (so the connection can be reused) up to this much, then dropped.
const MAX_DRAIN: usize = 64 * 1024;

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
        let fd = conn.fd;
        // The whole answer within the timeout (each read also has it as its socket timeout), so a
        // receiver that trickles bytes cannot hold this delivery thread.
        let deadline = Instant::now() + self.timeout;
        read_answer(&mut *conn.io, &mut self.inb, Some(deadline), || quickack(fd))
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

/// Why an exchange with the receiver failed.
#[derive(Debug)]
pub enum Failure {
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

/// Reads one HTTP/1.x answer from `io` (its bytes land in `inb`, cleared first; `before_read`
/// runs before each read of the head): its status and whether the connection may be reused (the
/// body was read to its end, within [`MAX_DRAIN`], and nothing followed it). Interim 1xx answers
/// are skipped. Any bytes are safe: a bad head or framing is [`Failure::BadAnswer`], never a panic;
/// a body too long to drain only makes the connection unusable. Bounded: at most [`MAX_HEAD`] of
/// heads (interim ones included) and 2 x [`MAX_DRAIN`] of raw body are read, and no read starts
/// after `deadline`.
pub fn read_answer<R: Read + ?Sized>(
    io: &mut R,
    inb: &mut Vec<u8>,
    deadline: Option<Instant>,
    mut before_read: impl FnMut(),
) -> Result<(u16, bool), Failure> {
    inb.clear();
    let mut io = Bounded { io, deadline };
    let io = &mut io;
    // Bytes of interim answers already dropped from `inb`.
    let mut interim = 0;
    let head = loop {
        if interim + inb.len() > MAX_HEAD {
            return Err(Failure::BadAnswer);
        }
        before_read();
        if read_some(io, inb)? == 0 {
            return Err(if inb.is_empty() { Failure::ClosedBeforeAnswer } else { Failure::Truncated });
        }
        // The gateway's response-head parser (framing, keep-alive); a buffer can hold an interim
        // answer and the final one, so parse until one is incomplete.
        let head = loop {
            match http1::parse_response(inb) {
                Parse::Complete(h) if (100..200).contains(&h.status) => {
                    interim += h.head_len;
                    inb.drain(..h.head_len);
                }
                Parse::Complete(h) => break Some(h),
                Parse::Partial => break None,
                Parse::Invalid(_) => return Err(Failure::BadAnswer),
            }
        };
        if let Some(h) = head {
            break h;
        }
    };
    inb.drain(..head.head_len);
    let reusable = match head.body {
        BodyFraming::None => head.keep_alive && inb.is_empty(),
        BodyFraming::Length(n) if n <= MAX_DRAIN as u64 => {
            let n = n as usize;
            while inb.len() < n {
                if read_some(io, inb)? == 0 {
                    return Ok((head.status, false));
                }
            }
            head.keep_alive && inb.len() == n
        }
        BodyFraming::Chunked => drain_chunked(io, inb)? && head.keep_alive,
        _ => false,
    };
    Ok((head.status, reusable))
}

fn read_some<R: Read + ?Sized>(io: &mut R, buf: &mut Vec<u8>) -> Result<usize, Failure> {
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

/// Reads a chunked body to its end with the gateway's own decoder ([`ChunkedDecoder`]); true
/// when it ended cleanly, within 2 x [`MAX_DRAIN`] raw bytes (framing, extensions and trailers
/// count), with nothing after it.
fn drain_chunked<R: Read + ?Sized>(io: &mut R, buf: &mut Vec<u8>) -> Result<bool, Failure> {
    let mut dec = ChunkedDecoder::default();
    let mut raw = buf.len();
    loop {
        let d = dec.decode_in_place(buf).map_err(|_| Failure::BadAnswer)?;
        if d.done {
            return Ok(d.consumed == buf.len());
        }
        buf.clear();
        if raw > 2 * MAX_DRAIN {
            return Ok(false);
        }
        match read_some(io, buf)? {
            0 => return Ok(false),
            n => raw += n,
        }
    }
}

/// A reader that starts no read after its deadline.
struct Bounded<'a, R: ?Sized> {
    io: &'a mut R,
    deadline: Option<Instant>,
}

impl<R: Read + ?Sized> Read for Bounded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the receiver's answer took longer than the timeout",
            ));
        }
        self.io.read(buf)
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

    /// A receiver's answer arriving in the pieces given by `cuts` (ascending offsets).
    struct Pieces<'a> {
        data: &'a [u8],
        cuts: Vec<usize>,
        at: usize,
    }

    impl Read for Pieces<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let next = self.cuts.iter().copied().find(|&c| c > self.at).unwrap_or(self.data.len());
            let n = (next - self.at).min(out.len());
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn answer(data: &[u8], cuts: &[usize]) -> Result<(u16, bool), String> {
        let mut io = Pieces { data, cuts: cuts.to_vec(), at: 0 };
        read_answer(&mut io, &mut Vec::new(), None, || {}).map_err(|e| e.to_string())
    }

    /// Every answer reads the same whole, at every split and byte by byte.
    #[test]
    fn answers_read_the_same_at_every_split() {
        type Case = (&'static [u8], Result<(u16, bool), &'static str>);
        let cases: &[Case] = &[
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", Ok((200, true))),
            (b"HTTP/1.1 204 No Content\r\n\r\n", Ok((204, true))),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\nT: 1\r\n\r\n",
                Ok((200, true)),
            ),
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", Ok((503, true))),
            (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", Ok((200, false))),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", Ok((200, false))),
            (b"HTTP/1.1 200 OK\r\n\r\nuntil close", Ok((200, false))),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok", Ok((200, false))),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", Ok((200, false))),
            // A chunk size past 15 hex digits after a first chunk (used to overflow a counter).
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nffffffffffffffff\r\n",
                Err("not an HTTP/1.x answer"),
            ),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", Err("not an HTTP/1.x answer")),
            // A body larger than is ever drained: the answer counts, the connection does not.
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffff\r\nabc", Ok((200, false))),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", Ok((200, false))),
            (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", Err("not an HTTP/1.x answer")),
            (b"SSH-2.0-OpenSSH\r\n\r\n", Err("not an HTTP/1.x answer")),
            (b"HTTP/1.1 200 OK\r\nContent-", Err("connection closed inside the answer")),
            (b"", Err("connection closed before an answer")),
        ];
        for (data, want) in cases {
            let want = want.map_err(str::to_string);
            let name = String::from_utf8_lossy(data);
            assert_eq!(answer(data, &[]), want, "{name}");
            for k in 0..data.len() {
                assert_eq!(answer(data, &[k]), want, "{name} split at {k}");
            }
            assert_eq!(answer(data, &(0..data.len()).collect::<Vec<_>>()), want, "{name} byte by byte");
        }
    }

    /// A receiver that sends without end is bounded: endless interim answers are refused once
    /// they pass MAX_HEAD, endless trailers stop the reading past 2 x MAX_DRAIN, and no read
    /// starts after the deadline.
    #[test]
    fn endless_or_late_answers_are_bounded() {
        let endless_interim = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(2000);
        assert_eq!(answer(&endless_interim, &[]), Err("not an HTTP/1.x answer".into()));
        let mut trailers = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
        trailers.extend(b"X-Trailer: yes\r\n".repeat(4 * MAX_DRAIN / 16));
        let mut io = Pieces { data: &trailers, cuts: Vec::new(), at: 0 };
        assert_eq!(
            read_answer(&mut io, &mut Vec::new(), None, || {}).map_err(|e| e.to_string()),
            Ok((200, false))
        );
        assert!(io.at < 3 * MAX_DRAIN, "read {} bytes", io.at);
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let mut io = Pieces { data: ok, cuts: Vec::new(), at: 0 };
        let past = Instant::now() - Duration::from_millis(1);
        let r = read_answer(&mut io, &mut Vec::new(), Some(past), || {}).map_err(|e| e.to_string());
        assert_eq!(r, Err("the receiver's answer took longer than the timeout".into()));
    }

    /// Bytes after the body (seen in the same read) make the connection unusable.
    #[test]
    fn bytes_after_the_body_end_the_connection() {
        let data = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nokEXTRA";
        assert_eq!(answer(data, &[]), Ok((200, false)));
        let data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nEXTRA";
        assert_eq!(answer(data, &[]), Ok((200, false)));
    }

    /// A body longer than MAX_DRAIN is not read to its end: the reading stops past the bound.
    #[test]
    fn a_long_body_is_left_undrained() {
        let mut data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..(4 * MAX_DRAIN / 4096) {
            data.extend_from_slice(b"1000\r\n");
            data.extend_from_slice(&[b'x'; 4096]);
            data.extend_from_slice(b"\r\n");
        }
        data.extend_from_slice(b"0\r\n\r\n");
        let mut io = Pieces { data: &data, cuts: Vec::new(), at: 0 };
        assert_eq!(
            read_answer(&mut io, &mut Vec::new(), None, || {}).map_err(|e| e.to_string()),
            Ok((200, false))
        );
        assert!(io.at < 3 * MAX_DRAIN, "read {} bytes", io.at);
    }

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
