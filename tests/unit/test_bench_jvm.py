"""The benchmark's broker warm-up watch: JIT compiler CPU read from /proc of a real JVM.

Contract: :func:`jit_cpu_seconds` sums the C1/C2 compiler threads' CPU of a HotSpot JVM (0.0 for a
process without them, None when /proc has no such process); :class:`JitWatch` calls the JVM
settled only once a whole window shows the compilers under `quiet_cores`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream_infer.tools.bench.jvm import JitWatch, jit_cpu_seconds
from stream_infer.tools.devkafka.jars import java_command

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# A program whose hot loop HotSpot compiles at once, then sleeps (the compilers go quiet).
HOT = """
public class Hot {
    public static void main(String[] args) throws Exception {
        long sum = 0;
        for (int round = 0; round < 200; round++) {
            for (int i = 0; i < 2_000_000; i++) { sum += (i * 31L) ^ (sum >>> 3); }
        }
        System.out.println("compiled " + sum);
        System.out.flush();
        Thread.sleep(60_000);
    }
}
"""


def test_jit_cpu_of_a_jvm_grows_while_it_compiles_then_settles(tmp_path: Path) -> None:
    source = tmp_path / "Hot.java"
    source.write_text(HOT)
    # The source launcher compiles Hot.java with javac in the same JVM: plenty for the JIT to do.
    proc = subprocess.Popen([java_command(), str(source)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("compiled"), "the JVM did not run its loop"
        spent = jit_cpu_seconds(proc.pid)
        assert spent is not None and spent > 0.05, f"JIT threads of a JVM that ran javac and a hot loop used {spent} s"
        watch = JitWatch(proc.pid, quiet_cores=0.05, window_s=1.0)
        assert watch.sample() is None and not watch.settled(), "one sample does not cover a window"
        deadline = time.monotonic() + 20
        while not watch.settled() and time.monotonic() < deadline:
            time.sleep(0.25)
            watch.sample()
        assert watch.settled(), f"compilers of a sleeping JVM still used {watch.cores()} cores"
        assert jit_cpu_seconds(proc.pid) >= spent
    finally:
        proc.kill()
        proc.wait()


def test_processes_without_jit_threads_and_missing_ones() -> None:
    assert jit_cpu_seconds(os.getpid()) == 0.0  # this Python process has no HotSpot compiler threads
    assert jit_cpu_seconds(2**22 + 12345) is None  # above Linux's default pid_max: no such process


def test_a_window_where_the_compilers_worked_is_not_settled() -> None:
    watch = JitWatch(os.getpid(), quiet_cores=0.05, window_s=3.0)
    watch.samples.extend([(0.0, 10.0), (1.5, 10.5), (3.0, 11.0)])  # 1 s of JIT over 3 s
    assert watch.cores() == pytest.approx(1 / 3) and not watch.settled()
    watch.samples.clear()
    watch.samples.extend([(0.0, 10.0), (3.0, 10.03)])
    assert watch.settled()
    watch.samples.clear()
    watch.samples.extend([(0.0, 10.0), (3.0, 9.0)])  # a compiler thread ended: its CPU left the sum
    assert watch.cores() is None and not watch.settled()
