//! A deadline shared by a run of reads and writes on a core thread: `within(timer, after, fut)` runs
//! `fut` unless the timer, reset to now + `after`, fires first. A client connection keeps one boxed
//! timer (`connection::serve_connection`) and resets it before each read and write of each of its
//! requests, the relay's included; `watch::Armed::within` does the same while
//! watching the client, and sets the same timer for the watch's arm instant too.

use monoio::time::Sleep;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// `fut`, unless the exchange's timer (reset here to now + `after`) fires first: then `Err(())`
/// and `fut` is dropped (an io_uring op is cancelled with it; the caller closes that connection).
/// One timer per exchange, reset before each read and write, instead of a `monoio::time::timeout`
/// each time: a reset to a later deadline is a store, not a timer-wheel insert and removal per
/// event, and the exchange's future (inside the connection task every open stream keeps) holds one
/// timer entry (monoio's are 128-byte aligned, about 0.5 KiB) instead of one in each read and write
/// future.
pub struct Within<'a, F> {
    timer: Pin<&'a mut Sleep>,
    fut: F,
}

pub fn within<F: Future>(mut timer: Pin<&mut Sleep>, after: Duration, fut: F) -> Within<'_, F> {
    timer.as_mut().reset(monoio::time::Instant::now() + after);
    Within { timer, fut }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `fut` is structurally pinned: it is never moved out of `self` and is dropped in
        // place with it (no Drop impl here moves it).
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: as above.
        if let Poll::Ready(v) = unsafe { Pin::new_unchecked(&mut this.fut) }.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        this.timer.as_mut().poll(cx).map(|()| Err(()))
    }
}
