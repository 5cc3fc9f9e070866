#!/usr/bin/env bash
# Before/after of two llmproxy release binaries, alternating within one run (a refactor's "no
# cost" check): scripts/bench.sh's non-stream setup (nginx JSON backend and webhook receiver on
# core 0, the proxy alone on core 1 with one worker, metering on), a 2 s warm-up then wrk -c32.
# Prints req/s and the proxy's own CPU time per request for each run; pairs alternate order.
#
#   BEFORE=/tmp/llmproxy-old AFTER=target/release/llmproxy flock /work/bench.lock scripts/bench-ab.sh
#
# Env: BEFORE, AFTER (binaries, required), PAIRS (6), DUR (5 s), DRIVER (io_uring | epoll).
# Needs wrk, nginx, curl, taskset and python3 (scripts/bench.sh installs them).
set -euo pipefail
A=${BEFORE:?BEFORE=path of the old llmproxy binary} B=${AFTER:?AFTER=path of the new llmproxy binary}
PAIRS=${PAIRS:-6} DUR=${DUR:-5} DRIVER=${DRIVER:-io_uring}
WORK=$(mktemp -d /tmp/seams-ab.XXXXXX)
P_JSON=18001 P_HOOK=18002 P_PROXY=18010
JSON_BODY='{"id":"chatcmpl-b1f0c2d3e4f5a6b7","object":"chat.completion","created":1768386600,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"message":{"role":"assistant","reasoning_content":null,"content":"The sea is calm tonight, the tide is full, the moon lies fair upon the straits.","tool_calls":[]},"logprobs":null,"finish_reason":"stop","stop_reason":null}],"usage":{"prompt_tokens":25,"total_tokens":47,"completion_tokens":22,"prompt_tokens_details":null},"prompt_logprobs":null,"kv_transfer_params":null}'
REQ_BODY='{"model":"meta-llama/Llama-3.1-8B-Instruct","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a short poem about the sea."}],"max_tokens":64,"temperature":0.7}'
cat >"$WORK/backends.conf" <<C
worker_processes 1;
daemon off;
master_process on;
pid $WORK/b.pid;
error_log $WORK/b.err warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path $WORK/cb;
    proxy_temp_path $WORK/cp;
    fastcgi_temp_path $WORK/cf;
    uwsgi_temp_path $WORK/cu;
    scgi_temp_path $WORK/cs;
    server { listen 127.0.0.1:$P_JSON backlog=4096; location / { default_type application/json; return 200 '$JSON_BODY'; } }
    server { listen 127.0.0.1:$P_HOOK backlog=4096; client_body_buffer_size 1m; location / { return 200; } }
}
C
cat >"$WORK/p.toml" <<C
listen = "127.0.0.1:$P_PROXY"
shutdown_grace = "2s"
[runtime]
workers = 1
pin_cores = true
cores = [1]
driver = "$DRIVER"
[[backends]]
url = "http://127.0.0.1:$P_JSON"
[usage_hook]
enabled = true
url = "http://127.0.0.1:$P_HOOK/llm-usage"
batch_max = 100
spool_dir = "$WORK/spool"
C
cat >"$WORK/post.lua" <<C
wrk.method = "POST"
wrk.body = '$REQ_BODY'
wrk.headers["Content-Type"] = "application/json"
C
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
