#!/usr/bin/env python3
"""Turns scripts/bench.sh's raw results (JSON lines: round, contender, metric, value) into the
markdown report: medians over rounds, "added" latency against the direct run of the same round,
and ratios of LLMProxy against nginx and against the hyper baseline."""

import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_report_common as common  # noqa: E402

path, cmdline, rounds = sys.argv[1], sys.argv[2], sys.argv[3]
load_start = sys.argv[4] if len(sys.argv) > 4 else "?"
data = common.load(path)  # (contender, metric) -> {round: value}
results = common.Results(data)
med, added, value = results.med, results.added, results.value
fmt, ratio, cpu_model, git_rev, LABEL = common.fmt, common.ratio, common.cpu_model, common.git_rev, common.LABEL

MAIN = ["direct", "llmproxy-uring", "llmproxy-epoll", "baseline", "nginx"]
# (title, metric, unit, how): how = abs | added
METRICS = [
    ("non-stream req/s, 32 conns", "c32_rps", "rps", "abs"),
    ("non-stream p50 latency, 32 conns", "c32_p50_us", "us", "abs"),
    ("non-stream p99 latency, 32 conns", "c32_p99_us", "us", "abs"),
    ("non-stream p50 latency, 1 conn", "c1_p50_us", "us", "abs"),
    ("non-stream p99 latency, 1 conn", "c1_p99_us", "us", "abs"),
    ("proxy CPU time per request (32 conns)", "c32_cpu_us_per_req", "cpu", "abs"),
    ("SSE added time to first event p50, 1 stream", "s1_ttft_p50_us", "us", "added"),
    ("SSE added time to first event p99, 1 stream", "s1_ttft_p99_us", "us", "added"),
    ("SSE added gap between events p50, 1 stream", "s1_gap_p50_us", "us", "added"),
    ("SSE added gap between events p99, 1 stream", "s1_gap_p99_us", "us", "added"),
    ("SSE added time to first event p50, 256 streams", "s256_ttft_p50_us", "us", "added"),
    ("SSE added time to first event p99, 256 streams", "s256_ttft_p99_us", "us", "added"),
    ("SSE added gap between events p50, 256 streams", "s256_gap_p50_us", "us", "added"),
    ("SSE added gap between events p99, 256 streams", "s256_gap_p99_us", "us", "added"),
    ("RSS per open stream (1,000 streams)", "mem_kib_per_stream", "kib", "abs"),
]


