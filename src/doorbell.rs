//! Waking a thread that sleeps until work arrives, from threads that must neither wait nor lock
//! (core threads). A blocking crossbeam `recv` would do it with a lock: while a receiver is blocked,
//! every send takes the channel's waker Mutex and makes a futex call. Here the sleeper announces
//! itself in `asleep`, issues a SeqCst fence, looks for work once more, and parks; a producer
//! pushes its work, issues a SeqCst fence, and unparks the sleeper only if it sees `asleep` (the
//! Dekker pattern: the two fences are ordered one way or the other, so either the producer sees
//! `asleep` or the sleeper sees the work). While the sleeper is awake, a ring is a fence and a load
//! of a flag only the sleeper writes; the `swap` makes exactly one producer per sleep pay for the
//! unpark. An unpark that lands before the `park` leaves a token, so that `park` returns at once.

use crossbeam_channel::{Sender, TrySendError};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Doorbell {
    asleep: AtomicBool,
    /// The sleeping thread: the first thread to call [`Doorbell::sleep`].
    sleeper: OnceLock<Thread>,
}

impl Doorbell {
    /// For producers, after their work is pushed where the sleeper looks.
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::Relaxed) && self.asleep.swap(false, Ordering::Relaxed) {
            if let Some(t) = self.sleeper.get() {
                t.unpark();
            }
        }
    }

    /// For producers that must not wait (core threads): queues `item` for the sleeper and rings,
    /// or, when the queue is full, drops it and counts it in `dropped`. Returns the item when
    /// nobody will take it any more (the sleeper is gone).
    pub fn offer<T>(&self, tx: &Sender<T>, dropped: &AtomicU64, item: T) -> Option<T> {
        match tx.try_send(item) {
            Ok(()) => {
                self.ring();
                None
            }
            Err(TrySendError::Full(_)) => {
                dropped.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(TrySendError::Disconnected(item)) => Some(item),
        }
    }

    /// For the sleeper, with nothing to do: parks until a ring (or `timeout`), unless `has_work`,
    /// asked after the announcement, finds some. May return early (spurious unparks): callers
    /// look for work in a loop.
    pub fn sleep(&self, has_work: impl Fn() -> bool, timeout: Option<Duration>) {
        self.sleeper.get_or_init(std::thread::current);
        self.asleep.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if !has_work() {
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
    use std::sync::Arc;

    /// Many producers, one sleeper that only ever parks without a timeout: every item is seen
    /// (a lost wake-up would leave the sleeper parked).
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
        // A lost wake-up leaves the sleeper parked for good: fail instead of hanging.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(sleeper.join().is_ok()));
        assert_eq!(finished.recv_timeout(std::time::Duration::from_secs(20)), Ok(true), "a wake-up was lost");
    }
}
