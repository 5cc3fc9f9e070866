# syntax=docker/dockerfile:1
#
# LLMProxy container image.
#
#   docker build -t llmproxy .
#   docker run --rm -p 8080:8080 -v "$PWD/config.toml:/etc/llmproxy/config.toml:ro" \
#     -v llmproxy-spool:/var/lib/llmproxy/spool llmproxy
#
# io_uring under Docker: the default seccomp profile of Docker 25+ (and of containerd/CRI-O in
# Kubernetes) blocks io_uring_setup. With [runtime] driver = "auto" (the default) the gateway then
# falls back to epoll by itself and logs "epoll" at start; nothing else is needed. To run on
# io_uring, allow its three syscalls and lift the locked-memory limit (kernels < 5.12 charge
# io_uring rings to RLIMIT_MEMLOCK):
#   docker run --security-opt seccomp=deploy/docker/seccomp-io_uring.json --ulimit memlock=-1:-1 ...
# deploy/docker/seccomp-io_uring.json is NOT Docker's default allowlist plus io_uring: it allows
# every syscall except a list of dangerous ones (mount, ptrace, bpf, kexec, module loading, ...).
# The simple alternative is --security-opt seccomp=unconfined. Both are weaker than Docker's
# default profile; io_uring itself is a large kernel attack surface, which is why runtimes block
# it. Decide per deployment whether the throughput gain is worth it.

ARG RUST_VERSION=1

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the crates.io registry and the target dir between builds, so a source change
# recompiles only this crate. The binary is copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin llmproxy \
    && install -D -m 0755 target/release/llmproxy /out/llmproxy

FROM debian:bookworm-slim
# curl: for HEALTHCHECK only. ca-certificates: not needed (backends and webhook are http://).
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 llmproxy \
    && useradd --system --uid 10001 --gid llmproxy --home-dir /var/lib/llmproxy \
       --no-create-home --shell /usr/sbin/nologin llmproxy \
    && install -d -o llmproxy -g llmproxy -m 0750 /var/lib/llmproxy /var/lib/llmproxy/spool \
    && install -d -m 0755 /etc/llmproxy

COPY --from=builder /out/llmproxy /usr/local/bin/llmproxy
# A working default: replace it by mounting your own file at /etc/llmproxy/config.toml.
COPY deploy/docker/config.toml /etc/llmproxy/config.toml

# Undelivered usage records wait here; mount a named volume or host directory so that they
# survive the container.
VOLUME ["/var/lib/llmproxy/spool"]
WORKDIR /var/lib/llmproxy
# Numeric, so that Kubernetes runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
ENV RUST_LOG=info
EXPOSE 8080

# /health is 200 when at least one backend is healthy and 503 otherwise, so "unhealthy" here
# means "this gateway cannot serve", including when every backend is down. If you move /health to
# admin_listen, change the port here.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/health"]

# SIGTERM (docker stop) drains: give it longer than shutdown_grace, e.g. docker stop -t 45.
STOPSIGNAL SIGTERM
ENTRYPOINT ["llmproxy"]
CMD ["--config", "/etc/llmproxy/config.toml"]
