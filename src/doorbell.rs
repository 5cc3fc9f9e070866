//! Waking a thread that sleeps until work arrives, from threads that must neither wait nor lock
//! (core threads). A blocking crossbeam `recv` would do it with a lock: while a receiver is blocked,
//! every send takes the channel's waker Mutex and makes a futex call. Here the sleeper announces
//! itself in `asleep`, issues a SeqCst fence, looks for work once more, and parks; a producer
//! pushes its work, issues a SeqCst fence, and unparks the sleeper only if it sees `asleep` (the
//! Dekker pattern: the two fences are ordered one way or the other, so either the producer sees
//! `asleep` or the sleeper sees the work). While the sleeper is awake, a ring is a fence and a load
//! of a flag only the sleeper writes; the `swap` makes exactly one producer per sleep pay for the
//! unpark. An unpark that lands before the `park` leaves a token, so that `park` returns at once.

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Doorbell {
    asleep: AtomicBool,
    /// Set by [`Doorbell::close`]: the sleeper's work is over (it no longer parks).
    closed: AtomicBool,
    /// The sleeping thread: the first thread to call [`Doorbell::sleep`].
    sleeper: OnceLock<Thread>,
}

impl Doorbell {
    /// No more work will come (the producers are gone): wakes the sleeper, which no longer parks.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.ring();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// For producers, after their work is pushed where the sleeper looks.
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::Relaxed) && self.asleep.swap(false, Ordering::Relaxed) {
            if let Some(t) = self.sleeper.get() {
                t.unpark();
            }
        }
    }

    /// For the sleeper, with nothing to do: parks until a ring (or `timeout`), unless `has_work`,
    /// asked after the announcement, finds some. May return early (spurious unparks): callers
    /// look for work in a loop.
    pub fn sleep(&self, has_work: impl Fn() -> bool, timeout: Option<Duration>) {
        self.sleeper.get_or_init(std::thread::current);
        self.asleep.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if !has_work() && !self.is_closed() {
            match timeout {
                Some(d) => std::thread::park_timeout(d),
                None => std::thread::park(),
            }
        }
        self.asleep.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    /// Many producers, one sleeper that only ever parks without a timeout: every item is seen
    /// (a lost wake-up would leave the sleeper parked and the test hanging).
    #[test]
    fn no_wake_up_is_lost() {
        const PER: u64 = 20_000;
        let bell = Arc::new(Doorbell::default());
        let pushed = Arc::new(AtomicU64::new(0));
        let (b, p) = (bell.clone(), pushed.clone());
        let sleeper = std::thread::spawn(move || {
            let mut seen = 0;
            while seen < 4 * PER {
                let now = p.load(Ordering::SeqCst);
                if now > seen {
                    seen = now;
                    continue;
                }
                b.sleep(|| p.load(Ordering::SeqCst) > seen, None);
            }
        });
        let producers: Vec<_> = (0..4)
            .map(|_| {
                let (b, p) = (bell.clone(), pushed.clone());
                std::thread::spawn(move || {
                    for i in 0..PER {
                        p.fetch_add(1, Ordering::SeqCst);
                        b.ring();
                        if i % 1000 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for t in producers {
            t.join().unwrap();
        }
        sleeper.join().unwrap();
    }
}
