//! Starting and stopping a whole gateway: listeners bound once (port 0 resolved for every worker),
//! the webhook and health threads, one pinned worker per core; then a graceful drain on stop.
//! Used by `main` (run, demo) and by tests that want the gateway in-process.

use crate::config::Config;
use crate::core::{CoreCtx, Shared};
use crate::cores::{self, Driver};
use crate::delivery::{self, WebhookHandle, WebhookStats};
use crate::metrics::{CoreMetrics, Registry, ReloadStats};
use crate::snapshot::SnapshotCell;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

#[derive(Default)]
pub struct Options {
    /// Print each usage record as a JSON line on stdout (`llmproxy demo`).
    pub echo_records: bool,
    /// The graceful-stop flag (set by SIGTERM/SIGINT handlers installed before start).
    pub shutdown: Arc<AtomicBool>,
    /// The file SIGHUP reloads (None: the config did not come from a file).
    pub config_path: Option<std::path::PathBuf>,
    /// Set (by a SIGHUP handler installed before start) to ask for a reload.
    pub reload: Arc<AtomicBool>,
    /// The read end of a self-pipe that the SIGTERM/SIGINT/SIGHUP handlers write a byte to after
    /// setting their flag: [`Gateway::run_until_shutdown`] sleeps on it. None: it looks at the
    /// flags every 50 ms instead.
    pub wake: Option<std::os::unix::net::UnixStream>,
}

pub struct Gateway {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub driver: Driver,
    shutdown: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
    wake: Option<std::os::unix::net::UnixStream>,
    config_path: Option<std::path::PathBuf>,
    snapshots: Arc<SnapshotCell>,
    reloads: Arc<ReloadStats>,
    workers: Vec<JoinHandle<()>>,
    health: Option<JoinHandle<()>>,
    discovery: Option<JoinHandle<()>>,
    access_log: Arc<crate::access_log::AccessLog>,
    access_thread: Option<JoinHandle<()>>,
    health_stop: Arc<AtomicBool>,
    webhook: Option<WebhookHandle>,
    listener_tls: Option<Arc<crate::tls::ListenerTls>>,
    limits: Option<crate::limits::SyncThread>,
    limiter: Arc<crate::limits::Limiter>,
}

/// A SO_REUSEPORT listener; every worker gets its own on the same address.
pub fn reuse_port_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

