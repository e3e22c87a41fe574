"""Run a worker as a child process and wait for it: shared by `demo`, `bench` and the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from stream_infer.tools.devkafka.local import free_port


class WorkerProcess:
    """`stream-infer worker` in a subprocess with its own web port and data dir; log to a file."""

    def __init__(
        self, config: Path, bootstrap: str, workdir: Path, *, log_level: str = "warning", env: dict | None = None
    ) -> None:
        self.config = config
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.web_port = free_port(set())
        self.log_path = workdir / f"worker-{self.web_port}.log"
        self.log_level = log_level
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The worker's process; raises if :meth:`start` has not run."""
        if self.proc is None:
            raise RuntimeError("the worker process has not been started")
        return self.proc

    def start(self) -> WorkerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=self.bootstrap, **self.env)
        cmd = [
            sys.executable,
            "-m",
            "stream_infer.cli",
            "--log-level",
            self.log_level,
            "worker",
            "-c",
            str(self.config),
            "--web-port",
            str(self.web_port),
            "--data-dir",
            str(self.workdir / f"data-{self.web_port}"),
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.web_port}{path}"

    def wait_ready(self, timeout: float = 90.0) -> float:
        """Seconds until /readyz answers 200; raises with the log tail if the worker dies or hangs."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode} before ready:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url("/readyz"), timeout=1) as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"worker not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as resp:
            return resp.read().decode()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL: the crash a no-loss design must survive."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not stop in time. Returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode
