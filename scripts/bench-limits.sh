#!/usr/bin/env bash
# What limits cost: req/s and proxy CPU per request with [rate_limit] off, on with store = "local",
# and on with store = "redis" (a local redis-server), on loopback, pinned with taskset: wrk, the
# nginx backend (fixed vLLM-like JSON body) and redis-server on CORE_LOAD, LLMProxy (one worker)
# alone on CORE_PROXY. Limits are set high enough never to refuse (every request takes the whole
# admission path: requests, tokens with reservation and settlement, concurrency), all requests on
# one subject. Modes alternate within each round; the report gives medians over the rounds.
#
#   scripts/bench-limits.sh                      # ROUNDS=3 WRK_DUR=10
#   ROUNDS=5 WRK_DUR=15 scripts/bench-limits.sh
#
# Env: ROUNDS, WRK_DUR, CONNS (32), CORE_LOAD (0), CORE_PROXY (1), SKIP_BUILD=1.
# Not a test: it asserts nothing; numbers go in the README with the command that made them.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}
WRK_DUR=${WRK_DUR:-10}
CONNS=${CONNS:-32}
CORE_LOAD=${CORE_LOAD:-0}
CORE_PROXY=${CORE_PROXY:-1}
P_JSON=18101
P_PROXY=18110
P_REDIS=18179

log() { echo "[bench-limits $(date +%H:%M:%S)] $*" >&2; }

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
command -v redis-server >/dev/null || need+=(redis-server)
command -v taskset >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    SUDO=""
    [[ $(id -u) == 0 ]] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building llmproxy (release)"
    (cd "$ROOT" && cargo build --release --quiet --bin llmproxy)
fi
BIN=$TARGET/release/llmproxy
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

WORK=$(mktemp -d /tmp/llmproxy-bench-limits.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

start() { # start NAME CMD...: runs CMD in the background, logs in $WORK/NAME.log, pid in LAST_PID
    local name=$1
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}
wait_port() {
    local i
    for ((i = 0; i < 100; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

JSON_BODY='{"id":"chatcmpl-b1f0c2d3e4f5a6b7","object":"chat.completion","created":1768386600,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"message":{"role":"assistant","content":"The sea is calm tonight, the tide is full, the moon lies fair upon the straits."},"finish_reason":"stop"}],"usage":{"prompt_tokens":25,"total_tokens":47,"completion_tokens":22}}'
REQ_BODY='{"model":"meta-llama/Llama-3.1-8B-Instruct","messages":[{"role":"user","content":"Write a short poem about the sea."}],"max_tokens":64}'

cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    client_body_temp_path $WORK/body;
    proxy_temp_path $WORK/proxy;
    fastcgi_temp_path $WORK/fcgi;
    uwsgi_temp_path $WORK/uwsgi;
    scgi_temp_path $WORK/scgi;
    server {
        listen 127.0.0.1:$P_JSON backlog=4096;
        location / { default_type application/json; return 200 '$JSON_BODY'; }
    }
}
EOF
cat >"$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$REQ_BODY'
wrk.headers["Content-Type"] = "application/json"
EOF

gateway_conf() { # MODE
    cat <<EOF
listen = "127.0.0.1:$P_PROXY"
[runtime]
workers = 1
pin_cores = false
[[backends]]
url = "http://127.0.0.1:$P_JSON"
[health_check]
interval = "10s"
[usage_hook]
enabled = false
spool_dir = "$WORK/spool"
EOF
    case $1 in
    off) ;;
    local | redis)
        cat <<EOF
[rate_limit]
enabled = true
store = "$1"
redis_url = "redis://127.0.0.1:$P_REDIS/0"
requests_per_minute = 1000000000000
tokens_per_minute = 1000000000000
tokens_per_day = 1000000000000
max_concurrent = 100000
EOF
        ;;
    esac
}

start nginx taskset -c "$CORE_LOAD" "$NGINX" -c "$WORK/nginx.conf" -p "$WORK"
start redis taskset -c "$CORE_LOAD" redis-server --port "$P_REDIS" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK"
wait_port $P_JSON
wait_port $P_REDIS

MODES=(off local redis)
declare -A RPS CPU
for ((r = 1; r <= ROUNDS; r++)); do
    for mode in "${MODES[@]}"; do
        gateway_conf "$mode" >"$WORK/$mode.toml"
        start "gw-$mode" taskset -c "$CORE_PROXY" env LLMPROXY_DRIVER="${LLMPROXY_DRIVER:-auto}" "$BIN" --config "$WORK/$mode.toml"
        gw=$LAST_PID
        wait_port $P_PROXY
        # Warm up (pool, leases), then measure.
        taskset -c "$CORE_LOAD" wrk -t1 -c"$CONNS" -d2s -s "$WORK/post.lua" "http://127.0.0.1:$P_PROXY/v1/chat/completions" >/dev/null
        t0=$(cpu_ticks "$gw")
        out=$(taskset -c "$CORE_LOAD" wrk -t1 -c"$CONNS" -d"${WRK_DUR}s" -s "$WORK/post.lua" "http://127.0.0.1:$P_PROXY/v1/chat/completions")
        t1=$(cpu_ticks "$gw")
        reqs=$(awk '/requests in/ {print $1}' <<<"$out")
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
        hz=$(getconf CLK_TCK)
        us=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v n="$reqs" 'BEGIN {printf "%.2f", t / hz * 1e6 / n}')
        log "round $r $mode: $rps req/s, $us us CPU/request${non2xx:+, NON-2xx: $non2xx}"
        RPS[$mode]+="$rps "
        CPU[$mode]+="$us "
        kill "$gw"
        wait "$gw" 2>/dev/null || true
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
echo
echo "| limits | req/s (median of $ROUNDS) | proxy CPU µs/request | vs off (req/s, CPU) |"
echo "|---|---|---|---|"
base_rps=$(median <<<"${RPS[off]}")
base_cpu=$(median <<<"${CPU[off]}")
for mode in "${MODES[@]}"; do
    rps=$(median <<<"${RPS[$mode]}")
    cpu=$(median <<<"${CPU[$mode]}")
    echo "| $mode | $rps | $cpu | $(awk -v a="$rps" -v b="$base_rps" -v c="$cpu" -v d="$base_cpu" 'BEGIN {printf "%+.1f %%, %+.1f %%", (a / b - 1) * 100, (c / d - 1) * 100}') |"
done
echo
echo "(ROUNDS=$ROUNDS WRK_DUR=$WRK_DUR CONNS=$CONNS scripts/bench-limits.sh; all rounds: off ${RPS[off]}| local ${RPS[local]}| redis ${RPS[redis]})"