out = []
w = out.append
w("## Benchmark results")
w("")
w(f"- command: `{cmdline}`")
w(f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; commit {git_rev()}")
w(f"- machine: {os.cpu_count()} cores ({cpu_model()}), kernel {platform.release()}")
w(f"- rounds: {rounds}, contenders alternating; every figure is the median over rounds")
load_end = " ".join(open("/proc/loadavg").read().split()[:3])
w(f"- load average (1, 5, 15 min) at start: {load_start}; at end: {load_end} (see \"Spread and noise\" below)")
w("- pinning: proxy under test alone on core 1 with one worker; wrk / sse-load, the nginx JSON backend,")
w("  the nginx webhook receiver and `llmproxy mock-backend` (vllm, ttft 20 ms, itl 10 ms, 64 tokens) on core 0")
w("- LLMProxy and the hyper baseline meter usage (webhook on: LLMProxy `batch_max = 100`, the baseline one POST")
w("  per request from a spawned task); nginx does not meter. \"added\" = through the proxy − direct, same round.")
w("")
w("| metric | " + " | ".join(LABEL[c] for c in MAIN) + " |")
w("|---|" + "---:|" * len(MAIN))
for title, metric, unit, how in METRICS:
    w(f"| {title} | " + " | ".join(fmt(value(c, metric, how), unit) for c in MAIN) + " |")
w("")
w("Ratios (LLMProxy ÷ other). Throughput: above 1 is better; latency, CPU and memory: below 1 is better.")
w("")
w("| metric | io_uring ÷ nginx | io_uring ÷ baseline | epoll ÷ nginx | epoll ÷ baseline |")
w("|---|---:|---:|---:|---:|")
for title, metric, unit, how in METRICS:
    u, e = value("llmproxy-uring", metric, how), value("llmproxy-epoll", metric, how)
    n, b = value("nginx", metric, how), value("baseline", metric, how)
    w(f"| {title} | {ratio(u, n)} | {ratio(u, b)} | {ratio(e, n)} | {ratio(e, b)} |")
w("")
w("Metering on vs off (non-stream, 32 connections):")
w("")
w("| contender | req/s on | req/s off | on ÷ off | CPU/req on | CPU/req off |")
w("|---|---:|---:|---:|---:|---:|")
for on, off in (("llmproxy-uring", "llmproxy-uring-nometer"), ("baseline", "baseline-nometer")):
    a, b = med(on, "c32_rps"), med(off, "c32_rps")
    w(
        f"| {LABEL[on]} | {fmt(a, 'rps')} | {fmt(b, 'rps')} | {ratio(a, b)} | "
        f"{fmt(med(on, 'c32_cpu_us_per_req'), 'cpu')} | {fmt(med(off, 'c32_cpu_us_per_req'), 'cpu')} |"
    )
w("")
w("The floor: `null-relay` (benches/loadgen) copies bytes between each client connection and its own backend")
w("connection with epoll, parsing nothing: the same four socket operations per request as any proxy, and no")
w("other work. Its CPU time per request is the kernel's share, below which no proxy built on those operations")
w("can go on this machine.")
w("")
w("The last column is the busy time of the load core (wrk and the backend) per request: with the proxy's own")
w("core saturated it is the proxy's CPU that limits req/s; once it is not, the load core does.")
w("")
w("| | req/s 32 conns | CPU/req | CPU/req ÷ nginx | load core busy per request |")
w("|---|---:|---:|---:|---:|")
for c in ("direct", "floor", "llmproxy-uring", "nginx"):
    cpu = med(c, "c32_cpu_us_per_req")
    w(
        f"| {LABEL[c]} | {fmt(med(c, 'c32_rps'), 'rps')} | {fmt(cpu, 'cpu')} | "
        f"{ratio(cpu, med('nginx', 'c32_cpu_us_per_req'))} | {fmt(med(c, 'c32_load_core_us_per_req'), 'cpu')} |"
    )
w("")
w("Spread and noise: per-round values (round order) of the noisiest figures, and the share of the proxy's core")
w("taken from the proxy during the run: `other` = busy time of core 1 not spent in the proxy process, plus steal")
w("(the hypervisor's share; the proxy's own CPU counters include steal, /proc/stat's busy ticks do not).")
w("")
w("| contender | req/s 32 conns | added TTFT p50, 256 | added gap p99, 256 | other % core 1 (32 conns) | steal % (32 conns) | other % (256 streams) | steal % (256 streams) |")
w("|---|---|---|---|---|---|---|---|")


def per_round(contender, metric, unit, how="abs"):
    c = data.get((contender, metric), {})
    if how == "added":
        d = data.get(("direct", metric), {})
        vals = [c[r] - d[r] for r in sorted(c) if r in d]
    else:
        vals = [c[r] for r in sorted(c)]
    return ", ".join(fmt(v, unit) for v in vals) if vals else "-"


def other(contender, prefix):
    f, st = data.get((contender, prefix + "_foreign_core_pct"), {}), data.get((contender, prefix + "_steal_core_pct"), {})
    vals = [f[r] + st[r] for r in sorted(f) if r in st]
    return ", ".join(f"{v:g}" for v in vals) if vals else "-"


for c in MAIN + ["llmproxy-uring-nometer", "baseline-nometer", "floor"]:
    w(
        f"| {LABEL[c]} | {per_round(c, 'c32_rps', 'rps')} | "
        f"{per_round(c, 's256_ttft_p50_us', 'us', 'added') if c != 'direct' else '-'} | "
        f"{per_round(c, 's256_gap_p99_us', 'us', 'added') if c != 'direct' else '-'} | "
        f"{other(c, 'c32')} | {per_round(c, 'c32_steal_core_pct', '')} | "
        f"{other(c, 's256')} | {per_round(c, 's256_steal_core_pct', '')} |"
    )
w("")
errs = []
for (c, m), byr in sorted(data.items()):
    if m.endswith("errors") or m in ("mem_not_ready", "log_warn_error_lines"):
        total = sum(byr.values())
        if total:
            errs.append(f"- {c}: {m} = {total:g} (rounds: {', '.join(f'{r}: {v:g}' for r, v in sorted(byr.items()))})")
w("Errors (non-2xx, socket errors, broken or truncated streams, gateway warn/error log lines):")
w("")
w("\n".join(errs) if errs else "- none")
print("\n".join(out))
