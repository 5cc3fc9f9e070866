#!/usr/bin/env bash
# Before/after of two llmproxy release binaries, alternating within one run (a refactor's "no
# cost" check): scripts/bench.sh's non-stream setup (nginx JSON backend and webhook receiver on
# core 0, the proxy alone on core 1 with one worker, metering on), a 2 s warm-up then wrk -c32.
# Prints req/s and the proxy's own CPU time per request for each run; pairs alternate order.
#
#   BEFORE=/tmp/llmproxy-old AFTER=target/release/llmproxy flock /work/bench.lock scripts/bench-ab.sh
#
# Env: BEFORE, AFTER (binaries, required), PAIRS (6), DUR (5 s), DRIVER (io_uring | epoll).
# Needs wrk, nginx, curl, taskset and python3 (scripts/bench.sh installs them). The setup (bodies,
# nginx backends, LLMProxy's config) is scripts/bench-lib.sh's, as in scripts/bench.sh.
set -euo pipefail
A=${BEFORE:?BEFORE=path of the old llmproxy binary} B=${AFTER:?AFTER=path of the new llmproxy binary}
PAIRS=${PAIRS:-6} DUR=${DUR:-5} DRIVER=${DRIVER:-io_uring}
WORK=$(mktemp -d /tmp/seams-ab.XXXXXX)
P_JSON=18001 P_HOOK=18002 P_PROXY=18010
CORE_PROXY=1
# shellcheck source=scripts/bench-lib.sh
source "$(dirname "$0")/bench-lib.sh"
write_backends_conf
llmproxy_conf "$P_JSON" "$DRIVER" true >"$WORK/p.toml"
write_post_lua
taskset -c 0 nginx -c "$WORK/backends.conf" -p "$WORK" >/dev/null 2>&1 &
NG=$!
trap 'kill $NG 2>/dev/null; wait $NG 2>/dev/null; rm -rf $WORK' EXIT
sleep 1
echo "load start $(cut -d' ' -f1-3 /proc/loadavg)"
run() { # label bin
    LLMPROXY_DRIVER=$DRIVER RUST_LOG=warn taskset -c 1 "$2" --config "$WORK/p.toml" >"$WORK/p.log" 2>&1 &
    local pid=$!
    for i in $(seq 100); do curl -s -o /dev/null --max-time 1 http://127.0.0.1:$P_PROXY/health && break; sleep 0.1; done
    taskset -c 0 wrk -t1 -c32 -d2s -s "$WORK/post.lua" http://127.0.0.1:$P_PROXY/v1/chat/completions >/dev/null 2>&1 || true
    local c0 c1 out
    c0=$(awk '{print $14+$15}' /proc/$pid/stat)
    out=$(taskset -c 0 wrk -t1 -c32 -d${DUR}s -s "$WORK/post.lua" http://127.0.0.1:$P_PROXY/v1/chat/completions 2>&1)
    c1=$(awk '{print $14+$15}' /proc/$pid/stat)
    kill $pid; wait $pid 2>/dev/null || true
    local reqs rps
    reqs=$(grep -oE '[0-9]+ requests in' <<<"$out" | cut -d' ' -f1)
    rps=$(grep -oE 'Requests/sec: +[0-9.]+' <<<"$out" | awk '{print $2}')
    echo "$1 rps=$rps cpu_us_per_req=$(python3 -c "print(round(($c1-$c0)*1e6/$(getconf CLK_TCK)/$reqs,2))")" | tee -a "$WORK/runs"
}
for ((p = 1; p <= PAIRS; p++)); do
    if ((p % 2)); then run before $A; run after $B; else run after $B; run before $A; fi
done
echo "load end $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$WORK/runs" <<'PY'
import statistics as st, sys
runs = {"before": [], "after": []}
for line in open(sys.argv[1]):
    name, rps, cpu = line.split()
    runs[name].append((float(rps.split("=")[1]), float(cpu.split("=")[1])))
med = lambda k, i: st.median(r[i] for r in runs[k])
pairs = list(zip(runs["before"], runs["after"]))
print("median req/s before %.0f after %.0f (after/before %.2f); CPU us/request before %.2f after %.2f "
      "(after/before %.3f, median of paired ratios %.3f)" % (med("before", 0), med("after", 0),
      med("after", 0) / med("before", 0), med("before", 1), med("after", 1), med("after", 1) / med("before", 1),
      st.median(a[1] / b[1] for b, a in pairs)))
PY
