//! A "replay backend" for integration tests: a std TcpListener thread that answers every request
//! (except `GET /health`, always 200) with a fixed status, headers and body given by the test,
//! framed as chunked (one chunk per SSE event or per N bytes), Content-Length, or connection-close,
//! optionally written in two pieces split at a byte offset of the body's wire bytes.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One chunk per SSE event (split after each blank line).
    ChunkedPerEvent,
    /// Chunks of at most N bytes.
    ChunkedEvery(usize),
    Length,
    /// No length; the connection closes after the body.
    Close,
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub framing: Framing,
    /// Write the body's wire bytes in pieces split at these offsets (ascending; a flush and a 1 ms
    /// pause between pieces, so the gateway reads each on its own).
    pub splits: Vec<usize>,
}

impl Reply {
    pub fn new(status: u16, content_type: &str, body: &[u8], framing: Framing) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.to_vec(),
            framing,
            splits: Vec::new(),
        }
    }

    /// The body as it goes on the wire for this framing.
    pub fn wire_body(&self) -> Vec<u8> {
        self.wire_and_chunks().0
    }

    /// The wire body, and where each chunk's payload lies in it: (payload offset, wire start, wire
    /// end) per chunk (none unless chunked).
    pub fn wire_and_chunks(&self) -> (Vec<u8>, Vec<(usize, usize, usize)>) {
        let pieces: Vec<&[u8]> = match self.framing {
            Framing::Length | Framing::Close => return (self.body.clone(), Vec::new()),
            Framing::ChunkedPerEvent => split_events(&self.body),
            Framing::ChunkedEvery(n) => self.body.chunks(n.max(1)).collect(),
        };
        let (mut out, mut spans, mut payload) = (Vec::new(), Vec::new(), 0);
        for p in pieces.iter().filter(|p| !p.is_empty()) {
            out.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
            spans.push((payload, out.len(), out.len() + p.len()));
            payload += p.len();
            out.extend_from_slice(p);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        (out, spans)
    }

    fn head(&self) -> Vec<u8> {
        let mut h = format!("HTTP/1.1 {} X\r\n", self.status);
        for (n, v) in &self.headers {
            h += &format!("{n}: {v}\r\n");
        }
        match self.framing {
            Framing::Length => h += &format!("Content-Length: {}\r\n", self.body.len()),
            Framing::Close => h += "Connection: close\r\n",
            _ => h += "Transfer-Encoding: chunked\r\n",
        }
        h += "\r\n";
        h.into_bytes()
    }
}

/// SSE events of `body`, each with its trailing blank line (the last one may be unterminated).
pub fn split_events(body: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < body.len() {
        if body[i] == b'\n' && body[i + 1] == b'\n' {
            out.push(&body[start..i + 2]);
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    if start < body.len() {
        out.push(&body[start..]);
    }
    out
}

/// One request as the replay backend received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub head: String,
    pub body: Vec<u8>,
}

pub struct Replay {
    pub addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Replay {
    pub fn start(reply: Reply) -> Replay {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind replay");
        let addr = l.local_addr().unwrap();
        let reply = Arc::new(Mutex::new(reply));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (r2, s2) = (reply.clone(), seen.clone());
        std::thread::spawn(move || {
            for s in l.incoming().map_while(Result::ok) {
                let (r, s3) = (r2.clone(), s2.clone());
                std::thread::spawn(move || serve(s, r, s3));
            }
        });
        Replay { addr, reply, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    /// Proxied requests received (health checks excluded).
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, reply: Arc<Mutex<Reply>>, seen: Arc<Mutex<Vec<Seen>>>) {
    let _ = stream.set_nodelay(true);
    let Ok(mut out) = stream.try_clone() else { return };
    let mut r = BufReader::new(stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            head += &line;
            if line == "\r\n" || line == "\n" {
                break;
            }
        }
        let len = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        if head.starts_with("GET /health") {
            if out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").is_err() {
                return;
            }
            continue;
        }
        seen.lock().unwrap().push(Seen { head, body });
        let rep = reply.lock().unwrap().clone();
        let head = rep.head();
        let wire = rep.wire_body();
        let mut all = head;
        let mut from = 0;
        let mut ok = Ok(());
        for &at in rep.splits.iter().filter(|&&at| at > 0 && at < wire.len()) {
            all.extend_from_slice(&wire[from..at.max(from)]);
            ok = ok.and_then(|_| out.write_all(&all)).and_then(|_| out.flush());
            all.clear();
            from = at.max(from);
            std::thread::sleep(Duration::from_millis(1));
        }
        all.extend_from_slice(&wire[from..]);
        let ok = ok.and_then(|_| out.write_all(&all));
        if ok.is_err() || rep.framing == Framing::Close {
            let _ = out.shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}

/// The fixtures directory (`../shared/fixtures/backends`), or None (with a note) when missing;
/// under CI a missing directory fails the test (`prereq::missing`).
pub fn fixtures_dir() -> Option<std::path::PathBuf> {
    let p = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/backends"));
    if p.is_dir() {
        Some(p)
    } else {
        super::prereq::missing(&format!("the fixtures at {}", p.display()));
        None
    }
}

/// Every fixture file with this extension, sorted: (relative name, bytes).
pub fn fixtures(ext: &str) -> Vec<(String, Vec<u8>)> {
    let Some(dir) = fixtures_dir() else { return Vec::new() };
    let mut out = Vec::new();
    for sub in std::fs::read_dir(&dir).expect("read fixtures").map_while(Result::ok) {
        if !sub.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(sub.path()).expect("read fixture dir").map_while(Result::ok) {
            let p = f.path();
            if p.extension().and_then(|e| e.to_str()) == Some(ext) {
                let name = format!(
                    "{}/{}",
                    sub.file_name().to_string_lossy(),
                    p.file_name().unwrap().to_string_lossy()
                );
                out.push((name, std::fs::read(&p).expect("read fixture")));
            }
        }
    }
    out.sort();
    out
}
