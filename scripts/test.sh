#!/usr/bin/env bash
# The whole test suite, as the README and CI run it: the Rust tests (unit, integration against the
# real binary, fixture conformance) once with each I/O driver forced, then the Python tests of the
# billing examples and the official openai SDK. Installs the Python packages it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c "import openai, pytest, flask, httpx" 2>/dev/null; then
    echo "+ pip install openai pytest flask httpx (for the SDK, billing-example and rate-limit retry tests)"
    python3 -m pip install --quiet --disable-pip-version-check openai pytest flask httpx
fi
# nats-py: examples/nats/consumer_sqlite.py, run by tests/example_nats_consumer.rs.
if ! python3 -c "import nats" 2>/dev/null; then
    echo "+ pip install nats-py (for the example JetStream consumer test)"
    python3 -m pip install --quiet --disable-pip-version-check nats-py
fi

# The TLS tests make their certificates with the openssl CLI and drive the TLS listener with curl.
tls_tools=()
command -v openssl >/dev/null || tls_tools+=(openssl)
command -v curl >/dev/null || tls_tools+=(curl)
if [ ${#tls_tools[@]} -gt 0 ]; then
    echo "+ apt-get install ${tls_tools[*]} (for the TLS tests)"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${tls_tools[@]}"
fi

if ! command -v redis-server >/dev/null 2>&1; then
    echo "+ apt-get install redis-server (a real Redis for the limits tests)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi

# The NATS sink test starts a real nats-server with JetStream (Debian package nats-server,
# /usr/sbin/nats-server); the full-disk test mounts a small tmpfs (mount, as root).
if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
    echo "+ apt-get install nats-server (for the NATS sink test)"
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server
fi

drivers=(epoll)
available=$(cargo run --quiet -- drivers 2>/dev/null || true)
if grep -q '^io_uring: available' <<<"$available"; then
    drivers=(io_uring epoll)
else
    echo "NOTE: io_uring is not available on this kernel/seccomp profile: testing the epoll driver only" >&2
fi

for d in "${drivers[@]}"; do
    echo "=== cargo test with LLMPROXY_DRIVER=$d ==="
    LLMPROXY_DRIVER=$d cargo test --all-targets
done

if [ -d tests/python ] && ls tests/python/test_*.py >/dev/null 2>&1; then
    echo "=== python tests (billing examples) ==="
    python3 -m pytest -q tests/python --ignore=tests/python/test_openai_sdk.py --ignore=tests/python/test_tls_openai_sdk.py --ignore=tests/python/test_rate_limit_sdk.py
fi
