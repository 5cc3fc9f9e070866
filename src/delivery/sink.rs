//! The [`Sink`] trait (where a batch of records goes: an HTTP webhook today) and the pool of
//! delivery threads ("llmproxy-deliver-N") that each own one sink instance and one connection, so
//! `usage_hook.concurrency` batches are in flight at once. The journal thread hands batches over a
//! channel and gets them back with the outcome; nothing here runs on a core thread.

use super::client;
use super::format::Formatter;
use super::http::HttpSink;
use super::journal::Pos;
use super::nats::NatsSink;
use super::Entry;
use crate::config::{SinkKind, UsageHookConfig};
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};

/// A destination for usage records. `send` blocks until the destination acknowledged the whole
/// batch (`Ok`) or did not (`Err` with the reason; the batch is retried, then journaled).
pub trait Sink: Send {
    fn send(&mut self, entries: &[Entry]) -> Result<(), String>;
}

/// Builds one sink per delivery thread.
pub type MakeSink = Arc<dyn Fn() -> Box<dyn Sink> + Send + Sync>;

/// The sink factory for this config; a CA file that cannot be read or a bad URL is an error.
pub fn maker(cfg: &UsageHookConfig) -> Result<MakeSink, String> {
    let formatter = Arc::new(Formatter::new(cfg.delivery.format, cfg.batch_max));
    match cfg.delivery.sink {
        SinkKind::Http => {
            let target = client::parse_url(&cfg.url).map_err(|e| format!("usage_hook.url: {e}"))?;
            let tls = if target.tls {
                Some(super::tls::client_config(cfg.delivery.tls_ca_file.as_deref())?)
            } else {
                None
            };
            let secret: Option<Arc<[u8]>> = cfg.secret.as_ref().map(|s| Arc::from(s.as_bytes()));
            let timeout = cfg.timeout;
            Ok(Arc::new(move || {
                Box::new(HttpSink::new(
                    target.clone(),
                    tls.clone(),
                    timeout,
                    formatter.clone(),
                    secret.clone(),
                )) as Box<dyn Sink>
            }))
        }
        SinkKind::Nats => {
            let (url, subject, timeout) =
                (cfg.delivery.nats_url.clone(), cfg.delivery.nats_subject.clone(), cfg.timeout);
            Ok(Arc::new(move || {
                match NatsSink::new(url.clone(), subject.clone(), timeout, formatter.clone()) {
                    Ok(s) => Box::new(s) as Box<dyn Sink>,
                    Err(e) => {
                        Box::new(Broken(format!("cannot start the NATS runtime: {e}"))) as Box<dyn Sink>
                    }
                }
            }))
        }
    }
}

/// The sink factory in use, swapped by a config reload (usage_hook url, secret, format, TLS
/// roots, sink): delivery threads built from [`following`] rebuild their sink before their next
/// batch after a swap. (Hook for the reload engineer.)
pub struct SinkSlot {
    make: Mutex<MakeSink>,
    generation: AtomicU64,
}

impl SinkSlot {
    pub fn new(make: MakeSink) -> Arc<SinkSlot> {
        Arc::new(SinkSlot { make: Mutex::new(make), generation: AtomicU64::new(0) })
    }

