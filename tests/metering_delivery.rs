//! Usage-record delivery under stress through the real binary: webhook outages under load, restarts
//! with a non-empty spool, channel overflow with a slow webhook, and batching. No record may be lost.

mod common;
mod metering_util;

use common::*;
use llmproxy::mock::Flavor;
use metering_util::*;
use std::collections::HashSet;
use std::time::{Duration, Instant};

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"a b"}]}"#;
const STREAM: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"a b"}]}"#;

/// Polls `llmproxy_spool_records` until it is above 0 (true) or 20 s pass (false).
fn spool_seen(addr: std::net::SocketAddr) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if metric(&metrics(addr), "llmproxy_spool_records").unwrap_or(0.0) > 0.0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    })
}

fn id_set(ids: impl IntoIterator<Item = String>) -> HashSet<String> {
    ids.into_iter().collect()
}

/// Delivered ids as a set, asserting every id in `want` arrived and nothing else did.
fn assert_all_delivered(r: &Receiver, want: &HashSet<String>, secs: u64) {
    eventually(secs, "every record delivered", || id_set(r.delivered_ids()).is_superset(want));
    let got = id_set(r.delivered_ids());
    assert_eq!(&got, want, "records for requests that were never made");
}

#[test]
fn webhook_outage_under_load_loses_nothing() {
    let b = mock(Flavor::Vllm);
    let r = Receiver::start_down();
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "")));
    let watcher = spool_seen(gw.addr);
    let mut done = load(gw.addr, "/v1/chat/completions", CHAT, 150, 8);
    done.extend(load(gw.addr, "/v1/chat/completions", STREAM, 150, 8));
    assert!(done.iter().all(|d| d.status == 200), "every request succeeds while the webhook is down");
    let want = id_set(done.iter().map(|d| d.id.clone()));
    assert_eq!(want.len(), 300, "request ids are unique");
    assert!(watcher.join().unwrap(), "llmproxy_spool_records never went above 0");
    assert!(r.delivered().is_empty());
    r.up();
    assert_all_delivered(&r, &want, 30);
    eventually(10, "spool drained", || metric(&metrics(gw.addr), "llmproxy_spool_records") == Some(0.0));
    assert_eq!(metric(&metrics(gw.addr), "llmproxy_webhook_queue_depth"), Some(0.0));
    let dups = r.delivered_ids().len() - want.len();
    eprintln!("outage under load: {} records, {dups} delivered twice", want.len());
}

#[test]
fn restart_with_a_non_empty_spool_delivers_everything() {
    let b = mock(Flavor::Ollama);
    let r = Receiver::start_down();
    let config = config_for(&[b.url()], &hook(&r, ""));
    let gw = Gateway::start(&config);
    let done = load(gw.addr, "/v1/chat/completions", STREAM, 40, 4);
    assert!(done.iter().all(|d| d.status == 200));
    let want = id_set(done.iter().map(|d| d.id.clone()));
    let spool = gw.spool_dir();
    let dir = gw.stop_keep_dir();
    // Every record is on disk after a graceful stop.
    let mut text = String::new();
    for f in std::fs::read_dir(&spool).expect("spool dir") {
        let p = f.unwrap().path();
        if p.is_file() {
            text += &String::from_utf8_lossy(&std::fs::read(&p).unwrap());
        }
    }
    for id in &want {
        assert!(text.contains(&format!("\"request_id\":\"{id}\"")), "{id} not in the spool");
    }
    assert_eq!(llmproxy::delivery::journal::read_pending(&spool).unwrap().len(), want.len());

    r.up();
    let gw = Gateway::start_in(dir, &config, &[]);
    assert_all_delivered(&r, &want, 20);
    eventually(10, "spool drained", || metric(&metrics(gw.addr), "llmproxy_spool_records") == Some(0.0));
    // A graceful stop after an orderly replay leaves nothing to send twice.
    assert_eq!(r.delivered_ids().len(), want.len(), "duplicates: {:?}", r.delivered_ids());
    let dir = gw.stop_keep_dir();
    assert_eq!(llmproxy::delivery::journal::read_pending(&dir.path().join("spool")).unwrap().len(), 0);
}

#[test]
fn overflow_spills_to_the_spool_without_slowing_requests() {
    let b = mock(Flavor::Vllm);
    let r = Receiver::start();
    r.set_delay(Duration::from_millis(30));
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "queue_capacity = 2\nbatch_max = 4")));
    let watcher = spool_seen(gw.addr);
    let t0 = Instant::now();
    let done = load(gw.addr, "/v1/chat/completions", STREAM, 120, 8);
    let burst = t0.elapsed();
    assert!(done.iter().all(|d| d.status == 200));
    let slowest = done.iter().map(|d| d.elapsed).max().unwrap();
    assert!(slowest < Duration::from_secs(1), "a request took {slowest:?} behind a slow webhook");
    let want = id_set(done.iter().map(|d| d.id.clone()));
    assert!(
        r.delivered_ids().len() < want.len(),
        "the webhook kept up ({burst:?}): the test did not overflow the queue"
    );
    assert!(watcher.join().unwrap(), "overflowing records never reached the spool");
    assert_all_delivered(&r, &want, 30);
    eventually(10, "spool drained", || metric(&metrics(gw.addr), "llmproxy_spool_records") == Some(0.0));
}

#[test]
fn batches_are_json_arrays_and_all_records_arrive() {
    let b = mock(Flavor::Sglang);
    let r = Receiver::start();
    let gw = Gateway::start(&config_for(&[b.url()], &hook(&r, "batch_max = 10\nbatch_linger = \"50ms\"")));
    let done = load(gw.addr, "/v1/chat/completions", CHAT, 45, 8);
    assert!(done.iter().all(|d| d.status == 200));
    let want = id_set(done.iter().map(|d| d.id.clone()));
    assert_all_delivered(&r, &want, 10);
    let hits = r.hits();
    for h in &hits {
        assert!(h.body.starts_with(b"["), "not an array: {}", String::from_utf8_lossy(&h.body));
        let n = h.records().len();
        assert!((1..=10).contains(&n), "batch of {n}");
        assert!(h.header("idempotency-key").is_some());
    }
    assert!(hits.iter().any(|h| h.records().len() > 1), "no batch held more than one record");
    assert!(hits.len() < want.len());
    // A lone record waits at most the linger, then goes as a one-element array.
    let t0 = Instant::now();
    let one = rid(&request(gw.addr, &post("/v1/chat/completions", CHAT, "")));
    let rec = record_for(&r, &one);
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(rec["prompt_tokens"], 2);
    let last = r.hits().pop().unwrap();
    assert_eq!(last.records().len(), 1);
    assert!(last.body.starts_with(b"["));
}
