//! Noticing a client that went away while the gateway waits on the backend: a readiness poll on the
//! client socket itself (an io_uring PollAdd, or the epoll driver's readiness for it; cancelling a
//! poll loses no data, unlike a pending read), then a non-blocking MSG_PEEK to tell end-of-stream
//! from pipelined bytes. The poll is armed only once a wait lasts longer than ARM_DELAY, so quick
//! requests pay nothing for it; the arm instant has no timer of its own, the exchange's one timer
//! wakes the task for it (`Armed::within`). The watch costs no descriptor of its own (2 a stream: client and
//! backend); a TLS client's socket is reached through `net::shared_tcp`. Runs on core threads.
//!
//! A TLS client's bytes cannot be read without decrypting them: a close_notify alert (in TLS 1.3 an
//! encrypted record like any other) looks like pipelined data to a peek. So for TLS, bytes waiting
//! are not taken as "the client is still there": the socket is re-checked every TLS_RECHECK for
//! the peer's FIN (POLLRDHUP, which a poll reports even with unread bytes queued), which is what
//! a closing client sends after its close_notify. A close_notify without a FIN (a half-close) is
//! not taken as a disconnect.

use crate::net::Stream;
use monoio::net::TcpStream;
use monoio::time::{Instant, Sleep};
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// What the watch of one client connection looks at.
pub struct ClientWatch {
    fd: RawFd,
    /// The client speaks TLS: peeked bytes may be a close_notify.
    tls: bool,
}

impl ClientWatch {
    /// Nothing to set up: the watch polls the client's own socket (see `Armed::new`).
    pub fn new(client: &Stream) -> std::io::Result<ClientWatch> {
        Ok(ClientWatch { fd: client.as_raw_fd(), tls: client.is_tls() })
    }
}

/// What a peek at the client socket found.
enum Peek {
    Closed,
    Data,
    Nothing,
}

fn peek(fd: RawFd) -> Peek {
    let mut b = [0u8; 1];
    // SAFETY: valid descriptor and a 1-byte buffer.
    let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    if n > 0 {
        Peek::Data
    } else if n == 0 {
        Peek::Closed
    } else {
        match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Peek::Nothing,
            _ => Peek::Closed,
        }
    }
}

/// Whether the peer shut down its side (FIN), or the socket failed, whatever bytes are queued.
fn peer_shut(fd: RawFd) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd; timeout 0, so this never blocks.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// How often a TLS client with bytes waiting is checked for a FIN.
pub const TLS_RECHECK: Duration = Duration::from_millis(100);

/// Why [`Armed::within`] stopped its future before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The exchange's deadline passed (an io_uring op was cancelled: close that connection).
    TimedOut,
    /// The client went away.
    Gone,
}

type Poller<'a> = Pin<Box<dyn Future<Output = std::io::Result<()>> + 'a>>;

/// How long a request waits on the backend before the client socket is watched. Requests answered
/// sooner never arm the poll (no extra kernel work); a client gone earlier is seen when armed.
pub const ARM_DELAY: Duration = Duration::from_millis(2);

enum State<'a> {
    /// Not watching yet: arm at this instant. No timer of its own: the exchange's timer (see
    /// `deadline`) is set to wake the task then, so a request costs no extra timer or allocation.
    Waiting(Instant),
    Polling(Poller<'a>),
    /// A TLS client has bytes waiting (maybe a close_notify): check for its FIN when this fires.
    Rechecking(Pin<Box<monoio::time::Sleep>>),
    /// No watch, or pipelined bytes arrived: nothing more to learn.
    Off,
}

/// A watch for one request: `within` runs futures under the exchange's deadline while watching
/// the client.
pub struct Armed<'a> {
    watch: Option<&'a ClientWatch>,
    /// The client's socket (`Stream::watch_socket`), or null: nothing to poll.
    sock: *const TcpStream,
    state: State<'a>,
    /// The client went away during a `within` whose `read_on` said to go on.
    left: bool,
}

impl<'a> Armed<'a> {
    /// A watch for `watch` of `client` that arms ARM_DELAY from now; with None, `within` just
    /// runs its future under the deadline.
    /// `client` must be the stream `watch` was made for; it stays borrowed (mutably, for the
    /// relay's writes) by the exchange that owns this `Armed`, so it does not move meanwhile.
    pub fn new(watch: Option<&'a ClientWatch>, client: &Stream) -> Self {
        let sock = client.watch_socket().unwrap_or(std::ptr::null());
        let state = match watch {
            Some(_) if !sock.is_null() => State::Waiting(Instant::now() + ARM_DELAY),
            _ => State::Off,
        };
        Armed { watch, sock, state, left: false }
    }

