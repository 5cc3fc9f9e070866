//! The simulated OpenAI-compatible backend (`llmproxy mock-backend`, demo, tests, benches): one blocking
//! thread per connection, byte shapes modelled on real vLLM/TGI/SGLang/llama.cpp/Ollama/OpenAI captures.
//!
//! Endpoints: `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/responses`,
//! `/v1/messages`; `GET /v1/models`, `GET /health`; and the CONTRACT 12 paths each flavour serves
//! (`native.rs`: vLLM rerank/score/pooling/classify/audio/tokenize, Ollama `/api/*`, llama.cpp
//! `/completion`, SGLang `/generate`, TEI-style `/rerank` on tgi). Other paths answer 404, known paths with the
//! wrong method 405, both in the flavour's own error format. A malformed request head or body framing
//! answers 400 and closes the connection.
//!
//! Per-request test knobs (request headers, case-insensitive names):
//! - `x-mock-framing: chunked|length|close`: how the response body is framed. Defaults: streams are
//!   chunked, JSON bodies have a Content-Length. `close` sends no length and closes at the end.
//! - `x-mock-split: N`: every write (head, each event, JSON bodies) goes out in pieces of N bytes,
//!   each piece its own `write` on a TCP_NODELAY socket.
//! - `x-mock-status: CODE`: answer CODE (non-2xx) with the flavour's error body instead.
//! - `x-mock-abort-after: N`: send N stream events (or N bytes of a JSON body), then close the
//!   connection without finishing the body.
//! - `x-mock-ttft-ms`, `x-mock-itl-ms`, `x-mock-tokens`: override the server options per request.
//! - `x-mock-no-usage: 1`: never send usage, whatever the flavour and the request ask for.
//! - `x-mock-gzip: 1|0`, `x-mock-details: 1|0`: override the `gzip` and `details` options.
//! - `x-mock-stall-after: N`: send N stream events, then nothing more, holding the connection open
//!   until the peer closes it (a backend that went quiet mid-stream).
//! - `x-mock-hang-up: 1`: close the connection without answering (the request is recorded).
//! - `x-mock-close-idle: 1`: answer framed for keep-alive (no `connection: close`), then close the
//!   connection, as a server whose keep-alive idle timeout fired at once.
//!
//! Server options beyond pacing: `gzip` compresses every answer whose request accepts gzip
//! (`content-encoding: gzip`, as hosted APIs and nginx `gzip on` do); `details` reports cached and
//! reasoning tokens where the flavour's server does (vLLM: `prompt_tokens_details.cached_tokens`;
//! SGLang: that and its top-level `reasoning_tokens`; OpenAI: both details objects; Responses and
//! Anthropic shapes: their own names), as half the prompt cached and half the completion reasoning.
//! vLLM and SGLang honour `stream_options.continuous_usage_stats` (cumulative usage per choice on
//! every chunk, the prompt repeated on each), and `/v1/models` names `owned_by` as each server does.
//!
//! Pacing: the response head goes out at once; a stream's first event after `ttft`, then one token
//! event every `itl`; trailing usage-only chunks and `[DONE]` follow the finish event without delay.
//! A JSON body goes out after `ttft + itl * tokens`. While waiting, the socket is watched, so a peer
//! that closes mid-stream is seen at once and counted by [`MockBackend::streams_aborted`].

mod api;
mod flavor;
mod gzip;
mod http;
mod native;
mod server;
pub mod tls_front;

use std::collections::{HashMap, VecDeque};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Which real server the simulator imitates (framing, key order, usage placement, error format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Vllm,
    Tgi,
    Sglang,
    Llamacpp,
    Ollama,
    Openai,
}

impl Flavor {
    pub const ALL: [Flavor; 6] =
        [Flavor::Vllm, Flavor::Tgi, Flavor::Sglang, Flavor::Llamacpp, Flavor::Ollama, Flavor::Openai];

    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Vllm => "vllm",
            Flavor::Tgi => "tgi",
            Flavor::Sglang => "sglang",
            Flavor::Llamacpp => "llamacpp",
            Flavor::Ollama => "ollama",
            Flavor::Openai => "openai",
        }
    }

    /// The model id a freshly started server of this kind reports.
    pub fn default_model(self) -> &'static str {
        match self {
            Flavor::Vllm => "meta-llama/Llama-3.1-8B-Instruct",
            Flavor::Tgi => "meta-llama/Llama-3.1-8B-Instruct",
            Flavor::Sglang => "Qwen/Qwen2.5-7B-Instruct",
            Flavor::Llamacpp => "gpt-3.5-turbo",
            Flavor::Ollama => "llama3.1:latest",
            Flavor::Openai => "gpt-4o-mini-2024-07-18",
        }
    }
}

impl std::fmt::Display for Flavor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Flavor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Flavor::ALL.into_iter().find(|f| f.as_str().eq_ignore_ascii_case(s.trim())).ok_or_else(|| {
            format!("unknown flavor {s:?} (expected vllm, tgi, sglang, llamacpp, ollama or openai)")
        })
    }
}

/// Server-wide behaviour; the `x-mock-*` request headers override parts of it per request.
#[derive(Clone, Debug)]
pub struct MockOptions {
    pub flavor: Flavor,
    /// Delay before the first stream event.
    pub ttft: Duration,
    /// Delay between two token events.
    pub itl: Duration,
    /// Completion tokens per choice.
    pub tokens: u32,
    /// Reported by `/v1/models` and used when a request names no model; empty = flavour default.
    pub model: String,
    /// Gzip every answer whose request accepts gzip.
    pub gzip: bool,
    /// Report cached and reasoning token details (half the prompt, half the completion).
    pub details: bool,
}

