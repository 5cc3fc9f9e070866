//! The official `openai` Python SDK against the real binary: starts a simulated backend and the
//! gateway, then runs `python3 -m pytest -q tests/python` with LLMPROXY_URL set. Skipped (with a note)
//! when python3, openai or pytest is missing (`pip install openai pytest flask`; flask is for the
//! example receivers' tests in the same folder), except under CI (`CI=true`), where that fails.

mod common;

use common::*;
use llmproxy::mock::Flavor;
use std::process::Command;

fn python_ready() -> bool {
    Command::new("python3")
        .args(["-c", "import openai, pytest"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn openai_python_sdk_and_example_receivers() {
    if !python_ready() {
        prereq::missing("python3 with the openai and pytest packages (pip install openai pytest flask)");
        return;
    }
    for flavor in [Flavor::Vllm, Flavor::Openai] {
        let b = mock(flavor);
        let gw = Gateway::start(&config_for(&[b.url()], ""));
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("python3")
            .args(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/python"])
            .current_dir(dir)
            .env("LLMPROXY_URL", gw.url())
            .output()
            .expect("run pytest");
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprintln!("{flavor}: {text}");
        assert!(
            out.status.success(),
            "pytest failed against {flavor}:\n{text}\ngateway log:\n{}",
            gw.log_text()
        );
        assert!(
            !text.lines().any(|l| l.starts_with("SKIPPED") && l.contains("test_openai_sdk.py")),
            "SDK tests skipped: {text}"
        );
    }
}
