"""What a process costs, read from the kernel: RSS from /proc, CPU from
os.times(). Not tracemalloc: tracing would slow the agent several times and
distort the latencies measured in the same run."""

from __future__ import annotations

import os
from pathlib import Path


def rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out["VmRSS"], out["VmHWM"]


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s() -> float:
    """User + system seconds of this process, all its threads (the compiler's worker too)."""
    t = os.times()
    return t.user + t.system
