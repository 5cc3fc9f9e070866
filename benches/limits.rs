//! Micro-benchmark of what limits add to one request on a core: `CoreLimits::admit` (all four
//! limits, token reservation, the x-ratelimit-* block) and the ticket's settlement, for a key
//! subject and a cached user-header subject, against limits off. Compare the ns with the proxy's
//! CPU per request (scripts/bench-limits.sh) for the share limits cost.
//!
//! `cargo bench --bench limits`. A plain `harness = false` main (as benches/scanner.rs), best of 7.

use llmproxy::config::Config;
use llmproxy::limits::{Admission, CoreLimits, Demand, Limiter, Who};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const N: u32 = 2_000_000;

/// The core's limits and the bench key's identity.
fn limits(text: &str) -> (CoreLimits, Who<'static>) {
    let cfg = Config::parse(text, "bench").unwrap_or_else(|e| panic!("config: {e:?}"));
    let key = Who::Key { index: 0, id: cfg.auth.keys[0].id() };
    (CoreLimits::new(Arc::new(Limiter::new(&cfg, 1)), 0), key)
}

/// Best-of-7 ns per admit + settle of `who`.
fn time(l: &CoreLimits, who: Who<'_>) -> f64 {
    let demand = Demand { body_bytes: 140, max_output_tokens: 64, n: 1 };
    let mut best = Duration::MAX;
    for _ in 0..7 {
        let t = Instant::now();
        for _ in 0..N {
            match l.admit(black_box(who), demand) {
                Admission::Admitted(t) => {
                    black_box(t.headers());
                    t.finish(Some(47));
                }
                Admission::Unlimited => {}
                Admission::Refused(_) => panic!("refused"),
            }
        }
        best = best.min(t.elapsed());
    }
    best.as_nanos() as f64 / N as f64
}

fn main() {
    let base = "listen = \"127.0.0.1:0\"\n[[backends]]\nurl = \"http://127.0.0.1:9\"\n";
    let keys = "[auth]\n[[auth.keys]]\nkey = \"sk-bench\"\nuser_id = \"bench\"\n";
    let on = "[rate_limit]\nenabled = true\nrequests_per_minute = 1000000000000\ntokens_per_minute = 1000000000000\n\
              tokens_per_day = 1000000000000\nmax_concurrent = 100000\n";
    let (off, key) = limits(&format!("{base}{keys}"));
    let (on, _) = limits(&format!("{base}{on}{keys}"));
    println!("limits off (key):               {:6.1} ns/request", time(&off, key));
    println!("limits on, key, all four limits: {:6.1} ns/request", time(&on, key));
    println!("limits on, cached user subject:  {:6.1} ns/request", time(&on, Who::User("alice")));
}
