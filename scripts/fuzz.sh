#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that read bytes from sockets and files (fuzz/: cargo-fuzz
# targets). Installs cargo-fuzz and a nightly toolchain if missing, seeds each target's corpus
# (the backend transcripts in ../shared/fixtures/backends when that folder exists, read in place,
# plus a few hand-made inputs), then runs every target for FUZZ_SECS, JOBS at a time.
#
#   scripts/fuzz.sh                  # every target, 60 s each
#   FUZZ_SECS=600 scripts/fuzz.sh sse_split chunked_split
#
# A crash leaves its input in fuzz/artifacts/<target>/; `cargo +nightly fuzz run <target> <file>`
# replays it. Each crash fixed becomes an ordinary unit test in the product's suite. Not part of
# scripts/test.sh: libFuzzer needs a nightly compiler and minutes per target.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
FUZZ_SECS=${FUZZ_SECS:-60} JOBS=${JOBS:-$(nproc)}
FIXTURES=${FIXTURES:-../shared/fixtures/backends}

rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)

# The split targets read: flags byte, cut count, 2-byte cuts, body. A seed is (flags 0, no cuts)
# followed by a transcript; the fuzzer finds its own cuts.
seed() { # target file [flags]
    local dir=fuzz/corpus/$1
    mkdir -p "$dir"
    { printf "\\x$(printf %02x "${3:-0}")\\x00"; cat "$2"; } >"$dir/seed-$(basename "$(dirname "$2")")-$(basename "$2")"
}
if [ -d "$FIXTURES" ]; then
    for f in "$FIXTURES"/*/*.sse; do
        seed sse_split "$f" 0; seed sse_split "$f" 3; seed lines_split "$f" 8
    done
    for f in "$FIXTURES"/*/*.json; do
        seed body_usage_split "$f"; seed lines_split "$f" 0
    done
    for f in "$FIXTURES"/ollama/*; do seed lines_split "$f" 12; done
    for f in "$FIXTURES"/llamacpp/*; do seed lines_split "$f" 13; done
    for f in "$FIXTURES"/sglang/*; do seed lines_split "$f" 14; done
fi
for t in "${targets[@]}"; do mkdir -p "fuzz/corpus/$t"; done
printf '\x00\x005\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nTrailer: t\r\n\r\n' >fuzz/corpus/chunked_split/seed-1
printf '\x00POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nContent-Length: 2\r\nX-User-Id: u\r\n\r\n{}' >fuzz/corpus/http1_heads/seed-req
printf '\x01HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n' >fuzz/corpus/http1_heads/seed-resp
printf '\x00\x00HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x\r\nok\r\n0\r\nT: 1\r\n\r\n' >fuzz/corpus/webhook_answer/seed-1
printf '\x00\x00HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok' >fuzz/corpus/webhook_answer/seed-2
printf '\x00{"model":"m","stream":true,"stream_options":{"include_usage":false},"messages":[{"role":"user","content":"hi \\u00e9"}],"max_tokens":5,"n":2,"user":"u"}' >fuzz/corpus/request_body/seed-1
printf '\x02{"stream":true,"model":"m"}' >fuzz/corpus/request_body/seed-2
[ -f config.example.toml ] && cp config.example.toml fuzz/corpus/config_text/seed-example

(cd fuzz && cargo +nightly fuzz build -O)
fail=0
run() {
    local t=$1
    if (cd fuzz && cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$FUZZ_SECS" \
        -max_len=65536 -print_final_stats=1 >"../target/fuzz-$t.log" 2>&1); then
        echo "$t: ok ($(grep -oE 'stat::number_of_executed_units: *[0-9]+' "target/fuzz-$t.log" | grep -oE '[0-9]+$') runs)"
    else
        echo "$t: FAILED (target/fuzz-$t.log, fuzz/artifacts/$t/)"; return 1
    fi
}
mkdir -p target
pids=()
for t in "${targets[@]}"; do
    run "$t" & pids+=($!)
    if [ ${#pids[@]} -ge "$JOBS" ]; then wait "${pids[0]}" || fail=1; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p" || fail=1; done
exit $fail
