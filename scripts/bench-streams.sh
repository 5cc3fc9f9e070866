#!/usr/bin/env bash
# Streams at scale (issue 14, CONTRACT section 11): N slow SSE streams held open at once through one
# proxy worker on one pinned core, against LLMProxy (io_uring and epoll), the hyper baseline and nginx
# (`proxy_buffering off`) and the floor (null-relay: bytes copied unparsed, one read and one write per
# event), with "direct" (client to backend) as the delay reference. Contenders
# alternate within each round; the report quotes medians over rounds.
#
#   scripts/bench-streams.sh                    # or: scripts/bench.sh streams
#   STREAMS=10000 EVERY_MS=1000 ROUNDS=3 scripts/bench-streams.sh
#
# benches/loadgen's stream-backend (one epoll thread) sends one small chunk per stream every EVERY_MS
# with its send time embedded; stream-load (one epoll thread) holds the N streams, times each event
# from that stamp, and over a WINDOW_MS window (once all N are open and SETTLE_MS has passed) reads
# the proxy's CPU time (all threads) and RSS. Both run on CORE_LOAD, the proxy alone on CORE_PROXY.
# Figures: RSS per open stream ((RSS with N open - idle RSS) / N), CPU per relayed event, and delay
# per event p50/p99 (added = contender - direct, same round).
#
# Env: STREAMS (10000, lowered to what the open-files limit allows: a proxy holds 2 descriptors a
# stream, plus FD_RESERVE (400) for the rest), EVERY_MS (1000), RAMP_MS (1 ms a stream), SETTLE_MS (3000), WINDOW_MS (15000), ROUNDS (3),
# CONTENDERS ("direct llmproxy-uring llmproxy-epoll baseline nginx floor"), CORE_LOAD (0), CORE_PROXY (1),
# PROCS (1: proxy processes, all on CORE_PROXY and sharing the port with SO_REUSEPORT, each of one worker;
# nginx: worker_processes. 2 lets 10,000 streams through one core where a process may hold only
# 20,000 descriptors; CPU and RSS are summed over the processes),
# SKIP_INSTALL=1, SKIP_BUILD=1, KEEP_WORK=1, LLMPROXY_BIN (another llmproxy binary), LLMPROXY_BIN2 (a second
# one, run as the contenders llmproxy2-uring / llmproxy2-epoll: before/after in the same rounds).
# Output: markdown on stdout and in bench-results/streams-latest.md (raw: streams-latest.jsonl).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}
EVERY_MS=${EVERY_MS:-1000}
SETTLE_MS=${SETTLE_MS:-3000}
WINDOW_MS=${WINDOW_MS:-15000}
CORE_LOAD=${CORE_LOAD:-0}
CORE_PROXY=${CORE_PROXY:-1}
CONTENDERS=(${CONTENDERS:-direct llmproxy-uring llmproxy-epoll baseline nginx floor})
P_HOOK=18302    # nginx: usage webhook receiver (return 200)
P_BACKEND=18304 # stream-backend
P_PROXY=18310   # the contender under test
P_ADMIN=18320   # LLMProxy's admin_listen (/metrics), one port per process: 18320, 18321, ...
PROCS=${PROCS:-1}

log() { echo "[bench-streams $(date +%H:%M:%S)] $*" >&2; }

if [[ "${SKIP_INSTALL:-0}" != 1 ]]; then
    need=()
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx-light)
    command -v taskset >/dev/null || need+=(util-linux)
    command -v curl >/dev/null || need+=(curl)
    command -v python3 >/dev/null || need+=(python3)
    command -v pgrep >/dev/null || need+=(procps)
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
    log "building llmproxy, baseline and loadgen (release)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$MAIN_TARGET cargo build --release --quiet --bin llmproxy)
    (cd "$ROOT/benches/baseline" && CARGO_TARGET_DIR=$TOOLS_TARGET cargo build --release --quiet)
    (cd "$ROOT/benches/loadgen" && CARGO_TARGET_DIR=$TOOLS_TARGET cargo build --release --quiet)
