//! The benchmark baseline: a proxy built the way the original design sketch builds it, on tokio +
//! hyper 1.x. Per request it reads the whole body, JSON-parses it for `stream` and `model`, forwards
//! it with one shared pooled client, copies the response to the client while collecting all of it,
//! then parses usage from what it collected (the last `usage` object of the SSE data lines, or of the
//! JSON body) and POSTs the usage record to the webhook from a `tokio::spawn`ed task.
//!
//! Config: a TOML file with the subset `listen`, `[[backends]] url` (round robin) and
//! `[usage_hook] enabled, url`; other keys are ignored. `--workers N` sets tokio's worker threads.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};
use tokio::sync::mpsc;

type Body = BoxBody<Bytes, Infallible>;

#[derive(Deserialize, Default)]
#[serde(default)]
struct FileConfig {
    listen: Option<String>,
    backends: Vec<FileBackend>,
    usage_hook: FileHook,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FileBackend {
    url: String,
}

#[derive(Deserialize)]
#[serde(default)]
struct FileHook {
    enabled: bool,
    url: String,
}

impl Default for FileHook {
    fn default() -> Self {
        FileHook { enabled: true, url: "http://127.0.0.1:3001/llm-usage".into() }
    }
}

struct State {
    backends: Vec<String>,
    next: AtomicUsize,
    client: Client<HttpConnector, Full<Bytes>>,
    hook: Option<hyper::Uri>,
    ids: AtomicU64,
}

/// Same field names and order as llmproxy's `UsageRecord` (CONTRACT section 5).
#[derive(Serialize)]
struct UsageRecord {
    request_id: String,
    user_id: Option<String>,
    api_key: Option<String>,
    model: Option<String>,
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    is_stream: bool,
    endpoint: String,
    timestamp: String,
    backend_url: Option<String>,
    status: &'static str,
    http_status: u16,
    duration_ms: u64,
    ttft_ms: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    usage_missing: bool,
}

/// What the record needs besides the response.
struct Pending {
    request_id: String,
    user_id: Option<String>,
    api_key: Option<String>,
    model: Option<String>,
    is_stream: bool,
    endpoint: String,
    timestamp: String,
    backend_url: String,
    http_status: u16,
    start: Instant,
}

impl Pending {
    fn finish(
        self,
        usage: Option<(u64, u64, u64)>,
        status: &'static str,
        ttft_ms: Option<u64>,
    ) -> UsageRecord {
        let (p, c, t) = usage.unwrap_or((0, 0, 0));
        UsageRecord {
            request_id: self.request_id,
            user_id: self.user_id,
            api_key: self.api_key,
            model: self.model,
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: t,
            is_stream: self.is_stream,
            endpoint: self.endpoint,
            timestamp: self.timestamp,
            backend_url: Some(self.backend_url),
            status,
            http_status: self.http_status,
            duration_ms: self.start.elapsed().as_millis() as u64,
            ttft_ms,
            usage_missing: usage.is_none(),
        }
    }
}

/// A response body fed frame by frame from the task that reads the backend's body.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn json_error(status: StatusCode, msg: &str) -> Response<Body> {
    let body = serde_json::json!({"error": {"message": msg, "type": "proxy_error", "code": status.as_u16()}});
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    r
}

fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

fn usage_of(v: &serde_json::Value) -> Option<(u64, u64, u64)> {
    let u = v.get("usage")?;
    if u.is_null() {
        return None;
    }
    let n = |k: &str| u.get(k).and_then(|x| x.as_u64());
    let p = n("prompt_tokens").or_else(|| n("input_tokens")).unwrap_or(0);
    let c = n("completion_tokens").or_else(|| n("output_tokens")).unwrap_or(0);
    let t = n("total_tokens").unwrap_or(p + c);
    Some((p, c, t))
}

