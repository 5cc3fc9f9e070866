//! Blocking HTTP/1.1 plumbing of the mock backend: request heads via httparse, Content-Length and
//! chunked request bodies (leftover bytes kept for the next request), and the framed response writer.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{SystemTime, UNIX_EPOCH};

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;
const MAX_HEADERS: usize = 100;

pub(super) struct Request {
    pub method: String,
    pub path: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim())
    }

    /// Whether the client asked for the connection to end after this exchange.
    pub fn wants_close(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
        if self.version == 0 {
            !conn.contains("keep-alive")
        } else {
            conn.split(',').any(|t| t.trim() == "close")
        }
    }
}

pub(super) enum ReadError {
    /// The peer closed (or the socket failed) between requests or mid-request.
    Closed,
    /// Malformed head or body framing: answer 400 and close.
    Bad(String),
    /// Head or body over the limits: answer 413 / 431 and close.
    TooLarge(u16),
}

/// Reads requests off one connection; bytes past the current request stay buffered.
pub(super) struct Reader {
    buf: Vec<u8>,
}

impl Reader {
    pub fn new() -> Reader {
        Reader { buf: Vec::with_capacity(8192) }
    }

    fn fill(&mut self, s: &mut &TcpStream) -> Result<(), ReadError> {
        let mut tmp = [0u8; 16 * 1024];
        loop {
            match s.read(&mut tmp) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(ReadError::Closed),
            }
        }
    }

    pub fn read_request(&mut self, s: &TcpStream) -> Result<Request, ReadError> {
        let mut s = s;
        let (head_len, mut req) = loop {
            if !self.buf.is_empty() {
                if let Some(parsed) = parse_head(&self.buf)? {
                    break parsed;
                }
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ReadError::TooLarge(431));
            }
            self.fill(&mut s)?;
        };
        let te = req.header("transfer-encoding").map(|v| v.to_ascii_lowercase());
        let cls: Vec<&str> = req
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .collect();
        let consumed = if let Some(te) = te {
            if !cls.is_empty() {
                return Err(ReadError::Bad("both Content-Length and Transfer-Encoding".into()));
            }
            if te.rsplit(',').next().map(str::trim) != Some("chunked") {
                return Err(ReadError::Bad(format!("unsupported transfer-encoding {te:?}")));
            }
            loop {
                if let Some((body, used)) = decode_chunked(&self.buf[head_len..])? {
                    req.body = body;
                    break head_len + used;
                }
                self.fill(&mut s)?;
            }
        } else if let Some(first) = cls.first() {
            let len: usize =
                first.parse().map_err(|_| ReadError::Bad(format!("bad Content-Length {first:?}")))?;
            if cls.iter().any(|c| *c != *first) {
                return Err(ReadError::Bad("conflicting Content-Length headers".into()));
            }
            if len > MAX_BODY {
                return Err(ReadError::TooLarge(413));
            }
            while self.buf.len() < head_len + len {
                self.fill(&mut s)?;
            }
            req.body = self.buf[head_len..head_len + len].to_vec();
            head_len + len
        } else {
            head_len
        };
        self.buf.drain(..consumed);
        Ok(req)
    }
}

fn parse_head(buf: &[u8]) -> Result<Option<(usize, Request)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    match r.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(n)) => {
            let req = Request {
                method: r.method.unwrap_or("").to_string(),
                path: r.path.unwrap_or("").to_string(),
                version: r.version.unwrap_or(1),
                headers: r
                    .headers
                    .iter()
                    .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect(),
                body: Vec::new(),
            };
            Ok(Some((n, req)))
        }
        Err(httparse::Error::TooManyHeaders) => Err(ReadError::TooLarge(431)),
        Err(e) => Err(ReadError::Bad(format!("malformed request head: {e}"))),
    }
}

/// Decode a chunked body from the start of `data`: `Ok(None)` while incomplete, else the body and
/// the bytes used (trailers included).
pub(super) fn decode_chunked(data: &[u8]) -> Result<Option<(Vec<u8>, usize)>, ReadError> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let Some(eol) = memchr::memchr(b'\n', &data[pos..]) else {
            if data.len() - pos > 1024 {
                return Err(ReadError::Bad("chunk size line too long".into()));
            }
            return Ok(None);
        };
        let line = &data[pos..pos + eol];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += eol + 1;
        let size_txt = line.split(|&b| b == b';').next().unwrap_or(b"");
        let size_txt = std::str::from_utf8(size_txt).map(str::trim).unwrap_or("");
        let size = usize::from_str_radix(size_txt, 16)
            .map_err(|_| ReadError::Bad(format!("bad chunk size {size_txt:?}")))?;
        if size == 0 {
            // Trailers up to an empty line.
            loop {
                let Some(eol) = memchr::memchr(b'\n', &data[pos..]) else { return Ok(None) };
                let line = &data[pos..pos + eol];
                pos += eol + 1;
                if line.is_empty() || line == b"\r" {
                    return Ok(Some((body, pos)));
                }
            }
        }
        if size > MAX_BODY || body.len() + size > MAX_BODY {
            return Err(ReadError::TooLarge(413));
        }
        if data.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[pos..pos + size]);
        pos += size;
        match &data[pos..pos + 2] {
            b"\r\n" => pos += 2,
            [b'\n', _] => pos += 1,
            _ => return Err(ReadError::Bad("chunk not followed by CRLF".into())),
        }
    }
}

/// How the response body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    Chunked,
    Length,
    Close,
}

/// Writes one response: every `send` is one or more `write` calls (pieces of `split` bytes).
pub(super) struct Out<'a> {
    pub stream: &'a TcpStream,
    pub split: usize,
    pub framing: Framing,
}

impl Out<'_> {
    pub fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.stream;
        if self.split == 0 {
            return s.write_all(bytes);
        }
        for piece in bytes.chunks(self.split) {
            s.write_all(piece)?;
            s.flush()?;
        }
        Ok(())
    }

    /// One body part, framed as a chunk when chunked.
    pub fn part(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if self.framing == Framing::Chunked {
            let mut v = Vec::with_capacity(data.len() + 12);
            v.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            v.extend_from_slice(data);
            v.extend_from_slice(b"\r\n");
            self.raw(&v)
        } else {
            self.raw(data)
        }
    }

    pub fn finish(&mut self) -> io::Result<()> {
        if self.framing == Framing::Chunked {
            self.raw(b"0\r\n\r\n")
        } else {
            Ok(())
        }
    }
}

/// `Sat, 22 Nov 2025 00:29:00 GMT`
pub(super) fn http_date() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WD[days.rem_euclid(7) as usize],
        d,
        MON[(m - 1) as usize],
        y,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
