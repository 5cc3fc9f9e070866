#!/usr/bin/env bash
# Sends a few requests through a running LLMProxy and prints the answers: a chat completion, a
# streamed one (no stream_options: the gateway injects include_usage and strips the extra chunk),
# a stream that asks for usage itself, and the usage counters from /metrics.
#
#   examples/test-request.sh                      # gateway on http://127.0.0.1:8080
#   LLMPROXY_URL=http://gw:8080 MODEL=my-model API_KEY=sk-... examples/test-request.sh
set -euo pipefail

URL="${LLMPROXY_URL:-http://127.0.0.1:8080}"
MODEL="${MODEL:-meta-llama/Llama-3.1-8B-Instruct}"
AUTH=()
if [[ -n "${API_KEY:-}" ]]; then
  AUTH=(-H "Authorization: Bearer ${API_KEY}")
fi

post() {
  # -N: print stream chunks as they arrive; -i: show x-request-id and the other headers.
  curl -sS -N -i --max-time 120 "${AUTH[@]}" -H 'Content-Type: application/json' \
    -H 'x-user-id: demo-user' "${URL}$1" -d "$2"
  echo
}

echo "== POST /v1/chat/completions (non-streaming; usage in the body)"
post /v1/chat/completions "{\"model\":\"${MODEL}\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello in five words.\"}],\"max_tokens\":32}"

echo "== POST /v1/chat/completions (streaming, no stream_options)"
post /v1/chat/completions "{\"model\":\"${MODEL}\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Count to five.\"}],\"max_tokens\":32}"

echo "== POST /v1/chat/completions (streaming, include_usage asked by the client: last chunk has usage)"
post /v1/chat/completions "{\"model\":\"${MODEL}\",\"stream\":true,\"stream_options\":{\"include_usage\":true},\"messages\":[{\"role\":\"user\",\"content\":\"Count to three.\"}],\"max_tokens\":16}"

echo "== GET /metrics (usage counters)"
curl -sS --max-time 10 "${URL}/metrics" | grep -E '^llmproxy_(tokens_total|usage_missing_total|webhook_(success|failure)_total|spool_records)' || true