    pub fn swap(&self, make: MakeSink) {
        *self.make.lock().unwrap_or_else(|e| e.into_inner()) = make;
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn current(&self) -> (u64, MakeSink) {
        let g = self.generation.load(Ordering::Acquire);
        (g, self.make.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// A factory of sinks that follow `slot`.
pub fn following(slot: Arc<SinkSlot>) -> MakeSink {
    Arc::new(move || {
        let (generation, make) = slot.current();
        Box::new(Following { slot: slot.clone(), generation, inner: make() }) as Box<dyn Sink>
    })
}

struct Following {
    slot: Arc<SinkSlot>,
    generation: u64,
    inner: Box<dyn Sink>,
}

impl Sink for Following {
    fn send(&mut self, entries: &[Entry]) -> Result<(), String> {
        if self.slot.generation.load(Ordering::Acquire) != self.generation {
            let (g, make) = self.slot.current();
            self.inner = make();
            self.generation = g;
        }
        self.inner.send(entries)
    }
}

/// A sink that could not be built: every batch fails (and stays in the journal).
struct Broken(String);

impl Sink for Broken {
    fn send(&mut self, _: &[Entry]) -> Result<(), String> {
        Err(self.0.clone())
    }
}

/// What the journal thread keeps about each record in a batch.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    /// Where the record is in the journal (None: held in memory only).
    pub pos: Option<Pos>,
    pub ts_ms: u64,
    pub attempts: u32,
}

/// A batch out to a delivery thread and back.
pub struct Batch {
    pub entries: Vec<Entry>,
    pub meta: Vec<Meta>,
    pub result: Result<(), String>,
}

pub struct Pool {
    /// Set by the journal thread when batches wait for a delivery thread: the next one to finish
    /// unparks it (otherwise it picks outcomes up at its next round, saving a wakeup per batch).
    wanted: Arc<AtomicBool>,
    /// One per delivery thread: where its next batch goes, and the thread to unpark for it.
    slots: Vec<(Sender<Batch>, Thread)>,
    /// Delivery threads without a batch (the one that finished last is used first).
    idle: Vec<usize>,
    /// Delivery threads found gone by [`Pool::submit`].
    gone: usize,
    done: Receiver<(usize, Batch)>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// `n` threads; a finished batch unparks `notify` (the journal thread) when it asked for that
    /// ([`Pool::wake_on_done`]).
    ///
    /// Each thread waits for its batch with `park`, not a blocking `recv`: crossbeam spins with
    /// `sched_yield` before it sleeps, and with the gateway on one core every yield is a context
    /// switch (perf: a third of the delivery threads' CPU time). The journal thread hands a batch
    /// to an idle thread's own one-slot channel and unparks it: one futex wake per batch.
    pub fn start(n: usize, make: MakeSink, notify: Thread) -> std::io::Result<Pool> {
        let wanted = Arc::new(AtomicBool::new(false));
        let (dtx, done) = crossbeam_channel::unbounded::<(usize, Batch)>();
        let n = n.max(1);
        let (mut slots, mut threads) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let (jtx, jrx) = crossbeam_channel::bounded::<Batch>(1);
            let (dtx, make, notify) = (dtx.clone(), make.clone(), notify.clone());
            let wanted = Arc::clone(&wanted);
            let t = std::thread::Builder::new().name(format!("llmproxy-deliver-{i}")).spawn(move || {
                let mut sink = make();
                loop {
                    let mut b = match jrx.try_recv() {
                        Ok(b) => b,
                        Err(TryRecvError::Empty) => {
                            std::thread::park();
                            continue;
                        }
                        Err(TryRecvError::Disconnected) => return,
                    };
                    b.result = sink.send(&b.entries);
                    if dtx.send((i, b)).is_err() {
                        return;
                    }
                    if wanted.swap(false, Ordering::AcqRel) {
                        notify.unpark();
                    }
                }
            })?;
            slots.push((jtx, t.thread().clone()));
            threads.push(t);
        }
        let idle = (0..n).rev().collect();
        Ok(Pool { wanted, slots, idle, gone: 0, done, threads })
    }

    /// The next finished batch unparks the journal thread (batches are waiting for a free delivery
    /// thread, or a stop is draining).
    pub fn wake_on_done(&self) {
        self.wanted.store(true, Ordering::Release);
    }

    pub fn in_flight(&self) -> usize {
        self.threads() - self.idle.len()
    }

    /// Delivery threads still running.
    pub fn threads(&self) -> usize {
        self.slots.len() - self.gone
    }

    /// Hands a batch to an idle delivery thread (the caller checks that one is idle). A thread found
    /// gone (its sink panicked) is not used again; with none left the batch comes back.
    pub fn submit(&mut self, entries: Vec<Entry>, meta: Vec<Meta>) -> Result<(), Batch> {
        let mut b = Batch { entries, meta, result: Ok(()) };
        while let Some(i) = self.idle.pop() {
            let (job, thread) = &self.slots[i];
            match job.try_send(b) {
                Ok(()) => {
                    thread.unpark();
                    return Ok(());
                }
                Err(e) => {
                    log::error!("delivery thread {i} is gone; its batch goes to another");
                    self.gone += 1;
                    b = e.into_inner();
                }
            }
        }
        Err(b)
    }

    pub fn try_done(&mut self) -> Option<Batch> {
        let (i, b) = self.done.try_recv().ok()?;
        self.idle.push(i);
        Some(b)
    }

    /// Lets every thread finish its current batch and exit; returns what came back.
    pub fn stop(mut self) -> Vec<Batch> {
        // Each thread's channel closes before its unpark: it takes a batch still in its slot, then
        // sees the channel closed and returns.
        for (job, thread) in self.slots.drain(..) {
            drop(job);
            thread.unpark();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.done.try_iter().map(|(_, b)| b).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    struct Echo;
    impl Sink for Echo {
        fn send(&mut self, entries: &[Entry]) -> Result<(), String> {
            if entries.iter().any(|e| e.json == "bad") {
                return Err("refused".into());
            }
            Ok(())
        }
    }

    fn batch(jsons: &[&str]) -> (Vec<Entry>, Vec<Meta>) {
        let entries =
            jsons.iter().map(|j| Entry { request_id: format!("r-{j}"), json: j.to_string() }).collect();
        let meta = jsons.iter().map(|_| Meta { pos: None, ts_ms: 0, attempts: 0 }).collect();
        (entries, meta)
    }

    fn wait_done(pool: &mut Pool) -> Batch {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(b) = pool.try_done() {
                return b;
            }
            assert!(Instant::now() < until, "no batch came back");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Each batch goes to an idle thread and comes back with its sink's result; a busy pool takes
    /// no more than it has threads, and stop lets every thread go.
    #[test]
    fn batches_go_to_idle_threads_and_come_back() {
        let make: MakeSink = Arc::new(|| Box::new(Echo) as Box<dyn Sink>);
        let mut pool = Pool::start(2, make, std::thread::current()).expect("pool");
        assert_eq!((pool.threads(), pool.in_flight()), (2, 0));
        let (e, m) = batch(&["a", "b"]);
        assert!(pool.submit(e, m).is_ok());
        let (e, m) = batch(&["bad"]);
        assert!(pool.submit(e, m).is_ok());
        assert_eq!(pool.in_flight(), 2);
        // Both threads hold a batch (or just handed it back): a third is refused, not dropped.
        let (e, m) = batch(&["c"]);
        let back = pool.submit(e, m).expect_err("no idle thread");
        assert_eq!(back.entries[0].json, "c");
        let mut results: Vec<(usize, bool)> = (0..2)
            .map(|_| {
                let b = wait_done(&mut pool);
                (b.entries.len(), b.result.is_ok())
            })
            .collect();
        results.sort();
        assert_eq!(results, vec![(1, false), (2, true)]);
        assert_eq!(pool.in_flight(), 0);
        assert!(pool.stop().is_empty());
    }

    /// A thread whose sink could not be built is gone: its batch is handed back whole, in order,
    /// and the thread is not counted again.
    #[test]
    fn a_gone_thread_hands_its_batch_back() {
        let make: MakeSink = Arc::new(|| panic!("sink cannot be built (test)"));
        let mut pool = Pool::start(1, make, std::thread::current()).expect("pool");
        let until = Instant::now() + Duration::from_secs(10);
        while !pool.threads.iter().all(|t| t.is_finished()) {
            assert!(Instant::now() < until, "thread did not end");
            std::thread::sleep(Duration::from_millis(1));
        }
        let (e, m) = batch(&["a", "b", "c"]);
        let back = pool.submit(e, m).expect_err("no thread can take it");
        let jsons: Vec<&str> = back.entries.iter().map(|e| e.json.as_str()).collect();
        assert_eq!(jsons, ["a", "b", "c"]);
        assert_eq!(back.meta.len(), 3);
        assert_eq!(pool.threads(), 0);
        assert!(pool.stop().is_empty());
    }
}
