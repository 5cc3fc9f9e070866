//! SIGHUP reload through the real binary: new requests move to the new backends while a stream
//! on the old one finishes whole; an invalid file changes nothing and is logged with every
//! problem; restart-only keys are logged and ignored; an auth key added by a reload works; HUP,
//! USR1 and USR2 never kill the process.

mod common;
use common::*;
use llmproxy::mock::Flavor;
use std::time::Duration;

const CHAT: &str = "/v1/chat/completions";

fn stream_body() -> String {
    r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#.to_string()
}

#[test]
fn sighup_moves_new_requests_while_a_stream_on_the_old_backend_finishes_whole() {
    let old = mock(Flavor::Vllm);
    let new = mock(Flavor::Vllm);
    let gw = Gateway::start(&config_for(&[old.url()], ""));
    let addr = gw.addr;
    // A stream of 40 tokens 100 ms apart on the old backend.
    let stream = std::thread::spawn(move || {
        request(addr, &post(CHAT, &stream_body(), "x-mock-itl-ms: 100\r\nx-mock-tokens: 40\r\n"))
    });
    eventually(10, "the stream reached the old backend", || hits(&old, CHAT) == 1);

    gw.rewrite_config(&config_for(&[new.url()], ""));
    assert!(gw.reload(), "reload applied; log:\n{}", gw.log_text());
    assert!(!stream.is_finished(), "the stream was still in flight during the reload");

    for _ in 0..4 {
        let r = request(addr, &post(CHAT, &chat("m"), ""));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(hits(&new, CHAT), 4, "new requests go to the new backend");
    assert_eq!(hits(&old, CHAT), 1, "nothing new goes to the removed backend");

    let r = stream.join().expect("stream thread");
    assert_eq!(r.status, 200);
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "the stream finished whole: {}", r.text());
    let content = data.iter().filter(|d| d.contains("\"content\"")).count();
    assert!(content >= 40, "every token arrived ({content}): {}", r.text());

    let m = metrics(addr);
    assert_eq!(metric(&m, "llmproxy_config_reloads_total{result=\"ok\"}"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "llmproxy_config_reloads_total{result=\"error\"}"), Some(0.0), "{m}");
    assert_eq!(metric(&m, &format!("llmproxy_backend_up{{backend=\"{}\"}}", new.url())), Some(1.0), "{m}");
    assert!(!m.contains(&format!("backend=\"{}\"", old.url())), "the removed backend's series are gone: {m}");
}

#[test]
fn an_invalid_file_changes_nothing_and_every_problem_is_logged() {
    let a = mock(Flavor::Vllm);
    let b = mock(Flavor::Vllm);
    let gw = Gateway::start(&config_for(&[a.url()], ""));
    let bad = config_for(&[b.url()], "[limits]\nheader_read_timeout = \"ten\"\nmax_conections = 5\n");
    gw.rewrite_config(&bad);
    assert!(!gw.reload(), "an invalid file is refused");
    let log = gw.log_text();
    assert!(log.contains("limits.header_read_timeout"), "{log}");
    assert!(log.contains("limits.max_conections: unknown key"), "{log}");

    let r = request(gw.addr, &post(CHAT, &chat("m"), ""));
    assert_eq!(r.status, 200);
    assert_eq!((hits(&a, CHAT), hits(&b, CHAT)), (1, 0), "the running config stays in use");
    let m = metrics(gw.addr);
    assert_eq!(metric(&m, "llmproxy_config_reloads_total{result=\"error\"}"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "llmproxy_config_reloads_total{result=\"ok\"}"), Some(0.0), "{m}");
}

#[test]
fn restart_only_keys_are_logged_and_ignored_while_the_rest_applies() {
    let a = mock(Flavor::Vllm);
    let b = mock(Flavor::Vllm);
    let gw = Gateway::start(&config_for(&[a.url()], ""));
    let next = config_for(&[b.url()], "[runtime]\nworkers = 1\npin_cores = false\n")
        .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"");
    gw.rewrite_config(&next);
    assert!(gw.reload(), "{}", gw.log_text());
    let log = gw.log_text();
    assert!(log.contains("reload: listen changed"), "{log}");
    assert!(log.contains("reload: runtime changed"), "{log}");
    // Still listening where it was, now in front of the new backend.
    let r = request(gw.addr, &post(CHAT, &chat("m"), ""));
    assert_eq!(r.status, 200);
    assert_eq!((hits(&a, CHAT), hits(&b, CHAT)), (0, 1));
}

#[test]
fn an_auth_key_added_by_a_reload_works_and_a_removed_one_stops_working() {
    let a = mock(Flavor::Vllm);
    let auth = |key: &str| {
        format!("[auth]\nrequired = true\n[[auth.keys]]\nkey = \"{key}\"\nuser_id = \"u-{key}\"\n")
    };
    let gw = Gateway::start(&config_for(&[a.url()], &auth("sk-one")));
    let call = |key: &str| {
        request(gw.addr, &post(CHAT, &chat("m"), &format!("authorization: Bearer {key}\r\n"))).status
    };
    assert_eq!(call("sk-one"), 200);
    assert_eq!(call("sk-two"), 401);
    gw.rewrite_config(&config_for(&[a.url()], &auth("sk-two")));
    assert!(gw.reload(), "{}", gw.log_text());
    assert_eq!(call("sk-two"), 200, "the added key works from the next request on");
    assert_eq!(call("sk-one"), 401, "the removed key no longer works");
}

#[test]
fn hup_usr1_and_usr2_never_kill_the_process() {
    let a = mock(Flavor::Vllm);
    let gw = Gateway::start(&config_for(&[a.url()], ""));
    gw.signal(libc::SIGUSR1);
    gw.signal(libc::SIGUSR2);
    assert!(gw.reload(), "an unchanged file reloads");
    std::thread::sleep(Duration::from_millis(100));
    let r = request(gw.addr, &post(CHAT, &chat("m"), ""));
    assert_eq!(r.status, 200);
    // Dropping the gateway sends SIGTERM and checks that it exits 0.
}
