#!/usr/bin/env bash
# Side-by-side benchmark: direct to the backend, LLMProxy (io_uring and epoll), the hyper baseline
# (benches/baseline, the original design sketch) and nginx, on loopback, pinned with taskset:
# load generator and backends on CORE_LOAD (0), the proxy under test alone on CORE_PROXY (1), one
# worker each. Contenders alternate within each round; the report quotes medians over the rounds.
#
#   scripts/bench.sh                 # ROUNDS=3
#   ROUNDS=5 WRK_DUR=15 scripts/bench.sh
#   scripts/bench.sh streams         # streams at scale instead: scripts/bench-streams.sh (its own knobs)
#
# Env: ROUNDS (3), WRK_DUR (10 s, 32 connections), WRK1_DUR (5 s, 1 connection), SSE_DUR (5 s per
# stream run), MEM_STREAMS (1000), CORE_LOAD (0), CORE_PROXY (1), SKIP_INSTALL=1, SKIP_BUILD=1,
# KEEP_WORK=1 (keep logs and raw results in the work dir).
# Output: a markdown report on stdout and in bench-results/latest.md (raw data: bench-results/latest.jsonl).
set -euo pipefail

if [[ "${1:-}" == streams ]]; then
    exec "$(dirname "$0")/bench-streams.sh"
fi
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}
WRK_DUR=${WRK_DUR:-10}
WRK1_DUR=${WRK1_DUR:-5}
SSE_DUR=${SSE_DUR:-5}
MEM_STREAMS=${MEM_STREAMS:-1000}
CORE_LOAD=${CORE_LOAD:-0}
CORE_PROXY=${CORE_PROXY:-1}
CMDLINE="ROUNDS=$ROUNDS WRK_DUR=$WRK_DUR WRK1_DUR=$WRK1_DUR SSE_DUR=$SSE_DUR MEM_STREAMS=$MEM_STREAMS scripts/bench.sh"

# Loopback ports.
P_JSON=18001   # nginx: fixed vLLM-like JSON body (non-stream backend)
P_HOOK=18002   # nginx: usage webhook receiver (return 200)
P_MOCK=18003   # llmproxy mock-backend (stream backend)
P_PROXY=18010  # the contender under test

log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }

# ---------------------------------------------------------------------------------------------
# Install and build.
if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
    need=()
    command -v wrk >/dev/null || need+=(wrk)
    command -v nginx >/dev/null || need+=(nginx-light)
    command -v taskset >/dev/null || need+=(util-linux)
    command -v pgrep >/dev/null || need+=(procps)
    command -v curl >/dev/null || need+=(curl)
    command -v python3 >/dev/null || need+=(python3)
    if ((${#need[@]})); then
        log "installing ${need[*]}"
        SUDO=""
        [[ $(id -u) == 0 ]] || SUDO=sudo
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
    fi
fi
MAIN_TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
TOOLS_TARGET=$MAIN_TARGET/bench-tools
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building llmproxy, baseline and sse-load (release)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$MAIN_TARGET cargo build --release --quiet --bin llmproxy)
    (cd "$ROOT/benches/baseline" && CARGO_TARGET_DIR=$TOOLS_TARGET cargo build --release --quiet)
    (cd "$ROOT/benches/loadgen" && CARGO_TARGET_DIR=$TOOLS_TARGET cargo build --release --quiet)
fi
LLMPROXY=$MAIN_TARGET/release/llmproxy
BASELINE=$TOOLS_TARGET/release/llmproxy-baseline
SSELOAD=$TOOLS_TARGET/release/sse-load
NULLRELAY=$TOOLS_TARGET/release/null-relay
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
for b in "$LLMPROXY" "$BASELINE" "$SSELOAD" "$NGINX"; do
    [[ -x $b ]] || { echo "missing binary $b" >&2; exit 1; }
done
if (($(nproc) <= CORE_PROXY)); then
    echo "need at least $((CORE_PROXY + 1)) cores (have $(nproc))" >&2
    exit 1
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d /tmp/llmproxy-bench.XXXXXX)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
PIDS=()
cleanup() {
    local rc=$?
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ "${KEEP_WORK:-0}" == 1 || $rc != 0 ]]; then
        echo "work dir kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background, logs to $WORK/NAME.log, sets $LAST_PID.
