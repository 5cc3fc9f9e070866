# Shared by scripts/bench.sh and scripts/bench-ab.sh (sourced, not run): the non-stream setup's
# bodies, the nginx JSON backend and webhook receiver, LLMProxy's config and wrk's script.
# scripts/bench-streams.sh sources it for nginx_common only.
# Needs WORK, P_JSON, P_HOOK, P_PROXY and CORE_PROXY set by the caller.

# A chat completion in vLLM's shape (the JSON backend's answer), and the request wrk sends.
JSON_BODY='{"id":"chatcmpl-b1f0c2d3e4f5a6b7","object":"chat.completion","created":1768386600,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"message":{"role":"assistant","reasoning_content":null,"content":"The sea is calm tonight, the tide is full, the moon lies fair upon the straits.","tool_calls":[]},"logprobs":null,"finish_reason":"stop","stop_reason":null}],"usage":{"prompt_tokens":25,"total_tokens":47,"completion_tokens":22,"prompt_tokens_details":null},"prompt_logprobs":null,"kv_transfer_params":null}'
REQ_BODY='{"model":"meta-llama/Llama-3.1-8B-Instruct","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a short poem about the sea."}],"max_tokens":64,"temperature":0.7}'

# nginx's head up to the opening of its http block, files under $WORK/PREFIX*; one worker, no
# access log, long keep-alive. NOFILE and CONNECTIONS default to what the per-request benchmark
# needs; bench-streams.sh raises both to the open-files limit.
nginx_common() { # prefix [nofile] [worker_connections]
    cat <<EOF
worker_processes 1;
worker_rlimit_nofile ${2:-65536};
daemon off;
master_process on;
pid $WORK/$1.pid;
error_log $WORK/$1.err warn;
events { worker_connections ${3:-8192}; multi_accept on; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    client_body_temp_path $WORK/$1-body;
    proxy_temp_path $WORK/$1-proxy;
    fastcgi_temp_path $WORK/$1-fcgi;
    uwsgi_temp_path $WORK/$1-uwsgi;
    scgi_temp_path $WORK/$1-scgi;
EOF
}
write_backends_conf() { # the JSON backend (P_JSON) and webhook receiver (P_HOOK): $WORK/backends.conf
    {
    nginx_common backends
    cat <<EOF
    server {
        listen 127.0.0.1:$P_JSON backlog=4096;
        location / { default_type application/json; return 200 '$JSON_BODY'; }
    }
    server {
        listen 127.0.0.1:$P_HOOK backlog=4096;
        client_body_buffer_size 1m;
        location / { return 200; }
    }
}
EOF
} >"$WORK/backends.conf"
}

llmproxy_conf() { # upstream_port driver metering(true|false)
    cat <<EOF
listen = "127.0.0.1:$P_PROXY"
shutdown_grace = "2s"
[runtime]
workers = 1
pin_cores = true
cores = [$CORE_PROXY]
driver = "$2"
[[backends]]
url = "http://127.0.0.1:$1"
[usage_hook]
enabled = $3
url = "http://127.0.0.1:$P_HOOK/llm-usage"
batch_max = 100
spool_dir = "$WORK/spool"
EOF
}
baseline_conf() { # upstream_port metering
    cat <<EOF
listen = "127.0.0.1:$P_PROXY"
[[backends]]
url = "http://127.0.0.1:$1"
[usage_hook]
enabled = $2
url = "http://127.0.0.1:$P_HOOK/llm-usage"
EOF
}
write_post_lua() { # wrk's POST of REQ_BODY: $WORK/post.lua
    cat >"$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$REQ_BODY'
wrk.headers["Content-Type"] = "application/json"
EOF
}
