//! `Stream`: one connection as the core threads see it, plain TCP or TLS (client side to an https
//! backend, server side on a TLS listener). An enum, so the plain path is a direct call on the
//! `TcpStream` with no box and no copy; the TLS variants are boxed (rustls state is large).

use super::shared_tcp::SharedTcp;
use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::BufResult;
use monoio_rustls::{ClientTlsStream, ServerTlsStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// How long a TLS close (close_notify, then FIN) may take before the socket is just dropped.
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_secs(1);

/// A TLS stream with its socket's descriptor kept at hand (monoio-rustls does not lend the socket).
pub struct Tls<S> {
    fd: RawFd,
    io: S,
    /// A TLS client's socket, shared with `io`, for the disconnect watch's readiness polls.
    watched: Option<SharedTcp>,
    /// Set while an operation is in flight; still set after one was cancelled (its future dropped
    /// by a timeout or the client watch). monoio-rustls' buffers are then gone (it would panic on
    /// the next use), so every later operation fails and no close_notify is attempted.
    broken: bool,
}

fn broken() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "TLS stream unusable after a cancelled operation")
}

/// Runs one operation on a TLS stream, marking it broken if the operation never completes.
macro_rules! tls_op {
    ($t:expr, $buf:ident, $op:ident) => {{
        let t = &mut **$t;
        if t.broken {
            return (Err(broken()), $buf);
        }
        t.broken = true;
        let r = t.io.$op($buf).await;
        t.broken = false;
        r
    }};
    ($t:expr, $op:ident) => {{
        let t = &mut **$t;
        if t.broken {
            return Err(broken());
        }
        t.broken = true;
        let r = t.io.$op().await;
        t.broken = false;
        r
    }};
}

pub enum Stream {
    Plain(TcpStream),
    /// To an https backend.
    Client(Box<Tls<ClientTlsStream<TcpStream>>>),
    /// From a client of the TLS listener.
    Server(Box<Tls<ServerTlsStream<SharedTcp>>>),
}

impl Stream {
    pub fn client_tls(fd: RawFd, io: ClientTlsStream<TcpStream>) -> Stream {
        Stream::Client(Box::new(Tls { fd, io, watched: None, broken: false }))
    }

    /// `sock`: a handle on the socket under `io`.
    pub fn server_tls(fd: RawFd, io: ServerTlsStream<SharedTcp>, sock: SharedTcp) -> Stream {
        Stream::Server(Box::new(Tls { fd, io, watched: Some(sock), broken: false }))
    }

    /// The socket a disconnect watch polls for readiness: a plain stream's own, or a TLS client's
    /// shared one (None for a TLS backend connection).
    pub fn watch_socket(&self) -> Option<*const TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Server(t) => t.watched.as_ref().map(SharedTcp::socket),
            Stream::Client(_) => None,
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    /// Writes what the socket takes right now, without waiting: one non-blocking `send` on a
    /// plain socket (a TLS stream takes nothing this way: `Some(0)`). None when the socket failed
    /// (the peer is gone). Only between operations: never while a write on this stream is pending.
    pub fn try_write(&mut self, data: &[u8]) -> Option<usize> {
        let Stream::Plain(s) = self else { return Some(0) };
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        // SAFETY: a valid descriptor, and `data` is valid for reads of its length.
        let n = unsafe { libc::send(s.as_raw_fd(), data.as_ptr().cast(), data.len(), flags) };
        if n >= 0 {
            return Some(n as usize);
        }
        match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Some(0),
            _ => None,
        }
    }

    /// Writes `data[from..]` whole, after `try_write` took what the socket could (the relay's
    /// slow path: a full socket, or a TLS stream). Its future stays a few words whatever the variant
    /// (it sits in the connection task of every open stream, issue 14): a plain socket waits for
    /// writability and sends without blocking; a TLS stream's write is boxed, like its other
    /// operations. Returns `data` either way.
    pub async fn write_rest(&mut self, data: Vec<u8>, mut from: usize) -> (std::io::Result<()>, Vec<u8>) {
        loop {
            match self {
                Stream::Plain(s) => {
                    // Not relaxed: monoio's readiness is not cleared by our own sends, so this
                    // asks the kernel (a poll) before waiting.
                    if let Err(e) = s.writable(false).await {
                        return (Err(e), data);
                    }
                }
                Stream::Client(t) => return Box::pin(tls_write_rest(t, data, from)).await,
                Stream::Server(t) => return Box::pin(tls_write_rest(t, data, from)).await,
            }
            match self.try_write(&data[from..]) {
                Some(k) => from += k,
                None => return (Err(std::io::ErrorKind::BrokenPipe.into()), data),
            }
            if from == data.len() {
                return (Ok(()), data);
            }
        }
    }

    /// Ends the connection: a TLS stream sends close_notify first (bounded by a short wait, after
    /// which the socket is simply closed); a plain one is dropped.
    pub async fn close(self) {
        match self {
            Stream::Plain(_) => {}
            Stream::Client(mut t) if !t.broken => {
                let _ = monoio::time::timeout(CLOSE_NOTIFY_WAIT, t.io.shutdown()).await;
            }
            Stream::Server(mut t) if !t.broken => {
                let _ = monoio::time::timeout(CLOSE_NOTIFY_WAIT, t.io.shutdown()).await;
            }
            _ => {}
        }
    }
}

/// `Stream::write_rest` on a TLS stream: the same broken-stream rule as its other operations.
async fn tls_write_rest<S: AsyncWriteRent>(
    t: &mut Tls<S>,
    data: Vec<u8>,
    from: usize,
) -> (std::io::Result<()>, Vec<u8>) {
    if t.broken {
        return (Err(broken()), data);
    }
    t.broken = true;
    let (r, s) = monoio::io::AsyncWriteRentExt::write_all(&mut t.io, data.slice(from..)).await;
    t.broken = false;
    (r.map(|_| ()), s.into_inner())
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Plain(s) => s.as_raw_fd(),
            Stream::Client(t) => t.fd,
            Stream::Server(t) => t.fd,
        }
    }
}

// The TLS arms of read, readv, write and writev are boxed: a monoio-rustls operation's future is
// about 600 bytes, and inline it would make every plain stream's read or write future that large
// too, inside the connection task each open stream keeps (issue 14: 720 -> 120 bytes a read). A
// TLS operation pays one small allocation beside its encryption.
impl AsyncReadRent for Stream {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Client(t) => Box::pin(async move { tls_op!(t, buf, read) }).await,
            Stream::Server(t) => Box::pin(async move { tls_op!(t, buf, read) }).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.readv(buf).await,
            Stream::Client(t) => Box::pin(async move { tls_op!(t, buf, readv) }).await,
            Stream::Server(t) => Box::pin(async move { tls_op!(t, buf, readv) }).await,
        }
    }
}

impl AsyncWriteRent for Stream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.write(buf).await,
            Stream::Client(t) => Box::pin(async move { tls_op!(t, buf, write) }).await,
            Stream::Server(t) => Box::pin(async move { tls_op!(t, buf, write) }).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.writev(buf).await,
            Stream::Client(t) => Box::pin(async move { tls_op!(t, buf, writev) }).await,
            Stream::Server(t) => Box::pin(async move { tls_op!(t, buf, writev) }).await,
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush().await,
            Stream::Client(t) => tls_op!(t, flush),
            Stream::Server(t) => tls_op!(t, flush),
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Client(t) => tls_op!(t, shutdown),
            Stream::Server(t) => tls_op!(t, shutdown),
        }
    }
}
