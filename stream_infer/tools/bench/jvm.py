"""When is the local broker warm? Its JIT compiler threads' CPU, read from /proc (Linux only).

A fresh broker runs its request paths interpreted until HotSpot's C1/C2 compilers have compiled
them, and the compilers take CPU meanwhile. Under a live stream of small produce and fetch
requests on this 2-core machine that lasted more than a minute: the C2 thread used 0.35-0.47 of a
core and the request threads 0.5-0.7, falling to 0.24 once compiled (docs/performance.md). Latency
measured in that minute is the broker's warm-up, not the service's, so the benchmark's latency
phases wait until the compilers have gone quiet.
"""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path

# HotSpot names its JIT threads "C1 CompilerThread0", "C2 CompilerThread1", ...; Linux keeps the
# first 15 characters of a thread name.
_COMPILER_THREADS = ("C1 CompilerThre", "C2 CompilerThre")


def stat_cpu_ticks(stat: str) -> int:
    """User + system CPU in clock ticks from the text of a /proc/<pid>/stat (or task stat) file.
    Fields are counted after the ")" that ends the command name, which may itself hold spaces."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def jit_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by the JIT compiler threads of JVM `pid`; None when
    /proc cannot be read (not Linux, or no such process). 0.0 for a process with no such threads."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    ticks = 0
    for task in tasks:
        try:
            if not (task / "comm").read_text().startswith(_COMPILER_THREADS):
                continue
            ticks += stat_cpu_ticks((task / "stat").read_text())
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return ticks / os.sysconf("SC_CLK_TCK")


class JitWatch:
    """Samples a JVM's JIT CPU; `settled()` once the compilers used under `quiet_cores` of a core
    over the last `window_s` seconds. Call `sample()` regularly (every fraction of a window)."""

    def __init__(self, pid: int, *, quiet_cores: float = 0.05, window_s: float = 3.0) -> None:
        self.pid = pid
        self.quiet_cores = quiet_cores
        self.window_s = window_s
        self.samples: deque[tuple[float, float]] = deque()

    def sample(self, now: float | None = None) -> float | None:
        """Record the JIT CPU now; returns the compilers' cores over the last window, None until a
        window is covered (or when /proc cannot be read)."""
        seconds = jit_cpu_seconds(self.pid)
        if seconds is None:
            return None
        now = time.monotonic() if now is None else now
        self.samples.append((now, seconds))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()
        return self.cores()

    def cores(self) -> float | None:
        """Cores used by the compilers over the last window, None until a window is covered."""
        if len(self.samples) < 2 or self.samples[-1][0] - self.samples[0][0] < self.window_s:
            return None
        (t0, s0), (t1, s1) = self.samples[0], self.samples[-1]
        # Compiler threads come and go (HotSpot sizes their number dynamically): a thread that
        # ended takes its CPU out of the sum, so a window can read negative. That is not quiet.
        return (s1 - s0) / (t1 - t0) if s1 >= s0 else None

    def settled(self) -> bool:
        cores = self.cores()
        return cores is not None and cores < self.quiet_cores
