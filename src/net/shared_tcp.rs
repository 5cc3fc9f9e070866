//! `SharedTcp`: the TCP socket under a TLS client's stream, shared with that client's disconnect
//! watch (core threads). monoio-rustls owns the socket it reads and writes and does not lend it;
//! through this handle the watch polls the same socket for readiness, so it needs no `dup` of the
//! descriptor (issue 14: two descriptors a stream).

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use monoio::net::TcpStream;
use monoio::BufResult;
use std::cell::UnsafeCell;
use std::rc::Rc;

/// One TCP socket, held by the TLS stream (for I/O) and by its `Stream` (for the watch).
pub struct SharedTcp(Rc<UnsafeCell<TcpStream>>);

impl SharedTcp {
    pub fn new(tcp: TcpStream) -> SharedTcp {
        SharedTcp(Rc::new(UnsafeCell::new(tcp)))
    }

    /// A second handle on the same socket.
    pub fn handle(&self) -> SharedTcp {
        SharedTcp(self.0.clone())
    }

    /// The socket, for readiness polls only (`TcpStream::readable` takes `&self`).
    pub fn socket(&self) -> *const TcpStream {
        self.0.get()
    }

    fn io(&mut self) -> &mut TcpStream {
        // SAFETY: single-threaded (Rc); I/O goes only through the handle the TLS stream owns, one
        // operation at a time (`&mut self`); the other handle is used only to start readiness
        // polls, which take their own counted handle on the descriptor (see `watch.rs`).
        unsafe { &mut *self.0.get() }
    }
}

impl AsyncReadRent for SharedTcp {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.io().read(buf).await
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        self.io().readv(buf).await
    }
}

impl AsyncWriteRent for SharedTcp {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        self.io().write(buf).await
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        self.io().writev(buf).await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.io().flush().await
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        self.io().shutdown().await
    }
}
