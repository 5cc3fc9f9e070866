//! Webhook delivery end to end against the recording receiver: fields, headers, signature, batches,
//! retries, outages, journal replay across restarts, overflow, torn journal entries and shutdown.

mod common;

use common::{Mode, Receiver};
use hmac::{Hmac, Mac};
use llmproxy::config::{ApiKeyFormat, DeliveryConfig, IncludeUsage, UsageHookConfig};
use llmproxy::delivery::journal::{self, Journal};
use llmproxy::delivery::{self as webhook, WebhookStats};
use llmproxy::usage::record::{RecordStatus, UsageRecord};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);

fn cfg(url: &str, spool: &Path) -> UsageHookConfig {
    UsageHookConfig {
        enabled: true,
        url: url.to_string(),
        timeout: Duration::from_secs(1),
        retry: 2,
        queue_capacity: 65536,
        batch_max: 1,
        batch_linger: Duration::from_millis(20),
        spool_dir: spool.to_path_buf(),
        replay_interval: Duration::from_millis(100),
        secret: None,
        api_key_format: ApiKeyFormat::Redacted,
        include_usage: IncludeUsage::Inject,
        delivery: DeliveryConfig::default(),
    }
}

fn rec(id: &str) -> UsageRecord {
    UsageRecord {
        request_id: id.to_string(),
        user_id: Some("user_alice".into()),
        api_key: Some("sk-p...xxx".into()),
        model: Some("meta-llama/Llama-3-8b".into()),
        prompt_tokens: 15,
        completion_tokens: 42,
        total_tokens: 57,
        is_stream: true,
        endpoint: "/v1/chat/completions".into(),
        timestamp: "2026-01-14T10:30:00Z".into(),
        backend_url: Some("http://vllm:8000".into()),
        status: RecordStatus::Ok,
        http_status: 200,
        duration_ms: 812,
        ttft_ms: Some(35),
        audio_seconds: None,
        usage_missing: false,
        ..Default::default()
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:05}")).collect()
}

/// Polls a condition on shared counters until it holds; false on timeout.
fn eventually(timeout: Duration, f: impl Fn() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while !f() {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// First-seen order of delivered ids (duplicates from at-least-once removed).
fn first_seen(r: &Receiver) -> Vec<String> {
    let mut seen = HashSet::new();
    r.delivered_ids().into_iter().filter(|id| seen.insert(id.clone())).collect()
}

fn spool_len(dir: &Path) -> u64 {
    journal::read_pending(dir).unwrap().len() as u64
}

/// Delivery order is not promised (concurrent POSTs): compare as sets, and no id twice.
fn same_ids(got: Vec<String>, want: &[String]) {
    let mut g = got;
    g.sort();
    let mut w = want.to_vec();
    w.sort();
    assert_eq!(g, w);
}

#[test]
fn single_record_has_exact_fields_and_headers() {
    let r = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let stats = Arc::new(WebhookStats::default());
    let (sink, h) = webhook::start(&cfg(&r.url(), dir.path()), stats.clone(), false).unwrap();
    let record = rec("req_abc123");
    sink.submit(record.clone());
    assert!(r.wait_for(1, LONG));
    let hits = r.hits();
    assert_eq!(hits.len(), 1);
    let hit = &hits[0];
    assert_eq!(hit.json().unwrap(), serde_json::to_value(&record).unwrap(), "body is the record object");
    assert_eq!(hit.json().unwrap()["prompt_tokens"], 15);
    assert_eq!(hit.header("content-type"), Some("application/json"));
    assert_eq!(hit.header("idempotency-key"), Some("req_abc123"));
    assert_eq!(hit.header("x-llmproxy-signature"), None);
    assert!(eventually(LONG, || stats.success.load(Ordering::Relaxed) == 1));
    assert_eq!(stats.failure.load(Ordering::Relaxed), 0);
    h.shutdown();
    assert_eq!(sink.queue_depth(), 0);
    assert_eq!(spool_len(dir.path()), 0);
}

#[test]
fn hmac_signature_verified_by_receiver() {
    let r = Receiver::start();
    r.require_signature("s3cret");
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(&r.url(), dir.path());
    c.secret = Some("s3cret".into());
    let (sink, h) = webhook::start(&c, Arc::new(WebhookStats::default()), false).unwrap();
    sink.submit(rec("sig-1"));
    sink.submit(rec("sig-2"));
    // A bad signature would be answered 401 and never count as delivered.
    assert!(r.wait_for(2, LONG), "hits: {:?}", r.hits());
    for hit in r.hits() {
        assert_eq!(hit.status, 200);
        let sig = hit.header("x-llmproxy-signature").unwrap();
        let hexsig = sig.strip_prefix("sha256=").unwrap();
        assert_eq!(hexsig.len(), 64);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(&hit.body);
        mac.verify_slice(&hex::decode(hexsig).unwrap()).unwrap();
    }
    h.shutdown();
}

#[test]
fn batches_are_arrays_and_partial_batches_linger() {
    let r = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(&r.url(), dir.path());
    c.batch_max = 10;
    c.batch_linger = Duration::from_millis(300);
    let stats = Arc::new(WebhookStats::default());
    let (sink, h) = webhook::start(&c, stats.clone(), false).unwrap();
    let first = ids("batch", 25);
    for id in &first {
        sink.submit(rec(id));
    }
    assert!(r.wait_for(25, LONG));
    for hit in r.hits() {
        let arr = hit.json().unwrap();
        let arr = arr.as_array().expect("batch body is an array");
        assert!(!arr.is_empty() && arr.len() <= 10, "batch of {}", arr.len());
        let joined: Vec<&str> = arr.iter().map(|v| v["request_id"].as_str().unwrap()).collect();
        let key = format!("batch-{}", hex::encode(Sha256::digest(joined.join(",").as_bytes())));
        assert_eq!(hit.header("idempotency-key"), Some(key.as_str()));
    }
    same_ids(first_seen(&r), &first);
    // A partial batch is not held forever: three records go out together after the linger.
    let posts_before = r.attempts();
    for id in ["tail-0", "tail-1", "tail-2"] {
        sink.submit(rec(id));
    }
    assert!(r.wait_for(28, LONG));
    let hits = r.hits();
    assert_eq!(hits.len(), posts_before + 1, "the three lingering records share one POST");
    assert_eq!(hits.last().unwrap().records().len(), 3);
    assert!(eventually(LONG, || stats.success.load(Ordering::Relaxed) == 28));
    h.shutdown();
}

#[test]
fn http_500_then_recovery_delivers_every_record() {
    let r = Receiver::start();
    r.set_status(500);
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(&r.url(), dir.path());
    c.retry = 1;
    c.batch_max = 10;
    let stats = Arc::new(WebhookStats::default());
    let (sink, h) = webhook::start(&c, stats.clone(), false).unwrap();
    let want = ids("e500", 50);
    for id in &want {
        sink.submit(rec(id));
    }
    assert!(eventually(LONG, || stats.spool_records.load(Ordering::Relaxed) == 50));
    // Replays keep failing while the webhook answers 500, without losing anything.
    assert!(r.wait_for_attempts(4, LONG));
    assert!(r.delivered().is_empty());
    r.set_status(200);
    assert!(r.wait_for(50, LONG), "only {} delivered", r.delivered().len());
    same_ids(first_seen(&r), &want);
    assert!(eventually(LONG, || stats.spool_records.load(Ordering::Relaxed) == 0));
    assert!(stats.failure.load(Ordering::Relaxed) >= 4);
    assert!(stats.success.load(Ordering::Relaxed) >= 50);
    h.shutdown();
    assert_eq!(spool_len(dir.path()), 0);
}

#[test]
fn hangup_counts_as_failure_then_recovers() {
    let r = Receiver::start();
    r.set_mode(Mode::Hangup);
    let dir = tempfile::tempdir().unwrap();
    let stats = Arc::new(WebhookStats::default());
    let (sink, h) = webhook::start(&cfg(&r.url(), dir.path()), stats.clone(), false).unwrap();
    let want = ids("hang", 5);
    for id in &want {
        sink.submit(rec(id));
    }
    assert!(r.wait_for_attempts(3, LONG));
    r.set_status(204);
    assert!(r.wait_for(5, LONG));
    same_ids(first_seen(&r), &want);
    assert!(stats.failure.load(Ordering::Relaxed) >= 3);
    h.shutdown();
}

#[test]
fn webhook_down_2000_records_all_arrive() {
    let r = Receiver::start_down();
    let dir = tempfile::tempdir().unwrap();
    let stats = Arc::new(WebhookStats::default());
    let (sink, h) = webhook::start(&cfg(&r.url(), dir.path()), stats.clone(), false).unwrap();
    let want = ids("down", 2000);
    for id in &want {
        sink.submit(rec(id));
    }
    assert!(eventually(LONG, || stats.spool_records.load(Ordering::Relaxed) == 2000));
    // Failures are counted by the journal thread a round after the attempts: wait for them.
    assert!(
        eventually(LONG, || stats.failure.load(Ordering::Relaxed) >= 3),
        "first record tried 1 + retry times"
    );
    r.up();
    assert!(r.wait_for(2000, Duration::from_secs(120)), "only {} delivered", r.delivered().len());
    same_ids(first_seen(&r), &want);
    assert!(eventually(LONG, || stats.spool_records.load(Ordering::Relaxed) == 0));
    h.shutdown();
    assert_eq!(spool_len(dir.path()), 0);
}

#[test]
fn restart_replays_spool_once() {
    let r = Receiver::start_down();
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(&r.url(), dir.path());
    let want = ids("restart", 100);
    let (sink, h) = webhook::start(&c, Arc::new(WebhookStats::default()), false).unwrap();
    for id in &want {
        sink.submit(rec(id));
    }
    h.shutdown();
    assert_eq!(spool_len(dir.path()), 100, "shutdown with the webhook down spools everything");
    assert!(r.delivered().is_empty());

    r.up();
    let stats = Arc::new(WebhookStats::default());
    let (sink, h) = webhook::start(&c, stats.clone(), false).unwrap();
    assert!(r.wait_for(100, LONG));
    assert!(eventually(LONG, || stats.spool_records.load(Ordering::Relaxed) == 0));
    sink.submit(rec("after-restart"));
    assert!(r.wait_for(101, LONG));
    h.shutdown();
    assert_eq!(spool_len(dir.path()), 0);

    // A further restart must not replay anything (the journal's acknowledgements are durable).
    let stats = Arc::new(WebhookStats::default());
    let (sink, h) = webhook::start(&c, stats.clone(), false).unwrap();
    assert_eq!(stats.spool_records.load(Ordering::Relaxed), 0);
    sink.submit(rec("second-restart"));
    assert!(r.wait_for(102, LONG));
    h.shutdown();
    let got = r.delivered_ids();
    assert_eq!(got.len(), 102, "delivered twice: {got:?}");
    let mut expect = want.clone();
    expect.push("after-restart".into());
    expect.push("second-restart".into());
    same_ids(got, &expect);
}

#[test]
fn overflow_never_blocks_and_loses_nothing() {
    let r = Receiver::start();
    r.set_delay(Duration::from_millis(5));
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(&r.url(), dir.path());
    c.queue_capacity = 4;
    let stats = Arc::new(WebhookStats::default());
    let (sink, h) = webhook::start(&c, stats.clone(), false).unwrap();
    let want = ids("over", 1000);
    let t = Instant::now();
    for id in &want {
        sink.submit(rec(id));
    }
    let took = t.elapsed();
    // Delivering 1000 records at 5 ms each takes 5 s; a submit that waited would show it.
    assert!(took < Duration::from_secs(2), "submitting took {took:?}");
    assert!(r.wait_for(1000, Duration::from_secs(120)), "only {} delivered", r.delivered().len());
    let got: HashSet<String> = r.delivered_ids().into_iter().collect();
    assert_eq!(got, want.iter().cloned().collect::<HashSet<_>>());
    assert!(eventually(LONG, || stats.spool_records.load(Ordering::Relaxed) == 0));
    assert_eq!(sink.queue_depth(), 0);
    h.shutdown();
}

#[test]
fn torn_journal_tail_is_ignored_on_start() {
    let r = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    {
        let mut j = Journal::open(dir.path(), journal::DEFAULT_SEGMENT_BYTES).unwrap();
        for id in ids("torn", 3) {
            j.append(1, &rec(&id).to_json(), true);
        }
        j.commit().unwrap();
    }
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_str().unwrap().ends_with(".log"))
        .unwrap();
    let mut torn = Vec::new();
    journal::frame::encode(&mut torn, 1, 1, rec("torn-garbage").to_json().as_bytes());
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, &torn[..torn.len() / 2]).unwrap();
    drop(f);

    let stats = Arc::new(WebhookStats::default());
    let (sink, h) = webhook::start(&cfg(&r.url(), dir.path()), stats.clone(), false).unwrap();
    assert!(r.wait_for(3, LONG));
    sink.submit(rec("fresh"));
    assert!(r.wait_for(4, LONG));
    h.shutdown();
    let mut want = ids("torn", 3);
    want.push("fresh".into());
    same_ids(r.delivered_ids(), &want);
    assert_eq!(stats.corrupt.load(Ordering::Relaxed), 1, "the torn entry is counted");
    assert!(r.hits().iter().all(|h| h.status == 200), "no garbage body was sent");
    assert_eq!(spool_len(dir.path()), 0);
}

