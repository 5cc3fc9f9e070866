//! The process log (stderr), written by a thread of its own. A thread that logs (a core thread
//! answering a failed request, above all) formats its line and hands it to the `llmproxy-log`
//! thread through a bounded queue; it never waits on stderr. When whoever reads stderr (a
//! terminal, journald, a container runtime's log pipe) stalls and the queue is full, the line is
//! dropped and counted (`llmproxy_log_lines_dropped_total`), and once the writer gets through
//! again it says how many lines were lost. `RUST_LOG` filters as with env_logger (default
//! `info`); lines look as env_logger's did: `[2026-12-03T06:39:47Z WARN ] message`.

use crate::doorbell::Doorbell;
use crossbeam_channel::{bounded, Receiver, Sender};
use log::{Level, Log, Metadata, Record};
use std::fmt::Write as _;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Lines that may wait for the log thread.
pub const QUEUE: usize = 4096;

/// How long `flush` (at exit) waits for a stalled stderr before giving up on the queued lines.
pub const FLUSH_WAIT: Duration = Duration::from_secs(2);

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines dropped so far because the log queue was full (for `/metrics`).
pub fn dropped() -> u64 {
    DROPPED.load(Relaxed)
}

enum Msg {
    Line(String),
    /// Everything before it is written and flushed; then the sender is answered.
    Flush(Sender<()>),
}

/// Installs the logger and starts its thread. Call once, first thing in `main`.
pub fn init() {
    let filter = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = filter.filter();
    let (logger, rx) = QueueLogger::new(filter, QUEUE, &DROPPED);
    let bell = logger.bell.clone();
    let spawned = std::thread::Builder::new()
        .name("llmproxy-log".into())
        .spawn(move || write_lines(rx, &bell, io::stderr(), &DROPPED));
    if let Err(e) = spawned {
        // Without its thread the queue would fill and drop every line: write directly instead.
        eprintln!("cannot start the log thread ({e}); logging straight to stderr");
    }
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max);
    }
}

struct QueueLogger {
    filter: env_logger::Logger,
    tx: Sender<Msg>,
    /// Wakes the log thread without a lock (a blocking `recv` there would make every `try_send`
    /// take the channel's waker Mutex).
    bell: Arc<Doorbell>,
    dropped: &'static AtomicU64,
}

impl QueueLogger {
    fn new(
        filter: env_logger::Logger,
        queue: usize,
        dropped: &'static AtomicU64,
    ) -> (QueueLogger, Receiver<Msg>) {
        let (tx, rx) = bounded(queue);
        (QueueLogger { filter, tx, bell: Arc::default(), dropped }, rx)
    }
}

/// One line as env_logger formatted it with the target off.
fn line(time: SystemTime, level: Level, args: &std::fmt::Arguments) -> String {
    let mut s = String::with_capacity(96);
    let _ = writeln!(s, "[{} {:<5}] {}", humantime::format_rfc3339_seconds(time), level, args);
    s
}

impl Log for QueueLogger {
    fn enabled(&self, m: &Metadata) -> bool {
        self.filter.enabled(m)
    }

    fn log(&self, r: &Record) {
        if !self.filter.matches(r) {
            return;
        }
        // A full queue (stderr stalled, a storm of failures) drops the line before it is formatted.
        if self.tx.is_full() {
            self.dropped.fetch_add(1, Relaxed);
            return;
        }
        let msg = Msg::Line(line(SystemTime::now(), r.level(), r.args()));
        // The log thread is gone (it could not start): write it here.
        if let Some(Msg::Line(l)) = self.bell.offer(&self.tx, self.dropped, msg) {
            let _ = io::stderr().write_all(l.as_bytes());
        }
    }

    /// Waits until every line queued so far is written, for at most `FLUSH_WAIT` (a stalled
    /// stderr must not keep the process from exiting).
    fn flush(&self) {
        let (ack, done) = bounded(1);
        if self.tx.send_timeout(Msg::Flush(ack), FLUSH_WAIT).is_ok() {
            self.bell.ring();
            let _ = done.recv_timeout(FLUSH_WAIT);
        }
    }
}

