//! Per-core context: what one worker thread's tasks share without locks (pool, balancer rotation,
//! buffers, counters), plus the `Shared` part that all cores read. Lives on its core thread (Rc).

use crate::balancer::{BackendSet, Balancer};
use crate::config::Config;
use crate::metrics::{CoreMetrics, Registry};
use crate::upstream::Pool;
use crate::usage::record::UsageRecord;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Size of the buffer a relay reads backend bytes into (plus framing room).
pub const RELAY_BUF: usize = 8 * 1024;

/// Where finished requests' usage records go (the webhook thread's non-blocking sink).
pub type RecordSink = Arc<dyn Fn(UsageRecord) + Send + Sync>;

/// Read-mostly state shared by every core.
pub struct Shared {
    pub config: Arc<Config>,
    pub backends: Arc<BackendSet>,
    pub registry: Arc<Registry>,
    pub records: RecordSink,
    pub shutdown: Arc<AtomicBool>,
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
    pub balancer: RefCell<Balancer>,
    pub pool: RefCell<Pool>,
    buffers: RefCell<Vec<Vec<u8>>>,
    next_id: Cell<u64>,
    /// Requests being handled on this core (drain waits for 0).
    pub inflight: Cell<usize>,
    pub connections: Cell<usize>,
    /// This core's share of `limits.max_connections`.
    pub max_connections: usize,
    /// Serves only /health and /metrics (the `admin_listen` listener).
    pub admin_only: bool,
}

impl CoreCtx {
    pub fn new(shared: Arc<Shared>, core: usize, workers: usize, metrics: Arc<CoreMetrics>) -> Self {
        let n = shared.backends.len();
        let max_connections = shared.config.limits.max_connections.div_ceil(workers.max(1));
        CoreCtx {
            balancer: RefCell::new(Balancer::new(n, core)),
            pool: RefCell::new(Pool::new(n)),
            buffers: RefCell::new(Vec::new()),
            next_id: Cell::new(0),
            inflight: Cell::new(0),
            connections: Cell::new(0),
            max_connections,
            admin_only: false,
            shared,
            core,
            metrics,
        }
    }

    pub fn admin_only(mut self) -> Self {
        self.admin_only = true;
        self
    }

    /// A relay buffer (capacity RELAY_BUF + framing room), reused across requests.
    pub fn take_buf(&self) -> Vec<u8> {
        self.buffers.borrow_mut().pop().unwrap_or_else(|| Vec::with_capacity(RELAY_BUF + 64))
    }

    pub fn give_buf(&self, mut b: Vec<u8>) {
        let mut free = self.buffers.borrow_mut();
        if free.len() < 256 && b.capacity() >= RELAY_BUF && b.capacity() <= 4 * RELAY_BUF {
            b.clear();
            free.push(b);
        }
    }

    /// A new unique request id: `req_` + process prefix + core + counter.
    pub fn new_request_id(&self) -> String {
        let n = self.next_id.get();
        self.next_id.set(n + 1);
        format!("req_{}{:02x}{:010x}", self.shared.id_prefix, self.core & 0xff, n)
    }
}