fi
LLMPROXY=${LLMPROXY_BIN:-$MAIN_TARGET/release/llmproxy}
LLMPROXY2=${LLMPROXY_BIN2:-}
BASELINE=$TOOLS_TARGET/release/llmproxy-baseline
SLOAD=$TOOLS_TARGET/release/stream-load
SBACKEND=$TOOLS_TARGET/release/stream-backend
NULLRELAY=$TOOLS_TARGET/release/null-relay
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
need_bins=("$SLOAD" "$SBACKEND" "$NGINX")
[[ " ${CONTENDERS[*]} " == *" llmproxy-"* ]] && need_bins+=("$LLMPROXY")
[[ " ${CONTENDERS[*]} " == *" llmproxy2-"* ]] && need_bins+=("${LLMPROXY2:-LLMPROXY_BIN2 (unset)}")
[[ " ${CONTENDERS[*]} " == *" baseline "* ]] && need_bins+=("$BASELINE")
[[ " ${CONTENDERS[*]} " == *" floor "* ]] && need_bins+=("$NULLRELAY")
for b in "${need_bins[@]}"; do
    [[ -x $b ]] || { echo "missing binary $b" >&2; exit 1; }
done
if (($(nproc) <= CORE_PROXY)); then
    echo "need at least $((CORE_PROXY + 1)) cores (have $(nproc))" >&2
    exit 1
fi

# Open files: every process here raises its soft limit to the hard one; N is what one proxy process
# can hold: 2 descriptors a stream (client socket, backend socket), plus FD_RESERVE for the rest:
# listeners, rings, logs, webhook sockets, and nginx's idle upstream keepalive connections left by
# the warm-up (200), which count against its worker_connections.
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
WANT=${STREAMS:-10000}
FD_RESERVE=${FD_RESERVE:-400}
FIT=$((PROCS * ((NOFILE - FD_RESERVE) / 2) / 100 * 100))
STREAMS=$WANT
if ((STREAMS > FIT)); then
    log "open-files hard limit $NOFILE holds $FIT streams through $PROCS proxy process(es) (2 descriptors each), not $WANT: using $FIT (PROCS=2 shares them between two processes on the same core)"
    STREAMS=$FIT
fi
RAMP_MS=${RAMP_MS:-$STREAMS}
# Every stream outlives ramp + settle + window with 5 s to spare.
EVENTS=$(((RAMP_MS + SETTLE_MS + WINDOW_MS + 5000 + EVERY_MS - 1) / EVERY_MS))
CMDLINE="STREAMS=$WANT EVERY_MS=$EVERY_MS WINDOW_MS=$WINDOW_MS ROUNDS=$ROUNDS PROCS=$PROCS scripts/bench-streams.sh"

