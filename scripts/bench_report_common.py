"""What the benchmark report scripts (bench-report.py, bench-streams-report.py) share: reading the
raw results (JSON lines: round, contender, metric, value), medians over rounds, "added" values
against the direct run of the same round, formatting, ratios, and the machine/commit lines."""

import json
import platform
import statistics
import subprocess
from collections import defaultdict

LABEL = {
    "direct": "direct",
    "llmproxy-uring": "LLMProxy io_uring",
    "llmproxy-epoll": "LLMProxy epoll",
    "baseline": "hyper baseline",
    "nginx": "nginx",
    "llmproxy-uring-nometer": "LLMProxy io_uring, metering off",
    "baseline-nometer": "hyper baseline, metering off",
    "floor": "floor (null-relay)",
    "llmproxy2-uring": "LLMProxy (BIN2) io_uring",
    "llmproxy2-epoll": "LLMProxy (BIN2) epoll",
}


def load(path):
    """(contender, metric) -> {round: value}"""
    data = defaultdict(dict)
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            data[(r["contender"], r["metric"])][r["round"]] = r["value"]
    return data


class Results:
    def __init__(self, data):
        self.data = data

    def med(self, contender, metric):
        v = list(self.data.get((contender, metric), {}).values())
        return statistics.median(v) if v else None

    def added(self, contender, metric):
        """Median over rounds of (through the proxy - direct) in the same round."""
        c, d = self.data.get((contender, metric), {}), self.data.get(("direct", metric), {})
        diffs = [c[r] - d[r] for r in c if r in d]
        return statistics.median(diffs) if diffs else None

    def value(self, contender, metric, how):
        if how == "added":
            return None if contender == "direct" else self.added(contender, metric)
        return self.med(contender, metric)


def fmt(v, unit=""):
    if v is None:
        return "-"
    if unit == "us":
        return f"{v / 1000:.2f} ms" if abs(v) >= 1000 else f"{v:.0f} µs"
    if unit == "rps":
        return f"{v:,.0f}"
    if unit == "kib":
        return f"{v:.1f} KiB"
    if unit == "cpu":
        return f"{v:.1f} µs"
    if unit == "pct":
        return f"{v:.0f} %"
    return f"{v:g}"


def ratio(a, b):
    if a is None or b is None or b <= 0 or a < 0:
        return "n/a"
    return f"{a / b:.2f}×"


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_rev():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"
