//! Upgrade from the spool of releases before the journal, through the real binary: an old-format
//! spool dir (`segment-*.jsonl` + `cursor`) written by hand, with records before and after the
//! cursor and a torn last line; the gateway started on it delivers exactly the records after the
//! cursor, once, removes the old files, and does not deliver them again on the next start.

mod common;
mod metering_util;

use common::*;
use llmproxy::mock::Flavor;
use metering_util::hook;
use std::collections::HashSet;
use std::time::Duration;

fn old_record(id: &str) -> String {
    format!(
        r#"{{"request_id":"{id}","user_id":"alice","model":"m","prompt_tokens":3,"completion_tokens":5,"total_tokens":8,"is_stream":false,"endpoint":"/v1/chat/completions","timestamp":"2026-01-14T10:30:00Z","backend_url":"http://127.0.0.1:8000","status":"ok","http_status":200,"duration_ms":12,"ttft_ms":null}}"#
    )
}

fn lines(ids: &[&str]) -> String {
    ids.iter().map(|id| old_record(id) + "\n").collect()
}

fn seg(dir: &std::path::Path, id: u64) -> std::path::PathBuf {
    dir.join(format!("segment-{id:020}.jsonl"))
}

#[test]
fn old_spool_records_after_the_cursor_are_delivered_once_and_the_old_files_removed() {
    let b = mock(Flavor::Vllm);
    let r = Receiver::start();
    let config = config_for(&[b.url()], &hook(&r, ""));
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    // Segment 7 was delivered (before the cursor); in segment 8 the cursor stands after "done_2";
    // segment 9 ends in a torn line (a crash mid-append).
    std::fs::write(seg(&spool, 7), lines(&["done_0", "done_1"])).unwrap();
    std::fs::write(seg(&spool, 8), lines(&["done_2", "old_a", "old_b"])).unwrap();
    let torn = old_record("torn");
    std::fs::write(seg(&spool, 9), lines(&["old_c", "old_d"]) + &torn[..torn.len() / 2]).unwrap();
    std::fs::write(spool.join("cursor"), format!("8 {}\n", old_record("done_2").len() + 1)).unwrap();
    std::fs::write(spool.join("lock"), "").unwrap();

    let gw = Gateway::start_in(dir, &config, &[]);
    let want: HashSet<String> = ["old_a", "old_b", "old_c", "old_d"].map(String::from).into();
    eventually(30, "the 4 records after the cursor delivered", || {
        want.is_subset(&r.delivered_ids().into_iter().collect::<HashSet<_>>())
    });
    // A request served after the upgrade is metered as usual (and marks the end of the replay).
    let resp = common::client::request(
        gw.addr,
        common::client::post("/v1/chat/completions", &chat("m"), "").as_slice(),
    );
    assert_eq!(resp.status, 200);
    eventually(10, "the new request's record", || r.delivered_ids().len() >= 5);
    let ids = r.delivered_ids();
    let old: Vec<&String> =
        ids.iter().filter(|i| i.starts_with("old_") || i.starts_with("done_") || *i == "torn").collect();
    assert_eq!(old.len(), 4, "exactly the records after the cursor, once each: {ids:?}");
    assert_eq!(ids.len(), 5, "{ids:?}");
    let left: Vec<String> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("segment-") || n.starts_with("cursor"))
        .collect();
    assert!(left.is_empty(), "old spool files left: {left:?}");
    let m = metrics(gw.addr);
    assert_eq!(metric(&m, "llmproxy_journal_corrupt_total"), Some(1.0), "the torn line is counted\n{m}");
    assert!(gw.log_text().contains("spool upgrade"), "the upgrade is logged:\n{}", gw.log_text());

    // The next start finds nothing more to deliver.
    let dir = gw.stop_keep_dir();
    let gw = Gateway::start_in(dir, &config, &[]);
    let resp = common::client::request(
        gw.addr,
        common::client::post("/v1/chat/completions", &chat("m"), "").as_slice(),
    );
    assert_eq!(resp.status, 200);
    eventually(10, "the second start's request record", || r.delivered_ids().len() >= 6);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(r.delivered_ids().len(), 6, "nothing delivered twice: {:?}", r.delivered_ids());
}