WORK=$(mktemp -d /tmp/llmproxy-bench-streams.XXXXXX)
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
PIDS=()
cleanup() {
    local rc=$?
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ "${KEEP_WORK:-0}" == 1 || $rc != 0 ]]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start() { # start NAME CMD...: background, log to $WORK/NAME.log, sets LAST_PID
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}
stop() {
    local pid=$1 keep=() p
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
wait_tcp() { # a TCP connect, not an HTTP request: through a proxy any path here is a stream
    local i
    for ((i = 0; i < 100; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}
record() { printf '{"round":%s,"contender":"%s","metric":"%s","value":%s}\n' "$1" "$2" "$3" "$4" >>"$RESULTS"; }

# shellcheck source=scripts/bench-lib.sh
source "$ROOT/scripts/bench-lib.sh"
nginx_head() { nginx_common "$1" "$NOFILE" "$((NOFILE - 100))"; }
{
    nginx_head hook
    echo "    server { listen 127.0.0.1:$P_HOOK backlog=4096; client_body_buffer_size 1m; location / { return 200; } }"
    echo "}"
} >"$WORK/hook.conf"
{
    nginx_head proxy | sed "s/^worker_processes 1;/worker_processes $PROCS;/"
    cat <<EOF
    upstream backend { server 127.0.0.1:$P_BACKEND; keepalive 1024; keepalive_requests 10000000; }
    server {
        listen 127.0.0.1:$P_PROXY backlog=65535$( ((PROCS > 1)) && echo " reuseport");
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
} >"$WORK/nginx.conf"
streams_llmproxy_conf() { # driver process-number
    cat <<EOF
listen = "127.0.0.1:$P_PROXY"
admin_listen = "127.0.0.1:$((P_ADMIN + $2))"
shutdown_grace = "2s"
[runtime]
workers = 1
pin_cores = true
cores = [$CORE_PROXY]
driver = "$1"
[limits]
max_connections = 1000000
# nginx's proxy_connect_timeout default: while thousands of streams open, the backend's accept queue
# (capped by net.core.somaxconn) can overflow and a SYN wait its retransmission; with the default 2 s
# LLMProxy would mark the backend down where nginx waits.
upstream_connect_timeout = "60s"
[[backends]]
url = "http://127.0.0.1:$P_BACKEND"
# The benchmark backend shares the oversubscribed load core with the client: with the default 1 s,
# one slow /health answer marks it down and streams opened then get 503 (nginx has no active
# checks). This measures relaying, not health checking.
[health_check]
timeout = "10s"
[usage_hook]
enabled = true
url = "http://127.0.0.1:$P_HOOK/llm-usage"
batch_max = 100
spool_dir = "$WORK/spool-$1-$2"
EOF
}
cat >"$WORK/baseline.toml" <<EOF
listen = "127.0.0.1:$P_PROXY"
[[backends]]
url = "http://127.0.0.1:$P_BACKEND"
# The benchmark backend shares the oversubscribed load core with the client: with the default 1 s,
# one slow /health answer marks it down and streams opened then get 503 (nginx has no active
# checks). This measures relaying, not health checking.
[health_check]
timeout = "10s"
[usage_hook]
enabled = true
url = "http://127.0.0.1:$P_HOOK/llm-usage"
EOF

# start_contender NAME: sets PORT, MEASURED (the processes measured: nginx's workers) and MAINPIDS
# (what to stop). PROCS copies of each proxy share the port (SO_REUSEPORT), all on CORE_PROXY.
start_contender() {
    MEASURED=() MAINPIDS=() PORT=$P_PROXY
    local k
    case $1 in
    direct) PORT=$P_BACKEND; return 0 ;;
    llmproxy-uring | llmproxy-epoll | llmproxy2-uring | llmproxy2-epoll)
        local d=io_uring bin=$LLMPROXY
        [[ $1 == *-epoll ]] && d=epoll
        [[ $1 == llmproxy2-* ]] && bin=$LLMPROXY2
        for ((k = 0; k < PROCS; k++)); do
            streams_llmproxy_conf "$d" "$k" >"$WORK/$1-$k.toml"
            start "$1-$k" env LLMPROXY_DRIVER=$d RUST_LOG=warn taskset -c "$CORE_PROXY" "$bin" --config "$WORK/$1-$k.toml"
            MAINPIDS+=("$LAST_PID")
        done
        ;;
    baseline)
        for ((k = 0; k < PROCS; k++)); do
            start "baseline-$k" taskset -c "$CORE_PROXY" "$BASELINE" --config "$WORK/baseline.toml" --workers 1
            MAINPIDS+=("$LAST_PID")
        done
        ;;
    # The floor: benches/loadgen's null-relay copies bytes between each client and its own backend
    # connection (level-triggered epoll, one read and one write per event, nothing parsed): the CPU
    # per event no proxy built on those socket operations goes below.
    floor)
        for ((k = 0; k < PROCS; k++)); do
            start "floor-$k" taskset -c "$CORE_PROXY" "$NULLRELAY" --listen "127.0.0.1:$P_PROXY" --backend "127.0.0.1:$P_BACKEND"
            MAINPIDS+=("$LAST_PID")
        done
        ;;
    nginx)
        mkdir -p "$WORK/proxy-body"
        start nginx taskset -c "$CORE_PROXY" "$NGINX" -c "$WORK/nginx.conf" -p "$WORK"
        MAINPIDS+=("$LAST_PID")
        ;;
    *) echo "unknown contender $1" >&2; return 1 ;;
    esac
    wait_tcp $P_PROXY
    if [[ $1 == llmproxy* ]]; then
        for ((k = 0; k < PROCS; k++)); do wait_tcp $((P_ADMIN + k)); done
    elif ((PROCS > 1)); then
        sleep 0.5 # every copy bound before the streams open
    fi
    MEASURED=("${MAINPIDS[@]}")
    if [[ $1 == nginx ]]; then
        for ((k = 0; k < 50; k++)); do
            mapfile -t MEASURED < <(pgrep -P "${MAINPIDS[0]}")
            ((${#MEASURED[@]} >= PROCS)) && break
            sleep 0.1
        done
    fi
}

log "work dir $WORK; $STREAMS streams, one event every $EVERY_MS ms, $EVENTS events each; open files $NOFILE"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
start hook taskset -c "$CORE_LOAD" "$NGINX" -c "$WORK/hook.conf" -p "$WORK"
start backend taskset -c "$CORE_LOAD" "$SBACKEND" --listen "127.0.0.1:$P_BACKEND" --every-ms "$EVERY_MS" --events "$EVENTS"
wait_tcp $P_HOOK
wait_tcp $P_BACKEND
URL_PATH=/v1/chat/completions
for ((round = 1; round <= ROUNDS; round++)); do
    n=${#CONTENDERS[@]}
    for ((i = 0; i < n; i++)); do
        name=${CONTENDERS[$(((i + round) % n))]}
        log "round $round/$ROUNDS: $name"
        start_contender "$name"
        # Warm-up (not measured): 200 short streams, so pools and allocator arenas exist before the idle RSS.
        taskset -c "$CORE_LOAD" "$SLOAD" --url "http://127.0.0.1:$PORT$URL_PATH" -c 200 --ramp-ms 200 \
            --settle-ms 0 --window-ms 100 --header 'x-stream-events: 3' >/dev/null 2>>"$WORK/load.log" || true
        sleep 1
        out=$WORK/r$round-$name.json
        pidarg=()
        for p in "${MEASURED[@]}"; do pidarg+=(--pid "$p"); done
        taskset -c "$CORE_LOAD" "$SLOAD" --url "http://127.0.0.1:$PORT$URL_PATH" -c "$STREAMS" --ramp-ms "$RAMP_MS" \
            --settle-ms "$SETTLE_MS" --window-ms "$WINDOW_MS" --expect-events "$EVENTS" "${pidarg[@]}" \
            --timeout-s $(((RAMP_MS + SETTLE_MS + WINDOW_MS) / 1000 + EVENTS * EVERY_MS / 1000 + 60)) \
            >"$out" 2>>"$WORK/load.log" || true
        python3 - "$out" "$round" "$name" >>"$RESULTS" <<'PY'
import json, sys
path, rnd, name = sys.argv[1:]
try:
    d = json.load(open(path))
except Exception:
    d = {"errors": {"unparsable_output": 1}}
def rec(m, v):
    if v is not None:
        print(json.dumps({"round": int(rnd), "contender": name, "metric": m, "value": v}))
dl = d.get("delay_us", {})
for k in ("p50", "p99", "p999"):
    rec("delay_%s_us" % k, dl.get(k))
for k in ("kib_per_stream", "cpu_us_per_event", "proxy_cpu_pct", "rss_idle_kib", "window_events", "streams_ok", "open_at_window_end"):
    rec(k, d.get(k))
rec("errors", sum(d.get("errors", {}).values()))
PY
        if [[ $name == llmproxy-* || $name == llmproxy2-* ]]; then
            # Every record right: the webhook thread's token counters (built from the records) must
            # hold every stream's completion tokens, warm-up included.
            sleep 2
            want=$((STREAMS * EVENTS + 200 * 3))
            got=$(for ((k = 0; k < PROCS; k++)); do curl -s --max-time 5 "http://127.0.0.1:$((P_ADMIN + k))/metrics"; done |
                awk '/^llmproxy_tokens_total\{.*kind="completion"/ {s += $NF} END {print s + 0}')
            record "$round" "$name" completion_tokens_missing "$((want - got))"
        fi
        for p in "${MAINPIDS[@]}"; do stop "$p"; done
        n_err=$(cat "$WORK/$name.log" "$WORK/$name"-[0-9]*.log 2>/dev/null | grep -cE 'ERROR|WARN' || true)
        ((${n_err:-0} == 0)) || record "$round" "$name" log_warn_error_lines "$n_err"
        log "  $name: $(tr -d '\n' <"$out" | cut -c1-400)"
    done
done

mkdir -p "$ROOT/bench-results"
cp "$RESULTS" "$ROOT/bench-results/streams-latest.jsonl"
python3 "$ROOT/scripts/bench-streams-report.py" "$RESULTS" "$CMDLINE" "$ROUNDS" "$LOAD_START" "$STREAMS" "$EVERY_MS" \
    "$EVENTS" "$WINDOW_MS" "$NOFILE" "$PROCS" | tee "$ROOT/bench-results/streams-latest.md"
