//! Per-core context: what one worker thread's tasks share without locks (pool, balancer rotation,
//! buffers, counters written only through the guards it hands out, the cached config snapshot),
//! plus the `Shared` part that all cores read.
//! Lives on its core thread (Rc).

use crate::balancer::Balancer;
use crate::ids::{IdGen, RequestIds};
use crate::metrics::{CoreMetrics, Registry};
use crate::snapshot::{Snapshot, SnapshotCell};
use crate::upstream::Pool;
use crate::usage::record::UsageRecord;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Size of the buffer a relay reads backend bytes into (plus framing room).
pub const RELAY_BUF: usize = 8 * 1024;
/// Capacity of the small buffer a slow stream waits with (see `relay/body.rs`): one SSE token event
/// (vLLM/OpenAI chunks are 150-400 bytes) with its chunk framing; a read that fills it switches the
/// stream back to a RELAY_BUF buffer. 512, not 1 KiB: it is held by every idle stream (issue 14).
pub const SMALL_BUF: usize = 512;

/// Capacity of a client connection's input buffer for a new request: a typical chat request fits,
/// and an idle keep-alive connection holds only this much (nginx's `client_header_buffer_size` is
/// 1 KiB too); a larger head grows it by 4 KiB, a body is read with room reserved for all of it.
/// A streaming response holds none (`relay::RequestBytes::release`).
pub const INPUT_BUF: usize = 1024;

/// Where finished requests' usage records go (the webhook thread's non-blocking sink).
pub type RecordSink = Arc<dyn Fn(UsageRecord) + Send + Sync>;

/// Read-mostly state shared by every core.
pub struct Shared {
    /// One JSON line per request, written by the access-log thread.
    pub access_log: Arc<crate::access_log::AccessLog>,
    /// What config decides, swapped by reload and discovery. On a core, read it through
    /// `CoreCtx::snapshot()` (once per request), never by holding a snapshot across requests.
    pub snapshots: Arc<SnapshotCell>,
    pub registry: Arc<Registry>,
    pub records: RecordSink,
    pub shutdown: Arc<AtomicBool>,
    /// Limits and budgets per subject (hook: limits engineer).
    pub limits: Arc<crate::limits::Limiter>,
    /// Distinguishes request ids of this process from earlier runs.
    pub id_prefix: String,
    /// The listener's TLS certificates (`[tls]`), swappable on reload; None = plain HTTP.
    pub listener_tls: Option<Arc<crate::tls::ListenerTls>>,
}

impl Shared {
    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }
}

pub struct CoreCtx {
    pub shared: Arc<Shared>,
    pub core: usize,
    pub metrics: Arc<CoreMetrics>,
    /// This core's copy of the current snapshot (replaced when the generation moves). The Rc
    /// is cloned per request without touching the Arc's shared (cross-core) reference count.
    #[allow(clippy::redundant_allocation)]
    snap: RefCell<Rc<Arc<Snapshot>>>,
    pub balancer: RefCell<Balancer>,
    pub pool: RefCell<Pool>,
    buffers: RefCell<Vec<Vec<u8>>>,
    small_buffers: RefCell<Vec<Vec<u8>>>,
    /// Client input buffers (capacity INPUT_BUF) handed back while their responses stream.
    input_buffers: RefCell<Vec<Vec<u8>>>,
    /// Header-span Vecs and target Strings of finished request heads, reused by the next ones.
    spares: RefCell<Vec<crate::http1::Spare>>,
    /// Header-span Vecs of finished response heads, likewise.
    spans: RefCell<Vec<Vec<crate::http1::HeaderSpan>>>,
    ids: IdGen,
    /// Sockets (backend, client) of the exchanges in flight, shut down when the grace runs out.
    exchanges: RefCell<Vec<(i32, i32)>>,
    /// `shutdown_grace` ran out: exchanges still running are being cut (`gateway_shutdown`).
    cut: Cell<bool>,
    /// Requests being handled on this core (drain waits for 0): counted only by `InFlight`.
    inflight: Cell<usize>,
    /// Client connections open on this core: counted only by `OpenConnection`.
    connections: Cell<usize>,
    workers: usize,
    /// Serves only /health and /metrics (the `admin_listen` listener).
    pub admin_only: bool,
    /// This core's side of the limits (admission, subject cache).
    pub limits: crate::limits::CoreLimits,
}