impl Gateway {
    pub fn start(config: Config, opts: Options) -> io::Result<Gateway> {
        let config = Arc::new(config);
        let driver = cores::choose_driver(config.runtime.driver)?;
        let available = core_affinity::get_core_ids().map_or(1, |c| c.len()).max(1);
        let plan = cores::plan(&config.runtime, available);

        // Bind before starting anything: a taken port fails fast.
        let first = reuse_port_listener(config.listen)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen)))?;
        let addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..plan.len() {
            listeners.push(reuse_port_listener(addr)?);
        }
        let admin =
            match config.admin_listen {
                Some(a) => Some(reuse_port_listener(a).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot listen on admin_listen {a}: {e}"))
                })?),
                None => None,
            };
        let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;

        let stats = Arc::new(WebhookStats::default());
        let (sink, webhook) = delivery::start(&config.usage_hook, stats.clone(), opts.echo_records)?;
        let snapshots = Arc::new(
            SnapshotCell::new((*config).clone(), plan.len())
                .map_err(|p| io::Error::new(io::ErrorKind::InvalidInput, p.join("; ")))?,
        );
        let core_metrics: Vec<Arc<CoreMetrics>> =
            (0..plan.len()).map(|i| Arc::new(CoreMetrics::new(i))).collect();
        let depth_sink = sink.clone();
        let limiter = Arc::new(crate::limits::Limiter::new(&config, plan.len()));
        let limits = crate::limits::SyncThread::start(limiter.clone(), &config.rate_limit)?;
        let render_limits = limiter.clone();
        let reloads = Arc::new(ReloadStats::default());
        let (access_log, access_thread) = crate::access_log::AccessLog::start(&config.access_log)?;
        let registry = Arc::new(Registry {
            snapshots: snapshots.clone(),
            cores: core_metrics.clone(),
            webhook: stats,
            queue_depth: Box::new(move || depth_sink.queue_depth()),
            extra: vec![Box::new(move |out: &mut String| render_limits.render(out))],
            reloads: reloads.clone(),
            access_log_dropped: access_log.dropped.clone(),
        });
        let shutdown = opts.shutdown.clone();
        let listener_tls =
            config.tls.as_ref().map(|t| Arc::new(crate::tls::ListenerTls::new(t.server.clone())));
        let shared = Arc::new(Shared {
            access_log: access_log.clone(),
            snapshots: snapshots.clone(),
            registry,
            records: Arc::new(move |r| sink.submit(r)),
            shutdown: shutdown.clone(),
            limits: limiter.clone(),
            id_prefix: format!(
                "{:08x}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as u32)
            ),
            listener_tls: listener_tls.clone(),
        });

        let health_stop = Arc::new(AtomicBool::new(false));
        let health = crate::health::spawn(snapshots.clone(), health_stop.clone())?;
        let discovery = crate::discovery::spawn(snapshots.clone(), health_stop.clone())?;
        snapshots.watch(vec![health.thread().clone(), discovery.thread().clone()]);

        log::info!("listening on {addr}");
        if listener_tls.is_some() {
            log::info!("the listener speaks TLS (HTTP/1.1 via ALPN); admin_listen stays plain");
        }
        if let Some(a) = admin_addr {
            log::info!("admin endpoints (/health, /metrics) on {a}");
        }
        let snap = snapshots.load();
        for b in &snap.backends {
            let addrs: Vec<String> =
                snap.endpoints[b.endpoints.clone()].iter().map(|e| e.addr.to_string()).collect();
            log::info!(
                "backend {} (weight {}{}; addresses {})",
                b.cfg.url,
                b.cfg.weight,
                if b.cfg.models.is_empty() { String::new() } else { format!(", models {:?}", b.cfg.models) },
                addrs.join(", ")
            );
        }
        let pinned: Vec<String> =
            plan.iter().map(|c| c.map_or("unpinned".to_string(), |c| c.to_string())).collect();
        let setup = if driver == Driver::IoUring {
            format!(" (ring setup: {})", cores::uring_flags())
        } else {
            String::new()
        };
        log::info!(
            "I/O driver {}{setup}; {} workers on cores [{}]",
            driver.name(),
            plan.len(),
            pinned.join(", ")
        );

        let workers_n = plan.len();
        let mut admin = admin;
        let mut workers = Vec::with_capacity(workers_n);
        for (i, (core, listener)) in plan.into_iter().zip(listeners).enumerate() {
            let shared = shared.clone();
            let metrics = core_metrics[i].clone();
            let admin_listener = if i == 0 { admin.take() } else { None };
            let t = std::thread::Builder::new().name(format!("llmproxy-core-{i}")).spawn(move || {
                if let Some(c) = core {
                    if !cores::pin(c) {
                        log::warn!("worker {i}: could not pin to core {c}");
                    }
                }
                let run = cores::run_on(driver, || async move {
                    let ctx = Rc::new(CoreCtx::new(shared.clone(), i, workers_n, metrics.clone()));
                    if let Some(al) = admin_listener {
                        match monoio::net::TcpListener::from_std(al) {
                            Ok(l) => {
                                let actx =
                                    Rc::new(CoreCtx::new(shared.clone(), i, workers_n, metrics).admin_only());
                                monoio::spawn(crate::server::serve(l, actx));
                            }
                            Err(e) => log::error!("admin listener: {e}"),
                        }
                    }
                    match monoio::net::TcpListener::from_std(listener) {
                        Ok(l) => crate::server::serve(l, ctx).await,
                        Err(e) => log::error!("worker {i}: cannot use listener: {e}"),
                    }
                });
                if let Err(e) = run {
                    log::error!("worker {i}: cannot start the {} runtime: {e}", driver.name());
                }
            })?;
            workers.push(t);
        }
        Ok(Gateway {
            addr,
            admin_addr,
            driver,
            shutdown,
            reload: opts.reload,
            wake: opts.wake,
            config_path: opts.config_path,
            snapshots,
            reloads,
            workers,
            health: Some(health),
            discovery: Some(discovery),
            access_log,
            access_thread: Some(access_thread),
            health_stop,
            webhook: Some(webhook),
            listener_tls,
            limits: Some(limits),
            limiter,
        })
    }

    /// The listener's certificates, for a reload to swap (`ListenerTls::reload` with the new
    /// config's `tls.server`); None when the listener is plain (turning TLS on needs a restart).
    pub fn listener_tls(&self) -> Option<Arc<crate::tls::ListenerTls>> {
        self.listener_tls.clone()
    }

    /// The flag that starts a graceful stop when set (signal handlers set it).
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// The flag that asks for a config reload when set (the SIGHUP handler sets it).
    pub fn reload_flag(&self) -> Arc<AtomicBool> {
        self.reload.clone()
    }

    /// Reloads the config file now (what SIGHUP does); true when the new config is in use.
    pub fn reload(&self) -> bool {
        let Some(path) = &self.config_path else {
            log::warn!("reload requested, but this gateway's config did not come from a file");
            return false;
        };
        let Some(r) = crate::reload::reload(path, &self.snapshots, &self.reloads) else { return false };
        // The other threads' reload hooks.
        let config = &r.config;
        self.access_log.reconfigure(&config.access_log);
        self.limiter.reload(config);
        if let (Some(w), Some(make)) = (&self.webhook, r.sink.clone()) {
            w.reload_sink(make);
        }
        // (Turning [tls] on or off needs a restart: `reload::keep_restart_only`.)
        if let (Some(l), Some(t)) = (&self.listener_tls, &config.tls) {
            l.reload(t.server.clone());
            log::info!("reload: listener certificate {} in use for new connections", t.cert_file);
        }
        r.log_applied();
        true
    }

    /// Stops accepting, waits for in-flight requests (up to `shutdown_grace`), stops the health
    /// thread, and flushes every pending usage record to the webhook or the spool.
    pub fn stop(mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            if w.join().is_err() {
                log::error!("a worker thread panicked");
            }
        }
        self.health_stop.store(true, Ordering::Relaxed);
        for t in [self.health.take(), self.discovery.take()].into_iter().flatten() {
            t.thread().unpark();
            let _ = t.join();
        }
        self.access_log.stop();
        if let Some(t) = self.access_thread.take() {
            // Writing to a stderr nobody reads would hold the exit for ever: wait a moment only.
            let deadline = std::time::Instant::now() + crate::logging::FLUSH_WAIT;
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                log::warn!("access log: its output is not being read; queued lines are lost at exit");
            }
        }
        if let Some(l) = self.limits.take() {
            l.stop();
        }
        if let Some(w) = self.webhook.take() {
            w.shutdown();
        }
    }

    /// Blocks until the shutdown flag is set, then stops; reloads when the reload flag is set. Sleeps
    /// on the signal handlers' self-pipe ([`Options::wake`]) between signals.
    pub fn run_until_shutdown(mut self) {
        let mut wake = self.wake.take();
        while !self.shutdown.load(Ordering::Relaxed) {
            if self.reload.swap(false, Ordering::Relaxed) {
                self.reload();
            }
            // A handler sets its flag before it writes its byte: a signal that landed after the
            // flags were read above left a byte, so this returns at once and the loop looks again.
            if !wake.as_mut().is_some_and(wait_for_signal) {
                wake = None;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        log::info!("shutting down: draining in-flight requests");
        self.stop();
        log::info!("stopped");
    }
}

/// Blocks until a signal handler writes to the self-pipe (or a read is interrupted). False when the
/// pipe is unusable (closed, error): the caller falls back to polling the flags.
fn wait_for_signal(pipe: &mut std::os::unix::net::UnixStream) -> bool {
    use std::io::Read;
    let mut buf = [0u8; 64];
    match pipe.read(&mut buf) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
        Err(e) => {
            log::warn!("signal self-pipe: {e}; polling the signal flags instead");
            false
        }
    }
}
