"""What a benchmark phase cost the machine: peak RSS of a process and its children (the
sandboxed decoder is a child), the machine's busy CPU seconds, percentiles, and GPU
utilisation from nvidia-smi."""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (Linux ``/proc/stat``: everything but
    idle and iowait), so that a pass's difference says how many cores it kept busy and how
    much CPU time a video cost, whatever ran where (the worker, its decoder children)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                kids = [int(k) for k in Path(f"/proc/{parent}/task/{task}/children").read_text().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


class RssSampler(threading.Thread):
    """Samples the RSS of ``pid`` and of its descendants every ``interval_s``; ``peak()``
    gives the peaks since the last ``reset()``. ``reset(watch)`` names the descendants whose
    largest RSS is reported as the child's (the decoders of the side being measured; the
    other sides' idle decoders still count in the total)."""

    def __init__(self, pid: int | None = None, interval_s: float = 0.05):
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid or os.getpid()
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.reset()

    def reset(self, watch: set[int] | None = None) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self._watch = watch
            self._main = self._kids = self._total = 0
            self._start_main = rss_bytes(self.pid)

    def sample(self) -> None:
        main = rss_bytes(self.pid)
        kids = {k: rss_bytes(k) for k in children(self.pid)}
        with self._lock:
            watched = [r for k, r in kids.items() if self._watch is None or k in self._watch]
            self._main = max(self._main, main)
            self._kids = max(self._kids, max(watched, default=0))
            self._total = max(self._total, main + sum(kids.values()))

    def peak(self) -> dict[str, float]:
        self.sample()
        with self._lock:
            return {"start_main_mib": self._start_main / MIB, "main_mib": self._main / MIB,
                    "largest_child_mib": self._kids / MIB, "total_mib": self._total / MIB}

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def stop(self) -> None:
        self._stop.set()


def percentile(values, q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    data = sorted(values)
    if not data:
        return float("nan")
    k = (len(data) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


class GpuSampler(threading.Thread):
    """nvidia-smi's utilisation and memory in use, every ``interval_ms``; empty without it."""

    def __init__(self, interval_ms: int = 200):
        super().__init__(name="gpu-sampler", daemon=True)
        self.samples: list[tuple[float, float]] = []  # (utilisation %, memory used MiB)
        self.available = shutil.which("nvidia-smi") is not None
        self._proc = None
        self.interval_ms = interval_ms

    def run(self) -> None:
        if not self.available:
            return
        self._proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits",
             f"-lms={self.interval_ms}", "-i", "0"], stdout=subprocess.PIPE, text=True)
        for line in self._proc.stdout:
            try:
                util, mem = (float(x) for x in line.split(","))
            except ValueError:
                continue
            self.samples.append((util, mem))

    def mark(self) -> int:
        return len(self.samples)

    def window(self, since: int) -> dict[str, float] | None:
        part = self.samples[since:]
        if not part:
            return None
        utils = [u for u, _ in part]
        return {"mean_util_pct": sum(utils) / len(utils), "p50_util_pct": percentile(utils, 50),
                "peak_mem_used_mib": max(m for _, m in part), "samples": len(part)}

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
