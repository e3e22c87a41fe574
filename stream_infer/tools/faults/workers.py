"""A trial's workers by name, and their supervisor.

Workers exit on purpose where a restart fixes the fault (a failed checkpoint transaction, say);
in production a supervisor (Kubernetes, systemd) restarts them. The pool plays that part: a worker
that exits on its own is started again at once under the same name, and the exit is recorded.
Workers run with default settings (transactional ids unique per process) unless an
`instance_prefix` is given: then each name gets a stable STREAM_INFER_INSTANCE_ID, as the
Kubernetes Deployment sets, and a restarted worker fences its predecessor at once. Workers the
scenario stops or kills leave the pool first, so they are never restarted behind its back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

from stream_infer.tools.faults.report import WorkerExit
from stream_infer.tools.workerproc import WorkerProcess

log = logging.getLogger(__name__)

# How often the supervisor looks for exited workers.
SUPERVISE_EVERY_S = 0.5


@dataclass(eq=False)
class WorkerPool:
    """A trial's workers by name, and their supervisor (see the module docstring); each worker's
    folder is `directory`/<name>. `exits` and `restarts` record what happened to them."""

    config: Path
    bootstrap: str
    directory: Path
    instance_prefix: str | None
    _: KW_ONLY
    on_event: Callable[[str], object]  # records a line in the trial's timeline
    stop_timeout: float
    exits: list[WorkerExit] = field(default_factory=list, init=False)
    restarts: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._workers: dict[str, WorkerProcess] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, name="faults-supervisor", daemon=True)

    def _spawn(self, name: str) -> WorkerProcess:
        env = {"STREAM_INFER_INSTANCE_ID": f"{self.instance_prefix}-{name}"} if self.instance_prefix else {}
        return WorkerProcess(self.config, self.bootstrap, self.directory / name, log_level="info", env=env).start()

    def start(self, *names: str) -> None:
        """Start workers (all at once) and wait until each is ready; supervision begins with the first."""
        with self._lock:
            for name in names:
                self._workers[name] = self._spawn(name)
            started = [self._workers[name] for name in names]
        for name, worker in zip(names, started):
            seconds = worker.wait_ready()
            log.info("worker ready", extra={"worker": name, "seconds": round(seconds, 1)})
        if not self._supervisor.is_alive() and not self._stop.is_set():
            self._supervisor.start()

    def stop(self, name: str, *, graceful_required: bool = False) -> WorkerExit:
        """SIGTERM and time the exit (a worker that already exited is recorded as it is)."""
        with self._lock:
            worker = self._workers.pop(name)
        if worker.process.poll() is not None:
            outcome = WorkerExit(name, worker.process.returncode, None, "exited", graceful_required)
        else:
            started = time.monotonic()
            code = worker.stop(timeout=self.stop_timeout)
            outcome = WorkerExit(name, code, round(time.monotonic() - started, 2), "stopped", graceful_required)
        if outcome.code != 0:
            log.warning("worker %s ended with status %s; log tail:\n%s", name, outcome.code, worker.log_tail(15))
        self.exits.append(outcome)
        return outcome

    def kill(self, name: str) -> None:
        """SIGKILL; the worker is not restarted."""
        with self._lock:
            worker = self._workers.pop(name)
        worker.kill()
        self.exits.append(WorkerExit(name, worker.process.returncode, None, "killed"))

    def names(self) -> list[str]:
        with self._lock:
            return list(self._workers)

    def stop_supervising(self) -> None:
        self._stop.set()
        if self._supervisor.is_alive():
            self._supervisor.join(10)

    def kill_all(self) -> None:
        """Clean-up whatever happened: supervision ends, every worker left is killed."""
        self.stop_supervising()
        with self._lock:
            workers, self._workers = list(self._workers.values()), {}
        for worker in workers:
            worker.kill()

    def _supervise(self) -> None:
        while not self._stop.wait(SUPERVISE_EVERY_S):
            with self._lock:
                for name, worker in list(self._workers.items()):
                    code = worker.process.poll()
                    if code is None:
                        continue
                    log.warning("worker %s exited with status %s: restarting it; log tail:\n%s", name, code, worker.log_tail(15))
                    self.exits.append(WorkerExit(name, code, None, "exited"))
                    self.on_event(f"worker {name} exited with status {code}: restarted")
                    self._workers[name] = self._spawn(name)
                    self.restarts += 1
