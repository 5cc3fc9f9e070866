//! `examples/nats/consumer_sqlite.py` actually runs: a real `nats-server -js`, the gateway with
//! `sink = "nats"`, 20 requests, then the example consumer (`--drain`) writes them to SQLite, one
//! row per request_id; a record that reaches the stream twice (published again as a CloudEvent, as
//! a second gateway or a replay would) and a message that is not a record are not counted. Needs
//! python3 with nats-py (`scripts/test.sh` installs it): skipped with a note without it, a failure
//! under CI.

mod common;
mod metering_util;

use common::nats::{free_port, nats_server_bin, start_nats, KillOnDrop};
use common::*;
use llmproxy::mock::Flavor;
use metering_util::rid;
use std::path::Path;
use std::process::Command;

fn python_has_nats() -> bool {
    Command::new("python3").args(["-c", "import nats"]).output().is_ok_and(|o| o.status.success())
}

/// Runs the example consumer until the stream has nothing more for it.
fn run_consumer(url: &str, db: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nats/consumer_sqlite.py");
    let out = Command::new("timeout")
        .args(["120", "python3"])
        .arg(&script)
        .arg("--drain")
        .env("NATS_URL", url)
        .env("USAGE_DB", db)
        .output()
        .expect("run the example consumer");
    assert!(
        out.status.success(),
        "consumer failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (request_id, prompt_tokens, status) of every row, via python3's sqlite3 (no Rust SQLite dep).
fn rows(db: &Path) -> Vec<(String, i64, String)> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json,sqlite3,sys; print(json.dumps(sqlite3.connect(sys.argv[1]).execute('SELECT request_id, prompt_tokens, status FROM usage ORDER BY request_id').fetchall()))",
        ])
        .arg(db)
        .output()
        .expect("read the SQLite rows");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("rows as JSON")
}

#[test]
fn example_jetstream_consumer_writes_each_record_once_to_sqlite() {
    let Some(bin) = nats_server_bin() else {
        prereq::missing("nats-server (Debian package nats-server)");
        return;
    };
    if !python_has_nats() {
        prereq::missing("python3 with nats-py (pip install nats-py)");
        return;
    }
    let port = free_port();
    let store = tempfile::tempdir().unwrap();
    let _nats = KillOnDrop(Some(start_nats(&bin, port, store.path())));
    let url = format!("nats://127.0.0.1:{port}");
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("usage.db");
    // First run: creates the stream USAGE on llm.usage and the durable consumer; nothing to read.
    run_consumer(&url, &db);
    assert!(rows(&db).is_empty());

    let b = mock(Flavor::Vllm);
    let section = format!(
        "[usage_hook]\nenabled = true\nsink = \"nats\"\nnats_url = \"{url}\"\nnats_subject = \"llm.usage\"\nspool_dir = \"@SPOOL@\"\ntimeout = \"2s\"\nretry = 0\nreplay_interval = \"200ms\"\nbatch_max = 8\n"
    );
    let gw = Gateway::start(&config_for(&[b.url()], &section));
    let mut ids = Vec::new();
    for _ in 0..20 {
        let r = request(gw.addr, &post("/v1/chat/completions", &chat("m"), ""));
        assert_eq!(r.status, 200);
        ids.push(rid(&r));
    }
    eventually(30, "20 records acknowledged by JetStream", || {
        metric(&metrics(gw.addr), "llmproxy_webhook_success_total").unwrap_or(0.0) >= 20.0
    });

    // The same record once more under another message id (JetStream keeps both), as a CloudEvent,
    // and a message that is not a usage record.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(&url).await.expect("test client connects"));
        let again = serde_json::json!({
            "specversion": "1.0", "id": ids[3], "source": "llmproxy/other", "type": "llm.usage",
            "subject": "anonymous", "datacontenttype": "application/json",
            "data": {"request_id": ids[3], "prompt_tokens": 999, "status": "ok"},
        });
        for body in [again.to_string(), "not json".to_string()] {
            js.publish("llm.usage", body.into()).await.expect("publish").await.expect("stream ack");
        }
    });

    run_consumer(&url, &db);
    let got = rows(&db);
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got.iter().map(|r| r.0.clone()).collect::<Vec<_>>(), want, "one row per request_id");
    assert!(
        got.iter().all(|r| r.2 == "ok" && r.1 > 0 && r.1 != 999),
        "the gateway's records were kept: {got:?}"
    );
    // Everything was acknowledged: a second run finds nothing new.
    run_consumer(&url, &db);
    assert_eq!(rows(&db).len(), 20);
}
