//! Warming a connection task's memory before it runs: `Warm(fut)` prefetches every cache line of
//! the future it wraps, then polls it (issue 14, CPU per event).
//!
//! With thousands of open streams, each woken about once a second, a connection task's ~3 KiB
//! state has left the caches by its next event. Polling it walks the nested state machines level by
//! level (connection, request, proxy, exchange, relay, read), each level's state a dependent load
//! from memory: a run of serial cache misses per event. Prefetching the whole future first lets the
//! misses overlap (the core keeps about ten line fills in flight) instead of paying them one after
//! another. For a task that is already in cache the cost is one prefetch instruction per 64 bytes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// `F`, with its memory prefetched before each poll.
pub struct Warm<F>(pub F);

impl<F: Future> Future for Warm<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the inner future is structurally pinned: never moved out of `self`, dropped in
        // place with it.
        let inner = unsafe { self.map_unchecked_mut(|w| &mut w.0) };
        prefetch(&*inner as *const F as *const u8, std::mem::size_of::<F>());
        inner.poll(cx)
    }
}

/// Prefetches the cache lines of `*v` (a hint). For the objects a task reaches through a pointer
/// (a box), which `Warm` cannot see: issued a few microseconds before their first use, their miss
/// overlaps the work in between instead of stalling it.
#[inline(always)]
pub fn prefetch_val<T: ?Sized>(v: &T) {
    prefetch(v as *const T as *const u8, std::mem::size_of_val(v));
}

/// Prefetches the cache lines of `len` bytes at `p` into L1 (a hint: no fault, no effect on
/// results).
#[inline(always)]
fn prefetch(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut off = 0;
        while off < len {
            // SAFETY: a prefetch never faults, whatever the address; `wrapping_add` keeps the
            // pointer arithmetic defined.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(off).cast::<i8>()) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

#[cfg(test)]
mod tests {
    use super::Warm;

    /// The wrapper is transparent: a future that is pending, then ready, gives its output through
    /// `Warm` (and a large one is prefetched line by line without a fault).
    #[test]
    fn warm_polls_its_future_through() {
        let mut rt =
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build().expect("runtime");
        let out = rt.block_on(async {
            let big = [7u8; 5000];
            let inner = async move {
                monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                big.iter().map(|&b| b as u32).sum::<u32>()
            };
            monoio::spawn(Warm(inner)).await
        });
        assert_eq!(out, 35_000);
    }
}
