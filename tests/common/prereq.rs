//! Missing test prerequisites (the shared fixtures, python3 with its packages): a skip with a note
//! on a developer's machine, a failure under CI (`CI=true`), so a green CI means the check ran.
//! Test threads only.

/// Whether the tests run under CI (`CI=true`, as `.ci/run` is started; `CI=1` too).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Reports that `what` is missing: panics under CI, else prints a note so the caller can skip.
#[track_caller]
pub fn missing(what: &str) {
    assert!(!under_ci(), "test prerequisite missing under CI: {what}");
    eprintln!("note: {what} missing; skipped (under CI=true this fails)");
}
