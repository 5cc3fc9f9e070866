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
#    (batch_max = 100, fast receiver), alternating, ROUNDS rounds, medians; and the gateway's CPU
#    per request (all its threads: cores, journal, delivery; from /proc/PID/task/*/schedstat), split
#    by thread, and the bytes it sent to the storage layer per request (/proc/PID/io write_bytes).
#    MODES='"10ms" "50ms" "off"' compares more windows (the last one is the reference).
# 3. (`nats`) records/s delivered to a real `nats-server -js` (sink = "nats", concurrency 16) with
#    batch_max = 1 and 100: wrk load for REQS_DUR s, then the backlog left when the load stops is
#    timed until llmproxy_webhook_success_total reaches the request count (the drain rate is the
#    sink's throughput; "kept up" when no backlog was left). Needs nats-server and nats-py (to create
#    the stream with examples/nats/consumer_sqlite.py).
# Env: ROUNDS (3), WRK_DUR (5), REQS_DUR (3: seconds of wrk load whose records are then timed),
# CORE_LOAD (0), CORE_GW (1), SKIP_BUILD=1, BIN (default target/release/llmproxy), BIN2 (journal: a
# second binary run right after BIN for every mode in every round, rows "MODE B"; before/after of a
# change in one run).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}
WRK_DUR=${WRK_DUR:-5}
REQS_DUR=${REQS_DUR:-3}
CORE_LOAD=${CORE_LOAD:-0}
CORE_GW=${CORE_GW:-1}
WHAT=${1:-all}
MODES=${MODES:-'"10ms" "off"'} # journal: crash_window values compared, alternating; the last is the reference
BIN=${BIN:-$ROOT/target/release/llmproxy}
BIN_A=$BIN
BIN2=${BIN2:-}
P_MOCK=18203 P_HOOK=18204 P_GW=18210 P_NATS=18222
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

