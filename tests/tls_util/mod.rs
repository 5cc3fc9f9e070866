//! Helpers for the TLS tests: certificates made by the `openssl` CLI for each test (a private CA,
//! a server certificate for localhost/127.0.0.1, a client certificate, and a second, unrelated CA),
//! a simulated backend behind the mock's TLS front, and a blocking rustls client.
#![allow(dead_code)]

use llmproxy::mock::tls_front::{self, TlsFront};
use llmproxy::mock::MockBackend;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

pub struct Certs {
    pub dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

fn make_leaf(dir: &Path, name: &str, ca: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("write ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

impl Certs {
    /// ca, server (signed by ca: DNS localhost, IP 127.0.0.1), client (signed by ca), other_ca
    /// and other_server (signed by other_ca).
    pub fn make() -> Certs {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        make_ca(d, "ca");
        make_ca(d, "other_ca");
        let server = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n";
        make_leaf(d, "server", "ca", server);
        make_leaf(d, "other_server", "other_ca", server);
        make_leaf(
            d,
            "client",
            "ca",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
        );
        Certs { dir }
    }

    /// Path of `<name>.pem` or `<name>.key` as a string.
    pub fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    pub fn file(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

/// A simulated backend (`flavor`, small delays) behind the mock's TLS front with `cert`.key/.pem;
/// with `client_ca`, the front requires a client certificate signed by it.
pub fn tls_mock(certs: &Certs, cert: &str, client_ca: Option<&str>) -> (MockBackend, TlsFront) {
    let backend = crate::common::mock(llmproxy::mock::Flavor::Vllm);
    let config = tls_front::server_config(
        &certs.path(&format!("{cert}.pem")),
        &certs.path(&format!("{cert}.key")),
        client_ca.map(|c| certs.path(&format!("{c}.pem"))).as_deref(),
    )
    .expect("mock TLS config");
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind TLS front");
    let front = TlsFront::start(l, backend.addr(), config).expect("start TLS front");
    (backend, front)
}

/// A blocking TLS client to `addr` trusting `ca_pem`, ALPN http/1.1, server name localhost.
pub fn tls_client(
    addr: SocketAddr,
    ca_pem: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(llmproxy::tls::pem::certs(ca_pem).expect("CA"));
    let mut config = rustls::ClientConfig::builder_with_provider(llmproxy::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20))).expect("timeout");
    rustls::StreamOwned::new(conn, sock)
}