/// The last usage in the `data:` lines of a collected SSE stream: every data line is JSON-parsed.
fn sse_usage(body: &[u8]) -> Option<(u64, u64, u64)> {
    let text = String::from_utf8_lossy(body);
    let mut last = None;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else { continue };
        let data = data.trim();
        if data == "[DONE]" {
            continue;
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(data) {
            if let Some(u) = usage_of(&v) {
                last = Some(u);
            }
        }
    }
    last
}

fn redact(key: &str) -> String {
    if key.len() <= 8 {
        return "***".into();
    }
    format!("{}...{}", &key[..4], &key[key.len() - 3..])
}

fn send_record(st: &Arc<State>, rec: UsageRecord) {
    let Some(hook) = st.hook.clone() else { return };
    let client = st.client.clone();
    tokio::spawn(async move {
        let body = match serde_json::to_vec(&rec) {
            Ok(b) => b,
            Err(_) => return,
        };
        let req = Request::post(hook)
            .header("content-type", "application/json")
            .header("idempotency-key", rec.request_id.as_str())
            .body(Full::new(Bytes::from(body)));
        let Ok(req) = req else { return };
        match client.request(req).await {
            Ok(resp) => {
                let ok = resp.status().is_success();
                let _ = resp.into_body().collect().await;
                if !ok {
                    eprintln!("webhook: non-2xx for {}", rec.request_id);
                }
            }
            Err(e) => eprintln!("webhook: {e}"),
        }
    });
}

async fn handle(req: Request<Incoming>, st: Arc<State>) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return Ok(json_error(StatusCode::BAD_REQUEST, "cannot read request body")),
    };
    let (stream, model, body_user) = if bytes.is_empty() {
        (false, None, None)
    } else {
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) => (
                v.get("stream").and_then(|s| s.as_bool()).unwrap_or(false),
                v.get("model").and_then(|m| m.as_str()).map(String::from),
                v.get("user").and_then(|m| m.as_str()).map(String::from),
            ),
            Err(_) => return Ok(json_error(StatusCode::BAD_REQUEST, "invalid JSON in request body")),
        }
    };
    let request_id = match parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
        Some(id) => id.to_string(),
        None => format!(
            "req_{:x}{:06x}",
            start.elapsed().as_nanos() as u64 ^ std::process::id() as u64,
            st.ids.fetch_add(1, Ordering::Relaxed)
        ),
    };
    let user_id =
        parts.headers.get("x-user-id").and_then(|v| v.to_str().ok()).map(String::from).or(body_user);
    let api_key = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(redact);
    let backend = st.backends[st.next.fetch_add(1, Ordering::Relaxed) % st.backends.len()].clone();
    let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let endpoint = parts.uri.path().to_string();
    let mut up = Request::builder().method(parts.method).uri(format!("{backend}{pq}"));
    for (k, v) in parts.headers.iter() {
        if !hop_by_hop(k) && k != "x-request-id" {
            up = up.header(k, v);
        }
    }
    up = up.header("x-request-id", request_id.as_str());
    let up = match up.body(Full::new(bytes)) {
        Ok(r) => r,
        Err(_) => return Ok(json_error(StatusCode::BAD_REQUEST, "bad request")),
    };
    let resp = match st.client.request(up).await {
        Ok(r) => r,
        Err(e) => return Ok(json_error(StatusCode::BAD_GATEWAY, &format!("backend unreachable: {e}"))),
    };
    let (uparts, ubody) = resp.into_parts();
    let pending = Pending {
        request_id: request_id.clone(),
        user_id,
        api_key,
        model,
        is_stream: stream,
        endpoint,
        timestamp: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        backend_url: backend,
        http_status: uparts.status.as_u16(),
        start,
    };
    let mut builder = Response::builder().status(uparts.status);
    for (k, v) in uparts.headers.iter() {
        if !hop_by_hop(k) {
            builder = builder.header(k, v);
        }
    }
    builder = builder.header("x-request-id", request_id.as_str());

    if stream {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        let st2 = st.clone();
        tokio::spawn(async move {
            let mut ubody = ubody;
            let mut collected = Vec::new();
            let mut ttft = None;
            let mut status = "ok";
            while let Some(frame) = ubody.frame().await {
                match frame {
                    Ok(f) => {
                        if let Ok(d) = f.into_data() {
                            ttft.get_or_insert_with(|| start.elapsed().as_millis() as u64);
                            collected.extend_from_slice(&d);
                            if tx.send(d).await.is_err() {
                                status = "client_disconnected";
                                break;
                            }
                        }
                    }
                    Err(_) => {
                        status = "backend_error";
                        break;
                    }
                }
            }
            drop(tx);
            let usage = sse_usage(&collected);
            send_record(&st2, pending.finish(usage, status, ttft));
        });
        let r = builder.body(ChannelBody(rx).boxed());
        Ok(r.unwrap_or_else(|_| json_error(StatusCode::BAD_GATEWAY, "bad backend response")))
    } else {
        let body = match ubody.collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => {
                send_record(&st, pending.finish(None, "backend_error", None));
                return Ok(json_error(StatusCode::BAD_GATEWAY, "backend broke off"));
            }
        };
        let usage = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| usage_of(&v));
        let ttft = Some(start.elapsed().as_millis() as u64);
        send_record(&st, pending.finish(usage, "ok", ttft));
        let r = builder.body(Full::new(body).boxed());
        Ok(r.unwrap_or_else(|_| json_error(StatusCode::BAD_GATEWAY, "bad backend response")))
    }
}