# Every thread of process $1 once per distinct (name, allowed cores, nice): the whole gateway,
# journal and delivery threads included, must be on CORE_GW for the CPU comparison to be fair.
affinity() {
    for t in /proc/"$1"/task/*; do
        echo "$(cat "$t/comm" | sed 's/-[0-9]*$//'):$(awk '/Cpus_allowed_list/ {print $2}' "$t/status"):$(awk '{print $19}' "$t/stat")"
    done | sort | uniq -c | awk '{printf "%s x%s ", $2, $1}'
}

# ns of CPU used so far by every thread of process $1. (printf "%.0f": mawk's "%d" stops at 2^31, so
# past 2.1 s of CPU it printed 2147483647, and print writes 6 significant digits.)
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f", s}'; }

# Bytes process $1 has sent to the storage layer so far (pages it dirtied: /proc/PID/io write_bytes).
disk_bytes() { awk '/^write_bytes:/ {print $2}' /proc/"$1"/io 2>/dev/null || echo 0; }

# "name ns" per thread group of process $1 (names without their -N suffix), CPU used so far.
cpu_by_thread() {
    for t in /proc/"$1"/task/*; do
        echo "$(sed 's/-[0-9]*$//' "$t/comm") $(awk '{print $1}' "$t/schedstat")"
    done 2>/dev/null | awk '{s[$1] += $2} END {for (n in s) printf "%s %.0f\n", n, s[n]}' | sort
}

# us per request by thread group between two cpu_by_thread snapshots ($1, $2 files; $3 requests).
cpu_split() {
    join -a2 -e0 -o 0,1.2,2.2 "$1" "$2" | awk -v n="$3" '{printf "%s %.2f  ", $1, ($3 - $2) / 1000 / n}'
}

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
    declare -A RES CPU DISK
    read -ra MODE_LIST <<<"$MODES"
    KEYS=()
    for mode in "${MODE_LIST[@]}"; do
        KEYS+=("$mode")
        [[ -z "$BIN2" ]] || KEYS+=("$mode B")
    done
    for r in $(seq "$ROUNDS"); do
        for key in "${KEYS[@]}"; do
            mode=${key% B}
            BIN=$BIN_A
            [[ "$key" == "$mode" ]] || BIN=$BIN2
            gateway "batch_max = 100\ncrash_window = $mode"
            [[ $r == 1 ]] && log "gateway threads (name, cores allowed, nice): $(affinity "$GPID")"
            c0=$(cpu_ns "$GPID")
            d0=$(disk_bytes "$GPID")
            cpu_by_thread "$GPID" >"$W/t0"
            taskset -c "$CORE_LOAD" wrk -t1 -c32 -d"${WRK_DUR}s" -s "$W/post.lua" "http://127.0.0.1:$P_GW/v1/chat/completions" >"$W/wrk.txt"
            c1=$(cpu_ns "$GPID")
            d1=$(disk_bytes "$GPID")
            cpu_by_thread "$GPID" >"$W/t1"
            rps=$(awk '/Requests\/sec/ {print $2}' "$W/wrk.txt")
            reqs=$(awk '/requests in/ {print $1}' "$W/wrk.txt")
            us=$(python3 -c "print(f'{($c1 - $c0) / 1000 / $reqs:.2f}')")
            disk=$(python3 -c "print(round(($d1 - $d0) / $reqs))")
            RES[$key]+="$rps "
            CPU[$key]+="$us "
            DISK[$key]+="$disk "
            log "round $r crash_window=$key: $rps req/s, $us us CPU/request, $disk bytes to disk/request; by thread: $(cpu_split "$W/t0" "$W/t1" "$reqs")"
            kill "$GPID"; wait "$GPID" 2>/dev/null || true
        done
    done
    kill "$RPID"; wait "$RPID" 2>/dev/null || true
    med() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
    # Each round's runs are back to back: the median of the per-round ratios cancels most of the
    # drift a shared machine adds between rounds.
    pair() { python3 -c "import statistics as s,sys; a,b=[list(map(float,x.split())) for x in sys.argv[1:]]; print(f'{s.median(x/y for x,y in zip(a,b)):.3f}')" "$1" "$2"; }
    ref=${MODE_LIST[-1]}
    echo
    echo "| crash_window | req/s, median of $ROUNDS (runs) | gateway CPU us/request, median (runs) | ÷ $ref: req/s, CPU (median of per-round ratios) | bytes to disk per request, median |"
    echo "|---|---|---|---|---:|"
    for key in "${KEYS[@]}"; do
        vs="-"
        [[ $key == "$ref" ]] || vs="$(pair "${RES[$key]}" "${RES[$ref]}"), $(pair "${CPU[$key]}" "${CPU[$ref]}")"
        echo "| $key | $(echo "${RES[$key]}" | med) (${RES[$key]}) | $(echo "${CPU[$key]}" | med) (${CPU[$key]}) | $vs | $(echo "${DISK[$key]}" | med) |"
    done
    if [[ -n "$BIN2" ]]; then
        echo
        echo "B = $BIN2, A = $BIN_A; B ÷ A per mode (median of per-round ratios): req/s, CPU"
        for mode in "${MODE_LIST[@]}"; do
            echo "| $mode | $(pair "${RES[$mode B]}" "${RES[$mode]}"), $(pair "${CPU[$mode B]}" "${CPU[$mode]}") |"
        done
    fi
fi

now() { date +%s.%N; }

drain_rate() { # label, usage_hook lines
    gateway "$2"
    local t0 t1 t2 s1 reqs done
    t0=$(now)
    taskset -c "$CORE_LOAD" wrk -t1 -c16 -d"${REQS_DUR}s" -s "$W/post.lua" "http://127.0.0.1:$P_GW/v1/chat/completions" >"$W/wrk.txt"
    t1=$(now)
    s1=$(metric llmproxy_webhook_success_total)
    reqs=$(awk '/requests in/ {print $1}' "$W/wrk.txt")
    for _ in $(seq 3000); do
        done=$(metric llmproxy_webhook_success_total)
        [[ "$done" -ge "$reqs" ]] && break
        sleep 0.1
    done
    t2=$(now)
    kill "$GPID"; wait "$GPID" 2>/dev/null || true
    python3 - "$1" "$reqs" "$s1" "$done" "$t0" "$t1" "$t2" <<'PY'
import sys
label, reqs, s1, done = sys.argv[1], int(sys.argv[2]), int(float(sys.argv[3])), int(float(sys.argv[4]))
t0, t1, t2 = map(float, sys.argv[5:8])
left = reqs - s1
drain = f"{left / (t2 - t1):.0f}" if left > 0 and t2 > t1 else "kept up"
print(f"| {label} | {reqs} | {done} | {reqs / (t1 - t0):.0f} | {left} | {t2 - t1:.2f} | **{drain}** | {done / (t2 - t0):.0f} |")
PY
}

if [[ "$WHAT" == nats ]]; then
    NATS_BIN=$(command -v nats-server || echo /usr/sbin/nats-server)
    python3 -c "import nats" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check nats-py
    taskset -c "$CORE_LOAD" "$NATS_BIN" -js -a 127.0.0.1 -p $P_NATS -sd "$W/nats" >/dev/null 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$P_NATS) 2>/dev/null && break; sleep 0.05; done
    # Creates the stream USAGE on llm.usage (and a durable consumer that reads nothing meanwhile).
    NATS_URL=nats://127.0.0.1:$P_NATS USAGE_DB="$W/usage.db" python3 "$ROOT/examples/nats/consumer_sqlite.py" --drain >/dev/null
    echo "| sink (concurrency 16) | requests | delivered | req/s during load | backlog at load end | drain s | drain records/s | overall records/s |"
    echo "|---|---|---|---|---|---|---|---|"
    for b in 1 100; do
        drain_rate "nats-server -js, batch_max = $b" "sink = \"nats\"\nnats_url = \"nats://127.0.0.1:$P_NATS\"\nnats_subject = \"llm.usage\"\nbatch_max = $b"
    done
    receiver --delay-ms 20
    drain_rate "webhook, 20 ms per POST, batch_max = 1" "batch_max = 1"
    kill "$RPID"; wait "$RPID" 2>/dev/null || true
fi
