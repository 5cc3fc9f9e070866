#!/usr/bin/env bash
# TLS cost of the gateway's listener against nginx with `ssl`, each alone on the same pinned core:
#   handshake: full TLS 1.3 handshakes, one GET /health each (openssl s_time -new, HTTP/1.0)
#   keep-alive: GET /health on persistent TLS connections (h2load --h1)
#   plain: the same keep-alive load over plain HTTP, for what TLS adds per request
# Both servers answer /health themselves with the same small JSON body (no backend hop), with the
# same ECDSA P-256 certificate; figures are rates and the server's CPU time (utime+stime from
# /proc) per connection or request. Installs nginx and h2load with apt-get when missing.
#
#   scripts/tls-bench.sh                 # release build, server on core 1, load on core 0
#   CORE_SERVER=1 CORE_LOAD=0 DURATION=10 REQUESTS=200000 CONNS=16 ROUNDS=3 scripts/tls-bench.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CORE_SERVER=${CORE_SERVER:-1}
CORE_LOAD=${CORE_LOAD:-0}
DURATION=${DURATION:-10}
REQUESTS=${REQUESTS:-200000}
CONNS=${CONNS:-16}
ROUNDS=${ROUNDS:-3}
NGINX=${NGINX:-/usr/sbin/nginx}

need_apt() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }; }
[ -x "$NGINX" ] || { echo "+ apt-get install nginx-light"; need_apt nginx-light; NGINX=/usr/sbin/nginx; }
command -v h2load >/dev/null || { echo "+ apt-get install nghttp2-client (h2load)"; need_apt nghttp2-client; }
command -v openssl >/dev/null || need_apt openssl

if [ -z "${LLMPROXY:-}" ]; then
    (cd "$ROOT" && cargo build --release -q)
    LLMPROXY="$ROOT/target/release/llmproxy"
fi

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# One certificate for both servers.
cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -keyout ca.key -out ca.pem \
    -subj /CN=bench-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' > ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out server.pem -extfile ext 2>/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; cat "$WORK"/*.log >&2 2>/dev/null; exit 1; }
# CPU ticks (utime+stime) of a process and its threads/children given as pids.
ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' /proc/"$p"/stat))); done; echo $t; }
HZ=$(getconf CLK_TCK)

MOCK_PORT=$(free_port)
taskset -c "$CORE_LOAD" "$LLMPROXY" mock-backend --listen 127.0.0.1:"$MOCK_PORT" 2>/dev/null &
PIDS+=($!)
wait_port "$MOCK_PORT"

GW_TLS=$(free_port); GW_PLAIN=$(free_port)
# gateway PORT TLS(0|1): starts a one-worker gateway pinned to CORE_SERVER; its pid in GW_PID.
gateway() {
    {
        printf 'listen = "127.0.0.1:%s"\n' "$1"
        if [ "$2" = 1 ]; then
            printf '[tls]\ncert_file = "%s/server.pem"\nkey_file = "%s/server.key"\n' "$WORK" "$WORK"
        fi
        printf '[runtime]\nworkers = 1\npin_cores = true\ncores = [%s]\n' "$CORE_SERVER"
        printf '[usage_hook]\nenabled = false\nspool_dir = "%s/spool"\n' "$WORK"
        printf '[[backends]]\nurl = "http://127.0.0.1:%s"\n' "$MOCK_PORT"
    } > "gw$1.toml"
    RUST_LOG=warn "$LLMPROXY" --config "gw$1.toml" 2>"gw$1.log" &
    GW_PID=$!
    PIDS+=("$GW_PID")
}
NG_TLS=$(free_port); NG_PLAIN=$(free_port)
BODY='{"status":"ok","backends_up":1,"backends":1}'
mkdir -p nginx
cat > nginx/nginx.conf <<CFG
worker_processes 1;
daemon off;
master_process on;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    ssl_protocols TLSv1.3;
    server {
        listen 127.0.0.1:$NG_TLS ssl;
        listen 127.0.0.1:$NG_PLAIN;
        ssl_certificate $WORK/server.pem;
        ssl_certificate_key $WORK/server.key;
        location = /health { default_type application/json; return 200 '$BODY\n'; }
    }
}
CFG

