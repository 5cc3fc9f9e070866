//! Noticing a client that went away while the gateway waits on the backend: a readiness poll on the
//! client socket itself (an io_uring PollAdd, or the epoll driver's readiness for it; cancelling a
//! poll loses no data, unlike a pending read), then a non-blocking MSG_PEEK to tell end-of-stream
//! from pipelined bytes. The poll is armed only once a wait lasts longer than ARM_DELAY, so quick
//! requests pay nothing for it. The watch costs no descriptor of its own (2 a stream: client and
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
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

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
pub const TLS_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// The client went away while `fut` was pending.
#[derive(Debug)]
pub struct Disconnected;

type Poller<'a> = Pin<Box<dyn Future<Output = std::io::Result<()>> + 'a>>;

/// How long a request waits on the backend before the client socket is watched. Requests answered
/// sooner never arm the poll (no extra kernel work); a client gone earlier is seen when armed.
pub const ARM_DELAY: std::time::Duration = std::time::Duration::from_millis(2);

enum State<'a> {
    /// Not watching yet: arm when the timer fires.
    Waiting(Pin<Box<monoio::time::Sleep>>),
    Polling(Poller<'a>),
    /// A TLS client has bytes waiting (maybe a close_notify): check for its FIN when this fires.
    Rechecking(Pin<Box<monoio::time::Sleep>>),
    /// No watch, or pipelined bytes arrived: nothing more to learn.
    Off,
}

/// A watch for one request: `until` runs futures while watching the client.
pub struct Armed<'a> {
    watch: Option<&'a ClientWatch>,
    /// The client's socket (`Stream::watch_socket`), or null: nothing to poll.
    sock: *const TcpStream,
    state: State<'a>,
}

impl<'a> Armed<'a> {
    /// Starts the arming timer for `watch` of `client`; with None, `until` just runs its future.
    /// `client` must be the stream `watch` was made for; it stays borrowed (mutably, for the
    /// relay's writes) by the exchange that owns this `Armed`, so it does not move meanwhile.
    pub fn new(watch: Option<&'a ClientWatch>, client: &Stream) -> Self {
        let sock = client.watch_socket().unwrap_or(std::ptr::null());
        let state = match watch {
            Some(_) if !sock.is_null() => State::Waiting(Box::pin(monoio::time::sleep(ARM_DELAY))),
            _ => State::Off,
        };
        Armed { watch, sock, state }
    }

    /// Polls the watch; Ready(()) when the client is gone.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut self.state {
                State::Off => return Poll::Pending,
                State::Waiting(sleep) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // SAFETY: `sock` is non-null in this state and points at a socket that outlives
                    // `self` (see `new`). The readiness future reads it once, on its first poll
                    // (just below, while the exchange waits in `until` and writes nothing), to
                    // take its own counted handle on the descriptor; the relay's later writes
                    // through its `&mut Stream` do not touch what that handle shares.
                    let sock: &'a TcpStream = unsafe { &*self.sock };
                    self.state = State::Polling(Box::pin(sock.readable(false)));
                }
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
                    sleep.as_mut().reset(monoio::time::Instant::now() + TLS_RECHECK);
                }
            }
        }
    }

    /// Runs `fut` to completion unless the client disconnects first (then `fut` is dropped).
    /// A future struct, not an `async fn`: an async fn would keep `fut` twice (its argument and
    /// the pinned copy), and this future sits in the connection task of every open stream.
    pub fn until<F: Future>(&mut self, fut: F) -> Until<'_, 'a, F> {
        Until { armed: self, fut }
    }
}

/// The future of [`Armed::until`].
pub struct Until<'s, 'a, F> {
    armed: &'s mut Armed<'a>,
    fut: F,
}

impl<F: Future> Future for Until<'_, '_, F> {
    type Output = Result<F::Output, Disconnected>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `fut` is structurally pinned: never moved out of `self`, dropped in place with it.
        let this = unsafe { self.get_unchecked_mut() };
        // SAFETY: as above.
        if let Poll::Ready(v) = unsafe { Pin::new_unchecked(&mut this.fut) }.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match this.armed.poll_gone(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Disconnected)),
            Poll::Pending => Poll::Pending,
        }
    }
}
