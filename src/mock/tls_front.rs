//! TLS in front of the simulated backend (`llmproxy mock-backend --tls-cert/--tls-key`, tests of
//! https backends): each accepted connection is a blocking thread that does the rustls handshake
//! (optionally requiring a client certificate), then copies plaintext both ways to a plain mock
//! connection, so the mock itself stays plain. Counts accepted connections (pool reuse tests).

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A TLS listener forwarding to a plain backend at `upstream`. Dropping it stops accepting.
pub struct TlsFront {
    addr: SocketAddr,
    accepts: Arc<AtomicU64>,
    handshakes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// The server config: `cert`/`key` PEM files; with `client_ca`, a client certificate signed by it
/// is required (mutual TLS).
pub fn server_config(cert: &str, key: &str, client_ca: Option<&str>) -> Result<Arc<ServerConfig>, String> {
    let certs = crate::tls::pem::certs(cert)?;
    let key = crate::tls::pem::key(key)?;
    let builder = ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(crate::tls::pem::certs(ca)?);
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
                    .build()
                    .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![crate::tls::ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

impl TlsFront {
    pub fn start(
        listener: TcpListener,
        upstream: SocketAddr,
        config: Arc<ServerConfig>,
    ) -> io::Result<TlsFront> {
        let addr = listener.local_addr()?;
        let accepts = Arc::new(AtomicU64::new(0));
        let handshakes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a2, h2, s2) = (accepts.clone(), handshakes.clone(), stop.clone());
        std::thread::Builder::new().name("mock-tls-accept".into()).spawn(move || {
            for conn in listener.incoming() {
                if s2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(sock) = conn else { continue };
                a2.fetch_add(1, Ordering::SeqCst);
                let (config, h3) = (config.clone(), h2.clone());
                let _ = std::thread::Builder::new()
                    .name("mock-tls-conn".into())
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        if let Err(e) = relay(sock, upstream, config, &h3) {
                            log::debug!("mock-backend TLS connection: {e}");
                        }
                    });
            }
        })?;
        Ok(TlsFront { addr, accepts, handshakes, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// TCP connections accepted so far.
    pub fn accepts(&self) -> u64 {
        self.accepts.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.addr.port())),
            Duration::from_secs(1),
        );
    }
}

fn relay(
    sock: TcpStream,
    upstream: SocketAddr,
    config: Arc<ServerConfig>,
    handshakes: &AtomicU64,
) -> io::Result<()> {
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let _ = sock.set_nodelay(true);
    let conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, sock);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    handshakes.fetch_add(1, Ordering::SeqCst);
    tls.sock.set_read_timeout(None)?;
    let mut plain = TcpStream::connect(upstream)?;
    let _ = plain.set_nodelay(true);
    let mut buf = vec![0u8; 16 * 1024];
    let mut tls_open = true;
    loop {
        // Plaintext rustls already holds goes first (it may have come with the handshake).
        while tls_open {
            match tls.conn.reader().read(&mut buf) {
                Ok(0) => {
                    tls_open = false;
                    let _ = plain.shutdown(Shutdown::Write);
                }
                Ok(n) => plain.write_all(&buf[..n])?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let mut fds = [
            libc::pollfd {
                fd: if tls_open { tls.sock.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd { fd: plain.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: two valid pollfd entries (a negative fd is ignored by poll).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if fds[0].revents != 0 {
            match tls.conn.read_tls(&mut tls.sock) {
                Ok(0) | Err(_) => {
                    tls_open = false;
                    let _ = plain.shutdown(Shutdown::Write);
                }
                Ok(_) => {
                    if let Err(e) = tls.conn.process_new_packets() {
                        let _ = tls.conn.write_tls(&mut tls.sock);
                        return Err(io::Error::other(e));
                    }
                }
            }
        }
        if fds[1].revents != 0 {
            let n = plain.read(&mut buf)?;
            if n == 0 {
                // The mock finished (or aborted) the connection: close the TLS side too.
                tls.conn.send_close_notify();
                let _ = tls.conn.complete_io(&mut tls.sock);
                let _ = tls.sock.shutdown(Shutdown::Write);
                return Ok(());
            }
            tls.write_all(&buf[..n])?;
            tls.flush()?;
        }
    }
}