fn usage_exit(msg: &str) -> ! {
    eprintln!("{msg}\nusage: llmproxy-baseline --config FILE [--workers N]");
    std::process::exit(64)
}

fn main() {
    let mut config_path = None;
    let mut workers = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config_path = args.next(),
            "--workers" => {
                workers =
                    args.next().and_then(|w| w.parse().ok()).unwrap_or_else(|| usage_exit("--workers N"))
            }
            "-h" | "--help" => usage_exit(""),
            other => usage_exit(&format!("unknown argument {other}")),
        }
    }
    let path = config_path.unwrap_or_else(|| "config.toml".into());
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| usage_exit(&format!("{path}: {e}")));
    let cfg: FileConfig = toml::from_str(&text).unwrap_or_else(|e| usage_exit(&format!("{path}: {e}")));
    if cfg.backends.is_empty() {
        usage_exit("at least one [[backends]] url is required");
    }
    let listen = cfg.listen.unwrap_or_else(|| "0.0.0.0:8080".into());
    let hook = if cfg.usage_hook.enabled {
        Some(
            cfg.usage_hook
                .url
                .parse::<hyper::Uri>()
                .unwrap_or_else(|e| usage_exit(&format!("usage_hook.url: {e}"))),
        )
    } else {
        None
    };
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let st = Arc::new(State {
        backends: cfg.backends.into_iter().map(|b| b.url.trim_end_matches('/').to_string()).collect(),
        next: AtomicUsize::new(0),
        client,
        hook,
        ids: AtomicU64::new(0),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .unwrap_or_else(|e| usage_exit(&format!("runtime: {e}")));
    rt.block_on(async move {
        // SO_REUSEPORT: the streams benchmark may run more than one copy on the port.
        let bind = || -> std::io::Result<tokio::net::TcpListener> {
            let addr: std::net::SocketAddr = listen.parse().map_err(std::io::Error::other)?;
            let s = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
            s.set_reuseaddr(true)?;
            s.set_reuseport(true)?;
            s.bind(addr)?;
            s.listen(65535)
        };
        let listener = bind().unwrap_or_else(|e| usage_exit(&format!("listen {listen}: {e}")));
        eprintln!("baseline listening on {listen}, {workers} worker(s), backends {:?}", st.backends);
        loop {
            let (sock, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        continue;
                    }
                },
                _ = tokio::signal::ctrl_c() => break,
            };
            let _ = sock.set_nodelay(true);
            let st = st.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, st.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
}
