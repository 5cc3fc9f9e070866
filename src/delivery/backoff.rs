//! Retry backoff with jitter for failed deliveries (delivery thread).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// Exponential backoff (100 ms doubling, capped at 5 s) with "equal jitter": half fixed, half random.
pub struct Backoff {
    state: u64,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

impl Backoff {
    pub fn new() -> Backoff {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        // xorshift must not start at 0.
        Backoff { state: (t ^ 0x9E37_79B9_7F4A_7C15) | 1 }
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    /// Delay before retry number `retry` (0 = the first retry).
    pub fn delay(&mut self, retry: u32) -> Duration {
        let full = BACKOFF_BASE.saturating_mul(1u32 << retry.min(16)).min(BACKOFF_CAP);
        let half = full.as_micros() as u64 / 2;
        Duration::from_micros(half + self.next_u64() % (half + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::new();
        for _ in 0..100 {
            let d0 = b.delay(0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100), "{d0:?}");
            let d3 = b.delay(3);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800), "{d3:?}");
            let d = b.delay(40);
            assert!(d >= Duration::from_millis(2500) && d <= BACKOFF_CAP, "{d:?}");
        }
    }
}
