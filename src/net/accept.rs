//! Accepting a client on the TLS listener (core threads): the first byte tells a TLS handshake
//! (record type 22) from plain HTTP sent to the TLS port, which gets a 400 and a clean close
//! (its bytes drained first, so the close is a FIN the client reads after the answer, not a reset);
//! then the handshake, within the head timeout. A failure says why (`HandshakeFailure`), for
//! `llmproxy_tls_handshake_failures_total{reason}`.

use super::Stream;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::ServerConfig;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A TLS record of type handshake starts with this byte.
const TLS_HANDSHAKE: u8 = 0x16;

const PLAIN_TO_TLS_BODY: &str = "{\"error\":{\"message\":\"this port speaks TLS: use https://\",\"type\":\"invalid_request_error\",\"code\":\"plain_http_to_tls_port\"}}";

/// What the first byte on a fresh connection said.
enum First {
    Tls,
    Plain,
    Gone,
}

fn peek_first(fd: i32) -> Option<First> {
    let mut b = [0u8; 1];
    // SAFETY: valid descriptor and a 1-byte buffer.
    let n = unsafe { libc::recv(fd, b.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    match n {
        1 if b[0] == TLS_HANDSHAKE => Some(First::Tls),
        1 => Some(First::Plain),
        0 => Some(First::Gone),
        _ => match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => None,
            _ => Some(First::Gone),
        },
    }
}

/// Why a connection to the TLS listener did not become a TLS stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// No handshake within the head timeout (the same limit a plain client's head gets).
    Timeout,
    /// Plain HTTP sent to the TLS port (answered 400).
    PlainHttp,
    /// The handshake failed (protocol, certificate, alert from the client).
    Error,
    /// Closed before sending anything (a TCP probe): not counted as a failure.
    Closed,
}

impl HandshakeFailure {
    /// The `reason` label; None for what is not a failure.
    pub fn label(self) -> Option<&'static str> {
        match self {
            HandshakeFailure::Timeout => Some("timeout"),
            HandshakeFailure::PlainHttp => Some("plain_http"),
            HandshakeFailure::Error => Some("error"),
            HandshakeFailure::Closed => None,
        }
    }

    /// Every counted reason, in the order of `index`.
    pub const COUNTED: [HandshakeFailure; 3] =
        [HandshakeFailure::Timeout, HandshakeFailure::PlainHttp, HandshakeFailure::Error];

    pub fn index(self) -> Option<usize> {
        Self::COUNTED.iter().position(|&f| f == self)
    }
}

/// Performs the server side of the handshake on `tcp`; the reason when the connection was closed
/// instead (plain HTTP answered, a failed or timed-out handshake: logged at debug level).
pub async fn accept_tls(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> Result<Stream, HandshakeFailure> {
    let deadline = Instant::now() + timeout;
    let fd = tcp.as_raw_fd();
    let first = loop {
        if let Some(f) = peek_first(fd) {
            break f;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(left, tcp.readable(false)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(HandshakeFailure::Closed),
            Err(_) => return Err(HandshakeFailure::Timeout),
        }
    };
    match first {
        First::Gone => return Err(HandshakeFailure::Closed),
        First::Plain => {
            refuse_plain(tcp).await;
            return Err(HandshakeFailure::PlainHttp);
        }
        First::Tls => {}
    }
    let _ = tcp.set_nodelay(true);
    let acceptor = monoio_rustls::TlsAcceptor::from(config);
    let left = deadline.saturating_duration_since(Instant::now());
    let tcp = super::shared_tcp::SharedTcp::new(tcp);
    let sock = tcp.handle();
    match monoio::time::timeout(left, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Ok(Stream::server_tls(fd, s, sock)),
        Ok(Err(e)) => {
            let e = std::io::Error::from(e);
            log::debug!(
                "TLS handshake with a client failed: {}",
                e.get_ref().map_or(e.to_string(), |i| i.to_string())
            );
            Err(HandshakeFailure::Error)
        }
        // The cancelled handshake's socket is dropped (closed) with it.
        Err(_) => Err(HandshakeFailure::Timeout),
    }
}

/// Answers plain HTTP on the TLS port with a 400, then closes cleanly.
async fn refuse_plain(mut tcp: TcpStream) {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(PLAIN_TO_TLS_BODY.len()).as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    out.extend_from_slice(PLAIN_TO_TLS_BODY.as_bytes());
    let wait = Duration::from_secs(1);
    if monoio::time::timeout(wait, tcp.write_all(out)).await.is_err() {
        return;
    }
    let _ = monoio::time::timeout(wait, tcp.shutdown()).await;
    // Drain what the client sent (up to a bound), so closing sends a FIN and not a reset.
    let mut buf = vec![0u8; 4096];
    for _ in 0..16 {
        match monoio::time::timeout(wait, tcp.read(buf)).await {
            Ok((Ok(n), b)) if n > 0 => buf = b,
            _ => return,
        }
    }
}
