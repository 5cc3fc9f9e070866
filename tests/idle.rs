//! An idle gateway's background threads sleep (issue 14): through the real binary, with the usage
//! journal on, the threads other than the core threads (main, journal, delivery, health, DNS, access
//! log) are scheduled rarely while nothing happens, counted from `/proc/PID/task/*/schedstat`
//! (timeslices: a count, not a timing); and a record made after the idle spell still reaches the
//! webhook.

mod common;

use common::*;
use llmproxy::mock::Flavor;
use std::time::Duration;

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"a b"}]}"#;

/// Timeslices so far of each of `pid`'s threads that is not a core thread, by thread name.
fn background_timeslices(pid: u32) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_string();
        let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        let Some(slices) = stat.split_whitespace().nth(2).and_then(|n| n.parse().ok()) else { continue };
        if !comm.starts_with("llmproxy-core") {
            out.push((format!("{comm} ({})", t.file_name().to_string_lossy()), slices));
        }
    }
    out
}

fn chat(gw: &Gateway) {
    let r = request(gw.addr, &post("/v1/chat/completions", CHAT, ""));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn an_idle_gateway_s_background_threads_sleep_and_wake_for_a_record() {
    if !std::path::Path::new("/proc/self/task").exists() {
        eprintln!("NOTE: no /proc/PID/task here: skipped");
        return;
    }
    let b = mock(Flavor::Vllm);
    let r = Receiver::start();
    let extra = format!(
        "[runtime]\nworkers = 1\npin_cores = false\n[health_check]\ninterval = \"10s\"\n[usage_hook]\nenabled = true\nurl = \"{}\"\nspool_dir = \"@SPOOL@\"\n",
        r.url()
    );
    let gw = Gateway::start(&config_for(&[b.url()], &extra));
    let pid = gw.child.as_ref().expect("running").id();
    // One record through every thread first (journal, delivery, acknowledgement), then past the
    // `.ack` fdatasync (at most a second later) the journal thread has nothing left to do.
    chat(&gw);
    assert!(r.wait_for(1, Duration::from_secs(10)), "the first record was not delivered");
    std::thread::sleep(Duration::from_millis(1500));

    let window = Duration::from_secs(2);
    let before = background_timeslices(pid);
    std::thread::sleep(window);
    let after = background_timeslices(pid);
    let mut total = 0;
    let mut per_thread = Vec::new();
    for (name, n) in &after {
        let n0 = before.iter().find(|(m, _)| m == name).map_or(0, |b| b.1);
        total += n - n0;
        per_thread.push(format!("{name}: {}", n - n0));
    }
    let per_s = total as f64 / window.as_secs_f64();
    // Polling threads made about 460 a second before issue 14; sleeping ones a handful.
    assert!(
        per_s < 20.0,
        "the idle gateway's background threads woke {per_s:.0} times a second: {per_thread:?}"
    );

    // A record after the idle spell wakes the journal thread and is delivered.
    chat(&gw);
    assert!(r.wait_for(2, Duration::from_secs(5)), "a record made after an idle spell was not delivered");
}