# handshake NAME PORT PIDS...: full handshakes (no resumption), one HTTP/1.0 GET each.
handshake() {
    local name=$1 port=$2; shift 2
    local t0 t1 out n secs
    t0=$(ticks "$@")
    out=$(taskset -c "$CORE_LOAD" openssl s_time -connect 127.0.0.1:"$port" -new -time "$DURATION" -www /health 2>&1 | grep 'real seconds')
    t1=$(ticks "$@")
    n=$(echo "$out" | awk '{print $1}'); secs=$(echo "$out" | awk '{print $4}')
    awk -v name="$name" -v n="$n" -v s="$secs" -v c=$((t1 - t0)) -v hz="$HZ" \
        'BEGIN { printf "%s handshake: %d connections in %ss = %.0f/s, server CPU %.1f us per connection\n", name, n, s, n/s, c/hz*1e6/n }'
    echo "$name hs_us $(awk -v n="$n" -v c=$((t1 - t0)) -v hz="$HZ" 'BEGIN{printf "%.2f", c/hz*1e6/n}')" >> results
    echo "$name hs_rate $(awk -v n="$n" -v s="$secs" 'BEGIN{printf "%.1f", n/s}')" >> results
}
# keepalive NAME URL PIDS...: REQUESTS requests over CONNS persistent connections.
keepalive() {
    local name=$1 url=$2; shift 2
    local t0 t1 out rps
    t0=$(ticks "$@")
    out=$(taskset -c "$CORE_LOAD" h2load --h1 -c "$CONNS" -n "$REQUESTS" "$url" 2>&1)
    t1=$(ticks "$@")
    echo "$out" | grep -q " 0 failed, 0 errored" || { echo "$out" | grep -E "requests:|status codes" >&2; }
    rps=$(echo "$out" | awk '/^finished in/ {print $4}')
    awk -v name="$name" -v n="$REQUESTS" -v rps="$rps" -v c=$((t1 - t0)) -v hz="$HZ" \
        'BEGIN { printf "%s keep-alive: %s req/s, server CPU %.2f us per request\n", name, rps, c/hz*1e6/n }'
    echo "$name ka_us $(awk -v n="$REQUESTS" -v c=$((t1 - t0)) -v hz="$HZ" 'BEGIN{printf "%.3f", c/hz*1e6/n}')" >> results
    echo "$name ka_rate $rps" >> results
}

: > results
gateway "$GW_TLS" 1; GWT=$GW_PID; wait_port "$GW_TLS"
gateway "$GW_PLAIN" 0; GWP=$GW_PID; wait_port "$GW_PLAIN"
taskset -c "$CORE_SERVER" "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" &
PIDS+=($!)
wait_port "$NG_TLS"
NGPIDS=$(pgrep -d' ' -P "$(cat nginx/nginx.pid)"; cat nginx/nginx.pid)
sleep 1

echo "server core $CORE_SERVER, load core $CORE_LOAD; $(nproc) cores; $(uname -r)"
for round in $(seq "$ROUNDS"); do
    echo "--- round $round"
    handshake gateway "$GW_TLS" "$GWT"
    handshake nginx "$NG_TLS" $NGPIDS
    keepalive gateway "https://127.0.0.1:$GW_TLS/health" "$GWT"
    keepalive nginx "https://127.0.0.1:$NG_TLS/health" $NGPIDS
    keepalive gateway-plain "http://127.0.0.1:$GW_PLAIN/health" "$GWP"
    keepalive nginx-plain "http://127.0.0.1:$NG_PLAIN/health" $NGPIDS
done

echo
echo "| measure (best of $ROUNDS rounds: least disturbed) | gateway | nginx ssl | gateway / nginx |"
echo "|---|---|---|---|"
best() { awk -v k="$1 $2" -v lo="$3" '$1" "$2==k { if (v=="" || (lo && $3<v) || (!lo && $3>v)) v=$3 } END {print v}' results; }
row() { # label metric lower-is-better unit
    local g n; g=$(best gateway "$2" "$3"); n=$(best nginx "$2" "$3")
    awk -v l="$1" -v g="$g" -v n="$n" -v u="$4" 'BEGIN { printf "| %s | %s %s | %s %s | %.2fx |\n", l, g, u, n, u, g/n }'
}
row "full handshakes per second (one client)" hs_rate 0 "/s"
row "server CPU per handshake + 1 request" hs_us 1 "us"
row "keep-alive TLS requests per second ($CONNS conns)" ka_rate 0 "/s"
row "server CPU per keep-alive TLS request" ka_us 1 "us"
gp=$(best gateway-plain ka_us 1); np=$(best nginx-plain ka_us 1); gt=$(best gateway ka_us 1); nt=$(best nginx ka_us 1)
awk -v gp="$gp" -v np="$np" -v gt="$gt" -v nt="$nt" 'BEGIN { printf "| server CPU per plain keep-alive request | %s us | %s us | %.2fx |\n| CPU TLS adds per keep-alive request | %.2f us | %.2f us | %.2fx |\n", gp, np, gp/np, gt-gp, nt-np, (gt-gp)/(nt-np) }'
