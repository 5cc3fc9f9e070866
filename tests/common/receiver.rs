//! A recording webhook receiver for integration tests: HTTP/1.1 keep-alive on 127.0.0.1, one thread
//! per connection. It can answer an error status, hang up, be slow, or go down (connection refused)
//! and come back on the same port.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// How the receiver answers requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer with this status; 2xx counts the records as delivered.
    Status(u16),
    /// Read the request, then close the connection without answering.
    Hangup,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Hit {
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// What was answered (0 for a hang-up).
    pub status: u16,
}

impl Hit {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// The body's JSON value.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The records in the body: an object is one record, an array is a batch.
    pub fn records(&self) -> Vec<Value> {
        match self.json() {
            Some(Value::Array(v)) => v,
            Some(v @ Value::Object(_)) => vec![v],
            _ => Vec::new(),
        }
    }
}

struct State {
    mode: Mode,
    delay: Duration,
    secret: Option<Vec<u8>>,
    hits: Vec<Hit>,
    delivered: Vec<Value>,
    want_up: bool,
    is_up: bool,
    stop: bool,
    conns: Vec<TcpStream>,
}

struct Inner {
    state: Mutex<State>,
    changed: Condvar,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The receiver; stops (and closes every connection) when dropped.
pub struct Receiver {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

impl Receiver {
    /// Starts answering 200 on a free port.
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let addr = listener.local_addr().expect("receiver addr");
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                mode: Mode::Status(200),
                delay: Duration::ZERO,
                secret: None,
                hits: Vec::new(),
                delivered: Vec::new(),
                want_up: true,
                is_up: true,
                stop: false,
                conns: Vec::new(),
            }),
            changed: Condvar::new(),
        });
        let i = Arc::clone(&inner);
        thread::spawn(move || accept_loop(listener, addr, i));
        Receiver { addr, inner }
    }

    /// Starts on a free port, already down (connections refused) until [`Receiver::up`].
    pub fn start_down() -> Receiver {
        let r = Receiver::start();
        r.down();
        r
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/llm-usage`.
    pub fn url(&self) -> String {
        format!("http://{}/llm-usage", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.inner.lock().mode = mode;
    }

    pub fn set_status(&self, status: u16) {
        self.set_mode(Mode::Status(status));
    }

    /// Wait this long before answering each request (a slow webhook).
    pub fn set_delay(&self, delay: Duration) {
        self.inner.lock().delay = delay;
    }

    /// Verify `X-LLMProxy-Signature` with this secret; a missing or wrong one is answered 401.
    pub fn require_signature(&self, secret: &str) {
        self.inner.lock().secret = Some(secret.as_bytes().to_vec());
    }

    /// Stops listening and closes every open connection; returns once connects are refused.
    pub fn down(&self) {
        let mut st = self.inner.lock();
        st.want_up = false;
        drop(st);
        // Wake the accept loop so it drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        let mut st = self.inner.lock();
        while st.is_up {
            st = self.inner.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        for c in st.conns.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Listens again on the same port; returns once it accepts.
    pub fn up(&self) {
        let mut st = self.inner.lock();
        st.want_up = true;
        self.inner.changed.notify_all();
        while !st.is_up {
            st = self.inner.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Every request received so far, whatever was answered.
    pub fn hits(&self) -> Vec<Hit> {
        self.inner.lock().hits.clone()
    }

    pub fn attempts(&self) -> usize {
        self.inner.lock().hits.len()
    }

    /// Records of requests answered 2xx, flattened, in arrival order.
    pub fn delivered(&self) -> Vec<Value> {
        self.inner.lock().delivered.clone()
    }

    /// `request_id`s of the delivered records, in arrival order.
    pub fn delivered_ids(&self) -> Vec<String> {
        let st = self.inner.lock();
        st.delivered.iter().map(|r| r["request_id"].as_str().unwrap_or_default().to_string()).collect()
    }

    /// Waits until at least `n` records were delivered; false on timeout.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |st| st.delivered.len() >= n)
    }

    /// Waits until at least `n` requests arrived (any answer); false on timeout.
    pub fn wait_for_attempts(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |st| st.hits.len() >= n)
    }

    fn wait_until(&self, timeout: Duration, done: impl Fn(&State) -> bool) -> bool {
        let end = Instant::now() + timeout;
        let mut st = self.inner.lock();
        while !done(&st) {
            let now = Instant::now();
            if now >= end {
                return false;
            }
            st = self.inner.changed.wait_timeout(st, end - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        st.stop = true;
        st.want_up = false;
        for c in st.conns.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        self.inner.changed.notify_all();
        drop(st);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn accept_loop(listener: TcpListener, addr: SocketAddr, inner: Arc<Inner>) {
    let mut listener = Some(listener);
    loop {
        {
            let mut st = inner.lock();
            if st.stop {
                return;
            }
            if !st.want_up {
                listener = None;
                st.is_up = false;
                inner.changed.notify_all();
                while !st.want_up && !st.stop {
                    st = inner.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                if st.stop {
                    return;
                }
            }
        }
        if listener.is_none() {
            listener = Some(rebind(addr));
            inner.lock().is_up = true;
            inner.changed.notify_all();
        }
        let Some(l) = &listener else { continue };
        let Ok((stream, _)) = l.accept() else { continue };
        let mut st = inner.lock();
        if st.stop || !st.want_up {
            continue;
        }
        if let Ok(c) = stream.try_clone() {
            st.conns.push(c);
        }
        drop(st);
        let i = Arc::clone(&inner);
        thread::spawn(move || serve(stream, i));
    }
}

fn rebind(addr: SocketAddr) -> TcpListener {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(e) if Instant::now() < end => {
                eprintln!("receiver: rebinding {addr}: {e}; retrying");
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("receiver cannot rebind {addr}: {e}"),
        }
    }
}

fn serve(stream: TcpStream, inner: Arc<Inner>) {
    let Ok(mut out) = stream.try_clone() else { return };
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let len = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let close = headers.iter().any(|(n, v)| n == "connection" && v.eq_ignore_ascii_case("close"));
        let (mode, delay, secret) = {
            let st = inner.lock();
            (st.mode, st.delay, st.secret.clone())
        };
        if !delay.is_zero() {
            thread::sleep(delay);
        }
        let mut hit = Hit { headers, body, status: 0 };
        let status = match mode {
            Mode::Hangup => None,
            Mode::Status(_) if secret.as_deref().is_some_and(|k| !signature_ok(k, &hit)) => Some(401),
            Mode::Status(s) if (200..300).contains(&s) && hit.json().is_none() => Some(400),
            Mode::Status(s) => Some(s),
        };
        hit.status = status.unwrap_or(0);
        {
            let mut st = inner.lock();
            if (200..300).contains(&hit.status) {
                st.delivered.extend(hit.records());
            }
            st.hits.push(hit);
            inner.changed.notify_all();
        }
        let Some(status) = status else {
            let _ = out.shutdown(Shutdown::Both);
            return;
        };
        // 204 and 304 carry no body (a body there would corrupt the next response on the connection).
        let resp = if status == 204 || status == 304 {
            format!("HTTP/1.1 {status} X\r\n\r\n")
        } else {
            format!("HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
        };
        if out.write_all(resp.as_bytes()).is_err() || close {
            return;
        }
    }
}

fn signature_ok(secret: &[u8], hit: &Hit) -> bool {
    use hmac::{Hmac, Mac};
    let Some(sig) = hit.header("x-llmproxy-signature").and_then(|s| s.strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(sig) = hex::decode(sig) else { return false };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret) else { return false };
    mac.update(&hit.body);
    mac.verify_slice(&sig).is_ok()
}