impl MockOptions {
    /// Defaults (ttft 20ms, itl 10ms, 16 tokens) with the flavour's default model.
    pub fn new(flavor: Flavor) -> MockOptions {
        MockOptions { flavor, model: flavor.default_model().to_string(), ..MockOptions::default() }
    }

    fn model_id(&self) -> &str {
        if self.model.is_empty() {
            self.flavor.default_model()
        } else {
            &self.model
        }
    }
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            flavor: Flavor::Vllm,
            ttft: Duration::from_millis(20),
            itl: Duration::from_millis(10),
            tokens: 16,
            model: Flavor::Vllm.default_model().to_string(),
            gzip: false,
            details: false,
        }
    }
}

/// One request as the backend received it (body de-chunked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON, when it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// At most this many requests are kept for [`MockBackend::requests`] (oldest dropped first), so a
/// long benchmark does not grow without bound.
pub const MAX_RECORDED: usize = 100_000;

pub(crate) struct Shared {
    opts: MockOptions,
    addr: SocketAddr,
    requests: Mutex<VecDeque<RecordedRequest>>,
    aborted: AtomicU64,
    open: AtomicUsize,
    killed: AtomicBool,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn record(&self, r: RecordedRequest) {
        let mut q = lock(&self.requests);
        if q.len() >= MAX_RECORDED {
            q.pop_front();
        }
        q.push_back(r);
    }
}

/// A running simulated backend. Dropping it kills it (see [`MockBackend::kill`]).
pub struct MockBackend {
    shared: Arc<Shared>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl MockBackend {
    /// Serve `listener` on background threads (one acceptor, one thread per connection).
    pub fn start(listener: TcpListener, opts: MockOptions) -> MockBackend {
        let addr = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        // std listens with a small backlog; bursts of ~1000 connects would overflow it (SYN cookies,
        // resets). listen() again on the bound socket only raises the queue length.
        if let Err(e) = socket2::SockRef::from(&listener).listen(4096) {
            log::debug!("mock-backend: could not raise the listen backlog: {e}");
        }
        let shared = Arc::new(Shared {
            opts,
            addr,
            requests: Mutex::new(VecDeque::new()),
            aborted: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            killed: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
        });
        let s2 = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("mock-accept".into())
            .spawn(move || accept_loop(s2, listener))
            .ok();
        MockBackend { shared, acceptor: Mutex::new(acceptor) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT` (loopback even when bound to an unspecified address).
    pub fn url(&self) -> String {
        format!("http://{}", connect_addr(self.shared.addr))
    }

    pub fn options(&self) -> &MockOptions {
        &self.shared.opts
    }

    /// Every request received so far (up to [`MAX_RECORDED`]), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).iter().cloned().collect()
    }

    /// Forget the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Streams whose peer closed the connection before the stream ended.
    pub fn streams_aborted(&self) -> u64 {
        self.shared.aborted.load(Ordering::SeqCst)
    }

    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Simulate death: the listening socket is closed (connects are refused once this returns) and
    /// every open connection is shut down at once. Idempotent; there is no restart.
    pub fn kill(&self) {
        if self.shared.killed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Wake the acceptor blocked in accept(); it sees `killed` and drops the listener.
        let _ = TcpStream::connect_timeout(&connect_addr(self.shared.addr), Duration::from_secs(1));
        if let Some(h) = lock(&self.acceptor).take() {
            let _ = h.join();
        }
        for (_, s) in lock(&self.shared.conns).drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for MockBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn connect_addr(a: SocketAddr) -> SocketAddr {
    let mut a = a;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    a
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(_) if shared.killed.load(Ordering::SeqCst) => return,
            Err(e) => {
                log::debug!("mock-backend accept: {e}");
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        if shared.killed.load(Ordering::SeqCst) {
            return; // drops `listener`: the port now refuses connections
        }
        let id = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        if let Ok(c) = stream.try_clone() {
            lock(&shared.conns).insert(id, c);
        }
        shared.open.fetch_add(1, Ordering::SeqCst);
        let s2 = shared.clone();
        let spawned =
            std::thread::Builder::new().name("mock-conn".into()).stack_size(256 * 1024).spawn(move || {
                let guard = ConnGuard { shared: s2.clone(), id };
                if !s2.killed.load(Ordering::SeqCst) {
                    server::serve(&s2, stream);
                }
                drop(guard);
            });
        if spawned.is_err() {
            lock(&shared.conns).remove(&id);
            shared.open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(s) = lock(&self.shared.conns).remove(&self.id) {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.shared.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `llmproxy mock-backend` entry: bind, announce on stderr, serve forever. With `tls`, the port
/// speaks TLS (see [`tls_front`]) in front of a plain mock on a loopback port.
pub fn run(
    listen: SocketAddr,
    opts: MockOptions,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    let flavor = opts.flavor;
    let (backend, front) = match tls {
        None => (MockBackend::start(listener, opts), None),
        Some(config) => {
            let backend = MockBackend::start(TcpListener::bind(("127.0.0.1", 0))?, opts);
            let front = tls_front::TlsFront::start(listener, backend.addr(), config)?;
            (backend, Some(front))
        }
    };
    let scheme = if front.is_some() { "https" } else { "http" };
    eprintln!("mock-backend ({flavor}) listening on {scheme}://{addr}");
    loop {
        std::thread::park();
        let _ = (&backend, &front);
    }
}
