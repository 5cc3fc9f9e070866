//! Shared by `stream-backend` and `stream-load` (included with `#[path]`): a thin level-triggered
//! epoll wrapper, the monotonic clock both sides stamp events with (CLOCK_MONOTONIC is one clock
//! for every process on the machine), non-blocking sockets and the open-files limit. One thread.

use std::io;
use std::os::fd::RawFd;

/// Nanoseconds on CLOCK_MONOTONIC.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid out pointer; setrlimit with a value the kernel allows (cur = max).
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
    }
    r.rlim_cur
}

pub struct Epoll {
    fd: RawFd,
    events: Vec<libc::epoll_event>,
}

fn check(r: i32) -> io::Result<i32> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll { fd, events: vec![libc::epoll_event { events: 0, u64: 0 }; 1024] })
    }

    fn ctl(&self, op: i32, fd: RawFd, token: u64, write: bool) -> io::Result<()> {
        let mut flags = libc::EPOLLIN | libc::EPOLLRDHUP;
        if write {
            flags |= libc::EPOLLOUT;
        }
        let mut ev = libc::epoll_event { events: flags as u32, u64: token };
        // SAFETY: `ev` lives for the call.
        check(unsafe { libc::epoll_ctl(self.fd, op, fd, &mut ev) }).map(|_| ())
    }

    /// Watches `fd` for reading (and writing when `write`), reporting `token`.
    pub fn add(&self, fd: RawFd, token: u64, write: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token, write)
    }

    #[allow(dead_code)] // used by stream-backend only
    pub fn modify(&self, fd: RawFd, token: u64, write: bool) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token, write)
    }

    /// Waits up to `timeout_ms` (-1: forever); returns (token, readable, writable, hangup) tuples.
    pub fn wait(&mut self, timeout_ms: i32, out: &mut Vec<(u64, bool, bool, bool)>) -> io::Result<()> {
        out.clear();
        // SAFETY: `events` has room for `len` entries.
        let n = unsafe {
            libc::epoll_wait(self.fd, self.events.as_mut_ptr(), self.events.len() as i32, timeout_ms)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e) };
        }
        for ev in &self.events[..n as usize] {
            let f = ev.events as i32;
            let hup = f & (libc::EPOLLHUP | libc::EPOLLERR) != 0;
            out.push((
                ev.u64,
                f & (libc::EPOLLIN | libc::EPOLLRDHUP) != 0 || hup,
                f & libc::EPOLLOUT != 0,
                hup,
            ));
        }
        Ok(())
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.fd) };
    }
}

/// Finds `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of `name` (case-insensitive) in an HTTP head, trimmed.
pub fn header<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon].eq_ignore_ascii_case(name).then(|| line[colon + 1..].trim_ascii())
    })
}

/// Parses decimal digits at the start of `b`.
pub fn parse_u64(b: &[u8]) -> Option<u64> {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 {
        return None;
    }
    std::str::from_utf8(&b[..n]).ok()?.parse().ok()
}