start() {
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}
stop() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
wait_port() {
    local port=$1 i
    for ((i = 0; i < 100; i++)); do
        if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/health"; then return 0; fi
        sleep 0.1
    done
    echo "nothing answers on port $port" >&2
    return 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# core_ticks CORE: "busy total steal" clock ticks of one core (from /proc/stat).
core_ticks() { awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9, $9}' /proc/stat; }
# noise_record ROUND NAME PREFIX "BEFORE" "AFTER" PROXY_TICKS: share of the proxy core used by anything other
# than the proxy (other processes on the machine, interrupts), and its steal time, in percent.
noise_record() {
    local b0 t0 s0 b1 t1 s1
    read -r b0 t0 s0 <<<"$4"
    read -r b1 t1 s1 <<<"$5"
    ((t1 > t0)) || return 0
    record "$1" "$2" "$3_foreign_core_pct" "$(((b1 - b0 - $6) * 100 / (t1 - t0)))"
    record "$1" "$2" "$3_steal_core_pct" "$(((s1 - s0) * 100 / (t1 - t0)))"
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
record() { # record ROUND CONTENDER METRIC VALUE
    printf '{"round":%s,"contender":"%s","metric":"%s","value":%s}\n' "$1" "$2" "$3" "$4" >>"$RESULTS"
}

# ---------------------------------------------------------------------------------------------
# Configs.
# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
write_backends_conf

nginx_proxy_conf() { # upstream_port
    nginx_common "proxy-$1"
    cat <<EOF
    upstream backend { server 127.0.0.1:$1; keepalive 1024; keepalive_requests 10000000; }
    server {
        listen 127.0.0.1:$P_PROXY backlog=4096;
        client_max_body_size 16m;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 300s;
        }
    }
}
EOF
}
write_post_lua

# start_contender NAME UPSTREAM_PORT: starts it pinned to CORE_PROXY; sets PORT and PID (the
# process whose CPU and RSS are measured: nginx's worker). "direct" starts nothing.
start_contender() {
    local name=$1 up=$2
    PID="" PORT=$P_PROXY CONTENDER_MAIN=""
    case $name in
    direct) PORT=$up; return 0 ;;
    llmproxy-uring | llmproxy-epoll | llmproxy-uring-nometer)
        local driver=io_uring meter=true
        [[ $name == llmproxy-epoll ]] && driver=epoll
        [[ $name == llmproxy-uring-nometer ]] && meter=false
        llmproxy_conf "$up" "$driver" "$meter" >"$WORK/$name.toml"
        start "$name-$up" env LLMPROXY_DRIVER=$driver RUST_LOG=warn taskset -c "$CORE_PROXY" "$LLMPROXY" --config "$WORK/$name.toml"
        PID=$LAST_PID
        ;;
    baseline | baseline-nometer)
        local meter=true
        [[ $name == baseline-nometer ]] && meter=false
        baseline_conf "$up" "$meter" >"$WORK/$name.toml"
        start "$name-$up" taskset -c "$CORE_PROXY" "$BASELINE" --config "$WORK/$name.toml" --workers 1
        PID=$LAST_PID
        ;;
    floor)
        start "floor-$up" taskset -c "$CORE_PROXY" "$NULLRELAY" --listen "127.0.0.1:$P_PROXY" --backend "127.0.0.1:$up"
        PID=$LAST_PID
        ;;
    nginx)
        nginx_proxy_conf "$up" >"$WORK/nginx-$up.conf"
        mkdir -p "$WORK/proxy-$up-body"
        start "nginx-$up" taskset -c "$CORE_PROXY" "$NGINX" -c "$WORK/nginx-$up.conf" -p "$WORK"
        PID=$LAST_PID
        ;;
    *) echo "unknown contender $name" >&2; return 1 ;;
    esac
    wait_port "$PORT"
    if [[ $name == nginx ]]; then
        local w
        w=$(pgrep -P "$PID" | head -1)
        CONTENDER_MAIN=$PID
        PID=$w
    else
        CONTENDER_MAIN=$PID
    fi
}
stop_contender() {
    [[ -n ${CONTENDER_MAIN:-} && -n $PID ]] || return 0
    stop "$CONTENDER_MAIN"
    CONTENDER_MAIN=""
}