impl CoreCtx {
    pub fn new(shared: Arc<Shared>, core: usize, workers: usize, metrics: Arc<CoreMetrics>) -> Self {
        CoreCtx {
            snap: RefCell::new(Rc::new(shared.snapshots.load())),
            balancer: RefCell::new(Balancer::new(core)),
            pool: RefCell::new(Pool::new()),
            buffers: RefCell::new(Vec::new()),
            small_buffers: RefCell::new(Vec::new()),
            input_buffers: RefCell::new(Vec::new()),
            spares: RefCell::new(Vec::new()),
            spans: RefCell::new(Vec::new()),
            ids: IdGen::new(),
            exchanges: RefCell::new(Vec::new()),
            cut: Cell::new(false),
            inflight: Cell::new(0),
            connections: Cell::new(0),
            workers: workers.max(1),
            admin_only: false,
            limits: crate::limits::CoreLimits::new(shared.limits.clone(), core),
            shared,
            core,
            metrics,
        }
    }

    /// The current config snapshot: one atomic load (the generation) and a non-atomic Rc clone;
    /// a new snapshot is fetched only when the generation moved. A request calls this once and
    /// keeps what it got to the end, so in-flight requests finish on the config they started with.
    #[allow(clippy::redundant_allocation)]
    pub fn snapshot(&self) -> Rc<Arc<Snapshot>> {
        let g = self.shared.snapshots.generation();
        let mut s = self.snap.borrow_mut();
        if s.generation != g {
            *s = Rc::new(self.shared.snapshots.load());
        }
        s.clone()
    }

