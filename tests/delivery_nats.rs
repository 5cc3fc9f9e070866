//! `usage_hook.sink = "nats"` through the real binary against a real `nats-server -js` started by
//! the test: 100 requests with the broker stopped and restarted in the middle; afterwards all 100
//! records are in the stream, none twice (Nats-Msg-Id = request_id, delivered only on PubAck).

mod common;
mod metering_util;

use common::nats::{nats_server_bin, start_nats, stop_nats, KillOnDrop};
use common::*;
use llmproxy::mock::Flavor;
use metering_util::rid;
use std::collections::HashSet;
use std::time::Duration;

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"a b"}]}"#;

#[test]
fn nats_broker_restart_in_the_middle_all_100_in_the_stream_once() {
    let Some(bin) = nats_server_bin() else {
        common::prereq::missing("nats-server (Debian package nats-server)");
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let store = tempfile::tempdir().unwrap();
    let mut nats = KillOnDrop(Some(start_nats(&bin, port, store.path())));
    let url = format!("nats://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let js = rt.block_on(async {
        let client = async_nats::connect(&url).await.expect("test client connects");
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "USAGE".into(),
            subjects: vec!["llm.usage".into()],
            duplicate_window: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .expect("create stream");
        js
    });

    let b = mock(Flavor::Vllm);
    let section = format!(
        "[usage_hook]\nenabled = true\nsink = \"nats\"\nnats_url = \"{url}\"\nnats_subject = \"llm.usage\"\nspool_dir = \"@SPOOL@\"\ntimeout = \"1s\"\nretry = 0\nreplay_interval = \"200ms\"\n"
    );
    let gw = Gateway::start(&config_for(&[b.url()], &section));
    let mut ids = Vec::new();
    let fire = |ids: &mut Vec<String>| {
        let r = request(gw.addr, &post("/v1/chat/completions", CHAT, ""));
        assert_eq!(r.status, 200);
        ids.push(rid(&r));
    };
    for _ in 0..50 {
        fire(&mut ids);
    }
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while metric(&metrics(gw.addr), "llmproxy_webhook_success_total").unwrap_or(0.0) < 50.0 {
        assert!(std::time::Instant::now() < end, "first 50 not acknowledged; log:\n{}", gw.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    stop_nats(nats.0.take().unwrap());
    for _ in 0..50 {
        fire(&mut ids);
    }
    eventually(20, "failures while the broker is down", || {
        metric(&metrics(gw.addr), "llmproxy_webhook_failure_total").unwrap_or(0.0) >= 1.0
    });
    nats.0 = Some(start_nats(&bin, port, store.path()));
    eventually(60, "all 100 acknowledged after the broker restart", || {
        metric(&metrics(gw.addr), "llmproxy_spool_records") == Some(0.0)
            && metric(&metrics(gw.addr), "llmproxy_webhook_success_total").unwrap_or(0.0) >= 100.0
    });
    drop(js);
    let got: Vec<String> = rt.block_on(async {
        // A fresh client: the first one's connection did not live through the broker restart.
        let js = async_nats::jetstream::new(async_nats::connect(&url).await.expect("reconnect"));
        let stream = js.get_stream("USAGE").await.expect("stream");
        let n = stream.get_info().await.expect("info").state.messages;
        let mut got = Vec::new();
        for seq in 1..=n {
            if let Ok(m) = stream.get_raw_message(seq).await {
                let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("record json");
                got.push(v["request_id"].as_str().unwrap_or("").to_string());
            }
        }
        got
    });
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "a record is in the stream twice");
    assert_eq!(unique, ids.iter().collect::<HashSet<_>>(), "exactly the 100 records");
    drop(gw);
}