    /// Prefetches the boxed readiness future, which the next `within` polls first (see
    /// `warm::prefetch_val`).
    pub fn prefetch(&self) {
        if let State::Polling(p) = &self.state {
            crate::warm::prefetch_val(&**p);
        }
    }

    /// Whether the client went away during a `within` that read on (see there).
    pub fn client_left(&self) -> bool {
        self.left
    }

    /// Starts watching the client socket (from `Waiting`).
    fn arm(&mut self) {
        if let State::Waiting(_) = self.state {
            // SAFETY: `sock` is non-null in this state and points at a socket that outlives
            // `self` (see `new`). The readiness future reads it once, on its first poll (in
            // `poll_gone`, while the exchange waits in `within` and writes nothing), to take its
            // own counted handle on the descriptor; the relay's later writes through its
            // `&mut Stream` do not touch what that handle shares.
            let sock: &'a TcpStream = unsafe { &*self.sock };
            self.state = State::Polling(Box::pin(sock.readable(false)));
        }
    }

    /// Polls the watch; Ready(()) when the client is gone. `Waiting` is woken by the exchange's
    /// timer (`Within::poll`), not here.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut self.state {
                State::Off | State::Waiting(_) => return Poll::Pending,
                State::Polling(p) => {
                    if p.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let (fd, tls) = self.watch.map_or((-1, false), |w| (w.fd, w.tls));
                    match peek(fd) {
                        Peek::Closed => return Poll::Ready(()),
                        Peek::Data if tls => {
                            if peer_shut(fd) {
                                return Poll::Ready(());
                            }
                            self.state = State::Rechecking(Box::pin(monoio::time::sleep(TLS_RECHECK)));
                        }
                        // Pipelined bytes of the next request, or a spurious wake: stop watching.
                        Peek::Data | Peek::Nothing => self.state = State::Off,
                    }
                }
                State::Rechecking(sleep) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    if peer_shut(self.watch.map_or(-1, |w| w.fd)) {
                        return Poll::Ready(());
                    }
                    // The same timer, re-armed: no allocation per recheck.
                    sleep.as_mut().reset(Instant::now() + TLS_RECHECK);
                }
            }
        }
    }

    /// Runs `fut` unless the exchange's `timer`, reset here to now + `after` (as
    /// `deadline::within` does), fires first (`Stop::TimedOut`, `fut` dropped), or the client
    /// goes away first (`Stop::Gone`, `fut` dropped). When the client goes and `read_on()` says so,
    /// `fut` runs on instead, unwatched, and `client_left()` turns true.
    /// While the watch waits to arm, the timer is set to the arm instant when that comes first,
    /// then to the deadline: one timer per exchange serves both (no timer or allocation of the
    /// watch's own per request).
    /// A future struct, not an `async fn`: an async fn would keep `fut` twice (its argument and
    /// the pinned copy), and this future sits in the connection task of every open stream.
    pub fn within<'s, 't, F: Future, R: FnMut() -> bool>(
        &'s mut self,
        mut timer: Pin<&'t mut Sleep>,
        after: Duration,
        read_on: R,
        fut: F,
    ) -> Within<'s, 't, 'a, F, R> {
        let now = Instant::now();
        let deadline = now + after;
        let mut arming = false;
        let wake = match self.state {
            State::Waiting(at) if at <= now => {
                self.arm();
                deadline
            }
            State::Waiting(at) if at < deadline => {
                arming = true;
                at
            }
            _ => deadline,
        };
        timer.as_mut().reset(wake);
        Within { armed: self, timer, deadline, arming, read_on, fut }
    }
}

/// The future of [`Armed::within`].
pub struct Within<'s, 't, 'a, F, R> {
    armed: &'s mut Armed<'a>,
    timer: Pin<&'t mut Sleep>,
    deadline: Instant,
    /// The timer is set to the watch's arm instant, not yet to the deadline.
    arming: bool,
    read_on: R,
    fut: F,
}

impl<F: Future, R: FnMut() -> bool> Future for Within<'_, '_, '_, F, R> {
    type Output = Result<F::Output, Stop>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `fut` is structurally pinned: never moved out of `self`, dropped in place with it.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: as above.
        if let Poll::Ready(v) = unsafe { Pin::new_unchecked(&mut this.fut) }.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        loop {
            if !this.armed.left && this.armed.poll_gone(cx).is_ready() {
                if !(this.read_on)() {
                    return Poll::Ready(Err(Stop::Gone));
                }
                this.armed.left = true;
                this.armed.state = State::Off;
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if !this.arming {
                return Poll::Ready(Err(Stop::TimedOut));
            }
            // The arm instant came before the deadline: watch the client, wait for the deadline.
            this.arming = false;
            this.armed.arm();
            this.timer.as_mut().reset(this.deadline);
        }
    }
}
