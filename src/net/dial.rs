//! The one backend dialer: TCP connect plus, for an https backend, the TLS handshake, all within
//! the connect timeout. `connect` runs on the core threads (monoio); `connect_blocking` serves the
//! health thread with the same settings (a blocking rustls client on a std socket).

use super::Stream;
use crate::tls::BackendTls;
use monoio::net::TcpStream;
use rustls::{ClientConnection, StreamOwned};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Why a backend connection could not be opened.
#[derive(Debug)]
pub enum DialError {
    /// TCP connect refused, unreachable, or not done within the timeout.
    Connect(io::Error),
    /// The TLS handshake failed: the reason, and whether the backend answered in TLS and the two
    /// sides disagreed (`rejected`: a certificate that does not verify, a refused client
    /// certificate, no common protocol) rather than the connection failing or timing out.
    Tls { reason: String, rejected: bool },
}

impl DialError {
    /// The backend is alive but the TLS settings do not match: a configuration error to report
    /// (502 with the reason), not a reason to mark the backend down.
    pub fn is_tls_rejection(&self) -> bool {
        matches!(self, DialError::Tls { rejected: true, .. })
    }
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Connect(e) => write!(f, "connect failed: {e}"),
            DialError::Tls { reason, .. } => write!(f, "TLS handshake failed: {reason}"),
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

/// The rustls error inside an I/O error on a TLS stream, if any: the peer spoke TLS and refused
/// (e.g. a TLS 1.3 server's alert after the handshake when it wanted a client certificate).
pub fn tls_rejection(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
}

/// A handshake error with its reason (rustls' own message, e.g. "invalid peer certificate:
/// UnknownIssuer"); a rustls error inside means the peer spoke TLS and the sides disagreed.
fn tls_error(e: &io::Error) -> DialError {
    match tls_rejection(e) {
        Some(r) => DialError::Tls { reason: r.to_string(), rejected: true },
        None => DialError::Tls { reason: e.to_string(), rejected: false },
    }
}

/// Opens a connection to a backend at `addr` (TLS when `tls` is set) within `timeout`. A timed-out
/// attempt is cancelled and its socket closed.
pub async fn connect(
    addr: SocketAddr,
    tls: Option<&BackendTls>,
    timeout: Duration,
) -> Result<Stream, DialError> {
    let deadline = Instant::now() + timeout;
    let tcp = match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(DialError::Connect(e)),
        Err(_) => return Err(DialError::Connect(timed_out())),
    };
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else { return Ok(Stream::Plain(tcp)) };
    let fd = tcp.as_raw_fd();
    let connector = monoio_rustls::TlsConnector::from(tls.config.clone());
    let left = deadline.saturating_duration_since(Instant::now());
    match monoio::time::timeout(left, connector.connect(tls.server_name.clone(), tcp)).await {
        Ok(Ok(s)) => Ok(Stream::client_tls(fd, s)),
        Ok(Err(e)) => Err(tls_error(&io::Error::from(e))),
        Err(_) => Err(DialError::Tls { reason: "handshake timed out".to_string(), rejected: false }),
    }
}

/// A blocking backend connection (health thread).
pub enum BlockingStream {
    Plain(std::net::TcpStream),
    Tls(Box<StreamOwned<ClientConnection, std::net::TcpStream>>),
}

impl Read for BlockingStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Plain(s) => s.read(buf),
            BlockingStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for BlockingStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            BlockingStream::Plain(s) => s.write(buf),
            BlockingStream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            BlockingStream::Plain(s) => s.flush(),
            BlockingStream::Tls(s) => s.flush(),
        }
    }
}

/// `connect` for a thread that may block: the handshake and every later read or write are bounded
/// by what is left of `timeout` after the TCP connect (socket timeouts; callers may re-arm them).
pub fn connect_blocking(
    addr: SocketAddr,
    tls: Option<&BackendTls>,
    timeout: Duration,
) -> Result<BlockingStream, DialError> {
    let deadline = Instant::now() + timeout;
    let tcp = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(DialError::Connect)?;
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let _ = tcp.set_read_timeout(Some(left));
    let _ = tcp.set_write_timeout(Some(left));
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else { return Ok(BlockingStream::Plain(tcp)) };
    let conn = ClientConnection::new(tls.config.clone(), tls.server_name.clone())
        .map_err(|e| DialError::Tls { reason: e.to_string(), rejected: true })?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        if let Err(e) = s.conn.complete_io(&mut s.sock) {
            return Err(tls_error(&e));
        }
    }
    Ok(BlockingStream::Tls(Box::new(s)))
}