# wrk_run ROUND NAME CONNS DUR PREFIX: records rps, p50/p99 (us), errors, cpu_us_per_req.
wrk_run() {
    local round=$1 name=$2 conns=$3 dur=$4 prefix=$5 out c0 c1 k0 k1 l0 l1 load_busy
    out=$WORK/wrk-$round-$name-$prefix.txt
    k0=$(core_ticks "$CORE_PROXY")
    l0=$(core_ticks "$CORE_LOAD")
    c0=0
    [[ -n $PID ]] && c0=$(cpu_ticks "$PID")
    taskset -c "$CORE_LOAD" wrk -t1 -c"$conns" -d"${dur}s" --latency -s "$WORK/post.lua" \
        "http://127.0.0.1:$PORT/v1/chat/completions" >"$out" 2>&1 || true
    c1=0
    [[ -n $PID ]] && c1=$(cpu_ticks "$PID")
    k1=$(core_ticks "$CORE_PROXY")
    l1=$(core_ticks "$CORE_LOAD")
    noise_record "$round" "$name" "$prefix" "$k0" "$k1" "$((c1 - c0))"
    # Busy ticks of the load core (wrk and the backend): what caps throughput once the proxy is fast.
    load_busy=$(($(echo "$l1" | cut -d' ' -f1) - $(echo "$l0" | cut -d' ' -f1)))
    python3 - "$out" "$round" "$name" "$prefix" "$((c1 - c0))" "$(getconf CLK_TCK)" "$([[ -n $PID ]] && echo 1 || echo 0)" "$load_busy" >>"$RESULTS" <<'PY'
import json, re, sys
path, rnd, name, prefix, ticks, hz, has_pid, load_busy = sys.argv[1:]
t = open(path).read()
def dur_us(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", s)
    v, u = float(m.group(1)), m.group(2)
    return v * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7}[u]
out = {}
m = re.search(r"Requests/sec:\s+([\d.]+)", t)
out["rps"] = float(m.group(1)) if m else 0.0
for p in ("50", "99"):
    m = re.search(r"^\s+%s%%\s+(\S+)" % p, t, re.M)
    if m: out["p%s_us" % p] = dur_us(m.group(1))
m = re.search(r"(\d+) requests in", t)
reqs = int(m.group(1)) if m else 0
errs = 0
m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
if m: errs += int(m.group(1))
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
if m: errs += sum(int(x) for x in m.groups())
out["errors"] = errs
if has_pid == "1" and reqs:
    out["cpu_us_per_req"] = int(ticks) * 1e6 / int(hz) / reqs
if reqs:
    out["load_core_us_per_req"] = int(load_busy) * 1e6 / int(hz) / reqs
for k, v in out.items():
    print(json.dumps({"round": int(rnd), "contender": name, "metric": "%s_%s" % (prefix, k), "value": v}))
PY
}

# sse_run ROUND NAME CONC PREFIX [extra sse-load args]
sse_run() {
    local round=$1 name=$2 conc=$3 prefix=$4
    shift 4
    local out=$WORK/sse-$round-$name-$prefix.json k0 k1 c0=0 c1=0
    k0=$(core_ticks "$CORE_PROXY")
    [[ -n $PID ]] && c0=$(cpu_ticks "$PID")
    taskset -c "$CORE_LOAD" "$SSELOAD" --url "http://127.0.0.1:$PORT/v1/chat/completions" -c "$conc" "$@" \
        >"$out" 2>>"$WORK/sse-load.log" || true
    [[ -n $PID ]] && c1=$(cpu_ticks "$PID")
    k1=$(core_ticks "$CORE_PROXY")
    noise_record "$round" "$name" "$prefix" "$k0" "$k1" "$((c1 - c0))"
    record "$round" "$name" "${prefix}_proxy_cpu_pct" "$(((c1 - c0) * 100 / ($(echo "$k1" | cut -d' ' -f2) - $(echo "$k0" | cut -d' ' -f2) + 1)))"
    python3 - "$out" "$round" "$name" "$prefix" >>"$RESULTS" <<'PY'
import json, sys
path, rnd, name, prefix = sys.argv[1:]
try:
    d = json.load(open(path))
except Exception:
    d = {"errors": {"unparsable_output": 1}, "ttft_us": {}, "gap_us": {}, "streams_ok": 0}
def rec(metric, v):
    print(json.dumps({"round": int(rnd), "contender": name, "metric": "%s_%s" % (prefix, metric), "value": v}))
rec("ttft_p50_us", d["ttft_us"].get("p50", 0)); rec("ttft_p99_us", d["ttft_us"].get("p99", 0))
rec("gap_p50_us", d["gap_us"].get("p50", 0)); rec("gap_p99_us", d["gap_us"].get("p99", 0))
rec("streams_ok", d.get("streams_ok", 0)); rec("errors", sum(d["errors"].values()))
PY
}

