//! Accepting a client on the TLS listener (core threads): the first byte tells a TLS handshake
//! (record type 22) from plain HTTP sent to the TLS port, which gets a 400 and a clean close
//! (its bytes drained first, so the close is a FIN the client reads after the answer, not a reset);
//! then the handshake, within the head timeout.

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

/// Performs the server side of the handshake on `tcp`; None when the connection was closed
/// instead (plain HTTP answered, a failed or timed-out handshake: logged at debug level).
pub async fn accept_tls(tcp: TcpStream, config: Arc<ServerConfig>, timeout: Duration) -> Option<Stream> {
    let deadline = Instant::now() + timeout;
    let fd = tcp.as_raw_fd();
    let first = loop {
        if let Some(f) = peek_first(fd) {
            break f;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(left, tcp.readable(false)).await {
            Ok(Ok(())) => {}
            _ => return None,
        }
    };
    match first {
        First::Gone => return None,
        First::Plain => {
            refuse_plain(tcp).await;
            return None;
        }
        First::Tls => {}
    }
    let _ = tcp.set_nodelay(true);
    let acceptor = monoio_rustls::TlsAcceptor::from(config);
    let left = deadline.saturating_duration_since(Instant::now());
    match monoio::time::timeout(left, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => Some(Stream::server_tls(fd, s)),
        Ok(Err(e)) => {
            let e = std::io::Error::from(e);
            log::debug!(
                "TLS handshake with a client failed: {}",
                e.get_ref().map_or(e.to_string(), |i| i.to_string())
            );
            None
        }
        Err(_) => None,
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
