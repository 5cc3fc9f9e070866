#!/usr/bin/env bash
# Usage delivery benchmarks (issues 10 and 13), not timed tests. Release build, loopback, pinned
# with taskset: load generator, backend and receivers on CORE_LOAD (0), the gateway on CORE_GW (1).
#
#   scripts/bench-delivery.sh            # all: slow receiver, Nagle receiver, journal on/off
#   ROUNDS=5 scripts/bench-delivery.sh journal
#
# 1. records/s delivered with batch_max = 1 and the default concurrency (16) to a receiver that
#    takes 20 ms per POST (goal >= 600/s), and to a receiver that answers in two segments without
#    TCP_NODELAY (Python http.server, keep-alive): REQS requests are made with wrk, then the time
#    from the receiver's first to its last record is measured.
# 2. gateway req/s (wrk, 32 connections, WRK_DUR s) with crash_window = "10ms" vs "off"
#    (batch_max = 100, fast receiver), alternating, ROUNDS rounds, medians.
# Env: ROUNDS (3), WRK_DUR (5), REQS_DUR (3: seconds of wrk load whose records are then timed),
# CORE_LOAD (0), CORE_GW (1), SKIP_BUILD=1, BIN (default target/release/llmproxy).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}
WRK_DUR=${WRK_DUR:-5}
REQS_DUR=${REQS_DUR:-3}
CORE_LOAD=${CORE_LOAD:-0}
CORE_GW=${CORE_GW:-1}
WHAT=${1:-all}
BIN=${BIN:-$ROOT/target/release/llmproxy}
P_MOCK=18203 P_HOOK=18204 P_GW=18210
log() { echo "[bench-delivery $(date +%H:%M:%S)] $*" >&2; }

command -v wrk >/dev/null || { log "installing wrk"; apt-get install -y -qq wrk >/dev/null; }
[[ "${SKIP_BUILD:-0}" == 1 ]] || (cd "$ROOT" && cargo build --release -q)
W=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT

cat >"$W/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = '{"model":"m","messages":[{"role":"user","content":"hello there"}]}'
LUA

taskset -c "$CORE_LOAD" "$BIN" mock-backend --listen 127.0.0.1:$P_MOCK --ttft-ms 0 --itl-ms 0 --tokens 4 2>/dev/null &
PIDS+=($!)

receiver() { # args: receiver options; sets RPID
    taskset -c "$CORE_LOAD" python3 "$ROOT/scripts/bench-receiver.py" --port $P_HOOK "$@" >"$W/recv.json" &
    RPID=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$P_HOOK) 2>/dev/null && break; sleep 0.05; done
}

gateway() { # args: extra usage_hook lines; sets GPID
    rm -rf "$W/spool"
    printf 'listen = "127.0.0.1:%s"\n[runtime]\nworkers = 1\npin_cores = false\n[[backends]]\nurl = "http://127.0.0.1:%s"\n[health_check]\ninterval = "5s"\n[usage_hook]\nurl = "http://127.0.0.1:%s/llm-usage"\nspool_dir = "%s"\ntimeout = "5s"\n%b\n' \
        $P_GW $P_MOCK $P_HOOK "$W/spool" "$1" >"$W/gw.toml"
    RUST_LOG=warn taskset -c "$CORE_GW" "$BIN" --config "$W/gw.toml" 2>"$W/gw.log" &
    GPID=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$P_GW/health" >/dev/null 2>&1 && break; sleep 0.05; done
}

metric() { curl -s "http://127.0.0.1:$P_GW/metrics" | awk -v m="$1" '$1==m {print $2}'; }

delivery_rate() { # label, receiver options...
    local label=$1; shift
    receiver "$@"
    gateway 'batch_max = 1'
    taskset -c "$CORE_LOAD" wrk -t1 -c16 -d"${REQS_DUR}s" -s "$W/post.lua" "http://127.0.0.1:$P_GW/v1/chat/completions" >"$W/wrk.txt"
    local reqs
    reqs=$(awk '/requests in/ {print $1}' "$W/wrk.txt")
    for _ in $(seq 600); do
        [[ "$(metric llmproxy_webhook_success_total)" -ge "$reqs" ]] && break
        sleep 0.2
    done
    kill "$GPID"; wait "$GPID" 2>/dev/null || true
    kill "$RPID"; wait "$RPID" 2>/dev/null || true
    python3 - "$W/recv.json" "$reqs" "$label" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); reqs = int(sys.argv[2])
span = (s["last"] - s["first"]) if s["first"] else 0
rate = s["records"] / span if span > 0 else 0
print(f"| {sys.argv[3]} | {reqs} | {s['records']} | {span:.2f} | {rate:.0f} |")
PY
}

if [[ "$WHAT" == all || "$WHAT" == rate ]]; then
    echo "| receiver (batch_max = 1, concurrency 16) | requests | records delivered | first->last s | records/s |"
    echo "|---|---|---|---|---|"
    delivery_rate "20 ms per POST" --delay-ms 20
    delivery_rate "Python http.server (two writes, Nagle)" --nagle
fi

if [[ "$WHAT" == all || "$WHAT" == journal ]]; then
    receiver
    declare -A RES
    for r in $(seq "$ROUNDS"); do
        for mode in '"10ms"' '"off"'; do
            gateway "batch_max = 100\ncrash_window = $mode"
            taskset -c "$CORE_LOAD" wrk -t1 -c32 -d"${WRK_DUR}s" -s "$W/post.lua" "http://127.0.0.1:$P_GW/v1/chat/completions" >"$W/wrk.txt"
            rps=$(awk '/Requests\/sec/ {print $2}' "$W/wrk.txt")
            RES[$mode]+="$rps "
            log "round $r crash_window=$mode: $rps req/s"
            kill "$GPID"; wait "$GPID" 2>/dev/null || true
        done
    done
    kill "$RPID"; wait "$RPID" 2>/dev/null || true
    med() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
    on=$(echo "${RES['"10ms"']}" | med); off=$(echo "${RES['"off"']}" | med)
    echo
    echo "| crash_window | req/s (median of $ROUNDS, runs: on ${RES['"10ms"']}/ off ${RES['"off"']}) |"
    echo "|---|---|"
    echo "| \"10ms\" (journal) | $on |"
    echo "| \"off\" | $off |"
    echo "| ratio | $(python3 -c "print(f'{$on/$off:.3f}')") |"
fi