    /// Counts a client connection open on this core (and in `llmproxy_connections_active`) until
    /// the guard drops.
    pub fn connection_opened(&self) -> OpenConnection<'_> {
        self.connections.set(self.connections.get() + 1);
        self.metrics.connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self)
    }

    /// Client connections open on this core.
    pub fn connections(&self) -> usize {
        self.connections.get()
    }

    /// Counts a request being handled on this core (shutdown waits for them) until the guard drops.
    pub fn request_started(&self) -> InFlight<'_> {
        self.inflight.set(self.inflight.get() + 1);
        InFlight(self)
    }

    /// Requests being handled on this core.
    pub fn inflight(&self) -> usize {
        self.inflight.get()
    }

    /// This core's share of `limits.max_connections`.
    pub fn max_connections(&self, snap: &Snapshot) -> usize {
        snap.config.limits.max_connections.div_ceil(self.workers)
    }

    pub fn admin_only(mut self) -> Self {
        self.admin_only = true;
        self
    }

    /// A relay buffer (capacity RELAY_BUF + framing room), reused across requests.
    pub fn take_buf(&self) -> Vec<u8> {
        self.buffers.borrow_mut().pop().unwrap_or_else(|| Vec::with_capacity(RELAY_BUF + 64))
    }

    /// A small buffer (capacity SMALL_BUF), reused: what a slow stream holds while it waits.
    pub fn take_small_buf(&self) -> Vec<u8> {
        self.small_buffers.borrow_mut().pop().unwrap_or_else(|| Vec::with_capacity(SMALL_BUF))
    }

    /// Returns a relay or small buffer to its pool (others are freed).
    pub fn give_buf(&self, mut b: Vec<u8>) {
        let cap = b.capacity();
        let mut free = if (RELAY_BUF..=4 * RELAY_BUF).contains(&cap) {
            self.buffers.borrow_mut()
        } else if cap == SMALL_BUF {
            self.small_buffers.borrow_mut()
        } else {
            return;
        };
        if free.len() < 256 {
            b.clear();
            free.push(b);
        }
    }

    /// An empty client input buffer (capacity INPUT_BUF), reused.
    pub fn take_inbuf(&self) -> Vec<u8> {
        self.input_buffers.borrow_mut().pop().unwrap_or_else(|| Vec::with_capacity(INPUT_BUF))
    }

    /// Returns a client input buffer; one that grew (a large head or body), or beyond 256 kept,
    /// is freed.
    pub fn give_inbuf(&self, mut b: Vec<u8>) {
        let mut free = self.input_buffers.borrow_mut();
        if b.capacity() == INPUT_BUF && free.len() < 256 {
            b.clear();
            free.push(b);
        }
    }

    /// Storage for a head to parse into (an earlier head's, or empty).
    pub fn take_spare(&self) -> crate::http1::Spare {
        self.spares.borrow_mut().pop().unwrap_or_default()
    }

    /// Returns a head's storage for reuse; beyond 64 kept, or when it grew large, it is freed.
    pub fn give_spare(&self, s: crate::http1::Spare) {
        let mut v = self.spares.borrow_mut();
        if v.len() < 64 && s.spans.capacity() <= crate::http1::MAX_HEADERS && s.target.capacity() <= 4096 {
            v.push(s);
        }
    }

    /// A header-span Vec for a response head to parse into.
    pub fn take_spans(&self) -> Vec<crate::http1::HeaderSpan> {
        self.spans.borrow_mut().pop().unwrap_or_default()
    }

    /// Returns a response head's header spans for reuse (as `give_spare`).
    pub fn give_spans(&self, s: Vec<crate::http1::HeaderSpan>) {
        let mut v = self.spans.borrow_mut();
        if v.len() < 64 && s.capacity() > 0 && s.capacity() <= crate::http1::MAX_HEADERS {
            v.push(s);
        }
    }

    /// A new request id of the gateway's own (see `ids.rs`).
    pub fn new_request_id(&self) -> String {
        self.ids.next_id()
    }

    /// The ids of a request whose client sent `client` as `x-request-id`.
    pub fn request_ids(&self, client: Option<String>) -> RequestIds {
        RequestIds { ours: self.ids.next_id(), client }
    }

    /// An exchange starts using these sockets (backend, client).
    pub fn exchange_started(&self, fds: (i32, i32)) {
        self.exchanges.borrow_mut().push(fds);
    }

    pub fn exchange_ended(&self, fds: (i32, i32)) {
        let mut v = self.exchanges.borrow_mut();
        if let Some(i) = v.iter().position(|&x| x == fds) {
            v.swap_remove(i);
        }
    }

    /// The grace ran out: shut down the sockets of every exchange in flight, so that each ends
    /// now (its reads and writes fail) and still emits its record, as `gateway_shutdown`.
    pub fn cut_exchanges(&self) {
        self.cut.set(true);
        for &(b, c) in self.exchanges.borrow().iter() {
            // SAFETY: shutdown(2) on descriptors owned by live exchanges (they deregister before
            // closing); it only ends the connection, the descriptors stay valid.
            unsafe {
                libc::shutdown(b, libc::SHUT_RDWR);
                libc::shutdown(c, libc::SHUT_RDWR);
            }
        }
    }

    /// Whether exchanges are being cut for shutdown.
    pub fn cutting(&self) -> bool {
        self.cut.get()
    }
}

/// A client connection counted open (see [`CoreCtx::connection_opened`]).
pub struct OpenConnection<'a>(&'a CoreCtx);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections.set(self.0.connections.get() - 1);
        self.0.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request counted in flight (see [`CoreCtx::request_started`]).
pub struct InFlight<'a>(&'a CoreCtx);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inflight.set(self.0.inflight.get() - 1);
    }
}
