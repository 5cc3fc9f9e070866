//! Worker placement and runtimes: how many workers and on which cores (pure planning), the I/O
//! driver (io_uring, or epoll where the kernel or a seccomp profile forbids it), the io_uring ring
//! flags, and `run_on`/`pin`, which the worker threads that `gateway.rs` spawns call on themselves
//! (pin to their core, then run a monoio runtime around `server::serve`).

use crate::config::{DriverChoice, RuntimeConfig};
use std::io;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    IoUring,
    Epoll,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// The driver to use: `LLMPROXY_DRIVER` (tests force each driver with it) overrides the config.
pub fn choose_driver(cfg: DriverChoice) -> io::Result<Driver> {
    let forced = std::env::var("LLMPROXY_DRIVER").ok();
    let choice = match forced.as_deref() {
        Some("io_uring") => DriverChoice::IoUring,
        Some("epoll") => DriverChoice::Epoll,
        Some("auto") | Some("") | None => cfg,
        Some(other) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("LLMPROXY_DRIVER={other}: use io_uring, epoll or auto"),
            ))
        }
    };
    let uring = monoio::utils::detect_uring();
    match choice {
        DriverChoice::Auto => Ok(if uring { Driver::IoUring } else { Driver::Epoll }),
        DriverChoice::Epoll => Ok(Driver::Epoll),
        DriverChoice::IoUring if uring => Ok(Driver::IoUring),
        DriverChoice::IoUring => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "runtime.driver = \"io_uring\" but io_uring is not available here (old kernel or a seccomp profile blocks it); use \"auto\" or \"epoll\"",
        )),
    }
}

/// Core id for each worker (None = not pinned). `available` is the number of usable cores.
pub fn plan(cfg: &RuntimeConfig, available: usize) -> Vec<Option<usize>> {
    let workers = if cfg.workers > 0 {
        cfg.workers
    } else if !cfg.cores.is_empty() && cfg.pin_cores {
        cfg.cores.len()
    } else {
        available.max(1)
    };
    (0..workers)
        .map(|i| {
            if !cfg.pin_cores {
                None
            } else if cfg.cores.is_empty() {
                Some(i % available.max(1))
            } else {
                Some(cfg.cores[i % cfg.cores.len()])
            }
        })
        .collect()
}

/// io_uring setup flags. Default: cooperative task running (no interrupt of the core when a
/// completion arrives), single issuer and deferred task running (completions are reaped only when
/// the core asks, in its one `io_uring_enter` per loop). `LLMPROXY_URING_FLAGS` (comma list of
/// `coop`, `single`, `defer`, or `none`) overrides, for benchmarking.
pub fn uring_flags() -> String {
    std::env::var("LLMPROXY_URING_FLAGS").unwrap_or_else(|_| "coop,single,defer".to_string())
}

fn uring_builder(flags: &str) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    for f in flags.split(',').map(str::trim) {
        match f {
            "coop" => {
                b.setup_coop_taskrun();
            }
            "single" => {
                b.setup_single_issuer();
            }
            "defer" => {
                b.setup_single_issuer().setup_defer_taskrun();
            }
            _ => {}
        }
    }
    b
}

/// Runs `make()`'s future on a fresh monoio runtime of the given driver on this thread.
pub fn run_on<F, Fut>(driver: Driver, make: F) -> io::Result<()>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    match driver {
        Driver::IoUring => {
            let flags = uring_flags();
            let build = |flags: &str| {
                monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                    .with_entries(1024)
                    .uring_builder(uring_builder(flags))
                    .enable_timer()
                    .build()
            };
            let mut rt = match build(&flags) {
                Ok(rt) => rt,
                Err(e) => {
                    // Older kernels reject newer setup flags: run without them.
                    log::warn!("io_uring setup flags [{flags}] rejected ({e}); using none");
                    build("none")?
                }
            };
            rt.block_on(make());
        }
        Driver::Epoll => {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new().enable_timer().build()?;
            rt.block_on(make());
        }
    }
    Ok(())
}

/// Pins the current thread to `core`; false when the OS refused.
pub fn pin(core: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(workers: usize, pin: bool, cores: Vec<usize>) -> RuntimeConfig {
        RuntimeConfig { workers, pin_cores: pin, cores, driver: DriverChoice::Auto }
    }

    #[test]
    fn plans() {
        assert_eq!(plan(&rt(0, true, vec![]), 2), [Some(0), Some(1)]);
        assert_eq!(plan(&rt(0, true, vec![3, 5]), 8), [Some(3), Some(5)]);
        assert_eq!(plan(&rt(3, true, vec![]), 2), [Some(0), Some(1), Some(0)]);
        assert_eq!(plan(&rt(1, false, vec![4]), 8), [None]);
        assert_eq!(plan(&rt(0, false, vec![]), 2), [None, None]);
    }
}
