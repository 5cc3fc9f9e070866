//! Delivery formats and transports through the real binary: CloudEvents single and batched (content
//! types, every field, `data` equal to the record), and an https:// webhook with a CA made by the
//! test with openssl (a certificate that does not verify is a failed delivery, kept in the journal).

mod common;
mod metering_util;

use common::*;
use llmproxy::mock::Flavor;
use metering_util::{hook, rid};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

const CHAT: &str = r#"{"model":"m","user":"alice","messages":[{"role":"user","content":"a b"}]}"#;

fn request(gw: &Gateway) -> String {
    let r = common::request(gw.addr, &post("/v1/chat/completions", CHAT, ""));
    assert_eq!(r.status, 200);
    rid(&r)
}

fn check_event(ev: &Value, id: &str) {
    let host = llmproxy::delivery::format::host_name();
    assert_eq!(ev["specversion"], "1.0");
    assert_eq!(ev["id"], id);
    assert_eq!(ev["source"], format!("llmproxy/{host}"));
    assert_eq!(ev["type"], "llm.usage");
    assert_eq!(ev["datacontenttype"], "application/json");
    let data = &ev["data"];
    assert_eq!(data["request_id"], id);
    assert_eq!(ev["subject"], data["user_id"].as_str().unwrap_or("anonymous"));
    assert_eq!(ev["time"], data["timestamp"]);
    for k in
        ["prompt_tokens", "completion_tokens", "total_tokens", "model", "status", "http_status", "endpoint"]
    {
        assert!(data.get(k).is_some(), "data lacks {k}: {data}");
    }
    assert_eq!(ev.as_object().unwrap().len(), 8, "exactly the contract's fields: {ev}");
}

#[test]
fn cloudevents_single_and_batched() {
    let b = mock(Flavor::Vllm);
    let r = Receiver::start();
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "format = \"cloudevents\"")));
    let id = request(&gw);
    eventually(10, "one event", || !r.hits().is_empty());
    let hit = &r.hits()[0];
    assert_eq!(hit.header("content-type"), Some("application/cloudevents+json"));
    assert_eq!(hit.header("idempotency-key"), Some(id.as_str()));
    let ev = hit.json().expect("json body");
    check_event(&ev, &id);
    assert_eq!(ev["subject"], "alice");
    drop(gw);

    let r = Receiver::start();
    let gw = Gateway::start(&config_for(
        &[b.url()],
        &hook(&r, "format = \"cloudevents\"\nbatch_max = 5\nbatch_linger = \"200ms\""),
    ));
    let ids: Vec<String> = (0..7).map(|_| request(&gw)).collect();
    let events = || -> Vec<Value> {
        r.hits()
            .iter()
            .filter_map(|h| h.json())
            .flat_map(|v| v.as_array().cloned().unwrap_or_default())
            .collect()
    };
    eventually(10, "seven events", || events().len() >= 7);
    for h in r.hits() {
        assert_eq!(h.header("content-type"), Some("application/cloudevents-batch+json"));
        assert!(h.json().unwrap().is_array());
    }
    let evs = events();
    for id in &ids {
        let ev = evs.iter().find(|e| e["id"] == id.as_str()).expect("event for every request");
        check_event(ev, id);
    }
}

fn openssl(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl").current_dir(dir).args(args).output().is_ok_and(|o| o.status.success())
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`; false without openssl.
fn make_certs(dir: &Path, ca: &str) -> bool {
    let key = format!("{ca}.key");
    let pem = format!("{ca}.pem");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
        ],
    ) && openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ) && std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").is_ok()
        && openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "srv.csr",
                "-CA",
                &pem,
                "-CAkey",
                &key,
                "-CAcreateserial",
                "-out",
                "srv.pem",
                "-days",
                "2",
                "-extfile",
                "ext",
            ],
        )
}

/// A minimal https receiver (rustls): answers 200 to every POST, keeps the bodies.
fn https_receiver(dir: &Path) -> (String, Arc<Mutex<Vec<String>>>) {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("srv.pem")).unwrap().map(|c| c.unwrap()).collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("srv.key")).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let cfg = Arc::new(cfg);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://127.0.0.1:{}/llm-usage", l.local_addr().unwrap().port());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let b2 = bodies.clone();
    std::thread::spawn(move || {
        for tcp in l.incoming().map_while(Result::ok) {
            let (cfg, bodies) = (cfg.clone(), b2.clone());
            std::thread::spawn(move || {
                let Ok(conn) = rustls::ServerConnection::new(cfg) else { return };
                let mut s = rustls::StreamOwned::new(conn, tcp);
                let mut buf = Vec::new();
                let mut chunk = [0u8; 16384];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    bodies
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
                    buf.drain(..end + 4 + len);
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, bodies)
}

#[test]
fn https_webhook_verified_with_tls_ca_file_and_refused_otherwise() {
    let certs = tempfile::tempdir().unwrap();
    if !make_certs(certs.path(), "ca") || !make_certs(&certs.path().join("."), "other-ca") {
        common::prereq::missing("openssl (for the https webhook test)");
        return;
    }
    // make_certs twice: srv.* is now signed by other-ca; sign a fresh one by "ca" again.
    assert!(make_certs(certs.path(), "ca"));
    let (url, bodies) = https_receiver(certs.path());
    let b = mock(Flavor::Vllm);
    let section = |ca: &str| {
        format!(
            "[usage_hook]\nenabled = true\nurl = \"{url}\"\nspool_dir = \"@SPOOL@\"\ntimeout = \"2s\"\nretry = 0\nreplay_interval = \"100ms\"\ntls_ca_file = \"{}\"\n",
            certs.path().join(ca).display()
        )
    };
    let gw = Gateway::start(&config_for(&[b.url()], &section("ca.pem")));
    let id = request(&gw);
    eventually(20, "record delivered over https", || bodies.lock().unwrap().iter().any(|b| b.contains(&id)));
    drop(gw);

    // A CA that did not sign the receiver's certificate: delivery fails, the record stays journaled.
    let n = bodies.lock().unwrap().len();
    let gw = Gateway::start(&config_for(&[b.url()], &section("other-ca.pem")));
    let id = request(&gw);
    eventually(20, "verification failures counted", || {
        metric(&metrics(gw.addr), "llmproxy_webhook_failure_total").unwrap_or(0.0) >= 2.0
    });
    assert_eq!(metric(&metrics(gw.addr), "llmproxy_spool_records"), Some(1.0));
    assert_eq!(bodies.lock().unwrap().len(), n, "nothing delivered to an unverified server");
    assert!(
        gw.log_text().contains("certificate") || gw.log_text().contains("Certificate"),
        "{}",
        gw.log_text()
    );
    let spool = gw.spool_dir();
    let mut gw = gw;
    assert_eq!(gw.terminate(), Some(0));
    let pending = llmproxy::delivery::journal::read_pending(&spool).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].request_id, id);
}