/// The log thread: writes what comes, in order, flushing whenever the queue is empty, and reports
/// lines dropped while it was held up; sleeps on `bell` in between. Write errors (a closed stderr)
/// are ignored. Runs as long as the process.
fn write_lines(rx: Receiver<Msg>, bell: &Doorbell, out: impl Write, dropped: &AtomicU64) {
    let mut out = io::BufWriter::with_capacity(64 * 1024, out);
    let mut reported = 0;
    loop {
        while let Ok(m) = rx.try_recv() {
            match m {
                Msg::Line(l) => {
                    let _ = out.write_all(l.as_bytes());
                }
                Msg::Flush(ack) => {
                    report_dropped(&mut out, dropped, &mut reported);
                    let _ = out.flush();
                    let _ = ack.send(());
                }
            }
        }
        report_dropped(&mut out, dropped, &mut reported);
        let _ = out.flush();
        bell.sleep(|| !rx.is_empty(), None);
    }
}

fn report_dropped(out: &mut impl Write, dropped: &AtomicU64, reported: &mut u64) {
    let now = dropped.load(Relaxed);
    if now > *reported {
        let args = format_args!(
            "{} log lines dropped: stderr was not read fast enough (llmproxy_log_lines_dropped_total)",
            now - *reported
        );
        let _ = out.write_all(line(SystemTime::now(), Level::Warn, &args).as_bytes());
        *reported = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A stderr whose reader stalls until `open` is set.
    #[derive(Clone, Default)]
    struct Gate {
        open: Arc<std::sync::atomic::AtomicBool>,
        /// Set once a write waits at the closed gate.
        waiting: Arc<std::sync::atomic::AtomicBool>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            while !self.open.load(Relaxed) {
                self.waiting.store(true, Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
            self.got.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A logger with a queue of `queue` lines, its writer thread on a stalled stderr (the gate),
    /// and the drop counter.
    fn stalled(queue: usize) -> (QueueLogger, Gate, &'static AtomicU64) {
        let dropped: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
        let filter = env_logger::Builder::new().filter_level(log::LevelFilter::Info).build();
        let (logger, rx) = QueueLogger::new(filter, queue, dropped);
        let bell = logger.bell.clone();
        let gate = Gate::default();
        let out = gate.clone();
        std::thread::spawn(move || write_lines(rx, &bell, out, dropped));
        (logger, gate, dropped)
    }

    fn record(msg: &str, f: impl FnOnce(&Record)) {
        f(&Record::builder().level(Level::Warn).args(format_args!("{msg}")).build())
    }

    #[test]
    fn a_stalled_stderr_drops_and_counts_lines_and_never_blocks_the_caller() {
        let (logger, gate, dropped) = stalled(8);
        // The first line reaches the writer, which then waits on the stalled stderr.
        record("line 0", |r| logger.log(r));
        while !gate.waiting.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let t = std::time::Instant::now();
        for i in 1..1000 {
            record(&format!("line {i}"), |r| logger.log(r));
        }
        assert!(t.elapsed() < Duration::from_secs(1), "logging waited on the stalled writer");
        // The queue's 8 got through besides the line the writer holds.
        let lost = dropped.load(Relaxed);
        assert_eq!(lost, 999 - 8);
        gate.open.store(true, Relaxed);
        logger.flush();
        let text = String::from_utf8(gate.got.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with('[') && text.contains("WARN ] line 0\n"), "{text}");
        assert_eq!(text.matches("] line ").count() as u64, 1000 - lost, "{text}");
        assert!(
            text.contains(&format!("WARN ] {lost} log lines dropped: stderr was not read fast enough")),
            "{text}"
        );
        // Lines keep their order; after the report, new lines flow again.
        record("after", |r| logger.log(r));
        logger.flush();
        assert!(String::from_utf8_lossy(&gate.got.lock().unwrap()).ends_with("WARN ] after\n"));
    }

    #[test]
    fn flush_gives_up_on_a_stderr_that_never_drains() {
        let (logger, gate, _) = stalled(4);
        for i in 0..10 {
            record(&format!("line {i}"), |r| logger.log(r));
        }
        let t = std::time::Instant::now();
        logger.flush();
        assert!(t.elapsed() < FLUSH_WAIT * 2 + Duration::from_secs(1));
        gate.open.store(true, Relaxed);
    }

    #[test]
    fn lines_below_the_filter_are_not_queued() {
        let dropped: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
        let filter = env_logger::Builder::new().filter_level(log::LevelFilter::Warn).build();
        let (logger, rx) = QueueLogger::new(filter, 4, dropped);
        let info = Record::builder().level(Level::Info).args(format_args!("quiet")).build();
        logger.log(&info);
        assert!(rx.try_recv().is_err());
        assert!(!logger.enabled(&Metadata::builder().level(Level::Info).build()));
        record("loud", |r| logger.log(r));
        assert!(matches!(rx.try_recv(), Ok(Msg::Line(l)) if l.ends_with("WARN ] loud\n")));
    }
}