#[test]
fn shutdown_flushes_queue_to_webhook() {
    let r = Receiver::start();
    r.set_delay(Duration::from_millis(10));
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(&r.url(), dir.path());
    c.batch_max = 5;
    c.batch_linger = Duration::from_secs(3600);
    let (sink, h) = webhook::start(&c, Arc::new(WebhookStats::default()), false).unwrap();
    let want = ids("flush", 12);
    for id in &want {
        sink.submit(rec(id));
    }
    let t = Instant::now();
    h.shutdown();
    assert!(t.elapsed() < Duration::from_secs(10), "shutdown waited for the linger");
    // No waiting: shutdown returns only after everything was delivered.
    same_ids(first_seen(&r), &want);
    assert_eq!(spool_len(dir.path()), 0);
}

#[test]
fn shutdown_spools_when_webhook_down() {
    let r = Receiver::start_down();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(&r.url(), dir.path());
    c.retry = 5;
    c.replay_interval = Duration::from_secs(3600);
    let stats = Arc::new(WebhookStats::default());
    let (sink, h) = webhook::start(&c, stats.clone(), false).unwrap();
    for id in ids("spooled", 50) {
        sink.submit(rec(&id));
    }
    let t = Instant::now();
    h.shutdown();
    // Five retries would back off for about 3 s; shutdown cuts that short.
    assert!(t.elapsed() < Duration::from_secs(2), "shutdown took {:?}", t.elapsed());
    assert_eq!(stats.spool_records.load(Ordering::Relaxed), 50);
    assert_eq!(spool_len(dir.path()), 50);
    let got: Vec<String> =
        journal::read_pending(dir.path()).unwrap().into_iter().map(|e| e.request_id).collect();
    assert_eq!(got, ids("spooled", 50));
}

#[test]
fn disabled_neither_posts_nor_spools() {
    let r = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("never-created");
    let mut c = cfg(&r.url(), &spool);
    c.enabled = false;
    let stats = Arc::new(WebhookStats::default());
    let (sink, h) = webhook::start(&c, stats.clone(), false).unwrap();
    sink.submit(rec("off-1"));
    sink.submit(rec("off-2"));
    h.shutdown();
    assert_eq!(sink.queue_depth(), 0, "records were taken off the queue");
    assert!(!spool.exists());
    assert_eq!(r.attempts(), 0);
}

#[test]
fn unusable_spool_dir_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let bad = file.join("spool");
    let c = cfg("http://127.0.0.1:9/x", &bad);
    let err = webhook::start(&c, Arc::new(WebhookStats::default()), false).err().expect("must fail");
    assert!(err.to_string().contains(bad.to_str().unwrap()), "{err}");
}
