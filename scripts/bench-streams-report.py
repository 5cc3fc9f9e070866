#!/usr/bin/env python3
"""Turns scripts/bench-streams.sh's raw results (JSON lines: round, contender, metric, value) into the
markdown report: medians over rounds, added delay against the direct run of the same round, ratios of
LLMProxy against nginx and the hyper baseline, and the per-round spread."""

import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_report_common as common  # noqa: E402

(path, cmdline, rounds, load_start, streams, every_ms, events, window_ms, nofile) = sys.argv[1:10]
procs = int(sys.argv[10]) if len(sys.argv) > 10 else 1
data = common.load(path)  # (contender, metric) -> {round: value}
results = common.Results(data)
med, added, value = results.med, results.added, results.value
fmt, ratio, cpu_model, git_rev, LABEL = common.fmt, common.ratio, common.cpu_model, common.git_rev, common.LABEL

ALL = ["direct", "llmproxy-uring", "llmproxy-epoll", "llmproxy2-uring", "llmproxy2-epoll", "baseline", "nginx", "floor"]
MAIN = [c for c in ALL if any(k[0] == c for k in data)]
# (title, metric, unit, how)
METRICS = [
    ("RSS per open stream", "kib_per_stream", "kib", "abs"),
    ("proxy CPU per relayed event", "cpu_us_per_event", "cpu", "abs"),
    ("proxy core busy", "proxy_cpu_pct", "pct", "abs"),
    ("delay per event p50", "delay_p50_us", "us", "abs"),
    ("delay per event p99", "delay_p99_us", "us", "abs"),
    ("added delay per event p50", "delay_p50_us", "us", "added"),
    ("added delay per event p99", "delay_p99_us", "us", "added"),
    ("added delay per event p99.9", "delay_p999_us", "us", "added"),
]


out = []
w = out.append
w("## Streams at scale")
w("")
w(f"- command: `{cmdline}`")
w(f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; commit {git_rev()}")
w(f"- machine: {os.cpu_count()} cores ({cpu_model()}), kernel {platform.release()}; open-files limit {nofile}")
load_end = " ".join(open("/proc/loadavg").read().split()[:3])
w(f"- load average at start: {load_start}; at end: {load_end}")
w(f"- {streams} streams open at once, one event every {every_ms} ms each ({events} events a stream), measured over")
w(f"  a {int(window_ms) / 1000:g} s window once all were open; {rounds} rounds, contenders alternating, medians over rounds")
if procs == 1:
    w("- the proxy alone on core 1 (one worker); `stream-load`, `stream-backend` and the webhook receiver on core 0.")
else:
    w(f"- the proxy alone on core 1 as {procs} processes of one worker each, sharing the port (SO_REUSEPORT; nginx:")
    w(f"  `worker_processes {procs}`), their CPU and RSS summed: one process may hold only {nofile} descriptors here;")
    w("  `stream-load`, `stream-backend` and the webhook receiver on core 0.")
w("  LLMProxy and the baseline meter every stream (webhook on); nginx (`proxy_buffering off`) meters nothing;")
w("  the floor (null-relay) copies bytes unparsed: one read and one write per event")
w("")
w("| metric | " + " | ".join(LABEL[c] for c in MAIN) + " |")
w("|---|" + "---:|" * len(MAIN))
for title, m, unit, how in METRICS:
    w(f"| {title} | " + " | ".join(fmt(value(c, m, how), unit) for c in MAIN) + " |")
w("")
w("Ratios (LLMProxy ÷ other; below 1 is better):")
w("")
w("| metric | io_uring ÷ nginx | io_uring ÷ baseline | epoll ÷ nginx | epoll ÷ baseline | io_uring ÷ epoll | floor ÷ nginx |")
w("|---|---:|---:|---:|---:|---:|---:|")
for title, m, unit, how in METRICS:
    if m == "proxy_cpu_pct":
        continue
    u, e = value("llmproxy-uring", m, how), value("llmproxy-epoll", m, how)
    n, b, f = value("nginx", m, how), value("baseline", m, how), value("floor", m, how)
    w(f"| {title} | {ratio(u, n)} | {ratio(u, b)} | {ratio(e, n)} | {ratio(e, b)} | {ratio(u, e)} | {ratio(f, n)} |")
w("")
if any(c.startswith("llmproxy2-") for c in MAIN):
    w("Before/after (LLMPROXY_BIN2 ÷ LLMPROXY_BIN, same rounds; below 1: the second binary does better):")
    w("")
    w("| metric | io_uring | epoll |")
    w("|---|---:|---:|")
    for title, m, unit, how in METRICS:
        if how != "abs" or m == "proxy_cpu_pct":
            continue
        cells = [ratio(value("llmproxy2-" + d, m, how), value("llmproxy-" + d, m, how)) for d in ("uring", "epoll")]
        w(f"| {title} | " + " | ".join(cells) + " |")
    w("")
w("Per round (round order):")
w("")
w("| contender | RSS per stream | CPU per event | delay p50 | delay p99 | idle RSS |")
w("|---|---|---|---|---|---|")


def rounds_of(c, m, unit):
    v = data.get((c, m), {})
    return ", ".join(fmt(v[r], unit) for r in sorted(v)) or "-"


for c in MAIN:
    w(f"| {LABEL[c]} | {rounds_of(c, 'kib_per_stream', 'kib')} | {rounds_of(c, 'cpu_us_per_event', 'cpu')} | "
      f"{rounds_of(c, 'delay_p50_us', 'us')} | {rounds_of(c, 'delay_p99_us', 'us')} | {rounds_of(c, 'rss_idle_kib', '')} KiB |")
w("")
errs = []
for (c, m), byr in sorted(data.items()):
    bad = m in ("errors", "log_warn_error_lines", "completion_tokens_missing")
    bad = bad or (m == "streams_ok" and any(v != int(streams) for v in byr.values()))
    bad = bad or (m == "open_at_window_end" and any(v != int(streams) for v in byr.values()))
    if bad and (m in ("streams_ok", "open_at_window_end") or sum(byr.values())):
        errs.append(f"- {LABEL.get(c, c)}: {m} = " + ", ".join(f"round {r}: {v:g}" for r, v in sorted(byr.items())))
w("Errors (connect, status, truncated or short streams, streams closed before the window ended, usage")
w("tokens missing from LLMProxy's records, gateway warn/error log lines):")
w("")
w("\n".join(errs) if errs else f"- none: every stream of every contender got all {events} events, its usage and [DONE];"
  " LLMProxy's records hold every completion token")
print("\n".join(out))