# rotate ROUND LIST...: the list rotated by ROUND, so contenders alternate position across rounds.
rotate() {
    local r=$1
    shift
    local a=("$@") n=$# i
    for ((i = 0; i < n; i++)); do echo "${a[$(((i + r) % n))]}"; done
}

# ---------------------------------------------------------------------------------------------
log "work dir $WORK"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
start backends taskset -c "$CORE_LOAD" "$NGINX" -c "$WORK/backends.conf" -p "$WORK"
wait_port $P_JSON
wait_port $P_HOOK
start mock taskset -c "$CORE_LOAD" "$LLMPROXY" mock-backend --listen "127.0.0.1:$P_MOCK" --flavor vllm \
    --ttft-ms 20 --itl-ms 10 --tokens 64
wait_port $P_MOCK

NONSTREAM=(direct llmproxy-uring llmproxy-epoll baseline nginx llmproxy-uring-nometer baseline-nometer floor)
STREAM=(direct llmproxy-uring llmproxy-epoll baseline nginx)
for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round/$ROUNDS: non-streaming"
    for name in $(rotate "$round" "${NONSTREAM[@]}"); do
        start_contender "$name" $P_JSON
        taskset -c "$CORE_LOAD" wrk -t1 -c32 -d2s -s "$WORK/post.lua" "http://127.0.0.1:$PORT/v1/chat/completions" >/dev/null 2>&1 || true
        wrk_run "$round" "$name" 32 "$WRK_DUR" c32
        case $name in *nometer | floor) ;; *) wrk_run "$round" "$name" 1 "$WRK1_DUR" c1 ;; esac
        stop_contender
        log "  $name done"
    done
    log "round $round/$ROUNDS: streaming"
    for name in $(rotate "$round" "${STREAM[@]}"); do
        start_contender "$name" $P_MOCK
        sse_run "$round" "$name" 1 warm -d 1 # warm-up, not reported
        sse_run "$round" "$name" 1 s1 -d "$SSE_DUR"
        sse_run "$round" "$name" 256 s256 -d "$SSE_DUR" --ramp-ms 500
        if [[ -n $PID ]]; then
            sleep 1
            idle=$(rss_kib "$PID")
            rm -f "$WORK/ready"
            # Long, slow streams (100 tokens, 200 ms apart) so all of them are open at once; cut at the deadline.
            taskset -c "$CORE_LOAD" "$SSELOAD" --url "http://127.0.0.1:$PORT/v1/chat/completions" -c "$MEM_STREAMS" \
                -d 6 --grace 0 --ramp-ms 2000 --ready-file "$WORK/ready" \
                --header 'x-mock-itl-ms: 200' --header 'x-mock-tokens: 100' \
                >"$WORK/mem-$round-$name.json" 2>>"$WORK/sse-load.log" &
            lg=$!
            PIDS+=("$lg")
            for ((i = 0; i < 100; i++)); do [[ -f $WORK/ready ]] && break; sleep 0.1; done
            if [[ -f $WORK/ready ]]; then
                sleep 1
                busy=$(rss_kib "$PID")
                record "$round" "$name" mem_kib_per_stream "$(python3 -c "print(($busy - $idle) / $MEM_STREAMS)")"
                record "$round" "$name" mem_idle_kib "$idle"
            else
                record "$round" "$name" mem_not_ready 1
            fi
            wait "$lg" || true
            stop "$lg"
        fi
        stop_contender
        log "  $name done"
    done
done

# Anomalies: gateway log lines at warn/error level.
for f in "$WORK"/llmproxy-*.log; do
    [[ -f $f ]] || continue
    n=$(grep -cE 'ERROR|WARN' "$f" || true)
    ((n == 0)) || record 0 "$(basename "$f" .log)" log_warn_error_lines "$n"
done

mkdir -p "$ROOT/bench-results"
cp "$RESULTS" "$ROOT/bench-results/latest.jsonl"
python3 "$ROOT/scripts/bench-report.py" "$RESULTS" "$CMDLINE" "$ROUNDS" "$LOAD_START" | tee "$ROOT/bench-results/latest.md"
